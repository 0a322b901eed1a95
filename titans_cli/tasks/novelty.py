"""Novelty: how foreign a position is to the record it sits in, from what only test-time memory has.

Raw bits are a poor detector of foreign DNA (SPEC §1): a prophage is cheap to predict if the model
has seen phages. What the Titans memory adds is a *record-adapted* state. Two passes per record:

1. **Learn.** Stream the record normally (the memory learns as it reads) and keep the token-
   weighted average of the memory weights over the whole record. The memory forgets within a few
   kilobases, so its final state only knows the record's tail; the average over the record is a
   memory of the host as a whole, dominated by what most of the record is.
2. **Score.** Stream the record again with that host-adapted memory *frozen* (the model's
   frozen_memory mode: reads, never writes) and score every position.

Forms (`form=`):

- ``adapted``: bits of each token under the frozen host-adapted memory.
- ``contrast``: bits under the host-adapted memory minus bits under the unadapted (initial) memory,
  both frozen, read side by side in one wave: how much knowing the host helps at this position;
  foreign DNA gains least.
- ``memory``: the memory's own surprise (grad norm of the associative loss) under the frozen
  host-adapted memory: where the memory meets what it did not learn.

The default is chosen by measurement on train data only (`evaluate_forms`, see DEFAULT_FORM).
The record's tokens are spooled to a temporary file between the passes, so memory stays flat.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Iterable, Iterator

import numpy as np
import torch

from titans_cli.errors import TitansInputError
from titans_cli.stream import RecordEnd, RecordInput, StreamEngine, TokenOutputs

FORMS = ("adapted", "contrast", "memory")
# Chosen by measurement on train data only (`python -m titans_cli.tasks.novelty ../shared/data`):
# four E. coli phages of dna/train/escherichia_phages_guelin (30-60 kb) inserted into 240-kb slices
# of dna/train chromosomes (2 K. pneumoniae, 2 H. pylori); AUROC of 1-kb windows inside vs outside
# the insert, shipped `dna` model, 2026-11-26 on one H100:
#   adapted 0.949 (0.965 0.923 0.949 0.958)   contrast 0.580   memory 0.548 (0.14 0.94 0.17 0.95:
#   its sign follows the host's GC, so it cannot be thresholded one-sidedly)
#   for reference, plain online bits 0.951, online grad 0.456, tetranucleotide distance 0.935.
# `adapted` is the best novelty form and as good as plain bits here, no better: on this check the
# host-adapted memory adds nothing measurable over the model's own bits.
DEFAULT_FORM = "adapted"

SPOOL_PIECE = 1 << 16


class _Spool:
    """The tokens of one record on disk, read back in pieces for the scoring pass."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        handle, self.path = tempfile.mkstemp(prefix="titans-novelty-", suffix=".tokens")
        self.file = os.fdopen(handle, "wb")
        self.length = 0

    def write(self, tokens: np.ndarray) -> None:
        self.file.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self.length += len(tokens)

    def pieces(self) -> Iterator[np.ndarray]:
        self.file.flush()
        with open(self.path, "rb") as handle:
            while True:
                data = handle.read(SPOOL_PIECE * self.dtype.itemsize)
                if not data:
                    return
                yield np.frombuffer(data, dtype=self.dtype).astype(np.int64)

    def close(self) -> None:
        self.file.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


class _MemoryAverage:
    """Token-weighted running average of every layer's memory weights (lane 0 of a wave)."""

    def __init__(self):
        self.sums: list[list[torch.Tensor]] | None = None
        self.tokens = 0
        self.dtype = torch.float32

    def __call__(self, state, rows: list[int], fed: list[int]) -> None:
        if not rows:
            return
        weight = float(fed[0])
        layers = [block.memory.current_weights for block in state.blocks if block.memory is not None]
        if self.sums is None:
            self.dtype = layers[0][0].dtype
            self.sums = [[w[rows[0]].double() * weight for w in layer] for layer in layers]
        else:
            for sums, layer in zip(self.sums, layers):
                for i, w in enumerate(layer):
                    sums[i] += w[rows[0]].double() * weight
        self.tokens += int(weight)

    def mean(self) -> list[tuple[torch.Tensor, ...]]:
        return [tuple((s / max(self.tokens, 1)).to(self.dtype) for s in layer) for layer in self.sums]


class _Collect:
    """Reducer that keeps the per-token outputs of pass 1 it is asked to keep."""

    def __init__(self, spool: _Spool, inner=None):
        self.spool, self.inner = spool, inner

    def add(self, outputs: TokenOutputs):
        self.spool.write(outputs.tokens)
        return self.inner.add(outputs) if self.inner is not None else []

    def finish(self, end: RecordEnd):
        return self.inner.finish(end) if self.inner is not None else []


class _Scores:
    """Reducer of the scoring pass: hands on (start, bits, grad) of one lane."""

    def add(self, outputs: TokenOutputs):
        return [(outputs.start, outputs.bits, outputs.grad)]

    def finish(self, end: RecordEnd):
        return []


def _state_with_memory(model, device, lane_weights: list[list[tuple[torch.Tensor, ...]]]):
    """A fresh model state (empty attention caches, position 0) whose memory of lane b, layer l is
    lane_weights[b][l] (each weight (H, out, in)); momenta are zero so a frozen memory stays put."""
    batch = len(lane_weights)
    state = model.init_state(batch, device)
    layer_index = 0
    for block, block_module in zip(state.blocks, model.blocks):
        memory_state = block_module.memory.initial_state(batch, device)
        weights = tuple(
            torch.stack([lane_weights[b][layer_index][i].to(device) for b in range(batch)])
            for i in range(len(memory_state.weights))
        )
        block.memory = dataclasses.replace(
            memory_state,
            weights=weights,
            current_weights=weights,
            momenta=tuple(torch.zeros_like(w) for w in weights),
        )
        layer_index += 1
    return state


def initial_memory(model) -> list[tuple[torch.Tensor, ...]]:
    """The learned start-of-stream memory of every layer, (H, out, in) per weight."""
    return [tuple(w.detach() for w in block.memory.initial_weights) for block in model.blocks]


def novelty_records(
    engine: StreamEngine,
    records: Iterable[RecordInput],
    form: str = DEFAULT_FORM,
    make_reducer=None,
) -> Iterator[tuple[RecordInput, list, Iterator[tuple[int, np.ndarray]]]]:
    """For each record: (record, items of pass 1's reducer, iterator of (start, novelty values)).

    `make_reducer(record)` gives an optional reducer run during pass 1 (e.g. the bits summary).
    Records are processed one at a time (lanes of one), so a record's novelty depends on nothing
    else in the input."""
    if form not in FORMS:
        raise TitansInputError(f"unknown novelty form {form!r} (expected one of: {', '.join(FORMS)})")
    for record, items, scores in novelty_components(engine, records, (form,), make_reducer):
        yield record, items, ((start, values[form]) for start, values in scores)


def novelty_components(
    engine: StreamEngine,
    records: Iterable[RecordInput],
    forms: tuple[str, ...] = FORMS,
    make_reducer=None,
) -> Iterator[tuple[RecordInput, list, Iterator[tuple[int, dict[str, np.ndarray]]]]]:
    """Like novelty_records, for several forms from one learning pass and one scoring pass:
    yields (start, {form: values}) pieces."""
    model = engine.model
    device = engine.runtime.device
    vocab = int(model.config.vocab_size)
    dtype = np.uint8 if vocab <= 256 else np.uint16 if vocab <= 65536 else np.int32
    for record in records:
        spool = _Spool(dtype)
        try:
            average = _MemoryAverage()
            inner = make_reducer(record) if make_reducer is not None else None
            engine.after_step = average
            engine.state_factory = None
            items: list = []
            for produced in engine.stream_lanes([(record, _Collect(spool, inner), record.pieces)]):
                items.extend(produced[0])
            engine.after_step = None
            if average.sums is None:
                yield record, items, iter(())
                continue
            adapted = average.mean()
            lanes = [adapted, initial_memory(model)] if "contrast" in forms else [adapted]
            engine.state_factory = lambda batch, lanes=lanes: _state_with_memory(model, device, lanes)
            scored_lanes = [(record, _Scores(), spool.pieces()) for _ in lanes]
            yield record, items, _score_pass(engine, scored_lanes, forms)
        finally:
            engine.state_factory = None
            engine.after_step = None
            spool.close()


def _score_pass(engine: StreamEngine, lanes, forms) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    model = engine.model
    previous = model.frozen_memory
    model.frozen_memory = True
    try:
        for produced in engine.stream_lanes(lanes):
            others = produced[1] if len(produced) > 1 else [None] * len(produced[0])
            for (start, bits, grad), other in zip(produced[0], others):
                values = {}
                if "adapted" in forms:
                    values["adapted"] = bits
                if "memory" in forms:
                    values["memory"] = grad
                if "contrast" in forms:
                    values["contrast"] = bits - other[1]
                yield start, values
    finally:
        model.frozen_memory = previous


# -----------------------------------------------------------------------------
# Choosing the default form by measurement


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def evaluate_forms(
    engine: StreamEngine,
    tokens: np.ndarray,
    insert: tuple[int, int],
    window: int = 1000,
    forms: Iterable[str] = FORMS,
) -> dict[str, float]:
    """AUROC of each form's window means (and of plain online bits and grad) for telling the windows
    inside `insert` = [start, end) from the rest of one record given as token ids."""
    from titans_cli.tasks.surprise import WindowMeans

    results: dict[str, float] = {}
    n_windows = -(-len(tokens) // window)
    starts = np.arange(n_windows) * window
    ends = np.minimum(starts + window, len(tokens))
    overlap = np.clip(np.minimum(ends, insert[1]) - np.maximum(starts, insert[0]), 0, None)
    labels = overlap >= (ends - starts) / 2

    def window_means(pairs) -> np.ndarray:
        means = WindowMeans(window)
        values = np.full(n_windows, np.nan)
        for start, chunk in pairs:
            index, mean = means.add(start, np.asarray(chunk))
            values[index] = mean
        index, mean = means.flush()
        values[index] = mean
        return values

    class _Online:
        def __init__(self):
            self.bits, self.grad = [], []

        def add(self, outputs):
            self.bits.append((outputs.start, outputs.bits))
            self.grad.append((outputs.start, outputs.grad))
            return []

        def finish(self, end):
            return []

    forms = tuple(forms)
    online = _Online()
    record = RecordInput(0, "check", [tokens], len(tokens))
    for _, _, scores in novelty_components(engine, [record], forms, make_reducer=lambda r: online):
        collected: dict[str, list] = {form: [] for form in forms}
        for start, values in scores:
            for form in forms:
                collected[form].append((start, values[form]))
        for form in forms:
            results[form] = auroc(window_means(collected[form]), labels)
    results["bits"] = auroc(window_means(online.bits), labels)
    results["grad"] = auroc(window_means(online.grad), labels)
    return results


# -----------------------------------------------------------------------------
# The train-only insertion check behind DEFAULT_FORM


def insertion_checks(train_dir, flank: int = 120_000):
    """(name, sequence bytes, (insert start, end)) for E. coli phages of 30-60 kb from
    `train_dir/escherichia_phages_guelin.fa.gz` inserted between two `flank`-base halves of
    slices of K. pneumoniae and H. pylori chromosomes from `train_dir` (train data only)."""
    from pathlib import Path

    from titans_cli.io.sequences import read_records

    train_dir = Path(train_dir)
    phages = sorted((i, s) for i, s in read_records(train_dir / "escherichia_phages_guelin.fa.gz") if 30000 <= len(s) <= 60000)
    klebsiella = dict(read_records(train_dir / "klebsiella_pneumoniae.fa.gz"))
    pylori = dict(read_records(train_dir / "helicobacter_pylori.fa.gz"))
    hosts = [("CP003200.1", klebsiella, 1_000_000), ("NC_017063.1", pylori, 300_000),
             ("AP006725.1", klebsiella, 2_500_000), ("NC_011333.1", pylori, 900_000)]
    checks = []
    for (host_id, genomes, start), (phage_id, phage) in zip(hosts, phages[:: max(1, len(phages) // 4)]):
        host = genomes[host_id]
        left, right = host[start : start + flank], host[start + flank : start + 2 * flank]
        checks.append((f"{host_id}_with_{phage_id}", left + phage + right, (len(left), len(left) + len(phage))))
    return checks


def tetranucleotide_distance(sequence: bytes, window: int) -> np.ndarray:
    """L1 distance of each window's tetranucleotide frequencies from the whole record's (baseline)."""
    codes = np.frombuffer(sequence.upper().translate(bytes.maketrans(b"ACGT", b"\0\1\2\3")), dtype=np.uint8)
    valid = codes < 4
    words = codes[:-3].astype(np.int64) * 64 + codes[1:-2] * 16 + codes[2:-1] * 4 + codes[3:]
    ok = valid[:-3] & valid[1:-2] & valid[2:-1] & valid[3:]
    n_windows = -(-len(sequence) // window)
    counts = np.zeros((n_windows, 256))
    np.add.at(counts, (np.arange(len(words))[ok] // window, words[ok]), 1)
    frequencies = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return np.abs(frequencies - counts.sum(0) / counts.sum()).sum(1)


def main(argv=None) -> None:
    """python -m titans_cli.tasks.novelty SHARED_DATA [MODEL]: print the AUROC of every form."""
    import json
    import sys

    from titans_cli.device import choose_runtime
    from titans_cli.model import load_model

    args = sys.argv[1:] if argv is None else argv
    runtime = choose_runtime("auto", "auto")
    loaded = load_model(args[1] if len(args) > 1 else "dna", device=runtime.device)
    engine = StreamEngine(loaded.model, runtime, piece_tokens=8192)
    window, rows = 1000, []
    for name, sequence, insert in insertion_checks(f"{args[0]}/dna/train"):
        row = evaluate_forms(engine, loaded.tokenizer.encode(sequence), insert, window=window)
        n_windows = -(-len(sequence) // window)
        starts = np.arange(n_windows) * window
        ends = np.minimum(starts + window, len(sequence))
        labels = np.clip(np.minimum(ends, insert[1]) - np.maximum(starts, insert[0]), 0, None) >= (ends - starts) / 2
        row["tetranucleotide"] = auroc(tetranucleotide_distance(sequence, window), labels)
        rows.append({"check": name, **row})
        print(json.dumps(rows[-1]), flush=True)
    print("mean", json.dumps({k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "check"}))


if __name__ == "__main__":
    main()
