"""Embeddings of records or windows: the mean final hidden state, or a memory fingerprint.

- ``--pool mean``: the mean over tokens of the model's final-norm hidden state.
- ``--pool memory``: a fixed-size fingerprint of what the memory learned while reading — a fixed
  random projection of the change of every layer's memory weights (stream.MemorySketch).

``--per window``: windows of ``window`` tokens every ``step`` tokens (bedtools makewindows
convention: starts 0, step, 2*step, ... while start < length; the last windows may be shorter),
each read *on its own* from a fresh memory, so a window's embedding depends on its content only.
For DNA a token is a base; for text, windows are counted in tokens and reported in characters.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from titans_cli.errors import TitansInputError
from titans_cli.model.tokenizers import DNATokenizer
from titans_cli.stream import RecordEnd, RecordInput, StreamEngine, TokenOutputs

POOLS = ("mean", "memory")
PER = ("record", "window")


@dataclass
class Embedding:
    id: str  # record id
    start: int  # 0-based half-open span the vector covers (bases or characters)
    end: int
    vector: np.ndarray
    source: str = ""
    meta: dict = field(default_factory=dict)


class PoolReducer:
    def __init__(self, record: RecordInput, pool: str):
        self.record, self.pool = record, pool
        self.total = None
        self.count = 0

    def add(self, outputs: TokenOutputs) -> list:
        if self.pool == "mean":
            part = outputs.hidden.sum(axis=0, dtype=np.float64)
            self.total = part if self.total is None else self.total + part
        self.count += len(outputs)
        return []

    def finish(self, end: RecordEnd) -> list:
        if self.count == 0:
            return []
        vector = (self.total / self.count) if self.pool == "mean" else end.memory_fingerprint
        meta = self.record.meta
        start = int(meta.get("span", (0, 0))[0]) if "span" in meta else _record_offset(self.record)
        stop = int(meta["span"][1]) if "span" in meta else start + _record_units(self.record, end)
        extra = {k: v for k, v in meta.items() if k in ("label", "row")}
        extra["record_index"] = meta.get("record_index", self.record.index)
        return [Embedding(meta.get("parent_id", self.record.id), start, stop, np.asarray(vector, np.float32),
                          str(meta.get("source", "")), extra)]


def _record_offset(record: RecordInput) -> int:
    return int(getattr(record.meta.get("record"), "offset", 0) or 0)


def _record_units(record: RecordInput, end: RecordEnd) -> int:
    document = record.meta.get("document")
    return document.chars if document is not None else end.length


def window_starts(length: int, window: int, step: int) -> np.ndarray:
    return np.arange(0, length, step, dtype=np.int64)


def sequence_windows(records: Iterable[RecordInput], window: int, step: int,
                     max_n_fraction: float = 1.0) -> Iterator[RecordInput]:
    """Split each sequence record into window records (bounded memory: a sliding buffer).
    Windows whose fraction of N exceeds `max_n_fraction` are skipped (when < 1)."""
    index = 0
    for record in records:
        offset = _record_offset(record)
        buffer = np.zeros(0, dtype=np.int64)
        buffer_start = 0  # position of buffer[0] in the record
        next_start = 0
        for piece in record.pieces:
            buffer = np.concatenate([buffer, np.asarray(piece, dtype=np.int64)])
            while next_start + window <= buffer_start + len(buffer):
                lo = next_start - buffer_start
                tokens = buffer[lo : lo + window]
                yield from _window_record(record, tokens, offset + next_start, index, max_n_fraction)
                index += 1
                next_start += step
            drop = min(next_start - buffer_start, len(buffer))
            if drop > 0:
                buffer, buffer_start = buffer[drop:], buffer_start + drop
        length = buffer_start + len(buffer)
        while next_start < length:  # the tail windows, shorter than `window`
            lo = next_start - buffer_start
            tokens = buffer[lo : lo + window]
            if len(tokens) == 0:
                break
            yield from _window_record(record, tokens, offset + next_start, index, max_n_fraction)
            index += 1
            next_start += step


def _window_record(record, tokens, start, index, max_n_fraction):
    if max_n_fraction < 1.0:
        n_id = DNATokenizer().base_ids["N"]
        if np.mean(tokens == n_id) > max_n_fraction:
            return
    meta = dict(record.meta)
    meta.update(parent_id=record.id, span=(start, start + len(tokens)), record_index=record.index)
    yield RecordInput(index, f"{record.id}:{start + 1}-{start + len(tokens)}", [tokens], len(tokens), meta)


def text_windows(records: Iterable[RecordInput], window: int, step: int) -> Iterator[RecordInput]:
    """Token windows of text documents, reported with character spans."""
    index = 0
    for record in records:
        document = record.meta["document"]
        tokens = np.concatenate([np.asarray(p, dtype=np.int64) for p in record.pieces] or [np.zeros(0, np.int64)])
        offsets = document.offsets(0, len(tokens))
        for start in window_starts(len(tokens), window, step):
            part = tokens[start : start + window]
            span = (int(offsets[start, 0]), int(offsets[start + len(part) - 1, 1]))
            meta = dict(record.meta)
            meta.update(parent_id=record.id, span=span, record_index=record.index)
            yield RecordInput(index, f"{record.id}:{span[0]}-{span[1]}", [part], len(part), meta)
            index += 1


def check_settings(per: str, pool: str, window: int | None, step: int | None) -> tuple[int | None, int | None]:
    if per not in PER:
        raise TitansInputError(f"unknown --per {per!r} (expected one of: {', '.join(PER)})")
    if pool not in POOLS:
        raise TitansInputError(f"unknown --pool {pool!r} (expected one of: {', '.join(POOLS)})")
    if per == "window":
        window = 2000 if window is None else window
        step = window if step is None else step
        if window < 1:
            raise TitansInputError(f"--window must be a positive number of bases/tokens, got {window}")
        if step < 1:
            raise TitansInputError(f"--step must be a positive number of bases/tokens, got {step}")
    return window, step


def run_embed(engine: StreamEngine, records: Iterable[RecordInput], kind: str, per: str = "record",
              pool: str = "mean", window: int | None = None, step: int | None = None,
              max_n_fraction: float = 1.0) -> Iterator[Embedding]:
    """Embeddings in input order (records, or windows of each record in order)."""
    window, step = check_settings(per, pool, window, step)
    engine.want_hidden = pool == "mean"
    engine.want_memory = pool == "memory"
    if per == "window":
        records = sequence_windows(records, window, step, max_n_fraction) if kind == "sequence" else text_windows(records, window, step)
    for _, items in engine.run(records, lambda record: PoolReducer(record, pool)):
        yield from items
