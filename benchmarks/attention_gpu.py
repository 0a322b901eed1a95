"""Sliding-window attention on one GPU: the torch path against the Triton kernel (attention_triton.py).

Two shapes of a streaming step (128 lanes x 4096-token pieces, 4 persistent tokens):

    dna       d_model 128, 4 heads x 32, window 128
    dna-base  d_model 256, 4 heads x 64, window 256   (the dna-base preset's attention)

For each: `SlidingWindowAttention.forward` under torch.no_grad with backend "torch", then with
backend "triton" for each kernel configuration of the sweep (precision, block_m, block_n,
num_warps, num_stages; `attention.triton_options`): median milliseconds of several runs after
warm-up (CUDA events), the kernel call alone on prepared inputs (projection and rotation done
once), and the largest absolute difference of the output and of the new cache's keys and values
from the torch path's. The input cache is the one a previous piece left (every slot valid) at
positions near 2.5e8: the steady state of a stream. Random weights (ModelConfig, seed 0).

Writes benchmarks/results/attention_gpu.md (naming the GPU) and prints it. CUDA only.

    python benchmarks/attention_gpu.py                         # the default sweep (meant to take ~1 min)
    python benchmarks/attention_gpu.py --shapes dna --configs 64x64x4x2 32x32x4x3 --precisions tf32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "attention_gpu.md"
SHAPES = {  # name -> (d_model, heads, window)
    "dna": (128, 4, 128),
    "dna-base": (256, 4, 256),
}
# (block_m, block_n, num_warps, num_stages), swept with tf32 products; the fastest and the
# defaults (None) again with ieee products. None: attention_triton's defaults for the shape.
DEFAULT_CONFIGS = [None, (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (32, 32, 4, 2), (128, 64, 8, 2)]


def time_cuda(fn, warmup: int, repeats: int) -> float:
    """Median milliseconds of fn() between CUDA events, after warm-up."""
    return statistics.median(common.cuda_times_ms(fn, warmup, repeats))


def parse_config(text: str) -> tuple[int, int, int, int]:
    parts = [int(part) for part in text.lower().split("x")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"expected block_m x block_n x num_warps x num_stages, e.g. 64x64x4x2, got {text!r}")
    return tuple(parts)


def build(shape: str, batch: int, length: int):
    """The attention module, a piece of input and the cache the previous piece left."""
    from titans_cli.memory.config import MemoryConfig
    from titans_cli.model.blocks import SlidingWindowAttention
    from titans_cli.model.config import ModelConfig

    d_model, heads, window = SHAPES[shape]
    config = ModelConfig(d_model=d_model, n_heads=heads, window=window, n_persistent=4,
                         memory=MemoryConfig(num_heads=heads, head_dim=d_model // heads, chunk_size=64))  # fmt: skip
    torch.manual_seed(0)
    attention = SlidingWindowAttention(config).eval().cuda()
    generator = torch.Generator(device="cuda").manual_seed(1)
    with torch.no_grad():
        cache = attention.init_cache(batch, "cuda")
        cache.position = torch.randint(0, 250_000_000, (batch,), device="cuda", generator=generator)
        previous = torch.randn(batch, window, d_model, device="cuda", generator=generator)
        _, cache = attention(previous, cache, backend="torch")
    x = torch.randn(batch, length, d_model, device="cuda", generator=generator)
    return attention, x, cache


def max_difference(got, want) -> float:
    return (got.double() - want.double()).abs().max().item()


def run_shape(shape: str, args, configs) -> tuple[str, list[list]]:
    from titans_cli.model import attention_triton
    from titans_cli.model.attention_triton import KernelOptions

    attention, x, cache = build(shape, args.batch, args.length)
    d_model, heads, window = SHAPES[shape]
    tokens = args.batch * args.length
    rows = []
    with torch.no_grad():
        ok, reason = attention_triton.supported(x, 1, attention.head_dim, heads)
        if not ok:
            raise SystemExit(f"{shape}: the triton backend would fall back to torch: {reason}")
        want_y, want_cache = attention(x, cache, backend="torch")
        torch_ms = time_cuda(lambda: attention(x, cache, backend="torch"), args.warmup, args.repeats)
        rows.append(["torch path", "-", f"{torch_ms:.3f}", "-", f"{tokens / torch_ms / 1e3:.1f}", "1.00", "-", "-"])
        common.log(f"{shape}: torch path {torch_ms:.3f} ms")
        inputs = attention._triton_inputs(x, cache)  # projection and rotation, once

        def measure(precision, tiles):
            options = KernelOptions(precision, *tiles) if tiles else KernelOptions(precision)
            resolved = options.resolve(x.dtype, attention.head_dim, window, args.length)
            label = f"{resolved.block_m}x{resolved.block_n}, {resolved.num_warps} warps, {resolved.num_stages} stages"
            label += " (default)" if tiles is None else ""
            attention.triton_options = options
            try:
                y, new_cache = attention(x, cache, backend="triton")
                forward_ms = time_cuda(lambda: attention(x, cache, backend="triton"), args.warmup, args.repeats)
                kernel_ms = time_cuda(lambda: attention_triton.sliding_window_attention(*inputs, options),
                                      args.warmup, args.repeats)  # fmt: skip
            except Exception as error:  # a config the card cannot run (shared memory, registers)
                common.log(f"{shape} {precision} {label}: failed\n{traceback.format_exc(limit=1)}")
                rows.append([precision, label, f"failed: {type(error).__name__}", "", "", "", "", ""])
                return float("inf")
            cache_error = max(max_difference(new_cache.keys, want_cache.keys),
                              max_difference(new_cache.values, want_cache.values))
            rows.append([precision, label, f"{forward_ms:.3f}", f"{kernel_ms:.3f}", f"{tokens / forward_ms / 1e3:.1f}",
                         f"{torch_ms / forward_ms:.2f}", f"{max_difference(y, want_y):.1e}", f"{cache_error:.1e}"])  # fmt: skip
            common.log(f"{shape} {precision} {label}: forward {forward_ms:.3f} ms, kernel {kernel_ms:.3f} ms")
            return forward_ms

        timings = {}
        for precision in sorted(set(args.precisions), key=["tf32", "ieee"].index):
            if precision == "ieee" and "tf32" in args.precisions and not args.full_ieee:
                # ieee products run on the FMA units: only the defaults and the fastest tf32 tiles
                fastest = min(timings, key=timings.get)
                for tiles in dict.fromkeys([None, fastest]):
                    measure("ieee", tiles)
                continue
            for tiles in configs:
                timings[tiles] = measure(precision, tiles)
    title = (f"### {shape}: d_model {d_model}, {heads} heads x {d_model // heads}, window {window}, 4 persistent "
             f"tokens; {args.batch} lanes x {args.length} tokens, fp32; output max |y| {want_y.abs().max().item():.2f}")
    return title, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--configs", nargs="+", type=parse_config, default=None,
                        help="tiles to sweep, block_m x block_n x num_warps x num_stages (e.g. 64x64x4x2); "
                             "default: attention_triton's defaults and five others")  # fmt: skip
    parser.add_argument("--precisions", nargs="+", choices=["tf32", "ieee"], default=["tf32", "ieee"])
    parser.add_argument("--full-ieee", action="store_true", help="sweep every config with ieee products too")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_gpu.py needs a CUDA GPU (it times the Triton kernel); torch sees none.", file=sys.stderr)
        return 2
    from titans_cli.memory.triton_fused import TRITON_AVAILABLE

    if not TRITON_AVAILABLE:
        print("attention_gpu.py needs triton (pip install triton).", file=sys.stderr)
        return 2
    import triton

    configs = [None, *args.configs] if args.configs else DEFAULT_CONFIGS
    gpu = torch.cuda.get_device_name()
    started = time.time()
    sections = []
    for shape in args.shapes:
        title, rows = run_shape(shape, args, configs)
        headers = ["products", "tiles (m x n)", "forward ms", "kernel ms", "M tokens/s", "vs torch",
                   "max abs diff out", "max abs diff cache"]  # fmt: skip
        sections.append(title + "\n\n" + common.md_table(headers, rows, align="ll" + "r" * 6))
    text = "\n\n".join([
        "## Sliding-window attention: torch path vs Triton kernel (`benchmarks/attention_gpu.py`)",
        f"{common.machine_line(gpu)}; torch {torch.__version__}, triton {triton.__version__}.",
        "SlidingWindowAttention.forward under no_grad (projections, rotation, attention, output "
        "projection), median of {r} runs after {w} warm-up runs, CUDA events; 'kernel ms': "
        "attention_triton.sliding_window_attention alone (the kernel and the new cache's slice copies) "
        "on prepared inputs; differences against the torch path's output and new cache. "
        "Total run time {t:.0f} s.".format(r=args.repeats, w=args.warmup, t=time.time() - started),
        *sections,
    ]) + "\n"  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    common.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
