"""Numba kernels for the memory update on CPU (inference): float32, parallel over batch x heads.

Same signature and semantics as ``torch_chunked.memory_update`` (read that module and
MEMORY_MATH.md first). One compiled, GIL-free call (``_update_lane``) walks all chunks of one
(batch row, head) lane with every scratch buffer allocated once per call, not per chunk; the lanes
run in parallel on a thread pool of ``numba.get_num_threads()`` workers. Per chunk:

1. read:       y_t = M0(q_t) for the chunk's queries;
2. gradient:   keys forward through M0, δ's back (MEMORY_MATH.md), ||u_i|| and its clip;
3. scan:       the per-token coefficients from exact running products of η and β
               (w_i = B(i+1..b) + η_{i+1} w_{i+1},  e_i = E(i+1..b) = η_{i+1} e_{i+1},  c_S = η_1 w_1);
4. signals:    ||S_t|| by the recurrence ||S_t||² = η_t²||S_{t-1}||² - 2η_t θ_t<S_{t-1}, u_t> + θ_t²||u_t||²,
               with <S_{t-1}, u_t> from <S0, u_t> and the b x b Gram matrix <u_i, u_t>;
5. update:     M_b = B(1..b) M0 + c_S S0 - Σ w_i θ_i u_i,  S_b = E(1..b) S0 - Σ e_i θ_i u_i (eqs. 13-14);
6. retention:  the chunk-end map (lq / kl) of mlp.py.

Matrix products go through ``np.dot`` (BLAS sgemm) on contiguous views of flat buffers; the weights
of all layers of one head live in one flat row, so any depth compiles to the same kernel.
"""

from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from numba import njit

from titans_cli.device import flush_denormals

from .config import MemoryConfig
from .mlp import MemoryResult, check_inputs

_BIASES = {"l2": 0, "lp": 1, "huber": 2}
# Reassociation and contraction (FMA) let the reductions and polynomial loops vectorise; results
# move by float32 rounding only (the tests hold them to the float64 reference). No nnan/ninf.
_FASTMATH = {"reassoc", "contract", "nsz"}
_RETENTIONS = {"decay": 0, "lq": 1, "kl": 2, "none": 3}


# exp(x) = 2^k e^r with k = round(x / ln 2), |r| <= ln(2)/2, e^r by its degree-6 Taylor polynomial
# (truncation error < 2e-7 relative, about one float32 ulp) and 2^k built from its exponent bits.
# Unlike math.exp (a libm call per element), this loop vectorises (AVX2: 8 lanes).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_MIN = np.float32(-87.0)
_EXP_MAX = np.float32(88.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_C2, _C3, _C4 = np.float32(1.0 / 2), np.float32(1.0 / 6), np.float32(1.0 / 24)
_C5, _C6 = np.float32(1.0 / 120), np.float32(1.0 / 720)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def exp_in_place(values, bits):
    """values[i] <- e^values[i] (arguments above 88 give e^88, below -87 exactly 0); bits: int32
    scratch at least as long as values."""
    n = values.shape[0]
    for i in range(n):
        x = values[i]
        clamped = min(max(x, _EXP_MIN), _EXP_MAX)
        k = np.floor(clamped * _LOG2E + _HALF)
        r = (clamped - k * _LN2_HI) - k * _LN2_LO
        values[i] = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * _C6)))))
        bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23) if x >= _EXP_MIN else np.int32(0)
    scale = bits[:n].view(np.float32)
    for i in range(n):
        values[i] *= scale[i]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _silu_sigmoid(z, a, sig, bits, offset, a_offset, n):
    """sig[offset+i] = sigmoid(z[offset+i]), a[a_offset+i] = z * sig (SiLU) for i < n (a may be z);
    bits: int32 scratch."""
    e = sig[offset : offset + n]
    for i in range(n):
        e[i] = -z[offset + i]
    exp_in_place(e, bits)
    for i in range(n):
        s = _ONE / (_ONE + e[i])
        e[i] = s
        a[a_offset + i] = z[offset + i] * s


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _prepare_row(projected, tail, taps, conv_bias, gate_pre, max_lr, q, k, v, gates):
    """One batch row of NeuralMemory's input path (layer.py), fused: the depthwise causal conv over
    [tail; projected] (tail: the previous conv_size - 1 projected rows), SiLU, and the per-head L2
    norm of q and k, written per head: q, k, v (H, T, d). Gates from gate_pre (T, G*H), laid out
    (gate, head): gates (G, H, T) = max_lr·σ, σ, σ[, softplus] (θ, η, α[, Huber δ])."""
    length, width = projected.shape
    heads, dim = q.shape[0], q.shape[2]
    inner = heads * dim
    size = taps.shape[0]
    row = np.empty(width, dtype=np.float32)
    sig = np.empty(width, dtype=np.float32)
    bits = np.empty(width, dtype=np.int32)
    for t in range(length):
        # conv: bias + sum_j taps[j] * input[t + j - (size - 1)], in the order of layer._causal_conv
        row[:] = conv_bias
        for j in range(size):
            source = t + j - (size - 1)
            x = projected[source] if source >= 0 else tail[size - 1 + source]
            tap = taps[j]
            for c in range(width):
                row[c] += x[c] * tap[c]
        _silu_sigmoid(row, row, sig, bits, 0, 0, width)
        for h in range(heads):
            for part in range(2):  # q, k: L2-normalised per head
                segment = row[part * inner + h * dim : part * inner + (h + 1) * dim]
                total = np.float32(0.0)
                for e in range(dim):
                    total += segment[e] * segment[e]
                norm = max(np.float32(math.sqrt(total)), np.float32(1e-12))
                target = q[h, t] if part == 0 else k[h, t]
                for e in range(dim):
                    target[e] = segment[e] / norm
            v[h, t] = row[2 * inner + h * dim : 2 * inner + (h + 1) * dim]
    count = gate_pre.shape[1]
    for t in range(length):
        for i in range(count):
            z = gate_pre[t, i]
            g, h = i // heads, i % heads
            if g == 3:  # softplus, as F.softplus (threshold 20)
                gates[g, h, t] = z if z > 20 else np.float32(math.log1p(math.exp(z)))
            else:
                sigmoid = _ONE / (_ONE + np.float32(math.exp(-z)))
                gates[g, h, t] = sigmoid * max_lr if g == 0 else sigmoid


def prepare_inputs(projected, tail, taps, conv_bias, gate_pre, heads: int, max_lr: float, lane_map=None):
    """NeuralMemory's inference input path on numpy float32 arrays: projected (B, T, 3C) (the q|k|v
    projections), tail (B, size - 1, 3C), taps (size, 3C), conv_bias (3C,), gate_pre (B, T, G*H).
    Returns q, k, v (B, H, T, d) and gates (G, B, H, T)."""
    batch, length, width = projected.shape
    dim = width // 3 // heads
    q = np.empty((batch, heads, length, dim), dtype=np.float32)
    k = np.empty_like(q)
    v = np.empty_like(q)
    gates = np.empty((gate_pre.shape[2] // heads, batch, heads, length), dtype=np.float32)
    max_lr = np.float32(max_lr)

    def job(b):
        _prepare_row(projected[b], tail[b], taps, conv_bias, gate_pre[b], max_lr, q[b], k[b], v[b], gates[:, b])

    (lane_map or map_lanes)(job, batch)
    return q, k, v, gates


@njit(cache=True, fastmath=False)
def _retain(weights_row, w_offsets, dims, retention, q_norm, radius, log_temperature):
    """Chunk-end retention map (mlp.py): lq ball per matrix, kl row softmax in log space."""
    depth = dims.shape[0] - 1
    tiny = np.float32(1.1754944e-38)
    for layer in range(depth):
        fan_in, fan_out = dims[layer], dims[layer + 1]
        weight = weights_row[w_offsets[layer] : w_offsets[layer] + fan_out * fan_in].reshape(fan_out, fan_in)
        rho = radius / math.sqrt(fan_in)
        if retention == 1:
            total = 0.0
            for i in range(fan_out):
                for j in range(fan_in):
                    total += abs(np.float64(weight[i, j])) ** q_norm
            norm = (total / (fan_out * fan_in)) ** (1.0 / q_norm)
            scale = np.float32(rho / max(norm, rho))
            for i in range(fan_out):
                for j in range(fan_in):
                    weight[i, j] *= scale
        elif retention == 2:
            temperature = math.exp(log_temperature)
            row_mass = fan_in * rho
            for i in range(fan_out):
                largest = -np.inf
                for j in range(fan_in):
                    logit = temperature * math.log(abs(np.float64(weight[i, j])) + tiny)
                    largest = max(largest, logit)
                total = 0.0
                for j in range(fan_in):
                    total += math.exp(temperature * math.log(abs(np.float64(weight[i, j])) + tiny) - largest)
                for j in range(fan_in):
                    w = np.float64(weight[i, j])
                    share = math.exp(temperature * math.log(abs(w) + tiny) - largest) / total
                    sign = 1.0 if w > 0 else (-1.0 if w < 0 else 0.0)
                    weight[i, j] = np.float32(row_mass * sign * share)


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _update_lane(
    q, k, v, lr, eta, alpha, huber_delta, W, S, dims, w_offsets,
    chunk_size, bias, p_norm, retention, q_norm, radius, use_momentum, max_grad_norm,
    output, grad_norm, momentum_norm, momentum_signal,
):  # fmt: skip
    """All chunks of one (batch row, head): q, k, v (T, d); output (T, d) (any row stride);
    gates, signals (T,); W, S the flat memory weights and momenta (updated in place);
    momentum_signal False: momentum_norm is left NaN (step 4 skipped)."""
    length = lr.shape[0]
    dim = dims[0]
    depth = dims.shape[0] - 1
    width = 0
    activation_size = 0
    for layer in range(depth + 1):
        width = max(width, dims[layer])
    for layer in range(depth):
        activation_size += dims[layer + 1]
    matrix_size = 0
    for layer in range(depth):
        matrix_size = max(matrix_size, dims[layer] * dims[layer + 1])
    decays = retention == 0 or retention == 1
    clip_enabled = max_grad_norm < np.inf

    # Scratch, once per lane: layer inputs X_l, pre-activations Z_l, sigmoids of Z_l, deltas D_l.
    # X_l / Z_l hold the chunk's keys in their first rows and its queries in the next rows: the
    # read y_t = M0(q_t) and the keys' forward pass through M0 are one matrix product per layer.
    inputs = np.empty(2 * chunk_size * (dim + activation_size), dtype=np.float32)
    pre = np.empty(2 * chunk_size * activation_size, dtype=np.float32)
    sigmoids = np.empty(2 * chunk_size * activation_size, dtype=np.float32)
    deltas = np.empty(2 * chunk_size * activation_size, dtype=np.float32)
    bits = np.empty(2 * chunk_size * width, dtype=np.int32)
    scaled = np.empty(chunk_size * width, dtype=np.float32)
    products = np.empty(chunk_size * width, dtype=np.float32)
    update = np.empty(matrix_size, dtype=np.float32)
    gram = np.empty((chunk_size, chunk_size), dtype=np.float64)
    gram_part = np.empty(chunk_size * chunk_size, dtype=np.float32)
    gram_other = np.empty(chunk_size * chunk_size, dtype=np.float32)
    step = np.empty(chunk_size, dtype=np.float64)
    clip_factor = np.empty(chunk_size, dtype=np.float64)
    memory_coeff = np.empty(chunk_size, dtype=np.float64)
    momentum_coeff = np.empty(chunk_size, dtype=np.float64)
    s0_dot_u = np.empty(chunk_size, dtype=np.float64)
    running = np.empty(chunk_size, dtype=np.float64)
    x_offsets = np.empty(depth + 1, dtype=np.int64)
    z_offsets = np.empty(depth + 1, dtype=np.int64)
    x_offsets[0] = 0
    z_offsets[0] = 0
    for layer in range(depth):
        x_offsets[layer + 1] = x_offsets[layer] + 2 * chunk_size * dims[layer]
        z_offsets[layer + 1] = z_offsets[layer] + 2 * chunk_size * dims[layer + 1]

    for start in range(0, length, chunk_size):
        rows = min(chunk_size, length - start)

        # 1-2. keys and queries forward through the chunk-start memory M0 (stacked rows).
        stacked = 2 * rows
        for i in range(rows):
            inputs[i * dim : (i + 1) * dim] = k[start + i]
            inputs[(rows + i) * dim : (rows + i + 1) * dim] = q[start + i]
        for layer in range(depth):
            fan_in, fan_out = dims[layer], dims[layer + 1]
            weight = W[w_offsets[layer] : w_offsets[layer] + fan_out * fan_in].reshape(fan_out, fan_in)
            x = inputs[x_offsets[layer] : x_offsets[layer] + stacked * fan_in].reshape(stacked, fan_in)
            z = pre[z_offsets[layer] : z_offsets[layer] + stacked * fan_out].reshape(stacked, fan_out)
            np.dot(x, weight.T, z)
            if layer < depth - 1:
                _silu_sigmoid(pre, inputs, sigmoids, bits, z_offsets[layer], x_offsets[layer + 1], stacked * fan_out)
        # the read: y_t = M0(q_t), the query rows of the last layer
        read_from = z_offsets[depth - 1] + rows * dim
        for i in range(rows):
            output[start + i] = pre[read_from + i * dim : read_from + (i + 1) * dim]
        last = depth - 1
        y = pre[z_offsets[last] : z_offsets[last] + rows * dim].reshape(rows, dim)
        d_last = deltas[z_offsets[last] : z_offsets[last] + rows * dim].reshape(rows, dim)
        # (inner loops over 1-D row slices: with 2-D indexing LLVM cannot rule out aliasing and
        # leaves them scalar)
        for i in range(rows):
            y_row, v_row, d_row = y[i], v[start + i], d_last[i]
            if bias == 0:
                for j in range(dim):
                    d_row[j] = 2 * (y_row[j] - v_row[j])
            elif bias == 1:
                for j in range(dim):
                    r = y_row[j] - v_row[j]
                    d_row[j] = p_norm * np.sign(r) * abs(r) ** (p_norm - 1)
            else:
                delta = huber_delta[start + i]
                for j in range(dim):
                    d_row[j] = 2 * min(max(y_row[j] - v_row[j], -delta), delta)
        for layer in range(depth - 1, 0, -1):
            fan_in, fan_out = dims[layer], dims[layer + 1]
            weight = W[w_offsets[layer] : w_offsets[layer] + fan_out * fan_in].reshape(fan_out, fan_in)
            d = deltas[z_offsets[layer] : z_offsets[layer] + rows * fan_out].reshape(rows, fan_out)
            block = slice(z_offsets[layer - 1], z_offsets[layer - 1] + rows * fan_in)
            d_prev, z_prev, s_prev = deltas[block], pre[block], sigmoids[block]
            np.dot(d, weight, d_prev.reshape(rows, fan_in))
            for j in range(rows * fan_in):
                s = s_prev[j]  # σ'(z) = s (1 + z (1 - s)), s from the forward pass
                d_prev[j] *= s * (_ONE + z_prev[j] * (_ONE - s))

        # ||u_i||² = Σ_l ||δ_l,i||² ||x_l,i||², clipped to max_grad_norm; step_i = θ_i · clip_i.
        for i in range(rows):
            norm_sq = 0.0
            for layer in range(depth):
                fan_in, fan_out = dims[layer], dims[layer + 1]
                d_row = deltas[z_offsets[layer] + i * fan_out : z_offsets[layer] + (i + 1) * fan_out]
                x_row = inputs[x_offsets[layer] + i * fan_in : x_offsets[layer] + (i + 1) * fan_in]
                dd = 0.0
                for j in range(fan_out):
                    dd += np.float64(d_row[j]) ** 2
                xx = 0.0
                for j in range(fan_in):
                    xx += np.float64(x_row[j]) ** 2
                norm_sq += dd * xx
            norm = math.sqrt(norm_sq)
            clip = max_grad_norm / max(norm, max_grad_norm) if clip_enabled else 1.0
            grad_norm[start + i] = norm * clip
            clip_factor[i] = clip
            step[i] = lr[start + i] * clip

        # 3. scan: exact running products of η (momentum) and β (retention) over the chunk.
        memory_coeff[rows - 1] = 1.0
        momentum_coeff[rows - 1] = 1.0
        beta_suffix = 1.0  # B(i+1..b)
        for i in range(rows - 2, -1, -1):
            eta_next = eta[start + i + 1] if use_momentum else 0.0
            beta_suffix *= (1.0 - alpha[start + i + 1]) if decays else 1.0
            memory_coeff[i] = beta_suffix + eta_next * memory_coeff[i + 1]
            momentum_coeff[i] = eta_next * momentum_coeff[i + 1]
        eta_first = eta[start] if use_momentum else 0.0
        beta_total = beta_suffix * ((1.0 - alpha[start]) if decays else 1.0)
        momentum_carry = eta_first * memory_coeff[0]  # c_S
        eta_total = eta_first * momentum_coeff[0]  # E(1..b)
        log_temperature = 0.0
        for i in range(rows):
            log_temperature += math.log1p(-alpha[start + i])

        # 4. ||S_t|| before the state changes (it needs S0).
        if not momentum_signal:
            for t in range(rows):
                momentum_norm[start + t] = np.nan
        elif use_momentum:
            # gram[t, i] = <u_t, u_i> for i <= t (the lower triangle is all the recurrence reads)
            gram[:rows, :rows] = 0.0
            s0_sq = 0.0
            for i in range(rows):
                s0_dot_u[i] = 0.0
            for layer in range(depth):
                fan_in, fan_out = dims[layer], dims[layer + 1]
                s0_row = S[w_offsets[layer] : w_offsets[layer] + fan_out * fan_in]
                for j in range(fan_out * fan_in):
                    s0_sq += np.float64(s0_row[j]) ** 2
                s0 = s0_row.reshape(fan_out, fan_in)
                x = inputs[x_offsets[layer] : x_offsets[layer] + rows * fan_in].reshape(rows, fan_in)
                d = deltas[z_offsets[layer] : z_offsets[layer] + rows * fan_out].reshape(rows, fan_out)
                xs = products[: rows * fan_out].reshape(rows, fan_out)
                np.dot(x, s0.T, xs)  # <S0, δ_i x_iᵀ> = δ_iᵀ S0 x_i
                for i in range(rows):
                    xs_row, d_row = xs[i], d[i]
                    acc = 0.0
                    for j in range(fan_out):
                        acc += np.float64(xs_row[j]) * d_row[j]
                    s0_dot_u[i] += acc
                gd = gram_part[: rows * rows].reshape(rows, rows)
                gx = gram_other[: rows * rows].reshape(rows, rows)
                np.dot(d, d.T, gd)
                np.dot(x, x.T, gx)
                for t in range(rows):
                    gram_row, gd_row, gx_row = gram[t], gd[t], gx[t]
                    for i in range(t + 1):
                        gram_row[i] += np.float64(gd_row[i]) * gx_row[i]
            norm_sq = s0_sq
            eta_prefix = 1.0  # E(1..t-1)
            for t in range(rows):
                e_t = eta[start + t]
                clip_t = clip_factor[t]
                gram_row = gram[t]
                inner = eta_prefix * s0_dot_u[t]
                for i in range(t):
                    inner -= running[i] * gram_row[i]
                inner *= clip_t  # <S_{t-1}, clipped u_t>
                u_sq = np.float64(gram_row[t]) * clip_t * clip_t
                theta_t = lr[start + t]
                norm_sq = e_t * e_t * norm_sq - 2.0 * e_t * theta_t * inner + theta_t * theta_t * u_sq
                momentum_norm[start + t] = math.sqrt(max(norm_sq, 0.0))
                for i in range(t):
                    running[i] *= e_t
                running[t] = step[t]  # E(t+1..t) θ_t clip_t
                eta_prefix *= e_t
        else:
            for t in range(rows):
                momentum_norm[start + t] = lr[start + t] * grad_norm[start + t]

        # 5. M_b = B M0 + c_S S0 - (Δ ⊙ wθ)ᵀ X,   S_b = E S0 - (Δ ⊙ eθ)ᵀ X   (eqs. 13-14 in closed form).
        for layer in range(depth):
            fan_in, fan_out = dims[layer], dims[layer + 1]
            size = fan_out * fan_in
            m_row = W[w_offsets[layer] : w_offsets[layer] + size]
            s_row = S[w_offsets[layer] : w_offsets[layer] + size]
            x = inputs[x_offsets[layer] : x_offsets[layer] + rows * fan_in].reshape(rows, fan_in)
            d = deltas[z_offsets[layer] : z_offsets[layer] + rows * fan_out].reshape(rows, fan_out)
            dw = scaled[: rows * fan_out].reshape(rows, fan_out)
            u = update[:size].reshape(fan_out, fan_in)
            u_row = update[:size]
            for i in range(rows):
                c = np.float32(memory_coeff[i] * step[i])
                dw_row, d_row = dw[i], d[i]
                for j in range(fan_out):
                    dw_row[j] = d_row[j] * c
            np.dot(dw.T, x, u)
            bt, cs = np.float32(beta_total), np.float32(momentum_carry)
            for j in range(size):
                m_row[j] = bt * m_row[j] + cs * s_row[j] - u_row[j]
            for i in range(rows):
                c = np.float32(momentum_coeff[i] * step[i])
                dw_row, d_row = dw[i], d[i]
                for j in range(fan_out):
                    dw_row[j] = d_row[j] * c
            np.dot(dw.T, x, u)
            et = np.float32(eta_total)
            for j in range(size):
                s_row[j] = et * s_row[j] - u_row[j]

        # 6. chunk-end retention map.
        if retention == 1 or retention == 2:
            _retain(W, w_offsets, dims, retention, q_norm, radius, log_temperature)


def map_lanes(job, lanes: int) -> None:
    """job(lane) for every lane < lanes, spread over a thread pool of numba.get_num_threads()
    workers (one after another inside `sequential_lanes()`); jobs are GIL-free Numba kernels.

    A ``prange`` over the lanes would be the natural form, but a parallel=True wrapper recompiles
    the whole lane kernel in its own context: measured ~2x the JIT time for no speed gain, since
    each lane is already one long sequential job."""
    workers = min(lanes, numba.get_num_threads() if _LOCAL.lane_workers is None else _LOCAL.lane_workers)
    if workers <= 1:
        for lane in range(lanes):
            job(lane)
        return
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="titans-memory", initializer=flush_denormals)
    for _ in _POOL.map(job, range(lanes)):
        pass


def update_lanes(q, k, v, lr, eta, alpha, huber_delta, memory, momenta, output, grad_norm, momentum_norm,
                 config: MemoryConfig, want_momentum: bool = True) -> None:
    """The memory update on numpy float32 arrays, lane by lane (lane = batch row * heads + head).

    q, k, v (lanes, T, d); lr, eta, alpha, huber_delta (lanes, T); memory, momenta (lanes, size):
    the weights of every layer flattened per lane (`flatten_weights`), updated in place; output
    (B, T, H, d) (the layout the output projection reads); grad_norm, momentum_norm (lanes, T).
    want_momentum=False skips ||S_t|| (the Gram matrices of step 4, ~1/3 of the work): NaN instead."""
    lanes, length = lr.shape
    if length == 0:
        return
    dims, w_offsets = _weight_layout(config)
    heads = config.num_heads
    scalars = (
        dims, w_offsets, config.chunk_size, _BIASES[config.attentional_bias], np.float32(config.p),
        _RETENTIONS[config.retention], float(config.q), float(config.retention_radius),
        config.algorithm == "momentum", float(config.max_grad_norm), bool(want_momentum),
    )  # fmt: skip

    def lane_job(lane):
        dims, w_offsets, chunk_size, bias, p_norm, retention, q_norm, radius, use_momentum, max_grad_norm, signal = scalars
        _update_lane(
            q[lane], k[lane], v[lane], lr[lane], eta[lane], alpha[lane], huber_delta[lane],
            memory[lane], momenta[lane], dims, w_offsets,
            chunk_size, bias, p_norm, retention, q_norm, radius, use_momentum, max_grad_norm,
            output[lane // heads, :, lane % heads], grad_norm[lane], momentum_norm[lane], signal,
        )  # fmt: skip

    with blas_limited():
        map_lanes(lane_job, lanes)


def _weight_layout(config: MemoryConfig):
    """(dims, offsets): layer widths d, h, ..., d and where each layer's weights start in a lane's row."""
    shapes = config.weight_shapes()
    dims = np.array([shapes[0][1]] + [out for out, _ in shapes], dtype=np.int64)
    w_offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
    w_offsets[1:] = np.cumsum([out * fan_in for out, fan_in in shapes])
    return dims, w_offsets


def flatten_weights(tensors) -> np.ndarray:
    """Layer tensors (B, H, out, in) -> one float32 row per lane (B*H, sum of out*in), a new array."""
    lanes = tensors[0].shape[0] * tensors[0].shape[1]
    return np.ascontiguousarray(np.concatenate([_numpy32(t, (lanes, -1)) for t in tensors], axis=1))


def unflatten_weights(array: np.ndarray, batch: int, config: MemoryConfig, like) -> tuple:
    """Inverse of flatten_weights: tensors (B, H, out, in) with the device and dtype of `like`'s."""
    _, w_offsets = _weight_layout(config)
    return tuple(
        torch.from_numpy(array[:, w_offsets[i] : w_offsets[i + 1]].copy())
        .view(batch, config.num_heads, out, fan_in)
        .to(device=like[i].device, dtype=like[i].dtype)
        for i, (out, fan_in) in enumerate(config.weight_shapes())
    )


_POOL: ThreadPoolExecutor | None = None
_BLAS_CONTROLLER = None
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0
_BLAS_LIMIT = None


class _Local(threading.local):
    lane_workers: int | None = None  # None: numba.get_num_threads()


_LOCAL = _Local()


@contextlib.contextmanager
def sequential_lanes():
    """Within this context (in this thread), memory_update runs its lanes one after another: for
    callers that already keep every core busy with threads of their own (TitansLM's layer pipeline)."""
    previous = _LOCAL.lane_workers
    _LOCAL.lane_workers = 1
    try:
        yield
    finally:
        _LOCAL.lane_workers = previous


@contextlib.contextmanager
def blas_limited():
    """One BLAS thread while any thread is inside memory_update (reference-counted: concurrent
    callers must not restore the limit under each other's feet)."""
    global _BLAS_USERS, _BLAS_LIMIT
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            _BLAS_LIMIT = _single_threaded_blas()
            _BLAS_LIMIT.__enter__()
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                _BLAS_LIMIT.__exit__(None, None, None)
                _BLAS_LIMIT = None


def _single_threaded_blas():
    """A context in which BLAS (scipy's OpenBLAS, behind numba's np.dot) uses one thread.

    Our lanes already occupy every core; OpenBLAS threads on top of them oversubscribe the CPU and
    made the kernel ~20x slower (measured: 1.4k vs 27k tokens per CPU-second on 2 cores).
    threadpoolctl does the limiting when installed; without it the call runs, more slowly."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (load numba's BLAS so the controller sees it)
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _BLAS_CONTROLLER = False
        else:
            _BLAS_CONTROLLER = ThreadpoolController()
    if _BLAS_CONTROLLER is False:
        return contextlib.nullcontext()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _numpy32(t: torch.Tensor, shape) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(device="cpu", dtype=torch.float32).reshape(shape).numpy())


def memory_update(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config: MemoryConfig) -> MemoryResult:
    """Numba memory update; takes and returns torch tensors (CPU, float32 inside, no autograd).
    The output is a (B, H, T, d) view of a (B, T, H, d) array."""
    check_inputs(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config)
    batch, heads, length, dim = k.shape
    lanes = batch * heads
    memory, surprise_momentum = flatten_weights(weights), flatten_weights(momenta)
    vectors = [_numpy32(t, (lanes, length, dim)) for t in (q, k, v)]
    gates = [_numpy32(t, (lanes, length)) for t in (lr, momentum, decay)]
    delta = _numpy32(huber_delta, (lanes, length)) if huber_delta is not None else np.ones((lanes, length), np.float32)
    output = np.empty((batch, length, heads, dim), dtype=np.float32)
    grad_norm = np.empty((lanes, length), dtype=np.float32)
    momentum_norm = np.empty((lanes, length), dtype=np.float32)
    update_lanes(*vectors, *gates, delta, memory, surprise_momentum, output, grad_norm, momentum_norm, config)

    out_dtype = q.dtype if q.dtype.is_floating_point else torch.float32
    return MemoryResult(
        output=torch.from_numpy(output).permute(0, 2, 1, 3).to(device=q.device, dtype=out_dtype),
        grad_norm=torch.from_numpy(grad_norm).view(batch, heads, length).to(device=q.device, dtype=out_dtype),
        momentum_norm=torch.from_numpy(momentum_norm).view(batch, heads, length).to(device=q.device, dtype=out_dtype),
        weights=unflatten_weights(memory, batch, config, weights),
        momenta=unflatten_weights(surprise_momentum, batch, config, momenta),
    )
