"""`titans classify INPUT... --head NAME|PATH`: TSV of id, start, end, label, one probability per class."""

from __future__ import annotations

from typing import List, Optional

import typer

from titans_cli.cli import common
from titans_cli.errors import TitansInputError

HELP = "Classify records or windows with a head (TSV: id, start, end, label, probability per class)."


def command(
    inputs: List[str] = typer.Argument(..., help="FASTA/FASTQ or text files ('-' for stdin)."),
    head: str = typer.Option(..., "--head", help="Shipped head name (titans models) or head directory."),
    region: Optional[str] = typer.Option(None, "--region", help="Only chr:start-end (1-based inclusive; indexable FASTA; one input)."),
    output: str = typer.Option("-", "-o", "--output", help=common.HELP_OUTPUT),
    model: Optional[str] = typer.Option(None, "--model", help="Model (default: the one the head was trained on)."),
    device: str = typer.Option("auto", "--device", help=common.HELP_DEVICE),
    backend: str = typer.Option("auto", "--backend", help=common.HELP_BACKEND),
    encoding: str = typer.Option("utf-8", "--encoding", help=common.HELP_ENCODING),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=common.HELP_QUIET),
) -> None:
    from titans_cli.io.tracks import RowWriter
    from titans_cli.stream import StreamEngine
    from titans_cli.tasks.classify import run_classify
    from titans_cli.tasks.heads import load_head

    loaded_head = load_head(head)
    if region is not None and len(inputs) != 1:
        raise TitansInputError("--region needs exactly one input file")
    kind = common.input_kind(inputs, encoding)
    head_kind = loaded_head.settings.get("kind")
    if head_kind and head_kind != kind:
        raise TitansInputError(f"head {head!r} classifies {head_kind} input, the input is {kind}")
    session = common.open_session(kind, model or loaded_head.settings.get("model"), device, backend, encoding)
    unit = "bases" if kind == "sequence" else "tokens"
    columns = ["id", "start", "end", "label"] + [f"p_{name}" for name in loaded_head.classes]
    with common.sharded_run(session, inputs, region) as (mine, gather), common.Progress(None, unit, quiet) as progress:
        engine = StreamEngine(session.model, session.runtime, progress=progress.advance)
        records = mine(common.records_for(session, inputs, region))
        predictions = run_classify(engine, loaded_head, records, kind)
        if common.distributed():
            grouped: dict[int, list] = {}
            for prediction in predictions:
                grouped.setdefault(prediction.record_index, []).append(prediction)
            merged = gather(sorted(grouped.items()))
            if merged is None:
                return
            predictions = (p for _, items in merged for p in items)
        count = 0
        with RowWriter(output, columns, "tsv") as writer:
            for p in predictions:
                writer.write_row([p.id, p.start, p.end, p.label] + [round(float(x), 6) for x in p.probabilities])
                count += 1
    common.info(f"titans: {count:,} prediction(s) with head {head} -> {output}", quiet)
    common.info(f"titans: read {common.format_rate(engine.throughput.tokens, engine.throughput.seconds, unit)}", quiet)
