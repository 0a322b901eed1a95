"""The memory MLP and the pieces of math shared by the memory implementations.

Memory of one head (MEMORY_MATH.md, no residual and no norm inside the memory)::

    depth 1:   M(k) = W_1 k
    depth L:   M(k) = W_L σ(W_{L-1} σ(... σ(W_1 k)))        σ = SiLU

Weights are per batch row and head: layer i has shape ``(B, H, out_i, in_i)`` (see
``MemoryConfig.weight_shapes``).

Retention maps applied to ``M_b`` at the end of every chunk (MEMORY_MATH.md, last check; the MIRAS
parallel forms do the same). ``ρ = retention_radius / sqrt(in)`` is the radius in units of a
standard ``1/sqrt(fan_in)`` initialisation, so one radius fits every layer shape:

- ``lq`` (Moneta's global retention): the projection of each weight matrix onto the ball of the
  normalised entrywise l_q norm::

      n_q(W) = (mean_ij |W_ij|^q)^(1/q),        R(W) = W · ρ / max(n_q(W), ρ)

  (identity inside the ball, radial rescale onto its surface outside).
- ``kl`` (Memora's KL / softmax retention): every row of every weight matrix is mapped onto the
  scaled simplex of magnitudes, in log space, with the chunk's retention as a temperature
  ``γ = Π_t (1 - α_t)`` over the tokens of the chunk::

      R(W)_ij = m · sign(W_ij) · softmax_j(γ · log(|W_ij| + tiny)),    m = in · ρ

  so every row keeps sum_j |W_ij| = m (mean magnitude ρ). γ = 1 is the KL projection (l1
  normalisation of the magnitudes); γ < 1 flattens the row towards uniform magnitudes, i.e.
  forgetting in the KL geometry. Temperatures compose over chunks (R(R(W; γ1); γ2) = R(W; γ1γ2)),
  as the linear decay products do. With ``kl`` the linear recurrence uses β_t = 1 (the forgetting
  is this log-space temperature instead).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .config import MemoryConfig


class MemoryResult(NamedTuple):
    output: torch.Tensor  # (B, H, T, d): y_t = M_{c-1}(q_t), the read of the chunk-start memory
    grad_norm: torch.Tensor  # (B, H, T): ||u_t|| after clipping (the paper's momentary surprise)
    momentum_norm: torch.Tensor  # (B, H, T): ||S_t||
    weights: tuple  # memory weights after the last token, layer i (B, H, out_i, in_i)
    momenta: tuple  # S after the last token, same shapes


def mlp_forward(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """M(x) for x of shape (B, H, T, d) with weights (B, H, out, in): x_l = σ(W_l x_{l-1})."""
    depth = len(weights)
    for layer, weight in enumerate(weights):
        x = x @ weight.transpose(-1, -2)
        if layer < depth - 1:
            x = F.silu(x)
    return x


def silu_derivative(z: torch.Tensor) -> torch.Tensor:
    """σ'(z) for σ = SiLU: s (1 + z (1 - s)) with s = sigmoid(z)."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def attentional_bias_derivative(
    residual: torch.Tensor, config: MemoryConfig, huber_delta: torch.Tensor | None
) -> torch.Tensor:
    """f'(r) of the inner loss Σ_j f(r_j), r = M(k) - v (MEMORY_MATH.md, "One token").

    l2: 2r;  lp: p sign(r) |r|^(p-1);  huber: 2r if |r| <= δ else 2δ sign(r) == 2 clamp(r, -δ, δ).
    ``huber_delta`` has shape residual.shape[:-1].
    """
    if config.attentional_bias == "l2":
        return 2 * residual
    if config.attentional_bias == "lp":
        return config.p * torch.sign(residual) * residual.abs() ** (config.p - 1)
    if huber_delta is None:
        raise ValueError("attentional_bias='huber' needs huber_delta (B, H, T)")
    delta = huber_delta.unsqueeze(-1)
    return 2 * torch.minimum(torch.maximum(residual, -delta), delta)


def retention_radius(config: MemoryConfig, fan_in: int) -> float:
    """ρ = retention_radius / sqrt(fan_in): the scale of a standard 1/sqrt(fan_in) initialisation."""
    return config.retention_radius / math.sqrt(fan_in)


def lq_retention(weight: torch.Tensor, config: MemoryConfig) -> torch.Tensor:
    """R(W) = W ρ / max(n_q(W), ρ), n_q = (mean |W|^q)^(1/q) over each (out, in) matrix."""
    rho = retention_radius(config, weight.shape[-1])
    norm = weight.abs().pow(config.q).mean(dim=(-2, -1), keepdim=True).pow(1.0 / config.q)
    return weight * (rho / norm.clamp_min(rho))


def kl_retention(weight: torch.Tensor, temperature: torch.Tensor, config: MemoryConfig) -> torch.Tensor:
    """R(W)_ij = m sign(W_ij) softmax_j(γ log(|W_ij| + tiny)), m = in ρ; γ = temperature (B, H)."""
    fan_in = weight.shape[-1]
    row_mass = fan_in * retention_radius(config, fan_in)
    tiny = torch.finfo(weight.dtype).tiny
    log_magnitude = torch.log(weight.abs() + tiny)
    logits = temperature[..., None, None] * log_magnitude
    return row_mass * torch.sign(weight) * torch.softmax(logits, dim=-1)


def apply_retention(weights: Sequence[torch.Tensor], log_temperature: torch.Tensor | None, config: MemoryConfig):
    """The chunk-end retention map of `config.retention` on every layer (identity for decay/none)."""
    if config.retention == "lq":
        return tuple(lq_retention(w, config) for w in weights)
    if config.retention == "kl":
        temperature = torch.exp(log_temperature)
        return tuple(kl_retention(w, temperature, config) for w in weights)
    return tuple(weights)


def initial_memory_weights(config: MemoryConfig, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Per-head initial weights (H, out, in), N(0, 1/fan_in): a standard, finite starting memory."""
    return [
        torch.randn(config.num_heads, out_dim, in_dim, generator=generator) / math.sqrt(in_dim)
        for out_dim, in_dim in config.weight_shapes()
    ]


def check_inputs(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config: MemoryConfig) -> None:
    """Shape checks shared by the implementations (clear messages instead of broadcasting surprises)."""
    if k.dim() != 4:
        raise ValueError(f"k must be (B, H, T, d), got shape {tuple(k.shape)}")
    batch, heads, length, dim = k.shape
    if heads != config.num_heads or dim != config.head_dim:
        raise ValueError(
            f"k has {heads} heads of dim {dim}, config says {config.num_heads} heads of dim {config.head_dim}"
        )
    for name, tensor in (("q", q), ("v", v)):
        if tuple(tensor.shape) != tuple(k.shape):
            raise ValueError(f"{name} must have the shape of k {tuple(k.shape)}, got {tuple(tensor.shape)}")
    for name, tensor in (("lr", lr), ("momentum", momentum), ("decay", decay)):
        if tuple(tensor.shape) != (batch, heads, length):
            raise ValueError(f"{name} must be (B, H, T) = {(batch, heads, length)}, got {tuple(tensor.shape)}")
    if config.attentional_bias == "huber":
        if huber_delta is None or tuple(huber_delta.shape) != (batch, heads, length):
            got = None if huber_delta is None else tuple(huber_delta.shape)
            raise ValueError(f"attentional_bias='huber' needs huber_delta of shape {(batch, heads, length)}, got {got}")
    shapes = config.weight_shapes()
    if len(weights) != len(shapes) or len(momenta) != len(shapes):
        raise ValueError(f"depth {config.depth} needs {len(shapes)} weight and momentum tensors")
    for layer, ((out_dim, in_dim), w, s) in enumerate(zip(shapes, weights, momenta)):
        expected = (batch, heads, out_dim, in_dim)
        if tuple(w.shape) != expected or tuple(s.shape) != expected:
            raise ValueError(
                f"layer {layer} weights/momenta must be {expected}, got {tuple(w.shape)} / {tuple(s.shape)}"
            )
