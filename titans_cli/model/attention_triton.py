"""Sliding-window attention with persistent tokens for streaming inference: one Triton kernel in
place of the torch path's rotary, cache concatenation, band gather, batched products, mask,
softmax and head transpose (SlidingWindowAttention in blocks.py, one key/value stream).

The computation is the torch path's. Per lane (batch row b, head h) the P new tokens sit at key
indices W .. W+P-1 behind the W cache slots; query i attends to key indices i+1 .. W+i (itself and
the W-1 tokens before it), to a cache slot only where valid[b, slot] (stream start, reset lanes),
and to every persistent token:

    y_i = sum_n softmax_n(q_i . k_n / sqrt(dh)) v_n

One program = one block of BLOCK_M queries of one lane; grid (query blocks, B*H).

- Rotary (RoPE on adjacent channel pairs, as `apply_rotary`) is applied in the kernel to the
  queries and the new keys. Channels are loaded as an even and an odd half, so a rotation is
  (e cos - o sin, e sin + o cos) and q . k is the sum of the two half products (no interleave).
  cos/sin of (position[b] + i) f come from two float32 tables formed in float64 (see `rotary`):
  one row per lane for position[b] f, one per offset for i f, combined by the angle-sum identity.
- The persistent tokens come first (n_persistent padded to a power of two >= 16, masked), then
  key tiles of BLOCK_N from key index m BLOCK_M (rounded down to a tile) to m BLOCK_M + BLOCK_M - 1
  + W, the span query block m can see. A tile reads its cache part and its new part from their
  own tensors under complementary masks, so the piece is never concatenated; the band, the valid
  flags and the end of the piece make one mask.
- Online softmax in fp32 (running max and running sum). The running max starts at -1e30, not
  -inf: a row that sees no key in a tile (or a padded row past the piece) never forms inf - inf.
- Each new token lies in exactly one program's own query rows; that program writes its rotated key
  and its value to the new cache when it is among the last W tokens of the piece.
- The output is written as (B, P, H*dh) contiguous, the layout the output projection reads.

Products are tl.dot with fp32 operands and fp32 accumulation: "ieee" (true fp32, the default, as
the torch path computes in float32) or "tf32". bf16/fp16 inputs are widened to fp32 on load; the
output and the new cache keep the dtype of the new tokens.
"""

from __future__ import annotations

import torch

from titans_cli.memory.triton_fused import TRITON_AVAILABLE, _block, _interpreting

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

_MAX_HEAD_DIM = 128
_MAX_LANES = 65535  # CUDA's limit on the grid's second axis (batch x heads)
# Queries per program and keys per tile (a first choice, not yet tuned by measurement). At window
# 128 a block of 64 queries walks 3 key tiles of 64 (192 keys for 64 x 128 visible pairs).
_BLOCK_M, _BLOCK_N = 64, 64


def supported(x: torch.Tensor, n_streams: int, head_dim: int, heads: int) -> tuple[bool, str]:
    """Whether the kernel runs this call (x: the block input (B, P, D)), and why not when it doesn't."""
    if not TRITON_AVAILABLE:
        return False, "triton is not installed"
    if x.device.type != "cuda" and not _interpreting():
        return False, "the Triton kernel runs on CUDA (or on CPU under TRITON_INTERPRET=1)"
    if torch.is_grad_enabled():
        return False, "autograd is enabled (the kernel has no backward; training uses the torch path)"
    if n_streams != 1:
        return False, f"{n_streams} key/value streams (MAC) use the torch path"
    if head_dim % 2 or head_dim > _MAX_HEAD_DIM:
        return False, f"head_dim {head_dim} is not even and <= {_MAX_HEAD_DIM}"
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False, f"dtype {x.dtype} (the kernel takes float32, bfloat16 or float16)"
    if x.shape[0] * heads > _MAX_LANES:
        return False, f"batch x heads = {x.shape[0] * heads} > {_MAX_LANES} (grid limit)"
    return True, ""


if TRITON_AVAILABLE:

    @triton.jit
    def _rotation(offset_ptr, index, ok, lane_cos, lane_sin, half, half_ok, head_dim):
        """cos and sin of (position[b] + index) f, (N, half dims): cos(a + c) = cos a cos c - sin a sin c."""
        rows = offset_ptr + index[:, None] * head_dim + 2 * half[None, :]
        mask = ok[:, None] & half_ok[None, :]
        offset_cos = tl.load(rows, mask=mask, other=1.0)
        offset_sin = tl.load(rows + 1, mask=mask, other=0.0)
        cos = lane_cos[None, :] * offset_cos - lane_sin[None, :] * offset_sin
        sin = lane_sin[None, :] * offset_cos + lane_cos[None, :] * offset_sin
        return cos, sin

    @triton.jit
    def _softmax_step(scores, values, running_max, running_sum, acc, PRECISION: tl.constexpr):
        """Fold one tile of scores (masked entries -inf) and its values into the online softmax."""
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp(running_max - new_max)
        weights = tl.exp(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(weights, axis=1)
        acc = acc * correction[:, None] + tl.dot(weights, values, input_precision=PRECISION)
        return new_max, running_sum, acc

    # `length` and the batch strides of the new tokens scale with the piece: not specialised, so
    # one compiled kernel serves every piece length.
    @triton.jit(do_not_specialize=["length", "q_sb", "k_sb", "v_sb"])
    def _window_attention_kernel(
        q_ptr, k_ptr, v_ptr, ck_ptr, cv_ptr, valid_ptr, pk_ptr, pv_ptr, lane_rot_ptr, offset_rot_ptr,
        out_ptr, nk_ptr, nv_ptr,
        q_sb, q_st, q_sh, q_sc, k_sb, k_st, k_sh, k_sc, v_sb, v_st, v_sh, v_sc,
        ck_sb, ck_sh, ck_sw, ck_sc, cv_sb, cv_sh, cv_sw, cv_sc, valid_sb, valid_sw,
        pk_sn, pk_sh, pk_sc, pv_sn, pv_sh, pv_sc,
        heads, length, window, head_dim, n_persistent, scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BD: tl.constexpr,
        BD2: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        block = tl.program_id(0)
        lane = tl.program_id(1)
        b = (lane // heads).to(tl.int64)  # batch offsets can pass 2^31 elements
        h = lane % heads
        half = tl.arange(0, BD2)
        half_ok = half < head_dim // 2
        chan = tl.arange(0, BD)
        chan_ok = chan < head_dim
        lane_cos = tl.load(lane_rot_ptr + b * head_dim + 2 * half, mask=half_ok, other=1.0)
        lane_sin = tl.load(lane_rot_ptr + b * head_dim + 2 * half + 1, mask=half_ok, other=0.0)

        # Queries of this block, rotated and scaled: even and odd channel halves (BLOCK_M, BD2).
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < length
        q_rows = q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_st + (2 * half[None, :]) * q_sc
        q_mask = row_ok[:, None] & half_ok[None, :]
        q_even = tl.load(q_rows, mask=q_mask, other=0.0).to(tl.float32)
        q_odd = tl.load(q_rows + q_sc, mask=q_mask, other=0.0).to(tl.float32)
        cos, sin = _rotation(offset_rot_ptr, rows, row_ok, lane_cos, lane_sin, half, half_ok, head_dim)
        q_even, q_odd = (q_even * cos - q_odd * sin) * scale, (q_even * sin + q_odd * cos) * scale

        running_max = tl.full((BLOCK_M,), -1.0e30, tl.float32)
        running_sum = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BD), tl.float32)

        # Persistent tokens: shared by every lane, never masked, not rotated.
        if n_persistent > 0:
            slots = tl.arange(0, BLOCK_P)
            slot_ok = slots < n_persistent
            p_rows = pk_ptr + h * pk_sh + slots[:, None] * pk_sn + (2 * half[None, :]) * pk_sc
            p_mask = slot_ok[:, None] & half_ok[None, :]
            p_even = tl.load(p_rows, mask=p_mask, other=0.0).to(tl.float32)
            p_odd = tl.load(p_rows + pk_sc, mask=p_mask, other=0.0).to(tl.float32)
            p_values = tl.load(pv_ptr + h * pv_sh + slots[:, None] * pv_sn + chan[None, :] * pv_sc,
                               mask=slot_ok[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)
            p_scores = tl.dot(q_even, tl.trans(p_even), input_precision=PRECISION)
            p_scores += tl.dot(q_odd, tl.trans(p_odd), input_precision=PRECISION)
            p_scores = tl.where(slot_ok[None, :], p_scores, float("-inf"))
            running_max, running_sum, acc = _softmax_step(p_scores, p_values, running_max, running_sum, acc, PRECISION)

        # Key tiles over [cache (W slots) | new tokens (P)]: query i sees key indices i+1 .. W+i.
        first = (block * BLOCK_M) // BLOCK_N * BLOCK_N
        last = tl.minimum(block * BLOCK_M + BLOCK_M - 1 + window, window + length - 1)
        own_start = block * BLOCK_M + window  # key index of this block's first own token
        ck_lane = ck_ptr + b * ck_sb + h * ck_sh
        cv_lane = cv_ptr + b * cv_sb + h * cv_sh
        k_lane = k_ptr + b * k_sb + h * k_sh
        v_lane = v_ptr + b * v_sb + h * v_sh
        for start in range(first, last + 1, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            token = keys - window
            in_cache = keys < window
            is_new = (keys >= window) & (token < length)
            cache_mask = in_cache[:, None] & half_ok[None, :]
            new_mask = is_new[:, None] & half_ok[None, :]
            cache_rows = ck_lane + keys[:, None] * ck_sw + (2 * half[None, :]) * ck_sc
            new_rows = k_lane + token[:, None] * k_st + (2 * half[None, :]) * k_sc
            new_even = tl.load(new_rows, mask=new_mask, other=0.0).to(tl.float32)
            new_odd = tl.load(new_rows + k_sc, mask=new_mask, other=0.0).to(tl.float32)
            k_cos, k_sin = _rotation(offset_rot_ptr, token, is_new, lane_cos, lane_sin, half, half_ok, head_dim)
            new_even, new_odd = new_even * k_cos - new_odd * k_sin, new_even * k_sin + new_odd * k_cos
            k_even = tl.load(cache_rows, mask=cache_mask, other=0.0).to(tl.float32) + new_even
            k_odd = tl.load(cache_rows + ck_sc, mask=cache_mask, other=0.0).to(tl.float32) + new_odd
            new_values = tl.load(v_lane + token[:, None] * v_st + chan[None, :] * v_sc,
                                 mask=is_new[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)
            values = new_values + tl.load(cv_lane + keys[:, None] * cv_sw + chan[None, :] * cv_sc,
                                          mask=in_cache[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)
            valid = tl.load(valid_ptr + b * valid_sb + keys * valid_sw, mask=in_cache, other=0) != 0

            scores = tl.dot(q_even, tl.trans(k_even), input_precision=PRECISION)
            scores += tl.dot(q_odd, tl.trans(k_odd), input_precision=PRECISION)
            offset = keys[None, :] - rows[:, None]
            visible = (offset >= 1) & (offset <= window) & (valid | is_new)[None, :]
            scores = tl.where(visible, scores, float("-inf"))
            running_max, running_sum, acc = _softmax_step(scores, values, running_max, running_sum, acc, PRECISION)

            # This block's own tokens among the last W of the piece go to the new cache.
            if start + BLOCK_N > own_start:
                slot = token - (length - window)
                own = is_new & (keys >= own_start) & (keys < own_start + BLOCK_M) & (slot >= 0)
                key_rows = nk_ptr + ((b * heads + h) * window + slot[:, None]) * head_dim + 2 * half[None, :]
                own_mask = own[:, None] & half_ok[None, :]
                tl.store(key_rows, new_even.to(nk_ptr.dtype.element_ty), mask=own_mask)
                tl.store(key_rows + 1, new_odd.to(nk_ptr.dtype.element_ty), mask=own_mask)
                tl.store(nv_ptr + ((b * heads + h) * window + slot[:, None]) * head_dim + chan[None, :],
                         new_values.to(nv_ptr.dtype.element_ty), mask=own[:, None] & chan_ok[None, :])

        # Padded rows past the piece saw no key (sum 0); they are not stored.
        out = acc / tl.where(running_sum > 0, running_sum, 1.0)[:, None]
        out_rows = out_ptr + (b * length + rows[:, None]) * (heads * head_dim) + h * head_dim + chan[None, :]
        tl.store(out_rows, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & chan_ok[None, :])


def _kernel_precision(precision: str, device: torch.device) -> str:
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    return precision if device.type == "cuda" else "ieee"  # the interpreter computes in fp32 either way


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache_keys: torch.Tensor,
    cache_values: torch.Tensor,
    valid: torch.Tensor,
    persistent_keys: torch.Tensor,
    persistent_values: torch.Tensor,
    lane_rotation: torch.Tensor,
    offset_rotation: torch.Tensor,
    precision: str = "ieee",
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One call of sliding-window attention on a piece of P new tokens (see the module docstring).

    q, k, v: the new tokens' projections, not rotated, (B, P, H, dh) with any strides (e.g. views
    of the linear outputs). cache_keys / cache_values: (B, H, W, dh), keys already rotated; valid:
    (B, W) bool. persistent_keys / persistent_values: (n_persistent, H, dh). lane_rotation:
    (B, dh/2, 2) float32 [cos, sin] of position[b] f; offset_rotation: (>= P, dh/2, 2) float32
    [cos, sin] of i f (both formed in float64, as `blocks.rotary`).

    Returns out (B, P, H*dh) in q's dtype and the new cache's keys and values (B, H, W, 1, dh) in
    k's dtype: the last W keys (rotated) and values of [cache | new tokens]. The cache's valid
    flags and position are the caller's (they need no kernel). block_m (queries per program,
    default min(64, P rounded up to a power of two >= 16)) and block_n (keys per tile, default 64)
    change only the tiling; precision "ieee" | "tf32" (tf32 computes as ieee off CUDA)."""
    batch, length, heads, head_dim = q.shape
    window = cache_keys.shape[2]
    n_persistent = persistent_keys.shape[0]
    device = q.device
    out = torch.empty(batch, length, heads * head_dim, device=device, dtype=q.dtype)
    new_keys = torch.empty(batch, heads, window, 1, head_dim, device=device, dtype=k.dtype)
    new_values = torch.empty(batch, heads, window, 1, head_dim, device=device, dtype=v.dtype)
    if length < window:  # the surviving cache slots shift down by P; the kernel writes the rest
        new_keys[:, :, : window - length, 0] = cache_keys[:, :, length:]
        new_values[:, :, : window - length, 0] = cache_values[:, :, length:]
    if length == 0 or batch * heads == 0:
        return out, new_keys, new_values

    block_m = block_m or min(_BLOCK_M, _block(length))
    block_n = block_n or _BLOCK_N
    lane_rotation = lane_rotation.to(torch.float32).contiguous()
    offset_rotation = offset_rotation[:length].to(torch.float32).contiguous()
    valid = valid.view(torch.uint8)
    grid = (triton.cdiv(length, block_m), batch * heads)
    _window_attention_kernel[grid](
        q, k, v, cache_keys, cache_values, valid, persistent_keys, persistent_values, lane_rotation, offset_rotation,
        out, new_keys, new_values,
        *q.stride(), *k.stride(), *v.stride(), *cache_keys.stride(), *cache_values.stride(), *valid.stride(),
        *persistent_keys.stride(), *persistent_values.stride(),
        heads, length, window, head_dim, n_persistent, head_dim**-0.5,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=_block(n_persistent), BD=_block(head_dim),
        BD2=_block(head_dim // 2), PRECISION=_kernel_precision(precision, device), num_warps=num_warps,
    )  # fmt: skip
    return out, new_keys, new_values
