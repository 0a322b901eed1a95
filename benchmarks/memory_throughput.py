"""Throughput of the memory layer: torch_chunked vs numba on CPU, ours vs titans-pytorch on CUDA.

Reference layer (issue 2): d_model 256, 4 heads x 64, MLP depth 2 (expansion 2), chunk 64,
batch 8, 16k tokens, store + retrieve (one NeuralMemory forward writes and reads the memory).

    python benchmarks/memory_throughput.py                 # full table on this machine
    python benchmarks/memory_throughput.py --quick         # small sizes, seconds
    python benchmarks/memory_throughput.py --out docs/memory_throughput.md
    python benchmarks/memory_throughput.py --check-cuda    # torch_chunked (CUDA) == reference, PASS/FAIL

Timing: one warm-up call, then the median of --repeats calls; CUDA calls are timed with CUDA events
and synchronised. CPU rows use torch's intra-op threads for torch_chunked and numba's threads for
numba (both default to all cores). Peak GPU memory is torch.cuda.max_memory_allocated during a call.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from titans_cli.memory import PRESETS, MemoryConfig, NeuralMemory  # noqa: E402
from titans_cli.device import triton_available  # noqa: E402
from titans_cli.memory import reference, torch_chunked  # noqa: E402
from titans_cli.memory.testing import random_memory_inputs, relative_errors  # noqa: E402

D_MODEL = 256
LAYER_CONFIG = MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64)


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"CPU: {cpu}, {os.cpu_count()} logical cores", f"torch {torch.__version__}"]
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f} at start (other work on the machine slows every row)")
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        parts.append("GPU: none")
    return "; ".join(parts)


def time_cpu(fn, repeats: int) -> float:
    fn()  # warm-up (numba JIT / cache load, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_cuda(fn, repeats: int) -> tuple[float, float]:
    """Median seconds per call (CUDA events) and peak allocated MiB over the timed calls."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = common.cuda_times_ms(fn, 0, repeats)
    return statistics.median(times) / 1000.0, torch.cuda.max_memory_allocated() / 2**20


def ours_call(layer, x, backend: str, backward: bool):
    def call():
        if backward:
            y, _, _ = layer(x, backend=backend)
            y.float().square().mean().backward()
            layer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                layer(x, backend=backend)

    return call


def titans_pytorch_layer():
    """titans_pytorch.NeuralMemory at the reference configuration, or None when not installed."""
    try:
        from titans_pytorch import NeuralMemory as TitansPytorchMemory
    except ImportError:
        return None
    return TitansPytorchMemory(
        dim=D_MODEL,
        chunk_size=LAYER_CONFIG.chunk_size,
        heads=LAYER_CONFIG.num_heads,
        dim_head=LAYER_CONFIG.head_dim,
        default_model_kwargs=dict(depth=LAYER_CONFIG.depth, expansion_factor=float(LAYER_CONFIG.expansion)),
        max_grad_norm=LAYER_CONFIG.max_grad_norm,
    )


def titans_pytorch_call(layer, x, backward: bool):
    def call():
        if backward:
            retrieved, _ = layer(x)
            retrieved.float().square().mean().backward()
            layer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                layer(x)

    return call


def run_table(args) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    tokens = args.tokens

    def add(implementation, device, batch, mode, seconds, peak_mib=None, note=""):
        rows.append(
            dict(
                implementation=implementation,
                device=device,
                batch=batch,
                tokens=tokens,
                mode=mode,
                tokens_per_s=None if seconds is None else batch * tokens / seconds,
                peak_mib=peak_mib,
                note=note,
            )
        )
        rate = "-" if seconds is None else f"{batch * tokens / seconds:,.0f} tokens/s"
        print(f"  {implementation:<24} {device:<5} batch {batch:<3} {mode:<12} {rate} {note}", file=sys.stderr)

    layer = NeuralMemory(D_MODEL, LAYER_CONFIG)
    for batch in [] if args.skip_cpu else args.batches:
        x = torch.randn(batch, tokens, D_MODEL)
        for backend in ("torch", "numba"):
            seconds = time_cpu(ours_call(layer, x, backend, backward=False), args.repeats)
            add(f"ours ({'torch_chunked' if backend == 'torch' else 'numba_cpu'})", "cpu", batch, "forward", seconds)

    if torch.cuda.is_available():
        device = torch.device("cuda")
        gpu_layer = NeuralMemory(D_MODEL, LAYER_CONFIG).to(device)
        other = titans_pytorch_layer()
        if other is not None:
            other = other.to(device)
        batch = args.batches[0]
        x = torch.randn(batch, tokens, D_MODEL, device=device)
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "forward"
            seconds, peak = time_cuda(ours_call(gpu_layer, x, "torch", backward), args.repeats)
            add("ours (torch_chunked)", "cuda", batch, mode, seconds, peak)
            if triton_available():
                # backward recomputes through torch_chunked (triton_fused.py's default)
                seconds, peak = time_cuda(ours_call(gpu_layer, x, "triton", backward), args.repeats)
                add("ours (triton_fused)", "cuda", batch, mode, seconds, peak)
            if other is None:
                add("titans-pytorch", "cuda", batch, mode, None, note="not installed")
            else:
                seconds, peak = time_cuda(titans_pytorch_call(other, x, backward), args.repeats)
                add("titans-pytorch", "cuda", batch, mode, seconds, peak)
    return rows


def markdown_table(rows: list[dict], machine: str, args) -> str:
    lines = [
        f"Memory layer throughput (d_model {D_MODEL}, {LAYER_CONFIG.num_heads} heads x {LAYER_CONFIG.head_dim}, "
        f"depth {LAYER_CONFIG.depth}, expansion {LAYER_CONFIG.expansion}, chunk {LAYER_CONFIG.chunk_size}, "
        f"{args.tokens} tokens, store + retrieve; median of {args.repeats})",
        "",
        f"Machine: {machine}",
        "",
        "| implementation | device | batch | mode | tokens/s | peak GPU MiB | note |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        rate = "-" if row["tokens_per_s"] is None else f"{row['tokens_per_s']:,.0f}"
        peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:,.0f}"
        lines.append(f"| {row['implementation']} | {row['device']} | {row['batch']} | {row['mode']} | {rate} | {peak} | {row['note']} |")
    return "\n".join(lines) + "\n"


def check_cuda() -> bool:
    """torch_chunked on CUDA (float64) against the reference (float64, CPU), every preset x depth x chunk."""
    if not torch.cuda.is_available():
        print("check-cuda: FAIL (no CUDA device)")
        return False
    all_passed = True
    for name in PRESETS:
        for depth in (1, 2, 3):
            for chunk_size in (1, 16, 64):
                config = PRESETS[name].replace(num_heads=2, head_dim=8, depth=depth, chunk_size=chunk_size, max_grad_norm=3.0)
                cpu_inputs = random_memory_inputs(config, length=80, seed=depth * 100 + chunk_size)
                cuda_inputs = random_memory_inputs(config, length=80, seed=depth * 100 + chunk_size, device="cuda")
                expected = reference.memory_update(*cpu_inputs, config)
                result = torch_chunked.memory_update(*cuda_inputs, config)
                result = type(result)(
                    result.output.cpu(), result.grad_norm.cpu(), result.momentum_norm.cpu(),
                    tuple(w.cpu() for w in result.weights), tuple(s.cpu() for s in result.momenta),
                )  # fmt: skip
                errors = relative_errors(result, expected)
                worst = max(errors, key=errors.get)
                passed = errors[worst] < 1e-6
                all_passed &= passed
                print(f"{'PASS' if passed else 'FAIL'} {name:<7} depth {depth} chunk {chunk_size:<3} worst {worst} rel err {errors[worst]:.1e}")
    print(f"check-cuda: {'PASS' if all_passed else 'FAIL'} ({torch.cuda.get_device_name(0)})")
    return all_passed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (2048 tokens, batch 2 and 1, 2 repeats)")
    parser.add_argument("--out", type=Path, help="also write the table as markdown to this path")
    parser.add_argument("--check-cuda", action="store_true", help="only check torch_chunked on CUDA against the reference")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per sequence (default 16384; quick 2048)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 3; quick 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 8 1; quick 2 1); CUDA uses the first")
    parser.add_argument("--skip-cpu", action="store_true", help="CUDA rows only (the CPU rows are measured on the CPU machine)")
    args = parser.parse_args(argv)

    if args.check_cuda:
        return 0 if check_cuda() else 1
    args.tokens = args.tokens or (2048 if args.quick else 16384)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.batches = args.batches or ([2, 1] if args.quick else [8, 1])

    machine = machine_description()
    print(f"# {machine}", file=sys.stderr)
    table = markdown_table(run_table(args), machine, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
