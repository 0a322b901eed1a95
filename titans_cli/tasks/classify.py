"""Classification with a head: embeddings (with the head's own settings) -> class probabilities.

Also the embedding of labelled rows for `titans heads train` / `titans heads eval`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from titans_cli.errors import TitansInputError
from titans_cli.stream import RecordInput, StreamEngine, TextDocument
from titans_cli.tasks.embed import Embedding, PoolReducer, run_embed
from titans_cli.tasks.heads import Head, LabelRow, held_out, is_jsonl, jsonl_document


@dataclass
class Prediction:
    id: str
    start: int
    end: int
    label: str
    probabilities: np.ndarray  # one per head class, summing to 1
    record_index: int = 0  # input record it belongs to (for sharded runs)


def head_embedding_settings(head: Head) -> dict:
    settings = head.settings
    return {
        "per": settings.get("per", "record"),
        "pool": settings.get("pool", "mean"),
        "window": settings.get("window"),
        "step": settings.get("step"),
    }


def run_classify(engine: StreamEngine, head: Head, records: Iterable[RecordInput], kind: str,
                 batch: int = 256) -> Iterator[Prediction]:
    """Predictions in input order (per record or per window, as the head was trained)."""
    settings = head_embedding_settings(head)
    pending: list[Embedding] = []

    def flush():
        probabilities = head.probabilities(np.stack([e.vector for e in pending]))
        for embedding, p in zip(pending, probabilities):
            yield Prediction(embedding.id, embedding.start, embedding.end, head.classes[int(p.argmax())], p,
                             int(embedding.meta.get("record_index", 0)))
        pending.clear()

    for embedding in run_embed(engine, records, kind, **settings):
        pending.append(embedding)
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()


# -----------------------------------------------------------------------------
# Labelled rows -> features


def row_kind(row: LabelRow) -> str:
    if is_jsonl(row.path):
        return "text"
    from titans_cli.io.sequences import sniff_kind

    return sniff_kind(row.path)


def _row_records(row: LabelRow, row_index: int, kind: str, tokenizer) -> Iterator[RecordInput]:
    if kind == "text":
        source = jsonl_document(row.path, row.record) if row.record and is_jsonl(row.path) else row.path
        document = TextDocument(source, tokenizer)
        name = row.target
        yield RecordInput(0, name, document.pieces(), None, {"document": document, "source": row.path, "row": row_index})
        return
    from titans_cli.io.sequences import iter_records

    found = False
    for record in iter_records(row.path):
        if row.record is not None and record.id != row.record:
            continue
        found = True
        pieces = (tokenizer.encode(piece) for piece in record.pieces())
        yield RecordInput(0, record.id, pieces, None, {"record": record, "source": row.path, "row": row_index})
    if row.record is not None and not found:
        raise TitansInputError(f"{row.path}: no record named {row.record!r} (labels line {row.line})")


def _sequence_lengths(row: LabelRow) -> list[int]:
    from titans_cli.io.sequences import iter_records

    lengths = []
    for record in iter_records(row.path):
        if row.record is not None and record.id != row.record:
            continue
        lengths.append(sum(len(piece) for piece in record.pieces()))
    return lengths


def labelled_features(engine: StreamEngine, rows: list[LabelRow], tokenizer, settings: dict,
                      max_windows: int | None = None, max_n_fraction: float = 0.5,
                      progress=None):
    """Embed every labelled row (records or sampled windows) -> (features, labels, groups,
    is_test, kinds). `max_windows` caps the windows taken per row, spread evenly over it."""
    from titans_cli.tasks.embed import sequence_windows, text_windows

    per, pool, window, step = settings["per"], settings["pool"], settings.get("window"), settings.get("step")
    kinds = {row_kind(row) for row in rows}
    if len(kinds) > 1:
        raise TitansInputError("the labels file mixes sequence and text inputs; a head reads one kind")
    kind = kinds.pop()
    engine.want_hidden = pool == "mean"
    engine.want_memory = pool == "memory"

    def all_records() -> Iterator[RecordInput]:
        index = 0
        for row_index, row in enumerate(rows):
            records = _row_records(row, row_index, kind, tokenizer)
            if per == "window":
                if kind == "sequence":
                    windows = sequence_windows(records, window, step, max_n_fraction)
                    if max_windows:
                        total = sum(-(-length // step) for length in _sequence_lengths(row))
                        windows = _spread(windows, total, max_windows)
                else:
                    windows = text_windows(records, window, step)
                records = windows
            for record in records:
                record.index = index
                index += 1
                yield record

    features, labels, groups, test = [], [], [], []
    for _, items in engine.run(all_records(), lambda record: PoolReducer(record, pool)):
        for embedding in items:
            row = rows[embedding.meta["row"]]
            features.append(embedding.vector)
            labels.append(row.label)
            groups.append(embedding.meta["row"])
            test.append(held_out(row, f"{embedding.id}:{embedding.start}" if per == "window" else None))
            if progress is not None:
                progress(1)
    if not features:
        raise TitansInputError("no samples: every labelled input was empty (or all windows were N)")
    return np.stack(features), labels, np.asarray(groups), np.asarray(test), kind


def _spread(windows: Iterator[RecordInput], total: int, keep: int) -> Iterator[RecordInput]:
    """Every k-th window so that about `keep` of `total` are taken, evenly over the row. Windows
    dropped for N keep their index, so the spacing stays even along the sequence."""
    if total <= keep:
        yield from windows
        return
    stride = total / keep
    next_take = 0.0
    for window in windows:
        if window.index >= next_take:
            next_take += stride
            yield window
