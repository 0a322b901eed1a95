"""Run every CPU benchmark and assemble docs/RESULTS.md from all sections in benchmarks/results/.

    python benchmarks/run_all.py            # full (make bench)
    python benchmarks/run_all.py --quick    # smoke run on small subsamples, < 10 min on a 2-core CPU (make bench-quick)
    python benchmarks/run_all.py --assemble-only [--quick]

Each benchmark is its own process (a failure is reported and the others still run) and writes its
own markdown section `benchmarks/results/<name>.md`, naming the machine it ran on. Sections made by
other engineers' scripts (compression, memory throughput, MIRAS sweep) and on other machines (the
GPU ones) are committed files that their own scripts regenerate: this script never runs, deletes or
rewrites them, it only includes them. RESULTS.md lists the sections in the fixed order below, then any other section
found, alphabetically.

Quick mode (`--quick`) runs the scripts that have quick-mode arguments below, each on a small subsample
of every table (a smoke run of the full benchmark, not results): they write their sections to
`benchmarks/results/quick/<name>.md` and this script assembles those into `docs/RESULTS_quick.md`
(both git-ignored). It never touches `benchmarks/results/<name>.md` or `docs/RESULTS.md`. At the end
it prints the wall time, CPU time and load average of each script and the total.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# (section name, script that produces it on this CPU machine or None, quick-mode arguments or None
#  = not run in quick mode). Sections whose script is None are produced elsewhere and committed.
# Quick-mode sections go to benchmarks/results/quick/ (see common.write_section).
SECTIONS = [
    ("novel_regions", "novel_regions.py", ["--quick"]),
    ("classification", "classification.py", ["--quick"]),
    ("summarization", "summarization.py", ["--quick"]),
    # titans summaries on a 62-document subsample, written by
    # `summarization.py --subsample --section summarization_quick` when the full titans run is too slow
    ("summarization_quick", None, None),
    # the same subsample with text-base: TITANS_BENCH_TEXT_MODEL=models/text-base summarization.py --subsample
    #   --section summarization_text_base
    ("summarization_text_base", None, None),
    ("compression", None, None),        # benchmarks/compression.py, three steps, GPU part
    ("context_mixing", None, None),  # benchmarks/context_mixing.py on saved probabilities of training slices
    ("memory_throughput", None, None),  # benchmarks/memory_throughput.py --out ..., CPU and CUDA rows
    ("memory_throughput_gpu", None, None),  # memory_throughput.py --skip-cpu on the GPU machine
    ("speed_cpu", "speed_cpu.py", ["--quick"]),
    ("speed_model_cpu", None, None),    # benchmarks/speed_model_cpu.py
    ("speed_model_cpu_dna_base", None, None),  # speed_model_cpu.py --model dna-base --bases 300000 --threads 2 --signals bits
    ("speed_model_cpu_text", None, None),  # speed_model_cpu.py --model text --text BOOK --bases 200000 --threads 2 --signals bits
    ("speed_model_cpu_text_base", None, None),  # the same with --model text-base
    ("speed_gpu", None, None),
    ("speed_gpu_dna_base", None, None),  # speed_gpu.py --model dna-base --sizes 10 --backends triton
    ("speed_gpu_mixing", None, None),   # speed_gpu.py --sizes 10 --backends triton --mixing-mbp 3: context mixing
    ("mixing_threads", None, None),     # benchmarks/mixing_threads.py on the GPU machine's host: mixers alone
    ("attention_gpu", None, None),      # benchmarks/attention_gpu.py on the GPU machine: tile sweep
    ("fusion_gpu", None, None),         # benchmarks/fusion_gpu.py on the GPU machine: MAG mix + SwiGLU, rotary
    ("multi_gpu", None, None),          # benchmarks/multi_gpu.py on a 2-GPU machine
    ("gpu_memory_kernel", None, None),
    ("memory_layer_gpu", None, None),   # benchmarks/memory_layer_gpu.py: the layer vs titans-pytorch alone
    ("memory_split_gpu", None, None),   # benchmarks/memory_split_gpu.py: split vs one-program memory kernels
    ("prepare_gpu", None, None),        # benchmarks/prepare_gpu.py: the layer's input kernel, tiles and warps
    ("train_speed", None, None),        # benchmarks/train_speed.py on the GPU machine
    ("train_speed_signal", None, None),  # train_speed.py --backends triton-signal,triton (the unread ||S_t||)
    ("miras", None, None),
    ("host_emit", None, None),          # benchmarks/host_emit.py --baseline-tree DIR: host cost of a step
    ("save_dtype", None, None),         # benchmarks/save_dtype.py: bfloat16 weight storage vs float32
    ("copying", "copying.py", None),    # in-context copying of the shipped models + a copy task (~2 min)
    ("repeat_distance", "repeat_distance.py", None),  # human piece: how far back its repeats are, bits on them (~6 min)
    ("bad_inputs", "bad_inputs.py", None),  # issue 6: each bad input through the real CLI (5-12 min; full runs only)
    ("stability_gpu", None, None),      # benchmarks/stability.py --device cuda: 20 Mbp on the GPU machine
    ("stability_cpu", None, None),      # benchmarks/stability.py --bases 1000000 --device cpu
    ("fuzz_parsers", None, None),       # benchmarks/fuzz_parsers.py --write-section
]
RESULTS_MD = common.REPO / "docs" / "RESULTS.md"
RESULTS_QUICK_MD = common.REPO / "docs" / "RESULTS_quick.md"   # git-ignored smoke output


def _children_cpu_s() -> float:
    """User + system CPU seconds of all waited-for child processes so far (their children too)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _load1() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def run_script(script: str, args: list[str]) -> tuple[int, float, float, float, float]:
    """Run one benchmark script; (exit code, wall s, CPU s of it and its children, load at start, at end)."""
    path = common.BENCH_DIR / script
    t0, cpu0, load0 = time.time(), _children_cpu_s(), _load1()
    common.log(f"run_all: {script} {' '.join(args)}")
    r = subprocess.run([sys.executable, str(path)] + args, cwd=common.REPO)
    return r.returncode, time.time() - t0, _children_cpu_s() - cpu0, load0, _load1()


def assemble(log_rows: list[list[str]], quick: bool = False) -> Path:
    source = common.section_dir(quick)
    target = RESULTS_QUICK_MD if quick else RESULTS_MD
    found = {p.stem: p for p in sorted(source.glob("*.md"))}
    expected = [name for name, script, quick_args in SECTIONS if not quick or quick_args is not None]
    order = [name for name in expected if name in found]
    order += sorted(n for n in found if n not in order)
    missing = [name for name in expected if name not in found]
    if quick:
        intro = ("# Results, quick mode (smoke run, not results)\n\n"
                 "Generated by `python benchmarks/run_all.py --quick` (`make bench-quick`) from the "
                 "sections in `benchmarks/results/quick/`; git-ignored, never committed. Every table "
                 "has the structure of the full run in [RESULTS.md](RESULTS.md) but is computed on a "
                 "small subsample stated in its notes, so the numbers are not comparable with it: this "
                 "checks that every baseline and titans row still runs end to end. Sections made only "
                 "in full mode or on the GPU machine are not included.")
    else:
        intro = ("# Results\n\n"
                 "Generated by `python benchmarks/run_all.py` (`make bench`) from the sections in "
                 "`benchmarks/results/`; do not edit by hand (`make bench-quick` writes a smoke run to "
                 "`docs/RESULTS_quick.md` instead). Every section names the machine and mode it was "
                 "produced with; GPU sections were produced on the device machine and committed. See "
                 "`benchmarks/README.md` for what each script measures.")
    parts = [
        intro,
        "",
        f"Assembled on: {common.cpu_model()}, {os.cpu_count()} cores, {common.ram_gib():.0f} GiB RAM; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; git commit {common.git_commit()}.",
        "",
    ]
    if log_rows:
        parts += ["This run:", "", common.md_table(
            ["benchmark", "status", "wall min", "CPU min", "1-min load start -> end"], log_rows, "llrrr"), ""]
    parts += ["Contents: " + ", ".join(f"[{n}](#{n.replace('_', '-')})" for n in order), ""]
    if missing:
        parts += ["Not produced yet: " + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    for name in order:
        parts += [f'<a id="{name.replace("_", "-")}"></a>', "", found[name].read_text().rstrip(), ""]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(target)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=inspect.cleandoc(__doc__).split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run on small subsamples, < 10 min on a 2-core CPU; writes "
                         "benchmarks/results/quick/ and docs/RESULTS_quick.md only")
    ap.add_argument("--assemble-only", action="store_true",
                    help="only rebuild docs/RESULTS.md (with --quick: docs/RESULTS_quick.md)")
    ap.add_argument("--only", nargs="*", help="run only these sections (names as in SECTIONS)")
    args = ap.parse_args(argv)
    t0, cpu0, load0 = time.time(), _children_cpu_s(), _load1()
    log_rows, timings = [], []
    failed = 0
    if not args.assemble_only:
        for name, script, quick_args in SECTIONS:
            if script is None or (args.only and name not in args.only):
                continue
            if not (common.BENCH_DIR / script).exists():
                log_rows.append([name, f"skipped: `benchmarks/{script}` not in the repository yet", "", "", ""])
                continue
            if args.quick and quick_args is None:
                continue
            run_args = quick_args if args.quick else []
            rc, seconds, cpu, l0, l1 = run_script(script, run_args)
            status = "ok" if rc == 0 else f"FAILED (exit {rc}); previous section kept if any"
            failed += rc != 0
            log_rows.append([name, status + (" (quick)" if args.quick else ""), f"{seconds / 60:.1f}",
                             f"{cpu / 60:.1f}", f"{l0:.1f} -> {l1:.1f}"])
            timings.append((name, "ok" if rc == 0 else f"FAILED (exit {rc})", seconds, cpu, l0, l1))
    path = assemble(log_rows, quick=args.quick)
    wall, total_cpu, load1 = time.time() - t0, _children_cpu_s() - cpu0, _load1()
    common.log(f"run_all: wrote {path} after {wall / 60:.1f} min")
    if timings:
        width = max(len(r[0]) for r in timings + [("total",)])
        print(f"\nrun_all{' --quick' if args.quick else ''}: time per script on {os.cpu_count()} cores "
              f"(CPU = user + system of the script and its child processes; 1-min load average)", flush=True)
        for name, status, seconds, cpu, l0, l1 in timings:
            print(f"  {name:<{width}}  {status:<16} wall {seconds:7.1f} s  CPU {cpu:7.1f} s  "
                  f"load {l0:4.1f} -> {l1:4.1f}")
        print(f"  {'total':<{width}}  {'':<16} wall {wall:7.1f} s  CPU {total_cpu:7.1f} s  "
              f"load {load0:4.1f} -> {load1:4.1f}   ({wall / 60:.1f} min wall)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
