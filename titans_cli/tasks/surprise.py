"""Surprise tracks: per-token model outputs -> windowed means per record, and per-record summaries.

Sequences: windows of `window` bases tile each record from its first base (the last window is
shorter), so a bedGraph of the windows covers every base. Text: one row per sentence (character
offset, length, tokens, mean bits per token, mean grad), or per `window` tokens when asked.
The summary of a record is its mean bits per base (DNA) or bits per UTF-8 byte (text).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np
import torch

from titans_cli.stream import RecordEnd, RecordInput, StreamEngine, TokenOutputs

METRICS = ("bits", "grad", "momentum", "novelty")
ONLINE_METRICS = ("bits", "grad", "momentum")  # read in one pass; novelty needs novelty.py


@dataclass
class TrackChunk:
    """Consecutive finished windows of one record: [starts, ends) in record coordinates."""

    chrom: str
    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray


@dataclass
class RecordSummary:
    id: str
    length: int  # bases, or UTF-8 bytes for text
    tokens: int
    total_bits: float
    mean_grad: float
    unit: str  # "base" or "byte"
    offset: int = 0  # first base's position on the chrom (--region)
    chrom_length: int | None = None

    @property
    def bits_per_unit(self) -> float:
        return self.total_bits / max(self.length, 1)


@dataclass
class SentenceRow:
    id: str
    offset: int  # character offset of the sentence (or window) in the document
    length: int  # characters
    tokens: int
    bits: float  # mean bits per token
    grad: float  # mean memory grad surprise
    value: float  # mean of the chosen metric
    text: str = ""


class WindowMeans:
    """Running means of a per-token value over fixed windows aligned to position 0."""

    def __init__(self, window: int):
        self.window = window
        self.current = -1  # index of the window being filled
        self.total = 0.0
        self.count = 0

    def add(self, start: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed values for positions [start, start + n); returns (window indices, means) of the
        windows this completed."""
        if values.size == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        window = self.window
        first = start // window
        # groups of values that share a window: one starts at every window boundary in the piece
        first_boundary = (-start) % window
        boundaries = np.arange(first_boundary, values.size, window)
        group_starts = boundaries if first_boundary == 0 else np.concatenate(([0], boundaries))
        sums = np.add.reduceat(values, group_starts, dtype=np.float64)
        # each group runs to the next window boundary or the piece's end
        counts = np.minimum(group_starts - (start + group_starts) % window + window, values.size) - group_starts
        windows = first + np.arange(len(group_starts), dtype=np.int64)  # group 0 lies in window `first`
        done_index, done_mean = [], []
        if first == self.current:  # the first group continues the window being filled
            sums[0] += self.total
            counts[0] += self.count
        elif self.count:
            done_index.append(self.current)
            done_mean.append(self.total / self.count)
        # every group but the last is a whole window; the last stays open
        done_index = np.concatenate((np.asarray(done_index, dtype=np.int64), windows[:-1]))
        done_mean = np.concatenate((np.asarray(done_mean, dtype=np.float64), sums[:-1] / counts[:-1]))
        self.current, self.total, self.count = int(windows[-1]), float(sums[-1]), int(counts[-1])
        return done_index, done_mean

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.count:
            return np.zeros(0, np.int64), np.zeros(0)
        done = (np.asarray([self.current]), np.asarray([self.total / self.count]))
        self.count = 0
        return done


class SequenceTrackReducer:
    """Windows of one sequence record for a metric read in one pass (bits, grad, momentum) or for
    an externally supplied per-token value (novelty)."""

    def __init__(self, record: RecordInput, metric: str, window: int):
        self.record, self.metric, self.window = record, metric, window
        self.uses_momentum = metric == "momentum"  # the engine skips ||S_t|| otherwise
        io_record = record.meta.get("record")
        self.offset = int(getattr(io_record, "offset", 0) or 0)
        self.means = WindowMeans(window)
        self.total_bits = 0.0
        self.total_grad = 0.0
        self.tokens = 0

    def _chunk(self, indices: np.ndarray, means: np.ndarray, length: int | None = None) -> list[TrackChunk]:
        if indices.size == 0:
            return []
        starts = indices * self.window
        ends = starts + self.window
        if length is not None:
            ends = np.minimum(ends, length)
        return [TrackChunk(self.record.id, starts + self.offset, ends + self.offset, means)]

    def add_values(self, start: int, values: np.ndarray) -> list[TrackChunk]:
        return self._chunk(*self.means.add(start, values))

    def add(self, outputs: TokenOutputs) -> list:
        self.total_bits += float(np.sum(outputs.bits, dtype=np.float64))
        self.total_grad += float(np.sum(outputs.grad, dtype=np.float64))
        self.tokens += len(outputs)
        if self.metric in ONLINE_METRICS:
            return self.add_values(outputs.start, getattr(outputs, self.metric))
        return []

    def finish(self, end: RecordEnd) -> list:
        items: list = self._chunk(*self.means.flush(), length=end.length)
        io_record = self.record.meta.get("record")
        full = getattr(io_record, "full_length", None)
        items.append(
            RecordSummary(
                self.record.id, end.length, self.tokens, self.total_bits,
                self.total_grad / max(self.tokens, 1), "base", self.offset, full,
            )
        )
        return items


class ContextMixedReducer:
    """Hands `inner` each token's bits under context mixing (model/context_mixing.py): the model's
    probabilities of A, C, G, T (the engine's want_probs) mixed, base by base, with online k-mer and
    repeat models of this record. One mixer per record, freed at its end."""

    def __init__(self, inner, capacity: int | None = None):
        from titans_cli.model.context_mixing import ContextMixer

        self.inner = inner
        self.uses_momentum = getattr(inner, "uses_momentum", True)
        self.mixer = ContextMixer(capacity)

    def add(self, outputs: TokenOutputs) -> list:
        if outputs.probs is None:
            raise RuntimeError("context mixing needs the engine's want_probs (the A, C, G, T token ids)")
        return self.inner.add(replace(outputs, bits=self.mixer.bits(outputs.tokens, outputs.probs, outputs.bits)))

    def finish(self, end: RecordEnd) -> list:
        self.mixer = None
        return self.inner.finish(end)


class TextRowReducer:
    """Per-sentence (or per-`window`-token) rows of one document."""

    def __init__(self, record: RecordInput, metric: str, window: int | None, with_text: bool = False):
        self.record, self.metric, self.window = record, metric, window
        self.uses_momentum = metric == "momentum"  # the engine skips ||S_t|| otherwise
        self.document = record.meta["document"]
        self.with_text = with_text
        self.total_bits = 0.0
        self.total_grad = 0.0
        self.tokens = 0
        # per-sentence accumulators of the sentence being filled
        self.sentence = None
        self.acc = np.zeros(4)  # bits, grad, value, tokens
        self.window_first = None  # (char start, char end) of the current token window

    def add(self, outputs: TokenOutputs, values: np.ndarray | None = None) -> list[SentenceRow]:
        n = len(outputs)
        self.total_bits += float(np.sum(outputs.bits, dtype=np.float64))
        self.total_grad += float(np.sum(outputs.grad, dtype=np.float64))
        self.tokens += n
        if values is None:
            values = getattr(outputs, self.metric) if self.metric in ONLINE_METRICS else np.zeros(n, np.float32)
        offsets = self.document.offsets(outputs.start, n)
        if self.window:
            return self._add_windows(outputs, values, offsets)
        return self._add_sentences(outputs, values, offsets)

    def _row(self, start: int, end: int, acc: np.ndarray, text: str = "") -> SentenceRow:
        tokens = int(acc[3])
        return SentenceRow(self.record.id, start, end - start, tokens, acc[0] / tokens, acc[1] / tokens, acc[2] / tokens, text)

    def _add_sentences(self, outputs, values, offsets) -> list[SentenceRow]:
        rows = []
        sentences = self.document.sentences  # a deque, consumed here
        for i in range(len(outputs)):
            token_start = int(offsets[i, 0])
            if self.sentence is not None and token_start >= self.sentence.end:
                rows.extend(self._close_sentence())
            if self.sentence is None:
                # a token belongs to the first sentence that ends after its first character
                # (a leading space belongs to the sentence it precedes)
                while sentences and sentences[0].end <= token_start:
                    sentences.popleft()
                if not sentences:
                    continue  # trailing whitespace after the last sentence
                self.sentence = sentences.popleft()
            self.acc += (outputs.bits[i], outputs.grad[i], values[i], 1.0)
        return rows

    def _close_sentence(self) -> list[SentenceRow]:
        if self.sentence is None or self.acc[3] == 0:
            return []
        sentence, acc = self.sentence, self.acc
        self.sentence, self.acc = None, np.zeros(4)
        return [self._row(sentence.start, sentence.end, acc, sentence.text if self.with_text else "")]

    def _add_windows(self, outputs, values, offsets) -> list[SentenceRow]:
        rows = []
        for i in range(len(outputs)):
            if self.acc[3] == 0:
                self.window_first = [int(offsets[i, 0]), int(offsets[i, 1])]
            self.acc += (outputs.bits[i], outputs.grad[i], values[i], 1.0)
            self.window_first[1] = int(offsets[i, 1])
            if self.acc[3] == self.window:
                rows.append(self._row(self.window_first[0], self.window_first[1], self.acc))
                self.acc = np.zeros(4)
        return rows

    def finish(self, end: RecordEnd) -> list:
        if self.window:
            rows = [self._row(self.window_first[0], self.window_first[1], self.acc)] if self.acc[3] else []
        else:
            rows = self._close_sentence()
        rows.append(
            RecordSummary(self.record.id, self.document.utf8_bytes, self.tokens, self.total_bits,
                          self.total_grad / max(self.tokens, 1), "byte")
        )
        return rows


# Records mixed at once: a record's mixer holds up to ~260 MB of tables (context_mixing.ContextMixer).
# The lanes' mixers run side by side on the host's cores (the Numba kernel releases the GIL), so a
# host with more cores mixes more records at once, up to MIXING_LANES_MAX.
MIXING_LANES, MIXING_LANES_MAX = 8, 16


def with_context_mixing(engine: StreamEngine, make_reducer):
    """Context mixing on a DNA engine: it reports each position's A/C/G/T probabilities, streams
    MIXING_LANES records at a time (more on a host of more cores), mixes them in threads, and every
    reducer gets the mixed bits."""
    from titans_cli.model.context_mixing import BASE_IDS

    engine.want_probs = list(range(BASE_IDS.start, BASE_IDS.stop))  # A, C, G, T, the order the mixer reads
    cores = torch.get_num_threads()  # the cores the process may use (device.configure_threads; on a GPU torch's default)
    engine.lanes = min(engine.lanes, max(MIXING_LANES, min(cores, MIXING_LANES_MAX)))
    engine.reducer_threads = cores  # (the engine's pool takes at most one thread per lane)
    return lambda record: ContextMixedReducer(make_reducer(record), record.length)


def run_online(
    engine: StreamEngine, records: Iterable[RecordInput], metric: str, window: int | None, kind: str,
    with_text: bool = False, context_mixing: bool = False,
) -> Iterator[tuple[RecordInput, Iterator]]:
    """One streaming pass for bits/grad/momentum: yields (record, items) in input order, items
    being TrackChunk / SentenceRow and a final RecordSummary. context_mixing (DNA bits): see
    with_context_mixing."""
    if kind == "sequence":
        make = lambda record: SequenceTrackReducer(record, metric, window or 50)  # noqa: E731
        return engine.run(records, with_context_mixing(engine, make) if context_mixing else make)
    return engine.run(records, lambda record: TextRowReducer(record, metric, window, with_text))
