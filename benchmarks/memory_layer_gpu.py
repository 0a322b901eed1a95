"""The whole memory layer on one GPU beside titans-pytorch, nothing else: issue 8's headline ratio
in a couple of minutes (the full `gpu_memory_kernel.py` run, with ceilings, correctness and every op
variant, takes longer than a device call allows).

Issue 8's reference configuration: d_model 256 -> 4 heads x 64, memory MLP depth 2 (expansion 2),
chunk 64, batch 8 x 16,384 tokens, store + retrieve. titans_cli's NeuralMemory with the triton
backend (the fused input-path and update kernels, Triton backward) against
``titans_pytorch.NeuralMemory(dim=256, chunk_size=64, heads=4, dim_head=64)``, both in fp32 and
both under bf16 autocast (as `titans train` runs on a GPU); forward under no_grad and forward +
backward of a mean-square loss. titans_cli's layer also returns per-token ||S_t|| (the momentum
signal), which titans-pytorch does not compute: a second titans_cli row passes momentum=False
(what `titans surprise` does unless it reports that signal, and what `titans train` does), the
like-for-like one. Two timings of each: per call (CUDA events around one call, synchronised after
each, so the host's launch latency before the GPU work counts: gpu_memory_kernel.time_cuda, median
of repeats) and back to back (`repeats` calls queued between two events with no synchronisation in
between, as a stream of pieces runs: the host prepares the next call while the GPU runs this one;
median of three such runs, per call). Peak = max_memory_allocated over one call. Writes
benchmarks/results/memory_layer_gpu.md.

    python benchmarks/memory_layer_gpu.py [--repeats 5] [--profile fwd|fwd+bwd]

Needs CUDA and titans-pytorch (carried wheels on the device machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from gpu_memory_kernel import time_cuda, titans_pytorch_layer  # noqa: E402

from titans_cli.memory import layer as memory_layer  # noqa: E402
from titans_cli.memory.config import MemoryConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", choices=("fwd", "fwd+bwd"),
                        help="only print torch.profiler's GPU-time table of one bf16 momentum=False call (no timings)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("memory_layer_gpu.py needs a CUDA GPU")
    started = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows in true fp32 on both sides
    gpu = torch.cuda.get_device_name()
    tokens = args.batch * args.length
    torch.manual_seed(0)
    config = MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64)
    ours = memory_layer.NeuralMemory(256, config).cuda()
    # name -> (module, keyword arguments, forward only?)
    layers = {"titans_cli (triton)": (ours, {"backend": "triton"}, False),
              "titans_cli (triton), momentum=False": (ours, {"backend": "triton", "momentum": False}, False),
              "titans-pytorch": (titans_pytorch_layer(), {}, False)}
    x = torch.randn(args.batch, args.length, 256, device="cuda")

    def forward(name, bf16):
        module, kwargs, _ = layers[name]
        call = lambda: module(x, **kwargs)  # noqa: E731

        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                return call()

        return run

    def forward_backward(name, bf16):
        run = forward(name, bf16)

        def step():
            run()[0].float().square().mean().backward()
            layers[name][0].zero_grad(set_to_none=True)

        return step

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        name = "titans_cli (triton), momentum=False"
        run = forward(name, True) if args.profile == "fwd" else forward_backward(name, True)
        with torch.set_grad_enabled(args.profile != "fwd"):
            run()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as trace:
                run()
                torch.cuda.synchronize()
        print(trace.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
        return 0  # a profile run writes no results


    def queue_length(stats) -> int:  # `repeats` calls, fewer for the slow rows (about 2 s a run)
        return max(2, min(args.repeats, int(2000 / stats["median_ms"])))

    results = {}
    for bf16 in (False, True):
        for name in layers:
            for mode in ("fwd",) if layers[name][2] else ("fwd", "fwd+bwd"):
                if mode == "fwd":
                    with torch.no_grad():
                        stats = time_cuda(forward(name, bf16), args.warmup, args.repeats)
                        stats["queued_ms"] = common.cuda_queued_ms(forward(name, bf16), queue_length(stats))
                else:
                    stats = time_cuda(forward_backward(name, bf16), args.warmup, args.repeats)
                    stats["queued_ms"] = common.cuda_queued_ms(forward_backward(name, bf16), queue_length(stats))
                stats["rate"] = tokens / (stats["median_ms"] * 1e-3)
                stats["queued_rate"] = tokens / (stats["queued_ms"] * 1e-3)
                results[(name, bf16, mode)] = stats
                common.log(f"{name} bf16={bf16} {mode}: {stats['median_ms']:.2f} ms per call, {stats['queued_ms']:.2f} "
                           f"ms back to back, {stats['rate'] / 1e6:.2f} M tok/s peak {stats['peak_gib']:.2f} GiB")

    queued = []
    for bf16 in (False, True):
        for name in layers:
            cells = [name, "bf16 autocast" if bf16 else "fp32"]
            for mode in ("fwd", "fwd+bwd"):
                stats, theirs = results[(name, bf16, mode)], results[("titans-pytorch", bf16, mode)]
                cells += [f"{stats['queued_ms']:.2f}", f"{stats['queued_rate'] / 1e6:.2f}",
                          f"{stats['queued_rate'] / theirs['queued_rate']:.2f}x"]
            queued.append(cells)
    rows = []
    for bf16 in (False, True):
        for name in layers:
            cells = [name, "bf16 autocast" if bf16 else "fp32"]
            for mode in ("fwd", "fwd+bwd"):
                if (name, bf16, mode) not in results:
                    cells += ["-"] * 4
                    continue
                stats, theirs = results[(name, bf16, mode)], results[("titans-pytorch", bf16, mode)]
                cells += [f"{stats['median_ms']:.2f}", f"{stats['rate'] / 1e6:.2f}", f"{stats['rate'] / theirs['rate']:.2f}x",
                          f"{stats['peak_gib']:.2f}"]
            rows.append(cells)
    body = (f"Issue 8's reference memory layer (d_model 256, 4 heads x 64, depth 2, chunk 64), batch {args.batch} x "
            f"{args.length:,} tokens, on {gpu}; median of {args.repeats} after {args.warmup} warm-up calls. "
            "'vs titans-pytorch': against titans-pytorch in the same precision, same run. Command: "
            f"`python benchmarks/memory_layer_gpu.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`.\n\n"
            + "**Per call** (synchronised after each call):\n\n"
            + common.md_table(["layer", "precision", "fwd ms", "fwd M tok/s", "fwd vs titans-pytorch", "fwd peak GiB",
                               "fwd+bwd ms", "fwd+bwd M tok/s", "fwd+bwd vs titans-pytorch", "fwd+bwd peak GiB"], rows)
            + f"\n\n**Back to back** ({args.repeats} calls queued, fewer where a call takes over 0.1 s, no "
            "synchronisation between them; ms per call, median of three runs):\n\n"
            + common.md_table(["layer", "precision", "fwd ms", "fwd M tok/s", "fwd vs titans-pytorch",
                               "fwd+bwd ms", "fwd+bwd M tok/s", "fwd+bwd vs titans-pytorch"], queued))
    path = common.write_section("memory_layer_gpu", "Memory layer vs titans-pytorch on one GPU", body, quick=False,
                                elapsed_s=time.time() - started, gpu=gpu)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
