"""Whole-model `surprise` throughput on one GPU: the shipped DNA model over growing inputs.

Measures, for each memory backend (torch_chunked = the unfused path, triton = the fused kernel):
wall time, bases/s, peak GPU memory and peak host RSS of `titans_cli.surprise(..., metric="bits")`
on a multi-genome input (the records of a FASTA repeated until the size is reached) at 1, 10 and
100 Mbp, and on one long record (a genome repeated into a single record). The tracks of the two
backends are compared on the smallest input: the fused path must give the same numbers.

    python benchmarks/speed_gpu.py --fasta carry/eval/dna/mycobacteriophages_eval.fa.gz \
        --long-fasta carry/eval/dna/escherichia_coli_k12_mg1655.fa.gz --out benchmarks/results/speed_gpu.md

Needs CUDA. Every row names the card it ran on.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from titans_cli import Model, surprise  # noqa: E402
from titans_cli.device import Runtime  # noqa: E402
from titans_cli.io.sequences import read_records  # noqa: E402
from titans_cli.model import load_model as load_model_dir  # noqa: E402


def multi_genome_input(records: list[tuple[str, bytes]], total_bases: int) -> list[tuple[str, str]]:
    """Records of the FASTA, cycled (with new ids) until `total_bases` is reached."""
    out, size, copy = [], 0, 0
    while size < total_bases:
        for record_id, sequence in records:
            if size >= total_bases:
                break
            take = sequence[: total_bases - size]
            out.append((f"{record_id}_copy{copy}", take.decode("ascii")))
            size += len(take)
        copy += 1
    return out


def measure(model: Model, data, label: str, context_mixing: bool = False) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    bases = sum(len(seq) for _, seq in data)
    start = time.perf_counter()
    tracks = surprise(model, data, metric="bits", window=50, context_mixing=context_mixing)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    mean_bits = float(np.average([t.bits_per_unit for t in tracks], weights=[t.length for t in tracks]))
    return {
        "label": label,
        "records": len(data),
        "bases": bases,
        "seconds": seconds,
        "rate": bases / seconds,
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "rss_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "mean_bits": mean_bits,
        "tracks": tracks,
    }


def mixing_rows(model: Model, data, size: float) -> tuple[list[dict], str]:
    """`surprise(context_mixing=True)` with the mixers one record after another (torch threads 1: no
    reducer threads, as `titans` ran them before they had threads) and in every host thread, each
    timed on its second pass over `data`."""
    cores = torch.get_num_threads()
    rows, tracks = [], []
    for threads in (1, cores):
        torch.set_num_threads(threads)
        try:
            # Warm-up, untimed: the same pass once. Mixing streams 8 or 16 records at a time instead of
            # 128, and Triton compiles its kernels again for each new wave width and piece-length
            # class (on a fresh machine, seconds: more than the mixing itself), and the mixer's JIT.
            surprise(model, data, metric="bits", window=50, context_mixing=True)
            how = "in turn" if threads == 1 else f"in {threads} threads"
            row = measure(model, data, f"{size:g} Mbp, {len(data)} records, context mixing, mixers {how}", context_mixing=True)
        finally:
            torch.set_num_threads(cores)
        row["backend"] = "triton"
        tracks.append(row.pop("tracks"))
        rows.append(row)
        print(f"triton  {row['label']:28s} {row['rate'] / 1e6:7.3f} M bases/s  RSS {row['rss_peak_gib']:.2f} GiB", flush=True)
    worst = max(float(np.max(np.abs(a.values - b.values), initial=0.0)) for a, b in zip(*tracks))
    line = f"Context mixing, mixers in turn vs in threads: largest difference of a 50-base window mean {worst:.2e} bits."
    print(line)
    return rows, line


def profile_run(model: Model, data, path: str) -> None:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    surprise(model, data, metric="bits", window=50)
    torch.cuda.synchronize()
    profiler.disable()
    report = io.StringIO()
    pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(40)
    Path(path).write_text(report.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dna")
    parser.add_argument("--fasta", required=True, help="multi-record FASTA (e.g. the eval mycobacteriophages)")
    parser.add_argument("--long-fasta", help="a genome to repeat into one long record")
    parser.add_argument("--sizes", default="1,10,100", help="input sizes in Mbp")
    parser.add_argument("--backends", default="torch,triton")
    parser.add_argument("--unfused-sizes", default="1", help="sizes (Mbp) run with the torch backend (slow)")
    parser.add_argument("--hyena-batches", default="",
                        help="also time the HyenaDNA-shaped small-32k baseline (hyena_baseline.py) at these batches of 32k")
    parser.add_argument("--profile", help="write a cProfile summary of the fused backend's second size here")
    parser.add_argument("--long-backends", default="triton", help="backends that also run the one-record input")
    parser.add_argument("--long-mbp", type=float, default=10.0)
    parser.add_argument("--mixing-mbp", type=float, default=0.0,
                        help="also run `--context-mixing` (fused backend) on this many Mbp of the multi-record input, "
                             "its mixers one record after another (torch threads 1) and in the host's threads")
    parser.add_argument("--dense-precision", choices=("tf32", "fp32"), default="tf32",
                        help="fp32 dense matrix products on the tensor cores (tf32, what `titans` sets on CUDA) or not")
    parser.add_argument("--out")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("speed_gpu.py needs a CUDA GPU")

    device = torch.device("cuda")
    # The CLI's runtime (device.choose_runtime) allows tf32 for the dense layers on CUDA; the memory
    # kernel picks its own product precision (tf32 for fp32 inputs) either way.
    tf32 = args.dense_precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    card = torch.cuda.get_device_name(0)
    loaded = load_model_dir(args.model, device=device)
    records = read_records(args.fasta)
    sizes = [float(s) for s in args.sizes.split(",")]
    rows, reference_tracks, mixing_agreement = [], {}, ""
    for backend in args.backends.split(","):
        model = Model(args.model, loaded, Runtime(device=device, backend=backend))
        # Warm-up: compile the Triton kernels for every piece-length class a multi-record input meets
        # (record ends give short pieces: other tile sizes) and fill the allocator's caches, so the
        # timed runs measure streaming, not one-off compiles (a few seconds, once per machine).
        measure(model, multi_genome_input(records, 2_000_000), "warm-up")
        backend_sizes = [float(s) for s in args.unfused_sizes.split(",")] if backend == "torch" else sizes
        for size in backend_sizes:
            data = multi_genome_input(records, int(size * 1e6))
            row = measure(model, data, f"{size:g} Mbp, {len(data)} records")
            if args.profile and backend != "torch" and len(sizes) > 1 and size == sizes[1]:
                profile_run(model, data, args.profile)  # an extra, unreported run under cProfile
            row["backend"] = backend
            if size == sizes[0]:
                reference_tracks[backend] = row["tracks"]
            row.pop("tracks")
            rows.append(row)
            print(f"{backend:7s} {row['label']:28s} {row['rate'] / 1e6:7.3f} M bases/s  "
                  f"GPU {row['gpu_peak_gib']:.2f} GiB  RSS {row['rss_peak_gib']:.2f} GiB", flush=True)
        if args.long_fasta and backend in args.long_backends.split(","):
            genome = b"".join(seq for _, seq in read_records(args.long_fasta))
            size = int(args.long_mbp * 1e6)
            data = [("genome_repeated", (genome * (size // len(genome) + 1))[:size].decode("ascii"))]
            row = measure(model, data, f"{args.long_mbp:g} Mbp, one record")
            row["backend"] = backend
            row.pop("tracks")
            rows.append(row)
            print(f"{backend:7s} {row['label']:28s} {row['rate'] / 1e6:7.3f} M bases/s", flush=True)
        if args.mixing_mbp and backend == "triton":
            more, mixing_agreement = mixing_rows(model, multi_genome_input(records, int(args.mixing_mbp * 1e6)), args.mixing_mbp)
            rows += more

    hyena_rows = []
    if args.hyena_batches:
        from hyena_baseline import throughput as hyena_throughput

        for batch in (int(b) for b in args.hyena_batches.split(",")):
            for hyena_tf32 in sorted({False, tf32}):
                hyena_rows.append(hyena_throughput(batch, 32768, device, tf32=hyena_tf32))
                print(f"hyena   batch {batch} x 32768 tf32={hyena_tf32} {hyena_rows[-1]['rate'] / 1e6:7.3f} M bases/s", flush=True)

    agreement = ""
    if len(reference_tracks) == 2:
        first, second = reference_tracks.values()
        worst = max(float(np.max(np.abs(a.values - b.values))) for a, b in zip(first, second))
        mean_gap = max(abs(a.bits_per_unit - b.bits_per_unit) for a, b in zip(first, second))
        agreement = (f"Fused vs unfused on the {sizes[0]:g} Mbp input: largest difference of a 50-base window "
                     f"mean {worst:.2e} bits, of a record's mean bits/base {mean_gap:.2e}.")
        print(agreement)

    lines = [
        "## Whole-model surprise throughput on one GPU" + ("" if args.model == "dna" else f": {args.model}"),
        "",
        f"Machine: {card}, torch {torch.__version__}, host {platform.processor() or platform.machine()}. "
        f"Model `{args.model}` ({sum(p.numel() for p in loaded.model.parameters()):,} parameters), "
        "`titans_cli.surprise(metric='bits', window=50)`, fp32 weights and activations "
        f"({'dense matrix products in tf32, as `titans` runs on CUDA' if tf32 else 'dense matrix products in true fp32 (tf32 off)'}; "
        "the memory and attention kernels' products in tf32 either way), streaming (constant memory per lane). "
        f"Multi-genome input: the records of `{Path(args.fasta).name}` cycled to the size. "
        f"Produced by `python benchmarks/speed_gpu.py {' '.join(sys.argv[1:])}`.",
        "",
        "| backend | input | bases | seconds | M bases/s | peak GPU GiB | peak RSS GiB | mean bits/base |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['label']} | {row['bases']:,} | {row['seconds']:.2f} | "
                     f"{row['rate'] / 1e6:.3f} | {row['gpu_peak_gib']:.2f} | {row['rss_peak_gib']:.2f} | {row['mean_bits']:.4f} |")
    lines += [line for text in (agreement, mixing_agreement) if text for line in ("", text)]
    if hyena_rows:
        lines += [
            "",
            f"Beside it, in the same run on the same card: a HyenaDNA-shaped model (`benchmarks/hyena_baseline.py`: our "
            f"own implementation of the small-32k shape, {hyena_rows[0]['parameters']:,} parameters, random weights, "
            "fp32, whole 32k sequences with FFT long convolutions, not streaming), forward + per-base bits:",
            "",
            "| model | matrix products | batch x length | seconds | M bases/s | peak GPU GiB |",
            "|---|---|---|---:|---:|---:|",
        ]
        for row in hyena_rows:
            products = "tf32" if row["tf32"] else "fp32"
            lines.append(f"| HyenaDNA-shaped small-32k | {products} | {row['batch']} x {row['length']:,} | {row['seconds']:.3f} | "
                         f"{row['rate'] / 1e6:.3f} | {row['peak_gib']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
