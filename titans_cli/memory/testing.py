"""Random inputs and error measures for checking memory implementations against each other.

Used by tests/test_memory_*.py and by `benchmarks/memory_throughput.py --check-cuda`.
"""

import torch

from .mlp import initial_memory_weights


def random_memory_inputs(
    config, batch=2, length=37, dtype=torch.float64, seed=0, weight_scale=2.0, momentum_scale=0.1, device="cpu"
):
    """q, k, v, lr, momentum, decay, huber_delta, weights, momenta with gates spread over (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    heads, dim = config.num_heads, config.head_dim
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    uniform = lambda: torch.rand(batch, heads, length, generator=generator, dtype=torch.float64)  # noqa: E731
    q = torch.nn.functional.normalize(rand(batch, heads, length, dim), dim=-1)
    k = torch.nn.functional.normalize(rand(batch, heads, length, dim), dim=-1)
    v = rand(batch, heads, length, dim)
    lr = 0.5 * uniform()
    momentum = uniform()
    decay = 0.1 * uniform()
    huber_delta = 0.1 + uniform()
    weights = tuple(
        weight_scale * (w.unsqueeze(0) + 0.1 * rand(batch, *w.shape))
        for w in initial_memory_weights(config, torch.Generator().manual_seed(seed + 1))
    )
    momenta = tuple(momentum_scale * rand(*w.shape) for w in weights)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return tuple(map(cast, (q, k, v, lr, momentum, decay, huber_delta))) + (
        tuple(map(cast, weights)),
        tuple(map(cast, momenta)),
    )


def relative_errors(result, expected):
    """Relative error of every output of a MemoryResult against another, by name."""

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()

    errors = {
        "output": rel(result.output, expected.output),
        "grad_norm": rel(result.grad_norm, expected.grad_norm),
        "momentum_norm": rel(result.momentum_norm, expected.momentum_norm),
    }
    for layer, (a, b) in enumerate(zip(result.weights, expected.weights)):
        errors[f"weights[{layer}]"] = rel(a, b)
    for layer, (a, b) in enumerate(zip(result.momenta, expected.momenta)):
        errors[f"momenta[{layer}]"] = rel(a, b)
    return errors
