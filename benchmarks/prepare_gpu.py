"""The memory layer's input kernel (memory/prepare_triton.py) on one GPU: tokens per program and warps,
forward and backward.

The kernel reads the q|k|v projections and gate pre-activations once and writes q, k, v per head and
the fp32 gates: a pass over memory, so its yardstick is bytes moved against the card's copy rate. Two
shapes: issue 8's reference layer under bf16 autocast (batch 8 x 16,384 tokens, 4 heads x 64) and the
`dna` model's streaming step in fp32 (128 lanes x 4,096 tokens, 4 heads x 32). CUDA events, median of
repeats. Writes benchmarks/results/prepare_gpu.md naming the GPU.

    python benchmarks/prepare_gpu.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from titans_cli.memory import prepare_triton  # noqa: E402

SHAPES = {  # name -> (batch, length, heads, head_dim, dtype)
    "reference layer, bf16 (8 x 16,384, 4 x 64)": (8, 16384, 4, 64, torch.bfloat16),
    "dna streaming step, fp32 (128 x 4,096, 4 x 32)": (128, 4096, 4, 32, torch.float32),
}


def copy_rate() -> float:
    """GB/s of a 1 GiB device-to-device copy (bytes read + written)."""
    source = torch.empty(2**28, device="cuda", dtype=torch.float32)
    target = torch.empty_like(source)
    ms = statistics.median(common.cuda_times_ms(lambda: target.copy_(source), 2, 10))
    return 2 * source.numel() * 4 / (ms * 1e-3) / 1e9


def sweep(label: str, what: str, moved: int, ceiling: float, repeats: int, tokens: tuple, warps_options: tuple,
          default: tuple, call) -> list[list]:
    """Rows (shape, tokens, warps, µs, GB/s, of copy rate, default?) of call(block_t, warps) at each
    setting: median of `repeats` CUDA-event timings after two warm-ups."""
    rows = []
    for block_t in tokens:
        for warps in warps_options:
            ms = statistics.median(common.cuda_times_ms(lambda: call(block_t, warps), 2, repeats))
            rate = moved / (ms * 1e-3) / 1e9
            rows.append([label, block_t, warps, f"{ms * 1e3:.0f}", f"{rate:.0f}", f"{100 * rate / ceiling:.0f} %",
                         "default" if (block_t, warps) == default else ""])
            common.log(f"{label} {what}block {block_t} warps {warps}: {ms * 1e3:.0f} µs {rate:.0f} GB/s")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("prepare_gpu.py needs a CUDA GPU")
    started = time.time()
    gpu = torch.cuda.get_device_name()
    ceiling = copy_rate()
    rows, back_rows = [], []
    for label, (batch, length, heads, dim, dtype) in SHAPES.items():
        width = 3 * heads * dim
        projected = torch.randn(batch, length, width, device="cuda", dtype=dtype)
        gate_pre = torch.randn(batch, length, 3 * heads, device="cuda", dtype=dtype)
        tail = torch.randn(batch, 3, width, device="cuda", dtype=dtype)
        weight = torch.randn(width, 1, 4, device="cuda")
        bias = torch.randn(width, device="cuda")
        size = projected.element_size()
        moved = (2 * projected.numel() * size + gate_pre.numel() * size + 3 * batch * heads * length * 4)
        rows += sweep(label, "", moved, ceiling, args.repeats, (32, 64, 128), (2, 4, 8),
                      (prepare_triton._BLOCK_T, prepare_triton._NUM_WARPS),
                      lambda block_t, warps: prepare_triton.prepare_inputs(
                          projected, tail, weight, bias, gate_pre, heads, 0.1, block_t=block_t, num_warps=warps))
        # The backward (training): the adjoint kernel at each tokens/warps per program, then the conv's transpose
        cotangents = [torch.randn(batch, heads, length, dim, device="cuda", dtype=dtype) for _ in range(3)]
        cotangents.append(torch.randn(3, batch, heads, length, device="cuda"))
        # projections read, d_c written and read, their adjoint written, the q|k|v cotangents read (5 x the
        # projections); gate pre-activations read and their adjoint written; the fp32 gate cotangents read
        moved_back = 5 * projected.numel() * size + 2 * gate_pre.numel() * size + 3 * batch * heads * length * 4
        back_rows += sweep(label, "backward ", moved_back, ceiling, args.repeats, (16, 32, 64), (1, 2, 4),
                           (prepare_triton._BLOCK_T_BACKWARD, prepare_triton._NUM_WARPS_BACKWARD),
                           lambda block_t, warps: prepare_triton.prepare_backward(
                               projected, tail, weight, bias, gate_pre, heads, 0.1, cotangents,
                               block_t=block_t, num_warps=warps))
    body = (f"Card: {gpu}; device-to-device copy {ceiling:.0f} GB/s (read + write) measured in the same run. "
            f"Bytes moved = projections and gate pre-activations read once, q, k, v and the fp32 gates written once. "
            f"Median of {args.repeats}. Command: `python benchmarks/prepare_gpu.py"
            f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`.\n\n"
            + common.md_table(["shape", "tokens per program", "warps", "µs", "GB/s", "of copy rate", ""], rows)
            + "\n\nThe backward (`prepare_backward`: the recomputing adjoint kernel at these tokens and warps per "
            "program, then the conv's transpose). Bytes moved = projections read, the conv output's adjoint written "
            "and read back (in the projections' dtype) and the projections' adjoint written; the gate "
            "pre-activations read and their adjoint written; the q, k, v cotangents read (projections' dtype) and "
            "the fp32 gate cotangents read.\n\n"
            + common.md_table(["shape", "tokens per program", "warps", "µs", "GB/s", "of copy rate", ""], back_rows))
    path = common.write_section("prepare_gpu", "The memory layer's input kernel on one GPU", body, quick=False,
                                elapsed_s=time.time() - started, gpu=gpu)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
