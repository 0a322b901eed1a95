"""MemoryConfig validation, serialisation and presets: each MIRAS choice must change the math."""

import math

import pytest
import torch

from titans_cli.memory import PRESETS, MemoryConfig, preset
from titans_cli.memory import torch_chunked
from titans_cli.memory.mlp import initial_memory_weights


# Tiny ops: one intra-op thread (conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_heads": 0}, "num_heads must be a positive integer"),
        ({"depth": 1.5}, "depth must be a positive integer"),
        ({"attentional_bias": "l1"}, "attentional_bias must be one of l2, lp, huber"),
        ({"retention": "forget"}, "retention must be one of decay, lq, kl, none"),
        ({"algorithm": "adam"}, "algorithm must be one of gd, momentum"),
        ({"p": 0.5}, "p (lp attentional bias) must be a finite number >= 1"),
        ({"q": math.nan}, "q (lq retention) must be a finite number >= 1"),
        ({"max_lr": 0.0}, "max_lr must be a finite number > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),
    ],
)
def test_invalid_config_is_rejected_with_a_clear_message(changes, message):
    with pytest.raises(ValueError) as error:
        MemoryConfig(**changes)
    assert message in str(error.value), f"message {str(error.value)!r} should contain {message!r}"


def test_round_trip_through_dict_and_unknown_fields_rejected():
    for name, config in PRESETS.items():
        assert MemoryConfig.from_dict(config.to_dict()) == config, f"preset {name} does not round-trip"
    with pytest.raises(ValueError, match="unknown MemoryConfig field"):
        MemoryConfig.from_dict({**MemoryConfig().to_dict(), "mystery": 1})
    with pytest.raises(ValueError, match="unknown memory preset"):
        preset("hope")


def test_presets_are_the_miras_models():
    assert (PRESETS["titans"].attentional_bias, PRESETS["titans"].retention, PRESETS["titans"].algorithm) == ("l2", "decay", "momentum")
    assert (PRESETS["yaad"].attentional_bias, PRESETS["yaad"].retention, PRESETS["yaad"].algorithm) == ("huber", "decay", "momentum")
    moneta = PRESETS["moneta"]
    assert (moneta.attentional_bias, moneta.p, moneta.retention, moneta.q, moneta.algorithm) == ("lp", 3.0, "lq", 4.0, "gd")
    assert (PRESETS["memora"].attentional_bias, PRESETS["memora"].retention, PRESETS["memora"].algorithm) == ("l2", "kl", "gd")
    assert MemoryConfig().depth == 2 and MemoryConfig(depth=1).weight_shapes() == [(64, 64)]
    assert MemoryConfig(depth=3, head_dim=8, expansion=2).weight_shapes() == [(16, 8), (16, 16), (8, 16)]


def _run(config, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, length, dim = 1, config.num_heads, 40, config.head_dim
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    q = torch.nn.functional.normalize(rand(batch, heads, length, dim), dim=-1)
    k = torch.nn.functional.normalize(rand(batch, heads, length, dim), dim=-1)
    v = rand(batch, heads, length, dim)
    gate = lambda: torch.rand(batch, heads, length, generator=generator, dtype=torch.float64)  # noqa: E731
    lr, momentum, decay, delta = 0.5 * gate(), gate(), 0.02 * gate(), 0.2 + 0.5 * gate()
    weights = tuple(2 * w.unsqueeze(0).double() for w in initial_memory_weights(config, torch.Generator().manual_seed(1)))
    momenta = tuple(torch.zeros_like(w) for w in weights)
    return torch_chunked.memory_update(q, k, v, lr, momentum, decay, delta, weights, momenta, config)


@pytest.mark.parametrize(
    "field, alternatives",
    [
        ("attentional_bias", ["l2", "lp", "huber"]),
        ("p", [3.0, 4.0]),
        ("retention", ["decay", "lq", "kl", "none"]),
        ("q", [4.0, 2.0]),
        ("algorithm", ["gd", "momentum"]),
        ("depth", [1, 2, 3]),
        ("expansion", [1, 2]),
        ("chunk_size", [1, 8]),
        ("max_grad_norm", [0.5, math.inf]),
        ("retention_radius", [1.0, 0.5]),
    ],
)
def test_every_choice_changes_the_memory(field, alternatives):
    base = MemoryConfig(num_heads=2, head_dim=8, chunk_size=8, attentional_bias="lp" if field == "p" else "l2",
                        retention="lq" if field in ("q", "retention_radius") else "decay")
    finals = {}
    for value in alternatives:
        result = _run(base.replace(**{field: value}))
        finals[value] = torch.cat([result.output.flatten(), result.weights[-1].flatten()])
    values = list(finals)
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            if finals[a].shape != finals[b].shape:
                continue
            difference = (finals[a] - finals[b]).abs().max().item()
            assert difference > 1e-6, f"{field}={a!r} and {field}={b!r} give the same memory (max diff {difference:.2e})"
