"""`titans surprise INPUT`: per-position surprise track, novel regions, plot, per-record summary."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import typer

from titans_cli.cli import common
from titans_cli.errors import TitansInputError

HELP = "Per-position surprise track of a genome or document (bedGraph/bigWig/WIG/TSV/JSONL)."


def command(
    input: str = typer.Argument(..., help="FASTA/FASTQ (plain, gzip, bgzip) or text file; '-' for stdin."),
    metric: str = typer.Option("bits", "--metric", help="bits | grad | momentum | novelty."),
    window: Optional[int] = typer.Option(None, "--window", help="Bases (tokens) averaged per value [DNA: 50; text: one sentence]."),
    format: Optional[str] = typer.Option(None, "--format", help="bedgraph | bigwig | wig | tsv | jsonl [DNA: bedgraph; text: tsv]."),
    regions: Optional[str] = typer.Option(None, "--regions", help="Also call novel regions into this BED6 file."),
    threshold: float = typer.Option(3.0, "--threshold", help="Robust z-score a smoothed novelty must reach to call a region."),
    smooth: int = typer.Option(2000, "--smooth", help="Smoothing span (bases) of the novelty track before calling regions."),
    min_length: int = typer.Option(1000, "--min-length", help="Shortest region reported (bases)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Draw the track (and regions) into OUT.png or OUT.svg."),
    region: Optional[str] = typer.Option(None, "--region", help="Only chr:start-end (1-based inclusive, samtools syntax; indexable FASTA)."),
    context_mixing: bool = typer.Option(False, "--context-mixing", help="DNA, --metric bits: mix the model's next-base probabilities with online k-mer and repeat models of each record (repeats cost fewer bits; fits compression-style measurements)."),
    novelty_form: Optional[str] = typer.Option(None, "--novelty-form", help="combined | adapted | profile | contrast | memory (default combined, the best on a train-only check)."),
    output: str = typer.Option("-", "-o", "--output", help=common.HELP_OUTPUT),
    model: Optional[str] = typer.Option(None, "--model", help=common.HELP_MODEL),
    device: str = typer.Option("auto", "--device", help=common.HELP_DEVICE),
    backend: str = typer.Option("auto", "--backend", help=common.HELP_BACKEND),
    encoding: str = typer.Option("utf-8", "--encoding", help=common.HELP_ENCODING),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=common.HELP_QUIET),
) -> None:
    from titans_cli.io.tracks import ROW_FORMATS, TRACK_FORMATS
    from titans_cli.tasks.novelty import DEFAULT_FORM, FORMS
    from titans_cli.tasks.plot import check_plot_path
    from titans_cli.tasks.surprise import METRICS

    if metric not in METRICS:
        raise TitansInputError(f"unknown --metric {metric!r} (expected one of: {', '.join(METRICS)})")
    common.check_positive("--window", window)
    common.check_positive("--smooth", smooth)
    if min_length < 0:
        raise TitansInputError(f"--min-length must be >= 0, got {min_length}")
    if not math.isfinite(threshold):
        raise TitansInputError(f"--threshold must be a finite number, got {threshold}")
    if format is not None and format.lower() not in TRACK_FORMATS:
        raise TitansInputError(f"unknown --format {format!r} (expected one of: {', '.join(TRACK_FORMATS)})")
    if novelty_form is not None and novelty_form not in FORMS:
        raise TitansInputError(f"unknown --novelty-form {novelty_form!r} (expected one of: {', '.join(FORMS)})")
    if plot is not None:
        check_plot_path(plot)

    kind = common.input_kind([input], encoding)
    if context_mixing and (kind == "text" or metric != "bits" or regions):
        raise TitansInputError("--context-mixing applies to DNA input with --metric bits (and without --regions)")
    if kind == "text":
        format = (format or "tsv").lower()
        if format not in ROW_FORMATS:
            raise TitansInputError(f"--format {format} is for sequence tracks; text gives tsv or jsonl rows")
        if metric == "novelty" or regions or plot:
            raise TitansInputError("--metric novelty, --regions and --plot apply to FASTA/FASTQ input, not text")
    else:
        format = (format or "bedgraph").lower()
        window = window or 50
    session = common.open_session(kind, model, device, backend, encoding)
    if kind == "text":
        from titans_cli.cli.surprise_text import run_text

        run_text(session, input, metric, window, format, output, quiet)
        return
    run_sequence(session, input, metric, window, format, output, regions, threshold, smooth, min_length,
                 plot, region, novelty_form or DEFAULT_FORM, quiet, context_mixing)


def run_sequence(session, input, metric, window, format, output, regions_path, threshold, smooth, min_length,
                 plot_path, region, form, quiet, context_mixing=False) -> None:
    from titans_cli.io.tracks import BedRegion, open_track_writer, write_bed6
    from titans_cli.stream import StreamEngine
    from titans_cli.tasks.novelty import novelty_records
    from titans_cli.tasks.plot import PanelData, plot_tracks
    from titans_cli.tasks.regions import call_regions
    from titans_cli.tasks.surprise import RecordSummary, SequenceTrackReducer, TrackChunk, WindowMeans, run_online

    need_novelty = metric == "novelty" or regions_path is not None
    keep_track = regions_path is not None or plot_path is not None
    passes = 1 + ((2 if form == "contrast" else 1) if need_novelty else 0)
    total = common.estimate_units([input], "sequence", region)
    with common.sharded_run(session, [input], region) as (mine, gather), \
            common.Progress(total * passes if total else None, "bases", quiet) as progress:
        engine = StreamEngine(session.model, session.runtime, progress=progress.advance)
        records = mine(common.records_for(session, [input], region))
        online_metric = metric if metric != "novelty" else "bits"

        def per_record():
            """(record index, items) per record; items: TrackChunk (of the metric), RecordSummary,
            and ("novelty", TrackChunk) for the novelty windows when regions are called."""
            if not need_novelty:
                streamed = run_online(engine, records, metric, window, "sequence", context_mixing=context_mixing)
                for record, items in streamed:
                    yield record.index, items
                return
            for record, first_pass, scores in novelty_records(
                engine, records, form, make_reducer=lambda r: SequenceTrackReducer(r, online_metric, window)
            ):
                summary = [item for item in first_pass if isinstance(item, RecordSummary)]
                chunks = [item for item in first_pass if isinstance(item, TrackChunk)]
                offset = summary[0].offset if summary else 0
                length = summary[0].length if summary else 0
                means = WindowMeans(window)
                novelty_chunks = []
                for start, values in scores:
                    index, mean = means.add(start, values)
                    novelty_chunks.append((index, mean))
                novelty_chunks.append(means.flush())
                index = np.concatenate([i for i, _ in novelty_chunks]) if novelty_chunks else np.zeros(0, np.int64)
                mean = np.concatenate([m for _, m in novelty_chunks]) if novelty_chunks else np.zeros(0)
                starts = index * window
                novelty = TrackChunk(record.id, starts + offset, np.minimum(starts + window, length) + offset, mean)
                track = [novelty] if metric == "novelty" else chunks
                yield record.index, track + [("novelty", novelty)] + summary

        results = per_record()
        if common.distributed():
            results = gather([(index, list(items)) for index, items in results])
            if results is None:
                return  # not rank 0: rank 0 writes
        summaries, panels, called = [], [], []
        track_name = f"titans {metric}" + (" (context mixing)" if context_mixing else "")
        with open_track_writer(output, format, value_name=metric, track_name=track_name if format in ("bedgraph", "wig") else None,
                               description=f"titans surprise, {metric}{', context mixing' if context_mixing else ''}, window {window}") as writer:
            for _, items in results:
                track_parts, novelty_chunk = [], None
                for item in items:
                    if isinstance(item, TrackChunk):
                        writer.add_intervals(item.chrom, item.starts, item.ends, item.values)
                        if keep_track:
                            track_parts.append(item)
                    elif isinstance(item, RecordSummary):
                        summaries.append(item)
                        if item.chrom_length:
                            writer.set_chrom_length(item.id, item.chrom_length)
                    elif isinstance(item, tuple) and item[0] == "novelty":
                        novelty_chunk = item[1]
                if keep_track and track_parts:
                    panel = _panel(track_parts)
                    if novelty_chunk is not None and novelty_chunk.values.size:
                        found, z = call_regions(novelty_chunk.chrom, novelty_chunk.starts, novelty_chunk.ends,
                                                novelty_chunk.values, threshold, smooth, min_length, merge_gap=smooth // 2)
                        called.extend(found)
                        panel.regions = found
                    panels.append(panel)
        if regions_path is not None:
            count = write_bed6(regions_path, [BedRegion(r.chrom, r.start, r.end, r.name, r.score) for r in called])
            common.info(f"titans: {count} novel region(s) at z >= {threshold:g} -> {regions_path}", quiet)
        if plot_path is not None:
            from titans_cli.tasks.regions import smooth as smooth_track

            for panel in panels:
                panel.smoothed = smooth_track(panel.values, max(1, smooth // window))
            plot_tracks(panels, plot_path, metric, title=f"titans surprise ({metric}"
                        f"{', context mixing' if context_mixing else ''}, window {window} bp)")
            common.info(f"titans: plot -> {plot_path}", quiet)
        for summary in summaries:
            common.info(
                f"titans: {summary.id}\t{summary.length:,} bases\t{summary.bits_per_unit:.4f} bits/base"
                f"{' (context mixing)' if context_mixing else ''}\tmean grad {summary.mean_grad:.4g}",
                quiet,
            )
        seconds = engine.throughput.seconds
        common.info(f"titans: read {common.format_rate(engine.throughput.tokens, seconds, 'bases')}"
                    + (f" over {passes} passes" if passes > 1 else ""), quiet)


def _panel(parts):
    from titans_cli.tasks.plot import PanelData

    return PanelData(
        parts[0].chrom,
        np.concatenate([p.starts for p in parts]),
        np.concatenate([p.ends for p in parts]),
        np.concatenate([p.values for p in parts]),
    )
