"""The split memory kernel (hidden units of a (row, head) across P programs) against the one-program
kernel, on one GPU, in one run.

1. Correctness on CUDA: the split kernel at P = 2 and 4 with fp32 (ieee) products against
   torch_chunked in fp32 and the float64 reference, for the titans config at issue 8's shape
   (d 64, hidden 128, chunk 64), the `dna` model's shape (d 32, hidden 64), gd + huber, and no
   clipping with retention none; bf16 products at P = 2 against the one-program kernel's bf16.
2. The memory op at issue 8's reference size (batch 8 x 16,384 tokens, 4 heads x 64, hidden 128,
   chunk 64), forward without the ||S_t|| signal (as `titans surprise` and the like-for-like layer
   row run it): the one-program kernel and split variants (parts, products, warps, the read in the
   recurrence or apart in triton_read), ms per call,
   µs per chunk, achieved TFLOP/s against the matmul rate measured in the same run, registers and
   spills of each compiled variant.
   Forward + backward of the op at that size, one-program kernels vs split (the backward kernel
   shares a (row, head)'s hidden blocks the same way, meeting after each of its four passes), with
   the read and its adjoints in the recurrences or apart.
3. Where the split pays: the same op at batch 1, 2 and 4 (4-16 (row, head) lanes), split vs not.

CUDA events, warm-up, median of repeats, fresh random inputs. Writes
benchmarks/results/memory_split_gpu.md naming the GPU.

    python benchmarks/memory_split_gpu.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from gpu_memory_kernel import max_result_error, measure_ceilings, op_inputs  # noqa: E402

from titans_cli.memory import reference, torch_chunked, triton_fused, triton_split  # noqa: E402
from titans_cli.memory.config import MemoryConfig  # noqa: E402
from titans_cli.memory.mlp import MemoryResult  # noqa: E402

REFERENCE = MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64)


def run_op(args, config, precision, parts, num_warps=None, read_apart=True):
    """The op's forward without the momentum signal; parts 0 = the one-program kernel; read_apart:
    the split kernel leaves the read to triton_read."""
    q, k, v, lr, momentum, decay, delta, weights, momenta = args
    out = triton_fused._fused_forward(q, k, v, lr, momentum, decay, delta, weights, momenta, config, precision,
                                      num_warps=num_warps, momentum_signal=False, parts=parts, read_apart=read_apart)
    return MemoryResult(*out)


def compare(got: MemoryResult, want: MemoryResult) -> float:
    """max_result_error over every output, but ||S_t|| where `got` did not compute it (NaN)."""
    if torch.isnan(got.momentum_norm).all():
        got = got._replace(momentum_norm=torch.zeros_like(got.grad_norm))
        want = want._replace(momentum_norm=torch.zeros_like(want.grad_norm))
    return max_result_error(got, want)


def correctness() -> list[list]:
    cases = {
        "titans, d 64 / hidden 128, chunk 64": REFERENCE.replace(num_heads=2),
        "dna model shape, d 32 / hidden 64": REFERENCE.replace(num_heads=2, head_dim=32),
        "gd + huber": REFERENCE.replace(num_heads=2, algorithm="gd", attentional_bias="huber"),
        # without clipping or forgetting, θ up to 0.1 diverges in every implementation: θ up to 0.01
        "retention none, no clipping, chunk 40, max_lr 0.01": REFERENCE.replace(
            num_heads=2, retention="none", max_grad_norm=float("inf"), chunk_size=40, max_lr=0.01),
    }
    rows = []
    for label, config in cases.items():
        args = op_inputs(config, batch=2, length=300, seed=1)
        chunked = torch_chunked.memory_update(*args[:7], args[7], args[8], config)
        exact = reference.memory_update(*(t.double() if torch.is_tensor(t) else t for t in args[:7]),
                                        tuple(w.double() for w in args[7]), tuple(s.double() for s in args[8]), config)
        for parts in (2, 4):
            if config.hidden_dim // parts < 16:
                continue
            got = run_op(args, config, "ieee", parts)
            for name, want, tolerance in (("torch_chunked fp32", chunked, 1e-4), ("float64 reference", exact, 1e-4)):
                error = compare(got, want)
                rows.append([label, f"split P={parts} ieee vs {name}", f"{error:.2e}",
                             "PASS" if error < tolerance else "FAIL"])
            common.log(f"correctness {label} P={parts}: {rows[-1][2]}")
        if config.head_dim >= 64:
            low = tuple(t.to(torch.bfloat16) for t in args[:3]) + args[3:]
            one = run_op(low, config, "bf16", 0)
            split = run_op(low, config, "bf16", 2)
            error = compare(split, one)
            rows.append([label, "split P=2 bf16 vs one-program bf16", f"{error:.2e}", "PASS" if error < 3e-2 else "FAIL"])
    return rows


def newest_binary(kernel) -> str:
    """'registers / spilled registers' of the variant of `kernel` compiled last (each variant timed
    here has its own constants, so its first call compiles it)."""
    try:
        binaries = [b for per_device in kernel.device_caches.values()
                    for b in (per_device[0] if isinstance(per_device, tuple) else per_device).values()]
        binary = binaries[-1]
        return f"{getattr(binary, 'n_regs', '?')} / {getattr(binary, 'n_spills', '?')}"
    except Exception as error:  # noqa: BLE001 - triton internals differ between versions
        return f"? ({type(error).__name__})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--length", type=int, default=16384)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("memory_split_gpu.py needs a CUDA GPU")
    started = time.time()
    gpu = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    ceilings = measure_ceilings()
    checks = correctness()

    def timed(fn):
        times = common.cuda_times_ms(fn, args.warmup, args.repeats)
        return statistics.median(times)

    chunks = -(-args.length // REFERENCE.chunk_size)
    variants = [  # (label, precision, parts, warps, read apart)
        ("one program per (row, head), bf16, 8 warps", "bf16", 0, 8, False),
        ("split P=2, bf16, 8 warps, read in the recurrence", "bf16", 2, 8, False),
        ("split P=2, bf16, 8 warps, read apart (main)", "bf16", 2, 8, True),
        ("split P=2, bf16, 4 warps, read apart", "bf16", 2, 4, True),
        ("one program per (row, head), tf32, 8 warps", "tf32", 0, 8, False),
        ("split P=4, tf32, 8 warps, read in the recurrence", "tf32", 4, 8, False),
        ("split P=4, tf32, 8 warps, read apart", "tf32", 4, 8, True),
    ]
    op = op_inputs(REFERENCE, batch=8, length=args.length, seed=2)
    low = tuple(t.to(torch.bfloat16) for t in op[:3]) + op[3:]
    base = {}
    rows = []
    for label, precision, parts, warps, apart in variants:
        inputs = low if precision == "bf16" else op
        try:
            ms = timed(lambda: run_op(inputs, REFERENCE, precision, parts, warps, apart))
        except Exception as error:  # noqa: BLE001 - a variant the card refuses is a row, not a crash
            rows.append([label, "failed", f"{type(error).__name__}: {str(error)[:80]}", "", "", "", ""])
            common.log(f"{label}: {type(error).__name__}: {error}")
            continue
        binary = newest_binary(triton_split._memory_split_kernel if parts else triton_fused._memory_chunks_kernel)
        if parts == 0:
            base[precision] = ms
        tokens = 8 * args.length
        # useful work without the ||S_t|| Grams: 9 products of b x d x hidden per (lane, chunk) (the
        # read's 2 in the read kernel where it is apart; its time is in the row)
        lanes = 8 * REFERENCE.num_heads
        tflops = (9 * 2 * REFERENCE.chunk_size * REFERENCE.head_dim * REFERENCE.hidden_dim * lanes * chunks
                  / (ms * 1e-3) / 1e12)
        rows.append([label, f"{ms:.2f}", f"{tokens / ms / 1e3:.1f}", f"{ms * 1e3 / chunks:.1f}",
                     f"{base[precision] / ms:.2f}x" if precision in base else "",
                     f"{tflops:.1f} ({100 * tflops / ceilings[precision + '_matmul_tflops']:.1f} %)", binary])
        common.log(f"{label}: {ms:.2f} ms")

    # forward + backward of the op (a loss on every output but ||S_t||), one program per (row, head)
    # vs split, forward and backward kernels alike (parts as choose_parts picks them)
    def op_step(inputs):
        leaves = [t.detach().clone().requires_grad_(True) for t in (*inputs[:6], *inputs[7], *inputs[8])]
        q, k, v, lr, momentum, decay, w1, w2, s1, s2 = leaves
        result = triton_fused.memory_update(q, k, v, lr, momentum, decay, None, (w1, w2), (s1, s2), REFERENCE,
                                            momentum_signal=False)
        loss = (result.output.float().square().sum() + result.grad_norm.float().sum()
                + sum(w.square().sum() for w in (*result.weights, *result.momenta)))
        return torch.autograd.grad(loss, leaves)

    original_choice = triton_split.choose_parts
    original_forward, original_backward = triton_fused._fused_forward, triton_fused._triton_backward
    training = []
    grads = {}
    cases = (("one program per (row, head), read in the recurrences", lambda *a: 1, False),
             ("split as chosen, read in the recurrences", original_choice, False),
             ("split as chosen, read apart (main)", original_choice, True))
    for label, choice, apart in cases:
        triton_split.choose_parts = choice
        triton_fused._fused_forward = functools.partial(original_forward, read_apart=apart)
        triton_fused._triton_backward = functools.partial(original_backward, read_apart=apart)
        try:
            ms = timed(lambda: op_step(low))
            grads[label] = op_step(low)
        finally:
            triton_split.choose_parts = original_choice
            triton_fused._fused_forward, triton_fused._triton_backward = original_forward, original_backward
        parts = choice(REFERENCE, 32, "bf16", sms)
        training.append([label, parts, f"{ms:.2f}", f"{8 * args.length / ms / 1e3:.2f}"])
        common.log(f"forward+backward {label}: {ms:.2f} ms")
    first = next(iter(grads.values()))
    for row, got in zip(training, grads.values()):
        row.append(f"{max((x.double() - y.double()).norm().item() / max(y.double().norm().item(), 1e-30) for x, y in zip(got, first)):.1e}")

    sweep = []
    for batch in (1, 2, 4):
        small = op_inputs(REFERENCE, batch=batch, length=args.length, seed=3)
        small = tuple(t.to(torch.bfloat16) for t in small[:3]) + small[3:]
        one = timed(lambda: run_op(small, REFERENCE, "bf16", 0))
        parts = triton_split.choose_parts(REFERENCE, batch * REFERENCE.num_heads, "bf16", sms)
        split = timed(lambda: run_op(small, REFERENCE, "bf16", None))
        sweep.append([batch, batch * REFERENCE.num_heads, f"{one:.2f}", parts, f"{split:.2f}", f"{one / split:.2f}x"])
        common.log(f"batch {batch}: one-program {one:.2f} ms, chosen P={parts} {split:.2f} ms")

    body = (
        f"Card: {gpu} ({sms} SMs). Command: `python benchmarks/memory_split_gpu.py"
        f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`.\n\n"
        "### Correctness on CUDA (max relative error over output, grad_norm, weights, momenta)\n\n"
        + common.md_table(["inputs (batch 2, 300 tokens)", "comparison", "rel. error", "result"], checks)
        + f"\n\n### The memory op at issue 8's reference size (batch 8 x {args.length:,} tokens, 4 heads x 64, "
        f"hidden 128, chunk 64), forward without ||S_t||, median of {args.repeats}\n\n"
        + common.md_table(["kernel", "ms", "M tok/s", "µs per chunk", "vs one-program, same products",
                          "TFLOP/s (of the matmul rate)", "registers / spills"], rows)
        + f"\n\nMatmul rates measured in the same run (8192³): bf16 {ceilings['bf16_matmul_tflops']:.0f}, tf32 "
        f"{ceilings['tf32_matmul_tflops']:.0f} TFLOP/s. Useful work counted: 9 products of 64 x 64 x 128 per "
        "(row, head, chunk), the one-program kernel's recomputed products not counted."
        + "\n\n### Forward + backward of the op at the same size (bf16 inputs and products), without ||S_t||\n\n"
        + common.md_table(["kernels", "parts", "ms", "M tok/s", "max rel. gradient difference vs one-program"], training)
        + "\n\n### Fewer lanes: batch 1-4 x the same length, bf16 products, split as `choose_parts` picks it\n\n"
        + common.md_table(["batch", "(row, head) lanes", "one-program ms", "parts chosen", "split ms", "speed-up"], sweep)
    )
    path = common.write_section("memory_split_gpu", "The split memory kernel on one GPU", body, quick=False,
                                elapsed_s=time.time() - started, gpu=gpu)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
