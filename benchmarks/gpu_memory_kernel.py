"""The fused Triton memory update on one GPU, side by side with torch_chunked and titans-pytorch.

One run, one card (issue 8, item 1 and the GPU half of item 3):

1. the card's measured ceilings: a large bf16 / tf32 / fp32 matrix product and a large
   device-to-device copy (bytes read + written);
2. correctness on CUDA at small sizes: torch_chunked and triton_fused (ieee / tf32 / bf16 products)
   against the float64 reference, and triton_fused against torch_chunked — PASS/FAIL;
3. the reference configuration (d_model 256 -> 4 heads x 64, memory MLP depth 2 expansion 2, chunk
   64, batch 8 x 16k tokens, store + retrieve): tokens/s forward and forward+backward and peak GPU
   memory, for the memory op alone (torch_chunked vs triton_fused variants) and for the whole memory
   layer (titans_cli NeuralMemory with the torch or triton backend vs
   ``titans_pytorch.NeuralMemory(dim=256, chunk_size=64, heads=4, dim_head=64)``);
4. achieved FLOP/s and bytes/s of the fused op against the ceilings.

CUDA events, warm-up, median of repeats; fresh random inputs (never zeros). Writes
benchmarks/results/gpu_memory_kernel.md (naming the GPU) and, with --json, the raw numbers.

    python benchmarks/gpu_memory_kernel.py [--batch 8] [--length 16384] [--repeats 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from titans_cli.memory import layer as memory_layer  # noqa: E402
from titans_cli.memory import reference, torch_chunked, triton_fused  # noqa: E402
from titans_cli.memory.config import MemoryConfig  # noqa: E402
from titans_cli.memory.mlp import initial_memory_weights  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_memory_kernel.md"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- timing


def time_cuda(fn, warmup: int, repeats: int) -> dict:
    """Median / min milliseconds of fn() between CUDA events, after warm-up; peak memory of one call."""
    times = common.cuda_times_ms(fn, warmup, repeats)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "peak_gib": peak / 2**30, "peak_extra_gib": (peak - base) / 2**30}


# ----------------------------------------------------------------------------- ceilings


def measure_ceilings() -> dict:
    n = 8192
    out = {}
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True), ("fp32", torch.float32, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x, y = a.to(dtype), b.to(dtype)
        stats = time_cuda(lambda: x @ y, warmup=2, repeats=5 if name == "fp32" else 10)
        out[f"{name}_matmul_tflops"] = 2 * n**3 / (stats["median_ms"] * 1e-3) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    del a, b
    src = torch.randn(2**29 // 2, device="cuda")  # 1 GiB fp32
    dst = torch.empty_like(src)
    stats = time_cuda(lambda: dst.copy_(src), warmup=2, repeats=10)
    out["copy_gbps"] = 2 * src.numel() * 4 / (stats["median_ms"] * 1e-3) / 1e9
    del src, dst
    torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------- inputs


def op_inputs(config: MemoryConfig, batch: int, length: int, dtype=torch.float32, device="cuda", seed=None):
    generator = torch.Generator(device="cpu").manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
    heads, dim = config.num_heads, config.head_dim
    shape = (batch, heads, length)

    def randn(*size):
        return torch.randn(*size, generator=generator).to(device)

    def rand(*size):
        return torch.rand(*size, generator=generator).to(device)

    q = F.normalize(randn(*shape, dim), dim=-1).to(dtype)
    k = F.normalize(randn(*shape, dim), dim=-1).to(dtype)
    v = randn(*shape, dim).to(dtype)
    # Gates in the ranges the layer produces (θ up to max_lr, η ≈ 0.9, small α).
    lr = rand(*shape) * config.max_lr
    momentum = 0.7 + 0.29 * rand(*shape)
    decay = 0.01 * rand(*shape)
    delta = 0.5 + rand(*shape) if config.attentional_bias == "huber" else None
    weights = tuple(w.to(device).expand(batch, *w.shape).contiguous() + 0.02 * randn(batch, *w.shape)
                    for w in initial_memory_weights(config, generator))
    momenta = tuple(0.01 * randn(*w.shape) for w in weights)
    return (q, k, v, lr, momentum, decay, delta, weights, momenta)


def relative_error(got, want) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    want = want.double()
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


def max_result_error(got, want) -> float:
    pairs = [(got.output, want.output), (got.grad_norm, want.grad_norm), (got.momentum_norm, want.momentum_norm)]
    pairs += list(zip(got.weights, want.weights)) + list(zip(got.momenta, want.momenta))
    return max(relative_error(a, b) for a, b in pairs)


# ----------------------------------------------------------------------------- correctness


def correctness() -> list[list]:
    rows = []
    checks = [
        ("titans depth 2, d64 h128, chunk 64, T 200", MemoryConfig(max_grad_norm=0.5), 2, 200),
        ("depth 1, chunk 64, T 150", MemoryConfig(depth=1, max_grad_norm=0.5), 2, 150),
        ("gd + huber + lq, chunk 32, T 100", MemoryConfig(algorithm="gd", attentional_bias="huber", retention="lq", chunk_size=32), 1, 100),
    ]
    tolerances = {"ieee": 1e-4, "tf32": 1e-2, "bf16": 3e-2}  # as tests/test_memory_triton.py
    for label, config, batch, length in checks:
        args = op_inputs(config, batch, length)
        q, k, v, lr, momentum, decay, delta, weights, momenta = args
        with torch.no_grad():
            chunked = torch_chunked.memory_update(*args, config)
            if label.startswith("titans"):
                to64 = lambda t: None if t is None else t.double()  # noqa: E731
                exact = reference.memory_update(*(to64(t) for t in args[:7]), tuple(map(to64, weights)),
                                                tuple(map(to64, momenta)), config)
                error = max_result_error(chunked, exact)
                rows.append([label, "torch_chunked fp32 vs float64 reference", f"{error:.2e}", "PASS" if error < 1e-4 else "FAIL"])
            else:
                exact = chunked
            for precision in ("ieee", "tf32", "bf16") if label.startswith("titans") else ("ieee",):
                try:
                    if precision == "bf16":
                        low = tuple(t.to(torch.bfloat16) for t in (q, k, v))
                        fused = triton_fused.memory_update(*low, *args[3:], config, precision="bf16")
                    else:
                        fused = triton_fused.memory_update(*args, config, precision=precision)
                    torch.cuda.synchronize()
                except Exception as error:  # noqa: BLE001 - one failed variant must not hide the others
                    rows.append([label, f"triton_fused {precision}", f"{type(error).__name__}: {error}"[:120], "FAIL"])
                    continue
                target = "float64 reference" if exact is not chunked else "torch_chunked fp32"
                error = max_result_error(fused, exact)
                rows.append([label, f"triton_fused {precision} vs {target}", f"{error:.2e}",
                             "PASS" if error < tolerances[precision] else "FAIL"])
                if precision == "ieee" and exact is not chunked:
                    error = max_result_error(fused, chunked)
                    rows.append([label, "triton_fused ieee vs torch_chunked fp32", f"{error:.2e}", "PASS" if error < 1e-4 else "FAIL"])
    rows += backward_correctness()
    return rows


def op_loss(impl, leaves, config, cotangents, **kwargs):
    """Σ <output_i, cotangent_i> over every output of the op (output, signals, weights, momenta)."""
    q, k, v, lr, momentum, decay, w1, w2, s1, s2 = leaves
    result = impl(q, k, v, lr, momentum, decay, None, (w1, w2), (s1, s2), config, **kwargs)
    outputs = (result.output, result.grad_norm, result.momentum_norm, *result.weights, *result.momenta)
    return sum((o.float() * c).sum() for o, c in zip(outputs, cotangents))


def grad_leaves(args):
    q, k, v, lr, momentum, decay, _delta, weights, momenta = args
    return [t.detach().clone().requires_grad_(True) for t in (q, k, v, lr, momentum, decay, *weights, *momenta)]


def cotangents_for(args):
    q, lr, weights, momenta = args[0], args[3], args[7], args[8]
    shapes = [q.shape, lr.shape, lr.shape] + [w.shape for w in (*weights, *momenta)]
    return [torch.randn(shape, device=q.device) for shape in shapes]


def backward_correctness() -> list[list]:
    """The Triton backward kernel's gradients against autograd through torch_chunked (fp32)."""
    rows = []
    label = "titans depth 2, d64 h128, chunk 64, T 200 (gradients)"
    config = MemoryConfig(max_grad_norm=0.5)
    args = op_inputs(config, 2, 200)
    cotangents = cotangents_for(args)
    leaves = grad_leaves(args)
    want = torch.autograd.grad(op_loss(torch_chunked.memory_update, leaves, config, cotangents), leaves)
    # bf16: q, k, v rounded to bf16 for both sides (the reference then runs in fp32 on those values)
    rounded = tuple(t.to(torch.bfloat16).float() for t in args[:3]) + tuple(args[3:])
    leaves16 = grad_leaves(rounded)
    want16 = torch.autograd.grad(op_loss(torch_chunked.memory_update, leaves16, config, cotangents), leaves16)
    for precision, tolerance in (("ieee", 1e-4), ("tf32", 1e-2), ("bf16", 5e-2)):
        try:
            leaves = grad_leaves(args if precision != "bf16" else rounded)
            if precision == "bf16":
                leaves[:3] = [t.detach().to(torch.bfloat16).requires_grad_(True) for t in leaves[:3]]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = torch.autograd.grad(op_loss(triton_fused.memory_update, leaves, config, cotangents,
                                                  precision=precision, backward="triton"), leaves)
                torch.cuda.synchronize()
            fell_back = any("recomputing" in str(w.message) for w in caught)
            reference_grads = want16 if precision == "bf16" else want
            error = max(relative_error(a.float(), b) for a, b in zip(got, reference_grads))
            what = f"triton backward kernel {precision} vs torch_chunked autograd"
            if fell_back:
                what = f"triton backward {precision}: kernel out of resources, recomputed through torch_chunked"
            rows.append([label, what, f"{error:.2e}", "PASS" if error < tolerance else "FAIL"])
        except Exception as error:  # noqa: BLE001
            rows.append([label, f"triton backward kernel {precision}", f"{type(error).__name__}: {error}"[:120], "FAIL"])
    return rows


# ----------------------------------------------------------------------------- FLOPs and bytes


def op_flops_per_chunk(b: int, d: int, h: int) -> int:
    """FLOPs of the depth-2 chunk step as the kernel does it (multiply-add = 2)."""
    bdh = 2 * b * d * h
    main = 9 * bdh  # keys fwd 2, δ back 1, read 2, M_b 2, S_b 2
    signals = 2 * (2 * b * b * h) + 2 * (2 * b * b * d) + 2 * bdh + 2 * b**3  # Grams, <S0,u>, Λ G
    return main + signals


def op_min_bytes(batch, heads, length, dim, hidden, io_bytes) -> int:
    tokens = batch * heads * length
    state = batch * heads * 4 * hidden * dim * 4 * 2  # weights + momenta, fp32, in and out
    return tokens * dim * io_bytes * 4 + tokens * 4 * 3 + tokens * io_bytes * 2 + state  # q k v o, gates, signals


# ----------------------------------------------------------------------------- layers


def install_triton_backend() -> None:
    """Benchmark-local hook: NeuralMemory(backend="triton") -> triton_fused.memory_update.

    layer.memory_op knows torch / numba / reference; the layer owner wires "triton" there.
    """
    original = memory_layer.memory_op
    if getattr(original, "benchmark_hook", False):
        return

    def memory_op(backend: str):
        # "triton" (the layer's own: default precision, backward kernel where it fits), "triton-ieee",
        # "triton-bf16" (precision forced), "triton-recompute" (backward through torch_chunked)
        if backend.startswith("triton-"):
            option = backend.partition("-")[2]
            if option == "recompute":
                return functools.partial(triton_fused.memory_update, backward="torch")
            return functools.partial(triton_fused.memory_update, precision=option)
        return original(backend)

    memory_op.benchmark_hook = True

    memory_layer.memory_op = memory_op


def compiled_kernels() -> list[str]:
    """Registers, spills and shared memory of each compiled variant of the fused kernel."""
    lines = []
    try:
        for per_device in triton_fused._memory_chunks_kernel.device_caches.values():
            cache = per_device[0] if isinstance(per_device, tuple) else per_device
            for kernel in cache.values():
                meta = kernel.metadata
                consts = {k: v for k, v in getattr(meta, "constants", {}).items() if isinstance(v, (int, str, bool))} if hasattr(meta, "constants") else {}
                lines.append(f"warps={meta.num_warps} stages={meta.num_stages} regs={getattr(kernel, 'n_regs', '?')} "
                             f"spills={getattr(kernel, 'n_spills', '?')} shared={meta.shared} {consts}")
    except Exception as error:  # noqa: BLE001 - triton internals differ between versions
        lines.append(f"(could not read the compiled kernels: {type(error).__name__}: {error})")
    return lines


def titans_pytorch_layer():
    from titans_pytorch import NeuralMemory

    return NeuralMemory(dim=256, chunk_size=64, heads=4, dim_head=64).cuda()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ieee", action="store_true", help="also time fp32 (FMA) products: slow, ~2 min more")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    started = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import triton

    gpu = torch.cuda.get_device_name()
    env = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
           "sms": torch.cuda.get_device_properties(0).multi_processor_count}
    log(f"environment: {env}")
    record = {"env": env, "args": {k: str(v) for k, v in vars(args).items()}}

    log("ceilings")
    ceilings = measure_ceilings()
    record["ceilings"] = ceilings
    log(f"ceilings: {ceilings}")

    log("correctness")
    try:
        checks = correctness()
    except Exception:  # keep measuring; the table says what broke
        checks = [["correctness", "exception", traceback.format_exc().splitlines()[-1], "FAIL"]]
        traceback.print_exc()
    record["correctness"] = checks
    for row in checks:
        log(" | ".join(row))

    config = MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64)
    batch, length = args.batch, args.length
    tokens = batch * length
    timings = {}

    def measure(name, fn, repeats=None):
        try:
            stats = time_cuda(fn, args.warmup, repeats or args.repeats)
            stats["tokens_per_s"] = tokens / (stats["median_ms"] * 1e-3)
            timings[name] = stats
            log(f"{name}: {stats['median_ms']:.2f} ms  {stats['tokens_per_s'] / 1e6:.2f} M tok/s  peak {stats['peak_gib']:.2f} GiB")
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            timings[name] = {"error": f"{type(error).__name__}: {error}"[:200]}
            torch.cuda.empty_cache()

    # ---- whole memory layers
    install_triton_backend()
    x = torch.randn(batch, length, 256, device="cuda")
    layers = {}
    torch.manual_seed(0)
    # name -> (module, backend or None for titans-pytorch, bf16 autocast?)
    ours = memory_layer.NeuralMemory(256, config).cuda()
    layers["titans_cli torch"] = (ours, "torch", False)
    layers["titans_cli triton"] = (ours, "triton", False)
    layers["titans_cli triton-recompute"] = (ours, "triton-recompute", False)
    if args.ieee:
        layers["titans_cli triton-ieee"] = (ours, "triton-ieee", False)
    layers["titans_cli triton-bf16"] = (ours, "triton-bf16", False)
    layers["titans_cli triton, bf16 autocast"] = (ours, "triton", True)
    try:
        theirs = titans_pytorch_layer()
        layers["titans-pytorch"] = (theirs, None, False)
        layers["titans-pytorch, bf16 autocast"] = (theirs, None, True)
        import titans_pytorch

        env["titans_pytorch"] = getattr(titans_pytorch, "__version__", "0.5.5 (wheel)")
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        timings["titans-pytorch import"] = {"error": f"{type(error).__name__}: {error}"[:200]}

    def forward(name):
        module, backend, bf16 = layers[name]
        call = (lambda: module(x)) if backend is None else (lambda: module(x, backend=backend))
        if not bf16:
            return call

        def autocast_call():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return call()

        return autocast_call

    def forward_backward(name):
        module = layers[name][0]
        run = forward(name)

        def step():
            out = run()
            y = out[0]
            y.float().square().mean().backward()
            module.zero_grad(set_to_none=True)

        return step

    log("layers, forward (inference, no_grad)")
    for name in layers:
        if name.endswith("recompute"):
            continue  # same forward as "titans_cli triton"
        with torch.no_grad():
            measure(f"layer {name} fwd", forward(name), repeats=5 if "torch" in name else None)
        if "error" in timings[f"layer {name} fwd"]:  # a layer that needs autograd for its forward
            log(f"{name}: forward under no_grad failed; measuring it with autograd enabled")
            measure(f"layer {name} fwd", forward(name))
            timings[f"layer {name} fwd"]["note"] = "autograd enabled (no_grad failed)"
    log("layers, forward + backward")
    for name in layers:
        if name.endswith("ieee"):
            continue  # fp32 FMA products: forward only
        measure(f"layer {name} fwd+bwd", forward_backward(name), repeats=3 if "titans_cli" in name else 5)
    layer_names = list(layers)
    del x, layers
    torch.cuda.empty_cache()
    # ---- the memory op alone (forward, no autograd)
    log("memory op, forward")
    fp32_args = op_inputs(config, batch, length)
    bf16_args = tuple(t.to(torch.bfloat16) for t in fp32_args[:3]) + fp32_args[3:]
    with torch.no_grad():
        measure("op torch_chunked fp32", lambda: torch_chunked.memory_update(*fp32_args, config), repeats=3)
        # ieee last: it is slow (fp32 products on the FMA units). bf16 with hidden blocks of 32
        # hit an illegal memory access on an H200 (triton 3.6) and is not run (KERNEL_NOTES.md).
        variants = [("bf16", 8, 64), ("bf16", 4, 64), ("tf32", 8, 64), ("tf32", 8, 32)]
        if args.ieee:
            variants.append(("ieee", 8, 64))
        for precision, warps, block in variants:
            op_args = bf16_args if precision == "bf16" else fp32_args
            measure(f"op triton_fused {precision} w{warps} hb{block}",
                    lambda: triton_fused._fused_forward(*op_args[:7], op_args[7], op_args[8], config, precision,
                                                        warps, block))
    log("memory op, forward + backward")
    cotangents = cotangents_for(fp32_args)
    backward_variants = [
        ("op torch_chunked fp32 fwd+bwd", torch_chunked.memory_update, {}, fp32_args),
        ("op triton_fused tf32 + torch_chunked recompute fwd+bwd", triton_fused.memory_update,
         {"precision": "tf32", "backward": "torch"}, fp32_args),
        ("op triton_fused bf16 + triton backward fwd+bwd", triton_fused.memory_update,
         {"precision": "bf16", "backward": "triton"}, bf16_args),
        ("op triton_fused tf32 + triton backward fwd+bwd", triton_fused.memory_update,
         {"precision": "tf32", "backward": "triton"}, fp32_args),
    ]
    for name, impl, kwargs, op_args in backward_variants:
        leaves = grad_leaves(op_args)
        measure(name, lambda: torch.autograd.grad(op_loss(impl, leaves, config, cotangents, **kwargs), leaves),
                repeats=3)
    del fp32_args, bf16_args, leaves
    torch.cuda.empty_cache()

    record["timings"] = timings
    record["compiled"] = compiled_kernels()
    for line in record["compiled"]:
        log(f"compiled: {line}")

    # ---- roofline of the fused op
    flops = op_flops_per_chunk(64, 64, 128) * batch * config.num_heads * math.ceil(length / 64)
    roof_rows = []
    for name, stats in timings.items():
        if not name.startswith("op triton_fused") or "median_ms" not in stats:
            continue
        precision = name.split()[2]
        seconds = stats["median_ms"] * 1e-3
        io_bytes = 2 if precision == "bf16" else 4
        nbytes = op_min_bytes(batch, config.num_heads, length, 64, 128, io_bytes)
        peak = ceilings[{"ieee": "fp32", "tf32": "tf32", "bf16": "bf16"}[precision] + "_matmul_tflops"]
        roof_rows.append([name, f"{flops / seconds / 1e12:.1f}", f"{100 * flops / seconds / 1e12 / peak:.1f} %",
                          f"{nbytes / seconds / 1e9:.0f}", f"{100 * nbytes / seconds / 1e9 / ceilings['copy_gbps']:.1f} %"])
    record["flops"] = flops

    # ---- report
    def cell(name, key="tokens_per_s", scale=1e6, digits=2):
        stats = timings.get(name, {})
        return f"{stats[key] / scale:.{digits}f}" if key in stats else stats.get("error", "n/a")

    base = timings.get("layer titans-pytorch fwd", {}).get("tokens_per_s")
    base_bwd = timings.get("layer titans-pytorch fwd+bwd", {}).get("tokens_per_s")
    layer_rows = []
    base16 = timings.get("layer titans-pytorch, bf16 autocast fwd", {}).get("tokens_per_s")
    base16_bwd = timings.get("layer titans-pytorch, bf16 autocast fwd+bwd", {}).get("tokens_per_s")
    for name in layer_names:
        fwd, bwd = timings.get(f"layer {name} fwd", {}), timings.get(f"layer {name} fwd+bwd", {})
        speed = lambda s, b: f"{s['tokens_per_s'] / b:.2f}x" if b and "tokens_per_s" in s else "n/a"  # noqa: E731
        b_fwd, b_bwd = (base16, base16_bwd) if name.endswith("bf16 autocast") else (base, base_bwd)
        layer_rows.append([name, cell(f"layer {name} fwd"), speed(fwd, b_fwd), cell(f"layer {name} fwd", "peak_gib", 1, 2),
                           cell(f"layer {name} fwd+bwd"), speed(bwd, b_bwd), cell(f"layer {name} fwd+bwd", "peak_gib", 1, 2)])
    op_rows = [[name[3:], f"{stats['median_ms']:.2f}", f"{stats['tokens_per_s'] / 1e6:.2f}", f"{stats['peak_gib']:.2f}"]
               for name, stats in timings.items() if name.startswith("op ") and "median_ms" in stats]
    op_rows += [[name[3:], stats["error"], "", ""] for name, stats in timings.items() if name.startswith("op ") and "error" in stats]

    elapsed = time.time() - started
    body = [
        f"## Fused Triton memory update vs torch_chunked vs titans-pytorch on one {gpu}",
        "",
        f"*GPU: {gpu} ({env['sms']} SMs); torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; "
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {common.git_commit()}; "
        f"script `benchmarks/gpu_memory_kernel.py`, ran in {elapsed / 60:.1f} min.*",
        "",
        f"Reference configuration: d_model 256 -> 4 heads x 64, memory MLP depth 2 (expansion 2 here; "
        f"titans-pytorch's own default MemoryMLP there), chunk 64, batch {batch} x {length} tokens, store + "
        "retrieve; fp32 unless the row says bf16; tf32 off in torch. Median of repeats between CUDA events "
        "after warm-up; peak = torch.cuda.max_memory_allocated over one call (inputs included).",
        "",
        "### Card ceilings (measured in this run)",
        "",
        common.md_table(["what", "measured"], [
            ["bf16 matmul 8192^3", f"{ceilings['bf16_matmul_tflops']:.0f} TFLOP/s"],
            ["tf32 matmul 8192^3", f"{ceilings['tf32_matmul_tflops']:.0f} TFLOP/s"],
            ["fp32 matmul 8192^3 (no tf32)", f"{ceilings['fp32_matmul_tflops']:.0f} TFLOP/s"],
            ["device-to-device copy 1 GiB (read + write)", f"{ceilings['copy_gbps']:.0f} GB/s"],
        ]),
        "",
        "### Correctness on CUDA (max relative error over output, signals, weights, momenta)",
        "",
        common.md_table(["inputs", "comparison", "rel. error", "result"], checks, "llrl"),
        "",
        "### Whole memory layer (projections, conv, gates, memory, output projection)",
        "",
        common.md_table(["layer", "fwd M tok/s", "vs titans-pytorch", "fwd peak GiB",
                         "fwd+bwd M tok/s", "vs titans-pytorch", "fwd+bwd peak GiB"], layer_rows),
        "",
        "titans_cli triton: the fused kernel with its default products (tf32 for fp32 inputs, bf16 for bf16 "
        "inputs) and, for training, the Triton backward kernel over checkpointed chunk-start states; "
        "-recompute: the same forward, backward by recomputing through torch_chunked under autograd; "
        "-ieee: true fp32 products; -bf16: bf16-rounded operands (fp32 accumulation and state); "
        "bf16 autocast: the layer called under torch.autocast(bfloat16), as `titans train` runs it on a GPU "
        "(titans-pytorch likewise). Rows without it are fp32 inputs and weights.",
        "",
        "### Memory op alone, forward (no autograd)",
        "",
        common.md_table(["implementation", "ms", "M tok/s", "peak GiB"], op_rows),
        "",
        f"### Fused op against the ceilings ({flops / 1e9:.1f} GFLOP of useful matrix work per call, "
        "minimum bytes = q, k, v, output, gates, signals once + state in and out)",
        "",
        common.md_table(["variant", "TFLOP/s", "of matmul ceiling", "GB/s", "of copy ceiling"], roof_rows),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(body))
    tmp.replace(args.out)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1, default=str))
    print("\n".join(body[-40:]))
    print()
    print(f"{'row':44s} {'ms':>9s} {'M tok/s':>9s} {'peak GiB':>9s}")
    for name, stats in timings.items():
        if "median_ms" in stats:
            print(f"{name:44s} {stats['median_ms']:9.2f} {stats['tokens_per_s'] / 1e6:9.2f} {stats['peak_gib']:9.2f}")
        else:
            print(f"{name:44s} {stats.get('error', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
