"""The fast memory implementations against the definition (reference) and the paper's recurrence."""

import math

import numpy as np
import pytest
import torch

from titans_cli.memory import PRESETS, MemoryConfig
from titans_cli.memory import reference, torch_chunked
from titans_cli.memory.mlp import kl_retention, lq_retention
from titans_cli.memory.testing import random_memory_inputs, relative_errors

TINY = dict(num_heads=2, head_dim=8, expansion=2)


# Tiny ops: one intra-op thread (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_close(result, expected, tolerance, what):
    errors = relative_errors(result, expected)
    worst = max(errors, key=errors.get)
    assert errors[worst] < tolerance, (
        f"{what}: {worst} differs by relative error {errors[worst]:.2e} (tolerance {tolerance:.0e}); all: "
        + ", ".join(f"{name}={error:.1e}" for name, error in errors.items())
    )
    for name in ("output", "grad_norm", "momentum_norm"):
        assert torch.isfinite(getattr(result, name)).all(), f"{what}: {name} has non-finite values"


@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("name", list(PRESETS))
def test_torch_chunked_equals_reference(name, depth, chunk_size):
    # 80 tokens: several chunks of 16, one full chunk of 64 plus a partial one; max_grad_norm 3
    # clips part of the tokens, so both sides of the clip are exercised.
    config = PRESETS[name].replace(depth=depth, chunk_size=chunk_size, max_grad_norm=3.0, **TINY)
    inputs = random_memory_inputs(config, length=80, seed=depth * 100 + chunk_size)
    expected = reference.memory_update(*inputs, config)
    clipped = (expected.grad_norm > 3.0 - 1e-9).double().mean().item()
    result = torch_chunked.memory_update(*inputs, config)
    assert_close(result, expected, 1e-6, f"preset {name}, depth {depth}, chunk {chunk_size} ({clipped:.0%} clipped)")


@pytest.mark.parametrize("name", list(PRESETS))
def test_torch_chunked_equals_reference_without_clipping(name):
    config = PRESETS[name].replace(chunk_size=16, max_grad_norm=math.inf, **TINY)
    inputs = random_memory_inputs(config, length=40, seed=7)
    expected = reference.memory_update(*inputs, config)
    assert (expected.grad_norm > 3.0).any(), "test inputs should have large surprises, or clipping is untested"
    assert_close(torch_chunked.memory_update(*inputs, config), expected, 1e-6, f"preset {name}, no clipping")


def test_extreme_gates_stay_finite_and_exact():
    """Gates at the ends of (0, 1): log-space products must not produce inf - inf."""
    config = PRESETS["titans"].replace(chunk_size=16, **TINY)
    q, k, v, lr, momentum, decay, delta, weights, momenta = random_memory_inputs(config, length=48, seed=3)
    momentum = torch.where(torch.rand_like(momentum) < 0.5, torch.zeros_like(momentum), torch.full_like(momentum, 1 - 1e-12))
    choice = torch.rand_like(decay)
    decay = torch.where(choice < 0.4, torch.full_like(decay, 1e-300), torch.full_like(decay, 1 - 1e-9))
    decay = torch.where(choice > 0.9, torch.ones_like(decay), decay)  # saturated sigmoid: β = 0 exactly
    for retention in ("decay", "kl"):
        config = config.replace(retention=retention)
        inputs = (q, k, v, lr, momentum, decay, delta, weights, momenta)
        expected = reference.memory_update(*inputs, config)
        assert_close(torch_chunked.memory_update(*inputs, config), expected, 1e-6, f"extreme gates, {retention}")


def test_long_stream_stays_bounded():
    """20k tokens of adversarial values with no forgetting: the clip keeps every step bounded."""
    config = PRESETS["titans"].replace(chunk_size=64, max_grad_norm=1.0, **TINY)
    q, k, v, lr, momentum, decay, delta, weights, momenta = random_memory_inputs(
        config, batch=1, length=20_000, dtype=torch.float32, momentum_scale=0.0
    )
    v = 50 * v  # huge targets: unclipped, these steps would blow the memory up
    lr, momentum, decay = torch.full_like(lr, 0.1), torch.full_like(momentum, 0.9), torch.zeros_like(decay)
    result = torch_chunked.memory_update(q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    for name in ("output", "grad_norm", "momentum_norm"):
        assert torch.isfinite(getattr(result, name)).all(), f"{name} became non-finite over a long stream"
    assert result.grad_norm.max() <= 1.0 + 1e-5, f"clipped ||u|| exceeds max_grad_norm: {result.grad_norm.max():.4f}"
    # ||S|| <= θ G / (1 - η) = 1.0 with momentum 0.9 and steps of at most 0.1.
    assert result.momentum_norm.max() <= 1.0 + 1e-4, f"momentum norm {result.momentum_norm.max():.4f} exceeds its bound"


# ---------------------------------------------------------------------------------------------
# Chunk size 1: the plain per-token recurrence of paper eqs. 13-14, written out independently here
# in numpy with hand-derived gradients (no autograd, no code shared with the package).


def _silu(z):
    return z / (1 + np.exp(-z))


def _silu_prime(z):
    s = 1 / (1 + np.exp(-z))
    return s * (1 + z * (1 - s))


def _loss_derivative(r, config, delta):
    if config.attentional_bias == "l2":
        return 2 * r
    if config.attentional_bias == "lp":
        return config.p * np.sign(r) * np.abs(r) ** (config.p - 1)
    return np.where(np.abs(r) <= delta, 2 * r, 2 * delta * np.sign(r))


def _retain(weight, config, one_minus_alpha):
    fan_in = weight.shape[1]
    rho = config.retention_radius / math.sqrt(fan_in)
    if config.retention == "lq":
        norm = np.mean(np.abs(weight) ** config.q) ** (1 / config.q)
        return weight * min(1.0, rho / norm)
    if config.retention == "kl":
        powered = np.abs(weight) ** one_minus_alpha  # softmax(γ log|W|) = |W|^γ / Σ|W|^γ
        return fan_in * rho * np.sign(weight) * powered / powered.sum(axis=1, keepdims=True)
    return weight


def per_token_recurrence(q, k, v, lr, eta, alpha, delta, weights, momenta, config):
    """One (batch row, head): for every token, u_t at M_{t-1}; S_t = η S - θ u; M_t = β M + S."""
    memory = [w.copy() for w in weights]
    momentum = [s.copy() for s in momenta]
    outputs, grad_norms, momentum_norms = [], [], []
    for t in range(len(k)):
        x = q[t]
        for layer, w in enumerate(memory):
            x = w @ x if layer == len(memory) - 1 else _silu(w @ x)
        outputs.append(x)
        inputs, pre = [k[t]], []
        for layer, w in enumerate(memory):
            pre.append(w @ inputs[-1])
            if layer < len(memory) - 1:
                inputs.append(_silu(pre[-1]))
        d = _loss_derivative(pre[-1] - v[t], config, delta[t])
        grads = [None] * len(memory)
        for layer in range(len(memory) - 1, -1, -1):
            grads[layer] = np.outer(d, inputs[layer])
            if layer > 0:
                d = (memory[layer].T @ d) * _silu_prime(pre[layer - 1])
        norm = math.sqrt(sum((g**2).sum() for g in grads))
        scale = min(1.0, config.max_grad_norm / norm)
        grad_norms.append(norm * scale)
        eta_t = 0.0 if config.algorithm == "gd" else eta[t]
        beta_t = 1 - alpha[t] if config.retention in ("decay", "lq") else 1.0
        momentum = [eta_t * s - lr[t] * scale * g for s, g in zip(momentum, grads)]  # eq. 13
        memory = [beta_t * m + s for m, s in zip(memory, momentum)]  # eq. 14
        memory = [_retain(m, config, 1 - alpha[t]) for m in memory]
        momentum_norms.append(math.sqrt(sum((s**2).sum() for s in momentum)))
    return np.array(outputs), np.array(grad_norms), np.array(momentum_norms), memory, momentum


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("name", list(PRESETS))
def test_chunk_size_one_is_the_per_token_recurrence(name, depth):
    config = PRESETS[name].replace(depth=depth, chunk_size=1, max_grad_norm=3.0, **TINY)
    inputs = random_memory_inputs(config, length=30, seed=11)
    result = torch_chunked.memory_update(*inputs, config)
    q, k, v, lr, eta, alpha, delta, weights, momenta = inputs
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            row = lambda t: t[b, h].numpy()  # noqa: E731
            out, gn, mn, memory, momentum = per_token_recurrence(
                row(q), row(k), row(v), row(lr), row(eta), row(alpha), row(delta),
                [row(w) for w in weights], [row(s) for s in momenta], config,
            )
            pairs = {"output": (result.output[b, h], out), "grad_norm": (result.grad_norm[b, h], gn),
                     "momentum_norm": (result.momentum_norm[b, h], mn)}
            pairs.update({f"weights[{i}]": (result.weights[i][b, h], m) for i, m in enumerate(memory)})
            pairs.update({f"momenta[{i}]": (result.momenta[i][b, h], s) for i, s in enumerate(momentum)})
            for what, (ours, expected) in pairs.items():
                error = np.linalg.norm(ours.numpy() - expected) / np.linalg.norm(expected)
                assert error < 1e-9, f"preset {name}, depth {depth}, row {b}, head {h}: {what} off by {error:.2e}"


def test_retention_maps_do_what_their_docstrings_say():
    config = MemoryConfig(retention_radius=1.5, q=4.0)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(2, 3, 16, 8, generator=generator, dtype=torch.float64)
    rho = 1.5 / math.sqrt(8)
    projected = lq_retention(weight, config)
    norms = projected.abs().pow(4).mean(dim=(-2, -1)).pow(0.25)
    assert torch.allclose(norms, torch.full_like(norms, rho)), f"lq: norms {norms} should be on the radius {rho:.4f}"
    inside = weight * 0.01
    assert torch.equal(lq_retention(inside, config), inside), "lq must be the identity inside the ball"

    gamma1, gamma2 = torch.full((2, 3), 0.7, dtype=torch.float64), torch.full((2, 3), 0.4, dtype=torch.float64)
    once = kl_retention(weight, gamma1, config)
    row_mass = once.abs().sum(-1)
    assert torch.allclose(row_mass, torch.full_like(row_mass, 8 * rho)), "kl: every row must keep sum |W_ij| = in * rho"
    assert torch.equal(torch.sign(once), torch.sign(weight)), "kl must keep the signs of the weights"
    twice = kl_retention(once, gamma2, config)
    assert torch.allclose(twice, kl_retention(weight, gamma1 * gamma2, config)), "kl temperatures must compose"
    flat = kl_retention(weight, torch.full((2, 3), 1e-12, dtype=torch.float64), config)
    assert torch.allclose(flat.abs(), torch.full_like(flat, rho)), "kl with γ -> 0 must forget to uniform magnitudes"


@pytest.mark.parametrize("name", list(PRESETS))
def test_gradcheck_through_torch_chunked(name):
    config = PRESETS[name].replace(num_heads=1, head_dim=3, expansion=1, depth=2, chunk_size=2, max_grad_norm=2.5)
    q, k, v, lr, eta, alpha, delta, weights, momenta = random_memory_inputs(config, batch=1, length=5, seed=5)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, lr, eta, alpha, delta, *weights)]

    def run(q, k, v, lr, eta, alpha, delta, *weights):
        result = torch_chunked.memory_update(q, k, v, lr, eta, alpha, delta, weights, momenta, config)
        return (result.output, result.grad_norm, result.momentum_norm, *result.weights, *result.momenta)

    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-6, rtol=1e-4), f"gradcheck failed for {name}"
