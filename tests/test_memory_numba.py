"""The Numba CPU kernels against torch_chunked (float32), streaming, and 1M tokens of real DNA."""

import gzip
import time

import numpy as np
import pytest
import torch

from titans_cli.memory import PRESETS, MemoryConfig, NeuralMemory
from titans_cli.memory import numba_cpu, torch_chunked
from titans_cli.memory.testing import random_memory_inputs, relative_errors

from conftest import require_shared_data

TINY = dict(num_heads=2, head_dim=8, expansion=2)


# Tiny ops: one intra-op thread (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("name", list(PRESETS))
def test_numba_equals_torch_chunked_in_float32(name, depth, chunk_size):
    config = PRESETS[name].replace(depth=depth, chunk_size=chunk_size, max_grad_norm=3.0, **TINY)
    inputs = random_memory_inputs(config, length=80, dtype=torch.float32, seed=depth + chunk_size)
    errors = relative_errors(numba_cpu.memory_update(*inputs, config), torch_chunked.memory_update(*inputs, config))
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, (
        f"preset {name}, depth {depth}, chunk {chunk_size}: numba {worst} off by {errors[worst]:.2e}; "
        + ", ".join(f"{k}={e:.1e}" for k, e in errors.items())
    )


def test_numba_at_the_reference_layer_size():
    """Head dim 64, hidden 128, chunk 64: the BLAS paths at the size the CLI runs."""
    config = MemoryConfig(num_heads=2, max_grad_norm=2.0)
    inputs = random_memory_inputs(config, batch=1, length=200, dtype=torch.float32, weight_scale=1.0)
    errors = relative_errors(numba_cpu.memory_update(*inputs, config), torch_chunked.memory_update(*inputs, config))
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, f"numba {worst} off by {errors[worst]:.2e} at head_dim 64"


@pytest.mark.parametrize("name", list(PRESETS))
def test_numba_layer_streaming_equals_torch_one_pass(name):
    """The layer's fused inference path (conv, SiLU, norms and gates in numba_cpu.prepare_inputs,
    reads written as (B, T, H, d)) fed in pieces that leave partial chunks pending, against one
    torch pass; every preset, so the Huber δ gate and the lq / kl retentions are covered."""
    config = PRESETS[name].replace(chunk_size=8, **TINY)
    torch.manual_seed(0)
    layer = NeuralMemory(12, config)
    x = torch.randn(2, 45, 12)
    with torch.no_grad():
        y_torch, state_torch, signals_torch = layer(x, backend="torch")
        outputs, grads, momenta, state = [], [], [], None
        for start, size in ((0, 1), (1, 7), (8, 3), (11, 20), (31, 14)):
            y, state, signals = layer(x[:, start : start + size], state, backend="numba")
            outputs.append(y), grads.append(signals["grad"]), momenta.append(signals["momentum"])
    for what, ours, expected in (
        ("output", torch.cat(outputs, 1), y_torch),
        ("grad signal", torch.cat(grads, 1), signals_torch["grad"]),
        ("momentum signal", torch.cat(momenta, 1), signals_torch["momentum"]),
        ("final memory", state.current_weights[0], state_torch.current_weights[0]),
        ("boundary memory", state.weights[-1], state_torch.weights[-1]),
        ("boundary momentum", state.momenta[0], state_torch.momenta[0]),
        ("pending keys", state.pending_k, state_torch.pending_k),
        ("pending gates", state.pending_lr, state_torch.pending_lr),
        ("conv tail", state.conv_tail, state_torch.conv_tail),
    ):
        assert ours.shape == expected.shape, f"preset {name}: {what} shape {tuple(ours.shape)} != {tuple(expected.shape)}"
        error = ((ours - expected).norm() / expected.norm().clamp_min(1e-12)).item()
        assert error < 1e-4, f"preset {name}: streamed numba {what} differs from torch one pass by {error:.2e}"
    assert state.position == state_torch.position == 45


def test_numba_layer_without_the_momentum_signal_changes_nothing_else():
    """momentum=False skips ||S_t|| (NaN) and leaves the reads, the grad signal and the state bitwise equal."""
    config = PRESETS["titans"].replace(chunk_size=8, **TINY)
    torch.manual_seed(1)
    layer = NeuralMemory(12, config)
    x = torch.randn(2, 37, 12)
    with torch.no_grad():
        y, state, signals = layer(x, backend="numba")
        y_skip, state_skip, signals_skip = layer(x, backend="numba", momentum=False)
    assert torch.isnan(signals_skip["momentum"]).all(), "a skipped momentum signal should be NaN, not a number"
    assert torch.isfinite(signals["momentum"]).all()
    assert torch.equal(y, y_skip), "skipping the momentum signal changed the memory's reads"
    assert torch.equal(signals["grad"], signals_skip["grad"]), "skipping the momentum signal changed the grad signal"
    for a, b in zip(state.current_weights + state.momenta, state_skip.current_weights + state_skip.momenta):
        assert torch.equal(a, b), "skipping the momentum signal changed the memory state"


def test_prepare_inputs_equals_the_torch_input_path():
    """numba_cpu.prepare_inputs (conv over [tail; projections], SiLU, per-head L2 norm, gates)
    against the same steps in torch, with a non-zero conv tail and the Huber gate."""
    config = PRESETS["yaad"].replace(chunk_size=8, **TINY)
    torch.manual_seed(2)
    layer = NeuralMemory(12, config)
    x = torch.randn(3, 11, 12)
    tail = torch.randn(3, config.conv_size - 1, 3 * config.inner_dim)
    with torch.no_grad():
        projected = layer.to_qkv(x)
        convolved = torch.nn.functional.conv1d(
            torch.cat([tail, projected], 1).transpose(1, 2), layer.conv.weight, layer.conv.bias, groups=layer.conv.groups
        ).transpose(1, 2)
        q, k, v = torch.nn.functional.silu(convolved).chunk(3, dim=-1)
        heads = lambda t: t.view(3, 11, config.num_heads, -1).transpose(1, 2)  # noqa: E731
        expected = (torch.nn.functional.normalize(heads(q), dim=-1), torch.nn.functional.normalize(heads(k), dim=-1), heads(v))
        gates = layer.to_gates(x).view(3, 11, -1, config.num_heads).permute(2, 0, 3, 1)
        expected_gates = (torch.sigmoid(gates[0]) * config.max_lr, torch.sigmoid(gates[1]), torch.sigmoid(gates[2]),
                          torch.nn.functional.softplus(gates[3]))
        got = numba_cpu.prepare_inputs(
            projected.numpy(), tail.numpy(), layer.conv.weight[:, 0, :].t().contiguous().numpy(), layer.conv.bias.numpy(),
            layer.to_gates(x).numpy(), config.num_heads, config.max_lr,
        )
    for what, ours, want in (("q", got[0], expected[0]), ("k", got[1], expected[1]), ("v", got[2], expected[2])):
        error = np.abs(ours - want.numpy()).max()
        assert error < 1e-5, f"prepare_inputs {what} differs from the torch input path by {error:.2e}"
    for index, want in enumerate(expected_gates):
        error = np.abs(got[3][index] - want.numpy()).max()
        assert error < 1e-6 * max(1.0, float(want.abs().max())), f"prepare_inputs gate {index} differs by {error:.2e}"


def read_fasta_sequence(path, limit):
    sequence = bytearray()
    with gzip.open(path, "rb") as handle:
        for line in handle:
            if line.startswith(b">"):
                continue
            sequence += line.strip()
            if len(sequence) >= limit:
                break
    return bytes(sequence[:limit])


def test_a_million_bases_of_dna_stay_finite():
    path = require_shared_data("dna", "eval", "escherichia_coli_k12_mg1655.fa.gz")
    length = 1_000_000
    sequence = read_fasta_sequence(path, length)
    assert len(sequence) == length, f"{path} has fewer than {length} bases"
    codes = np.frombuffer(sequence.upper(), dtype=np.uint8)
    tokens = torch.from_numpy(np.select([codes == c for c in b"ACGT"], [0, 1, 2, 3], default=4))

    torch.manual_seed(0)
    d_model = 64
    embedding = torch.nn.Embedding(5, d_model)
    layer = NeuralMemory(d_model, MemoryConfig())
    state, piece = None, 65_536
    largest_output = largest_grad = 0.0
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, length, piece):
            x = embedding(tokens[start : start + piece]).unsqueeze(0)
            y, state, signals = layer(x, state, backend="numba")
            for what, values in (("output", y), ("grad signal", signals["grad"]), ("momentum signal", signals["momentum"])):
                assert torch.isfinite(values).all(), f"{what} became non-finite in bases {start}-{start + piece}"
            largest_output = max(largest_output, y.abs().max().item())
            largest_grad = max(largest_grad, signals["grad"].max().item())
    elapsed = time.perf_counter() - started
    for index, weight in enumerate(state.current_weights):
        assert torch.isfinite(weight).all(), f"memory weights[{index}] non-finite after {length} bases"
        assert weight.abs().max() < 100, f"memory weights[{index}] grew to {weight.abs().max():.1f} (unbounded?)"
    assert largest_grad <= MemoryConfig().max_grad_norm + 1e-4, f"clipped surprise exceeded the bound: {largest_grad}"
    assert state.position == length
    print(f"1M bases in {elapsed:.1f} s ({length / elapsed:,.0f} bases/s), max |y| {largest_output:.3f}")
