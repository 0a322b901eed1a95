"""NeuralMemory's input path for GPU inference in one Triton kernel: the GPU twin of
numba_cpu.prepare_inputs (layer.py's torch ops are the definition; tests/test_prepare_triton.py
holds them together).

Between the q|k|v projection and the memory update, the torch path makes a pass over HBM per op on
(lanes x tokens x 3·H·d) tensors: the concatenation with the conv tail, the depthwise causal conv as
conv_size shifted multiply-adds, SiLU, the two per-head L2 norms (square, sum, sqrt, divide), the
gate sigmoids and their fp32 copies. Here one kernel reads the projections (and the tail) and the
gate pre-activations once and writes what the update reads:

    c_t = bias + Σ_j w_j ⊙ x_{t + j - (size - 1)}      (x_{<0}: the previous piece's last rows)
    q_t = SiLU(c_t^q) / ||SiLU(c_t^q)||,  k_t likewise,  v_t = SiLU(c_t^v)         per head
    θ_t = max_lr · σ(g^θ_t),  η_t = σ(g^η_t),  α_t = σ(g^α_t)[,  δ_t = softplus(g^δ_t)]

q, k, v come out as (B, H, T, d) and the gates as (G, B, H, T) fp32, the layouts the fused update
kernel takes. One program per (block of tokens, batch row, head): its (tokens x d) tile of each of
q, k, v lives in registers, so the L2 norms need no second pass. Arithmetic is fp32 whatever the
storage dtype; outputs take the projections' dtype (gates: fp32). On CPU it runs only under
Triton's interpreter (TRITON_INTERPRET=1, for tests).
"""

from __future__ import annotations

import torch

from .triton_fused import TRITON_AVAILABLE, elementwise_supported, in_sixteenths, tl, triton

# Tokens and warps per program of the forward kernel (benchmarks/prepare_gpu.py: on an H200 with the
# vectorised loads, 32 / 4 was fastest at both shapes measured); tokens and warps per program of the
# backward's adjoint kernel (the same script, bf16 reference shape on an H200: 32 / 2 1.06 ms, the
# earlier 64 / 4 1.29 ms); tokens per program of the conv's transpose.
_BLOCK_T, _NUM_WARPS = 32, 4
_BLOCK_T_BACKWARD, _NUM_WARPS_BACKWARD = 32, 2
_BLOCK_T_TRANSPOSE = 64


def kernel_taps(conv_weight: torch.Tensor) -> torch.Tensor:
    """The depthwise conv's weight (3C, 1, size) as the kernels read it: (size, 3C) fp32 contiguous."""
    return conv_weight[:, 0, :].t().to(torch.float32).contiguous()


def supported(x: torch.Tensor, head_dim: int) -> tuple[bool, str]:
    """Whether the kernel runs for inputs like x (device, dtype) and this head size, and why not."""
    if head_dim > 256:
        return False, f"head_dim {head_dim} > 256"
    return elementwise_supported(x)


if TRITON_AVAILABLE:

    @triton.jit
    def _sigmoid(z):
        return 1.0 / (1.0 + tl.exp(-z))

    @triton.jit
    def _batch_strides(proj_sb, tail_sb, gate_sb, ALIGNED: tl.constexpr):
        """The batch strides. They scale with the piece length, so they are not specialised, and the
        compiler cannot prove a row's 16-byte alignment: it would load each element of a tile on its
        own. Where every one is a multiple of 16 elements (ALIGNED) the wrapper passes them divided by
        16, and the product here carries the divisibility."""
        if ALIGNED:
            return proj_sb * 16, tail_sb * 16, gate_sb * 16
        return proj_sb, tail_sb, gate_sb

    @triton.jit
    def _shifted_rows(proj_ptr, tail_ptr, b, rows, chan, mask, proj_sb, proj_st, tail_sb, tail_st, j: tl.constexpr,
                      SIZE: tl.constexpr):
        """Rows t + j - (SIZE - 1) of [tail; piece] for the channels `chan`, fp32: rows before the
        piece come from the tail. Two masked loads, not one through a per-row choice of pointer,
        which the compiler cannot vectorise."""
        source = rows + (j - (SIZE - 1))
        inside = (source >= 0)[:, None]
        x = tl.load(proj_ptr + b * proj_sb + source[:, None] * proj_st + chan[None, :], mask=mask & inside,
                    other=0.0).to(tl.float32)
        if j < SIZE - 1:  # (the last tap reads the piece only)
            x += tl.load(tail_ptr + b * tail_sb + (source + (SIZE - 1))[:, None] * tail_st + chan[None, :],
                         mask=mask & ~inside, other=0.0).to(tl.float32)
        return x

    @triton.jit
    def _causal_conv(proj_ptr, tail_ptr, taps_ptr, bias_ptr, b, rows, chan, e_ok, mask, proj_sb, proj_st,
                     tail_sb, tail_st, WIDTH: tl.constexpr, SIZE: tl.constexpr, BLOCK_T: tl.constexpr,
                     BD: tl.constexpr):
        """c_t = bias + Σ_j w_j ⊙ x̃_{t + j - (SIZE - 1)} for a (rows, chan) tile, fp32."""
        acc = tl.zeros((BLOCK_T, BD), tl.float32) + tl.load(bias_ptr + chan, mask=e_ok, other=0.0)[None, :]
        for j in tl.static_range(SIZE):
            x = _shifted_rows(proj_ptr, tail_ptr, b, rows, chan, mask, proj_sb, proj_st, tail_sb, tail_st, j, SIZE)
            acc += x * tl.load(taps_ptr + j * WIDTH + chan, mask=e_ok, other=0.0)[None, :]
        return acc

    # Lengths, batch sizes and the strides that scale with them vary from piece to piece: not
    # specialised, so one compiled variant serves a whole stream.
    @triton.jit(do_not_specialize=["batch", "length", "proj_sb", "tail_sb", "gate_sb"])
    def _prepare_kernel(
        proj_ptr, tail_ptr, taps_ptr, bias_ptr, gate_ptr, q_ptr, k_ptr, v_ptr, gates_ptr,
        batch, length, proj_sb, proj_st, tail_sb, tail_st, gate_sb, gate_st, max_lr,
        HEADS: tl.constexpr, DIM: tl.constexpr, BD: tl.constexpr, SIZE: tl.constexpr,
        N_GATES: tl.constexpr, BLOCK_T: tl.constexpr, ALIGNED: tl.constexpr,
    ):  # fmt: skip
        proj_sb, tail_sb, gate_sb = _batch_strides(proj_sb, tail_sb, gate_sb, ALIGNED)
        block = tl.program_id(0)
        lane = tl.program_id(1)
        b = (lane // HEADS).to(tl.int64)  # offsets can pass 2^31 elements
        h = lane % HEADS
        inner = HEADS * DIM
        rows = block * BLOCK_T + tl.arange(0, BLOCK_T)
        row_ok = rows < length
        e = tl.arange(0, BD)
        e_ok = e < DIM
        out_offsets = ((b * HEADS + h) * length + rows[:, None]) * DIM + e[None, :]
        out_mask = row_ok[:, None] & e_ok[None, :]
        for part in tl.static_range(3):  # q, k, v
            chan = part * inner + h * DIM + e
            acc = _causal_conv(proj_ptr, tail_ptr, taps_ptr, bias_ptr, b, rows, chan, e_ok, out_mask, proj_sb,
                               proj_st, tail_sb, tail_st, 3 * inner, SIZE, BLOCK_T, BD)
            act = acc * _sigmoid(acc)
            if part < 2:
                norm = tl.maximum(tl.sqrt(tl.sum(act * act, axis=1)), 1e-12)
                act = act / norm[:, None]
            if part == 0:
                tl.store(q_ptr + out_offsets, act.to(q_ptr.dtype.element_ty), mask=out_mask)
            elif part == 1:
                tl.store(k_ptr + out_offsets, act.to(k_ptr.dtype.element_ty), mask=out_mask)
            else:
                tl.store(v_ptr + out_offsets, act.to(v_ptr.dtype.element_ty), mask=out_mask)
        for g in tl.static_range(N_GATES):  # θ, η, α[, δ]: gate_pre column g * HEADS + h
            z = tl.load(gate_ptr + b * gate_sb + rows * gate_st + (g * HEADS + h), mask=row_ok, other=0.0).to(tl.float32)
            if g == 3:  # softplus, as F.softplus (threshold 20)
                value = tl.where(z > 20.0, z, tl.log(1.0 + tl.exp(tl.minimum(z, 20.0))))
            elif g == 0:
                value = _sigmoid(z) * max_lr
            else:
                value = _sigmoid(z)
            tl.store(gates_ptr + ((g * batch + b) * HEADS + h) * length + rows, value, mask=row_ok)


    @triton.jit(do_not_specialize=["batch", "length", "proj_sb", "tail_sb", "gate_sb"])
    def _prepare_backward_kernel(
        proj_ptr, tail_ptr, taps_ptr, bias_ptr, gate_ptr, dq_ptr, dk_ptr, dv_ptr, dgates_ptr,
        dc_ptr, dtaps_ptr, dbias_ptr, dgate_ptr,
        batch, length, proj_sb, proj_st, tail_sb, tail_st, gate_sb, gate_st, max_lr,
        HEADS: tl.constexpr, DIM: tl.constexpr, BD: tl.constexpr, SIZE: tl.constexpr,
        N_GATES: tl.constexpr, BLOCK_T: tl.constexpr, ALIGNED: tl.constexpr,
    ):  # fmt: skip
        """Adjoints through SiLU, the L2 norms and the gates for one (block of tokens, batch row,
        head), the forward recomputed: the conv's output adjoint d_c (B, T, 3C) (stored in the
        projections' dtype), this block's shares of the tap and bias adjoints, and the gate
        pre-activations' adjoints."""
        proj_sb, tail_sb, gate_sb = _batch_strides(proj_sb, tail_sb, gate_sb, ALIGNED)
        block = tl.program_id(0)
        lane = tl.program_id(1)
        b = (lane // HEADS).to(tl.int64)
        h = lane % HEADS
        inner = HEADS * DIM
        rows = block * BLOCK_T + tl.arange(0, BLOCK_T)
        row_ok = rows < length
        e = tl.arange(0, BD)
        e_ok = e < DIM
        head_offsets = ((b * HEADS + h) * length + rows[:, None]) * DIM + e[None, :]
        mask = row_ok[:, None] & e_ok[None, :]
        part_base = (block * batch + b) * (SIZE * 3 * inner)  # this program's rows of dtaps (blocks, B, S, 3C)
        for part in tl.static_range(3):  # q, k, v
            chan = part * inner + h * DIM + e
            acc = _causal_conv(proj_ptr, tail_ptr, taps_ptr, bias_ptr, b, rows, chan, e_ok, mask, proj_sb, proj_st,
                               tail_sb, tail_st, 3 * inner, SIZE, BLOCK_T, BD)
            sig = _sigmoid(acc)
            act = acc * sig
            if part == 0:
                grad = tl.load(dq_ptr + head_offsets, mask=mask, other=0.0).to(tl.float32)
            elif part == 1:
                grad = tl.load(dk_ptr + head_offsets, mask=mask, other=0.0).to(tl.float32)
            else:
                grad = tl.load(dv_ptr + head_offsets, mask=mask, other=0.0).to(tl.float32)
            if part < 2:  # out = a / max(||a||, 1e-12): d_a = (g - out (out·g)) / ||a||, or g / 1e-12
                norm = tl.sqrt(tl.sum(act * act, axis=1))
                scale = tl.maximum(norm, 1e-12)
                out = act / scale[:, None]
                along = tl.where(norm > 1e-12, tl.sum(out * grad, axis=1), 0.0)
                grad = (grad - out * along[:, None]) / scale[:, None]
            d_c = tl.where(mask, grad * sig * (1.0 + acc * (1.0 - sig)), 0.0)
            tl.store(dc_ptr + (b * length + rows[:, None]) * (3 * inner) + chan[None, :],
                     d_c.to(dc_ptr.dtype.element_ty), mask=mask)
            tl.store(dbias_ptr + (block * batch + b) * (3 * inner) + chan, tl.sum(d_c, axis=0), mask=e_ok)
            for j in tl.static_range(SIZE):
                x = _shifted_rows(proj_ptr, tail_ptr, b, rows, chan, mask, proj_sb, proj_st, tail_sb, tail_st, j, SIZE)
                tl.store(dtaps_ptr + part_base + j * (3 * inner) + chan, tl.sum(d_c * x, axis=0), mask=e_ok)
        for g in tl.static_range(N_GATES):  # θ = max_lr σ, η = σ, α = σ, δ = softplus (σ past 20: 1)
            z = tl.load(gate_ptr + b * gate_sb + rows * gate_st + (g * HEADS + h), mask=row_ok, other=0.0).to(tl.float32)
            d_value = tl.load(dgates_ptr + ((g * batch + b) * HEADS + h) * length + rows, mask=row_ok, other=0.0)
            sz = _sigmoid(z)
            if g == 3:
                d_z = d_value * tl.where(z > 20.0, 1.0, sz)
            elif g == 0:
                d_z = d_value * max_lr * sz * (1.0 - sz)
            else:
                d_z = d_value * sz * (1.0 - sz)
            tl.store(dgate_ptr + (b * length + rows) * (N_GATES * HEADS) + (g * HEADS + h),
                     d_z.to(dgate_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit(do_not_specialize=["length", "dc_sb", "dp_sb", "dt_sb"])
    def _conv_transpose_kernel(
        dc_ptr, taps_ptr, dproj_ptr, dtail_ptr, length, width, dc_sb, dp_sb, dt_sb,
        SIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, ALIGNED: tl.constexpr,
        EVEN_C: tl.constexpr,
    ):  # fmt: skip
        """d_x̃[s] = Σ_j w_j ⊙ d_c[s - j] over the rows s of [tail; piece] (c_t = b + Σ_j w_j ⊙ x̃[t + j]
        in those rows): the piece's rows into dproj (B, T, 3C), the tail's into dtail (B, S-1, 3C)."""
        block = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        dc_sb, dp_sb, dt_sb = _batch_strides(dc_sb, dp_sb, dt_sb, ALIGNED)
        chan = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        if EVEN_C:  # (a mask constant along the channels keeps the loads vectorised)
            c_ok = tl.full((BLOCK_C,), True, tl.int1)
        else:
            c_ok = chan < width
        rows = block * BLOCK_T + tl.arange(0, BLOCK_T)  # rows of [tail; piece]
        acc = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
        for j in tl.static_range(SIZE):
            t = rows - j
            ok = ((t >= 0) & (t < length))[:, None] & c_ok[None, :]
            grad = tl.load(dc_ptr + b * dc_sb + t[:, None] * width + chan[None, :], mask=ok, other=0.0).to(tl.float32)
            acc += grad * tl.load(taps_ptr + j * width + chan, mask=c_ok, other=0.0)[None, :]
        in_piece = (rows >= SIZE - 1)[:, None]
        ok = (rows < length + SIZE - 1)[:, None] & c_ok[None, :]
        out = acc.to(dproj_ptr.dtype.element_ty)
        tl.store(dproj_ptr + b * dp_sb + (rows - (SIZE - 1))[:, None] * width + chan[None, :], out, mask=ok & in_piece)
        if block == 0:  # the tail's rows
            tl.store(dtail_ptr + b * dt_sb + rows[:, None] * width + chan[None, :], out, mask=ok & ~in_piece)


class _PrepareInputs(torch.autograd.Function):
    """prepare_inputs with a backward: the recomputing adjoint kernel, then the conv's transpose."""

    @staticmethod
    def forward(ctx, projected, tail, conv_weight, conv_bias, gate_pre, heads, max_lr):
        ctx.save_for_backward(projected, tail, conv_weight, conv_bias, gate_pre)
        ctx.heads, ctx.max_lr = heads, max_lr
        return _prepare(projected, tail, conv_weight, conv_bias, gate_pre, heads, max_lr)

    @staticmethod
    def backward(ctx, d_q, d_k, d_v, d_gates):
        return (*prepare_backward(*ctx.saved_tensors, ctx.heads, ctx.max_lr, (d_q, d_k, d_v, d_gates)), None, None)


def prepare_backward(projected, tail, conv_weight, conv_bias, gate_pre, heads, max_lr, cotangents,
                     block_t: int | None = None, num_warps: int | None = None):  # fmt: skip
    """The adjoints of prepare_inputs' five tensor inputs for the cotangents (d_q, d_k, d_v, d_gates)
    (any may be None): the recomputing adjoint kernel, then the conv's transpose. The conv output's
    adjoint d_c goes through memory between the two in the projections' dtype (bf16 under autocast:
    the projections' adjoint is stored in it anyway; the tap and bias adjoints are summed from the
    fp32 values inside the first kernel)."""
    d_q, d_k, d_v, d_gates = cotangents
    batch, length, width = projected.shape
    dim = width // 3 // heads
    size = conv_weight.shape[-1]
    n_gates = gate_pre.shape[-1] // heads
    device = projected.device
    block_t = block_t or _BLOCK_T_BACKWARD
    num_warps = num_warps or _NUM_WARPS_BACKWARD
    projected, gate_pre = (t.contiguous() for t in (projected, gate_pre))
    tail = projected if size == 1 else tail.contiguous()  # never read when size is 1
    grads = [torch.zeros(batch, heads, length, dim, device=device) if g is None else g.contiguous()
             for g in (d_q, d_k, d_v)]
    d_gates = (torch.zeros(n_gates, batch, heads, length, device=device) if d_gates is None
               else d_gates.to(torch.float32).contiguous())
    taps = kernel_taps(conv_weight)
    blocks = triton.cdiv(length, block_t)
    d_c = torch.empty(batch, length, width, device=device, dtype=projected.dtype)
    d_taps = torch.empty(blocks, batch, size, width, device=device)
    d_bias = torch.empty(blocks, batch, width, device=device)
    d_gate_pre = torch.empty(batch, length, n_gates * heads, device=device, dtype=gate_pre.dtype)
    aligned, (proj_sb, tail_sb, gate_sb) = in_sixteenths([t.stride(0) for t in (projected, tail, gate_pre)])
    _prepare_backward_kernel[(blocks, batch * heads)](
        projected, tail, taps, conv_bias.to(torch.float32).contiguous(), gate_pre, *grads, d_gates,
        d_c, d_taps, d_bias, d_gate_pre,
        batch, length, proj_sb, projected.stride(1), tail_sb, tail.stride(1), gate_sb, gate_pre.stride(1),
        float(max_lr),
        HEADS=heads, DIM=dim, BD=max(16, triton.next_power_of_2(dim)), SIZE=size, N_GATES=n_gates,
        BLOCK_T=block_t, ALIGNED=aligned, num_warps=num_warps,
    )  # fmt: skip
    d_projected = torch.empty_like(projected)
    d_tail = torch.empty(batch, size - 1, width, device=device, dtype=projected.dtype)
    block_c = 64
    grid = (triton.cdiv(length + size - 1, _BLOCK_T_TRANSPOSE), batch, triton.cdiv(width, block_c))
    aligned, (dc_sb, dp_sb, dt_sb) = in_sixteenths([t.stride(0) for t in (d_c, d_projected, d_tail)])
    _conv_transpose_kernel[grid](
        d_c, taps, d_projected, d_tail, length, width, dc_sb, dp_sb, max(dt_sb, 1),
        SIZE=size, BLOCK_T=_BLOCK_T_TRANSPOSE, BLOCK_C=block_c, ALIGNED=aligned, EVEN_C=width % block_c == 0,
        num_warps=_NUM_WARPS,
    )  # fmt: skip
    d_weight = d_taps.sum(dim=(0, 1)).t().unsqueeze(1).to(conv_weight.dtype)  # (3C, 1, S)
    return d_projected, d_tail, d_weight, d_bias.sum(dim=(0, 1)).to(conv_bias.dtype), d_gate_pre


def prepare_inputs(projected: torch.Tensor, tail: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor,
                   gate_pre: torch.Tensor, heads: int, max_lr: float, block_t: int | None = None,
                   num_warps: int | None = None, taps: torch.Tensor | None = None):  # fmt: skip
    """projected (B, T, 3C) (the q|k|v projections, C = H·d), tail (B, size - 1, 3C) (the previous
    projected rows), conv_weight (3C, 1, size), conv_bias (3C,), gate_pre (B, T, G·H).
    Returns q, k, v (B, H, T, d) in projected's dtype and gates (G, B, H, T) fp32 (see the module
    docstring). Differentiable when autograd asks (tail in projected's dtype then). taps: conv_weight
    as the kernel reads it, (size, 3C) fp32 contiguous, where the caller keeps it (inference only)."""
    tensors = (projected, tail, conv_weight, conv_bias, gate_pre)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and block_t is None and num_warps is None:
        return _PrepareInputs.apply(projected, tail.to(projected.dtype), conv_weight, conv_bias, gate_pre, heads, max_lr)
    return _prepare(projected, tail, conv_weight, conv_bias, gate_pre, heads, max_lr, block_t, num_warps, taps)


def _prepare(projected, tail, conv_weight, conv_bias, gate_pre, heads, max_lr, block_t=None, num_warps=None,
             taps=None):
    batch, length, width = projected.shape
    dim = width // 3 // heads
    size = conv_weight.shape[-1]
    n_gates = gate_pre.shape[-1] // heads
    device = projected.device
    q, k, v = (torch.empty(batch, heads, length, dim, device=device, dtype=projected.dtype) for _ in range(3))
    gates = torch.empty(n_gates, batch, heads, length, device=device, dtype=torch.float32)
    if batch * length == 0:
        return q, k, v, gates
    projected, gate_pre = (t if t.stride(-1) == 1 else t.contiguous() for t in (projected, gate_pre))
    if not tail.is_contiguous() or tail.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        tail = tail.to(projected.dtype).contiguous()  # (else read as it is: the kernel works in fp32)
    if size == 1:
        tail = projected  # never read
    if taps is None:
        taps = kernel_taps(conv_weight)
    block_t = block_t or _BLOCK_T
    grid = (triton.cdiv(length, block_t), batch * heads)
    aligned, (proj_sb, tail_sb, gate_sb) = in_sixteenths([t.stride(0) for t in (projected, tail, gate_pre)])
    _prepare_kernel[grid](
        projected, tail, taps, conv_bias.to(torch.float32).contiguous(), gate_pre, q, k, v, gates,
        batch, length, proj_sb, projected.stride(1), tail_sb, tail.stride(1), gate_sb, gate_pre.stride(1),
        float(max_lr),
        HEADS=heads, DIM=dim, BD=max(16, triton.next_power_of_2(dim)), SIZE=size, N_GATES=n_gates,
        BLOCK_T=block_t, ALIGNED=aligned, num_warps=num_warps or _NUM_WARPS,
    )  # fmt: skip
    return q, k, v, gates
