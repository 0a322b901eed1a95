"""Whole-model streaming throughput on CPU over a real genome (or a book): bases/s, CPU-seconds per Mbase, peak RSS.

    python benchmarks/speed_model_cpu.py                          # shipped DNA model, 1 Mbp of E. coli, 1 and 2 threads
    python benchmarks/speed_model_cpu.py --model dna-small         # a preset at initialisation instead
    python benchmarks/speed_model_cpu.py --bases 0 --threads 2     # the whole genome (4.64 Mbp)
    python benchmarks/speed_model_cpu.py --baseline-tree DIR       # also the code in DIR (e.g. a
                                                                   # `git worktree` of an older commit), same script, rows interleaved
    python benchmarks/speed_model_cpu.py --model text-base --text BOOK.txt.gz --bases 300000 --signals bits \
        --out benchmarks/results/speed_model_cpu_text_base.md     # a text model over a book: bytes/s and tokens/s

What is timed: `TitansLM.step` over the genome's first record (its first --bases bases, BOS first),
one lane, in pieces of --piece tokens, the Numba memory backend, under torch.inference_mode and,
where the code has it, `streaming_threads()` (torch ops on one thread, the cores for the layer
pipeline: as the StreamEngine runs the model). That is the model part of `titans surprise`; FASTA
parsing, tokenisation and the track writing are not in it. Two signal sets: "all" (the step's
default: bits, grad and momentum signals) and "bits" (`momentum=False`, what `titans surprise
--metric bits` asks for; code without that option computes everything). Each row runs in a fresh
process (so its peak RSS is its own): torch and Numba both get --threads threads; one piece is
streamed first and discarded (JIT compilation, allocator).

The machine is shared with other jobs, so wall-clock rates depend on their load. CPU-seconds per
Mbase (process CPU time / bases) is the figure to compare versions with; the load average at the
start and end of each row is recorded beside it. 25,000 bases/s (E. coli in about 3 minutes) on 2
cores needs at most 80 CPU-s per Mbase at perfect 2-thread scaling.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if os.environ.get("PYTHONPATH"):  # a worker for --baseline-tree: that tree's titans_cli first
    sys.path.insert(0, os.environ["PYTHONPATH"].split(os.pathsep)[0])

DEFAULT_GENOME = REPO / "sample_data" / "ecoli_k12_mg1655.fa.gz"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "speed_model_cpu.md"


def read_first_record(path: Path, limit: int) -> str:
    """The sequence of the first FASTA record (at most `limit` bases when limit > 0)."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    parts, total, started = [], 0, False
    with opener(path, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                if started:
                    break
                started = True
                continue
            line = line.strip()
            parts.append(line)
            total += len(line)
            if limit and total >= limit:
                break
    sequence = "".join(parts)
    return sequence[:limit] if limit else sequence


def load(model_name: str):
    """(model, tokenizer, description): a shipped/local model directory, or a preset at init."""
    import torch

    from titans_cli.model.config import PRESETS, preset
    from titans_cli.model.lm import TitansLM
    from titans_cli.model.tokenizers import DNATokenizer

    from titans_cli.errors import TitansInputError
    from titans_cli.model.files import resolve_model

    try:
        resolve_model(model_name)  # a shipped model wins over a preset of the same name (dna-base, text-base)
        shipped = True
    except TitansInputError:
        shipped = False
    if model_name in PRESETS and not shipped:
        torch.manual_seed(0)
        return TitansLM(preset(model_name)).eval(), DNATokenizer(), f"preset {model_name} (weights at initialisation)"
    from titans_cli.model.files import load_model

    loaded = load_model(model_name)
    return loaded.model.eval(), loaded.tokenizer, f"model {model_name} ({loaded.path.relative_to(REPO) if loaded.path.is_relative_to(REPO) else loaded.path})"


def worker(args) -> dict:
    """One measurement in this process; printed as JSON."""
    import contextlib
    import inspect

    import numpy as np
    import torch

    from titans_cli.device import configure_threads
    from titans_cli.model import lm

    configure_threads(args.threads)
    model, tokenizer, description = load(args.model)
    if args.text:  # as the CLI reads it (plain or compressed, line breaks normalised)
        from titans_cli.io.text import read_text

        sequence = read_text(args.text)[: args.bases or None]
    else:
        sequence = read_first_record(Path(args.genome), args.bases)
    tokens = np.concatenate([[model.config.bos_id], tokenizer.encode(sequence)]).astype(np.int64)
    stream = torch.from_numpy(tokens).unsqueeze(0)
    # as the StreamEngine runs the model on a CPU, in code that has these (older code: neither)
    threads = getattr(lm, "streaming_threads", contextlib.nullcontext)
    options = {}
    if args.signals == "bits" and "momentum" in inspect.signature(model.step).parameters:
        options["momentum"] = False
    with torch.inference_mode(), threads():
        model.step(stream[:, : args.piece], None, backend=args.backend, **options)  # warm-up: JIT, allocator
        load_start = os.getloadavg()
        wall, cpu = time.perf_counter(), time.process_time()
        state, bits_sum = None, 0.0
        for start in range(0, stream.shape[1], args.piece):
            output, state = model.step(stream[:, start : start + args.piece], state, backend=args.backend, **options)
            bits_sum += float(output.logits[0, -1, 0])  # touch the outputs (as a consumer would)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        load_end = os.getloadavg()
    bases = len(sequence.encode("utf-8")) if args.text else len(sequence)
    return {
        "tokens": int(tokens.shape[0]),
        "code": args.label,
        "signals": args.signals if options or args.signals == "all" else "all (no momentum=False)",
        "model": description,
        "bases": bases,
        "threads": args.threads,
        "piece": args.piece,
        "backend": args.backend,
        "wall_s": wall,
        "cpu_s": cpu,
        "bases_per_s": bases / wall,
        "cpu_s_per_mbase": cpu / bases * 1e6,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_start": load_start[0],
        "load_end": load_end[0],
    }


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba
    import torch

    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, numba {numba.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dna", help="shipped model name, model directory, or preset (dna-small)")
    parser.add_argument("--genome", default=str(DEFAULT_GENOME))
    parser.add_argument("--text", help="a UTF-8 book (plain or .gz) instead of a genome, for text models: rates per byte")
    parser.add_argument("--bases", type=int, default=1_000_000, help="prefix length of the first record (0 = all)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, one process each")
    parser.add_argument("--piece", type=int, default=8192)
    parser.add_argument("--backend", default="numba", choices=["numba", "torch"])
    parser.add_argument("--signals", default="all,bits", help="comma-separated: all (default step), bits (momentum=False)")
    parser.add_argument("--baseline-tree", help="also time the titans_cli of this directory (e.g. a worktree of an older commit)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown table ('-' = stdout only)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="this tree", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.threads = int(args.threads)
        print(json.dumps(worker(args)))
        return

    codes = [("this tree", None)]
    if args.baseline_tree:
        codes.insert(0, (f"baseline {_describe_tree(Path(args.baseline_tree))}", Path(args.baseline_tree).resolve()))
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for label, tree in codes:  # interleaved: both codes see the same load
            for signals in args.signals.split(","):
                if tree is not None and signals != "all":
                    continue  # the baseline has no momentum=False
                command = [
                    sys.executable, __file__, "--worker", "--model", args.model, "--genome", args.genome,
                    *(["--text", args.text] if args.text else []),
                    "--bases", str(args.bases), "--threads", str(threads), "--piece", str(args.piece),
                    "--backend", args.backend, "--signals", signals, "--label", label,
                ]  # fmt: skip
                environment = dict(os.environ, PYTHONPATH=str(tree)) if tree is not None else None
                done = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
                if done.returncode != 0:
                    sys.exit(f"worker failed ({label}, {threads} threads):\n{done.stderr[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{label}, {threads} thread(s), signals {row['signals']}: {row['bases_per_s']:,.0f} "
                    f"{'bytes' if args.text else 'bases'}/s wall, "
                    f"{row['cpu_s_per_mbase']:.1f} CPU-s/Mbase, peak RSS {row['peak_rss_mib']:.0f} MiB, "
                    f"load {row['load_start']:.1f}->{row['load_end']:.1f}",
                    flush=True,
                )

    genome_bases = 4_641_652  # E. coli K-12 MG1655
    command_line = (
        f"python benchmarks/speed_model_cpu.py --model {args.model}"
        + (f" --text {Path(args.text).name}" if args.text else "")
        + f" --bases {args.bases} --threads {args.threads} --piece {args.piece} --signals {args.signals}"
        + (" --baseline-tree DIR" if args.baseline_tree else "")
    )
    lines = [
        "# Whole-model streaming speed on CPU",
        "",
        f"Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `{command_line}`"
        + (f" (DIR: a `git worktree` of {codes[0][0].removeprefix('baseline ')})." if args.baseline_tree else "."),
        "",
        f"Machine: {machine()}.",
        f"Load average (1/5/15 min) when the table was written: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(the machine is shared: wall-clock rates are what the other jobs left; CPU-s per Mbase is the comparable figure).",
        "",
    ]
    if args.text:
        lines += [
            f"Input: the first {rows[0]['bases']:,} UTF-8 bytes ({rows[0]['tokens']:,} tokens) of `{Path(args.text).name}` "
            f"(one lane), {rows[-1]['model']}, memory backend {args.backend}, pieces of {args.piece} tokens; model time "
            "only (no tokenising or output writing). Signals \"all\": the step's default outputs; \"bits\": "
            "`momentum=False`, what `titans surprise --metric bits` asks for.",
            "",
            "| code | signals | threads | bytes/s (wall) | tokens/s (wall) | CPU-s per MB | a 1 MB book at this rate | peak RSS (MiB) | load avg start -> end |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['code']} | {row['signals']} | {row['threads']} | {row['bases_per_s']:,.0f} | "
                f"{row['tokens'] / row['wall_s']:,.0f} | {row['cpu_s_per_mbase']:.1f} | {1e6 / row['bases_per_s']:.0f} s | "
                f"{row['peak_rss_mib']:.0f} | {row['load_start']:.1f} -> {row['load_end']:.1f} |"
            )
    else:
        lines += [
            f"Input: the first {rows[0]['bases']:,} bases of `{Path(args.genome).name}` (one record, one lane), "
            f"{rows[-1]['model']}, memory backend {args.backend}, pieces of {args.piece} tokens; model time only "
            "(no FASTA parsing or output writing). Signals \"all\": the step's default outputs; \"bits\": "
            "`momentum=False`, what `titans surprise --metric bits` asks for.",
            "",
            "| code | signals | threads | bases/s (wall) | CPU-s per Mbase | bases per CPU-s | E. coli (4.64 Mbp) at this rate | peak RSS (MiB) | load avg start -> end |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            minutes = genome_bases / row["bases_per_s"] / 60
            lines.append(
                f"| {row['code']} | {row['signals']} | {row['threads']} | {row['bases_per_s']:,.0f} | {row['cpu_s_per_mbase']:.1f} | "
                f"{1e6 / row['cpu_s_per_mbase']:,.0f} | {minutes:.1f} min | {row['peak_rss_mib']:.0f} | "
                f"{row['load_start']:.1f} -> {row['load_end']:.1f} |"
            )
    text = "\n".join(lines) + "\n"
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    print(text)


def _describe_tree(tree: Path) -> str:
    """'commit abc1234' for a git checkout, else the directory."""
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return f"commit {done.stdout.strip()}" if done.returncode == 0 else str(tree)


if __name__ == "__main__":
    main()
