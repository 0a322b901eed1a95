"""CPU speed and memory of the titans CLI at growing input sizes, measured with /usr/bin/time -v.

Usage: python benchmarks/speed_cpu.py [--quick]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import titans_bridge  # noqa: E402

NAME = "speed_cpu"
SOURCE = "escherichia_coli_k12_mg1655.fa.gz"
SIZES = (100_000, 1_000_000, 5_000_000)
# Quick mode (smoke run): two small sizes, and the novelty row on the first 50 kbp of E. coli.
# At these sizes model loading and JIT compilation are a large part of the wall time.
QUICK_SIZES = (20_000, 100_000)
QUICK_NOVELTY_BASES = 50_000

METHOD = f"""\
Inputs: one FASTA record of N bases made by repeating the E. coli K-12 MG1655 genome
(`dna/eval/{SOURCE}`, 4.64 Mbp) and cutting at N, written to a local uncompressed file. Each row is
one fresh process of the installed CLI under `/usr/bin/time -v` (wall clock and maximum resident set
size as reported by it; so model loading and JIT compilation are included), default model and
device (CPU), `--quiet`. Commands: `titans surprise IN.fa --metric bits -o OUT.bedgraph` (default
window) and `titans embed IN.fa --per window --pool mean -o OUT.npy` (default window / step).
A last row runs `titans surprise --metric novelty --regions --plot` on the real E. coli genome."""


def _cached_fasta(name: str, header: str, sequence_of) -> Path:
    """A one-record FASTA in the benchmark cache (80 bases a line), written once, atomically;
    `sequence_of(genome)` makes the record from the real E. coli genome."""
    out = common.CACHE_DIR / "speed_inputs" / f"{name}.fa"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    seq = sequence_of(common.read_fasta(common.DNA_EVAL / SOURCE)[0][1])
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write(f">{name} {header}\n")
        for i in range(0, len(seq), 80):
            fh.write(seq[i:i + 80] + "\n")
    tmp.replace(out)
    return out


def make_prefix(n: int) -> Path:
    """The first n bases of the real E. coli genome as one record (quick mode's novelty row)."""
    return _cached_fasta(f"ecoli_first_{n}", f"first {n} bp of E. coli K-12 MG1655", lambda genome: genome[:n])


def make_input(n: int) -> Path:
    """The E. coli genome repeated and cut to n bases, as one record."""
    return _cached_fasta(f"ecoli_repeat_{n}", f"E. coli K-12 MG1655 repeated to {n} bp",
                         lambda genome: (genome * (n // len(genome) + 1))[:n])


def time_v(argv: list[str], timeout: float) -> dict:
    """Run argv under /usr/bin/time -v; wall seconds and peak RSS in MiB."""
    r = subprocess.run(["/usr/bin/time", "-v"] + argv, capture_output=True, text=True,
                       timeout=timeout, cwd=common.REPO)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {r.stderr.strip()[-600:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return {"wall_s": seconds, "rss_mib": rss_kib / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 0.02 and 0.1 Mbp, novelty on the first 0.05 Mbp of E. coli")
    ap.add_argument("--ecoli-only", action="store_true",
                    help="only the real E. coli K-12 genome: the bits track and the novelty --regions --plot run")
    args = ap.parse_args(argv)
    timer = common.Timer()
    cmd = common.titans_cmd()
    if cmd is not None and not titans_bridge.model_available("dna"):
        cmd = None
    sizes = QUICK_SIZES if args.quick else SIZES
    out_dir = common.CACHE_DIR / "speed_outputs"
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    jobs = []
    if args.ecoli_only:
        sizes = []
        jobs.append(("surprise --metric bits (real E. coli)", 4_639_675, lambda: cmd + [
            "surprise", str(common.DNA_EVAL / SOURCE), "--metric", "bits", "--quiet", "--model",
            titans_bridge.model_name("dna"), "-o", str(out_dir / "ecoli_bits.bedgraph")]))
        jobs.append(("surprise --metric bits --context-mixing (real E. coli)", 4_639_675, lambda: cmd + [
            "surprise", str(common.DNA_EVAL / SOURCE), "--metric", "bits", "--context-mixing", "--quiet", "--model",
            titans_bridge.model_name("dna"), "-o", str(out_dir / "ecoli_bits_mixed.bedgraph")]))
    for n in sizes:
        inp = make_input(n)
        jobs.append(("surprise --metric bits", n, lambda i=inp, n=n: cmd + [
            "surprise", str(i), "--metric", "bits", "--quiet", "--model", titans_bridge.model_name("dna"), "-o", str(out_dir / f"bits_{n}.bedgraph")]))
    for n in sizes:
        inp = make_input(n)
        jobs.append(("embed --per window --pool mean", n, lambda i=inp, n=n: cmd + [
            "embed", str(i), "--per", "window", "--pool", "mean", "--quiet", "--model", titans_bridge.model_name("dna"),
            "-o", str(out_dir / f"embed_{n}.npy")]))
    if args.quick:
        ecoli, n_ecoli = make_prefix(QUICK_NOVELTY_BASES), QUICK_NOVELTY_BASES
        label = f"surprise --metric novelty --regions --plot (real E. coli, first {n_ecoli / 1e6:g} Mbp)"
    else:
        ecoli, n_ecoli = common.DNA_EVAL / SOURCE, 4_639_675
        label = "surprise --metric novelty --regions --plot (real E. coli)"
    jobs.append((label, n_ecoli,
                 lambda: cmd + ["surprise", str(ecoli), "--metric", "novelty", "--quiet", "--model", titans_bridge.model_name("dna"),
                                "--regions", str(out_dir / "ecoli_novel.bed"),
                                "--plot", str(out_dir / "ecoli_novelty.png"),
                                "-o", str(out_dir / "ecoli_novelty.bedgraph")]))
    for label, n, make_argv in jobs:
        if cmd is None:
            rows.append([f"`titans {label}`", f"{n / 1e6:.3g}", common.PENDING, "", ""])
            continue
        try:
            common.log(f"timing titans {label} on {n:,} bp")
            m = time_v(make_argv(), timeout=1800)
            rows.append([f"`titans {label}`", f"{n / 1e6:.3g}", f"{m['wall_s']:.1f}",
                         f"{n / m['wall_s']:,.0f}", f"{m['rss_mib']:,.0f}"])
        except Exception as exc:  # noqa: BLE001 - reported in the table
            common.log(f"{label} {n} failed: {exc}")
            rows.append([f"`titans {label}`", f"{n / 1e6:.3g}", f"failed: {str(exc)[:160]}", "", ""])

    body = [METHOD, "",
            common.md_table(["command", "Mbp", "wall s", "bases/s", "peak RSS MiB"], rows, "lrrrr"), ""]
    if cmd is None:
        body.append("All rows **pending**: the titans CLI or the shipped DNA model is missing at this commit.")
    if args.ecoli_only:
        body.append("`--ecoli-only`: the real E. coli K-12 MG1655 genome only (4,639,675 bp), the bits track (also "
                    "with `--context-mixing`) and the novelty run; the repeated-genome rows of the full mode (0.1, 1, 5 Mbp, embed) were not run.")
    if args.quick:
        body.append(f"**Quick mode (smoke run, subsample)**: inputs of {' and '.join(f'{n / 1e6:g}' for n in sizes)} "
                    f"Mbp, and the novelty run on the first {QUICK_NOVELTY_BASES / 1e6:g} Mbp of E. coli "
                    "(full mode: 0.1, 1 and 5 Mbp and the whole 4.64 Mbp genome). At these sizes model "
                    "loading and JIT compilation (several seconds a process) are a large part of the wall "
                    "time, so bases/s understates the streaming rate.")
    path = common.write_section(NAME, "Speed and memory on CPU (titans CLI)", "\n".join(body), args.quick,
                                timer.elapsed)
    common.log(f"wrote {path} in {timer.elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
