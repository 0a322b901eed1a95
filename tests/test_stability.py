"""Stability of a long stream, at CI size (benchmarks/stability.py runs the same checks on 1-20 Mbp
with the shipped model): finite per-base values, the same values for the same input twice, and
values that do not depend on how the input arrives, bitwise, in float32 on the default backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cli_fixtures import SAMPLE, tiny_config

from titans_cli.device import choose_runtime
from titans_cli.stream import RecordInput, StreamEngine

LENGTH = 12_000  # bases: a dozen engine steps, far past the attention window, hundreds of memory chunks


@pytest.fixture(scope="module")
def genome_tokens():
    from titans_cli.io.sequences import iter_records
    from titans_cli.model import DNATokenizer

    for record in iter_records(str(SAMPLE / "ecoli_k12_mg1655.fa.gz"), region=f"K-12-MG1655:1-{LENGTH}"):
        return DNATokenizer().encode(record.read()).astype(np.int64)  # read while the reader is open


@pytest.fixture(scope="module")
def tiny_float32_model():
    from titans_cli.model import TitansLM

    torch.manual_seed(0)
    return TitansLM(tiny_config("dna")).eval()


class PerBase:
    def __init__(self, record):
        self.parts = []

    def add(self, outputs):
        self.parts.append((outputs.start, outputs.bits, outputs.grad, outputs.momentum))
        return []

    def finish(self, end):
        starts = [start for start, *_ in self.parts]
        assert starts == sorted(starts)
        return [tuple(np.concatenate([part[i] for part in self.parts]) for i in (1, 2, 3))]


def per_base(model, tokens, piece_sizes):
    pieces, start = [], 0
    for size in piece_sizes:
        pieces.append(tokens[start : start + size])
        start += size
    assert start == len(tokens)
    engine = StreamEngine(model, choose_runtime("cpu"), piece_tokens=1024)
    record = RecordInput(0, "ecoli", pieces, len(tokens))
    (_, items), = list((record, list(items)) for record, items in engine.run([record], PerBase))
    return items[0]


def random_sizes(total, seed):
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(int(np.exp(rng.uniform(0, np.log(8192)))), total - sum(sizes)))
    return sizes


def test_long_stream_is_finite_deterministic_and_independent_of_input_pieces(tiny_float32_model, genome_tokens):
    whole = per_base(tiny_float32_model, genome_tokens, [LENGTH])
    again = per_base(tiny_float32_model, genome_tokens, [LENGTH])
    pieced = per_base(tiny_float32_model, genome_tokens, random_sizes(LENGTH, seed=1))
    for name, values in zip(("bits", "grad", "momentum"), whole):
        assert values.shape == (LENGTH,), f"{name}: one value per base"
        assert np.isfinite(values).all(), f"{name}: {np.count_nonzero(~np.isfinite(values))} non-finite values"
    for name, a, b in zip(("bits", "grad", "momentum"), whole, again):
        assert np.array_equal(a, b), f"{name}: the same input twice gave different values"
    for name, a, b in zip(("bits", "grad", "momentum"), whole, pieced):
        assert np.array_equal(a, b), f"{name}: input pieces of random sizes changed the values (max diff {np.abs(a - b).max():.2e})"
