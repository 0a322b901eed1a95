"""`titans surprise` on text: one row per sentence (or per --window tokens)."""

from __future__ import annotations

from titans_cli.cli import common


def run_text(session, input: str, metric: str, window: int | None, format: str, output: str, quiet: bool) -> None:
    from titans_cli.io.tracks import RowWriter
    from titans_cli.stream import StreamEngine
    from titans_cli.tasks.surprise import RecordSummary, SentenceRow, run_online

    columns = ["id", "offset", "length", "tokens", "bits", "grad"]
    if metric not in ("bits", "grad"):
        columns.append(metric)
    with common.sharded_run(session, [input]) as (mine, gather), common.Progress(None, "tokens", quiet) as progress:
        engine = StreamEngine(session.model, session.runtime, progress=progress.advance)
        records = mine(common.records_for(session, [input]))
        results = ((record.index, items) for record, items in run_online(engine, records, metric, window, "text"))
        if common.distributed():
            results = gather([(index, list(items)) for index, items in results])
            if results is None:
                return
        summaries = []
        with RowWriter(output, columns, format) as writer:
            for _, items in results:
                for item in items:
                    if isinstance(item, SentenceRow):
                        row = [item.id, item.offset, item.length, item.tokens, float(item.bits), float(item.grad)]
                        if metric not in ("bits", "grad"):
                            row.append(float(item.value))
                        writer.write_row(row)
                    elif isinstance(item, RecordSummary):
                        summaries.append(item)
        for summary in summaries:
            common.info(f"titans: {summary.id}\t{summary.length:,} bytes\t{summary.tokens:,} tokens\t"
                        f"{summary.bits_per_unit:.4f} bits/byte\tmean grad {summary.mean_grad:.4g}", quiet)
        common.info(f"titans: read {common.format_rate(engine.throughput.tokens, engine.throughput.seconds, 'tokens')}", quiet)
