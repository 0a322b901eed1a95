"""`titans models`: shipped and local models and heads, with their card summaries."""

from __future__ import annotations

import typer

HELP = "List shipped and local models and classification heads with their card summaries."


def command(
    paths: bool = typer.Option(False, "--paths", help="Also print where each one lives."),
) -> None:
    from titans_cli.model import list_models
    from titans_cli.tasks.heads import list_heads

    found = list_models()
    heads = list_heads()
    lines = ["MODELS"]
    if not found:
        lines.append("  (none found: shipped models live in models/, more via TITANS_MODELS)")
    for name, path, summary in found:
        lines.append(f"  {name:<12} {_shape(path):<34} {summary}" + (f"  [{path}]" if paths else ""))
    lines.append("HEADS (titans classify --head NAME)")
    if not heads:
        lines.append("  (none found)")
    for name, path, summary in heads:
        lines.append(f"  {name:<12} {summary}" + (f"  [{path}]" if paths else ""))
    typer.echo("\n".join(lines))


def _shape(path) -> str:
    """What a model is, from its files: tokenizer, blocks, width, weights size."""
    from titans_cli.errors import TitansInputError
    from titans_cli.model.files import WEIGHTS_FILE, read_config

    try:
        config, _ = read_config(path)
    except TitansInputError:
        return "(unreadable config.json)"
    weights = path / WEIGHTS_FILE
    size = f", {weights.stat().st_size / 1e6:.1f} MB" if weights.is_file() else ""
    return f"{config.tokenizer}: {config.n_layers} x {config.block.upper()}, d {config.d_model}{size}"
