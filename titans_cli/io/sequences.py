"""The one FASTA/FASTQ reader: streaming, any number of records, plain/gzip/bgzip, stdin, regions.

A record's sequence is never held whole: `SequenceRecord.pieces()` yields bounded pieces
(at most `piece_size` bytes, 1 MiB by default) of uppercase ASCII over A, C, G, T, N, so a 250 Mbp
chromosome on a single line streams in constant memory. Soft-masked (lowercase) bases are
uppercased, IUPAC ambiguity codes become N and U becomes T. Anything else in a sequence line is
an error naming the file, record, line and column, or, with on_invalid="mask", becomes N.

Regions (`chr`, `chr:start`, `chr:start-end`; 1-based inclusive like samtools) are read through
pyfaidx from a plain or bgzip-compressed FASTA; the .fai (and .gzi) are created beside the file
when missing, or in a temporary directory when that directory is not writable.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from titans_cli.errors import TitansInputError
from titans_cli.io.inputs import (
    InputFile,
    Source,
    binary_content_label,
    display_name,
    input_head,
    open_input,
    printable,
)

PIECE_SIZE = 1 << 20
# A header longer than this is not a header: most likely a binary or a text file without newlines.
MAX_HEADER_BYTES = 1 << 20
# When a caller moves to the next record without reading the current one, that record's
# sequence is kept (so `list(iter_records(reads.fq))` still works for batching short reads) up to
# this size; longer unread sequences are skipped and can no longer be read.
KEEP_UNREAD_BYTES = 8 << 20

# Integer codes of bases used by the DNA tokenizer.
BASE_CODES = {"A": 0, "C": 1, "G": 2, "T": 3, "N": 4}

IUPAC_AMBIGUITY = "RYKMSWBDHVN"
_INVALID = 0  # marker byte for "not a nucleotide code" in the translation tables
_LINE_WHITESPACE = b" \t\r\n"


def _base_table(invalid_to: int) -> bytes:
    table = bytearray([invalid_to]) * 256
    for base in "ACGT":
        table[ord(base)] = table[ord(base.lower())] = ord(base)
    table[ord("U")] = table[ord("u")] = ord("T")
    for code in IUPAC_AMBIGUITY:
        table[ord(code)] = table[ord(code.lower())] = ord("N")
    return bytes(table)


_STRICT_TABLE = _base_table(_INVALID)
_MASK_TABLE = _base_table(ord("N"))
_CODE_TABLE = bytes(BASE_CODES.get(chr(byte), BASE_CODES["N"]) for byte in range(256))
# FASTQ qualities are Phred+33: '!' (33) to '~' (126).
_QUALITY_CHARS = bytes(range(33, 127))


def encode_bases(piece: bytes) -> np.ndarray:
    """Integer codes (uint8, writable) of a piece: A=0 C=1 G=2 T=3, anything else N=4."""
    return np.frombuffer(bytearray(piece.translate(_CODE_TABLE)), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Records


class SequenceRecord:
    """One FASTA/FASTQ record (or one region of a record).

    `id` is the header's first word (the chrom name of tracks), `description` the rest.
    `offset` is the 0-based position of the first base within the named sequence (non-zero only
    for regions) and `full_length` that sequence's whole length (chrom size), known up front only
    for regions. `length` is the number of bases yielded; None until the pieces are consumed.
    `line` is the header's line number (None for regions).
    """

    __slots__ = (
        "id",
        "description",
        "line",
        "offset",
        "length",
        "full_length",
        "_source",
        "_state",
        "_kept",
    )

    def __init__(self, id, description, line, source, offset=0, length=None, full_length=None):
        self.id = id
        self.description = description
        self.line = line
        self.offset = offset
        self.length = length
        self.full_length = full_length
        self._source = source
        self._state = "unread"  # unread -> reading -> done | kept | skipped
        self._kept: list[bytes] | None = None

    def pieces(self) -> Iterator[bytes]:
        """Yield the sequence in pieces of at most piece_size bytes (read once, in order)."""
        if self._state == "unread":
            self._state = "reading"
            # A plain loop, not `yield from`: if the caller drops this iterator early, closing
            # it must not close the parser underneath (the reader drains it and goes on).
            for piece in self._source:
                yield piece
            self._state = "done"
        elif self._state == "kept":
            yield from self._kept
        elif self._state == "skipped":
            raise RuntimeError(
                f"record {self.id!r} was skipped: read its pieces before advancing to the next record"
            )
        else:
            raise RuntimeError(f"the pieces of record {self.id!r} were already read")

    def read(self) -> bytes:
        """The whole sequence as one bytes object (for short records: reads, contigs, tests)."""
        return b"".join(self.pieces())

    def _finish_unread(self) -> None:
        """Called when the reader moves on: drain what the caller did not read."""
        if self._state == "unread":
            kept, size = [], 0
            for piece in self._source:
                size += len(piece)
                if size <= KEEP_UNREAD_BYTES:
                    kept.append(piece)
                else:
                    kept = None
            if kept is not None:
                self._kept, self._state = kept, "kept"
            else:
                self._state = "skipped"
        elif self._state == "reading":
            for _ in self._source:
                pass
            self._state = "done"

    def _set_length(self, length: int) -> None:
        self.length = length
        if self.full_length is None:
            self.full_length = length

    def __repr__(self) -> str:
        return f"SequenceRecord(id={self.id!r}, offset={self.offset}, length={self.length})"


# --------------------------------------------------------------------------------------------
# Streaming parser


class _LineFragments:
    """Reads a binary stream as line fragments of bounded size, keeping line and column."""

    def __init__(self, stream, fragment_size: int):
        self._stream = stream
        self._readline = stream.readline
        self._fragment_size = fragment_size
        self.line = 0  # 1-based number of the line the last fragment belongs to
        self.column = 0  # 0-based byte column of the last fragment within its line
        self._at_line_start = True
        self.ended_line = True
        self._next_column = 0

    def next(self) -> tuple[bytes, bool] | None:
        """(fragment, starts_a_line) or None at end of input; fragments keep their newline."""
        fragment = self._readline(self._fragment_size)
        if not fragment:
            return None
        starts_line = self._at_line_start
        if starts_line:
            self.line += 1
            self._next_column = 0
        self.column = self._next_column
        self._at_line_start = fragment.endswith(b"\n")
        # readline(limit) returns a short fragment without newline only at the end of input.
        self.ended_line = self._at_line_start or len(fragment) < self._fragment_size
        self._next_column += len(fragment)
        return fragment, starts_line

    def whole_lines(self) -> bytes | None:
        """Several complete lines at once (up to the fragment size), stopping before a line
        that starts with '>'; None when that is not possible here (a header is next, a line is
        longer than what is buffered, end of input): then read line by line with next().

        Sequence bodies are mostly short lines (60-80 columns); handling a megabyte of them
        with one translate() instead of one call per line makes reading ~10x faster.
        """
        if not self._at_line_start:
            return None
        buffered = self._stream.peek(self._fragment_size)[: self._fragment_size]
        if not buffered or buffered[:1] == b">":
            return None
        header = buffered.find(b"\n>")
        end = header + 1 if header >= 0 else buffered.rfind(b"\n") + 1
        if end <= 0:
            return None
        block = self._stream.read(end)
        self.first_line_of_block = self.line + 1
        self.line += block.count(b"\n")
        self.column = self._next_column = 0
        self.ended_line = True
        return block

    def rest_of_line(self, first: bytes, limit: int, what: str, name: str) -> bytes:
        """Join `first` with the remaining fragments of its line (at most `limit` bytes)."""
        parts, size = [first], len(first)
        while not first.endswith(b"\n"):
            item = self.next()
            if item is None:
                break
            first = item[0]
            size += len(first)
            if size > limit:
                raise TitansInputError(
                    f"{name}: line {self.line}: {what} longer than {limit} bytes "
                    "(not a FASTA/FASTQ file?)"
                )
            parts.append(first)
        return b"".join(parts)


def _split_header(header_line: bytes, name: str, line: int) -> tuple[str, str]:
    text = header_line[1:].rstrip(b"\r\n")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = text.decode("latin-1")
    if any(ord(ch) < 32 and ch != "\t" for ch in decoded):
        raise TitansInputError(
            f"{name}: line {line}: control character in header {printable(text)!s}"
        )
    words = decoded.strip().split(None, 1)
    if not words:
        raise TitansInputError(f"{name}: line {line}: header has no record name")
    return words[0], (words[1] if len(words) > 1 else "")


class _PieceBuffer:
    """Collects cleaned bases and hands them out in pieces of exactly piece_size (last shorter)."""

    def __init__(self, piece_size: int):
        self.piece_size = piece_size
        self.buffer = bytearray()
        self.total = 0

    def add(self, bases: bytes) -> Iterator[bytes]:
        self.buffer += bases
        self.total += len(bases)
        while len(self.buffer) >= self.piece_size:
            yield bytes(self.buffer[: self.piece_size])
            del self.buffer[: self.piece_size]

    def flush(self) -> Iterator[bytes]:
        if self.buffer:
            yield bytes(self.buffer)
            self.buffer.clear()


class _RecordParser:
    """FASTA and FASTQ state machine over line fragments."""

    def __init__(self, opened: InputFile, on_invalid: str, piece_size: int):
        self.name = opened.name
        self.lines = _LineFragments(opened.stream, piece_size)
        self.table = _MASK_TABLE if on_invalid == "mask" else _STRICT_TABLE
        self.piece_size = piece_size
        self.next_header: tuple[bytes, int] | None = None
        self.format = self._find_first_header(opened.head)

    # -- start of file ------------------------------------------------------------------

    def _find_first_header(self, head: bytes) -> str:
        label = binary_content_label(head)
        if label is not None:
            raise TitansInputError(f"{self.name}: {label}, not FASTA/FASTQ")
        while True:
            item = self.lines.next()
            if item is None:
                raise TitansInputError(f"{self.name}: empty file (no FASTA/FASTQ records)")
            fragment = item[0].lstrip()
            if fragment.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark from an editor
                fragment = fragment[3:].lstrip()
            stripped = fragment.strip()
            if not stripped:
                continue
            if stripped[:1] in (b">", b"@"):
                line = self.lines.line
                header = self.lines.rest_of_line(fragment, MAX_HEADER_BYTES, "header", self.name)
                self.next_header = (header, line)
                return "fasta" if stripped[:1] == b">" else "fastq"
            if not stripped.translate(_STRICT_TABLE, b" \t").count(_INVALID):
                raise TitansInputError(
                    f"{self.name}: line {self.lines.line}: sequence before any header "
                    "(a FASTA record starts with a '>name' line)"
                )
            raise TitansInputError(
                f"{self.name}: line {self.lines.line}: not FASTA or FASTQ "
                f"(expected a '>' or '@' header, found {printable(stripped, 30)!r})"
            )

    # -- records ------------------------------------------------------------------------

    def records(self) -> Iterator[SequenceRecord]:
        while self.next_header is not None:
            header, line = self.next_header
            self.next_header = None
            record_id, description = _split_header(header, self.name, line)
            record = SequenceRecord(record_id, description, line, None)
            if self.format == "fasta":
                record._source = self._fasta_sequence(record)
            else:
                record._source = self._fastq_sequence(record)
            yield record
            record._finish_unread()

    def _invalid_base(self, record: SequenceRecord, fragment: bytes) -> TitansInputError:
        for index, byte in enumerate(fragment):
            if self.table[byte] == _INVALID and byte not in _LINE_WHITESPACE:
                break
        else:  # unreachable when called for a fragment holding an invalid byte
            index, byte = 0, fragment[0]
        shown = chr(byte) if 32 < byte < 127 else f"\\x{byte:02x}"
        return TitansInputError(
            f"{self.name}: record {record.id!r}, line {self.lines.line}, column "
            f"{self.lines.column + index + 1}: invalid character '{shown}' in sequence "
            "(only IUPAC nucleotide codes ACGTUN RYKMSWBDHV are accepted, in either case)"
        )

    def _invalid_in_block(self, record: SequenceRecord, block: bytes) -> TitansInputError:
        for index, byte in enumerate(block):
            if self.table[byte] == _INVALID and byte not in _LINE_WHITESPACE:
                break
        line = self.lines.first_line_of_block + block.count(b"\n", 0, index)
        column = index - (block.rfind(b"\n", 0, index) + 1) + 1
        shown = chr(byte) if 32 < byte < 127 else f"\\x{byte:02x}"
        return TitansInputError(
            f"{self.name}: record {record.id!r}, line {line}, column {column}: invalid character "
            f"'{shown}' in sequence (only IUPAC nucleotide codes ACGTUN RYKMSWBDHV are accepted, "
            "in either case)"
        )

    def _clean(self, record: SequenceRecord, fragment: bytes) -> bytes:
        bases = fragment.translate(self.table, _LINE_WHITESPACE)
        if self.table is _STRICT_TABLE and bases.count(_INVALID):
            raise self._invalid_base(record, fragment)
        return bases

    def _fasta_sequence(self, record: SequenceRecord) -> Iterator[bytes]:
        pieces = _PieceBuffer(self.piece_size)
        while True:
            block = self.lines.whole_lines()
            if block is not None:
                bases = block.translate(self.table, _LINE_WHITESPACE)
                if self.table is _STRICT_TABLE and bases.count(_INVALID):
                    raise self._invalid_in_block(record, block)
                yield from pieces.add(bases)
                continue
            item = self.lines.next()
            if item is None:
                break
            fragment, starts_line = item
            if starts_line and fragment[:1] == b">":
                line = self.lines.line
                header = self.lines.rest_of_line(fragment, MAX_HEADER_BYTES, "header", self.name)
                self.next_header = (header, line)
                break
            yield from pieces.add(self._clean(record, fragment))
        yield from pieces.flush()
        if pieces.total == 0:
            raise TitansInputError(
                f"{self.name}: record {record.id!r} (line {record.line}) has no sequence"
            )
        record._set_length(pieces.total)

    def _fastq_sequence(self, record: SequenceRecord) -> Iterator[bytes]:
        name = self.name
        pieces = _PieceBuffer(self.piece_size)
        # Sequence lines run until the '+' separator line.
        while True:
            item = self.lines.next()
            if item is None:
                raise TitansInputError(
                    f"{name}: record {record.id!r} (line {record.line}): file ends before the "
                    "'+' line (truncated FASTQ?)"
                )
            fragment, starts_line = item
            if starts_line and fragment[:1] == b"+":
                self.lines.rest_of_line(fragment, MAX_HEADER_BYTES, "'+' line", name)
                break
            if starts_line and fragment[:1] == b"@":
                raise TitansInputError(
                    f"{name}: record {record.id!r} (line {record.line}): next header at line "
                    f"{self.lines.line} before the '+' line and qualities"
                )
            yield from pieces.add(self._clean(record, fragment))
        yield from pieces.flush()
        sequence_length = pieces.total
        if sequence_length == 0:
            raise TitansInputError(
                f"{name}: record {record.id!r} (line {record.line}) has no sequence"
            )
        # Qualities may span several lines; they end at the first line end reaching the length.
        quality_length = 0
        while True:
            item = self.lines.next()
            if item is None:
                if quality_length == sequence_length:
                    break
                raise TitansInputError(
                    f"{name}: record {record.id!r} (line {record.line}): quality length "
                    f"{quality_length} differs from sequence length {sequence_length} "
                    "(file ends inside the qualities)"
                )
            fragment, _ = item
            qualities = fragment.rstrip(b"\r\n")
            bad = qualities.translate(None, _QUALITY_CHARS)
            if bad:
                raise TitansInputError(
                    f"{name}: record {record.id!r}, line {self.lines.line}: invalid quality "
                    f"character {printable(bad[:1])!r} (Phred+33 uses '!' to '~')"
                )
            quality_length += len(qualities)
            if self.lines.ended_line and quality_length >= sequence_length:
                break
        if quality_length != sequence_length:
            raise TitansInputError(
                f"{name}: record {record.id!r} (line {record.line}): quality length "
                f"{quality_length} differs from sequence length {sequence_length} "
                f"(qualities end at line {self.lines.line})"
            )
        record._set_length(sequence_length)
        self._expect_fastq_header()

    def _expect_fastq_header(self) -> None:
        while True:
            item = self.lines.next()
            if item is None:
                return
            fragment, starts_line = item
            if not fragment.strip():
                continue
            if starts_line and fragment[:1] == b"@":
                line = self.lines.line
                header = self.lines.rest_of_line(fragment, MAX_HEADER_BYTES, "header", self.name)
                self.next_header = (header, line)
                return
            raise TitansInputError(
                f"{self.name}: line {self.lines.line}: expected a '@' FASTQ header, found "
                f"{printable(fragment.strip(), 30)!r}"
            )


# --------------------------------------------------------------------------------------------
# Regions


@dataclass(frozen=True)
class Region:
    """A region of a named sequence, 0-based half-open; end None means "to the end"."""

    chrom: str
    start: int = 0
    end: int | None = None

    def __str__(self) -> str:  # samtools notation, 1-based inclusive
        if self.start == 0 and self.end is None:
            return self.chrom
        end = "" if self.end is None else f"{self.end:d}"
        return f"{self.chrom}:{self.start + 1:d}-{end}"


_RANGE = re.compile(r"^(?:(?P<start>[0-9,]+)(?P<dash>-(?P<end>[0-9,]*))?|-(?P<end_only>[0-9,]+))$")


def _position(text: str, region_text: str) -> int:
    digits = text.replace(",", "")
    if not digits:
        raise TitansInputError(f"invalid region {region_text!r}: empty position")
    return int(digits)


def _parse_range(chrom: str, coordinates: str, region_text: str) -> Region:
    match = _RANGE.match(coordinates)
    if match is None:
        raise TitansInputError(
            f"invalid region {region_text!r}: expected chr, chr:start or chr:start-end "
            "(1-based, inclusive)"
        )
    if match.group("end_only") is not None:
        start1, end1 = 1, _position(match.group("end_only"), region_text)
    else:
        start1 = _position(match.group("start"), region_text)
        end_text = match.group("end")
        end1 = _position(end_text, region_text) if end_text else None
    if start1 < 1:
        raise TitansInputError(f"invalid region {region_text!r}: positions are 1-based, start must be >= 1")
    if end1 is not None and end1 < start1:
        raise TitansInputError(f"invalid region {region_text!r}: end {end1} is before start {start1}")
    return Region(chrom, start1 - 1, end1)


def parse_region(text: str, known_names: Iterable[str] | None = None) -> Region:
    """Parse samtools region syntax: `chr`, `chr:start`, `chr:start-end`, `chr:-end`, `{chr}:...`.

    Positions are 1-based inclusive and may contain commas; the result is 0-based half-open.
    Sequence names may contain ':' (e.g. HLA alleles): with `known_names`, a text that is itself a
    name means the whole sequence, as in samtools; `{name}:start-end` removes any ambiguity.
    """
    region_text = text
    text = text.strip()
    if not text:
        raise TitansInputError("invalid region '': empty")
    names = set(known_names) if known_names is not None else None
    if text.startswith("{"):
        close = text.find("}")
        if close <= 1:
            raise TitansInputError(f"invalid region {region_text!r}: unbalanced '{{' or empty name")
        chrom, rest = text[1:close], text[close + 1 :]
        if not rest:
            return Region(chrom)
        if not rest.startswith(":"):
            raise TitansInputError(f"invalid region {region_text!r}: expected ':' after '}}'")
        return _parse_range(chrom, rest[1:], region_text)
    colon = text.rfind(":")
    whole_is_name = names is not None and text in names
    if colon < 0:
        return Region(text)
    chrom, coordinates = text[:colon], text[colon + 1 :]
    looks_like_range = _RANGE.match(coordinates) is not None
    if whole_is_name:
        if looks_like_range and chrom in names:
            raise TitansInputError(
                f"region {region_text!r} is ambiguous: both {text!r} and {chrom!r} are sequence "
                f"names; write {{{text}}} or {{{chrom}}}:{coordinates}"
            )
        return Region(text)
    if not looks_like_range:
        if names is not None and chrom not in names and text not in names:
            return Region(text)  # reported later as an absent record, by its full name
        return _parse_range(chrom, coordinates, region_text)
    if not chrom:
        raise TitansInputError(f"invalid region {region_text!r}: no sequence name before ':'")
    return _parse_range(chrom, coordinates, region_text)


def resolve_region(region: Region, length: int, name: str = "") -> tuple[int, int]:
    """(start, end), 0-based half-open, checked against the sequence length."""
    where = f"{name}: " if name else ""
    end = length if region.end is None else region.end
    if region.start >= length:
        raise TitansInputError(
            f"{where}region {region} starts past the end of {region.chrom!r} ({length} bp)"
        )
    if end > length:
        raise TitansInputError(
            f"{where}region {region} ends past the end of {region.chrom!r} ({length} bp)"
        )
    return region.start, end


# What reading damaged BGZF data through pyfaidx raises (Biopython's bgzf: RuntimeError "Decompressed
# to N, not M", zlib.error, EOFError on a cut block), besides pyfaidx's own errors.
_DAMAGED_BGZF = (RuntimeError, zlib.error, EOFError)


def _faidx_error(name: str, error: Exception) -> TitansInputError:
    return TitansInputError(f"{name}: cannot index for region queries: {' '.join(str(error).split())}")


def _open_faidx(path: str, compression: str, name: str):
    """A pyfaidx.Faidx for `path` plus a cleanup callback.

    pyfaidx decides BGZF from the file name, so a file whose name disagrees with its content is
    reached through a correctly named link in a temporary directory. Indexes go beside the file
    when it is writable, else into that temporary directory.
    """
    import pyfaidx

    scratch: list[str] = []

    def cleanup() -> None:
        for directory in scratch:
            shutil.rmtree(directory, ignore_errors=True)

    def scratch_dir() -> str:
        if not scratch:
            scratch.append(tempfile.mkdtemp(prefix="titans-faidx-"))
        return scratch[0]

    named_compressed = path.lower().endswith((".gz", ".bgz"))
    target = path
    if (compression == "bgzf") != named_compressed:
        suffix = ".fa.gz" if compression == "bgzf" else ".fa"
        target = os.path.join(scratch_dir(), "input" + suffix)
        os.symlink(os.path.abspath(path), target)

    def attempt(index_dir: str | None):
        options = dict(as_raw=True, strict_bounds=True, rebuild=True, build_index=True)
        if index_dir is not None:
            base = os.path.join(index_dir, os.path.basename(target))
            options["indexname"] = base + ".fai"
            options["gzi_indexname"] = base + ".gzi"
        return pyfaidx.Faidx(target, **options)

    try:
        try:
            faidx = attempt(None)
        except (PermissionError, OSError) as error:
            if isinstance(error, pyfaidx.UnsupportedCompressionFormat):
                raise
            faidx = attempt(scratch_dir())  # directory not writable: index in a scratch dir
    except pyfaidx.UnsupportedCompressionFormat as error:
        cleanup()
        raise _faidx_error(name, error) from None
    except (pyfaidx.FastaIndexingError, ValueError, OSError, UnicodeDecodeError) as error:
        cleanup()
        raise _faidx_error(name, error) from None
    except _DAMAGED_BGZF as error:
        cleanup()
        raise TitansInputError(
            f"{name}: corrupt or truncated bgzf data while indexing for region queries "
            f"({' '.join(str(error).split()) or type(error).__name__})"
        ) from None
    except BaseException:
        cleanup()
        raise
    return faidx, cleanup


def _region_record(
    opened: InputFile, region_text: str, on_invalid: str, piece_size: int
) -> Iterator[SequenceRecord]:
    import pyfaidx

    name = opened.name
    if opened.path is None:
        raise TitansInputError(f"{name}: a region needs an indexable FASTA file on disk, not a stream")
    if opened.compression == "gzip":
        raise TitansInputError(
            f"{name}: not indexable: plain gzip; compress with bgzip for region queries "
            f"(zcat {name} | bgzip > {name.removesuffix('.gz')}.bgz.gz)"
        )
    first = opened.head.lstrip()[:1]
    if first == b"@":
        raise TitansInputError(f"{name}: region queries need FASTA, this is FASTQ")
    # Validate the start of the file with the streaming parser's checks (binary, empty, ...).
    _RecordParser(opened, on_invalid, piece_size)
    opened.close()
    faidx, cleanup = _open_faidx(opened.path, opened.compression, name)
    try:
        region = parse_region(region_text, faidx.index.keys())
        if region.chrom not in faidx.index:
            known = list(faidx.index.keys())
            listed = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "")
            raise TitansInputError(
                f"{name}: no record named {region.chrom!r} for region {region_text!r} "
                f"(records: {listed})"
            )
        full_length = faidx.index[region.chrom].rlen
        start, end = resolve_region(region, full_length, name)
        record = SequenceRecord(
            region.chrom, "", None, None, offset=start, length=end - start, full_length=full_length
        )
        table = _MASK_TABLE if on_invalid == "mask" else _STRICT_TABLE

        def region_pieces() -> Iterator[bytes]:
            position = start
            while position < end:
                stop = min(end, position + piece_size)
                try:
                    text = faidx.fetch(region.chrom, position + 1, stop)
                    raw = text.encode("ascii") if isinstance(text, str) else str(text).encode("ascii")
                except (UnicodeError, pyfaidx.FetchError, OSError, ValueError, *_DAMAGED_BGZF) as error:
                    raise TitansInputError(
                        f"{name}: record {region.chrom!r}: cannot read bases {position + 1}-{stop}: "
                        f"{' '.join(str(error).split()) or type(error).__name__} (damaged file or stale index?)"
                    ) from None
                bases = raw.translate(table)
                if len(bases) != stop - position:
                    raise TitansInputError(
                        f"{name}: record {region.chrom!r}: index {name}.fai does not match the "
                        "file (delete the .fai and .gzi to rebuild them)"
                    )
                bad = bases.find(bytes([_INVALID])) if table is _STRICT_TABLE else -1
                if bad >= 0:
                    shown = printable(raw[bad : bad + 1])
                    raise TitansInputError(
                        f"{name}: record {region.chrom!r}, position {position + bad + 1}: invalid "
                        f"character '{shown}' in sequence (only IUPAC nucleotide codes are accepted)"
                    )
                yield bases
                position = stop

        record._source = region_pieces()
        yield record
        record._finish_unread()
    finally:
        faidx.close()
        cleanup()


# --------------------------------------------------------------------------------------------
# Public entry points


def iter_records(
    source: Source,
    region: str | None = None,
    on_invalid: str = "error",
    piece_size: int = PIECE_SIZE,
) -> Iterator[SequenceRecord]:
    """Stream the records of a FASTA/FASTQ path, "-" (stdin), binary file object or InputFile.

    With `region` (samtools syntax), yield one record for that region of an indexable FASTA.
    `on_invalid="mask"` turns characters outside IUPAC into N instead of raising.
    Move to the next record only after reading the current one's pieces (or not at all: unread
    records up to KEEP_UNREAD_BYTES stay readable, longer ones are skipped).
    """
    if on_invalid not in ("error", "mask"):
        raise ValueError(f"on_invalid must be 'error' or 'mask', not {on_invalid!r}")
    if piece_size < 1:
        raise ValueError("piece_size must be positive")
    opened = open_input(source)
    owns = opened is not source
    try:
        if region is not None:
            yield from _region_record(opened, region, on_invalid, piece_size)
        else:
            yield from _RecordParser(opened, on_invalid, piece_size).records()
    finally:
        if owns:
            opened.close()


def read_records(source: Source, **options) -> list[tuple[str, bytes]]:
    """(id, sequence) of every record, whole in memory: for small inputs and tests."""
    return [(record.id, record.read()) for record in iter_records(source, **options)]


def _looks_like_sequence_line(line: bytes) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.translate(_STRICT_TABLE, b" \t").count(_INVALID)


def sniff_kind(source: Source) -> str:
    """"sequence" for FASTA/FASTQ (after any decompression), "text" for anything else readable.

    A '>' first line is FASTA unless it looks like a Markdown quote ("> words" followed by a
    line that is not nucleotide codes); an '@' first line is FASTQ when its third line starts
    with '+' (else text, e.g. "@author ...").
    Stdin stays readable afterwards. Empty or binary inputs raise TitansInputError.
    """
    name, _compression, head = input_head(source)
    label = binary_content_label(head)
    if label is not None:
        raise TitansInputError(f"{name}: {label}, neither FASTA/FASTQ nor text")
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if not text:
        raise TitansInputError(f"{name}: empty file")
    lines = [line for line in text.split(b"\n")]
    first = text[:1]
    if first == b">":
        following = [line for line in lines[1:] if line.strip()]
        if lines[0][1:2] not in (b" ", b"\t") or not following:
            # Any '>name' file is FASTA: a protein or damaged FASTA then gets the reader's
            # precise error instead of being read as prose by the text model.
            return "sequence"
        return "sequence" if _looks_like_sequence_line(following[0]) else "text"
    if first == b"@":
        if len(lines) < 3:
            return "sequence" if len(lines) == 1 else "text"
        return "sequence" if lines[2].startswith(b"+") and _looks_like_sequence_line(lines[1]) else "text"
    return "text"


__all__ = [
    "BASE_CODES",
    "PIECE_SIZE",
    "Region",
    "SequenceRecord",
    "display_name",
    "encode_bases",
    "iter_records",
    "open_input",
    "parse_region",
    "read_records",
    "resolve_region",
    "sniff_kind",
]
