"""Context mixing (model/context_mixing.py): causal, resumable piece by piece, copies forward and
inverted repeats, leaves what it does not score alone; and `titans surprise --context-mixing`
(its bad uses are in bad_input_catalogue.py)."""

from __future__ import annotations

import numpy as np
import pytest

from titans_cli.model.context_mixing import ContextMixer, mix_bits

A, C, G, T, N = 3, 4, 5, 6, 7


def uniform(n):
    """A model that knows nothing: 0.24 on each base (0.04 left for N and the specials)."""
    return np.full((n, 4), 0.24, dtype=np.float32)


def reverse_complement(tokens):
    return (3 + (3 - (tokens[::-1] - 3))).astype(np.int64)


@pytest.fixture(scope="module")
def genome():
    rng = np.random.default_rng(1)
    unique = rng.integers(A, T + 1, size=6000)
    block = unique[1000:4000]
    # unique sequence, a forward copy of 3 kb, more unique sequence, an inverted copy of the same 3 kb
    return np.concatenate([unique, block, rng.integers(A, T + 1, size=2000), reverse_complement(block)])


def test_repeats_are_copied_and_unique_sequence_costs_what_the_model_says(genome):
    bits = mix_bits(genome, uniform(len(genome)))
    own = -np.log2(0.24)
    assert abs(bits[:6000].mean() - own) < 0.05, "unique sequence: about the model's own bits"
    forward_copy = bits[6000 + 100 : 9000].mean()
    inverted_copy = bits[11000 + 100 :].mean()
    assert forward_copy < 0.3 and inverted_copy < 0.3, (forward_copy, inverted_copy)


def test_pieces_give_the_bits_of_one_pass_and_the_past_only_is_read(genome):
    probs = uniform(len(genome)) + np.random.default_rng(2).random((len(genome), 4)).astype(np.float32) * 0.01
    whole = mix_bits(genome, probs)
    mixer = ContextMixer(len(genome))
    cuts = [0, 1, 17, 4096, 4097, 9000, len(genome)]
    pieces = np.concatenate([mixer.bits(genome[a:b], probs[a:b]) for a, b in zip(cuts, cuts[1:])])
    np.testing.assert_array_equal(pieces, whole)
    changed = genome.copy()
    changed[7000:] = A
    np.testing.assert_array_equal(mix_bits(changed, probs)[:7000], whole[:7000])


def test_n_is_not_scored_and_keeps_the_fallback():
    tokens = np.array([A, C, G, N, N, T, A, 0, C], dtype=np.int64)
    fallback = np.arange(len(tokens), dtype=np.float32)
    bits = ContextMixer().bits(tokens, uniform(len(tokens)), fallback)
    scored = (tokens >= A) & (tokens <= T)
    np.testing.assert_array_equal(bits[~scored], fallback[~scored])
    assert np.isfinite(bits[scored]).all() and (bits[scored] > 0).all()
    assert np.isnan(mix_bits(tokens, uniform(len(tokens)))[~scored]).all()


def test_cli_context_mixing_lowers_the_bits_of_a_repeated_genome(tmp_path, genome):
    from titans_cli.cli.app import app
    from typer.testing import CliRunner

    fasta = tmp_path / "repeats.fa"
    fasta.write_text(">r\n" + "".join("ACGT"[t - A] for t in genome) + "\n")
    runner = CliRunner()
    plain = runner.invoke(app, ["surprise", str(fasta), "-o", str(tmp_path / "plain.bedgraph"), "-q"])
    mixed = runner.invoke(app, ["surprise", str(fasta), "--context-mixing", "-o", str(tmp_path / "mixed.bedgraph"), "-q"])
    assert plain.exit_code == 0 and mixed.exit_code == 0, plain.output + mixed.output
    read = lambda name: np.loadtxt(tmp_path / name, skiprows=1, usecols=3)  # noqa: E731
    plain_bits, mixed_bits = read("plain.bedgraph"), read("mixed.bedgraph")
    assert len(plain_bits) == len(mixed_bits) == -(-len(genome) // 50)
    copy = slice(6000 // 50 + 2, 9000 // 50)
    assert mixed_bits[copy].mean() < 0.5 < plain_bits[copy].mean()
    assert "context mixing" in (tmp_path / "mixed.bedgraph").read_text().splitlines()[0]


def test_python_api_context_mixing(genome):
    import titans_cli
    from titans_cli.errors import TitansInputError

    model = titans_cli.load_model("dna", device="cpu")
    text = "".join("ACGT"[t - A] for t in genome)
    text = text[:3000] + "N" * 70 + text[3070:]  # N keeps the model's own bits
    plain, = titans_cli.surprise(model, [("r", text)])
    mixed, = titans_cli.surprise(model, [("r", text)], context_mixing=True)
    assert len(mixed.values) == len(plain.values) and mixed.length == plain.length == len(genome)
    assert np.isfinite(mixed.values).all() and np.isfinite(mixed.bits_per_unit)
    assert mixed.bits_per_unit < plain.bits_per_unit - 0.3, (mixed.bits_per_unit, plain.bits_per_unit)
    with pytest.raises(TitansInputError, match="context_mixing"):
        titans_cli.surprise(model, [("r", text)], metric="grad", context_mixing=True)


def test_the_mixture_is_a_distribution_over_the_next_base(genome):
    """At any position the four possible next bases get probabilities that sum to the model's own
    A/C/G/T mass: nothing of the base being scored leaks into its prediction."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5), size=len(genome))[:, :4].astype(np.float32)  # (the fifth: N and specials)
    for t in (5, 2000, 6500, 11500):  # unique sequence, inside the forward copy, inside the inverted copy
        total = 0.0
        for base in (A, C, G, T):
            tokens = np.concatenate([genome[:t], [base]])
            total += 2.0 ** -float(mix_bits(tokens, probs[: t + 1])[-1])
        assert total == pytest.approx(float(probs[t].sum()), rel=1e-4), t


def test_lanes_mix_side_by_side_as_they_do_in_turn(genome):
    """The engine runs the lanes' mixers in threads (reducer_threads), beside the model's next step;
    items and order are those of one lane after another, for records sharing a wave and for records
    longer than lane_tokens, which stream alone."""
    import titans_cli
    from titans_cli.tasks.surprise import SequenceTrackReducer, with_context_mixing

    model = titans_cli.load_model("dna", device="cpu")
    text = "".join("ACGT"[t - A] for t in genome)
    data = [(f"r{i}", text[i * 700 : i * 700 + 2500 + 900 * i]) for i in range(5)]

    def run(threads):
        engine = model.engine(piece_tokens=512, lane_tokens=4000)
        make = with_context_mixing(engine, lambda record: SequenceTrackReducer(record, "bits", 50))
        engine.reducer_threads = threads
        return [(record.id, list(items)) for record, items in engine.run(titans_cli._records(model, data), make)]

    in_turn, side_by_side = run(1), run(4)
    assert [rid for rid, _ in side_by_side] == [name for name, _ in data]
    for (rid, a), (_, b) in zip(in_turn, side_by_side):
        assert [type(x) for x in a] == [type(x) for x in b], rid
        for x, y in zip(a, b):
            if hasattr(x, "values"):
                np.testing.assert_array_equal(x.values, y.values)
            else:
                assert x == y
