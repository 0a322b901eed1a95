"""The read y_t = M0(q_t) and its adjoint, for every (lane, chunk) at once.

Tokens of a chunk read the chunk-start memory M0 (MEMORY_MATH.md), so the read is not part of the
chunk recurrence: given the chunk-start W1, W2 that the recurrence kernels store (triton_split's
`SAVES`, the backward's checkpoints), every chunk's read is independent of every other. Here it runs
as one program per (lane, chunk), thousands of programs instead of the recurrence's few dozen, and
the recurrence keeps only what the next chunk needs (keys forward, δ's, update):

    forward    z_q = q W1ᵀ,  y = σ(z_q) z_q W2ᵀ                                    (SiLU memory, depth 2)
    backward   ∂z_q = (∂y W2) ⊙ SiLU'(z_q),  ∂q = ∂z_q W1,
               ∂W1 += ∂z_qᵀ q,  ∂W2 += ∂yᵀ SiLU(z_q)        (the chunk-start state's share, per chunk)

The hidden units go in slices of HB in the order p = 0..P-1, as the split kernel adds its parts, so
the read equals the split kernel's in-loop read bit for bit. The backward kernel adds each chunk's
state share (`read_adjoints`) to its state adjoint as it walks the chunks in reverse.
"""

from __future__ import annotations

import torch

from .triton_fused import _LENGTH_DEPENDENT, TRITON_AVAILABLE, _block, lane_strides

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    from .triton_fused import _lane_offset, _mm, _slice_tiles

    @triton.jit
    def _read_chunk(q_ptr, st_ptr, o_ptr, lane, c, q_sb, q_sh, q_st, o_sb, o_sh, o_st, num_heads, length, chunk,
                    head_dim, hidden, saves, BT: tl.constexpr, BD: tl.constexpr, HB: tl.constexpr,
                    SLICES: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr):
        """y = SiLU(q W1ᵀ) W2ᵀ for the tokens of chunk c of a lane, from that chunk's start W1, W2 (the
        first two of the `saves` matrices per (lane, chunk) at st_ptr), in hidden slices of HB."""
        row = lane // num_heads
        head = lane % num_heads
        rt = tl.arange(0, BT)
        rd = tl.arange(0, BD)
        pos = c * chunk + rt
        tok_mask = ((rt < chunk) & (pos < length))[:, None] & (rd < head_dim)[None, :]
        queries = tl.load(q_ptr + _lane_offset(row, head, q_sb, q_sh, ALIGNED) + pos[:, None] * q_st + rd[None, :],
                          mask=tok_mask, other=0.0).to(tl.float32)
        matrix = hidden * head_dim
        st = st_ptr + (lane * tl.cdiv(length, chunk) + c) * saves * matrix
        read = tl.zeros((BT, BD), tl.float32)
        for p in tl.static_range(SLICES):
            loc1, mask1, loc2, mask2 = _slice_tiles(p * HB + tl.arange(0, HB), rd, rd < head_dim, hidden, head_dim)
            w1 = tl.load(st + loc1, mask=mask1, other=0.0).to(tl.float32)
            w2 = tl.load(st + matrix + loc2, mask=mask2, other=0.0).to(tl.float32)
            zq = _mm(queries, tl.trans(w1), PRECISION)
            read += _mm(zq * tl.sigmoid(zq), tl.trans(w2), PRECISION)
        tl.store(o_ptr + _lane_offset(row, head, o_sb, o_sh, ALIGNED) + pos[:, None] * o_st + rd[None, :],
                 read.to(o_ptr.dtype.element_ty), mask=tok_mask)

    @triton.jit(do_not_specialize=_LENGTH_DEPENDENT)
    def _memory_read_kernel(
        q_ptr, st_ptr, o_ptr,
        q_sb, q_sh, q_st, o_sb, o_sh, o_st, num_heads, length, chunk, head_dim, hidden, saves,
        BT: tl.constexpr, BD: tl.constexpr, HB: tl.constexpr, SLICES: tl.constexpr, PRECISION: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        _read_chunk(q_ptr, st_ptr, o_ptr, tl.program_id(0), tl.program_id(1), q_sb, q_sh, q_st, o_sb, o_sh, o_st,
                    num_heads, length, chunk, head_dim, hidden, saves, BT, BD, HB, SLICES, PRECISION, ALIGNED)

    @triton.jit(do_not_specialize=_LENGTH_DEPENDENT)
    def _memory_read_backward_kernel(
        q_ptr, ckpt_ptr, do_ptr, dq_ptr, ra_ptr,
        q_sb, q_sh, q_st, do_sb, do_sh, do_st, num_heads, length, chunk, head_dim, hidden,
        BT: tl.constexpr, BD: tl.constexpr, HB: tl.constexpr, SLICES: tl.constexpr, PRECISION: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        lane = tl.program_id(0)
        c = tl.program_id(1)
        row = lane // num_heads
        head = lane % num_heads
        rt = tl.arange(0, BT)
        rd = tl.arange(0, BD)
        d_ok = rd < head_dim
        pos = c * chunk + rt
        tok_mask = ((rt < chunk) & (pos < length))[:, None] & d_ok[None, :]
        queries = tl.load(q_ptr + _lane_offset(row, head, q_sb, q_sh, ALIGNED) + pos[:, None] * q_st + rd[None, :],
                          mask=tok_mask, other=0.0).to(tl.float32)
        d_read = tl.load(do_ptr + _lane_offset(row, head, do_sb, do_sh, ALIGNED) + pos[:, None] * do_st + rd[None, :],
                         mask=tok_mask, other=0.0).to(tl.float32)
        matrix = hidden * head_dim
        chunk_index = lane * tl.cdiv(length, chunk) + c
        ck = ckpt_ptr + chunk_index * 4 * matrix
        ra = ra_ptr + chunk_index * 2 * matrix
        d_queries = tl.zeros((BT, BD), tl.float32)
        for p in tl.static_range(SLICES):
            loc1, mask1, loc2, mask2 = _slice_tiles(p * HB + tl.arange(0, HB), rd, d_ok, hidden, head_dim)
            w1 = tl.load(ck + loc1, mask=mask1, other=0.0)
            w2 = tl.load(ck + matrix + loc2, mask=mask2, other=0.0)
            zq = _mm(queries, tl.trans(w1), PRECISION)
            sq = tl.sigmoid(zq)
            d_zq = _mm(d_read, w2, PRECISION) * (sq * (1.0 + zq * (1.0 - sq)))
            d_queries += _mm(d_zq, w1, PRECISION)
            tl.store(ra + loc1, _mm(tl.trans(d_zq), queries, PRECISION), mask=mask1)
            tl.store(ra + matrix + loc2, _mm(tl.trans(d_read), zq * sq, PRECISION), mask=mask2)
        tl.store(dq_ptr + lane * length * head_dim + pos[:, None] * head_dim + rd[None, :],
                 d_queries.to(dq_ptr.dtype.element_ty), mask=tok_mask)


def _grid_args(q: torch.Tensor, chunk: int, hidden: int, slice_width: int):
    batch, heads, length, dim = q.shape
    if hidden % slice_width or slice_width != _block(slice_width):
        raise ValueError(f"hidden {hidden} does not go into power-of-two slices of {slice_width}")
    grid = (batch * heads, triton.cdiv(length, chunk))
    return grid, dict(BT=_block(chunk), BD=_block(dim), HB=slice_width, SLICES=hidden // slice_width)


def read(q: torch.Tensor, states: torch.Tensor, saves: int, output: torch.Tensor, chunk: int, hidden: int,
         slice_width: int, precision: str, num_warps: int = 4) -> None:
    """output (B, H, T, d), any strides with a unit last one (the layer's (B, T, H, d) buffer, permuted,
    saves it a transpose): the read of every token at its chunk's start state. `states`
    holds per (lane, chunk) `saves` matrices of hidden × d, the first two W1 (h, d) and W2 (d, h), in
    any float dtype (bf16 states are the operands bf16 products round to anyway)."""
    batch, heads, length, dim = q.shape
    grid, blocks = _grid_args(q, chunk, hidden, slice_width)
    aligned, strides = lane_strides(q, output)
    _memory_read_kernel[grid](
        q, states, output, *strides, heads, length, chunk, dim, hidden, saves,
        PRECISION=precision, ALIGNED=aligned, num_warps=num_warps, **blocks,
    )


def read_backward(q: torch.Tensor, checkpoints: torch.Tensor, d_output: torch.Tensor, d_q: torch.Tensor,
                  chunk: int, hidden: int, slice_width: int, precision: str, num_warps: int = 4) -> torch.Tensor:
    """Writes the read's query adjoint into d_q (B, H, T, d) and returns its share of each chunk-start
    state's adjoint, (lanes, chunks, [∂W1 (h, d), ∂W2 (d, h)]) fp32, for the backward kernel to add.
    d_output: fp32 or bf16 (B, H, T, d), any strides with a unit last one; checkpoints: the forward's, 4
    fp32 matrices per (lane, chunk); d_q: (B, H, T, d) contiguous."""
    batch, heads, length, dim = q.shape
    grid, blocks = _grid_args(q, chunk, hidden, slice_width)
    adjoints = torch.empty(grid[0] * grid[1] * 2 * hidden * dim, device=q.device, dtype=torch.float32)
    aligned, strides = lane_strides(q, d_output)
    _memory_read_backward_kernel[grid](
        q, checkpoints, d_output, d_q, adjoints, *strides, heads, length, chunk, dim, hidden,
        PRECISION=precision, ALIGNED=aligned, num_warps=num_warps, **blocks,
    )
    return adjoints
