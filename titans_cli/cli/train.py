"""`titans train CORPUS...`: pretrain or fine-tune a model (wraps tasks/train.py; torchrun-ready)."""

from __future__ import annotations

from typing import List, Optional

import typer

from titans_cli.errors import TitansInputError

HELP = "Pretrain or fine-tune a Titans model on FASTA or text files (one GPU, or several with torchrun)."


def command(
    corpus: List[str] = typer.Argument(..., help="Training FASTA/FASTQ or text files (never evaluation data)."),
    output: str = typer.Option(..., "-o", "--output", help="Run directory: checkpoint/, model/, train.log, metrics.jsonl."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset for a new model (dna-small, dna-base, text-small, text-base)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Model (name or directory) to fine-tune."),
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", help="New text model: reuse this tokenizer.json, or a model's (name or directory), "
                                  "instead of training a BPE on the corpus."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Budget: optimizer steps."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Budget: training tokens (all ranks)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Budget: minutes of training."),
    batch_size: int = typer.Option(8, "--batch-size", help="Crops per rank per step."),
    crop_len: int = typer.Option(4096, "--crop-len", help="Tokens per crop."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start afresh even if OUTPUT/checkpoint exists."),
    stop_after_minutes: Optional[float] = typer.Option(
        None, "--stop-after-minutes", help="End this invocation early (checkpoint + model); rerun to resume the schedule."),
    warmup_steps: int = typer.Option(100, "--warmup-steps", help="Linear learning-rate warmup, then cosine decay."),
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Final learning rate as a fraction of --lr."),
    weight_decay: float = typer.Option(0.1, "--weight-decay", help="AdamW weight decay (matrices only)."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Gradient norm clip."),
    bptt_len: int = typer.Option(512, "--bptt-len", help="Truncated backpropagation: tokens per backward piece."),
    val_fraction: float = typer.Option(0.01, "--val-fraction", help="Training data held out for validation."),
    val_crops: int = typer.Option(16, "--val-crops", help="Validation crops."),
    eval_every: int = typer.Option(200, "--eval-every", help="Steps between validations."),
    checkpoint_minutes: float = typer.Option(5.0, "--checkpoint-minutes", help="Minutes between checkpoints."),
    fp32: bool = typer.Option(False, "--fp32", help="No bf16 autocast on CUDA (fp32 with tf32 products)."),
    memory_backend: str = typer.Option(
        "auto", "--memory-backend", help="auto (fused Triton kernels on CUDA, else torch) | torch | triton."),
    save_dtype: str = typer.Option(
        "float32", "--save-dtype", help="Storage type of the model's weights: float32 | bfloat16 (half the file)."),
) -> None:
    from titans_cli.tasks.train import train

    if preset is None and init_from is None:
        raise TitansInputError("give --preset NAME for a new model or --init-from MODEL to fine-tune")
    config = preset
    if tokenizer is not None:
        from titans_cli.model.config import PRESETS

        if preset is None:
            raise TitansInputError("--tokenizer goes with --preset (a fine-tuned model keeps its own tokenizer)")
        if preset in PRESETS and PRESETS[preset].tokenizer != "bpe":
            raise TitansInputError(f"--tokenizer is for text presets; {preset} reads nucleotides")
        tokenizer = str(_tokenizer_file(tokenizer))
    if init_from is not None:
        from titans_cli.model import resolve_model

        init_from = str(resolve_model(init_from))
        config = None
    options = {"batch_size": batch_size, "crop_len": crop_len, "lr": lr, "seed": seed, "warmup_steps": warmup_steps,
               "min_lr_ratio": min_lr_ratio, "weight_decay": weight_decay, "grad_clip": grad_clip, "bptt_len": bptt_len,
               "val_fraction": val_fraction, "val_crops": val_crops, "eval_every": eval_every,
               "checkpoint_minutes": checkpoint_minutes, "bf16": not fp32, "memory_backend": memory_backend,
               "save_dtype": save_dtype}
    if stop_after_minutes is not None:
        options["stop_after_minutes"] = stop_after_minutes
    for name, value in (("max_steps", steps), ("max_tokens", tokens), ("minutes", minutes)):
        if value is not None:
            options[name] = value
    from titans_cli.cli import common

    command_line = common.command_line()
    result = train(config, corpus, output, tokenizer=tokenizer, init_from=init_from, device=device, resume=not no_resume,
                   command=command_line, **options)
    if common.rank() == 0:
        typer.echo(f"model -> {result.model_dir} ({result.steps} steps, {result.tokens_seen:,} tokens, "
                   f"validation {result.val_bits_per_token if result.val_bits_per_token is not None else float('nan'):.4f} bits/token)",
                   err=True)


def _tokenizer_file(value: str):
    """A tokenizer.json path, or the tokenizer.json of a model given by name or directory."""
    from pathlib import Path

    path = Path(value)
    if path.is_file():
        return path
    if path.suffix == ".json":
        raise TitansInputError(f"--tokenizer {value}: no such file")
    from titans_cli.model import resolve_model
    from titans_cli.model.files import TOKENIZER_FILE

    found = Path(resolve_model(value)) / TOKENIZER_FILE
    if not found.is_file():
        raise TitansInputError(f"--tokenizer {value}: no {TOKENIZER_FILE} there (DNA models need none)")
    return found
