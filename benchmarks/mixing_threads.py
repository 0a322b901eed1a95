"""How context mixing's mixers scale with threads, with no model: the mixers of a wave of records
fed step by step as the stream engine feeds them (every lane's next piece in a thread pool, then
wait for all), and, for comparison, each record mixed whole in its own thread.

Input: the records of a DNA FASTA (e.g. the eval mycobacteriophages), cycled to --records, fed in
waves of --lanes records sorted by length as the engine does. The model's probabilities are a fixed
0.24 per base (the mixer's work does not depend on them). Reports bases/s at each thread count and
where the stepped run's time goes: the mixing calls themselves (summed over threads) against the
wall time of the steps.

    python benchmarks/mixing_threads.py --fasta carry/eval/mycobacteriophages_eval.fa.gz [--threads 1,2,4,8,16]

Writes benchmarks/results/mixing_threads.md naming the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from titans_cli.io.sequences import read_records  # noqa: E402
from titans_cli.model.context_mixing import ContextMixer  # noqa: E402
from titans_cli.model.tokenizers import DNATokenizer  # noqa: E402


def token_records(fasta: str, count: int) -> list[np.ndarray]:
    tokenizer = DNATokenizer()
    records = [np.asarray(tokenizer.encode(seq.decode("ascii")), dtype=np.int64) for _, seq in read_records(fasta)]
    return [records[i % len(records)] for i in range(count)]


def uniform(n: int) -> np.ndarray:
    """The model's probabilities the mixers are fed: 0.24 on each base."""
    return np.full((n, 4), 0.24, dtype=np.float32)


def stepped(records: list[np.ndarray], lanes: int, threads: int, piece: int) -> tuple[float, float]:
    """Wall seconds and summed seconds inside the mixers: waves of `lanes` records (longest first),
    each step mixing every active lane's next `piece` tokens in the pool and waiting for all."""
    order = sorted(records, key=len, reverse=True)
    inside = 0.0

    def mix(mixer, tokens):
        start = time.perf_counter()
        mixer.bits(tokens, uniform(len(tokens)))
        return time.perf_counter() - start

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for first in range(0, len(order), lanes):
            wave = order[first : first + lanes]
            mixers = [ContextMixer(len(tokens)) for tokens in wave]
            for at in range(0, len(wave[0]), piece):
                jobs = [pool.submit(mix, m, t[at : at + piece]) for m, t in zip(mixers, wave) if at < len(t)]
                inside += sum(job.result() for job in jobs)
    return time.perf_counter() - started, inside


def whole(records: list[np.ndarray], threads: int) -> float:
    """Wall seconds with each record mixed in one call, `threads` at a time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda t: ContextMixer(len(t)).bits(t, uniform(len(t))), records))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", required=True)
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--lanes", type=int, default=16)
    parser.add_argument("--piece", type=int, default=4096, help="tokens per lane per step (the GPU engine's)")
    parser.add_argument("--threads", default="1,2,4,8,16")
    args = parser.parse_args()
    timer = common.Timer()
    records = token_records(args.fasta, args.records)
    bases = sum(len(r) for r in records)
    whole(records[:2], 2)  # the mixer's JIT compile (cached on disk after the first run)
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        wall, inside = stepped(records, args.lanes, threads, args.piece)
        alone = whole(records, threads)
        rows.append([threads, f"{bases / wall:,.0f}", f"{inside / wall:.2f}", f"{bases / alone:,.0f}"])
        common.log(f"{threads} threads: stepped {bases / wall:,.0f} bases/s (mixing busy {inside / wall:.2f} threads), "
                   f"whole records {bases / alone:,.0f} bases/s")
    body = (f"{args.records} records of `{Path(args.fasta).name}` ({bases:,} bases), waves of {args.lanes}, "
            f"{args.piece} tokens per lane per step; {os.cpu_count()} CPUs seen. 'mixing busy' = seconds spent "
            "inside the mixers' calls, summed over threads, per wall second of the stepped run. Command: "
            f"`python benchmarks/mixing_threads.py {' '.join(sys.argv[1:])}`.\n\n"
            + common.md_table(["threads", "stepped, bases/s", "mixing busy", "whole records, bases/s"], rows, "rrrr"))
    path = common.write_section("mixing_threads", "Context mixing's mixers in threads, no model", body, quick=False,
                                elapsed_s=timer.elapsed)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
