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
- ``profile``: the record's own profile in the model's feature space, the learned analogue of a
  composition distance. The final hidden states of the scoring pass (attention and host-adapted
  memory branches) are averaged per 2-kb bin; each bin's distance from the mean of the record's
  bins is Mahalanobis under their covariance (shrunk towards a scaled identity), logged. One value
  per bin, given to all its tokens.
- ``combined``: robust z of the bin's mean ``adapted`` bits + robust z of its ``profile``: foreign
  to the host-adapted memory's predictions or to the record's feature profile.

The default is chosen by measurement on train data only (`evaluate_forms`, see DEFAULT_FORM).
The record's tokens are spooled to a temporary file between the passes, and the bin means of the
profile forms to another, so memory stays flat; the profile forms keep one float per 2-kb bin and
give their first value only once the scoring pass has read the whole record.
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
from titans_cli.tasks.regions import robust_z

FORMS = ("adapted", "contrast", "memory", "profile", "combined")
BIN_FORMS = ("profile", "combined")  # scored per bin of BIN_TOKENS against the record's own profile
BIN_TOKENS = 2000  # 2 kb: measured best of 1 / 2 / 5 kb on the check below short of 5 kb's coarser track
SHRINKAGE = 0.1
PROFILE_READ_ROWS = 4096  # bin means read back from the spool at a time
# Chosen by measurement on train data only: the check of `insertion_checks` (16 items: 45-58 kb
# inserts between two 300-kb halves of K. pneumoniae / H. pylori chromosomes; GC-matched E. coli
# phages, GC-matched mycobacteriophages, K. pneumoniae plasmid DNA in another strain, U. maydis /
# S. cerevisiae DNA of the host's GC, the previous unmatched-GC phages, and same-host controls).
# Shipped `dna` model, one H100, 2026-11-26; mean window AUROC over the 13 foreign items (per kind
# at 2 kb: phage_gc / mycophage_gc / plasmid / other_genome_gc / phage_easy) and over the controls:
#   window 2 kb:  combined 0.886 (0.94 0.77 0.87 0.81 0.99; controls 0.56)
#                 adapted 0.837 (0.94 0.63 0.81 0.76 0.95; 0.51)   profile 0.789 (0.78 0.73 0.79 0.72 0.95; 0.55)
#                 contrast 0.661   memory 0.487   online bits 0.835   online grad 0.517
#                 tetranucleotide chi-square 0.921 (0.92 0.91 0.86 0.95 1.00; 0.43)
#   window 5 kb:  combined 0.922, adapted 0.874, profile 0.839, contrast 0.701, memory 0.467,
#                 online bits 0.871, grad 0.521; tetra chi-square 0.953 (controls: combined 0.59, tetra 0.43)
# Profile variants measured and not kept: diagonal z (0.75), PCA top 4/16/32 (0.71-0.78), the online
# (non-adapted) hidden states (0.77; in `combined` 0.85), bins of 1 kb (combined 0.877) or 5 kb (0.919
# at 2 kb windows, but a 5-kb track), distance per 500-bp bin then averaged (0.71), shrinkage
# 0.05 / 0.3 (+-0.02). `combined` is the best titans form on this check, still below the plain
# composition baseline; its controls sit slightly above 0.5 (tetra's below), so it flags some
# ordinary host windows too. The memory-bits part carries the weakness seen in the earlier
# adapted/bits measurement: where the model predicts foreign DNA well, only the profile part helps.
DEFAULT_FORM = "combined"

SPOOL_PIECE = 1 << 16


class _Spool:
    """Values of one record on disk (its tokens for the scoring pass, or per-token scores while the
    record's bin profile is being gathered), read back in pieces of SPOOL_PIECE values."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        handle, self.path = tempfile.mkstemp(prefix="titans-novelty-", suffix=".tokens")
        self.file = os.fdopen(handle, "wb")
        self.length = 0

    def write(self, tokens: np.ndarray) -> None:
        self.file.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self.length += len(tokens)

    def pieces(self, count: int = SPOOL_PIECE) -> Iterator[np.ndarray]:
        """The values in order, `count` at a time."""
        self.file.flush()
        with open(self.path, "rb") as handle:
            while True:
                data = handle.read(count * self.dtype.itemsize)
                if not data:
                    return
                yield np.frombuffer(data, dtype=self.dtype)

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
    """Reducer of the scoring pass: hands on (start, bits, grad, hidden or None) of one lane."""

    def add(self, outputs: TokenOutputs):
        return [(outputs.start, outputs.bits, outputs.grad, outputs.hidden)]

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
            tokens = lambda: (piece.astype(np.int64) for piece in spool.pieces())
            scored_lanes = [(record, _Scores(), tokens()) for _ in lanes]
            scores = _score_pass(engine, scored_lanes, forms)
            if any(form in BIN_FORMS for form in forms):
                scores = _binned_scores(scores, forms, dtype)
            yield record, items, scores
        finally:
            engine.state_factory = None
            engine.after_step = None
            spool.close()


def _score_pass(engine: StreamEngine, lanes, forms) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(start, values) of the scoring pass; for the bin forms, values also hold "_bits" and
    "_hidden" (the adapted lane's bits and hidden states), which _binned_scores turns into scores."""
    model = engine.model
    previous, previous_hidden = model.frozen_memory, engine.want_hidden
    model.frozen_memory = True
    binned = any(form in BIN_FORMS for form in forms)
    engine.want_hidden = previous_hidden or binned
    try:
        for produced in engine.stream_lanes(lanes):
            others = produced[1] if len(produced) > 1 else [None] * len(produced[0])
            for (start, bits, grad, hidden), other in zip(produced[0], others):
                values = {}
                if "adapted" in forms:
                    values["adapted"] = bits
                if "memory" in forms:
                    values["memory"] = grad
                if "contrast" in forms:
                    values["contrast"] = bits - other[1]
                if binned:
                    values["_bits"], values["_hidden"] = bits, hidden
                yield start, values
    finally:
        model.frozen_memory = previous
        engine.want_hidden = previous_hidden


class _BinProfile:
    """The record's profile: per BIN_TOKENS bin, the mean hidden state of the scoring pass (spooled to
    disk, float32) and the mean adapted bits (kept: one float per bin); the mean and covariance of the
    bin means are accumulated as the bins complete, so RAM does not grow with d_model x bins."""

    def __init__(self):
        self.rows: _Spool | None = None
        self.width = 0
        self.bits: list[float] = []
        self.full: list[bool] = []
        self.sum_hidden = self.sum_bits = 0.0
        self.count = 0
        self.current_hidden, self.current_bits, self.current_n = None, 0.0, 0
        self.sum_vector = self.sum_outer = None
        self.n_profile = 0

    def add(self, start: int, bits: np.ndarray, hidden: np.ndarray) -> None:
        if self.rows is None:
            self.width = hidden.shape[1]
            self.rows = _Spool(np.float32)
            self.current_hidden = np.zeros(self.width)
            self.sum_vector, self.sum_outer = np.zeros(self.width), np.zeros((self.width, self.width))
        offset = 0
        while offset < len(bits):
            take = min(len(bits) - offset, BIN_TOKENS - self.current_n)
            self.current_hidden += hidden[offset : offset + take].sum(0, dtype=np.float64)
            self.current_bits += float(bits[offset : offset + take].sum(dtype=np.float64))
            self.current_n += take
            offset += take
            if self.current_n == BIN_TOKENS:
                self._close_bin()

    def _close_bin(self) -> None:
        mean = self.current_hidden / self.current_n
        self.rows.write(mean.astype(np.float32))
        self.bits.append(self.current_bits / self.current_n)
        # a short last bin is scored but kept out of the profile: its mean is noisier than the rest
        full = self.current_n * 2 >= BIN_TOKENS
        self.full.append(full)
        if full:
            self.sum_vector += mean
            self.sum_outer += np.outer(mean, mean)
            self.n_profile += 1
        self.current_hidden[:] = 0.0
        self.current_bits, self.current_n = 0.0, 0

    def scores(self) -> dict[str, np.ndarray]:
        """Per bin: "profile" = log Mahalanobis distance of the bin mean from the record's profile,
        "combined" = robust z of the adapted bits + robust z of the profile distance."""
        if self.rows is None:
            return {"profile": np.zeros(0), "combined": np.zeros(0)}
        if self.current_n:
            self._close_bin()
        n_bins = len(self.bits)
        distance = np.zeros(n_bins)
        if self.n_profile >= 3:
            mean = self.sum_vector / self.n_profile
            covariance = (self.sum_outer - self.n_profile * np.outer(mean, mean)) / (self.n_profile - 1)
            # shrinkage towards a scaled identity: the record has only ~d_model bins per 250 kb, too
            # few for a full covariance; 0.1 measured best of 0.05 / 0.1 / 0.3 (see DEFAULT_FORM)
            target = np.trace(covariance) / self.width
            covariance = (1 - SHRINKAGE) * covariance + (SHRINKAGE * target + 1e-12) * np.eye(self.width)
            precision = np.linalg.inv(covariance)
            index = 0
            for block in self.rows.pieces(self.width * PROFILE_READ_ROWS):
                centred = block.reshape(-1, self.width).astype(np.float64) - mean
                squared = np.einsum("ij,jk,ik->i", centred, precision, centred) / self.width
                distance[index : index + len(squared)] = squared
                index += len(squared)
        profile = np.log(distance + 1e-6)
        combined = np.nan_to_num(robust_z(np.asarray(self.bits))) + np.nan_to_num(robust_z(profile))
        return {"profile": profile, "combined": combined}

    def close(self) -> None:
        if self.rows is not None:
            self.rows.close()


def _binned_scores(scores, forms, spool_dtype) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Consume the whole scoring pass into the record's bin profile (and the per-token forms asked
    for beside it into spools), then yield per-token values: each bin's score on all its tokens."""
    token_forms = [form for form in forms if form not in BIN_FORMS]
    profile = _BinProfile()
    spools = {form: _Spool(np.float32) for form in token_forms}
    length = 0
    try:
        for start, values in scores:
            profile.add(start, values["_bits"], values["_hidden"])
            for form in token_forms:
                spools[form].write(values[form])
            length = start + len(values["_bits"])
        per_bin = profile.scores()
        readers = {form: spools[form].pieces() for form in token_forms}
        for start in range(0, length, SPOOL_PIECE):
            positions = np.arange(start, min(start + SPOOL_PIECE, length))
            values = {form: next(readers[form]) for form in token_forms}
            for form in forms:
                if form in BIN_FORMS:
                    values[form] = per_bin[form][positions // BIN_TOKENS].astype(np.float32)
            yield start, values
    finally:
        profile.close()
        for spool in spools.values():
            spool.close()


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


CHECK_KINDS = ("phage_gc", "mycophage_gc", "plasmid", "other_genome_gc", "phage_easy", "control")


def insertion_checks(train_dir, flank: int = 300_000) -> list[dict]:
    """The train-only insertion check: dicts of kind, name, sequence (bytes) and insert (start, end).

    Each item is `flank` bases of a host chromosome, an insert, then the next `flank` bases. Kinds:
    phage_gc (E. coli phages of the GC nearest the host's), mycophage_gc (mycobacteriophages of
    the GC nearest K. pneumoniae's), plasmid (45 kb of a K. pneumoniae plasmid in another strain's
    chromosome: mobile DNA of the same species), other_genome_gc (45 kb of another genome of similar
    GC: U. maydis in K. pneumoniae, S. cerevisiae in H. pylori; train holds no third bacterium),
    phage_easy (the previous check: E. coli phages of unmatched GC) and control (45 kb of the same
    host from 1-1.6 Mb away: nothing foreign, must score ~0.5). Everything from `train_dir`."""
    from pathlib import Path

    from titans_cli.io.sequences import read_records

    train_dir = Path(train_dir)

    def gc(sequence: bytes) -> float:
        upper = sequence.upper()
        return (upper.count(b"G") + upper.count(b"C")) / max(1, len(upper))

    def records(name: str) -> dict:
        return dict(read_records(train_dir / f"{name}.fa.gz"))

    klebsiella, pylori = records("klebsiella_pneumoniae"), records("helicobacter_pylori")
    coli_phages = sorted((i, s) for i, s in records("escherichia_phages_guelin").items() if 30000 <= len(s) <= 60000)
    mycophages = [(i, s) for i, s in records("mycobacteriophages_train").items() if 40000 <= len(s) <= 60000]
    ustilago, yeast = records("ustilago_maydis"), records("saccharomyces_cerevisiae_s288c")
    checks = []

    def add(kind, host_id, host, at, insert_id, insert):
        left, right = host[at : at + flank], host[at + flank : at + 2 * flank]
        checks.append({"kind": kind, "name": f"{kind}:{host_id}@{at}+{insert_id}", "sequence": left + insert + right,
                       "insert": (len(left), len(left) + len(insert))})

    klebsiella_gc, pylori_gc = gc(klebsiella["CP003200.1"]), gc(pylori["NC_017063.1"])
    near_k = sorted(coli_phages, key=lambda r: abs(gc(r[1]) - klebsiella_gc))
    near_p = sorted(coli_phages, key=lambda r: abs(gc(r[1]) - pylori_gc))
    add("phage_gc", "CP003200.1", klebsiella["CP003200.1"], 1_000_000, *near_k[0])
    add("phage_gc", "AP006725.1", klebsiella["AP006725.1"], 2_500_000, *near_k[1])
    add("phage_gc", "NC_017063.1", pylori["NC_017063.1"], 300_000, *near_p[0])
    add("phage_gc", "NC_011333.1", pylori["NC_011333.1"], 900_000, *near_p[1])
    near_m = sorted(mycophages, key=lambda r: abs(gc(r[1]) - klebsiella_gc))
    add("mycophage_gc", "CP003785.1", klebsiella["CP003785.1"], 1_800_000, *near_m[0])
    add("mycophage_gc", "CP000647.1", klebsiella["CP000647.1"], 3_200_000, *near_m[1])
    for host_id, at, plasmid, first in [("CP003200.1", 3_000_000, "CP003223.1", 10_000),
                                        ("CP000647.1", 600_000, "AP006726.1", 60_000),
                                        ("AP006725.1", 4_000_000, "CP000648.1", 20_000)]:
        add("plasmid", host_id, klebsiella[host_id], at, f"{plasmid}:{first}+45k", klebsiella[plasmid][first : first + 45_000])
    add("other_genome_gc", "CP003785.1", klebsiella["CP003785.1"], 4_200_000, "Umaydis_chr05:200k+45k",
        ustilago["Umaydis_chr05"][200_000:245_000])
    add("other_genome_gc", "NC_017371.1", pylori["NC_017371.1"], 500_000, "NC_001136:300k+45k",
        yeast["NC_001136"][300_000:345_000])
    by_gc = sorted(coli_phages, key=lambda r: gc(r[1]))
    add("phage_easy", "CP003785.1", klebsiella["CP003785.1"], 300_000, *by_gc[0])
    add("phage_easy", "NC_017378.1", pylori["NC_017378.1"], 1_000_000, *by_gc[-1])
    for host_id, genomes, at in [("CP003200.1", klebsiella, 200_000), ("AP006725.1", klebsiella, 1_200_000),
                                 ("NC_014560.1", pylori, 100_000)]:
        host = genomes[host_id]
        away = at + (1_600_000 if len(host) > 3_000_000 else 1_000_000)
        add("control", host_id, host, at, f"{host_id}:{away}+45k", host[away : away + 45_000])
    return checks


def save_checks(checks: list[dict], path) -> None:
    arrays = {f"sequence{i}": np.frombuffer(c["sequence"], dtype=np.uint8) for i, c in enumerate(checks)}
    meta = [{k: v for k, v in c.items() if k != "sequence"} for c in checks]
    np.savez(path, meta=np.array(__import__("json").dumps(meta)), **arrays)


def load_checks(path) -> list[dict]:
    import json

    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return [{**m, "insert": tuple(m["insert"]), "sequence": data[f"sequence{i}"].tobytes()} for i, m in enumerate(meta)]


def _canonical_tetranucleotides() -> np.ndarray:
    """Index 0..135 of each of the 256 tetranucleotides' canonical (strand-independent) word."""
    index, canonical = {}, np.zeros(256, dtype=np.int64)
    for word in range(256):
        bases = [(word >> shift) & 3 for shift in (6, 4, 2, 0)]
        reverse = sum((3 - b) << shift for b, shift in zip(reversed(bases), (6, 4, 2, 0)))
        canonical[word] = index.setdefault(min(word, reverse), len(index))
    return canonical


def tetranucleotide_chi_square(sequence: bytes, window: int) -> np.ndarray:
    """Composition baseline: sum over the 136 canonical tetranucleotides of
    (f_window - f_record)^2 / f_record, per window (as benchmarks/novel_regions.py)."""
    codes = np.frombuffer(sequence.upper().translate(bytes.maketrans(b"ACGT", b"\0\1\2\3")), dtype=np.uint8)
    valid = codes < 4
    words = codes[:-3].astype(np.int64) * 64 + codes[1:-2] * 16 + codes[2:-1] * 4 + codes[3:]
    ok = valid[:-3] & valid[1:-2] & valid[2:-1] & valid[3:]
    n_windows = -(-len(sequence) // window)
    counts = np.zeros((n_windows, 136))
    np.add.at(counts, (np.arange(len(words))[ok] // window, _canonical_tetranucleotides()[words[ok]]), 1)
    frequencies = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    record = counts.sum(0) / max(counts.sum(), 1)
    return ((frequencies - record) ** 2 / np.maximum(record, 1e-12)).sum(1)


def main(argv=None) -> None:
    """python -m titans_cli.tasks.novelty SHARED_DATA|CHECKS.npz [--save CHECKS.npz] [--model M]
    [--window W]: print the AUROC of every form, plain bits/grad and tetra chi-square per check,
    then the mean per kind. With --save, only write the checks (for a machine without the data)."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m titans_cli.tasks.novelty")
    parser.add_argument("source")
    parser.add_argument("--save")
    parser.add_argument("--model", default="dna")
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.source.endswith(".npz"):
        checks = load_checks(args.source)
    else:
        checks = insertion_checks(Path(args.source) / "dna" / "train")
    if args.save:
        save_checks(checks, args.save)
        return

    from titans_cli.device import choose_runtime
    from titans_cli.model import load_model

    runtime = choose_runtime(args.device, "auto")
    loaded = load_model(args.model, device=runtime.device)
    engine = StreamEngine(loaded.model, runtime, piece_tokens=8192)
    window, rows = args.window, []
    for check in checks:
        sequence, insert = check["sequence"], check["insert"]
        row = evaluate_forms(engine, np.asarray(loaded.tokenizer.encode(sequence)), insert, window=window)
        n_windows = -(-len(sequence) // window)
        starts = np.arange(n_windows) * window
        ends = np.minimum(starts + window, len(sequence))
        labels = np.clip(np.minimum(ends, insert[1]) - np.maximum(starts, insert[0]), 0, None) >= (ends - starts) / 2
        row["tetra_chi2"] = auroc(tetranucleotide_chi_square(sequence, window), labels)
        rows.append({"kind": check["kind"], "check": check["name"], **{k: round(v, 4) for k, v in row.items()}})
        print(json.dumps(rows[-1]), flush=True)
    scores = [k for k in rows[0] if k not in ("kind", "check")]
    kinds = [k for k in CHECK_KINDS if any(r["kind"] == k for r in rows)]
    print(f"window {window}; mean AUROC per kind; 'foreign' = every kind but control")
    print("score".ljust(12) + "".join(k[:14].rjust(16) for k in kinds) + "foreign".rjust(10))
    for score in scores:
        per = [np.mean([r[score] for r in rows if r["kind"] == k]) for k in kinds]
        foreign = np.mean([r[score] for r in rows if r["kind"] != "control"])
        print(score.ljust(12) + "".join(f"{v:16.3f}" for v in per) + f"{foreign:10.3f}")


if __name__ == "__main__":
    main()
