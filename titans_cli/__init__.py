"""titans: stream genomes and long documents through a Titans model with test-time memory.

The Python API does the jobs of the CLI (which is a thin layer over the same tasks)::

    import titans_cli as titans

    dna = titans.load_model("dna")                      # a shipped name or a model directory
    tracks = titans.surprise(dna, "genome.fa", metric="bits", window=100)
    tracks[0].id, tracks[0].starts, tracks[0].values, tracks[0].bits_per_unit
    vectors = titans.embed(dna, [("read1", "ACGT..."), ("read2", "GGCA...")])
    vectors.matrix.shape                                  # (2, hidden size)
    text = titans.load_model("text")
    print(titans.summarize(text, "book.txt", sentences=5).text)
    titans.classify("domain", "contigs.fa").labels

Inputs (`data`): a path, a list of paths, a sequence or text given as a string, or an iterable of
(id, sequence-or-text) pairs. Results are numpy arrays in small dataclasses.
"""

from __future__ import annotations

from io import BytesIO
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

__version__ = "0.1.0"

__all__ = ["load_model", "surprise", "embed", "summarize", "classify", "Model", "SurpriseTrack", "Embeddings",
           "Predictions", "__version__"]


@dataclass
class Model:
    """A loaded model ready to stream: network, tokenizer, device and memory backend."""

    name: str
    loaded: object  # titans_cli.model.LoadedModel
    runtime: object  # titans_cli.device.Runtime

    @property
    def kind(self) -> str:
        return "sequence" if self.loaded.config.tokenizer == "dna" else "text"

    @property
    def card(self) -> str:
        return self.loaded.card

    def engine(self, **options):
        from titans_cli.stream import StreamEngine

        return StreamEngine(self.loaded.model, self.runtime, **options)


def load_model(name: str = "dna", device: str = "auto", backend: str = "auto") -> Model:
    """Load a shipped model by name ("dna", "text") or a model directory."""
    from titans_cli.device import choose_runtime
    from titans_cli.model import load_model as load_model_dir

    runtime = choose_runtime(device, backend)
    return Model(str(name), load_model_dir(name, device=runtime.device), runtime)


# -----------------------------------------------------------------------------
# Inputs


def _records(model: Model, data) -> Iterator:
    """RecordInputs from paths, strings or (id, value) pairs."""
    from titans_cli.stream import RecordInput, TextDocument, sequence_records, text_records

    tokenizer = model.loaded.tokenizer
    items = [data] if isinstance(data, (str, os.PathLike, bytes)) or (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], str)) else data
    index = 0
    for item in items:
        if isinstance(item, (str, os.PathLike)) and (str(item) == "-" or Path(item).is_file()):
            reader = sequence_records if model.kind == "sequence" else text_records
            for record in reader([str(item)], tokenizer, first_index=index):
                index = record.index + 1
                yield record
            continue
        if isinstance(item, tuple):
            record_id, value = item
        else:
            record_id, value = f"seq{index + 1}" if model.kind == "sequence" else f"doc{index + 1}", item
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if model.kind == "sequence":
            tokens = tokenizer.encode(value.replace("\n", "").replace("\r", "").replace(" ", ""))
            yield RecordInput(index, str(record_id), [tokens], len(tokens), {})
        else:
            stream = BytesIO(str(value).encode("utf-8"))
            stream.name = str(record_id)
            document = TextDocument(stream, tokenizer)
            yield RecordInput(index, str(record_id), document.pieces(), None, {"document": document})
        index += 1


# -----------------------------------------------------------------------------
# Jobs


@dataclass
class SurpriseTrack:
    """One record's track: windows [starts, ends) (bases, or characters for text sentences)."""

    id: str
    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray
    metric: str
    bits_per_unit: float  # mean bits per base (DNA) or per UTF-8 byte (text)
    length: int
    bits: np.ndarray | None = None  # text: mean bits per token of each sentence
    grad: np.ndarray | None = None


def surprise(model: Model, data, metric: str = "bits", window: int | None = None,
             novelty_form: str | None = None, context_mixing: bool = False) -> list[SurpriseTrack]:
    """Per-record surprise tracks. DNA: windows of `window` bases (default 50). Text: one row per
    sentence (or per `window` tokens). metric: bits | grad | momentum | novelty (DNA).
    context_mixing (DNA, bits): the model mixed with online k-mer and repeat models of each record
    (model/context_mixing.py), as `titans surprise --context-mixing`."""
    from titans_cli.errors import TitansInputError
    from titans_cli.tasks.novelty import DEFAULT_FORM, novelty_records
    from titans_cli.tasks.surprise import METRICS, RecordSummary, SentenceRow, TrackChunk, WindowMeans, run_online

    if metric not in METRICS:
        raise TitansInputError(f"unknown metric {metric!r} (expected one of: {', '.join(METRICS)})")
    if window is not None and window < 1:
        raise TitansInputError(f"window must be a positive number, got {window}")
    if context_mixing and (model.kind != "sequence" or metric != "bits"):
        raise TitansInputError("context_mixing applies to DNA models with metric bits")
    engine = model.engine()
    records = _records(model, data)
    tracks = []
    if metric == "novelty":
        if model.kind != "sequence":
            raise TitansInputError("metric novelty applies to DNA models")
        window = window or 50
        from titans_cli.tasks.surprise import SequenceTrackReducer

        for record, first, scores in novelty_records(engine, records, novelty_form or DEFAULT_FORM,
                                                     make_reducer=lambda r: SequenceTrackReducer(r, "bits", window)):
            means, parts = WindowMeans(window), []
            for start, values in scores:
                parts.append(means.add(start, values))
            parts.append(means.flush())
            summary = next(item for item in first if isinstance(item, RecordSummary))
            index = np.concatenate([p[0] for p in parts])
            values = np.concatenate([p[1] for p in parts])
            starts = index * window + summary.offset
            ends = np.minimum(index * window + window, summary.length) + summary.offset
            tracks.append(SurpriseTrack(record.id, starts, ends, values, metric, summary.bits_per_unit, summary.length))
        return tracks
    kind = model.kind
    for record, items in run_online(engine, records, metric, window if kind == "text" else (window or 50), kind,
                                    context_mixing=context_mixing):
        chunks, rows, summary = [], [], None
        for item in items:
            if isinstance(item, TrackChunk):
                chunks.append(item)
            elif isinstance(item, SentenceRow):
                rows.append(item)
            elif isinstance(item, RecordSummary):
                summary = item
        if kind == "sequence":
            cat = lambda name: np.concatenate([getattr(c, name) for c in chunks]) if chunks else np.zeros(0)  # noqa: E731
            tracks.append(SurpriseTrack(record.id, cat("starts"), cat("ends"), cat("values"), metric,
                                        summary.bits_per_unit, summary.length))
        else:
            tracks.append(SurpriseTrack(
                record.id,
                np.array([r.offset for r in rows], dtype=np.int64),
                np.array([r.offset + r.length for r in rows], dtype=np.int64),
                np.array([r.value if metric not in ("bits", "grad") else getattr(r, metric) for r in rows]),
                metric, summary.bits_per_unit, summary.length,
                bits=np.array([r.bits for r in rows]), grad=np.array([r.grad for r in rows]),
            ))
    return tracks


@dataclass
class Embeddings:
    ids: list[str]
    starts: np.ndarray
    ends: np.ndarray
    matrix: np.ndarray  # (rows, features)


def embed(model: Model, data, per: str = "record", pool: str = "mean", window: int | None = None,
          step: int | None = None) -> Embeddings:
    """One vector per record (or per window): mean hidden state or memory fingerprint."""
    from titans_cli.tasks.embed import run_embed

    rows = list(run_embed(model.engine(), _records(model, data), model.kind, per, pool, window, step))
    dim = rows[0].vector.shape[0] if rows else 0
    return Embeddings(
        [r.id for r in rows],
        np.array([r.start for r in rows], dtype=np.int64),
        np.array([r.end for r in rows], dtype=np.int64),
        np.stack([r.vector for r in rows]) if rows else np.zeros((0, dim), np.float32),
    )


@dataclass
class SummaryResult:
    id: str
    sentences: list  # titans_cli.tasks.summarize.SummarySentence, in document order
    n_sentences: int

    @property
    def text(self) -> str:
        return "\n".join(" ".join(s.text.split()) for s in self.sentences)


def summarize(model: Model, data, sentences: int | None = None, ratio: float | None = None,
              redundancy: float = 0.3) -> SummaryResult | list[SummaryResult]:
    """Extractive summary of a text (path or string); a list when several documents are given."""
    from titans_cli.tasks.summarize import run_summarize

    results = [SummaryResult(s.id, s.sentences, s.n_sentences)
               for s in run_summarize(model.engine(), _records(model, data), sentences, ratio, redundancy)]
    single = isinstance(data, (str, os.PathLike, bytes)) or (isinstance(data, tuple) and len(data) == 2)
    return results[0] if single and len(results) == 1 else results


@dataclass
class Predictions:
    classes: list[str]
    ids: list[str]
    starts: np.ndarray
    ends: np.ndarray
    labels: list[str]
    probabilities: np.ndarray  # (rows, classes), rows sum to 1


def classify(head, data, model: Model | None = None) -> Predictions:
    """Classify records or windows with a head (a shipped name, a directory or a loaded Head)."""
    from titans_cli.tasks.classify import run_classify
    from titans_cli.tasks.heads import Head, load_head

    head = head if isinstance(head, Head) else load_head(head)
    model = model or load_model(head.settings.get("model", "dna"))
    rows = list(run_classify(model.engine(), head, _records(model, data), model.kind))
    return Predictions(
        list(head.classes),
        [r.id for r in rows],
        np.array([r.start for r in rows], dtype=np.int64),
        np.array([r.end for r in rows], dtype=np.int64),
        [r.label for r in rows],
        np.stack([r.probabilities for r in rows]) if rows else np.zeros((0, len(head.classes))),
    )
