"""Training-step throughput of a model preset on one GPU, per memory backend (issue 8, item 1).

`titans train` runs each step as bf16 autocast forward + backward over crops in truncated-BPTT
pieces. This script times exactly that step (titans_cli.tasks.train's _PieceLoss and
_forward_backward, AdamW update included) with the memory update on

- torch:  torch_chunked under autograd (~15 launches per 64-token chunk, forward and backward);
- triton: the fused forward kernel and the Triton backward kernel over checkpointed chunk-start
  states (titans_cli.memory.triton_fused; recompute through torch_chunked where it does not fit),
  asking for no ||S_t|| signal (the loss reads only logits), so the forward may run split
  (memory/triton_split.py) and the backward skips the signal's Grams;
- triton-signal: the same kernels computing the ||S_t|| signal nobody reads, as `titans train` did
  before (for an A/B in one run: `--backends triton-signal,triton`);

and checks that both give the same gradients on one batch (relative L2 difference of the whole
parameter gradient, and of the loss). Tokens are uniform random A/C/G/T: throughput does not
depend on the values. Writes benchmarks/results/train_speed.md (naming the GPU) or --out.

    python benchmarks/train_speed.py [--preset dna-small] [--batch 192] [--crop 4096] [--steps 5]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from titans_cli.model.config import preset  # noqa: E402
from titans_cli.model.lm import TitansLM  # noqa: E402
from titans_cli.tasks import train as train_module  # noqa: E402
from gpu_memory_kernel import install_triton_backend, relative_error  # noqa: E402  (backends "triton-ieee", ...)

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.md"


def make_batch(batch: int, crop: int, vocab_low: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(vocab_low, vocab_low + 4, (batch, crop + 1), generator=generator)
    return tokens[:, :-1].cuda(), tokens[:, 1:].cuda()


def piece_loss(model, autocast, backend: str):
    """`titans train`'s loss; backend "triton-signal" = triton computing the ||S_t|| signal nobody
    reads, as `titans train` did before it asked for none (no split forward, backward with Grams)."""
    if backend == "triton-signal":
        return train_module._PieceLoss(model, autocast, "triton", momentum=True)
    return train_module._PieceLoss(model, autocast, backend)


def gradients(model, backend, inputs, targets, bptt, autocast=torch.bfloat16) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = train_module._forward_backward(piece_loss(model, autocast, backend), inputs, targets, bptt)
    flat = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return float(loss), flat


def comparison(label: str, what: str, got: tuple[float, torch.Tensor], want: tuple[float, torch.Tensor]) -> list:
    """A table row: |loss difference| and the relative L2 difference of the whole parameter gradient."""
    return [label, what, f"{abs(got[0] - want[0]):.2e}", f"{relative_error(got[1], want[1]):.2e}"]


def time_steps(model, backend, batches, bptt) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_fn = piece_loss(model, torch.bfloat16, backend)
    times = []
    for i, (inputs, targets) in enumerate(batches):
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        train_module._forward_backward(loss_fn, inputs, targets, bptt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        torch.cuda.synchronize()
        if i > 0:  # the first step compiles kernels
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", help="model preset (repeatable); default dna-small")
    parser.add_argument("--override", action="append", default=[],
                        help="PRESET:field=int, e.g. dna-small:d_model=256 (repeatable)")
    parser.add_argument("--batch", type=int, default=192)
    parser.add_argument("--crop", type=int, default=4096)
    parser.add_argument("--bptt", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--backends", default="torch,triton")
    parser.add_argument("--fp32-backends", default=None,
                        help="backends of the fp32 gradient check (default: --backends); triton-ieee forces fp32 "
                             "products in the kernels, to tell their rounding from a wiring error")
    parser.add_argument("--skip-timing", action="store_true", help="only the gradient checks")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("train_speed: needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    gpu = torch.cuda.get_device_name()
    install_triton_backend()
    rows, checks = [], []
    for name in args.preset or ["dna-small"]:
        fields = {}
        for item in args.override:
            target, _, assignment = item.partition(":")
            if target == name:
                key, _, value = assignment.partition("=")
                fields[key] = int(value)
        config = preset(name, **fields)
        torch.manual_seed(0)
        model = TitansLM(config).cuda()
        n_params = sum(p.numel() for p in model.parameters())
        label = name + "".join(f" {k}={v}" for k, v in fields.items())
        generator = torch.Generator().manual_seed(0)
        batches = [make_batch(args.batch, args.crop, 3, generator) for _ in range(args.steps + 1)]
        # fp32 check on a small batch (no autocast, no tf32 in torch; the kernels use tf32 products)
        torch.backends.cuda.matmul.allow_tf32 = False
        small = make_batch(8, 1024, 3, generator)
        fp32 = {backend: gradients(model, backend, *small, args.bptt, autocast=None)
                for backend in (args.fp32_backends or args.backends).split(",")}
        torch.backends.cuda.matmul.allow_tf32 = True
        names = list(fp32)
        for backend in names[1:]:
            checks.append(comparison(label, f"{backend} vs {names[0]}, fp32, 8 x 1024", fp32[backend], fp32[names[0]]))
        reference = None
        for backend in ([] if args.skip_timing else args.backends.split(",")):
            state = {k: v.clone() for k, v in model.state_dict().items()}
            loss, grad = gradients(model, backend, *batches[0], args.bptt)
            if reference is None:
                reference = (backend, (loss, grad))
            else:
                checks.append(comparison(label, f"{backend} vs {reference[0]}, bf16 autocast, {args.batch} x {args.crop}",
                                         (loss, grad), reference[1]))
            peak_before = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            stats = time_steps(model, backend, batches, args.bptt)
            peak = torch.cuda.max_memory_allocated()
            model.load_state_dict(state)
            tokens = args.batch * args.crop
            rows.append([label, f"{n_params:,}", backend, f"{stats['median_s'] * 1e3:.0f}",
                         f"{tokens / stats['median_s']:,.0f}", f"{peak / 2**30:.2f}"])
            print(f"{label} {backend}: {stats['median_s'] * 1e3:.0f} ms/step, {tokens / stats['median_s']:,.0f} tok/s, "
                  f"peak {peak / 2**30:.2f} GiB (before {peak_before / 2**30:.2f})", flush=True)
        del model
        torch.cuda.empty_cache()
    body = [
        f"## Training-step throughput on one {gpu}",
        "",
        f"*`python benchmarks/train_speed.py` ({' '.join(sys.argv[1:])}), "
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {common.git_commit()}; torch {torch.__version__}.*",
        "",
        f"One step = forward + backward of {args.batch} crops x {args.crop} tokens in truncated-BPTT pieces of "
        f"{args.bptt}, bf16 autocast, gradient clip and fused AdamW, as `titans train` does it; median of "
        f"{args.steps} steps after one warm-up step.",
        "",
        common.md_table(["model", "parameters", "memory backend", "ms/step", "tokens/s", "peak GiB"], rows),
        "",
        "Same batch through both backends (the kernels round products differently from torch: tf32 for fp32 "
        "inputs, bf16 under autocast):",
        "",
        common.md_table(["model", "comparison", "|loss difference| (nats/token)", "relative gradient difference"], checks),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(body))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
