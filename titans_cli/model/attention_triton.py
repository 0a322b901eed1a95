"""Sliding-window attention with persistent tokens for streaming inference: one Triton kernel in
place of the torch path's cache concatenation, band gather, batched products, mask, softmax and
head transpose (SlidingWindowAttention in blocks.py, one key/value stream).

The computation is the torch path's. Per lane (batch row b, head h) the P new tokens sit at key
indices W .. W+P-1 behind the W cache slots; query i attends to key indices i+1 .. W+i (itself and
the W-1 tokens before it), to a cache slot only where valid[b, slot] (stream start, reset lanes),
and to every persistent token:

    y_i = sum_n softmax_n(q_i . k_n / sqrt(dh)) v_n

The caller rotates the queries and the new keys (RoPE) before the call, once per token
(`SlidingWindowAttention._rotate_queries_and_keys`): inside the kernel every key would be rotated
once per query block that sees it.

One program = one block of BLOCK_M queries of one lane; grid (query blocks, B*H).

- Every score tile is one full-head_dim `tl.dot`, scaled by log2(e)/sqrt(dh) so that the online
  softmax runs on exp2 (running max and running sum in fp32). The running max starts at -1e30, not
  -inf: a row that sees no key in a tile (or a padded row past the piece) never forms inf - inf.
- The persistent tokens come first (n_persistent padded to a power of two >= 16, masked).
- Then the cache slots the block can see (slot > first query of the block; only the first
  ceil(W / BLOCK_M) blocks of a piece have any), in tiles of BLOCK_N; a tile whose slots are all
  invalid (stream start, reset lanes) is skipped.
- Then the new tokens, in tiles of BLOCK_N starting at the block's first visible token (not
  aligned to BLOCK_N): block m sees tokens m BLOCK_M - W + 1 .. m BLOCK_M + BLOCK_M - 1, W +
  BLOCK_M - 1 tokens, so BLOCK_N dividing W + BLOCK_M covers the band with (W + BLOCK_M) / BLOCK_N
  tiles and wastes only the two triangles at its ends.
- The output is written as (B, P, H*dh) contiguous, the layout the output projection reads.
- The new cache (the last W keys and values of [cache | new tokens]) is slice copies in torch:
  B x H x W x dh per tensor, 1/32 of the queries at the dna shape (P = 4096, W = 128).

Products (`KernelOptions.precision`): for fp32 inputs "tf32" (the default, as the memory kernel's
`default_precision`: operands rounded to 10 mantissa bits on the tensor cores, fp32 accumulation)
or "ieee" (true fp32 products on the FMA units, the torch path's arithmetic); bf16/fp16 inputs
multiply in their own dtype on the tensor cores (attention weights rounded to it for the second
product, as FlashAttention does), accumulating in fp32. The output keeps the dtype of the queries,
the new cache that of the new keys / values.

Triton's interpreter (TRITON_INTERPRET=1, the CPU tests) has no tf32: "tf32" computes as "ieee"
there, and bf16/fp16 products are emulated by rounding to the dtype and multiplying in fp32 (its
tl.dot multiplies bf16 tiles as raw integers). Measured under the interpreter with ieee products
(tests/test_attention_triton.py sizes): the output differs from the torch path's by <= 1e-7
absolute (outputs of order 0.3), a tiny MAG model's logits by 1e-7; relative to a float64
reference 0.9-1.3e-7; the new cache's keys by <= 3e-7 (the rotation's complex64 factors, see
SlidingWindowAttention._rotate_queries_and_keys). bf16 inputs: 4.5e-3 relative to float64 on the
same inputs (rounding the output alone gives 1.7e-3; the rest is the weights rounded to bf16),
fp16: 2.4e-4 (2.1e-4). tf32 has not been measured here: on a GPU expect ~1e-3 relative (10-bit
operands); benchmarks/attention_gpu.py reports it against the torch path on the card.

Tiles and warps (`KernelOptions`): `_DEFAULT_TILES`, the fastest of six swept by
benchmarks/attention_gpu.py; the benchmark sweeps them again on any card.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from titans_cli.memory.triton_fused import TRITON_AVAILABLE, _block, elementwise_supported

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

_MAX_HEAD_DIM = 128
_MAX_LANES = 65535  # CUDA's limit on the grid's second axis (batch x heads)
_LOG2_E = 1.4426950408889634

# (block_m, block_n, num_warps, num_stages) for every shape. Chosen by benchmarks/attention_gpu.py
# on one H100 and again on one H200 (2026-11-27): 64 x 32 tiles, 4 warps, 2 stages were the fastest
# of six for both measured shapes (H100: dna 1.01 ms vs 1.33 for 64 x 64; dna-base 2.58 vs 2.92 ms
# per 128 x 4096-token call). block_n = 32 divides W + block_m, so a query block's band is
# (W + 64) / 32 tiles. Other shapes (dna-small) were not measured and take the same.
_DEFAULT_TILES = (64, 32, 4, 2)


@dataclass(frozen=True)
class KernelOptions:
    """How the kernel computes; None fields take the defaults (`resolve`).

    precision: "tf32" | "ieee" for float32 inputs (default "tf32"); ignored for bf16/fp16 inputs,
    which always multiply in their own dtype. block_m: queries per program; block_n: keys per tile
    (powers of two >= 16; clamped to the piece and the band); num_warps, num_stages: Triton's
    launch options. SlidingWindowAttention.triton_options holds one for its triton backend."""

    precision: str | None = None
    block_m: int | None = None
    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None

    def resolve(self, dtype: torch.dtype, head_dim: int, window: int, length: int) -> "KernelOptions":
        """Concrete options for one call: defaults filled in from `_DEFAULT_TILES`, blocks clamped.
        dtype and head_dim do not change the tiles (one set served every measured shape); window and
        length clamp the blocks."""
        precision = self.precision or "tf32"
        if precision not in ("ieee", "tf32"):
            raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
        block_m, block_n, num_warps, num_stages = _DEFAULT_TILES
        block_m, block_n = self.block_m or block_m, self.block_n or block_n
        for name, value in (("block_m", block_m), ("block_n", block_n)):
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")
        # A block longer than the piece, or a tile longer than the band (W + block_m - 1 keys), only
        # adds masked rows and columns.
        block_m = min(block_m, _block(length))
        block_n = min(block_n, _block(window + block_m - 1))
        return KernelOptions(precision, block_m, block_n, self.num_warps or num_warps, self.num_stages or num_stages)


def supported(x: torch.Tensor, n_streams: int, head_dim: int, heads: int) -> tuple[bool, str]:
    """Whether the kernel runs this call (x: the block input (B, P, D)), and why not when it doesn't."""
    ok, reason = elementwise_supported(x)  # triton installed, CUDA (or the interpreter), a float dtype
    if not ok:
        return False, reason
    if torch.is_grad_enabled():
        return False, "autograd is enabled (the kernel has no backward; training uses the torch path)"
    if n_streams != 1:
        return False, f"{n_streams} key/value streams (MAC) use the torch path"
    if head_dim % 2 or head_dim > _MAX_HEAD_DIM:
        return False, f"head_dim {head_dim} is not even and <= {_MAX_HEAD_DIM}"
    if x.shape[0] * heads > _MAX_LANES:
        return False, f"batch x heads = {x.shape[0] * heads} > {_MAX_LANES} (grid limit)"
    return True, ""


if TRITON_AVAILABLE:

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr):
        """a @ b with fp32 accumulation: "ieee" | "tf32" on fp32 tiles, "native" on bf16/fp16 tiles,
        "native-emulated" the same products in fp32 (Triton's interpreter multiplies bf16 tiles as
        raw integers; products of bf16/fp16 values are exact in fp32)."""
        if PRECISION == "native":
            return tl.dot(a, b)
        elif PRECISION == "native-emulated":
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _softmax_step(scores, values, running_max, running_sum, acc, PRECISION: tl.constexpr):
        """Fold one tile of scores (log2 units, masked entries -inf) and its values into the online
        softmax. The weights are rounded to the values' dtype for the product (bf16/fp16 inputs)."""
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp2(running_max - new_max)
        weights = tl.exp2(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(weights, axis=1)
        acc = acc * correction[:, None] + _dot(weights.to(values.dtype), values, PRECISION)
        return new_max, running_sum, acc

    # `length` changes with every piece: not specialised, so one compiled kernel serves every
    # length. The strides are (divisibility by 16 lets the loads vectorise); they change only with
    # the layout, not with the piece length, when the model width is a multiple of 16.
    @triton.jit(do_not_specialize=["length"])
    def _window_attention_kernel(
        q_ptr, k_ptr, v_ptr, ck_ptr, cv_ptr, valid_ptr, pk_ptr, pv_ptr, out_ptr,
        q_sb, q_st, q_sh, q_sc, k_sb, k_st, k_sh, k_sc, v_sb, v_st, v_sh, v_sc,
        ck_sb, ck_sh, ck_sw, ck_sc, cv_sb, cv_sh, cv_sw, cv_sc, valid_sb, valid_sw,
        pk_sn, pk_sh, pk_sc, pv_sn, pv_sh, pv_sc,
        heads, length, n_persistent, score_scale,
        WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_P: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        block = tl.program_id(0)
        lane = tl.program_id(1)
        b = (lane // heads).to(tl.int64)  # batch offsets can pass 2^31 elements
        h = lane % heads
        chan = tl.arange(0, BD)
        chan_ok = chan < HEAD_DIM
        first_row = block * BLOCK_M
        rows = first_row + tl.arange(0, BLOCK_M)
        row_ok = rows < length
        q = tl.load(q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_st + chan[None, :] * q_sc,
                    mask=row_ok[:, None] & chan_ok[None, :], other=0.0)
        running_max = tl.full((BLOCK_M,), -1.0e30, tl.float32)
        running_sum = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BD), tl.float32)

        # Each section names its own tiles (p_*, c_scores, ...): BLOCK_P and BLOCK_N may differ, and
        # Triton refuses a name redefined with another shape inside an `if` or a loop.
        # Persistent tokens: shared by every lane, never masked.
        if n_persistent > 0:
            p_slots = tl.arange(0, BLOCK_P)
            p_ok = p_slots < n_persistent
            p_mask = p_ok[:, None] & chan_ok[None, :]
            p_keys = tl.load(pk_ptr + h * pk_sh + p_slots[:, None] * pk_sn + chan[None, :] * pk_sc,
                             mask=p_mask, other=0.0)
            p_values = tl.load(pv_ptr + h * pv_sh + p_slots[:, None] * pv_sn + chan[None, :] * pv_sc,
                               mask=p_mask, other=0.0)
            p_scores = _dot(q, tl.trans(p_keys.to(q.dtype)), PRECISION) * score_scale
            p_scores = tl.where(p_ok[None, :], p_scores, float("-inf"))
            running_max, running_sum, acc = _softmax_step(p_scores, p_values.to(v_ptr.dtype.element_ty), running_max,
                                                          running_sum, acc, PRECISION)  # fmt: skip

        # Cache slots first_row+1 .. W-1 (query i sees slot s iff s > i and the slot is valid).
        ck_lane = ck_ptr + b * ck_sb + h * ck_sh
        cv_lane = cv_ptr + b * cv_sb + h * cv_sh
        for start in range(first_row + 1, WINDOW, BLOCK_N):
            slots = start + tl.arange(0, BLOCK_N)
            slot_ok = slots < WINDOW
            valid = tl.load(valid_ptr + b * valid_sb + slots * valid_sw, mask=slot_ok, other=0) != 0
            if tl.max(valid.to(tl.int32), axis=0) > 0:  # all slots empty: nothing to see
                c_mask = slot_ok[:, None] & chan_ok[None, :]
                c_keys = tl.load(ck_lane + slots[:, None] * ck_sw + chan[None, :] * ck_sc, mask=c_mask, other=0.0)
                c_values = tl.load(cv_lane + slots[:, None] * cv_sw + chan[None, :] * cv_sc, mask=c_mask, other=0.0)
                c_scores = _dot(q, tl.trans(c_keys.to(q.dtype)), PRECISION) * score_scale
                visible = valid[None, :] & (slots[None, :] > rows[:, None])
                c_scores = tl.where(visible, c_scores, float("-inf"))
                running_max, running_sum, acc = _softmax_step(c_scores, c_values.to(v_ptr.dtype.element_ty), running_max,
                                                              running_sum, acc, PRECISION)  # fmt: skip

        # New tokens first_row-W+1 .. first_row+BLOCK_M-1 (query i sees token t iff i-W < t <= i).
        k_lane = k_ptr + b * k_sb + h * k_sh
        v_lane = v_ptr + b * v_sb + h * v_sh
        end = tl.minimum(first_row + BLOCK_M, length)
        for start in range(tl.maximum(first_row + 1 - WINDOW, 0), end, BLOCK_N):
            tokens = start + tl.arange(0, BLOCK_N)
            mask = (tokens < end)[:, None] & chan_ok[None, :]
            keys = tl.load(k_lane + tokens[:, None] * k_st + chan[None, :] * k_sc, mask=mask, other=0.0)
            values = tl.load(v_lane + tokens[:, None] * v_st + chan[None, :] * v_sc, mask=mask, other=0.0)
            scores = _dot(q, tl.trans(keys), PRECISION) * score_scale
            # Rows past the piece see the zero keys past it; they are never stored.
            behind = rows[:, None] - tokens[None, :]
            scores = tl.where((behind >= 0) & (behind < WINDOW), scores, float("-inf"))
            running_max, running_sum, acc = _softmax_step(scores, values, running_max, running_sum, acc, PRECISION)

        out = acc / tl.where(running_sum > 0, running_sum, 1.0)[:, None]
        out_rows = out_ptr + (b * length + rows[:, None]) * (heads * HEAD_DIM) + h * HEAD_DIM + chan[None, :]
        tl.store(out_rows, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & chan_ok[None, :])


def _kernel_precision(precision: str, dtype: torch.dtype, device: torch.device) -> str:
    if dtype in (torch.bfloat16, torch.float16):
        return "native" if device.type == "cuda" else "native-emulated"
    return precision if device.type == "cuda" else "ieee"  # the interpreter has no tf32


def _last_window(cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The last W entries of [cache (B, H, W, dh) | new (B, P, H, dh)] as (B, H, W, 1, dh) in new's dtype."""
    batch, length, heads, head_dim = new.shape
    window = cache.shape[2]
    kept = max(window - length, 0)  # cache slots that survive, shifted down by P
    last = torch.empty(batch, heads, window, 1, head_dim, device=new.device, dtype=new.dtype)
    last[:, :, :kept, 0] = cache[:, :, window - kept :]
    last[:, :, kept:, 0] = new[:, length - (window - kept) :].transpose(1, 2)
    return last


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache_keys: torch.Tensor,
    cache_values: torch.Tensor,
    valid: torch.Tensor,
    persistent_keys: torch.Tensor,
    persistent_values: torch.Tensor,
    options: KernelOptions | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One call of sliding-window attention on a piece of P new tokens (see the module docstring).

    q, k, v: the new tokens' queries and keys, ROTATED, and values, (B, P, H, dh) with any strides
    (e.g. views of one linear output). cache_keys / cache_values: (B, H, W, dh), keys rotated;
    valid: (B, W) bool. persistent_keys / persistent_values: (n_persistent, H, dh), not rotated.
    options: precision and tiling (KernelOptions; None: the defaults).

    Returns out (B, P, H*dh) in q's dtype and the new cache's keys and values (B, H, W, 1, dh) in
    k's / v's dtype: the last W of [cache | new tokens]. The cache's valid flags and position are
    the caller's (they need no kernel)."""
    batch, length, heads, head_dim = q.shape
    window = cache_keys.shape[2]
    n_persistent = persistent_keys.shape[0]
    device = q.device
    options = (options or KernelOptions()).resolve(q.dtype, head_dim, window, length)
    new_keys, new_values = _last_window(cache_keys, k), _last_window(cache_values, v)
    out = torch.empty(batch, length, heads * head_dim, device=device, dtype=q.dtype)
    if length == 0 or batch * heads == 0:
        return out, new_keys, new_values

    valid = valid.view(torch.uint8)
    grid = (triton.cdiv(length, options.block_m), batch * heads)
    _window_attention_kernel[grid](
        q, k, v, cache_keys, cache_values, valid, persistent_keys, persistent_values, out,
        *q.stride(), *k.stride(), *v.stride(), *cache_keys.stride(), *cache_values.stride(), *valid.stride(),
        *persistent_keys.stride(), *persistent_values.stride(),
        heads, length, n_persistent, head_dim**-0.5 * _LOG2_E,
        WINDOW=window, HEAD_DIM=head_dim, BLOCK_M=options.block_m, BLOCK_N=options.block_n,
        BLOCK_P=_block(n_persistent), BD=_block(head_dim),
        PRECISION=_kernel_precision(options.precision, q.dtype, device),
        num_warps=options.num_warps, num_stages=options.num_stages,
    )  # fmt: skip
    return out, new_keys, new_values
