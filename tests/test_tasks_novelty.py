"""novelty's record-profile forms (profile, combined): one value per token, streaming, deterministic,
constant memory, and a foreign insert scores above its host."""

from __future__ import annotations

import tempfile
import tracemalloc

import numpy as np
import pytest
import torch
from test_cli_fixtures import tiny_config

from titans_cli.device import Runtime
from titans_cli.stream import RecordInput, StreamEngine
from titans_cli.tasks import novelty
from titans_cli.tasks.novelty import BIN_TOKENS, auroc, novelty_components, novelty_records

CPU = Runtime(torch.device("cpu"), "torch")


@pytest.fixture(scope="module")
def tiny_dna_model():
    from titans_cli.model import TitansLM

    torch.manual_seed(0)
    return TitansLM(tiny_config("dna")).eval().double()


def markov_bases(n: int, gc: float, seed: int) -> bytes:
    weights = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    choice = np.random.default_rng(seed).choice(4, size=n, p=weights)
    return np.frombuffer(b"ACGT", dtype=np.uint8)[choice].tobytes()


def scores_of(engine, tokens, pieces, forms=("profile", "combined", "adapted")):
    record = RecordInput(0, "r", [tokens[a:b] for a, b in zip(pieces[:-1], pieces[1:])], None)
    collected = {form: [] for form in forms}
    positions = []
    for _, _, scores in novelty_components(engine, [record], forms):
        for start, values in scores:
            lengths = {len(values[form]) for form in forms}
            assert len(lengths) == 1, "every form covers the same tokens of a piece"
            positions.append(start + np.arange(lengths.pop()))
            for form in forms:
                collected[form].append(values[form])
    return np.concatenate(positions), {form: np.concatenate(v) for form, v in collected.items()}


@pytest.mark.parametrize("form", ["profile", "combined"])
def test_bin_forms_cover_every_token_and_clean_up(tiny_dna_model, form, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(novelty, "BIN_TOKENS", 256)
    engine = StreamEngine(tiny_dna_model, CPU, piece_tokens=256)
    n = 4 * 256 + 90  # a short last bin too
    tokens = np.random.default_rng(3).integers(3, 8, size=n)
    for _, _, scores in novelty_records(engine, [RecordInput(0, "r", [tokens[:500], tokens[500:]], None)], form):
        pairs = list(scores)
    positions = np.concatenate([start + np.arange(len(values)) for start, values in pairs])
    values = np.concatenate([values for _, values in pairs])
    assert (positions == np.arange(n)).all(), "one score per token, in order"
    assert np.isfinite(values).all()
    bins = np.arange(n) // 256
    for b in np.unique(bins):
        assert np.unique(values[bins == b]).size == 1, f"bin {b}: one score for all its tokens"
    assert tiny_dna_model.frozen_memory is False and engine.want_hidden is False, "the scoring pass restores the engine"
    assert list(tmp_path.iterdir()) == [], "the token and bin spools are removed"


def test_bin_forms_are_deterministic_and_independent_of_input_pieces(tiny_dna_model, monkeypatch):
    monkeypatch.setattr(novelty, "BIN_TOKENS", 256)
    tokens = np.random.default_rng(5).integers(3, 8, size=5 * 256 + 100)
    n = len(tokens)
    _, first = scores_of(StreamEngine(tiny_dna_model, CPU, piece_tokens=256), tokens, [0, n])
    _, again = scores_of(StreamEngine(tiny_dna_model, CPU, piece_tokens=256), tokens, [0, n])
    _, pieced = scores_of(StreamEngine(tiny_dna_model, CPU, piece_tokens=256), tokens, [0, 77, 700, 1000, n])
    for form in first:
        assert np.array_equal(first[form], again[form]), f"{form}: the same input gives the same scores"
        assert np.array_equal(pieced[form], first[form]), f"{form}: scores do not depend on how the input arrives"


def test_bin_profile_memory_does_not_grow_with_the_record(tmp_path, monkeypatch):
    """Bin means go to a disk spool as each bin completes: the traced peak for 10x more bins stays
    flat (one float per bin is all that is kept in RAM)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(novelty, "PROFILE_READ_ROWS", 16)  # so that 200 bins span several reads
    rng = np.random.default_rng(7)
    piece = rng.normal(size=(BIN_TOKENS, 64)).astype(np.float32)
    bits = rng.normal(size=BIN_TOKENS).astype(np.float32)

    def peak(n_bins: int) -> int:
        profile = novelty._BinProfile()
        tracemalloc.start()
        for b in range(n_bins):
            profile.add(b * BIN_TOKENS, bits, piece + b % 3)
        scores = profile.scores()
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        profile.close()
        assert len(scores["profile"]) == n_bins and np.isfinite(scores["combined"]).all()
        return peak_bytes

    peak(5)  # first calls of numpy's linear algebra allocate once
    short, long = peak(20), peak(200)
    assert long < short + 30_000, f"peak traced memory grew from {short} to {long} bytes"


def test_profile_finds_an_insert_of_other_composition_that_bits_miss():
    """A GC 0.4 host with an 8-kb GC 0.6 insert, both order-0 random: every base costs ~2 bits in both,
    so bits cannot see the insert; the record's hidden-state profile does (shipped model)."""
    from titans_cli.model import load_model

    loaded = load_model("dna", device=torch.device("cpu"))
    host, insert = markov_bases(24_000, 0.4, 1), markov_bases(8_000, 0.6, 2)
    tokens = np.asarray(loaded.tokenizer.encode(host[:12_000] + insert + host[12_000:]))
    positions, values = scores_of(StreamEngine(loaded.model, CPU, piece_tokens=4096), tokens, [0, len(tokens)])
    inside = (positions >= 12_000) & (positions < 20_000)
    every = slice(None, None, 250)
    assert auroc(values["profile"][every], inside[every]) > 0.95
    assert auroc(values["combined"][every], inside[every]) > 0.95
    assert abs(auroc(values["adapted"][every], inside[every]) - 0.5) < 0.25, "control: bits are blind here"


def test_unknown_form_is_an_input_error(tiny_dna_model):
    from titans_cli.errors import TitansInputError

    engine = StreamEngine(tiny_dna_model, CPU)
    with pytest.raises(TitansInputError, match="unknown novelty form"):
        list(novelty_records(engine, [], "nonsense"))


def test_default_form_is_a_form():
    assert novelty.DEFAULT_FORM in novelty.FORMS
