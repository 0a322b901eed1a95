"""`titans summarize INPUT`: extractive summary, sentences verbatim and in document order."""

from __future__ import annotations

import json
from typing import Optional

import typer

from titans_cli.cli import common
from titans_cli.errors import TitansInputError

HELP = "Extractive summary of a long document (novel, central, non-redundant sentences, in order)."


def command(
    input: str = typer.Argument(..., help="Text file (UTF-8, plain or gzip) or '-' for stdin."),
    sentences: Optional[int] = typer.Option(None, "--sentences", "-n", help="Number of sentences to keep."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Fraction of the sentences to keep (default 0.1 when --sentences is not given)."),
    format: str = typer.Option("text", "--format", help="text (one sentence per line) | json (sentence, offset, score)."),
    redundancy: float = typer.Option(0.3, "--redundancy", help="Weight of the redundancy penalty in [0, 1)."),
    output: str = typer.Option("-", "-o", "--output", help=common.HELP_OUTPUT),
    model: Optional[str] = typer.Option(None, "--model", help=common.HELP_MODEL),
    device: str = typer.Option("auto", "--device", help=common.HELP_DEVICE),
    backend: str = typer.Option("auto", "--backend", help=common.HELP_BACKEND),
    encoding: str = typer.Option("utf-8", "--encoding", help=common.HELP_ENCODING),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=common.HELP_QUIET),
) -> None:
    from titans_cli.io.atomic import atomic_output
    from titans_cli.stream import StreamEngine
    from titans_cli.tasks.summarize import run_summarize

    if format not in ("text", "json"):
        raise TitansInputError(f"unknown --format {format!r} (expected text or json)")
    if not 0 <= redundancy < 1:
        raise TitansInputError(f"--redundancy must be in [0, 1), got {redundancy}")
    if sentences is not None and sentences < 1:
        raise TitansInputError(f"--sentences must be at least 1, got {sentences}")
    if ratio is not None and not 0 < ratio <= 1:
        raise TitansInputError(f"--ratio must be in (0, 1], got {ratio}")
    kind = common.input_kind([input], encoding)
    if kind != "text":
        raise TitansInputError(f"{input}: summarize reads text, this is FASTA/FASTQ")
    session = common.open_session(kind, model, device, backend, encoding)
    with common.Progress(None, "tokens", quiet) as progress:
        engine = StreamEngine(session.model, session.runtime, progress=progress.advance)
        records = common.records_for(session, [input])
        summaries = list(run_summarize(engine, records, sentences, ratio, redundancy))
    with atomic_output(output, "w") as handle:
        for summary in summaries:
            if format == "json":
                document = {
                    "id": summary.id,
                    "n_sentences": summary.n_sentences,
                    "sentences": [{"sentence": s.text, "offset": s.offset, "length": s.length, "index": s.index,
                                   "score": round(s.score, 6)} for s in summary.sentences],
                }
                handle.write(json.dumps(document, ensure_ascii=False) + "\n")
            else:
                for s in summary.sentences:
                    handle.write(" ".join(s.text.split()) + "\n")
    for summary in summaries:
        common.info(f"titans: {summary.id}: kept {len(summary.sentences)} of {summary.n_sentences} sentences", quiet)
    common.info(f"titans: read {common.format_rate(engine.throughput.tokens, engine.throughput.seconds, 'tokens')}", quiet)
