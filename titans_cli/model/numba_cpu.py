"""Numba kernels for the blocks' CPU inference path (the torch path is the definition; the tests
hold the two together): sliding-window attention, the MAG gate mix, the SwiGLU activation.

Attention, one kernel per (batch row, head): the same computation as
`SlidingWindowAttention.forward` (blocks.py): rotary on the queries and the new keys, each query
scoring the persistent keys and the keys of its window (positions t - W + 1 .. t, each with its
`streams` keys), a softmax, the weighted sum of values. Like the torch form it takes queries in
blocks and scores each block against the span of keys the block needs, but reads that span in
place (the torch form gathers a copy of it per block, then runs a batched product, a full-width
softmax and a masked fill over a (B, H, blocks, block, keys) tensor), takes the softmax over each
query's band only, and keeps the block's scores in one reused buffer. Layouts: `query` (P, D) and `key_value` (S, P, 2D) are the projections of one batch
row (head h in columns h*dh .. (h+1)*dh, values after the D key columns); the cache rows (W*S, dh)
are position-major, stream-minor, already rotated, as AttentionCache stores them.

The elementwise kernels replace chains of torch ops, each a pass over a (P, D) tensor, by one
pass: the MAG mix `x + σ(g)·norm_a(a) + (1 - σ(g))·norm_m(m)` followed by the FFN's RMSNorm, and
SwiGLU's `silu(gate) · up`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from titans_cli.memory.numba_cpu import _silu_sigmoid, exp_in_place

# Reassociation lets the reductions (max, sums) vectorise; no nnan/ninf: masked keys are -inf.
_FASTMATH = {"reassoc", "contract", "nsz"}
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _softmax_in_place(first, second, bits):
    """softmax over the concatenation of two score vectors, in place; -inf (masked) entries
    become exactly 0."""
    largest = first[0]
    for j in range(first.shape[0]):
        largest = max(largest, first[j])
    for j in range(second.shape[0]):
        largest = max(largest, second[j])
    total = _ZERO
    for part in (first, second):
        for j in range(part.shape[0]):
            part[j] -= largest
        exp_in_place(part, bits)
        for j in range(part.shape[0]):
            total += part[j]
    inverse = _ONE / total
    for part in (first, second):
        for j in range(part.shape[0]):
            part[j] *= inverse


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _rotate_rows(source, column, rotation, scale, target, first_row, step):
    """target[first_row + t * step, :] = rotary(source[t, column : column + dh]) * scale: adjacent
    channel pairs times the complex rotation (cos, sin) = rotation[t, m]."""
    for t in range(source.shape[0]):
        row, target_row, turn = source[t], target[first_row + t * step], rotation[t]
        for m in range(turn.shape[0]):
            a, b = row[column + 2 * m], row[column + 2 * m + 1]
            c, s = turn[m, 0], turn[m, 1]
            target_row[2 * m] = (a * c - b * s) * scale
            target_row[2 * m + 1] = (a * s + b * c) * scale


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def attend_lane(
    query, key_value, head, cache_keys, cache_values, valid, rotation,
    persistent_keys, persistent_values, scale, out, new_keys, new_values,
):  # fmt: skip
    """One (batch row, head): writes out[:, head*dh:(head+1)*dh] and the next cache rows.

    query (P, D) and key_value (S, P, 2D): the projections of the batch row; cache_keys/values
    (W*S, dh), valid (W,) bool; rotation (P, dh/2, 2): (cos, sin) per position and channel pair;
    persistent_keys (dh, n_p) (transposed), persistent_values (n_p, dh); out (P, D);
    new_keys/new_values (W*S, dh)."""
    length, model_dim = query.shape[0], query.shape[1]
    streams = key_value.shape[0]
    window, head_dim = valid.shape[0], cache_keys.shape[1]
    n_persistent = persistent_values.shape[0]
    column = head * head_dim
    rows = (window + length) * streams
    band = window * streams

    # Key and value rows: the cached window, then the new tokens' (keys rotated); queries rotated
    # and scaled as the torch path does (q * dh^-0.5 before the product).
    keys = np.empty((rows, head_dim), dtype=np.float32)
    values = np.empty((rows, head_dim), dtype=np.float32)
    keys[:band] = cache_keys
    values[:band] = cache_values
    for s in range(streams):
        _rotate_rows(key_value[s], column, rotation, _ONE, keys, band + s, streams)
        for t in range(length):
            values[band + t * streams + s] = key_value[s, t, model_dim + column : model_dim + column + head_dim]
    new_keys[:] = keys[rows - band :]
    new_values[:] = values[rows - band :]
    queries = np.empty((length, head_dim), dtype=np.float32)
    _rotate_rows(query, column, rotation, scale, queries, 0, 1)

    all_valid = True
    for i in range(window):
        all_valid = all_valid and valid[i]
    # Query blocks of `block`: block [t0, t0 + b) scores the keys of positions t0 + 1 .. t0 + b - 1 + W
    # in one matrix product (query i of the block sees the W*S keys from i*S on; the rest get
    # weight 0), the persistent keys in another; then the softmax of each row over its band, and
    # the values in two more products.
    block = 64
    most_keys = (block - 1) * streams + band
    score_buffer = np.empty(block * most_keys, dtype=np.float32)
    persistent_buffer = np.empty(block * n_persistent, dtype=np.float32)
    out_buffer = np.empty(block * head_dim, dtype=np.float32)
    persistent_out_buffer = np.empty(block * head_dim, dtype=np.float32)
    bits = np.empty(most_keys, dtype=np.int32)
    negative_infinity = np.float32(-np.inf)
    for t0 in range(0, length, block):
        count = min(block, length - t0)
        first = (t0 + 1) * streams
        n_keys = (count - 1) * streams + band
        scores = score_buffer[: count * n_keys].reshape(count, n_keys)
        np.dot(queries[t0 : t0 + count], keys[first : first + n_keys].T, scores)
        persistent_scores = persistent_buffer[: count * n_persistent].reshape(count, n_persistent)
        np.dot(queries[t0 : t0 + count], persistent_keys, persistent_scores)
        for i in range(count):
            row = scores[i]
            window_scores = row[i * streams : i * streams + band]
            t = t0 + i
            if not all_valid and t + 1 < window:  # cache slots not yet filled (stream start, reset lanes)
                for j in range(band):
                    position = t + 1 + j // streams
                    if position < window and not valid[position]:
                        window_scores[j] = negative_infinity
            _softmax_in_place(persistent_scores[i], window_scores, bits)
            row[: i * streams] = _ZERO
            row[i * streams + band :] = _ZERO
        read = out_buffer[: count * head_dim].reshape(count, head_dim)
        np.dot(scores, values[first : first + n_keys], read)
        persistent_read = persistent_out_buffer[: count * head_dim].reshape(count, head_dim)
        np.dot(persistent_scores, persistent_values, persistent_read)
        for i in range(count):
            target, a, b = out[t0 + i, column : column + head_dim], persistent_read[i], read[i]
            for e in range(head_dim):
                target[e] = a[e] + b[e]


def sliding_window_attention(query, key_values, cache_keys, cache_values, valid, rotation, persistent_keys,
                             persistent_values, scale):
    """Every (batch row, head) lane: query (B, P, D), key_values (B, S, P, 2D) (the projections),
    cache (B, H, W, S, dh), valid (B, W), rotation (B, P, dh/2, 2), persistent keys and values
    (H, n_p, dh), all float32 numpy arrays. Returns (out (B, P, D), new cache keys and values
    (B, H, W, S, dh)). Lanes run on the memory kernels' pool (one after another inside
    numba_cpu.sequential_lanes), BLAS on one thread."""
    from titans_cli.memory.numba_cpu import blas_limited, map_lanes

    batch, length, model_dim = query.shape
    heads, window, streams, head_dim = cache_keys.shape[1], cache_keys.shape[2], cache_keys.shape[3], cache_keys.shape[4]
    out = np.empty((batch, length, model_dim), dtype=np.float32)
    new_keys = np.empty_like(cache_keys)
    new_values = np.empty_like(cache_values)
    persistent_keys_t = np.ascontiguousarray(persistent_keys.transpose(0, 2, 1))
    scale = np.float32(scale)

    def job(lane):
        b, h = divmod(lane, heads)
        attend_lane(
            query[b], key_values[b], h,
            cache_keys[b, h].reshape(window * streams, head_dim), cache_values[b, h].reshape(window * streams, head_dim),
            valid[b], rotation[b], persistent_keys_t[h], persistent_values[h], scale, out[b],
            new_keys[b, h].reshape(window * streams, head_dim), new_values[b, h].reshape(window * streams, head_dim),
        )  # fmt: skip

    with blas_limited():
        map_lanes(job, batch * heads)
    return out, new_keys, new_values


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _rms_scale(row, eps):
    """1 / sqrt(mean(row^2) + eps), as torch.nn.RMSNorm."""
    total = _ZERO
    for c in range(row.shape[0]):
        total += row[c] * row[c]
    return _ONE / np.float32(math.sqrt(total / row.shape[0] + eps))


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def mag_mix(x, attended, remembered, gate_pre, attention_weight, memory_weight, ffn_weight, eps, mixed, ffn_input):
    """MAGBlock's mix and the FFN's input norm, rows (N, D):
    mixed = x + g·RMSNorm_a(attended) + (1 - g)·RMSNorm_m(remembered) with g = σ(gate_pre), and
    ffn_input = RMSNorm_ffn(mixed)."""
    rows, width = x.shape
    gate = np.empty(width, dtype=np.float32)
    silu = np.empty(width, dtype=np.float32)
    bits = np.empty(width, dtype=np.int32)
    for t in range(rows):
        _silu_sigmoid(gate_pre[t], silu, gate, bits, 0, 0, width)
        a_row, m_row, x_row, out = attended[t], remembered[t], x[t], mixed[t]
        a_scale, m_scale = _rms_scale(a_row, eps), _rms_scale(m_row, eps)
        for c in range(width):
            g = gate[c]
            out[c] = x_row[c] + (g * (a_row[c] * a_scale * attention_weight[c]) + (_ONE - g) * (m_row[c] * m_scale * memory_weight[c]))
        scale = _rms_scale(out, eps)
        normed = ffn_input[t]
        for c in range(width):
            normed[c] = out[c] * scale * ffn_weight[c]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def swiglu(gate_up, out):
    """out = silu(gate) · up for gate_up = [gate | up], rows (N, 2F) -> (N, F)."""
    rows, width = out.shape
    sigmoid = np.empty(width, dtype=np.float32)
    bits = np.empty(width, dtype=np.int32)
    for t in range(rows):
        row, target = gate_up[t], out[t]
        _silu_sigmoid(row, target, sigmoid, bits, 0, 0, width)
        for c in range(width):
            target[c] *= row[width + c]
