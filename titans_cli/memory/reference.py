"""The definition of the memory semantics: a plain loop over tokens in float64, autograd gradients.

Per chunk of ``config.chunk_size`` tokens (paper §3.2, mini-batch gradient descent), with M0 the
weights at the chunk start:

    u_t = ∇_W ℓ(W; k_t, v_t) at W = M0,   ℓ = Σ_j f(M_W(k_t)_j - v_t_j)     (autograd)
    u_t <- u_t · min(1, max_grad_norm / ||u_t||)                           (bounded inner step)
    S_t = η_t S_{t-1} - θ_t u_t                                            (eq. 13; gd: η_t = 0)
    M_t = β_t M_{t-1} + S_t                                                (eq. 14)
    y_t = M0(q_t)                                                          (read, no update)

β_t = 1 - α_t for retention decay/lq, 1 for kl/none; at the chunk end M <- R(M) (mlp.py).
Slow and obviously right; only for tests.
"""

from __future__ import annotations

import torch

from .config import MemoryConfig
from .mlp import MemoryResult, apply_retention, check_inputs, mlp_forward


def _token_loss(weights, key, value, huber_delta, config: MemoryConfig) -> torch.Tensor:
    """Σ over batch rows and heads of ℓ(W; k, v); each (row, head) owns its weights, so the gradient
    with respect to W[b, h] is the gradient of that row and head's own loss."""
    residual = mlp_forward(weights, key.unsqueeze(-2)).squeeze(-2) - value
    if config.attentional_bias == "l2":
        per_entry = residual**2
    elif config.attentional_bias == "lp":
        per_entry = residual.abs() ** config.p
    else:
        delta = huber_delta.unsqueeze(-1)
        per_entry = torch.where(residual.abs() <= delta, residual**2, 2 * delta * residual.abs() - delta**2)
    return per_entry.sum()


def memory_update(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config: MemoryConfig) -> MemoryResult:
    check_inputs(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config)
    out_dtype = q.dtype
    f64 = lambda t: None if t is None else t.detach().to(torch.float64)  # noqa: E731
    q, k, v, lr, momentum, decay, huber_delta = map(f64, (q, k, v, lr, momentum, decay, huber_delta))
    memory = [f64(w) for w in weights]
    surprise_momentum = [f64(s) for s in momenta]
    batch, heads, length, _ = k.shape

    theta = lr
    eta = torch.zeros_like(momentum) if config.algorithm == "gd" else momentum
    beta = 1 - decay if config.retention in ("decay", "lq") else torch.ones_like(decay)

    outputs, grad_norms, momentum_norms = [], [], []
    for chunk_start in range(0, length, config.chunk_size):
        chunk_end = min(chunk_start + config.chunk_size, length)
        chunk_start_memory = [w.clone().requires_grad_(True) for w in memory]
        with torch.no_grad():
            outputs.append(mlp_forward(chunk_start_memory, q[:, :, chunk_start:chunk_end]))
        for t in range(chunk_start, chunk_end):
            delta_t = None if huber_delta is None else huber_delta[:, :, t]
            with torch.enable_grad():
                loss = _token_loss(chunk_start_memory, k[:, :, t], v[:, :, t], delta_t, config)
                surprise = torch.autograd.grad(loss, chunk_start_memory)
            norm = torch.sqrt(sum((g**2).sum(dim=(-2, -1)) for g in surprise))  # ||u_t|| over all layers
            clip = torch.clamp(config.max_grad_norm / norm, max=1.0)
            surprise = [g * clip[..., None, None] for g in surprise]
            grad_norms.append(norm * clip)
            th, et, be = theta[:, :, t, None, None], eta[:, :, t, None, None], beta[:, :, t, None, None]
            surprise_momentum = [et * s - th * g for s, g in zip(surprise_momentum, surprise)]  # eq. 13
            memory = [be * m + s for m, s in zip(memory, surprise_momentum)]  # eq. 14
            momentum_norms.append(torch.sqrt(sum((s**2).sum(dim=(-2, -1)) for s in surprise_momentum)))
        log_temperature = torch.log1p(-decay[:, :, chunk_start:chunk_end]).sum(-1)  # log Π (1 - α_t), kl only
        memory = list(apply_retention(memory, log_temperature, config))

    if length == 0:
        empty = q.new_zeros(batch, heads, 0)
        output, grad_norm, momentum_norm = q.clone(), empty, empty.clone()
    else:
        output = torch.cat(outputs, dim=2)
        grad_norm = torch.stack(grad_norms, dim=-1)
        momentum_norm = torch.stack(momentum_norms, dim=-1)
    weight_dtype = weights[0].dtype
    return MemoryResult(
        output=output.to(out_dtype),
        grad_norm=grad_norm.to(out_dtype),
        momentum_norm=momentum_norm.to(out_dtype),
        weights=tuple(m.to(weight_dtype) for m in memory),
        momenta=tuple(s.to(weight_dtype) for s in surprise_momentum),
    )
