"""The streaming engine and the task building blocks, in process, with a tiny random model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_cli_fixtures import tiny_config

from titans_cli.device import Runtime
from titans_cli.stream import RecordInput, StreamEngine


@pytest.fixture(scope="module")
def tiny_dna_model():
    from titans_cli.model import TitansLM

    torch.manual_seed(0)
    # float64: the engine's piecing and batching are exact, and only in float64 is that visible
    # without the float32 noise a random network amplifies over hundreds of tokens.
    return TitansLM(tiny_config("dna")).eval().double()


class Collect:
    def __init__(self, record):
        self.parts = []

    def add(self, outputs):
        self.parts.append(outputs)
        return []

    def finish(self, end):
        cat = lambda name: None if getattr(self.parts[0], name) is None else np.concatenate([getattr(p, name) for p in self.parts])  # noqa: E731
        return [{"tokens": cat("tokens"), "bits": cat("bits"), "grad": cat("grad"), "momentum": cat("momentum"), "hidden": cat("hidden"),
                 "probs": cat("probs"), "starts": [p.start for p in self.parts], "end": end}]


def run(engine, sequences, split=2):
    records = [RecordInput(i, f"r{i}", np.array_split(s, split), None) for i, s in enumerate(sequences)]
    return [next(iter(items)) for _, items in engine.run(records, Collect)]


def reference_outputs(model, tokens):
    """One whole-sequence step: bits of token j from the logits at input j ([BOS] + tokens)."""
    inputs = torch.tensor(np.concatenate([[model.config.bos_id], tokens]))[None]
    with torch.inference_mode():
        output, _ = model.step(inputs, None, backend="torch")
    log_probs = torch.log_softmax(output.logits[0, :-1].double(), -1)
    bits = (-log_probs.gather(-1, inputs[0, 1:, None])[:, 0] / math.log(2)).numpy()
    return bits, output.grad[0, 1:].numpy(), output.hidden[0, 1:].numpy(), log_probs.exp().numpy()


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(0)
    return [rng.integers(3, 8, size=n) for n in (300, 700, 77, 129, 1)]


@pytest.mark.parametrize("lanes,piece,lane_tokens", [(4, 256, 2000), (3, 96, 250)])
def test_engine_outputs_equal_one_whole_pass(tiny_dna_model, sequences, lanes, piece, lane_tokens):
    """However records are batched, pieced or streamed alone, every token gets the bits, grad,
    hidden state and predicted probabilities (of the ids asked for) of one whole-sequence pass, in
    order, with nothing missing."""
    engine = StreamEngine(tiny_dna_model, Runtime(torch.device("cpu"), "torch"), piece_tokens=piece, lanes=lanes,
                          lane_tokens=lane_tokens, want_hidden=True, want_probs=(3, 4, 5, 6))
    results = run(engine, sequences)
    assert len(results) == len(sequences)
    for sequence, result in zip(sequences, results):
        assert (result["tokens"] == sequence).all(), "tokens come back in order"
        assert result["end"].length == len(sequence)
        bits, grad, hidden, probs = reference_outputs(tiny_dna_model, sequence)
        np.testing.assert_allclose(result["bits"], bits, atol=1e-5)
        np.testing.assert_allclose(result["probs"], probs[:, 3:7], atol=1e-6)
        np.testing.assert_allclose(result["grad"], grad, atol=1e-5)
        np.testing.assert_allclose(result["hidden"], hidden, atol=1e-5)
    assert engine.throughput.tokens == sum(len(s) for s in sequences)


def test_engine_computes_the_momentum_signal_only_for_reducers_that_read_it(sequences):
    """A wave whose reducers all say uses_momentum = False gets NaN momentum and the same bits and
    grad as one that reads it (numba backend, float32: the skipped work is the Gram matrices)."""
    from titans_cli.model import TitansLM

    torch.manual_seed(0)
    model = TitansLM(tiny_config("dna")).eval()

    class BitsOnly(Collect):
        uses_momentum = False

    engine = StreamEngine(model, Runtime(torch.device("cpu"), "numba"), piece_tokens=128)
    records = lambda: [RecordInput(i, f"r{i}", [s], None) for i, s in enumerate(sequences[:3])]  # noqa: E731
    every = [next(iter(items)) for _, items in engine.run(records(), Collect)]
    bits_only = [next(iter(items)) for _, items in engine.run(records(), BitsOnly)]
    for full, skipped in zip(every, bits_only):
        assert np.isfinite(full["momentum"]).all() and np.isnan(skipped["momentum"]).all(), (
            "the momentum signal should be computed exactly when a reducer reads it")
        assert np.array_equal(full["bits"], skipped["bits"]) and np.array_equal(full["grad"], skipped["grad"]), (
            "skipping the momentum signal changed bits or grad")


def test_memory_fingerprint_depends_only_on_the_record(tiny_dna_model, sequences):
    def fingerprints(lanes):
        engine = StreamEngine(tiny_dna_model, Runtime(torch.device("cpu"), "torch"), piece_tokens=128, lanes=lanes,
                              want_memory=True)
        return [r["end"].memory_fingerprint for r in run(engine, sequences)]

    batched, alone = fingerprints(4), fingerprints(1)
    for a, b in zip(batched, alone):
        assert a.shape == batched[0].shape, "fixed size whatever the length"
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(batched[0] - batched[1]).max() > 1e-2


def test_window_means_match_numpy():
    from titans_cli.tasks.surprise import WindowMeans

    values = np.random.default_rng(1).random(1037)
    means = WindowMeans(50)
    got_index, got_mean = [], []
    for start, piece in zip([0, 10, 333, 900], np.split(values, [10, 333, 900])):
        index, mean = means.add(start, piece)
        got_index += list(index)
        got_mean += list(mean)
    index, mean = means.flush()
    got_index += list(index)
    got_mean += list(mean)
    expected = [values[i : i + 50].mean() for i in range(0, 1037, 50)]
    assert got_index == list(range(len(expected)))
    np.testing.assert_allclose(got_mean, expected)


def test_robust_z_and_region_calling():
    from titans_cli.tasks.regions import call_regions, robust_z

    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z[2] == 0 and z[-1] > 30, "median 3, MAD 1 -> scale 1.4826; the outlier does not inflate it"
    np.testing.assert_allclose(z[:4], (np.array([1, 2, 3, 4]) - 3) / 1.4826)
    rng = np.random.default_rng(2)
    values = rng.normal(0, 1, 400)
    values[100:130] += 8  # an island of 30 windows x 50 bp = 1,500 bp
    values[300:302] += 8  # a blip of 100 bp: shorter than min_length
    starts = np.arange(400) * 50
    regions, _ = call_regions("chr", starts, starts + 50, values, threshold=3, smooth_bases=250, min_length=500, merge_gap=100)
    assert len(regions) == 1
    region = regions[0]
    assert abs(region.start - 5000) <= 250 and abs(region.end - 6500) <= 250
    assert 0 < region.score <= 1000 and region.name == "novel_1"


def test_auroc_matches_rank_definition():
    from titans_cli.tasks.novelty import auroc

    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.2])
    labels = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[labels] for n in scores[~labels]]
    assert auroc(scores, labels) == pytest.approx(np.mean(pairs))


@pytest.mark.parametrize("form", ["adapted", "contrast", "memory"])
def test_novelty_forms_cover_every_token(tiny_dna_model, form, tmp_path, monkeypatch):
    import tempfile

    from titans_cli.tasks.novelty import novelty_records

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    engine = StreamEngine(tiny_dna_model, Runtime(torch.device("cpu"), "torch"), piece_tokens=128)
    tokens = np.random.default_rng(3).integers(3, 8, size=300)
    records = [RecordInput(0, "r", [tokens[:150], tokens[150:]], None)]
    for record, first_pass, scores in novelty_records(engine, records, form):
        pairs = list(scores)
        positions = np.concatenate([start + np.arange(len(values)) for start, values in pairs])
        values = np.concatenate([values for _, values in pairs])
        assert (positions == np.arange(300)).all(), "one score per token, in order"
        assert np.isfinite(values).all()
        if form == "contrast":
            assert np.abs(values).max() > 0, "adapted and initial memories read differently"
    assert tiny_dna_model.frozen_memory is False, "the scoring pass restores the model"
    assert list(tmp_path.iterdir()) == [], "the token spool is removed"


def test_assign_shards_balances_by_length():
    from titans_cli.cli.common import assign_shards

    lengths = [100, 5, 60, 40, 1, 1]
    owners = assign_shards(lengths, 2)
    loads = [sum(l for l, o in zip(lengths, owners) if o == r) for r in range(2)]
    assert sorted(loads) == [102, 105], "longest first, each to the least-loaded rank"
    assert owners == assign_shards(lengths, 2), "deterministic"


def test_runtime_notice_names_the_slow_gpu_path():
    """--backend auto on a GPU without triton says so in one line; every other choice is silent."""
    from titans_cli.cli.common import runtime_notice

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    notice = runtime_notice(Runtime(cuda, "torch"), "auto")
    assert notice and "triton" in notice and "\n" not in notice
    assert runtime_notice(Runtime(cuda, "torch"), "torch") is None, "asked for explicitly: no warning"
    assert runtime_notice(Runtime(cuda, "triton"), "auto") is None
    assert runtime_notice(Runtime(cpu, "numba"), "auto") is None


def test_softmax_head_learns_and_round_trips(tmp_path):
    from titans_cli.tasks.heads import load_head, save_head, train_head

    rng = np.random.default_rng(4)
    centers = rng.normal(0, 3, (3, 8))
    labels = rng.integers(0, 3, 300)
    features = centers[labels] + rng.normal(0, 1, (300, 8))
    names = [["a", "b", "c"][i] for i in labels]
    head = train_head(features[:240], names[:240], {"model": "dna", "per": "record", "pool": "mean"})
    accuracy = np.mean(np.array(head.predict(features[240:])) == np.array(names[240:]))
    assert accuracy > 0.9
    probabilities = head.probabilities(features[240:])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-9)
    save_head(head, tmp_path / "h", "# card\n")
    loaded = load_head(tmp_path / "h")
    assert loaded.classes == ["a", "b", "c"] and loaded.settings["pool"] == "mean"
    np.testing.assert_allclose(loaded.probabilities(features[240:]), probabilities, atol=1e-6)


def test_mmr_summary_avoids_duplicates():
    """Two identical sentences: the summary keeps one of them and a different sentence."""
    from titans_cli.tasks.summarize import SentenceFeatures, pick_sentences

    class Sentence:
        def __init__(self, start, text):
            self.start, self.end, self.text = start, start + len(text), text

    features = SentenceFeatures.__new__(SentenceFeatures)
    features.record = RecordInput(0, "doc", [], None)
    features.sentences = [Sentence(0, "alpha"), Sentence(10, "alpha"), Sentence(20, "beta"), Sentence(30, "gamma")]
    hidden = [np.array([1.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]), np.array([0.6, 0.8, 0.0]), np.array([0.0, 0.0, 1.0])]
    features.hidden = [h * 10 for h in hidden]
    features.tokens = [10, 10, 10, 10]
    features.grad = [5.0, 5.0, 4.0, 1.0]
    summary = pick_sentences(features, n=2, redundancy=0.5, min_tokens=1)
    offsets = [s.offset for s in summary.sentences]
    assert len(offsets) == 2 and not (0 in offsets and 10 in offsets)
    assert offsets == sorted(offsets)
