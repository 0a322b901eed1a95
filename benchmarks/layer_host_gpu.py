"""Where the host's time goes in one call of the memory layer on a GPU (issue 8's reference shape,
bf16 autocast, momentum=False, no_grad), and where the GPU waits for it.

Per call (median of --repeats): the time until the call returns on the host, and until its GPU work
is done (synchronised before and after each call). Then one call under torch.profiler: every kernel
in launch order with the host time of its launch and the GPU's start, end and idle gap before it,
all relative to the call's start; and a cProfile of --repeats calls, the Python functions by own
time. Prints only (a diagnostic, not a results section); --trace writes the chrome trace.

--backward times a training call instead (forward with autograd, then the backward of a mean-square
loss, as memory_layer_gpu.py's forward+backward row).

    python benchmarks/layer_host_gpu.py [--repeats 20] [--trace trace.json] [--tree DIR] [--no-profile] [--backward]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# --tree DIR: time the titans_cli package in DIR (as layer_ab_gpu.py), else this checkout's
_tree = sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else str(Path(__file__).resolve().parents[1])
sys.path.insert(0, _tree)

from titans_cli.memory import layer as memory_layer  # noqa: E402
from titans_cli.memory.config import MemoryConfig  # noqa: E402


def kernel_timeline(trace: dict, call_start_us: float) -> list[tuple]:
    """(name, launch µs, GPU start µs, GPU end µs) of each kernel in a chrome trace, by GPU start."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    launches = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    rows = []
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy"):
            launch = launches.get(e.get("args", {}).get("correlation"), float("nan"))
            rows.append((e["name"][:70], launch - call_start_us, e["ts"] - call_start_us,
                         e["ts"] + e.get("dur", 0) - call_start_us))
    return sorted(rows, key=lambda r: r[2])


def host_costs(layer, x) -> None:
    """Host µs per call of the operations the layer's call is made of (enqueue only: 200 calls between
    two synchronisations)."""
    weight = torch.randn(784, 256, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(784, device="cuda", dtype=torch.bfloat16)
    xb = x.to(torch.bfloat16)
    small = torch.randn(32, 128, 64, device="cuda")
    expanded = small[:1].expand(32, 128, 64)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        projected, gate_pre = layer.to_qkv(xb), layer.to_gates(xb)
    from titans_cli.memory.prepare_triton import prepare_inputs

    tail = torch.zeros(x.shape[0], 3, 768, device="cuda", dtype=torch.bfloat16)
    operations = {
        "torch.empty (32x128x64 fp32)": lambda: torch.empty(32, 128, 64, device="cuda"),
        "torch.zeros (same)": lambda: torch.zeros(32, 128, 64, device="cuda"),
        "empty + copy_ of an expanded tensor": lambda: torch.empty(32, 128, 64, device="cuda").copy_(expanded),
        "a view (t[:, :, 0:100])": lambda: small[:, :, 0:100],
        "x.to(bf16) (8 x 16k x 256)": lambda: x.to(torch.bfloat16),
        "F.linear bf16 784 outputs, bias": lambda: torch.nn.functional.linear(xb, weight, bias),
        "F.linear bf16 784 outputs, no bias": lambda: torch.nn.functional.linear(xb, weight),
        "to_qkv (nn.Linear, no bias) under autocast": lambda: layer.to_qkv(x),
        "prepare_inputs (one Triton launch)": lambda: prepare_inputs(projected, tail, layer.conv.weight,
                                                                     layer.conv.bias, gate_pre, 4, 0.1),
    }
    print("\nhost µs per call (enqueue only, median of 5 runs of 50 calls):")
    for name, operation in operations.items():
        runs = []
        for _ in range(5):
            torch.cuda.synchronize()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                start = time.perf_counter()
                for _ in range(50):
                    operation()
                runs.append((time.perf_counter() - start) / 50 * 1e6)
        torch.cuda.synchronize()
        print(f"  {name:50s} {statistics.median(runs):7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--trace", type=Path)
    parser.add_argument("--tree", help="a directory holding the titans_cli package to time")
    parser.add_argument("--no-profile", action="store_true", help="only the timings, no profiler or cProfile")
    parser.add_argument("--backward", action="store_true", help="a training call: forward with autograd + backward")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("layer_host_gpu.py needs a CUDA GPU")
    torch.manual_seed(0)
    config = MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64)
    layer = memory_layer.NeuralMemory(256, config).cuda()
    x = torch.randn(args.batch, args.length, 256, device="cuda")

    def call():
        if args.backward:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                output = layer(x, backend="triton", momentum=False)[0]
            output.float().square().mean().backward()
            layer.zero_grad(set_to_none=True)
            return output
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return layer(x, backend="triton", momentum=False)

    from titans_cli.memory import triton_split

    launches = []
    launch_split = triton_split.launch_split

    def timed_launch(*a, **k):  # when the host reaches the split kernel's launch
        launches.append(time.perf_counter())
        return launch_split(*a, **k)

    triton_split.launch_split = timed_launch
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    host, total, to_split = [], [], []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        returned = time.perf_counter()
        torch.cuda.synchronize()
        done = time.perf_counter()
        host.append((returned - start) * 1e3)
        total.append((done - start) * 1e3)
        to_split.append((launches[-1] - start) * 1e3)
    triton_split.launch_split = launch_split
    print(f"{torch.cuda.get_device_name()}: host until the split kernel's launch {statistics.median(to_split):.3f} ms, "
          f"until the call returns {statistics.median(host):.3f} ms (min {min(host):.3f}), until its GPU work is "
          f"done {statistics.median(total):.3f} ms (min {min(total):.3f}); median of {args.repeats}")
    if not args.backward:
        host_costs(layer, x)
    if args.no_profile:
        return 0

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        with torch.profiler.record_function("layer_call"):
            call()
        torch.cuda.synchronize()
    path = args.trace or Path(tempfile.mkstemp(suffix=".json")[1])
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    start = min(e["ts"] for e in events if e.get("name") == "layer_call")
    end = max(e["ts"] + e["dur"] for e in events if e.get("name") == "layer_call" and e.get("ph") == "X")
    print(f"\nprofiled call: host {end - start:.0f} µs (under the profiler)\n")
    print(f"{'kernel':70s} {'launch':>8s} {'start':>8s} {'end':>8s} {'gap':>7s}")
    previous_end = 0.0
    for name, launch, begin, finish in kernel_timeline(trace, start):
        print(f"{name:70s} {launch:8.0f} {begin:8.0f} {finish:8.0f} {begin - previous_end:7.0f}")
        previous_end = finish

    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    profiler.enable()
    for _ in range(args.repeats):
        call()
    profiler.disable()
    torch.cuda.synchronize()
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(30)
        print(f"\ncProfile of {args.repeats} calls, by {order}:\n" + text.getvalue()[-6000:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
