"""Pretrain or fine-tune a Titans language model on FASTA or text files (`titans train`).

One process on one device, or data-parallel under torchrun (torch.distributed DDP, env:// init,
NCCL on GPUs, gloo on CPUs). The recipe, in the order a step runs:

- corpus: every file tokenized once into a compact array (`corpus.py`); a validation slice is
  carved from the training files (whole books, or records / chromosome tails per FASTA file);
- batch: random long crops (thousands of tokens, so the neural memory has something to learn
  while it reads), drawn by a generator seeded with (seed, rank, step) -- each rank reads its own
  crops, and a resumed run draws what an uninterrupted one would have;
- step: bf16 autocast on CUDA, next-token cross entropy (record boundaries inside a crop are not
  targets), gradient clipping, AdamW with linear warmup then cosine decay to `min_lr_ratio * lr`;
- budget: steps, tokens and/or minutes of training (the learning-rate schedule runs over whichever
  is used up first), plus `stop_after_minutes` to end this invocation early and resume later;
- checkpoints: `out_dir/checkpoint/` (weights as safetensors, optimizer + RNG as a small .pt,
  step/tokens/time as JSON), written by rank 0 every N steps or minutes and at the end;
- result: `out_dir/model/`, a model directory every command loads.

Progress goes through `logging` (logger "titans_cli.train") to stderr and `out_dir/train.log`;
one JSON line per log interval goes to `out_dir/metrics.jsonl`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from titans_cli.errors import TitansInputError
from titans_cli.tasks.corpus import (
    IGNORE_INDEX,
    TokenCorpus,
    crop_batch,
    load_corpus,
    split_validation,
    step_rng,
    targets_from,
    validation_batches,
)

log = logging.getLogger("titans_cli.train")

CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"


@dataclass
class TrainOptions:
    """Everything about a run except the model and the data. Saved in every checkpoint."""

    max_steps: int | None = None
    max_tokens: int | None = None
    minutes: float | None = None  # training time over all invocations; defines the schedule
    stop_after_minutes: float | None = None  # end this invocation (checkpoint, model dir) after this
    stop_after_steps: int | None = None  # likewise, after this many steps of this invocation
    stop_at_time: float | None = None  # likewise, at this Unix time (a job's wall-clock limit); alone,
    # it is also the budget: the schedule then spans the time from the first step to this moment
    batch_size: int = 8  # crops per rank per step
    crop_len: int = 4096
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    val_fraction: float = 0.01
    val_crops: int = 16
    eval_every: int = 200
    log_every: int = 10
    checkpoint_every: int | None = None  # steps
    checkpoint_minutes: float | None = 5.0
    seed: int = 0
    max_tokens_per_file: int | None = None
    compile: bool = False  # torch.compile the model
    bf16: bool = True  # bf16 autocast on CUDA (else fp32 with tf32 matrix products)
    bptt_len: int | None = 512  # truncated backpropagation: gradients flow through at most this many tokens
    memory_backend: str = "auto"  # auto: the fused Triton kernels (forward and backward) on CUDA, else torch
    save_dtype: str = "float32"  # storage type of the model directory's weights (checkpoints stay float32)

    def check(self) -> None:
        if self.max_steps is None and self.max_tokens is None and self.minutes is None and self.stop_at_time is None:
            raise TitansInputError("train: give a budget (steps, tokens, minutes or a stop time)")
        for name in ("max_steps", "max_tokens", "stop_after_steps", "bptt_len", "batch_size", "crop_len", "val_crops", "eval_every", "log_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TitansInputError(f"train: {name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("minutes", "stop_after_minutes", "lr", "checkpoint_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TitansInputError(f"train: {name.replace('_', '-')} must be > 0, got {value}")
        _check_memory_backend(self.memory_backend)
        from titans_cli.model.files import WEIGHT_DTYPES

        if self.save_dtype not in WEIGHT_DTYPES:
            raise TitansInputError(f"train: save-dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {self.save_dtype!r}")
        if not 0 < self.val_fraction < 1:
            raise TitansInputError(f"train: val-fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    tokens_seen: int
    trained_seconds: float  # over all invocations
    val_bits_per_token: float | None
    finished: bool  # the budget was used up (False: stopped early by stop_after_minutes)
    model: torch.nn.Module  # the trained model (unwrapped, on its device)


# -----------------------------------------------------------------------------
# Public entry point


def train(
    config,
    corpus_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tokenizer=None,
    init_from: str | Path | None = None,
    device: str = "auto",
    resume: bool = True,
    card_text: str | None = None,
    command: str | None = None,
    **options: Any,
) -> TrainResult:
    """Train a Titans LM on `corpus_paths` and write `out_dir/model/` (loadable by every command).

    config: a ModelConfig, a preset name (e.g. "dna-small", "text-small"), or None when resuming
        from `out_dir/checkpoint` or fine-tuning from `init_from`.
    corpus_paths: FASTA/FASTQ (plain, gzip, bgzip) for DNA models; UTF-8 text (.txt, .gz, .xz) for
        text models, one document per file. Evaluation data must not be passed here.
    tokenizer: for text models, a BPETokenizer or the path of a tokenizer.json (default: train a
        byte-level BPE of the config's vocabulary size on the corpus). Ignored for DNA.
    init_from: a model directory to fine-tune (its config and tokenizer are used).
    resume: continue from `out_dir/checkpoint` when it exists (at any world size).
    card_text: extra markdown for the model card; `command`: the command line, recorded in it.
    options: the fields of TrainOptions -- budget (max_steps, max_tokens, minutes,
        stop_after_minutes), batch_size (per rank), crop_len, lr, warmup_steps, ...

    Under torchrun every rank calls this with the same arguments; rank 0 writes checkpoints, logs
    and the model directory.
    """
    unknown = set(options) - set(TrainOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"train() got unknown options: {', '.join(sorted(unknown))}")
    opts = TrainOptions(**options)
    opts.check()
    out_dir = Path(out_dir)

    dist_owned = _init_distributed(device)
    rank, world = _rank_world()
    try:
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
        _barrier()
        handlers = _attach_log_handlers(out_dir, rank)
        try:
            return _train(config, corpus_paths, out_dir, tokenizer, init_from, device, resume, card_text, command, opts)
        finally:
            for handler in handlers:
                log.removeHandler(handler)
                handler.close()
    finally:
        if dist_owned:
            dist.destroy_process_group()


# -----------------------------------------------------------------------------
# The run


def _train(config, corpus_paths, out_dir, tokenizer, init_from, device_name, resume, card_text, command, opts):
    from titans_cli.device import choose_device

    rank, world = _rank_world()
    device = choose_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    checkpoint = out_dir / CHECKPOINT_DIR
    state = _read_checkpoint_state(checkpoint) if resume else None
    model, config, tokenizer = _build_model(config, tokenizer, init_from, state, checkpoint, corpus_paths, opts)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())

    started = time.perf_counter()
    corpus = load_corpus([Path(p) for p in corpus_paths], tokenizer, opts.max_tokens_per_file)
    train_corpus, val_corpus = split_validation(corpus, opts.val_fraction, seed=opts.seed)
    val_bytes_per_token = _bytes_per_token(val_corpus)
    del corpus
    log.info(
        "corpus: %s tokens for training, %s held out for validation (%.1f s to load): %s",
        f"{len(train_corpus):,}", f"{len(val_corpus):,}", time.perf_counter() - started, train_corpus.describe(),
    )
    log.info("model: %s parameters, %s; %d rank(s) on %s", f"{n_params:,}", _config_summary(config), world, device)

    optimizer = _make_optimizer(model, opts, device)
    step, tokens_seen, trained_seconds = 0, 0, 0.0
    if state is not None:
        _load_checkpoint(checkpoint, model, optimizer, device)
        step, tokens_seen, trained_seconds = state["step"], state["tokens_seen"], state["trained_seconds"]
        log.info("resumed from %s at step %d (%s tokens, %.1f min; written by %d rank(s), now %d)",
                 checkpoint, step, f"{tokens_seen:,}", trained_seconds / 60, state["world_size"], world)

    autocast_dtype = torch.bfloat16 if device.type == "cuda" and opts.bf16 else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if autocast_dtype is not None else nullcontext()
    memory_backend = _training_backend(opts.memory_backend, device)
    piece_loss = _PieceLoss(torch.compile(model) if opts.compile else model, autocast_dtype, memory_backend)
    if world > 1:
        # Under truncated BPTT only the first piece of a crop reaches the learned initial memory
        # weights, while gradients are reduced after the last piece: DDP must look for parameters
        # that the synchronising piece did not use (their gradients accumulated under no_sync).
        piece_loss = torch.nn.parallel.DistributedDataParallel(
            piece_loss, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    val_crops = validation_batches(val_corpus, opts.crop_len, opts.val_crops)
    tokens_per_step = opts.batch_size * opts.crop_len * world
    bos_id = tokenizer.bos_id

    def save(seconds: float) -> None:
        if rank == 0:
            _write_checkpoint(checkpoint, model, optimizer, config, tokenizer, opts, step, tokens_seen, seconds, world)
            log.info("checkpoint at step %d written to %s", step, checkpoint)

    invocation_start = time.perf_counter()
    first_step = step
    if opts.max_steps is None and opts.max_tokens is None and opts.minutes is None:
        # Only a stop time: the schedule runs from here to it (on top of earlier invocations).
        opts.minutes = (trained_seconds + max(0.0, opts.stop_at_time - time.time())) / 60
        log.info("schedule: %.2f minutes of training in all, ending at the stop time", opts.minutes)
    last_checkpoint_time = invocation_start
    last_checkpoint_step = step
    window_start, window_tokens, window_loss, window_steps = time.perf_counter(), 0, 0.0, 0
    val_bits = None
    metrics_path = out_dir / "metrics.jsonl"
    finished = False
    skipped = 0

    while True:
        # One clock for every rank: rank 0's, so all ranks stop and schedule alike.
        now = time.perf_counter()
        clock = _broadcast_floats([trained_seconds + (now - invocation_start), now - invocation_start, time.time()], device)
        elapsed_total, elapsed_here, wall_time = clock
        progress = _progress(opts, step, tokens_seen, elapsed_total)
        if progress >= 1.0:
            finished = True
            break
        if opts.stop_after_minutes is not None and elapsed_here >= opts.stop_after_minutes * 60:
            break
        if opts.stop_after_steps is not None and step - first_step >= opts.stop_after_steps:
            break
        if opts.stop_at_time is not None and wall_time >= opts.stop_at_time:
            break

        lr = _learning_rate(opts, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr

        model.train()
        batch = torch.from_numpy(crop_batch(train_corpus, opts.batch_size, opts.crop_len, step_rng(opts.seed, rank, step)))
        inputs, targets = targets_from(batch.to(device, non_blocking=True), bos_id)
        optimizer.zero_grad(set_to_none=True)
        loss = _forward_backward(piece_loss, inputs, targets, opts.bptt_len)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        if not torch.isfinite(grad_norm):  # a bf16 overflow: skip this update rather than poison the weights
            skipped += 1
            log.warning("step %d: non-finite gradient norm, update skipped (%d so far)", step + 1, skipped)
            if skipped > 20:
                raise RuntimeError("training diverged: more than 20 updates with non-finite gradients")
        else:
            optimizer.step()

        step += 1
        tokens_seen += tokens_per_step
        window_tokens += tokens_per_step
        window_loss = window_loss + loss
        window_steps += 1

        if step % opts.log_every == 0:
            mean_loss = _mean_over_ranks(window_loss / window_steps, device)
            seconds = time.perf_counter() - window_start
            record = {
                "step": step,
                "tokens": tokens_seen,
                "loss_bits": mean_loss / math.log(2),
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": window_tokens / max(seconds, 1e-9),
                "minutes": elapsed_total / 60,
            }
            log.info(
                "step %d  loss %.4f bits/token  lr %.2e  grad %.2f  %s tokens/s  %s tokens  %.1f min",
                step, record["loss_bits"], lr, record["grad_norm"], f"{record['tokens_per_s']:,.0f}",
                f"{tokens_seen:,}", record["minutes"],
            )
            if rank == 0:
                with open(metrics_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            window_start, window_tokens, window_loss, window_steps = time.perf_counter(), 0, 0.0, 0

        if step % opts.eval_every == 0:
            val_bits = _validate(model, val_crops, bos_id, device, autocast)
            _log_validation(step, tokens_seen, val_bits, val_bytes_per_token, metrics_path, rank)

        due_steps = opts.checkpoint_every is not None and step - last_checkpoint_step >= opts.checkpoint_every
        due_time = opts.checkpoint_minutes is not None and time.perf_counter() - last_checkpoint_time >= opts.checkpoint_minutes * 60
        if due_steps or due_time:
            save(trained_seconds + (time.perf_counter() - invocation_start))
            last_checkpoint_time, last_checkpoint_step = time.perf_counter(), step

    trained_seconds = elapsed_total
    if val_bits is None or step % opts.eval_every != 0:
        val_bits = _validate(model, val_crops, bos_id, device, autocast)
        _log_validation(step, tokens_seen, val_bits, val_bytes_per_token, metrics_path, rank)
    save(trained_seconds)
    model_dir = out_dir / MODEL_DIR
    if rank == 0:
        from titans_cli.model.files import save_model_dir

        card = _model_card(config, corpus_paths, train_corpus, val_corpus, opts, n_params, step, tokens_seen,
                           trained_seconds, world, device, val_bits, val_bytes_per_token, finished, command, card_text)
        save_model_dir(model, config, tokenizer, model_dir, card, weights_dtype=opts.save_dtype)
        log.info("model written to %s (%s after %d steps, %s tokens, %.1f min)", model_dir,
                 "budget used up" if finished else "stopped early; resume to continue", step, f"{tokens_seen:,}",
                 trained_seconds / 60)
    _barrier()
    return TrainResult(model_dir, step, tokens_seen, trained_seconds, val_bits, finished, model)


# -----------------------------------------------------------------------------
# Model, tokenizer, optimizer


def _build_model(config, tokenizer, init_from, state, checkpoint, corpus_paths, opts):
    """The model to train: from the checkpoint's config, a pretrained directory, or a fresh config."""
    from titans_cli.model.files import load_model_dir
    from titans_cli.model.lm import TitansLM
    from titans_cli.model.tokenizers import BPETokenizer, make_tokenizer, train_bpe

    if state is not None:
        config = _resolve_config(state["config"])
        tokenizer = make_tokenizer(config.tokenizer, checkpoint)
        return TitansLM(config), config, tokenizer
    if init_from is not None:
        loaded = load_model_dir(init_from)
        log.info("fine-tuning %s", init_from)
        return loaded.model, loaded.config, loaded.tokenizer
    if config is None:
        raise TitansInputError("train: give a model config or preset (or --init-from a model directory)")
    config = _resolve_config(config)
    if config.tokenizer == "dna":
        tokenizer = make_tokenizer("dna")
    else:
        if tokenizer is None:
            log.info("training a byte-level BPE tokenizer (%d entries) on the corpus", config.vocab_size)
            tokenizer = train_bpe(corpus_paths, vocab_size=config.vocab_size)
        elif not isinstance(tokenizer, BPETokenizer):
            tokenizer = BPETokenizer.load(tokenizer)
        if tokenizer.vocab_size != config.vocab_size:
            raise TitansInputError(
                f"train: tokenizer has {tokenizer.vocab_size} entries, the model config expects {config.vocab_size}"
            )
    torch.manual_seed(opts.seed)  # every rank starts from the same weights
    return TitansLM(config), config, tokenizer


def _resolve_config(config):
    from titans_cli.model.config import resolve_config

    try:
        return resolve_config(config)
    except (ValueError, TypeError) as error:
        raise TitansInputError(f"train: {error}") from None


class _PieceLoss(torch.nn.Module):
    """Summed next-token cross entropy (nats) of one piece of a batch of crops, continuing the
    model's streaming state; BOS targets (record starts inside a crop) are ignored."""

    def __init__(self, model, autocast_dtype, backend: str = "torch", momentum: bool = False):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.backend = backend
        # The loss reads only the logits, so by default the fused kernels skip the ||S_t|| signal
        # (benchmarks/train_speed.py times it both ways).
        self.momentum = momentum

    def forward(self, inputs, targets, state):
        if self.autocast_dtype is None:
            output, state = self.model.step(inputs, state, backend=self.backend, momentum=self.momentum)
        else:
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                output, state = self.model.step(inputs, state, backend=self.backend, momentum=self.momentum)
        logits = output.logits
        nats = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        return nats, state


def _check_memory_backend(requested: str) -> None:
    if requested not in ("auto", "torch", "triton"):
        raise TitansInputError(f"train: memory backend must be auto, torch or triton, got {requested!r}")


def _training_backend(requested: str, device: torch.device) -> str:
    """The memory backend of training steps: the fused Triton kernels (forward, and the backward
    kernel where the memory config has one) on CUDA when triton is installed, else torch_chunked."""
    _check_memory_backend(requested)
    if requested == "auto":
        from titans_cli.device import triton_available

        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if requested == "triton" and device.type != "cuda":
        raise TitansInputError("train: the triton memory backend needs a CUDA GPU")
    return requested


def _forward_backward(piece_loss, inputs, targets, bptt_len: int | None) -> torch.Tensor:
    """Forward and backward over whole crops, in pieces of `bptt_len` tokens (truncated BPTT).

    The memory and attention state flow from piece to piece, so the forward pass is exactly the
    whole-crop pass; gradients stop at piece boundaries. Backpropagating through the memory's
    chunk-to-chunk recurrence over thousands of tokens makes gradients grow geometrically (measured
    on dna-small at initialisation: gradient norm 14 at 512 tokens, 7e2 at 1,024, 3e4 at 2,048,
    non-finite at 8,192), so the crop stays long for the forward pass and the backward is cut.
    Returns the mean loss (nats per target token) of the batch, detached."""
    length = inputs.shape[1]
    piece = length if bptt_len is None else bptt_len
    n_targets = (targets != IGNORE_INDEX).sum().clamp(min=1)
    distributed = isinstance(piece_loss, torch.nn.parallel.DistributedDataParallel)
    state, total = None, torch.zeros((), device=inputs.device)
    for start in range(0, length, piece):
        last = start + piece >= length
        sync = nullcontext() if (last or not distributed) else piece_loss.no_sync()
        with sync:
            nats, state = piece_loss(inputs[:, start : start + piece], targets[:, start : start + piece], state)
            (nats / n_targets).backward()
        state = state.detach()
        total = total + nats.detach()
    return total / n_targets


def _make_optimizer(model, opts: TrainOptions, device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases, gate offsets)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=opts.lr, betas=(opts.beta1, opts.beta2), fused=fused)


def _progress(opts: TrainOptions, step: int, tokens_seen: int, elapsed_seconds: float) -> float:
    """Fraction of the budget used: the largest over the budgets given."""
    fractions = []
    if opts.max_steps is not None:
        fractions.append(step / opts.max_steps)
    if opts.max_tokens is not None:
        fractions.append(tokens_seen / opts.max_tokens)
    if opts.minutes is not None:
        fractions.append(elapsed_seconds / (opts.minutes * 60))
    return max(fractions)


def _learning_rate(opts: TrainOptions, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to min_lr_ratio * lr over the budget."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * cosine)


@torch.no_grad()
def _validate(model, crops: list[np.ndarray], bos_id: int, device, autocast, batch_size: int = 8) -> float:
    """Mean bits per target token over the fixed validation crops (shared out over ranks)."""
    rank, world = _rank_world()
    model.eval()
    total_bits = torch.zeros((), dtype=torch.float64, device=device)
    total_tokens = torch.zeros((), dtype=torch.float64, device=device)
    mine = crops[rank::world]
    for start in range(0, len(mine), batch_size):
        batch = torch.from_numpy(np.stack(mine[start : start + batch_size])).to(device)
        inputs, targets = targets_from(batch, bos_id)
        with autocast:
            logits = model(inputs)
        nats = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        total_bits += nats.double() / math.log(2)
        total_tokens += (targets != IGNORE_INDEX).sum()
    if world > 1:
        dist.all_reduce(total_bits)
        dist.all_reduce(total_tokens)
    model.train()
    return float(total_bits / total_tokens.clamp(min=1))


def _log_validation(step, tokens_seen, val_bits, bytes_per_token, metrics_path, rank):
    per_byte = f" = {val_bits / bytes_per_token:.4f} bits/byte" if bytes_per_token else ""
    log.info("step %d  validation %.4f bits/token%s", step, val_bits, per_byte)
    if rank == 0:
        record = {"step": step, "tokens": tokens_seen, "val_bits_per_token": val_bits}
        if bytes_per_token:
            record["val_bits_per_byte"] = val_bits / bytes_per_token
        with open(metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _bytes_per_token(corpus: TokenCorpus) -> float | None:
    """UTF-8 bytes per token of a text corpus made of whole documents (None for DNA: 1 base = 1 token)."""
    if corpus.kind == "dna":
        return None
    sources = set(corpus.record_sources)
    total_bytes = sum(corpus.source_bytes[source] for source in sources)
    total_tokens = len(corpus.tokens) - corpus.n_records
    return total_bytes / max(total_tokens, 1)


# -----------------------------------------------------------------------------
# Checkpoints


def _read_checkpoint_state(checkpoint: Path) -> dict | None:
    if not (checkpoint / "state.json").is_file():
        previous = checkpoint.with_name(checkpoint.name + ".old")
        if (previous / "state.json").is_file():  # interrupted while replacing the checkpoint
            previous.rename(checkpoint)
        else:
            return None
    try:
        return json.loads((checkpoint / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TitansInputError(f"{checkpoint / 'state.json'}: unreadable checkpoint state ({error})") from None


def _write_checkpoint(checkpoint: Path, model, optimizer, config, tokenizer, opts, step, tokens_seen,
                      trained_seconds, world) -> None:
    """Write to a fresh folder, then swap it in: a crash never leaves a half-written checkpoint."""
    from safetensors.torch import save_file

    staging = checkpoint.with_name(checkpoint.name + ".tmp")
    previous = checkpoint.with_name(checkpoint.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()},
              str(staging / "model.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, staging / "optimizer.pt")
    tokenizer.save(staging)
    state = {
        "step": step,
        "tokens_seen": tokens_seen,
        "trained_seconds": trained_seconds,
        "world_size": world,
        "config": _config_dict(config),
        "options": asdict(opts),
    }
    (staging / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    shutil.rmtree(previous, ignore_errors=True)
    if checkpoint.exists():
        checkpoint.rename(previous)
    staging.rename(checkpoint)
    shutil.rmtree(previous, ignore_errors=True)


def _load_checkpoint(checkpoint: Path, model, optimizer, device) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / "model.safetensors"), device=str(device))
    model.load_state_dict(weights)
    saved = torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"]["torch"].cpu())
    if "cuda" in saved["rng"] and torch.cuda.is_available() and len(saved["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in saved["rng"]["cuda"]])


def _config_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else asdict(config)


def _config_summary(config) -> str:
    data = _config_dict(config)
    keys = ("block", "n_layers", "d_model", "vocab_size", "window")
    return ", ".join(f"{key}={data[key]}" for key in keys if key in data)


# -----------------------------------------------------------------------------
# Model card


def _model_card(config, corpus_paths, train_corpus, val_corpus, opts, n_params, step, tokens_seen, trained_seconds,
                world, device, val_bits, bytes_per_token, finished, command, card_text) -> str:
    if device.type == "cuda":
        hardware = f"{world} x {torch.cuda.get_device_name(device)}"
    else:
        hardware = f"{world} CPU process(es)"
    files = "\n".join(f"- `{Path(p).name}`" for p in corpus_paths)
    per_byte = f" ({val_bits / bytes_per_token:.4f} bits/byte)" if bytes_per_token else ""
    lines = [
        "## Training",
        "",
        f"- parameters: {n_params:,} ({_config_summary(config)})",
        f"- steps: {step:,}; tokens seen: {tokens_seen:,} ({opts.batch_size} crops x {opts.crop_len} tokens x {world} rank(s) per step)",
        f"- compute: {hardware}, {trained_seconds / 60:.1f} minutes of training"
        + ("" if finished else " (stopped before the end of its budget)"),
        f"- optimiser: AdamW lr {opts.lr:g} (warmup {opts.warmup_steps} steps, cosine to {opts.min_lr_ratio:g} x lr), "
        f"weight decay {opts.weight_decay:g}, gradient clip {opts.grad_clip:g}, "
        f"{'bf16 autocast' if device.type == 'cuda' and opts.bf16 else 'fp32'}, "
        f"truncated backpropagation every {opts.bptt_len or opts.crop_len} tokens, "
        f"memory backend {_training_backend(opts.memory_backend, device)}",
        f"- weights stored as {opts.save_dtype}" + (" (trained in float32, rounded once when saved)" if opts.save_dtype != "float32" else ""),
        f"- training tokens available: {len(train_corpus):,}; validation slice carved from the training files: "
        f"{len(val_corpus):,} tokens",
        f"- validation (training-file hold-out, not an evaluation set): {val_bits:.4f} bits/token{per_byte}",
        "",
        "Training files:",
        "",
        files,
    ]
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    text = "\n".join(lines) + "\n"
    return (card_text.rstrip() + "\n\n" + text) if card_text else text


# -----------------------------------------------------------------------------
# torch.distributed


def _init_distributed(device_name: str) -> bool:
    """Join the process group torchrun describes (env://); True when this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    from titans_cli.distributed import init_process_group

    init_process_group("nccl" if use_cuda else "gloo")
    return True


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _broadcast_floats(values: list[float], device) -> list[float]:
    """Rank 0's values on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def _mean_over_ranks(value, device) -> float:
    tensor = torch.as_tensor(value, dtype=torch.float64, device=device).detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return float(tensor)


def _attach_log_handlers(out_dir: Path, rank: int) -> list[logging.Handler]:
    """Rank 0 logs INFO to out_dir/train.log, and to stderr unless the application already set up
    logging; other ranks only report warnings."""
    handlers: list[logging.Handler] = []
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if rank == 0:
        file_handler = logging.FileHandler(out_dir / "train.log")
        file_handler.setFormatter(formatter)
        handlers.append(file_handler)
    if not logging.getLogger().handlers and not any(isinstance(h, logging.StreamHandler) for h in log.handlers):
        stream_handler = logging.StreamHandler(sys.stderr)
        stream_handler.setFormatter(logging.Formatter(f"[rank {rank}] %(asctime)s %(message)s", "%H:%M:%S")
                                    if _rank_world()[1] > 1 else formatter)
        handlers.append(stream_handler)
    for handler in handlers:
        log.addHandler(handler)
    return handlers
