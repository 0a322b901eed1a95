"""Triton kernels for the blocks' GPU inference path (the torch path in blocks.py is the definition;
tests/test_fused_triton.py holds the two together), the GPU twins of numba_cpu.mag_mix / swiglu.

Whole-model streaming on a GPU moves (lanes x tokens x d_model) activations, ~268 MB per tensor at
128 lanes x 4096 tokens x 128 channels, and each torch elementwise op reads and writes whole
tensors. The MAG mix as torch ops is three RMSNorms, a sigmoid, ~6 multiply/adds and the residual
(each a pass over HBM); here it is one pass that reads x, the two branch outputs and the gate
pre-activation once and writes the mixed residual and the FFN's normed input:

    mixed     = x + g * RMSNorm_a(attended) + (1 - g) * RMSNorm_m(remembered),  g = sigmoid(gate_pre)
    ffn_input = RMSNorm_ffn(mixed)

Each program takes a block of rows (a whole row of D <= 512 channels fits in registers, so the
three row norms need no second pass). SwiGLU's silu(gate) * up is a second kernel (one read of
[gate | up], one write); the output projection then adds the residual inside its matrix product
(torch.addmm), as SwiGLU.residual_cpu does on the CPU.

Arithmetic is fp32 whatever the storage dtype (fp32, bf16, fp16): bf16 inputs are rounded once, on
the way out, where the torch path rounds after every op. On CPU the kernels run only under Triton's
interpreter (TRITON_INTERPRET=1, for tests).
"""

from __future__ import annotations

import torch

from titans_cli.memory.triton_fused import TRITON_AVAILABLE, elementwise_supported, tl, triton

MAX_WIDTH = 512  # d_model of the mix kernel: a row per program slice in registers
_TILE = 2048  # elements per program (rows x padded width): ~16 per thread at 4 warps


def supported(x: torch.Tensor) -> tuple[bool, str]:
    """Whether the kernels run on x's device and dtype and width, and why not when they don't."""
    if x.shape[-1] > MAX_WIDTH:
        return False, f"width {x.shape[-1]} > {MAX_WIDTH}"
    return elementwise_supported(x)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as (rows, width) with unit channel stride (a view when t already has that layout)."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _block(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


if TRITON_AVAILABLE:

    @triton.jit
    def _mag_mix_kernel(
        x_ptr, attended_ptr, remembered_ptr, gate_ptr, attention_w_ptr, memory_w_ptr, ffn_w_ptr,
        mixed_ptr, ffn_input_ptr, rows, width, x_stride, attended_stride, remembered_stride, gate_stride, eps,
        BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        row = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
        column = tl.arange(0, BLOCK_D)
        column_ok = column < width
        mask = (row < rows)[:, None] & column_ok[None, :]
        r, c = row[:, None], column[None, :]

        attended = tl.load(attended_ptr + r * attended_stride + c, mask=mask, other=0.0).to(tl.float32)
        remembered = tl.load(remembered_ptr + r * remembered_stride + c, mask=mask, other=0.0).to(tl.float32)
        gate_pre = tl.load(gate_ptr + r * gate_stride + c, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + r * x_stride + c, mask=mask, other=0.0).to(tl.float32)
        attention_w = tl.load(attention_w_ptr + column, mask=column_ok, other=0.0).to(tl.float32)[None, :]
        memory_w = tl.load(memory_w_ptr + column, mask=column_ok, other=0.0).to(tl.float32)[None, :]
        ffn_w = tl.load(ffn_w_ptr + column, mask=column_ok, other=0.0).to(tl.float32)[None, :]

        # Padded channels load as 0, so the sums are the rows' own; divide by the true width.
        attended_scale = tl.rsqrt(tl.sum(attended * attended, axis=1) / width + eps)[:, None]
        remembered_scale = tl.rsqrt(tl.sum(remembered * remembered, axis=1) / width + eps)[:, None]
        gate = tl.sigmoid(gate_pre)
        mixed = x + (gate * (attended * attended_scale * attention_w) + (1.0 - gate) * (remembered * remembered_scale * memory_w))
        mixed_scale = tl.rsqrt(tl.sum(mixed * mixed, axis=1) / width + eps)[:, None]

        out = r * width + c  # outputs are contiguous (rows, width)
        tl.store(mixed_ptr + out, mixed.to(mixed_ptr.dtype.element_ty), mask=mask)
        tl.store(ffn_input_ptr + out, (mixed * mixed_scale * ffn_w).to(ffn_input_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_kernel(gate_up_ptr, out_ptr, rows, width, gate_up_stride, BLOCK_ROWS: tl.constexpr, BLOCK_F: tl.constexpr):
        row = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
        column = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        mask = (row < rows)[:, None] & (column < width)[None, :]
        r, c = row[:, None], column[None, :]
        gate = tl.load(gate_up_ptr + r * gate_up_stride + c, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_up_ptr + r * gate_up_stride + width + c, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + r * width + c, (gate * tl.sigmoid(gate) * up).to(out_ptr.dtype.element_ty), mask=mask)


def mag_mix(x, attended, remembered, gate_pre, attention_weight, memory_weight, ffn_weight, eps: float):
    """MAGBlock's mix and the FFN's input norm in one pass over (..., D) tensors ->
    (mixed, ffn_input), both shaped and typed like x (see the module docstring)."""
    width = x.shape[-1]
    if width > MAX_WIDTH:
        raise ValueError(f"mag_mix handles d_model up to {MAX_WIDTH}, got {width}")
    tensors = [_rows(t) for t in (x, attended, remembered, gate_pre)]
    rows = tensors[0].shape[0]
    mixed = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    ffn_input = torch.empty_like(mixed)
    if rows:
        block_d = _block(width)
        block_rows = max(1, _TILE // block_d)
        weights = [w.contiguous() for w in (attention_weight, memory_weight, ffn_weight)]
        _mag_mix_kernel[(triton.cdiv(rows, block_rows),)](
            *tensors, *weights, mixed, ffn_input, rows, width, *(t.stride(0) for t in tensors), float(eps),
            BLOCK_ROWS=block_rows, BLOCK_D=block_d, num_warps=4 if block_d <= 256 else 8,
        )  # fmt: skip
    return mixed.view(x.shape), ffn_input.view(x.shape)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] (..., 2F) -> (..., F), in gate_up's dtype."""
    rows_in = _rows(gate_up)
    rows, width = rows_in.shape[0], rows_in.shape[1] // 2
    out = torch.empty((rows, width), dtype=gate_up.dtype, device=gate_up.device)
    if rows:
        block_f = min(_block(width), 256)
        block_rows = _TILE // block_f
        grid = (triton.cdiv(rows, block_rows), triton.cdiv(width, block_f))
        _swiglu_kernel[grid](rows_in, out, rows, width, rows_in.stride(0), BLOCK_ROWS=block_rows, BLOCK_F=block_f, num_warps=4)
    return out.view(*gate_up.shape[:-1], width)
