"""The chunked closed form of the memory update (MEMORY_MATH.md): a few batched matmuls per chunk.

Per chunk of b tokens, per (batch row, head), with M0, S0 the chunk-start state:

    S_b = E(1..b) S0 - Σ_i E(i+1..b) θ_i u_i
    M_b = B(1..b) M0 + c_S S0 - Σ_i w_i θ_i u_i
    c_S = Σ_t B(t+1..b) E(1..t),   w_i = Σ_{t>=i} B(t+1..b) E(i+1..t)

with E, B products of η and β taken from in-chunk cumulative sums of their logs, and θ_i already
multiplied by the clip factor of u_i. Because u_i is a list of outer products δ_l,i x_l,i^T, a
weighted sum Σ_i c_i u_i is (Δ_l ⊙ c)^T X_l per layer. The signals need no weight copies either:

    ||u_i||^2 = Σ_l ||δ_l,i||^2 ||x_l,i||^2
    ||S_t||^2 = E(1..t)^2 ||S0||^2 - 2 E(1..t) Σ_i Λ_ti <S0, u_i> + Σ_ij Λ_ti Λ_tj <u_i, u_j>
    <u_i, u_j> = Σ_l <δ_l,i, δ_l,j> <x_l,i, x_l,j>      (b x b Gram matrices),  Λ_ti = E(i+1..t) θ_i

Differentiable (training backpropagates through it), device- and dtype-generic: q/k/v/gates are
cast to the dtype of the memory weights (keep those fp32 under bf16 autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import MemoryConfig
from .mlp import (
    MemoryResult,
    apply_retention,
    attentional_bias_derivative,
    check_inputs,
    mlp_forward,
    silu_derivative,
)


def _chunk_step(memory, surprise_momentum, q, k, v, theta, log_eta, log_beta, huber_delta, config):
    """One chunk: outputs, signals and the chunk-end state. Tensors (B, H, b, .) and (B, H, b)."""
    depth = len(memory)

    # Keys forward through M0, keeping each layer's input x_l and pre-activation z_l.
    layer_inputs, pre_activations = [k], []
    x = k
    for layer, weight in enumerate(memory):
        z = x @ weight.transpose(-1, -2)
        pre_activations.append(z)
        if layer < depth - 1:
            x = F.silu(z)
            layer_inputs.append(x)
    residual = pre_activations[-1] - v

    # δ's back through M0 (MEMORY_MATH.md: δ_{l-1} = (W_l^T δ_l) ⊙ σ'(z_{l-1})).
    deltas = [None] * depth
    deltas[-1] = attentional_bias_derivative(residual, config, huber_delta)
    for layer in range(depth - 1, 0, -1):
        deltas[layer - 1] = (deltas[layer] @ memory[layer]) * silu_derivative(pre_activations[layer - 1])

    # ||u_i||^2 without forming u; clip factor min(1, G/||u_i||) folded into θ_i.
    grad_norm_sq = sum((d * d).sum(-1) * (x * x).sum(-1) for d, x in zip(deltas, layer_inputs))
    tiny = torch.finfo(grad_norm_sq.dtype).tiny
    grad_norm = grad_norm_sq.clamp_min(tiny).sqrt()
    if math.isinf(config.max_grad_norm):
        clip = torch.ones_like(grad_norm)
    else:
        clip = config.max_grad_norm / grad_norm.clamp_min(config.max_grad_norm)
    grad_norm = grad_norm * clip
    step = theta * clip  # θ_i times the clip factor of u_i

    # Products of η and β from in-chunk cumulative log sums (reset every chunk, so they stay small).
    cum_log_eta = torch.cumsum(log_eta, dim=-1)
    cum_log_beta = torch.cumsum(log_beta, dim=-1)
    size = k.shape[-2]
    causal = torch.ones(size, size, dtype=torch.bool, device=k.device).tril()
    log_decay_matrix = (cum_log_eta.unsqueeze(-1) - cum_log_eta.unsqueeze(-2)).masked_fill(~causal, -math.inf)
    eta_products = torch.exp(log_decay_matrix)  # [t, i] = E(i+1..t) for i <= t, else 0
    eta_prefix = torch.exp(cum_log_eta)  # E(1..t)
    beta_suffix = torch.exp(cum_log_beta[..., -1:] - cum_log_beta)  # B(t+1..b)
    memory_coeff = (beta_suffix.unsqueeze(-2) @ eta_products).squeeze(-2)  # w_i
    momentum_carry = (beta_suffix * eta_prefix).sum(-1)[..., None, None]  # c_S
    eta_total = eta_prefix[..., -1, None, None]  # E(1..b)
    beta_total = torch.exp(cum_log_beta[..., -1])[..., None, None]  # B(1..b)
    momentum_coeff = eta_products[..., -1, :]  # E(i+1..b)

    new_memory, new_momentum = [], []
    for weight, s0, delta, x in zip(memory, surprise_momentum, deltas, layer_inputs):
        update_memory = (delta * (memory_coeff * step).unsqueeze(-1)).transpose(-1, -2) @ x
        update_momentum = (delta * (momentum_coeff * step).unsqueeze(-1)).transpose(-1, -2) @ x
        new_momentum.append(eta_total * s0 - update_momentum)
        new_memory.append(beta_total * weight + momentum_carry * s0 - update_memory)

    if config.algorithm == "gd":
        momentum_norm = theta * grad_norm  # S_t = -θ_t u_t exactly
    else:
        weighted = eta_products * step.unsqueeze(-2)  # Λ[t, i] = E(i+1..t) θ_i
        gram = sum((d @ d.transpose(-1, -2)) * (x @ x.transpose(-1, -2)) for d, x in zip(deltas, layer_inputs))
        s0_dot_u = sum(((x @ s0.transpose(-1, -2)) * d).sum(-1) for d, x, s0 in zip(deltas, layer_inputs, surprise_momentum))
        s0_sq = sum((s0 * s0).sum(dim=(-2, -1)) for s0 in surprise_momentum).unsqueeze(-1)
        momentum_sq = (
            eta_prefix**2 * s0_sq
            - 2 * eta_prefix * (weighted @ s0_dot_u.unsqueeze(-1)).squeeze(-1)
            + ((weighted @ gram) * weighted).sum(-1)
        )
        momentum_norm = momentum_sq.clamp_min(tiny).sqrt()

    output = mlp_forward(memory, q)  # tokens of this chunk read M0
    return output, grad_norm, momentum_norm, new_memory, new_momentum


def memory_update(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config: MemoryConfig) -> MemoryResult:
    check_inputs(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config)
    out_dtype = q.dtype
    dtype = weights[0].dtype
    q, k, v, lr, momentum, decay = (t.to(dtype) for t in (q, k, v, lr, momentum, decay))
    if huber_delta is not None:
        huber_delta = huber_delta.to(dtype)
    batch, heads, length, _ = k.shape
    tiny = torch.finfo(dtype).tiny

    # gd: η = 0 (log clamped to log(tiny): products of it are 0 to working precision, never NaN).
    eta = torch.zeros_like(momentum) if config.algorithm == "gd" else momentum
    log_eta = torch.log(eta.clamp_min(tiny))
    # α_t = 1 exactly (a saturated sigmoid) would give log β = -inf and inf - inf below: clamp the same way.
    log_one_minus_alpha = torch.log1p(-decay).clamp_min(math.log(tiny))
    log_beta = log_one_minus_alpha if config.retention in ("decay", "lq") else torch.zeros_like(decay)

    memory = tuple(weights)
    surprise_momentum = tuple(momenta)
    outputs, grad_norms, momentum_norms = [], [], []
    for start in range(0, length, config.chunk_size):
        span = slice(start, min(start + config.chunk_size, length))
        output, grad_norm, momentum_norm, memory, surprise_momentum = _chunk_step(
            memory,
            surprise_momentum,
            q[:, :, span],
            k[:, :, span],
            v[:, :, span],
            lr[:, :, span],
            log_eta[:, :, span],
            log_beta[:, :, span],
            None if huber_delta is None else huber_delta[:, :, span],
            config,
        )
        memory = apply_retention(memory, log_one_minus_alpha[:, :, span].sum(-1), config)
        outputs.append(output)
        grad_norms.append(grad_norm)
        momentum_norms.append(momentum_norm)

    if length == 0:
        empty = q.new_zeros(batch, heads, 0)
        return MemoryResult(q.clone().to(out_dtype), empty.to(out_dtype), empty.to(out_dtype), tuple(memory), tuple(surprise_momentum))
    return MemoryResult(
        output=torch.cat(outputs, dim=2).to(out_dtype),
        grad_norm=torch.cat(grad_norms, dim=2).to(out_dtype),
        momentum_norm=torch.cat(momentum_norms, dim=2).to(out_dtype),
        weights=tuple(memory),
        momenta=tuple(surprise_momentum),
    )
