"""The GPU inference fusions of the MAG block, timed against the torch ops they replace.

For the shapes of whole-model streaming (128 lanes x 4096-token pieces) of the shipped dna model
(d_model 128) and dna-base (d_model 256), with their configs and random weights, fp32 weights and
tf32 dense products (as `titans surprise` runs on CUDA):

- MAG mix + FFN: `MAGBlock.mix_and_feed_forward` (torch ops: sigmoid gate, three RMSNorms, the
  mix, the residual, SwiGLU) against `mix_and_feed_forward_triton` (fused_triton.mag_mix, the
  SwiGLU activation kernel, the residual inside the output projection's addmm), from the same
  inputs (x, the normed input h and the two branch outputs);
- rotary build + apply: the rotation of the piece's positions as the previous code built it (a
  complex128 (lanes, tokens, dh/2) product, then its complex64 cast) against
  `SlidingWindowAttention._inference_rotation` (the product written into complex64, `out=`), each
  followed by `apply_rotary` to the queries and keys.

Each: median (and min) milliseconds over repeats after warm-up, torch.cuda.synchronize around each
call; the largest absolute difference between the two outputs. Prints a markdown table naming the
GPU and writes benchmarks/results/fusion_gpu.md.

    python benchmarks/fusion_gpu.py [--repeats 10] [--warmup 3] [--lanes 128] [--tokens 4096]

Needs CUDA and triton; exits with a message otherwise. Under a minute on an H100.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODELS = {"dna": common.REPO / "models" / "dna", "dna-base": common.REPO / "models" / "dna-base"}


def time_ms(fn, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, min) milliseconds of fn() with the GPU synchronised before and after each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def old_rotation(attention, position: torch.Tensor, length: int) -> torch.Tensor:
    """The rotation as `_inference_rotation` built it before: complex128 product, then the cast."""
    from titans_cli.model.blocks import rotary

    product = (rotary(position, attention.head_dim).unsqueeze(1) * attention._rotary_offsets(length, position.device)).unsqueeze(1)
    return product.to(torch.complex64)


def measure(name: str, lanes: int, tokens: int, warmup: int, repeats: int) -> list[list]:
    from titans_cli.model.blocks import MAGBlock, apply_rotary
    from titans_cli.model.files import read_config

    config, _ = read_config(MODELS[name])
    generator = torch.Generator(device="cuda").manual_seed(0)
    block = MAGBlock(config).cuda().eval()
    with torch.no_grad():
        for norm in (block.attention_out_norm, block.memory_out_norm, block.ffn_norm):
            norm.weight.copy_(1 + 0.1 * torch.randn(norm.weight.shape, device="cuda", generator=generator))
    shape = (lanes, tokens, config.d_model)

    def randn(scale=1.0):
        return scale * torch.randn(shape, device="cuda", generator=generator)

    rows = []
    with torch.no_grad():
        x, h, attended, remembered = randn(), randn(), randn(0.1), randn(3.0)
        torch_mix = lambda: block.mix_and_feed_forward(x, h, attended, remembered)  # noqa: E731
        fused_mix = lambda: block.mix_and_feed_forward_triton(x, h, attended, remembered)  # noqa: E731
        difference = (fused_mix() - torch_mix()).abs().max().item()
        old_ms, old_min = time_ms(torch_mix, warmup, repeats)
        new_ms, new_min = time_ms(fused_mix, warmup, repeats)
        rows.append([name, config.d_model, "MAG mix + FFN", f"{old_ms:.2f} ({old_min:.2f})", f"{new_ms:.2f} ({new_min:.2f})",
                     f"{old_ms / new_ms:.2f}x", f"{difference:.2e}"])  # fmt: skip
        del x, h, attended, remembered
        torch.cuda.empty_cache()

        attention = block.attention
        q, k = attention._heads(randn()), attention._heads(randn())  # (B, H, P, dh) views, as forward() makes
        position = torch.randint(0, 250_000_000, (lanes,), device="cuda", generator=generator)

        def rotate(build):
            rotation = build(attention, position, tokens)
            return apply_rotary(q, rotation), apply_rotary(k, rotation)

        old_rotary = lambda: rotate(old_rotation)  # noqa: E731
        new_rotary = lambda: rotate(lambda module, p, n: module._inference_rotation(p, n, q.dtype))  # noqa: E731
        difference = max((a - b).abs().max().item() for a, b in zip(old_rotary(), new_rotary()))
        old_ms, old_min = time_ms(old_rotary, warmup, repeats)
        new_ms, new_min = time_ms(new_rotary, warmup, repeats)
        rows.append([name, config.d_model, "rotary build + apply (q, k)", f"{old_ms:.2f} ({old_min:.2f})",
                     f"{new_ms:.2f} ({new_min:.2f})", f"{old_ms / new_ms:.2f}x", f"{difference:.2e}"])  # fmt: skip
    del block, q, k
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("fusion_gpu.py times CUDA kernels: no CUDA GPU is visible here")
    from titans_cli.model.fused_triton import TRITON_AVAILABLE

    if not TRITON_AVAILABLE:
        sys.exit("fusion_gpu.py needs triton (pip install triton)")
    torch.backends.cuda.matmul.allow_tf32 = True  # as titans_cli.device.choose_runtime on CUDA
    torch.backends.cudnn.allow_tf32 = True

    started = time.time()
    gpu = torch.cuda.get_device_name()
    rows = []
    for name in args.models:
        common.log(f"{name}: {args.lanes} lanes x {args.tokens} tokens")
        rows.extend(measure(name, args.lanes, args.tokens, args.warmup, args.repeats))
    table = common.md_table(
        ["model", "d_model", "operation", "torch / old ms, median (min)", "fused / new ms, median (min)", "speed-up", "max abs diff"],
        rows, align="lrlrrrr",
    )  # fmt: skip
    body = (
        f"{args.lanes} lanes x {args.tokens} tokens, fp32 activations, tf32 dense products, {gpu}; "
        f"median and min of {args.repeats} calls after {args.warmup} warm-up calls, the GPU synchronised "
        "around each call. MAG mix + FFN: `MAGBlock.mix_and_feed_forward` (torch) vs "
        "`mix_and_feed_forward_triton` (fused_triton). Rotary: the complex128 product then its "
        "complex64 cast (old) vs `_inference_rotation` (product written into complex64), each "
        "followed by `apply_rotary` on queries and keys.\n\n"
        f"Command: `python benchmarks/fusion_gpu.py --lanes {args.lanes} --tokens {args.tokens} "
        f"--warmup {args.warmup} --repeats {args.repeats}`\n\n{table}\n"
    )
    print(f"GPU: {gpu}\n\n{table}")
    path = common.write_section("fusion_gpu", "GPU inference fusions of the MAG block", body, quick=False,
                                elapsed_s=time.time() - started, gpu=gpu)  # fmt: skip
    common.log(f"wrote {path}")


if __name__ == "__main__":
    main()
