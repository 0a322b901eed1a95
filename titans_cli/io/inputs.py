"""Opening an input: path, "-" (stdin) or a binary file object; compression found from content.

Shared by the sequence and text readers. Compression is decided by magic bytes, never by the file
name, so `zcat x.fa.gz | titans ... -` and a bgzipped file called `genome.fa` both work. Every
problem is a `TitansInputError` whose one-line message starts with the input's name.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Union

from titans_cli.errors import TitansInputError

# How much decompressed data is read ahead to decide what an input is (FASTA, FASTQ, text, binary).
HEAD_BYTES = 64 * 1024
# Reads from the decompressed stream happen in blocks of this size.
READ_BLOCK = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
# The empty block every BGZF file ends with (SAM spec section 4.1.2); its absence means truncation.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

# Formats users sometimes hand us by mistake, found by their first bytes (after any gzip layer).
_FOREIGN_COMPRESSION = (
    (b"BZh", "bzip2", "bzip2 -dc"),
    (b"\xfd7zXZ\x00", "xz", "xz -dc"),
    (b"\x28\xb5\x2f\xfd", "zstd", "zstd -dc"),
    (b"PK\x03\x04", "zip", "unzip -p"),
)
_BINARY_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"BAM\x01", "a BAM file (convert with samtools fasta)"),
    (b"CRAM", "a CRAM file (convert with samtools fasta)"),
    (b"BCF\x02", "a BCF file"),
    (b"\x93NUMPY", "a NumPy array file"),
    (b"SQLite format 3\x00", "an SQLite database"),
)

Source = Union[str, "os.PathLike[str]", BinaryIO, "InputFile"]

# Bytes already taken from stdin (by sniffing) that the next reader of "-" must see first.
_stdin_pushback = b""


def display_name(source) -> str:
    """The name an input has in messages: its path, "<stdin>" for "-", or a stream's name."""
    if isinstance(source, InputFile):
        return source.name
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        return "<stdin>" if text == "-" else text
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<stream>"


@dataclass
class InputFile:
    """An opened input: `stream` yields the decompressed bytes from the start.

    `head` is the first HEAD_BYTES (or fewer, at end of file) of decompressed content, already
    included in `stream`; `path` is the file's path when it is a file on disk.
    """

    name: str
    path: str | None
    compression: str  # "none" | "gzip" | "bgzf"
    head: bytes
    stream: io.BufferedReader
    _closers: tuple = ()
    _raw_file: object = None

    def progress(self) -> tuple[int, int | None]:
        """(bytes of the file read so far, file size) for progress bars; sizes are on-disk
        (compressed) bytes. Stdin and streams report (0, None)."""
        if self._raw_file is None or self.path is None:
            return 0, None
        try:
            return self._raw_file.tell(), os.fstat(self._raw_file.fileno()).st_size
        except (OSError, ValueError):
            return 0, None

    def close(self) -> None:
        for closer in self._closers:
            try:
                closer.close()
            except Exception:  # closing after a failure must not hide the original error
                pass

    def __enter__(self) -> "InputFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _PrefixedReader(io.RawIOBase):
    """Raw stream that replays `prefix` and then continues with `rest` (bytes already read)."""

    def __init__(self, prefix: bytes, rest):
        self._prefix = memoryview(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if len(self._prefix):
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._rest.read(len(buffer))
        if not data:
            return 0
        buffer[: len(data)] = data
        return len(data)


class _RecordingReader(io.RawIOBase):
    """Raw stream that keeps a copy of every byte read (to push stdin back after sniffing)."""

    def __init__(self, inner):
        self._inner = inner
        self.recorded = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._inner.read(len(buffer))
        if not data:
            return 0
        self.recorded += data
        buffer[: len(data)] = data
        return len(data)


class _CheckedReader(io.RawIOBase):
    """Turns decompression and OS errors raised while reading into one-line TitansInputErrors.

    It counts decompressed bytes so a truncated or corrupt gzip is reported with the offset
    where the damage was found.
    """

    def __init__(self, inner, name: str, compression: str):
        self._inner = inner
        self._name = name
        self._compression = compression
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._inner.read(len(buffer))
        except EOFError:
            raise TitansInputError(
                f"{self._name}: truncated {self._compression} data: the compressed stream ends "
                f"after {self.offset} decompressed bytes (incomplete download or copy?)"
            ) from None
        except (gzip.BadGzipFile, zlib.error) as error:
            raise TitansInputError(
                f"{self._name}: corrupt {self._compression} data after {self.offset} "
                f"decompressed bytes ({_one_line(error)})"
            ) from None
        except OSError as error:
            raise TitansInputError(f"{self._name}: read error: {_one_line(error)}") from None
        if not data:
            return 0
        buffer[: len(data)] = data
        self.offset += len(data)
        return len(data)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_up_to(stream, size: int, name: str) -> bytes:
    """Read `size` bytes or until end of file (pipes return short reads)."""
    parts = []
    remaining = size
    while remaining > 0:
        try:
            chunk = stream.read(remaining)
        except OSError as error:
            raise TitansInputError(f"{name}: read error: {_one_line(error)}") from None
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _open_raw(source) -> tuple[str, str | None, object, list]:
    """(name, path, raw binary stream, things to close) for a path, "-" or a file object."""
    global _stdin_pushback
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path == "-":
            prefix, _stdin_pushback = _stdin_pushback, b""
            raw = _PrefixedReader(prefix, sys.stdin.buffer) if prefix else sys.stdin.buffer
            return "<stdin>", None, raw, []
        if not path:
            raise TitansInputError("empty input path")
        if os.path.isdir(path):
            raise TitansInputError(f"{path}: is a directory, not a file")
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise TitansInputError(f"{path}: no such file") from None
        except PermissionError:
            raise TitansInputError(f"{path}: permission denied (file is not readable)") from None
        except OSError as error:
            raise TitansInputError(f"{path}: cannot open: {_one_line(error)}") from None
        return path, path, handle, [handle]
    if hasattr(source, "read"):
        return display_name(source), None, source, []
    raise TypeError(f"expected a path, '-' or a binary file object, got {type(source).__name__}")


def is_bgzf_header(first_bytes: bytes) -> bool:
    """True for a BGZF block header: gzip with FEXTRA and a 'BC' subfield (SAM spec section 4.1)."""
    return (
        len(first_bytes) >= 14
        and first_bytes[:2] == GZIP_MAGIC
        and first_bytes[2] == 8
        and bool(first_bytes[3] & 4)
        and first_bytes[12:14] == b"BC"
    )


def _refuse_foreign_compression(name: str, first_bytes: bytes) -> None:
    for magic, label, command in _FOREIGN_COMPRESSION:
        if first_bytes.startswith(magic):
            raise TitansInputError(
                f"{name}: {label}-compressed, which is not read directly; decompress it first "
                f"({command} {name if name != '<stdin>' else 'FILE'})"
            )


def binary_content_label(head: bytes) -> str | None:
    """What a block of decompressed bytes is when it is clearly not text, else None."""
    for magic, label in _BINARY_SIGNATURES:
        if head.startswith(magic):
            return label
    if head.startswith(GZIP_MAGIC):
        return "gzip data compressed a second time"
    if b"\x00" in head[:HEAD_BYTES]:
        return "binary data (contains NUL bytes)"
    return None


def _check_bgzf_eof(name: str, path: str) -> None:
    """A BGZF file cut at a block boundary decompresses cleanly; only the EOF block tells."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < len(BGZF_EOF):
                return
            handle.seek(-len(BGZF_EOF), os.SEEK_END)
            tail = handle.read()
    except OSError:
        return  # not seekable (a named pipe): the stream is checked while reading
    if tail != BGZF_EOF:
        raise TitansInputError(
            f"{name}: truncated bgzf data: the BGZF EOF marker is missing (incomplete download or copy?)"
        )


def open_input(source: Source) -> InputFile:
    """Open a path, "-" or binary file object; gzip/BGZF are detected from the first bytes.

    An already opened InputFile is returned unchanged (its owner closes it).
    """
    if isinstance(source, InputFile):
        return source
    name, path, raw, closers = _open_raw(source)
    try:
        return _open_from_raw(name, path, raw, closers)
    except BaseException:
        for closer in closers:
            closer.close()
        raise


def _open_from_raw(name: str, path: str | None, raw, closers: list) -> InputFile:
    magic = _read_up_to(raw, 18, name)
    _refuse_foreign_compression(name, magic)
    prefixed = _PrefixedReader(magic, raw)
    if magic.startswith(GZIP_MAGIC):
        compression = "bgzf" if is_bgzf_header(magic) else "gzip"
        if compression == "bgzf" and path is not None:
            _check_bgzf_eof(name, path)
        decompressed = gzip.GzipFile(fileobj=io.BufferedReader(prefixed, READ_BLOCK), mode="rb")
        closers = [decompressed, *closers]
    else:
        compression = "none"
        decompressed = prefixed
    checked = _CheckedReader(decompressed, name, compression)
    head = _read_up_to(checked, HEAD_BYTES, name)
    if compression != "none":
        _refuse_foreign_compression(name, head)
    stream = io.BufferedReader(_PrefixedReader(head, checked), READ_BLOCK)
    return InputFile(name, path, compression, head, stream, tuple(closers), raw if path else None)


def peek_stdin_head() -> tuple[str, bytes]:
    """(compression, decompressed head) of stdin without consuming it for the next reader of "-"."""
    global _stdin_pushback
    prefix, _stdin_pushback = _stdin_pushback, b""
    recorder = _RecordingReader(_PrefixedReader(prefix, sys.stdin.buffer))
    try:
        opened = _open_from_raw("<stdin>", None, recorder, [])
        return opened.compression, opened.head
    finally:
        _stdin_pushback = bytes(recorder.recorded)


def input_head(source: Source) -> tuple[str, str, bytes]:
    """(name, compression, decompressed head) of an input, leaving stdin readable afterwards."""
    if isinstance(source, InputFile):
        return source.name, source.compression, source.head
    if isinstance(source, (str, os.PathLike)) and os.fspath(source) == "-":
        compression, head = peek_stdin_head()
        return "<stdin>", compression, head
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError("sniffing a file object would consume it; open it with open_input first")
    with open_input(source) as opened:
        return opened.name, opened.compression, opened.head


def printable(data: bytes, limit: int = 40) -> str:
    """A short, single-line, escaped rendering of raw bytes for error messages."""
    text = data[:limit].decode("latin-1")
    shown = "".join(ch if 32 <= ord(ch) < 127 else f"\\x{ord(ch):02x}" for ch in text)
    return shown + ("..." if len(data) > limit else "")
