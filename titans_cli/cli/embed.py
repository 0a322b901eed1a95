"""`titans embed INPUT...`: one vector per record or per window (.npy, .npz, .tsv or '-')."""

from __future__ import annotations

from typing import List, Optional

import typer

from titans_cli.cli import common
from titans_cli.errors import TitansInputError

HELP = "Embeddings of records or windows: mean hidden state or memory fingerprint (.npy/.npz/.tsv/-)."


def command(
    inputs: List[str] = typer.Argument(..., help="FASTA/FASTQ or text files ('-' for stdin); one kind per call."),
    per: str = typer.Option("record", "--per", help="record | window."),
    window: Optional[int] = typer.Option(None, "--window", help="Window length in bases/tokens (--per window; default 2000)."),
    step: Optional[int] = typer.Option(None, "--step", help="Distance between window starts (default: --window)."),
    pool: str = typer.Option("mean", "--pool", help="mean (mean hidden state) | memory (fingerprint of the memory's change)."),
    format: Optional[str] = typer.Option(None, "--format", help="npy | npz | tsv (default: from the -o extension; '-' is TSV)."),
    region: Optional[str] = typer.Option(None, "--region", help="Only chr:start-end (1-based inclusive; indexable FASTA; one input)."),
    output: str = typer.Option("-", "-o", "--output", help="Output .npy, .npz, .tsv or '-' (TSV on stdout)."),
    model: Optional[str] = typer.Option(None, "--model", help=common.HELP_MODEL),
    device: str = typer.Option("auto", "--device", help=common.HELP_DEVICE),
    backend: str = typer.Option("auto", "--backend", help=common.HELP_BACKEND),
    encoding: str = typer.Option("utf-8", "--encoding", help=common.HELP_ENCODING),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=common.HELP_QUIET),
) -> None:
    from titans_cli.io.arrays import EmbeddingWriter, embedding_format
    from titans_cli.stream import StreamEngine
    from titans_cli.tasks.embed import check_settings, run_embed

    window, step = check_settings(per, pool, window, step)
    embedding_format(output, format)  # a bad extension fails before any work
    if region is not None and len(inputs) != 1:
        raise TitansInputError("--region needs exactly one input file")
    kind = common.input_kind(inputs, encoding)
    session = common.open_session(kind, model, device, backend, encoding)
    unit = "bases" if kind == "sequence" else "tokens"
    total = common.estimate_units(inputs, kind) if kind == "sequence" else None
    with common.sharded_run(session, inputs, region) as (mine, gather), common.Progress(total, unit, quiet) as progress:
        engine = StreamEngine(session.model, session.runtime, progress=progress.advance)
        records = mine(common.records_for(session, inputs, region))
        embeddings = run_embed(engine, records, kind, per, pool, window, step)
        if common.distributed():
            grouped: dict[int, list] = {}
            for embedding in embeddings:
                grouped.setdefault(embedding.meta.get("record_index", 0), []).append(embedding)
            merged = gather(sorted(grouped.items()))
            if merged is None:
                return
            embeddings = (embedding for _, items in merged for embedding in items)
        rows = 0
        with EmbeddingWriter(output, format) as writer:
            for embedding in embeddings:
                writer.add([embedding.id], [embedding.start], [embedding.end], embedding.vector[None, :])
                rows += 1
        common.info(f"titans: {rows:,} embedding(s) of dimension {writer.dim} ({per}, pool {pool}) -> {output}", quiet)
        common.info(f"titans: read {common.format_rate(engine.throughput.tokens, engine.throughput.seconds, unit)}", quiet)
