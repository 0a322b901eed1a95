"""NeuralMemory: streaming in pieces equals one pass, lanes reset, state handling, training."""

import random

import pytest
import torch

from titans_cli.memory import PRESETS, MemoryConfig, NeuralMemory

D_MODEL = 12
TINY = dict(num_heads=2, head_dim=8, chunk_size=8, max_grad_norm=1.0)


# Tiny ops: one intra-op thread (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_layer(config, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return NeuralMemory(D_MODEL, config).to(dtype)


def stream(layer, x, pieces, backend, state=None):
    outputs, grads, momenta = [], [], []
    start = 0
    for size in pieces:
        y, state, signals = layer(x[:, start : start + size], state, backend=backend)
        outputs.append(y), grads.append(signals["grad"]), momenta.append(signals["momentum"])
        start += size
    assert start == x.shape[1]
    return torch.cat(outputs, 1), torch.cat(grads, 1), torch.cat(momenta, 1), state


def random_pieces(total, seed):
    rng = random.Random(seed)
    pieces = []
    while total > 0:
        size = min(total, rng.choice([1, 1, 2, 3, 7, 8, 9, 13, 25]))
        pieces.append(size)
        total -= size
    return pieces


def assert_same_stream(a, b, tolerance, what):
    for name, x, y in zip(("output", "grad signal", "momentum signal"), a[:3], b[:3]):
        error = ((x - y).norm() / y.norm()).item()
        assert error < tolerance, f"{what}: {name} differs by relative error {error:.2e}"
    for layer_index, (x, y) in enumerate(zip(a[3].current_weights, b[3].current_weights)):
        error = ((x - y).norm() / y.norm()).item()
        assert error < tolerance, f"{what}: memory weights[{layer_index}] at the end differ by {error:.2e}"


@pytest.mark.parametrize("name", list(PRESETS))
def test_streaming_in_random_pieces_equals_one_pass(name):
    config = PRESETS[name].replace(**TINY)
    layer = make_layer(config)
    x = torch.randn(2, 61, D_MODEL, dtype=torch.float64)
    whole = stream(layer, x, [61], "torch")
    for seed in range(3):
        pieces = random_pieces(61, seed)
        assert_same_stream(stream(layer, x, pieces, "torch"), whole, 1e-12, f"preset {name}, pieces {pieces}")
    assert whole[3].position == 61 and whole[3].pending_tokens == 61 % config.chunk_size


def test_layer_backends_agree_with_the_reference():
    config = PRESETS["titans"].replace(**TINY)
    layer = make_layer(config)
    x = torch.randn(2, 21, D_MODEL, dtype=torch.float64)
    assert_same_stream(stream(layer, x, [21], "torch"), stream(layer, x, [5, 16], "reference"), 1e-10, "torch vs reference layer")


def test_reset_lane_at_a_chunk_boundary_is_a_fresh_stream():
    config = PRESETS["titans"].replace(**TINY)
    layer = make_layer(config)
    old = torch.randn(2, 16, D_MODEL, dtype=torch.float64)  # two whole chunks of the previous records
    new = torch.randn(2, 19, D_MODEL, dtype=torch.float64)
    _, state, _ = layer(old)
    state = state.reset_lanes(torch.tensor([True, False]))
    y, _, signals = layer(new, state)
    fresh_y, _, fresh_signals = layer(new[:1])
    assert torch.allclose(y[:1], fresh_y, atol=1e-12), "a reset lane must behave like a fresh stream"
    assert torch.allclose(signals["grad"][:1], fresh_signals["grad"], atol=1e-12), "reset lane signals differ"
    continued_y, _, _ = layer(torch.cat([old, new], 1)[1:])
    assert torch.allclose(y[1:], continued_y[:, 16:], atol=1e-12), "a lane that was not reset must be unaffected"


def test_reset_lane_mid_chunk_ignores_the_old_record():
    config = PRESETS["titans"].replace(**TINY)
    layer = make_layer(config)
    new = torch.randn(1, 13, D_MODEL, dtype=torch.float64)
    outputs = []
    for seed in (1, 2):  # two different previous records, 5 tokens into a chunk
        old = torch.randn(1, 5, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        _, state, _ = layer(old)
        y, state, _ = layer(new, state.reset_lanes(torch.tensor([True])))
        outputs.append(y)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-12), "after a reset, the previous record must not matter"


def test_state_detach_to_and_fingerprint():
    config = PRESETS["titans"].replace(**TINY)
    layer = make_layer(config, dtype=torch.float32)
    x = torch.randn(3, 21, D_MODEL)
    y, state, signals = layer(x)
    assert y.shape == x.shape and signals["grad"].shape == (3, 21) and signals["momentum"].shape == (3, 21)
    assert state.weights[0].requires_grad, "the state should carry the graph until detached (TBPTT)"
    detached = state.detach().to("cpu")
    assert not any(t.requires_grad for t in (*detached.weights, *detached.momenta, detached.pending_k, detached.conv_tail))
    # current_weights include the 5 pending tokens; weights are the chunk boundary (16 tokens).
    assert not torch.equal(detached.current_weights[0], detached.weights[0]), "fingerprint must include the partial chunk"
    _, boundary_only, _ = layer(x[:, :16])
    assert torch.allclose(detached.weights[0], boundary_only.current_weights[0], atol=1e-6)


def test_fresh_state_is_kept_without_autograd_and_follows_the_initial_weights():
    """Without autograd initial_state hands out the state it made last time (nothing in a state is
    changed in place); an in-place change of the initial weights, another batch size or autograd
    gets a new one, and the kept state streams like a new one."""
    config = PRESETS["titans"].replace(**TINY)
    layer = make_layer(config, dtype=torch.float32)
    x = torch.randn(2, 12, D_MODEL)
    with torch.no_grad():
        first = layer.initial_state(2)
        assert layer.initial_state(2) is first
        assert layer.initial_state(3) is not first
        y_kept = layer(x, layer.initial_state(2))[0]
        layer.initial_weights[0].mul_(1.1)
        changed = layer.initial_state(2)
    assert changed is not first and torch.equal(changed.weights[0][1], layer.initial_weights[0].detach())
    assert layer.initial_state(2) is not changed and layer.initial_state(2).weights[0].requires_grad
    with torch.no_grad():
        layer.initial_weights[0].div_(1.1)
        assert torch.allclose(layer(x)[0], y_kept, atol=1e-6)
    with pytest.raises(AttributeError):
        first.position = 5  # states are frozen


def test_gradients_reach_every_parameter():
    config = PRESETS["yaad"].replace(**TINY)
    layer = make_layer(config, dtype=torch.float32)
    y, _, _ = layer(torch.randn(2, 20, D_MODEL))
    y.square().mean().backward()
    missing = [name for name, p in layer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"no finite, non-zero gradient for: {missing}"


def test_bad_backend_and_batch_mismatch_are_clear_errors():
    config = MemoryConfig(**TINY)
    layer = make_layer(config, dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown memory backend 'jax'"):
        layer(torch.randn(1, 4, D_MODEL), backend="jax")
    _, state, _ = layer(torch.randn(2, 4, D_MODEL))
    with pytest.raises(ValueError, match="state holds 2 batch rows, input has 1"):
        layer(torch.randn(1, 4, D_MODEL), state)


def test_no_convolution_and_depth_one():
    config = MemoryConfig(conv_size=1, depth=1, **TINY)
    layer = make_layer(config)
    x = torch.randn(1, 19, D_MODEL, dtype=torch.float64)
    assert_same_stream(stream(layer, x, [3, 3, 13], "torch"), stream(layer, x, [19], "torch"), 1e-12, "conv_size 1, depth 1")
