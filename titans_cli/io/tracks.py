"""Track writers: one per format (bedGraph, bigWig, WIG, TSV, JSONL) plus BED6 regions.

Coordinates are 0-based half-open in every file format except WIG (whose `start=` is 1-based
by definition). Chrom names are FASTA record ids. Within a track each chrom's intervals arrive
together, in increasing, non-overlapping order; chroms keep input order (like samtools output).

A writer takes either single intervals (`add_interval`) or a record's per-window values
(`add_windows`: window size, record length; the last window is shorter and every base is
covered). Files are written atomically: a writer closed by an exception leaves no output.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from titans_cli.errors import TitansInputError
from titans_cli.io.atomic import AtomicWriter, atomic_output, atomic_path

TRACK_FORMATS = ("bedgraph", "bigwig", "wig", "tsv", "jsonl")
ROW_FORMATS = ("tsv", "jsonl")


def window_bounds(window_size: int, length: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the windows tiling [offset, offset + length); the last may be shorter."""
    if window_size < 1:
        raise ValueError(f"window size must be >= 1, got {window_size}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    starts = np.arange(offset, offset + length, window_size, dtype=np.int64)
    ends = np.minimum(starts + window_size, offset + length)
    return starts, ends


def window_count(window_size: int, length: int) -> int:
    return -(-length // window_size)


def format_value(value: float) -> str:
    """Six significant digits: enough for bits/base, and equal values print equally."""
    return format(float(value), ".6g")


# --------------------------------------------------------------------------------------------
# Base class: ordering checks shared by every track format


class TrackWriter(AtomicWriter):
    """Accepts intervals per chrom in order; subclasses turn them into one file format."""

    binary = False

    def __init__(self, destination: str, value_name: str = "value", track_name: str | None = None,
                 description: str | None = None, chrom_lengths: dict[str, int] | None = None):
        self.destination = destination
        self.value_name = value_name
        self.track_name = track_name
        self.description = description
        self.chrom_lengths: dict[str, int] = dict(chrom_lengths or {})
        self._chrom: str | None = None
        self._last_end = 0
        self._finished_chroms: set[str] = set()
        self._begun = False
        super().__init__()
        self._open()

    # -- lifecycle --------------------------------------------------------------------------

    def _open(self) -> None:
        self.handle = self._stack.enter_context(atomic_output(self.destination, "w"))

    def _begin(self) -> None:
        """The preamble goes out with the first interval (or at close): a run that fails before
        any value, e.g. on a bad --region, leaves nothing on stdout either."""
        if not self._begun:
            self._begun = True
            self._write_preamble()

    def _write_preamble(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._begin()
        super().close()

    # -- input --------------------------------------------------------------------------------

    def set_chrom_length(self, chrom: str, length: int) -> None:
        """Declare a chrom's size (bigWig headers need it; other formats check against it)."""
        self.chrom_lengths[chrom] = int(length)

    def add_interval(self, chrom: str, start: int, end: int, value: float) -> None:
        self.add_intervals(chrom, [start], [end], [value])

    def add_windows(self, chrom: str, window_values: Sequence[float] | np.ndarray, window_size: int,
                    length: int, offset: int = 0, chrom_length: int | None = None) -> None:
        """One record's windows: value i covers [offset + i*w, min(offset + (i+1)*w, offset + length))."""
        values = np.asarray(window_values, dtype=np.float64).reshape(-1)
        expected = window_count(window_size, length)
        if values.shape[0] != expected:
            raise ValueError(
                f"{chrom}: {values.shape[0]} window values for {length} bases in windows of "
                f"{window_size} (expected {expected})"
            )
        if chrom_length is not None:
            self.set_chrom_length(chrom, chrom_length)
        elif chrom not in self.chrom_lengths and offset == 0:
            self.set_chrom_length(chrom, length)
        starts, ends = window_bounds(window_size, length, offset)
        self.add_intervals(chrom, starts, ends, values)

    def add_intervals(self, chrom: str, starts, ends, values) -> None:
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        ends = np.asarray(ends, dtype=np.int64).reshape(-1)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if not (starts.shape == ends.shape == values.shape):
            raise ValueError("starts, ends and values must have the same length")
        if starts.size == 0:
            return
        self._check(chrom, starts, ends, values)
        self._begin()
        self._write(chrom, starts, ends, values)

    def _check(self, chrom: str, starts, ends, values) -> None:
        if not chrom or any(ch.isspace() for ch in chrom):
            raise ValueError(f"chrom name {chrom!r} is empty or contains whitespace")
        if self._closed:
            raise ValueError("track writer is closed")
        if chrom != self._chrom:
            if chrom in self._finished_chroms:
                raise TitansInputError(
                    f"record name {chrom!r} occurs more than once: track positions would collide "
                    "(give records unique names, e.g. seqkit rename)"
                )
            if self._chrom is not None:
                self._finished_chroms.add(self._chrom)
            self._chrom, self._last_end = chrom, 0
        if np.any(ends <= starts):
            bad = int(np.argmax(ends <= starts))
            raise ValueError(f"{chrom}: empty or reversed interval [{starts[bad]}, {ends[bad]})")
        if starts[0] < 0:
            raise ValueError(f"{chrom}: negative start {int(starts[0])}")
        if starts[0] < self._last_end or np.any(starts[1:] < ends[:-1]):
            raise ValueError(f"{chrom}: intervals overlap or are out of order near {int(starts[0])}")
        length = self.chrom_lengths.get(chrom)
        if length is not None and ends[-1] > length:
            raise ValueError(f"{chrom}: interval end {int(ends[-1])} beyond chrom length {length}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{chrom}: non-finite track value (NaN or infinity)")
        self._last_end = int(ends[-1])

    def _write(self, chrom: str, starts, ends, values) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Formats


class BedGraphWriter(TrackWriter):
    """chrom, start, end, value; adjacent intervals with equal printed values are merged."""

    def __init__(self, *args, merge_equal: bool = True, **kwargs):
        self.merge_equal = merge_equal
        self._pending: list | None = None  # [chrom, start, end, text] awaiting a possible merge
        super().__init__(*args, **kwargs)

    def _write_preamble(self) -> None:
        if self.track_name:
            parts = [f'track type=bedGraph name="{_quote_free(self.track_name)}"']
            if self.description:
                parts.append(f'description="{_quote_free(self.description)}"')
            self.handle.write(" ".join(parts) + "\n")

    def _write(self, chrom, starts, ends, values) -> None:
        # One pass over the intervals with the pending line in locals: the values formatted in one
        # call (format_value's ".6g"), a line written when the next interval does not extend it.
        texts = map("{:.6g}".format, np.asarray(values, dtype=np.float64).tolist())
        lines = []
        merge = self.merge_equal
        pending_chrom, pending_start, pending_end, pending_text = self._pending or (None, None, None, None)
        for start, end, text in zip(starts.tolist(), ends.tolist(), texts):
            if merge and pending_end == start and pending_text == text and pending_chrom == chrom:
                pending_end = end
                continue
            if pending_chrom is not None:
                lines.append(f"{pending_chrom}\t{pending_start}\t{pending_end}\t{pending_text}\n")
            pending_chrom, pending_start, pending_end, pending_text = chrom, start, end, text
        self._pending = None if pending_chrom is None else [pending_chrom, pending_start, pending_end, pending_text]
        self.handle.write("".join(lines))

    def _finish(self) -> None:
        if self._pending is not None:
            chrom, start, end, text = self._pending
            self.handle.write(f"{chrom}\t{start}\t{end}\t{text}\n")
            self._pending = None


class WigWriter(TrackWriter):
    """fixedStep WIG: a declaration line opens each run of equal-length contiguous intervals."""

    def _write_preamble(self) -> None:
        if self.track_name:
            self.handle.write(f'track type=wiggle_0 name="{_quote_free(self.track_name)}"\n')
        self._run: tuple[str, int, int] | None = None  # chrom, next start, span

    def _write(self, chrom, starts, ends, values) -> None:
        lines = []
        run = self._run
        for start, end, value in zip(starts.tolist(), ends.tolist(), values.tolist()):
            span = end - start
            if run is None or run[0] != chrom or run[1] != start or run[2] != span:
                # WIG positions are 1-based (UCSC wiggle format definition).
                lines.append(f"fixedStep chrom={chrom} start={start + 1} step={span} span={span}\n")
            lines.append(format_value(value) + "\n")
            run = (chrom, end, span)
        self._run = run
        self.handle.write("".join(lines))


class RowTrackWriter(TrackWriter):
    """TSV (header line, then chrom start end value) or JSONL (one object per interval)."""

    def __init__(self, *args, row_format: str = "tsv", **kwargs):
        self.row_format = row_format
        super().__init__(*args, **kwargs)

    def _write_preamble(self) -> None:
        if self.row_format == "tsv":
            self.handle.write(f"chrom\tstart\tend\t{self.value_name}\n")

    def _write(self, chrom, starts, ends, values) -> None:
        if self.row_format == "tsv":
            rows = [f"{chrom}\t{s}\t{e}\t{format_value(v)}\n"
                    for s, e, v in zip(starts.tolist(), ends.tolist(), values.tolist())]
        else:
            rows = [json.dumps({"chrom": chrom, "start": s, "end": e,
                                self.value_name: float(format_value(v))}) + "\n"
                    for s, e, v in zip(starts.tolist(), ends.tolist(), values.tolist())]
        self.handle.write("".join(rows))


class BigWigWriter(TrackWriter):
    """bigWig through pyBigWig. Its header needs every chrom size before the first value, and
    sizes of streamed records are known only at their end, so intervals are spooled to a
    temporary file (constant memory) and written in one pass at close."""

    binary = True
    _SPOOL = np.dtype([("start", "<i8"), ("end", "<i8"), ("value", "<f8")])
    _BATCH = 1 << 20

    def _open(self) -> None:
        self._path = self._stack.enter_context(atomic_path(self.destination, suffix=".bw"))
        self._spool = self._stack.enter_context(tempfile.TemporaryFile(prefix="titans-bigwig-"))
        self._chunks: dict[str, list[tuple[int, int]]] = {}
        self._max_end: dict[str, int] = {}

    def _write(self, chrom, starts, ends, values) -> None:
        block = np.empty(starts.shape[0], dtype=self._SPOOL)
        block["start"], block["end"], block["value"] = starts, ends, values
        self._chunks.setdefault(chrom, []).append((self._spool.tell(), block.shape[0]))
        self._spool.write(block.tobytes())
        self._max_end[chrom] = int(ends[-1])

    def _finish(self) -> None:
        import pyBigWig

        chroms = list(self._chunks)
        if not chroms:
            raise ValueError("a bigWig needs at least one interval")
        sizes = [(chrom, int(self.chrom_lengths.get(chrom, self._max_end[chrom]))) for chrom in chroms]
        bigwig = pyBigWig.open(self._path, "w")
        if bigwig is None:
            raise OSError(f"pyBigWig could not create {self._path}")
        try:
            bigwig.addHeader(sizes)
            for chrom in chroms:
                for offset, count in self._chunks[chrom]:
                    self._spool.seek(offset)
                    block = np.frombuffer(self._spool.read(count * self._SPOOL.itemsize), dtype=self._SPOOL)
                    for first in range(0, count, self._BATCH):
                        part = block[first : first + self._BATCH]
                        bigwig.addEntries(
                            np.full(part.shape[0], chrom), np.ascontiguousarray(part["start"]),
                            ends=np.ascontiguousarray(part["end"]),
                            values=np.ascontiguousarray(part["value"]),
                        )
        finally:
            bigwig.close()


def _quote_free(text: str) -> str:
    return " ".join(str(text).replace('"', "'").split())


def open_track_writer(destination: str, format: str, *, value_name: str = "value",
                      track_name: str | None = None, description: str | None = None,
                      chrom_lengths: dict[str, int] | None = None) -> TrackWriter:
    """A writer for `format` (one of TRACK_FORMATS) to a path or "-" (stdout); use it in `with`."""
    key = format.lower()
    common = dict(value_name=value_name, track_name=track_name, description=description,
                  chrom_lengths=chrom_lengths)
    if key == "bedgraph":
        return BedGraphWriter(destination, **common)
    if key == "bigwig":
        return BigWigWriter(destination, **common)
    if key == "wig":
        return WigWriter(destination, **common)
    if key in ROW_FORMATS:
        return RowTrackWriter(destination, row_format=key, **common)
    raise TitansInputError(f"unknown track format {format!r}; choose one of {', '.join(TRACK_FORMATS)}")


def write_track(destination: str, format: str, intervals: Iterable[tuple[str, int, int, float]],
                **options) -> None:
    """Write a stream of (chrom, start, end, value) intervals; options as for open_track_writer."""
    with open_track_writer(destination, format, **options) as writer:
        for chrom, start, end, value in intervals:
            writer.add_interval(chrom, start, end, value)


# --------------------------------------------------------------------------------------------
# Generic rows (text results: sentence offsets and scores) and BED6 regions


class RowWriter:
    """Rows with named columns as TSV (header line first) or JSONL; atomic like the tracks."""

    def __init__(self, destination: str, columns: Sequence[str], format: str = "tsv"):
        key = format.lower()
        if key not in ROW_FORMATS:
            raise TitansInputError(f"unknown table format {format!r}; choose one of {', '.join(ROW_FORMATS)}")
        self.columns = list(columns)
        self.format = key
        self._stack = contextlib.ExitStack()
        self.handle = self._stack.enter_context(atomic_output(destination, "w"))
        self._header_written = False  # with the first row or at close, as for the tracks

    def _write_header(self) -> None:
        if not self._header_written:
            self._header_written = True
            if self.format == "tsv":
                self.handle.write("\t".join(self.columns) + "\n")

    def write_row(self, values: Sequence | dict) -> None:
        self._write_header()
        if isinstance(values, dict):
            values = [values[column] for column in self.columns]
        if len(values) != len(self.columns):
            raise ValueError(f"row has {len(values)} values for {len(self.columns)} columns")
        if self.format == "tsv":
            self.handle.write("\t".join(_tsv_cell(value) for value in values) + "\n")
        else:
            row = {column: _json_cell(value) for column, value in zip(self.columns, values)}
            self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._write_header()
        self._stack.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self._write_header()
        self._stack.__exit__(exc_type, exc, tb)


def _tsv_cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else format_value(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    # Tabs and newlines inside a cell would break the table; escape them like samtools does.
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _json_cell(value):
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass(frozen=True)
class BedRegion:
    """One BED6 line: 0-based half-open interval, name, integer score 0-1000, strand '.'."""

    chrom: str
    start: int
    end: int
    name: str
    score: int
    strand: str = "."


def bed_score(value: float, low: float, high: float) -> int:
    """Map `value` linearly from [low, high] onto the BED score range 0..1000 (clipped)."""
    if not math.isfinite(value):
        return 0
    if high <= low:
        return 1000 if value >= high else 0
    return int(round(1000 * min(1.0, max(0.0, (value - low) / (high - low)))))


def write_bed6(destination: str, regions: Iterable[BedRegion],
               chrom_lengths: dict[str, int] | None = None, track_name: str | None = None) -> int:
    """Write BED6 regions (atomically; "-" is stdout). Returns how many were written."""
    count = 0
    with atomic_output(destination, "w") as handle:
        if track_name:
            handle.write(f'track name="{_quote_free(track_name)}" useScore=1\n')
        for region in regions:
            _check_bed_region(region, chrom_lengths)
            handle.write(f"{region.chrom}\t{region.start}\t{region.end}\t{region.name}\t"
                         f"{region.score}\t{region.strand}\n")
            count += 1
    return count


def _check_bed_region(region: BedRegion, chrom_lengths: dict[str, int] | None) -> None:
    if not region.chrom or any(ch.isspace() for ch in region.chrom):
        raise ValueError(f"BED chrom {region.chrom!r} is empty or contains whitespace")
    if not (0 <= region.start < region.end):
        raise ValueError(f"BED interval [{region.start}, {region.end}) on {region.chrom} is empty or negative")
    if chrom_lengths is not None and region.chrom in chrom_lengths and region.end > chrom_lengths[region.chrom]:
        raise ValueError(f"BED interval ends at {region.end}, beyond {region.chrom} ({chrom_lengths[region.chrom]} bp)")
    if not region.name or any(ch.isspace() for ch in region.name):
        raise ValueError(f"BED name {region.name!r} is empty or contains whitespace")
    if not isinstance(region.score, (int, np.integer)) or not 0 <= region.score <= 1000:
        raise ValueError(f"BED score must be an integer 0-1000, got {region.score!r}")
    if region.strand not in ("+", "-", "."):
        raise ValueError(f"BED strand must be '+', '-' or '.', got {region.strand!r}")
