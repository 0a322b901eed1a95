"""More than one GPU: `titans train` and sharded `titans surprise` on 1 vs N GPUs under torchrun.

    python benchmarks/multi_gpu.py --gpus 2 --train-fasta A.fa.gz B.fa.gz --surprise-fasta phages.fa.gz \
        --out benchmarks/results/multi_gpu.md

Training: the same per-rank batch on 1 and N ranks (DDP), throughput = the median tokens/s (all ranks)
that `titans train` logs in metrics.jsonl, first interval (warm-up) dropped. Surprise: wall time of
the whole command on a multi-record FASTA, 1 process vs torchrun with N ranks (records sharded by
length, outputs gathered by rank 0), and whether the two bedGraphs are byte-identical.
"""

from __future__ import annotations

import argparse
import filecmp
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "titans_cli", *args]


def train_rate(nproc: int, args, work: Path) -> float:
    out = work / f"train{nproc}"
    command = torchrun(nproc, ["train", *args.train_fasta, "--preset", "dna-small", "-o", str(out), "--steps", str(args.steps),
                               "--batch-size", str(args.batch_size), "--device", "cuda", "--no-resume"])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=(work / f"train{nproc}.log").open("w"))
    rates = [json.loads(line)["tokens_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "tokens_per_s" in line]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def surprise_seconds(nproc: int, args, work: Path) -> tuple[float, Path]:
    output = work / f"surprise{nproc}.bedgraph"
    base = ["surprise", args.surprise_fasta, "--quiet", "-o", str(output), "--device", "cuda"]
    command = [sys.executable, "-m", "titans_cli", *base] if nproc == 1 else torchrun(nproc, base)
    started = time.perf_counter()
    subprocess.run(command, check=True, stderr=(work / f"surprise{nproc}.log").open("w"))
    return time.perf_counter() - started, output


def repeated_fasta(source: Path, copies: int, work: Path) -> Path:
    """`copies` copies of every record of `source` (ids suffixed _copyN), as one plain FASTA."""
    import gzip

    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt") as handle:
        text = handle.read()
    target = work / f"{source.name.split('.')[0]}_x{copies}.fa"
    with target.open("w") as out:
        for copy in range(copies):
            out.write(text.replace(">", ">copy%d_" % copy) if copy else text)
    return target


def bedgraph_difference(a: Path, b: Path) -> tuple[bool, float, int, str]:
    """Compare two bedGraphs base by base: (same records covering the same bases, max |value
    difference| over every base, data lines of `a`, a note on the first mismatch or '').

    Not line by line: a bedGraph writer joins neighbouring windows whose printed values are equal,
    so two tracks with slightly different values can cut the same bases into different lines."""

    def records(path: Path):
        """(chrom, per-base values) per record, in file order (one record in memory at a time)."""
        chrom, parts = None, []
        with path.open() as handle:
            for line in handle:
                if line.startswith(("track", "#", "browser")):
                    continue
                name, start, stop, value = line.split()
                if name != chrom and chrom is not None:
                    yield chrom, _expand(parts)
                    parts = []
                chrom = name
                parts.append((int(start), int(stop), float(value)))
        if chrom is not None:
            yield chrom, _expand(parts)

    with a.open() as handle:
        lines = sum(1 for line in handle if not line.startswith(("track", "#", "browser")))
    same, worst, note = True, 0.0, ""
    for first, second in itertools.zip_longest(records(a), records(b)):
        if first is None or second is None or first[0] != second[0] or len(first[1]) != len(second[1]):
            same = False
            note = note or f"records differ: {first and (first[0], len(first[1]))} vs {second and (second[0], len(second[1]))}"
            continue
        both = ~np.isnan(first[1]) & ~np.isnan(second[1])
        if not np.array_equal(both, ~np.isnan(first[1])) or not np.array_equal(both, ~np.isnan(second[1])):
            same = False
            note = note or f"{first[0]}: the tracks cover different bases"
        if both.any():
            worst = max(worst, float(np.max(np.abs(first[1][both] - second[1][both]))))
    return same, worst, lines, note


def _expand(parts: list[tuple[int, int, float]]) -> np.ndarray:
    """Per-base values of one record's intervals (NaN where none covers a base)."""
    values = np.full(max(stop for _, stop, _ in parts), np.nan)
    for start, stop, value in parts:
        values[start:stop] = value
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--train-fasta", nargs="+", required=True)
    parser.add_argument("--surprise-fasta", required=True)
    parser.add_argument("--surprise-copies", type=int, default=1,
                        help="repeat the records of --surprise-fasta this many times (new ids) into the input")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", default="/tmp/titans_multi_gpu")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    if args.surprise_copies > 1:
        args.surprise_fasta = str(repeated_fasta(Path(args.surprise_fasta), args.surprise_copies, work))

    rates = {} if args.skip_train else {n: train_rate(n, args, work) for n in (1, args.gpus)}
    print(f"train tokens/s: {rates}", flush=True)
    timings = {n: surprise_seconds(n, args, work) for n in (1, args.gpus)}
    identical = filecmp.cmp(timings[1][1], timings[args.gpus][1], shallow=False)
    same_intervals, worst, n_lines, note = bedgraph_difference(timings[1][1], timings[args.gpus][1])
    print(f"surprise seconds: { {n: t for n, (t, _) in timings.items()} }, identical={identical}, "
          f"same bases covered={same_intervals}, max |diff|={worst:.3g} over {n_lines:,} lines {note}", flush=True)

    n = args.gpus
    lines = [
        "## More than one GPU (torchrun)",
        "",
        f"Machine: {torch.cuda.device_count()} x {card}, torch {torch.__version__}. Produced by `benchmarks/multi_gpu.py`.",
        "",
        "| job | 1 GPU | %d GPUs | speed-up |" % n,
        "|---|---:|---:|---:|",
        *([f"| `titans train` dna-small, {args.batch_size} crops x 4096 per rank per step (tokens/s, all ranks) | "
           f"{rates[1]:,.0f} | {rates[n]:,.0f} | {rates[n] / rates[1]:.2f}x |"] if rates else []),
        f"| `titans surprise` {Path(args.surprise_fasta).name} (wall seconds, whole command) | "
        f"{timings[1][0]:.1f} | {timings[n][0]:.1f} | {timings[1][0] / timings[n][0]:.2f}x |",
        "",
        f"Sharded bedGraph byte-identical to the single-process one: {'yes' if identical else 'NO'}; "
        f"same records covering the same bases: {'yes' if same_intervals else 'NO'}; largest difference of a value "
        f"(mean bits/base of a 50-base window), compared base by base over its {n_lines:,} lines: {worst:.3g}" + (f"; {note}." if note else "."),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
