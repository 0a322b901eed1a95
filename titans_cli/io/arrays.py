"""Embedding writers: .npy (matrix only), .npz (embeddings + ids + starts + ends), .tsv and "-".

Rows arrive incrementally (one per record or window), so `embed` over millions of reads keeps
flat memory: vectors are spooled to a temporary file and the .npy/.npz is assembled at close
(the .npy header needs the final row count). Files are replaced atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from typing import Sequence

import numpy as np

from titans_cli.errors import TitansInputError
from titans_cli.io.atomic import AtomicWriter, atomic_output, atomic_path

EMBEDDING_FORMATS = ("npy", "npz", "tsv")


def embedding_format(destination: str, format: str | None = None) -> str:
    """The format for a destination: explicit, else from the extension; "-" is TSV on stdout."""
    if format is not None:
        key = format.lower().lstrip(".")
        if key not in EMBEDDING_FORMATS:
            raise TitansInputError(f"unknown embedding format {format!r}; choose one of {', '.join(EMBEDDING_FORMATS)}")
        return key
    if destination == "-":
        return "tsv"
    extension = os.path.splitext(destination)[1].lower().lstrip(".")
    if extension in EMBEDDING_FORMATS:
        return extension
    raise TitansInputError(
        f"{destination}: cannot tell the embedding format from the extension; "
        "use .npy, .npz or .tsv (or '-' for TSV on stdout)"
    )


def _tsv_text(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class EmbeddingWriter(AtomicWriter):
    """Collects (id, start, end, vector) rows; use as a context manager or call close().

    starts/ends are 0-based half-open positions of what each vector covers (0 and the record
    length for per-record embeddings).
    """

    def __init__(self, destination: str, format: str | None = None, dtype=np.float32):
        self.destination = destination
        self.format = embedding_format(destination, format)
        self.dtype = np.dtype(dtype)
        self.dim: int | None = None
        self.rows = 0
        self.ids: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        super().__init__()
        if self.format == "tsv":
            self._handle = self._stack.enter_context(atomic_output(destination, "w"))
        else:
            self._path = self._stack.enter_context(atomic_path(destination, suffix="." + self.format))
            self._spool = self._stack.enter_context(tempfile.TemporaryFile(prefix="titans-embed-"))

    def add(self, ids: Sequence[str], starts: Sequence[int], ends: Sequence[int], vectors) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (rows, dim), got shape {vectors.shape}")
        count = vectors.shape[0]
        if not (len(ids) == len(starts) == len(ends) == count):
            raise ValueError("ids, starts, ends and vectors must have the same number of rows")
        if self.dim is None:
            self.dim = int(vectors.shape[1])
            if self.format == "tsv":
                columns = "\t".join(f"e{index}" for index in range(self.dim))
                self._handle.write(f"id\tstart\tend\t{columns}\n")
        elif vectors.shape[1] != self.dim:
            raise ValueError(f"vector dimension changed from {self.dim} to {vectors.shape[1]}")
        for start, end in zip(starts, ends):
            if not 0 <= int(start) < int(end):
                raise ValueError(f"embedding span [{start}, {end}) is empty or negative")
        rows = vectors.astype(self.dtype, copy=False)
        if self.format == "tsv":
            lines = []
            for record_id, start, end, row in zip(ids, starts, ends, rows.tolist()):
                values = "\t".join(format(value, ".9g") for value in row)
                lines.append(f"{_tsv_text(record_id)}\t{int(start)}\t{int(end)}\t{values}\n")
            self._handle.write("".join(lines))
        else:
            self._spool.write(np.ascontiguousarray(rows).tobytes())
            self.ids.extend(str(record_id) for record_id in ids)
            self.starts.extend(int(start) for start in starts)
            self.ends.extend(int(end) for end in ends)
        self.rows += count

    def _write_matrix(self, handle) -> None:
        shape = (self.rows, self.dim or 0)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header) if _fits_v1(header) else \
            np.lib.format.write_array_header_2_0(handle, header)
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, handle, 1 << 20)

    def _finish(self) -> None:
        if self.format == "npy":
            with open(self._path, "wb") as handle:
                self._write_matrix(handle)
        elif self.format == "npz":
            with zipfile.ZipFile(self._path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                with archive.open("embeddings.npy", "w", force_zip64=True) as member:
                    self._write_matrix(member)
                width = max((len(record_id) for record_id in self.ids), default=1)
                extras = {
                    "ids": np.array(self.ids, dtype=f"<U{width}"),
                    "starts": np.array(self.starts, dtype=np.int64),
                    "ends": np.array(self.ends, dtype=np.int64),
                }
                for name, array in extras.items():
                    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)


def _fits_v1(header: dict) -> bool:
    # Format 1.0 headers are limited to 65535 bytes; 2.0 lifts that (numpy format spec).
    return len(repr(header)) < 60000


def write_embeddings(destination: str, embeddings, ids: Sequence[str], starts: Sequence[int],
                     ends: Sequence[int], format: str | None = None) -> None:
    """Write a whole embedding matrix at once (rows in the order given)."""
    with EmbeddingWriter(destination, format) as writer:
        writer.add(ids, starts, ends, embeddings)
