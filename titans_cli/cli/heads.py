"""`titans heads train|eval`: linear-probe classification heads on titans embeddings."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import typer

from titans_cli.cli import common
from titans_cli.errors import TitansInputError

HELP = "Train and evaluate classification heads (linear probes on embeddings)."

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)


def _report_lines(name: str, report: dict) -> list[str]:
    lines = [f"{name}: accuracy {report['accuracy']:.4f} on {report['n']:,} samples"]
    for label, entry in report["per_class"].items():
        lines.append(f"  {label:<18} {entry['accuracy']:.4f}  (n={entry['n']:,})")
    return lines


@app.command("train", help="Train a head on LABELS.tsv (path_or_record, label[, split]); prints held-out accuracy.")
def train_command(
    labels: str = typer.Argument(..., help="TSV: path_or_record<TAB>label[<TAB>train|test]; path#ID picks one record."),
    output: str = typer.Option(..., "-o", "--output", help="Head directory to write (e.g. models/heads/mine)."),
    per: str = typer.Option("record", "--per", help="record | window."),
    window: Optional[int] = typer.Option(None, "--window", help="Window length (--per window; default 2000)."),
    step: Optional[int] = typer.Option(None, "--step", help="Distance between window starts (default: --window)."),
    pool: str = typer.Option("mean", "--pool", help="mean | memory."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="At most this many windows per labelled row, spread evenly."),
    l2: Optional[float] = typer.Option(None, "--l2", help="L2 penalty (default: chosen on a validation fifth of the training rows)."),
    model: Optional[str] = typer.Option(None, "--model", help=common.HELP_MODEL),
    device: str = typer.Option("auto", "--device", help=common.HELP_DEVICE),
    backend: str = typer.Option("auto", "--backend", help=common.HELP_BACKEND),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=common.HELP_QUIET),
) -> None:
    from titans_cli.stream import StreamEngine
    from titans_cli.tasks.classify import labelled_features, row_kind
    from titans_cli.tasks.embed import check_settings
    from titans_cli.tasks.heads import accuracy_report, read_labels, save_head, train_head

    window, step = check_settings(per, pool, window, step)
    common.check_positive("--max-windows", max_windows)
    if l2 is not None and l2 < 0:
        raise TitansInputError(f"--l2 must be >= 0, got {l2}")
    rows = read_labels(labels)
    kind = row_kind(rows[0])
    session = common.open_session(kind, model, device, backend)
    settings = {"model": session.model_name, "kind": kind, "per": per, "window": window, "step": step, "pool": pool}
    with common.Progress(None, "samples", quiet, "embedding") as progress:
        engine = StreamEngine(session.model, session.runtime)
        features, names, groups, test, _ = labelled_features(engine, rows, session.tokenizer, settings, max_windows,
                                                             progress=progress.advance)
    train_rows = ~test
    if train_rows.sum() == 0 or test.sum() == 0:
        raise TitansInputError(f"{labels}: need both training and held-out samples (got {int(train_rows.sum())} and {int(test.sum())})")
    head = train_head(features[train_rows], [names[i] for i in range(len(names)) if train_rows[i]], settings,
                      l2=l2, groups=groups[train_rows])
    train_report = accuracy_report(head, features[train_rows], [names[i] for i in range(len(names)) if train_rows[i]])
    test_report = accuracy_report(head, features[test], [names[i] for i in range(len(names)) if test[i]])
    head.metrics = {"train": train_report, "held_out": test_report, "labels": labels, "command": common.command_line(),
                    "trained": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    card = _card(output, head, labels)
    save_head(head, output, card)
    for line in _report_lines("train", train_report) + _report_lines("held-out", test_report):
        typer.echo(line)
    common.info(f"titans: head with {len(head.classes)} classes -> {output}", quiet)


@app.command("eval", help="Accuracy of a head on LABELS.tsv (every row is a test row).")
def eval_command(
    head: str = typer.Argument(..., help="Head name or directory."),
    labels: str = typer.Argument(..., help="TSV: path_or_record<TAB>label."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="At most this many windows per row, spread evenly."),
    update_card: bool = typer.Option(False, "--update-card", help="Record this evaluation (and its command) in the head's card and head.json."),
    model: Optional[str] = typer.Option(None, "--model", help="Model (default: the head's)."),
    device: str = typer.Option("auto", "--device", help=common.HELP_DEVICE),
    backend: str = typer.Option("auto", "--backend", help=common.HELP_BACKEND),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=common.HELP_QUIET),
) -> None:
    from titans_cli.stream import StreamEngine
    from titans_cli.tasks.classify import head_embedding_settings, labelled_features, row_kind
    from titans_cli.tasks.heads import HEAD_CARD, accuracy_report, load_head, read_labels, save_head

    loaded = load_head(head)
    common.check_positive("--max-windows", max_windows)
    rows = read_labels(labels)
    unknown = sorted({row.label for row in rows} - set(loaded.classes))
    if unknown:
        raise TitansInputError(f"{labels}: label(s) {', '.join(unknown)} are not classes of head {head} ({', '.join(loaded.classes)})")
    kind = row_kind(rows[0])
    session = common.open_session(kind, model or loaded.settings.get("model"), device, backend)
    settings = head_embedding_settings(loaded)
    with common.Progress(None, "samples", quiet, "embedding") as progress:
        engine = StreamEngine(session.model, session.runtime)
        features, names, _, _, _ = labelled_features(engine, rows, session.tokenizer, settings, max_windows,
                                                     progress=progress.advance)
    report = accuracy_report(loaded, features, names)
    lines = _report_lines("eval", report)
    for line in lines:
        typer.echo(line)
    if update_card:
        report["labels"] = labels
        report["command"] = common.command_line()
        loaded.metrics.setdefault("evaluations", []).append(report)
        card_path = loaded.path / HEAD_CARD
        card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
        card += (f"\n## Evaluation on `{labels}`\n\n`{report['command']}`\n\n"
                 f"accuracy {report['accuracy']:.4f} (n={report['n']:,})\n\n| class | n | accuracy |\n|---|---:|---:|\n"
                 + "".join(f"| {name} | {entry['n']:,} | {entry['accuracy']:.4f} |\n" for name, entry in report["per_class"].items()))
        save_head(loaded, loaded.path, card)
        common.info(f"titans: evaluation recorded in {card_path}", quiet)


def _card(output: str, head, labels: str) -> str:
    settings, metrics = head.settings, head.metrics
    held = metrics["held_out"]
    lines = [
        f"# Head `{output.rstrip('/').split('/')[-1]}`",
        "",
        f"Linear probe (softmax regression, L2 {settings.get('l2'):g}) on `{settings['model']}` embeddings "
        f"(per {settings['per']}" + (f", window {settings['window']}, step {settings['step']}" if settings["per"] == "window" else "")
        + f", pool {settings['pool']}); classes: {', '.join(head.classes)}.",
        "",
        f"- labels: `{labels}`",
        f"- trained: {metrics['trained']} with `{metrics['command']}`",
        f"- train accuracy {metrics['train']['accuracy']:.4f} (n={metrics['train']['n']:,}); "
        f"held-out accuracy {held['accuracy']:.4f} (n={held['n']:,})",
        "",
        "| class | held-out n | held-out accuracy |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {entry['n']:,} | {entry['accuracy']:.4f} |" for name, entry in held["per_class"].items()]
    return "\n".join(lines) + "\n"
