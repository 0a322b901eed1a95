"""A fused Triton kernel for the memory update: one program per (batch row, head), all chunks.

Same signature and semantics as ``torch_chunked.memory_update`` (MEMORY_MATH.md, the closed form of
paper §3.2); read that module first. Where torch_chunked issues ~15 batched launches per chunk, this
kernel is launched once per call: each program walks its (row, head)'s chunks in a loop and does the
whole chunk step in one place —

    keys forward through M0 (z = k W1ᵀ, a = σ(z), y = a W2ᵀ), δ's back (δ2 = f'(y - v),
    δ1 = (δ2 W2) ⊙ σ'(z)), ||u_i|| and its clip, the η/β products of the chunk from in-chunk
    cumulative log sums, M_b and S_b as (Δ ⊙ c)ᵀ X products, ||S_t|| through b×b Gram matrices,
    the read y_t = M0(q_t), and the chunk-end retention map (lq / kl) —

with the tiles of the chunk in registers and every product a ``tl.dot`` with fp32 accumulation.
Depth 2 walks the hidden units in blocks of 64 (three passes per chunk: read + keys forward; δ1,
norms and Grams; the update), recomputing k·W1ᵀ and δ2·W2 per pass: holding whole (b × h) tiles
spilled thousands of registers (docs/KERNEL_NOTES.md, v1 vs v2). The memory state (weights and momenta, fp32, 4 × h × d floats per head: 128 KiB at
d=64, h=128) is too large for one program's registers next to the chunk's tiles, so it lives in a
per-(row, head) fp32 working buffer that the same program rewrites every chunk: it stays in L2
(32 heads × 128 KiB = 4 MiB), and HBM sees the tokens once and the state once per call.

Supported (else the call falls back to torch_chunked, documented in `fused_supported`; float64
inputs or weights also fall back):
depth 1 and 2; attentional bias l2 | lp | huber; retention decay | lq | kl | none; algorithm
momentum | gd; clipping; any head_dim / hidden width up to 128 / 256 (padded to powers of two
with masks); inputs fp32, bf16 or fp16 (state always fp32). On CPU the kernel runs only under
Triton's interpreter (TRITON_INTERPRET=1, for tests); otherwise CPU calls use torch_chunked.

Matrix-product precision (`precision`): "tf32" (the default for fp32 inputs: fp32 operands on the
tensor cores, 1.5e-3 relative error against the float64 reference on an H200 at 200 tokens, up to
6.8e-3 on the weights after 300 tokens of harsher gates), "bf16" (the default
for bf16/fp16 inputs: operands rounded to bf16, fp32 accumulation and state, 3.8e-3), "ieee" (true
fp32 products, 2.7e-7, but on the FMA units: 30x slower than tf32 on an H200). Measured numbers:
benchmarks/results/gpu_memory_kernel.md and docs/KERNEL_NOTES.md.

Training: `memory_update` is differentiable. Forward runs the kernel. Backward, by ``backward=``:

- "auto" (default) and "triton": the forward also stores every chunk's start state (fp32, 4·h·d
  floats per (row, head, chunk): 1 GiB at batch 8 × 16k tokens × 4 heads × d 64), and
  `_memory_chunks_backward_kernel` walks the chunks in reverse, recomputing each chunk from its
  checkpoint and applying the adjoint of every step of torch_chunked._chunk_step (state update,
  read, ||S_t|| Grams, gate products, clip, the MLP). Depth 2, l2, retention decay/none, momentum
  or gd, and with tf32 products head_dim <= 32 (`backward_kernel_supported`); hidden units in
  blocks as in the forward (four passes per chunk). Without the ||S_t|| signal (momentum_signal
  False, as `titans train` runs it) the Grams and their adjoints are skipped, and where batch x
  heads leaves SMs idle a (row, head)'s hidden blocks are shared by programs that meet after each
  pass (`PARTS`, as triton_split.py does for the forward). The read's adjoints are computed before
  the reverse walk, for all (row, head, chunk) at once (triton_read.read_backward); with one hidden
  block per program (`KEEP`) a block's products are computed once per chunk, not once per pass.
  Measured on an H100 (benchmarks/results/gpu_memory_kernel.md): gradients equal torch_chunked's to
  6e-7 with fp32 (ieee) products and 3.7e-3 with bf16 products; the memory layer's
  forward+backward without the signal at 5.1x titans-pytorch per call under bf16 autocast on an
  H200 (memory_layer_gpu.md). Configs it
  does not cover, and launches that run out of shared memory, fall back to:
- "torch": recompute the call through torch_chunked under autograd and backpropagate through that
  (forward+backward costs this kernel plus torch_chunked's forward and backward).
"""

from __future__ import annotations

import os
import warnings

import torch

from .config import MemoryConfig
from .mlp import MemoryResult, check_inputs, retention_radius

try:  # optional dependency: never required on CPU installs
    import triton
    import triton.language as tl

    try:
        from triton.runtime.errors import OutOfResources
    except ImportError:  # pragma: no cover - older triton
        OutOfResources = RuntimeError
    TRITON_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    OutOfResources = RuntimeError
    TRITON_AVAILABLE = False

_BIAS_CODES = {"l2": 0, "lp": 1, "huber": 2}
# Kernel arguments that change with the number of tokens in a call (batch and head strides of the
# (B, H, T, ·) inputs, and T itself); see the kernels' do_not_specialize.
_LENGTH_DEPENDENT = ["length", "q_sb", "q_sh", "k_sb", "k_sh", "v_sb", "v_sh", "g_sb", "g_sh"]
_RETENTION_CODES = {"decay": 0, "lq": 1, "kl": 2, "none": 3}
_MAX_HEAD_DIM, _MAX_HIDDEN = 128, 256
# Hidden units per block of the depth-2 passes and warps per program (chosen by measurement,
# docs/KERNEL_NOTES.md).
_DEFAULT_BLOCK_HIDDEN, _DEFAULT_NUM_WARPS = 64, 8


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def elementwise_supported(x: torch.Tensor) -> tuple[bool, str]:
    """Whether the inference kernels that read and write tensors like x (fp32 arithmetic, any
    float storage: model/fused_triton.py, model/attention_triton.py, prepare_triton.py) run on its
    device and dtype, and why not."""
    if not TRITON_AVAILABLE:
        return False, "triton is not installed"
    if x.device.type != "cuda" and not _interpreting():
        return False, "the Triton kernels run on CUDA (or on CPU under TRITON_INTERPRET=1)"
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False, f"dtype {x.dtype} (fp32, bf16 or fp16 only)"
    return True, ""


def fused_supported(config: MemoryConfig, device: torch.device) -> tuple[bool, str]:
    """Whether the fused kernel runs this config on this device, and why not when it doesn't."""
    if not TRITON_AVAILABLE:
        return False, "triton is not installed"
    if device.type != "cuda" and not _interpreting():
        return False, "the Triton kernel runs on CUDA (or on CPU under TRITON_INTERPRET=1)"
    if config.depth > 2:
        return False, f"depth {config.depth} > 2 (the kernel holds one hidden layer)"
    if config.head_dim > _MAX_HEAD_DIM or (config.depth == 2 and config.hidden_dim > _MAX_HIDDEN):
        return False, f"head_dim {config.head_dim} / hidden {config.hidden_dim} exceed {_MAX_HEAD_DIM} / {_MAX_HIDDEN}"
    if config.chunk_size > 128:
        return False, f"chunk_size {config.chunk_size} > 128 (b×b tiles in registers)"
    return True, ""


def _block(n: int) -> int:
    """Tile extent: the next power of two, at least 16 (tl.dot's smallest operand side)."""
    return max(16, 1 << (int(n) - 1).bit_length())


def _bf16_tiles(head_dim: int, block_h: int) -> bool:
    return _block(head_dim) >= 64 and block_h >= 64


def bf16_supported(config: MemoryConfig) -> bool:
    """Whether bf16 products run at this config's tile sizes (64-wide head and hidden blocks); the
    kernels switch other configs to tf32 products (see _fused_forward)."""
    hidden = config.hidden_dim if config.depth == 2 else 64
    return _bf16_tiles(config.head_dim, min(_block(hidden), _block(_DEFAULT_BLOCK_HIDDEN)))


def default_precision(dtype: torch.dtype) -> str:
    """bf16 products for bf16/fp16 inputs, tf32 for fp32 inputs (see the module docstring)."""
    if dtype in (torch.bfloat16, torch.float16):
        return "bf16"
    return "tf32"


if TRITON_AVAILABLE:

    @triton.jit
    def _mm(a, b, PRECISION: tl.constexpr):
        """a @ b with fp32 accumulation; operands rounded to bf16 in "bf16" mode."""
        if PRECISION == "bf16":
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
        elif PRECISION == "bf16-emulated":
            # Triton's interpreter multiplies bf16 tiles as raw integers; round through bf16 and
            # multiply in fp32 instead (the same products, exactly representable in fp32).
            a16 = a.to(tl.bfloat16).to(tl.float32)
            b16 = b.to(tl.bfloat16).to(tl.float32)
            return tl.dot(a16, b16, input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _bias_derivative(residual, delta_t, p_exp, BIAS: tl.constexpr):
        """f'(r): l2 2r; lp p sign(r)|r|^(p-1); huber 2 clamp(r, -δ, δ)."""
        if BIAS == 0:
            return 2.0 * residual
        elif BIAS == 1:
            magnitude = tl.abs(residual)
            power = tl.where(magnitude > 0, tl.exp((p_exp - 1.0) * tl.log(magnitude)), 0.0)
            sign = tl.where(residual > 0, 1.0, tl.where(residual < 0, -1.0, 0.0))
            return p_exp * sign * power
        else:
            d = delta_t[:, None]
            return 2.0 * tl.minimum(tl.maximum(residual, -d), d)

    @triton.jit
    def _retain(weight, mask, n_entries, log_temperature, rho, q_exp, RETENTION: tl.constexpr):
        """The chunk-end retention map of mlp.apply_retention on one (out, in) weight tile."""
        if RETENTION == 1:  # lq: W ρ / max(n_q(W), ρ), n_q = (mean |W|^q)^(1/q)
            magnitude = tl.abs(weight)
            powered = tl.where(magnitude > 0, tl.exp(q_exp * tl.log(magnitude)), 0.0)
            norm = tl.exp(tl.log(tl.sum(tl.sum(powered, axis=1), axis=0) / n_entries) / q_exp)
            return weight * (rho / tl.maximum(norm, rho))
        elif RETENTION == 2:  # kl: m sign(W) softmax_j(γ log(|W| + tiny)) per row, m = in ρ
            row_mass = rho * tl.sum(mask.to(tl.float32), axis=1)
            logits = tl.exp(log_temperature) * tl.log(tl.abs(weight) + 1.1754943508222875e-38)
            logits = tl.where(mask, logits, float("-inf"))
            logits = logits - tl.max(logits, axis=1)[:, None]
            e = tl.where(mask, tl.exp(logits), 0.0)
            soft = e / tl.sum(e, axis=1)[:, None]
            sign = tl.where(weight > 0, 1.0, tl.where(weight < 0, -1.0, 0.0))
            return row_mass[:, None] * sign * soft
        else:
            return weight

    @triton.jit
    def _chunk_gates(log_eta, log_beta, step, t_ok, causal):
        """η/β products of one chunk from in-chunk cumulative log sums (torch_chunked._chunk_step)."""
        cum_log_eta = tl.cumsum(log_eta, axis=0)
        cum_log_beta = tl.cumsum(log_beta, axis=0)
        log_eta_total = tl.sum(log_eta, axis=0)
        log_beta_total = tl.sum(log_beta, axis=0)
        eta_products = tl.exp(tl.where(causal, cum_log_eta[:, None] - cum_log_eta[None, :], float("-inf")))
        eta_prefix = tl.exp(cum_log_eta)  # E(1..t)
        beta_suffix = tl.where(t_ok, tl.exp(log_beta_total - cum_log_beta), 0.0)  # B(t+1..b), real t only
        memory_coeff = tl.sum(eta_products * beta_suffix[:, None], axis=0)  # w_i
        momentum_carry = tl.sum(beta_suffix * eta_prefix, axis=0)  # c_S
        momentum_coeff = tl.exp(log_eta_total - cum_log_eta)  # E(i+1..b)
        return (eta_products, eta_prefix, memory_coeff * step, momentum_coeff * step, momentum_carry,
                tl.exp(log_eta_total), tl.exp(log_beta_total))

    @triton.jit
    def _chunk_inputs(k_base, q_base, lr_ptr, eta_ptr, alpha_ptr, hd_ptr, g_off, pos, rd, t_ok, tok_mask, k_st, q_st,
                      g_st, GD: tl.constexpr, BIAS: tl.constexpr):
        """One chunk's keys, queries (fp32) and gates: θ, η (0 for gd), log η, 1 - α, log(1 - α), Huber δ
        (else θ)."""
        tiny = 1.1754943508222875e-38  # torch.finfo(float32).tiny, as torch_chunked clamps with
        keys = tl.load(k_base + pos[:, None] * k_st + rd[None, :], mask=tok_mask, other=0.0).to(tl.float32)
        queries = tl.load(q_base + pos[:, None] * q_st + rd[None, :], mask=tok_mask, other=0.0).to(tl.float32)
        theta = tl.load(lr_ptr + g_off + pos * g_st, mask=t_ok, other=0.0).to(tl.float32)
        alpha = tl.load(alpha_ptr + g_off + pos * g_st, mask=t_ok, other=0.0).to(tl.float32)
        if GD:
            eta = tl.zeros_like(theta)
            log_eta = tl.where(t_ok, tl.log(tiny), 0.0)
        else:
            eta = tl.load(eta_ptr + g_off + pos * g_st, mask=t_ok, other=1.0).to(tl.float32)
            log_eta = tl.log(tl.maximum(eta, tiny))
        # log(1 - α) = log1p(-α), accurate for small α (u = 1 - α; log(u)·(-α)/(u - 1));
        # padded tokens have α = 0 -> 0.
        keep = 1.0 - alpha
        log_keep = tl.where(keep == 1.0, -alpha, tl.log(keep) * (-alpha) / tl.where(keep == 1.0, -1.0, keep - 1.0))
        if BIAS == 2:
            delta_t = tl.load(hd_ptr + g_off + pos * g_st, mask=t_ok, other=1.0).to(tl.float32)
        else:
            delta_t = theta
        return keys, queries, theta, eta, log_eta, keep, log_keep, delta_t

    @triton.jit
    def _clip(grad_sq, theta, t_ok, max_grad_norm, CLIP: tl.constexpr):
        """||u_i|| from its square, the clip factor min(1, max/||u_i||) and the clipped step θ_i·clip_i
        (0 on padded tokens), as torch_chunked folds the clip into θ."""
        norm = tl.sqrt(tl.maximum(grad_sq, 1.1754943508222875e-38))  # (float32 tiny)
        if CLIP:
            clip = max_grad_norm / tl.maximum(norm, max_grad_norm)
        else:
            clip = tl.full(norm.shape, 1.0, tl.float32)
        return norm, clip, tl.where(t_ok, theta * clip, 0.0)

    @triton.jit
    def _state_step(weight, momentum, delta, x, memory_step, momentum_step, momentum_carry, eta_total, beta_total,
                    PRECISION: tl.constexpr):
        """One weight matrix's chunk end (MEMORY_MATH.md): W_b = B W0 + c_S S0 - Σ_i w_i θ_i δ_i x_iᵀ and
        S_b = E S0 - Σ_i E(i+1..b) θ_i δ_i x_iᵀ, each sum one product."""
        new_weight = beta_total * weight + momentum_carry * momentum - _mm(
            tl.trans(delta * memory_step[:, None]), x, PRECISION)
        new_momentum = eta_total * momentum - _mm(tl.trans(delta * momentum_step[:, None]), x, PRECISION)
        return new_weight, new_momentum

    @triton.jit
    def _arrive(counter):
        """This program's arrival at a (row, head)'s counter: the first half of the barrier of the
        programs that share a (row, head) (triton_split.py). The CTA barrier first makes every
        thread's scratch stores part of this program's release."""
        tl.debug_barrier()
        tl.atomic_add(counter, 1, sem="release", scope="gpu")

    @triton.jit
    def _wait(counter, target):
        """Spin until `target` arrivals, counting this program's own; after the acquire, a second CTA
        barrier holds every thread until the other parts' partials are visible. Work that needs none
        of them can go between `_arrive` and `_wait`, hiding the barrier's latency."""
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()

    @triton.jit
    def _lane_offset(row, head, stride_b, stride_h, ALIGNED: tl.constexpr):
        """Elements from a (B, H, T, d) tensor's start to its (row, head). The batch and head strides
        scale with the length, so they are not specialised and the compiler cannot prove a token
        row's 16-byte alignment: it would load a tile element by element. Where both are multiples
        of 16 (ALIGNED) the wrapper passes them divided by 16 (`lane_strides`), and the products here
        carry the divisibility."""
        if ALIGNED:
            return row * (stride_b * 16) + head * (stride_h * 16)
        return row * stride_b + head * stride_h

    @triton.jit
    def _slice_tiles(hid, rd, d_ok, hidden, head_dim):
        """Offsets and masks of the hidden units `hid` in one (row, head)'s state: their (len(hid), d)
        rows of W1 and S1 (hidden x d) and (d, len(hid)) columns of W2 and S2 (d x hidden)."""
        h_ok = hid < hidden
        loc1 = hid[:, None] * head_dim + rd[None, :]
        mask1 = h_ok[:, None] & d_ok[None, :]
        loc2 = rd[:, None] * hidden + hid[None, :]
        mask2 = d_ok[:, None] & h_ok[None, :]
        return loc1, mask1, loc2, mask2

    @triton.jit
    def _meet(counter, target):
        """`_arrive` then `_wait`: the whole barrier, with nothing in between."""
        _arrive(counter)
        _wait(counter, target)

    @triton.jit
    def _sum_parts(x_lane, slot, offsets, PARTS: tl.constexpr):
        """Σ_p of the partials the parts of a (row, head) wrote at `offsets` of their scratch slots,
        in the order p = 0..PARTS-1 in every part (bit-identical sums); read past L1 (.cg), which
        may hold a stale copy from an earlier chunk."""
        total = tl.load(x_lane + offsets, cache_modifier=".cg")
        for p in tl.static_range(1, PARTS):
            total += tl.load(x_lane + p * slot + offsets, cache_modifier=".cg")
        return total

    @triton.jit
    def _momentum_norm(eta_products, eta_prefix, step, gram, s0_dot_u, s0_sq, PRECISION: tl.constexpr):
        """||S_t|| = sqrt(E(1..t)²||S0||² - 2 E(1..t) Σ_i Λ_ti <S0,u_i> + Σ_ij Λ_ti Λ_tj <u_i,u_j>)."""
        weighted = eta_products * step[None, :]  # Λ[t, i] = E(i+1..t) θ_i clip_i
        momentum_sq = (
            eta_prefix * eta_prefix * s0_sq
            - 2.0 * eta_prefix * tl.sum(weighted * s0_dot_u[None, :], axis=1)
            + tl.sum(_mm(weighted, gram, PRECISION) * weighted, axis=1)
        )
        return tl.sqrt(tl.maximum(momentum_sq, 1.1754943508222875e-38))

    # Neither `length` nor the strides that scale with it are specialised (Triton would otherwise
    # compile a variant per divisibility of each): one compiled kernel serves every step length.
    @triton.jit(do_not_specialize=_LENGTH_DEPENDENT)
    def _memory_chunks_kernel(
        q_ptr, k_ptr, v_ptr, lr_ptr, eta_ptr, alpha_ptr, hd_ptr,
        w1_ptr, w2_ptr, s1_ptr, s2_ptr,
        o_ptr, gn_ptr, mn_ptr, ckpt_ptr,
        q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st,
        g_sb, g_sh, g_st,
        num_heads, length, chunk, head_dim, hidden,
        max_grad_norm, p_exp, q_exp, rho1, rho2,
        BT: tl.constexpr, BD: tl.constexpr, BHID: tl.constexpr, HB: tl.constexpr,
        DEPTH: tl.constexpr, BIAS: tl.constexpr, RETENTION: tl.constexpr,
        GD: tl.constexpr, CLIP: tl.constexpr, PRECISION: tl.constexpr, SAVE_STATE: tl.constexpr,
        MOMENTUM_NORM: tl.constexpr, ALIGNED: tl.constexpr,
    ):
        # One program = one (batch row, head); it owns its state buffers, so the chunk loop needs
        # only CTA barriers between writing the state and reading it back. Depth 2 walks the hidden
        # units in blocks of HB (three passes: read + keys forward, δ1 and the norms, the update),
        # so only (BT, HB) tiles are live at a time; the recomputed key products cost ~20% more
        # arithmetic than holding (BT, hidden) tiles, which spilled.
        pid = tl.program_id(0)
        row = pid // num_heads
        head = pid % num_heads

        rt = tl.arange(0, BT)
        rd = tl.arange(0, BD)
        d_ok = rd < head_dim
        q_base = q_ptr + _lane_offset(row, head, q_sb, q_sh, ALIGNED)
        k_base = k_ptr + _lane_offset(row, head, k_sb, k_sh, ALIGNED)
        v_base = v_ptr + _lane_offset(row, head, v_sb, v_sh, ALIGNED)
        g_off = row * g_sb + head * g_sh
        o_base = o_ptr + pid * length * head_dim
        s_base = pid * length
        causal = rt[:, None] >= rt[None, :]  # [t, i]: i <= t

        n_chunks = tl.cdiv(length, chunk)
        for c in range(0, n_chunks):
            pos = c * chunk + rt
            t_ok = (rt < chunk) & (pos < length)
            tok_mask = t_ok[:, None] & d_ok[None, :]
            keys, queries, theta, _eta, log_eta, _keep, log_keep, delta_t = _chunk_inputs(
                k_base, q_base, lr_ptr, eta_ptr, alpha_ptr, hd_ptr, g_off, pos, rd, t_ok, tok_mask, k_st, q_st, g_st,
                GD, BIAS)
            if RETENTION <= 1:
                log_beta = log_keep
            else:
                log_beta = tl.zeros_like(log_keep)
            log_temperature = tl.sum(log_keep, axis=0)
            key_sq = tl.sum(keys * keys, axis=1)

            if SAVE_STATE:  # chunk-start state for the backward kernel: [W1, W2, S1, S2] per chunk
                matrix = hidden * head_dim
                ck = ckpt_ptr + (pid * n_chunks + c) * 4 * matrix
                for j in range(0, BHID // HB):
                    loc1, mask1, loc2, mask2 = _slice_tiles(j * HB + tl.arange(0, HB), rd, d_ok, hidden, head_dim)
                    tl.store(ck + loc1, tl.load(w1_ptr + pid * matrix + loc1, mask=mask1), mask=mask1)
                    tl.store(ck + matrix + loc2, tl.load(w2_ptr + pid * matrix + loc2, mask=mask2), mask=mask2)
                    tl.store(ck + 2 * matrix + loc1, tl.load(s1_ptr + pid * matrix + loc1, mask=mask1), mask=mask1)
                    tl.store(ck + 3 * matrix + loc2, tl.load(s2_ptr + pid * matrix + loc2, mask=mask2), mask=mask2)

            if DEPTH == 2:
                rb = tl.arange(0, HB)
                # ---- pass 1: the read y_t = M0(q_t) and the keys forward (y = W2 σ(W1 k))
                read = tl.zeros((BT, BD), tl.float32)
                pred = tl.zeros((BT, BD), tl.float32)
                hidden_sq = tl.zeros((BT,), tl.float32)
                hidden_gram = tl.zeros((BT, BT), tl.float32)  # A Aᵀ
                hidden_s2 = tl.zeros((BT, BD), tl.float32)  # A S2ᵀ, for <S0, u>
                s0_sq = 0.0
                for j in range(0, BHID // HB):
                    loc1, mask1, loc2, mask2 = _slice_tiles(j * HB + rb, rd, d_ok, hidden, head_dim)
                    off1, off2 = pid * hidden * head_dim + loc1, pid * head_dim * hidden + loc2
                    w1 = tl.load(w1_ptr + off1, mask=mask1, other=0.0)
                    w2 = tl.load(w2_ptr + off2, mask=mask2, other=0.0)
                    zq = _mm(queries, tl.trans(w1), PRECISION)
                    read += _mm(zq * tl.sigmoid(zq), tl.trans(w2), PRECISION)
                    z = _mm(keys, tl.trans(w1), PRECISION)
                    act = z * tl.sigmoid(z)
                    pred += _mm(act, tl.trans(w2), PRECISION)
                    hidden_sq += tl.sum(act * act, axis=1)
                    if MOMENTUM_NORM and not GD:
                        s2 = tl.load(s2_ptr + off2, mask=mask2, other=0.0)
                        hidden_gram += _mm(act, tl.trans(act), PRECISION)
                        hidden_s2 += _mm(act, tl.trans(s2), PRECISION)
                        s0_sq += tl.sum(tl.sum(s2 * s2, axis=1), axis=0)
                tl.store(o_base + pos[:, None] * head_dim + rd[None, :], read.to(o_ptr.dtype.element_ty), mask=tok_mask)
                values = tl.load(v_base + pos[:, None] * v_st + rd[None, :], mask=tok_mask, other=0.0).to(tl.float32)
                delta2 = _bias_derivative(pred - values, delta_t, p_exp, BIAS)
                delta2 = tl.where(tok_mask, delta2, 0.0)

                # ---- pass 2: δ1 = (δ2 W2) ⊙ σ'(z), its norms and Gram
                delta1_sq = tl.zeros((BT,), tl.float32)
                delta1_gram = tl.zeros((BT, BT), tl.float32)
                if MOMENTUM_NORM and not GD:
                    s0_dot_u = tl.sum(hidden_s2 * delta2, axis=1)
                else:
                    s0_dot_u = tl.zeros((BT,), tl.float32)
                for j in range(0, BHID // HB):
                    loc1, mask1, loc2, mask2 = _slice_tiles(j * HB + rb, rd, d_ok, hidden, head_dim)
                    off1, off2 = pid * hidden * head_dim + loc1, pid * head_dim * hidden + loc2
                    w1 = tl.load(w1_ptr + off1, mask=mask1, other=0.0)
                    w2 = tl.load(w2_ptr + off2, mask=mask2, other=0.0)
                    z = _mm(keys, tl.trans(w1), PRECISION)
                    sig = tl.sigmoid(z)
                    delta1 = _mm(delta2, w2, PRECISION) * (sig * (1.0 + z * (1.0 - sig)))
                    delta1_sq += tl.sum(delta1 * delta1, axis=1)
                    if MOMENTUM_NORM and not GD:
                        s1 = tl.load(s1_ptr + off1, mask=mask1, other=0.0)
                        delta1_gram += _mm(delta1, tl.trans(delta1), PRECISION)
                        s0_dot_u += tl.sum(_mm(keys, tl.trans(s1), PRECISION) * delta1, axis=1)
                        s0_sq += tl.sum(tl.sum(s1 * s1, axis=1), axis=0)
                grad_sq = delta1_sq * key_sq + tl.sum(delta2 * delta2, axis=1) * hidden_sq
            else:
                rd2 = tl.arange(0, BD)
                off1 = pid * head_dim * head_dim + rd2[:, None] * head_dim + rd[None, :]
                mask1 = d_ok[:, None] & d_ok[None, :]
                w1 = tl.load(w1_ptr + off1, mask=mask1, other=0.0)
                s1 = tl.load(s1_ptr + off1, mask=mask1, other=0.0)
                read = _mm(queries, tl.trans(w1), PRECISION)
                tl.store(o_base + pos[:, None] * head_dim + rd[None, :], read.to(o_ptr.dtype.element_ty), mask=tok_mask)
                values = tl.load(v_base + pos[:, None] * v_st + rd[None, :], mask=tok_mask, other=0.0).to(tl.float32)
                pred = _mm(keys, tl.trans(w1), PRECISION)
                delta1 = _bias_derivative(pred - values, delta_t, p_exp, BIAS)
                delta1 = tl.where(tok_mask, delta1, 0.0)
                grad_sq = tl.sum(delta1 * delta1, axis=1) * key_sq
                if not GD:
                    s0_dot_u = tl.sum(_mm(keys, tl.trans(s1), PRECISION) * delta1, axis=1)
                    s0_sq = tl.sum(tl.sum(s1 * s1, axis=1), axis=0)

            # ---- ||u_i|| and its clip (folded into θ_i, as torch_chunked does)
            grad_norm, clip, step = _clip(grad_sq, theta, t_ok, max_grad_norm, CLIP)
            grad_norm = grad_norm * clip
            eta_products, eta_prefix, memory_step, momentum_step, momentum_carry, eta_total, beta_total = _chunk_gates(
                log_eta, log_beta, step, t_ok, causal
            )

            # ---- ||S_t|| through b×b Grams: <u_i, u_j> = Σ_l <δ_l,i, δ_l,j> <x_l,i, x_l,j>
            if not MOMENTUM_NORM:  # the caller reads no ||S_t||: NaN, as numba_cpu writes then
                momentum_norm = tl.full((BT,), float("nan"), tl.float32)
            elif GD:
                momentum_norm = theta * grad_norm  # S_t = -θ_t u_t exactly
            else:
                key_gram = _mm(keys, tl.trans(keys), PRECISION)
                if DEPTH == 2:
                    gram = delta1_gram * key_gram + _mm(delta2, tl.trans(delta2), PRECISION) * hidden_gram
                else:
                    gram = _mm(delta1, tl.trans(delta1), PRECISION) * key_gram
                momentum_norm = _momentum_norm(eta_products, eta_prefix, step, gram, s0_dot_u, s0_sq, PRECISION)
            tl.store(gn_ptr + s_base + pos, grad_norm.to(gn_ptr.dtype.element_ty), mask=t_ok)
            tl.store(mn_ptr + s_base + pos, momentum_norm.to(mn_ptr.dtype.element_ty), mask=t_ok)

            # ---- chunk-end state: M_b = B M0 + c_S S0 - Σ w_i θ_i u_i,  S_b = E S0 - Σ E(i+1..b) θ_i u_i
            if DEPTH == 2:
                for j in range(0, BHID // HB):  # pass 3 (δ1 recomputed per block)
                    loc1, mask1, loc2, mask2 = _slice_tiles(j * HB + rb, rd, d_ok, hidden, head_dim)
                    off1, off2 = pid * hidden * head_dim + loc1, pid * head_dim * hidden + loc2
                    w1 = tl.load(w1_ptr + off1, mask=mask1, other=0.0)
                    w2 = tl.load(w2_ptr + off2, mask=mask2, other=0.0)
                    s1 = tl.load(s1_ptr + off1, mask=mask1, other=0.0)
                    s2 = tl.load(s2_ptr + off2, mask=mask2, other=0.0)
                    z = _mm(keys, tl.trans(w1), PRECISION)
                    sig = tl.sigmoid(z)
                    act = z * sig
                    delta1 = _mm(delta2, w2, PRECISION) * (sig * (1.0 + z * (1.0 - sig)))
                    new_w1, new_s1 = _state_step(w1, s1, delta1, keys, memory_step, momentum_step, momentum_carry,
                                                 eta_total, beta_total, PRECISION)
                    new_w2, new_s2 = _state_step(w2, s2, delta2, act, memory_step, momentum_step, momentum_carry,
                                                 eta_total, beta_total, PRECISION)
                    # lq / kl need whole matrices: the wrapper runs them with HB = BHID (one block).
                    new_w1 = _retain(new_w1, mask1, hidden * head_dim, log_temperature, rho1, q_exp, RETENTION)
                    new_w2 = _retain(new_w2, mask2, head_dim * hidden, log_temperature, rho2, q_exp, RETENTION)
                    tl.debug_barrier()  # every thread has read this block before any overwrites it
                    tl.store(w1_ptr + off1, new_w1, mask=mask1)
                    tl.store(s1_ptr + off1, new_s1, mask=mask1)
                    tl.store(w2_ptr + off2, new_w2, mask=mask2)
                    tl.store(s2_ptr + off2, new_s2, mask=mask2)
            else:
                new_w1, new_s1 = _state_step(w1, s1, delta1, keys, memory_step, momentum_step, momentum_carry,
                                             eta_total, beta_total, PRECISION)
                new_w1 = _retain(new_w1, mask1, head_dim * head_dim, log_temperature, rho1, q_exp, RETENTION)
                tl.debug_barrier()
                tl.store(w1_ptr + off1, new_w1, mask=mask1)
                tl.store(s1_ptr + off1, new_s1, mask=mask1)
            # The next chunk's loads read what other threads of this program just stored.
            tl.debug_barrier()

    @triton.jit
    def _activations(z):
        """SiLU at z = W1 k: σ(z), a = z σ(z), σ'(z) = dSiLU/dz."""
        sig = tl.sigmoid(z)
        return sig, z * sig, sig * (1.0 + z * (1.0 - sig))

    @triton.jit
    def _block_forward(keys, delta2, w1, w2, PRECISION: tl.constexpr):
        """One block of hidden units at the chunk-start weights: z, σ(z), a, σ'(z), δ2 W2, δ1."""
        z = _mm(keys, tl.trans(w1), PRECISION)
        sig, act, dsig = _activations(z)
        g1 = _mm(delta2, w2, PRECISION)
        return z, sig, act, dsig, g1, g1 * dsig

    @triton.jit
    def _block_delta1_adjoint(keys, delta1, keys_dw1, keys_ds1, s1, memory_step, momentum_step, norm_term,
                              key_gram_adj, d_s0_dot_u, GRAMS: tl.constexpr, PRECISION: tl.constexpr):
        """Adjoint of one block of δ1, from the state update (keys_dw1 = K W̄1ᵀ, keys_ds1 = K S̄1ᵀ), ||u_i||
        and the ||S_t|| Grams."""
        d_delta1 = -memory_step[:, None] * keys_dw1 - momentum_step[:, None] * keys_ds1 + norm_term[:, None] * delta1
        if GRAMS:
            d_delta1 += 2.0 * _mm(key_gram_adj, delta1, PRECISION)
            d_delta1 += d_s0_dot_u[:, None] * _mm(keys, tl.trans(s1), PRECISION)
        return d_delta1

    @triton.jit(do_not_specialize=_LENGTH_DEPENDENT)
    def _memory_chunks_backward_kernel(
        q_ptr, k_ptr, v_ptr, lr_ptr, eta_ptr, alpha_ptr, ckpt_ptr,
        dw1_ptr, dw2_ptr, ds1_ptr, ds2_ptr,
        do_ptr, dgn_ptr, dmn_ptr,
        dq_ptr, dk_ptr, dv_ptr, dlr_ptr, deta_ptr, dalpha_ptr, xch_ptr, sync_ptr, ra_ptr,
        q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st,
        g_sb, g_sh, g_st,
        num_heads, length, chunk, head_dim, hidden, max_grad_norm,
        BT: tl.constexpr, BD: tl.constexpr, BHID: tl.constexpr, HB: tl.constexpr,
        RETENTION: tl.constexpr, GD: tl.constexpr, CLIP: tl.constexpr, PRECISION: tl.constexpr,
        GRAMS: tl.constexpr, PARTS: tl.constexpr, READ: tl.constexpr, BLOCKS: tl.constexpr, KEEP: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):
        # READ: the read's adjoints here (pass D); False: triton_read.read_backward has written the
        # query adjoint and each chunk's share of the state adjoint (ra_ptr, 2 matrices per chunk),
        # which pass D adds.
        # PARTS > 1: the hidden blocks of a (row, head) are shared among PARTS programs, which meet
        # after each pass to add up the sums over hidden units (as triton_split's forward; without
        # GRAMS only). Part 0 writes the per-token adjoints.
        # GRAMS (momentum, and the caller asked for ||S_t||): the adjoint of the ||S_t|| signal and
        # the Grams it needs; without it they are skipped, as the forward skips them.
        # Reverse-mode of the depth-2, l2 chunk step, chunk by chunk from the last one, one program
        # per (row, head). The chunk-start state comes from the forward's checkpoints; everything
        # else of the chunk is recomputed. dw*/ds* hold the adjoint of the state after the chunk and
        # are overwritten with the adjoint of the state before it. Adjoints are named d_<forward
        # name> and follow torch_chunked._chunk_step in reverse. Hidden units go in blocks of HB
        # over four passes (A: keys forward and the sums over hidden units that need no δ1; B: δ1,
        # its norms and Grams; C: the δ1 path's share of the δ2 adjoint; D: everything per block and
        # the state adjoints), recomputing the block products each pass instead of holding
        # (b × hidden) tiles.
        tl.static_assert(PARTS == 1 or not GRAMS)
        program = tl.program_id(0)
        pid = program // PARTS  # the (row, head)
        part = program % PARTS
        first = part * BLOCKS  # BLOCKS = BHID // HB // PARTS hidden blocks per part
        row = pid // num_heads
        head = pid % num_heads
        tiny = 1.1754943508222875e-38
        # exchange per (row, head) and part: A [pred, A W̄2ᵀ, A S̄2ᵀ, ||a||², 3 scalars], B [||δ1||²,
        # two step adjoints], C [δ2 adjoint], D [key and query adjoints]
        tile_size = BT * BD
        x_b = 3 * tile_size + BT + 4
        x_c = x_b + 3 * BT
        x_d = x_c + tile_size
        slot = x_d + 2 * tile_size
        x_lane = xch_ptr + pid * PARTS * slot
        x_mine = x_lane + part * slot
        counter = sync_ptr + pid

        rt = tl.arange(0, BT)
        rd = tl.arange(0, BD)
        rb = tl.arange(0, HB)
        tile = rt[:, None] * BD + rd[None, :]
        d_ok = rd < head_dim
        matrix = hidden * head_dim
        q_base = q_ptr + _lane_offset(row, head, q_sb, q_sh, ALIGNED)
        k_base = k_ptr + _lane_offset(row, head, k_sb, k_sh, ALIGNED)
        v_base = v_ptr + _lane_offset(row, head, v_sb, v_sh, ALIGNED)
        g_off = row * g_sb + head * g_sh
        tok_base = pid * length * head_dim
        s_base = pid * length
        causal = rt[:, None] >= rt[None, :]

        # KEEP (one hidden block per program, as the split at hidden 128 gives): the block's products
        # computed in one pass are kept for the later ones instead of recomputed (K W1ᵀ from A, δ2 W2
        # and K W̄1ᵀ, K S̄1ᵀ from B, ∂δ1 from C), and the state adjoints stay in registers across
        # chunks instead of a global round trip per pass.
        tl.static_assert(BLOCKS * HB * PARTS == BHID and KEEP == (BLOCKS == 1))
        if KEEP:
            own_loc1, own_mask1, own_loc2, own_mask2 = _slice_tiles(first * HB + rb, rd, d_ok, hidden, head_dim)
            dw1 = tl.load(dw1_ptr + pid * matrix + own_loc1, mask=own_mask1, other=0.0)
            dw2 = tl.load(dw2_ptr + pid * matrix + own_loc2, mask=own_mask2, other=0.0)
            ds1 = tl.load(ds1_ptr + pid * matrix + own_loc1, mask=own_mask1, other=0.0)
            ds2 = tl.load(ds2_ptr + pid * matrix + own_loc2, mask=own_mask2, other=0.0)
        n_chunks = tl.cdiv(length, chunk)
        for rc in range(0, n_chunks):
            c = n_chunks - 1 - rc
            pos = c * chunk + rt
            t_ok = (rt < chunk) & (pos < length)
            tok_mask = t_ok[:, None] & d_ok[None, :]
            tok_off = pos[:, None] * head_dim + rd[None, :]
            keys, queries, theta, eta, log_eta, keep, log_keep, _ = _chunk_inputs(
                k_base, q_base, lr_ptr, eta_ptr, alpha_ptr, lr_ptr, g_off, pos, rd, t_ok, tok_mask, k_st, q_st, g_st,
                GD, 0)  # l2 only: no Huber δ
            values = tl.load(v_base + pos[:, None] * v_st + rd[None, :], mask=tok_mask, other=0.0).to(tl.float32)
            if RETENTION <= 1:
                log_beta = log_keep
            else:
                log_beta = tl.zeros_like(log_keep)
            if READ:
                d_read = tl.load(do_ptr + tok_base + tok_off, mask=tok_mask, other=0.0).to(tl.float32)
            d_grad_norm = tl.load(dgn_ptr + s_base + pos, mask=t_ok, other=0.0).to(tl.float32)
            d_momentum_norm = tl.load(dmn_ptr + s_base + pos, mask=t_ok, other=0.0).to(tl.float32)
            ck = ckpt_ptr + (pid * n_chunks + c) * 4 * matrix
            key_sq = tl.sum(keys * keys, axis=1)

            # ---- pass A: keys forward; sums over hidden units that need no δ1
            pred = tl.zeros((BT, BD), tl.float32)
            act_sq = tl.zeros((BT,), tl.float32)
            act_dw2 = tl.zeros((BT, BD), tl.float32)  # A W̄2'ᵀ
            act_ds2 = tl.zeros((BT, BD), tl.float32)  # A S̄2'ᵀ
            act_gram = tl.zeros((BT, BT), tl.float32)
            act_s2 = tl.zeros((BT, BD), tl.float32)
            d_beta_total = 0.0
            d_momentum_carry = 0.0
            d_eta_total = 0.0
            s0_sq = 0.0
            if KEEP:  # defined before the block loops, the kept tiles leave them (loop-carried)
                kept_z = tl.zeros((BT, HB), tl.float32)
                kept_g1 = tl.zeros((BT, HB), tl.float32)
                kept_keys_dw1 = tl.zeros((BT, HB), tl.float32)
                kept_keys_ds1 = tl.zeros((BT, HB), tl.float32)
                kept_d_delta1 = tl.zeros((BT, HB), tl.float32)
            for j in range(first, first + BLOCKS):
                loc1, mask1, loc2, mask2 = _slice_tiles(j * HB + rb, rd, d_ok, hidden, head_dim)
                w1 = tl.load(ck + loc1, mask=mask1, other=0.0)
                w2 = tl.load(ck + matrix + loc2, mask=mask2, other=0.0)
                s1 = tl.load(ck + 2 * matrix + loc1, mask=mask1, other=0.0)
                s2 = tl.load(ck + 3 * matrix + loc2, mask=mask2, other=0.0)
                if not KEEP:
                    dw1 = tl.load(dw1_ptr + pid * matrix + loc1, mask=mask1, other=0.0)
                    dw2 = tl.load(dw2_ptr + pid * matrix + loc2, mask=mask2, other=0.0)
                    ds1 = tl.load(ds1_ptr + pid * matrix + loc1, mask=mask1, other=0.0)
                    ds2 = tl.load(ds2_ptr + pid * matrix + loc2, mask=mask2, other=0.0)
                z = _mm(keys, tl.trans(w1), PRECISION)
                kept_z = z
                act = z * tl.sigmoid(z)
                pred += _mm(act, tl.trans(w2), PRECISION)
                act_sq += tl.sum(act * act, axis=1)
                act_dw2 += _mm(act, tl.trans(dw2), PRECISION)
                act_ds2 += _mm(act, tl.trans(ds2), PRECISION)
                d_beta_total += tl.sum(tl.sum(dw1 * w1, axis=1), axis=0) + tl.sum(tl.sum(dw2 * w2, axis=1), axis=0)
                d_momentum_carry += tl.sum(tl.sum(dw1 * s1, axis=1), axis=0) + tl.sum(tl.sum(dw2 * s2, axis=1), axis=0)
                d_eta_total += tl.sum(tl.sum(ds1 * s1, axis=1), axis=0) + tl.sum(tl.sum(ds2 * s2, axis=1), axis=0)
                if GRAMS:
                    act_gram += _mm(act, tl.trans(act), PRECISION)
                    act_s2 += _mm(act, tl.trans(s2), PRECISION)
                    s0_sq += tl.sum(tl.sum(s1 * s1, axis=1), axis=0) + tl.sum(tl.sum(s2 * s2, axis=1), axis=0)
            if PARTS > 1:
                tl.store(x_mine + tile, pred)
                tl.store(x_mine + tile_size + tile, act_dw2)
                tl.store(x_mine + 2 * tile_size + tile, act_ds2)
                tl.store(x_mine + 3 * tile_size + rt, act_sq)
                tl.store(x_mine + 3 * tile_size + BT, d_beta_total)
                tl.store(x_mine + 3 * tile_size + BT + 1, d_momentum_carry)
                tl.store(x_mine + 3 * tile_size + BT + 2, d_eta_total)
                _meet(counter, PARTS * (4 * rc + 1))
                pred = _sum_parts(x_lane, slot, tile, PARTS)
                act_dw2 = _sum_parts(x_lane, slot, tile_size + tile, PARTS)
                act_ds2 = _sum_parts(x_lane, slot, 2 * tile_size + tile, PARTS)
                act_sq = _sum_parts(x_lane, slot, 3 * tile_size + rt, PARTS)
                d_beta_total = _sum_parts(x_lane, slot, 3 * tile_size + BT, PARTS)
                d_momentum_carry = _sum_parts(x_lane, slot, 3 * tile_size + BT + 1, PARTS)
                d_eta_total = _sum_parts(x_lane, slot, 3 * tile_size + BT + 2, PARTS)
            delta2 = tl.where(tok_mask, 2.0 * (pred - values), 0.0)
            delta2_sq = tl.sum(delta2 * delta2, axis=1)
            d_memory_step = -tl.sum(delta2 * act_dw2, axis=1)
            d_momentum_step = -tl.sum(delta2 * act_ds2, axis=1)

            # ---- pass B: δ1 = (δ2 W2) ⊙ σ'(z), its norms and Grams
            delta1_sq = tl.zeros((BT,), tl.float32)
            d_memory_step_b = tl.zeros((BT,), tl.float32)  # the hidden blocks' shares of the two
            d_momentum_step_b = tl.zeros((BT,), tl.float32)  # step adjoints
            delta1_gram = tl.zeros((BT, BT), tl.float32)
            if GRAMS:
                s0_dot_u = tl.sum(act_s2 * delta2, axis=1)
            else:
                s0_dot_u = tl.zeros((BT,), tl.float32)
            for j in range(first, first + BLOCKS):
                loc1, mask1, loc2, mask2 = _slice_tiles(j * HB + rb, rd, d_ok, hidden, head_dim)
                w2 = tl.load(ck + matrix + loc2, mask=mask2, other=0.0)
                if KEEP:
                    z = kept_z
                    sig, act, dsig = _activations(z)
                    g1 = _mm(delta2, w2, PRECISION)
                    delta1 = g1 * dsig
                else:
                    w1 = tl.load(ck + loc1, mask=mask1, other=0.0)
                    dw1 = tl.load(dw1_ptr + pid * matrix + loc1, mask=mask1, other=0.0)
                    ds1 = tl.load(ds1_ptr + pid * matrix + loc1, mask=mask1, other=0.0)
                    z, sig, act, dsig, g1, delta1 = _block_forward(keys, delta2, w1, w2, PRECISION)
                keys_dw1 = _mm(keys, tl.trans(dw1), PRECISION)
                keys_ds1 = _mm(keys, tl.trans(ds1), PRECISION)
                kept_g1, kept_keys_dw1, kept_keys_ds1 = g1, keys_dw1, keys_ds1
                delta1_sq += tl.sum(delta1 * delta1, axis=1)
                d_memory_step_b -= tl.sum(delta1 * keys_dw1, axis=1)
                d_momentum_step_b -= tl.sum(delta1 * keys_ds1, axis=1)
                if GRAMS:
                    s1 = tl.load(ck + 2 * matrix + loc1, mask=mask1, other=0.0)
                    delta1_gram += _mm(delta1, tl.trans(delta1), PRECISION)
                    s0_dot_u += tl.sum(_mm(keys, tl.trans(s1), PRECISION) * delta1, axis=1)

            if PARTS > 1:
                tl.store(x_mine + x_b + rt, delta1_sq)
                tl.store(x_mine + x_b + BT + rt, d_memory_step_b)
                tl.store(x_mine + x_b + 2 * BT + rt, d_momentum_step_b)
                _meet(counter, PARTS * (4 * rc + 2))
                delta1_sq = _sum_parts(x_lane, slot, x_b + rt, PARTS)
                d_memory_step_b = _sum_parts(x_lane, slot, x_b + BT + rt, PARTS)
                d_momentum_step_b = _sum_parts(x_lane, slot, x_b + 2 * BT + rt, PARTS)
            d_memory_step += d_memory_step_b
            d_momentum_step += d_momentum_step_b

            # ---- the per-token part of the chunk (as the forward), then its adjoints
            norm_sq = delta1_sq * key_sq + delta2_sq * act_sq
            norm, clip, step = _clip(norm_sq, theta, t_ok, max_grad_norm, CLIP)
            grad_norm = norm * clip
            cum_log_eta = tl.cumsum(log_eta, axis=0)
            cum_log_beta = tl.cumsum(log_beta, axis=0)
            log_eta_total = tl.sum(log_eta, axis=0)
            log_beta_total = tl.sum(log_beta, axis=0)
            eta_products = tl.exp(tl.where(causal, cum_log_eta[:, None] - cum_log_eta[None, :], float("-inf")))
            eta_prefix = tl.exp(cum_log_eta)
            beta_suffix = tl.where(t_ok, tl.exp(log_beta_total - cum_log_beta), 0.0)
            memory_coeff = tl.sum(eta_products * beta_suffix[:, None], axis=0)
            momentum_carry = tl.sum(beta_suffix * eta_prefix, axis=0)
            momentum_coeff = tl.exp(log_eta_total - cum_log_eta)
            eta_total = tl.exp(log_eta_total)
            beta_total = tl.exp(log_beta_total)
            memory_step = memory_coeff * step
            momentum_step = momentum_coeff * step

            # ||S_t|| (momentum) or θ_t ||u_t|| (gd)
            d_step = tl.zeros((BT,), tl.float32)
            d_eta_prefix = tl.zeros((BT,), tl.float32)
            d_eta_products = tl.zeros((BT, BT), tl.float32)
            d_s0_sq = 0.0
            d_s0_dot_u = tl.zeros((BT,), tl.float32)
            key_gram_adj = tl.zeros((BT, BT), tl.float32)  # d_gram ⊙ KKᵀ
            if GD:
                d_theta = d_momentum_norm * grad_norm
                d_grad_norm += d_momentum_norm * theta
            elif not GRAMS:
                d_theta = tl.zeros((BT,), tl.float32)
            else:
                d_theta = tl.zeros((BT,), tl.float32)
                weighted = eta_products * step[None, :]
                key_gram = _mm(keys, tl.trans(keys), PRECISION)
                delta2_gram = _mm(delta2, tl.trans(delta2), PRECISION)
                gram = delta1_gram * key_gram + delta2_gram * act_gram
                weighted_s0u = tl.sum(weighted * s0_dot_u[None, :], axis=1)
                weighted_gram = _mm(weighted, gram, PRECISION)
                momentum_sq = (eta_prefix * eta_prefix * s0_sq - 2.0 * eta_prefix * weighted_s0u
                               + tl.sum(weighted_gram * weighted, axis=1))
                momentum_norm = tl.sqrt(tl.maximum(momentum_sq, tiny))
                d_momentum_sq = tl.where(momentum_sq >= tiny, d_momentum_norm / (2.0 * momentum_norm), 0.0)
                d_eta_prefix += d_momentum_sq * (2.0 * eta_prefix * s0_sq - 2.0 * weighted_s0u)
                d_s0_sq = tl.sum(d_momentum_sq * eta_prefix * eta_prefix, axis=0)
                d_weighted = d_momentum_sq[:, None] * (2.0 * weighted_gram - 2.0 * eta_prefix[:, None] * s0_dot_u[None, :])
                d_s0_dot_u = -2.0 * tl.sum((d_momentum_sq * eta_prefix)[:, None] * weighted, axis=0)
                d_gram = _mm(tl.trans(weighted * d_momentum_sq[:, None]), weighted, PRECISION)  # Λᵀ diag(m) Λ
                d_eta_products += d_weighted * step[None, :]
                d_step += tl.sum(d_weighted * eta_products, axis=0)
                key_gram_adj = d_gram * key_gram
                delta1_gram_adj = d_gram * delta1_gram
                act_gram_adj = d_gram * act_gram
                delta2_gram_adj = d_gram * delta2_gram

            # gate coefficients from the cumulative log sums
            d_step += d_memory_step * memory_coeff + d_momentum_step * momentum_coeff
            d_memory_coeff = d_memory_step * step
            d_momentum_coeff = d_momentum_step * step
            d_eta_products += beta_suffix[:, None] * d_memory_coeff[None, :]  # w_i = Σ_t L[t,i] B(t+1..b)
            d_beta_suffix = tl.sum(eta_products * d_memory_coeff[None, :], axis=1) + d_momentum_carry * eta_prefix
            d_eta_prefix += d_momentum_carry * beta_suffix
            d_log_eta_total = tl.sum(d_momentum_coeff * momentum_coeff, axis=0) + d_eta_total * eta_total
            d_log_beta_total = d_beta_total * beta_total
            d_cum_log_eta = -d_momentum_coeff * momentum_coeff + d_eta_prefix * eta_prefix
            through_products = d_eta_products * eta_products
            d_cum_log_eta += tl.sum(through_products, axis=1) - tl.sum(through_products, axis=0)
            through_suffix = tl.where(t_ok, d_beta_suffix * beta_suffix, 0.0)
            d_log_beta_total += tl.sum(through_suffix, axis=0)
            d_cum_log_beta = -through_suffix
            # adjoint of a cumulative sum = reverse cumulative sum; the totals reach every token
            d_log_eta = tl.sum(tl.where(causal, d_cum_log_eta[:, None], 0.0), axis=0) + d_log_eta_total
            d_log_beta = tl.sum(tl.where(causal, d_cum_log_beta[:, None], 0.0), axis=0) + d_log_beta_total

            # clip and ||u_i||
            d_clip = d_step * theta + d_grad_norm * norm
            d_theta += d_step * clip
            d_norm = d_grad_norm * clip
            if CLIP:
                d_norm += tl.where(norm >= max_grad_norm, -d_clip * clip / norm, 0.0)
            d_norm_sq = tl.where(norm_sq >= tiny, d_norm / (2.0 * norm), 0.0)

            # full-width parts of the δ2 and key adjoints
            d_delta2 = (-memory_step[:, None] * act_dw2 - momentum_step[:, None] * act_ds2
                        + (2.0 * d_norm_sq * act_sq)[:, None] * delta2)
            d_keys = (2.0 * d_norm_sq * delta1_sq)[:, None] * keys
            if GRAMS:
                d_delta2 += 2.0 * _mm(act_gram_adj, delta2, PRECISION) + d_s0_dot_u[:, None] * act_s2
                d_keys += 2.0 * _mm(delta1_gram_adj, keys, PRECISION)
            norm_term1 = 2.0 * d_norm_sq * key_sq

            # ---- pass C: the δ1 path's share of the δ2 adjoint (δ1 = (δ2 W2) ⊙ σ'(z))
            d_delta2_c = tl.zeros((BT, BD), tl.float32)
            for j in range(first, first + BLOCKS):
                loc1, mask1, loc2, mask2 = _slice_tiles(j * HB + rb, rd, d_ok, hidden, head_dim)
                w2 = tl.load(ck + matrix + loc2, mask=mask2, other=0.0)
                s1 = tl.load(ck + 2 * matrix + loc1, mask=mask1, other=0.0)
                if KEEP:
                    z, g1, keys_dw1, keys_ds1 = kept_z, kept_g1, kept_keys_dw1, kept_keys_ds1
                    sig, act, dsig = _activations(z)
                    delta1 = g1 * dsig
                else:
                    w1 = tl.load(ck + loc1, mask=mask1, other=0.0)
                    dw1 = tl.load(dw1_ptr + pid * matrix + loc1, mask=mask1, other=0.0)
                    ds1 = tl.load(ds1_ptr + pid * matrix + loc1, mask=mask1, other=0.0)
                    z, sig, act, dsig, g1, delta1 = _block_forward(keys, delta2, w1, w2, PRECISION)
                    keys_dw1 = _mm(keys, tl.trans(dw1), PRECISION)
                    keys_ds1 = _mm(keys, tl.trans(ds1), PRECISION)
                d_delta1 = _block_delta1_adjoint(keys, delta1, keys_dw1, keys_ds1, s1, memory_step, momentum_step,
                                                 norm_term1, key_gram_adj, d_s0_dot_u, GRAMS, PRECISION)
                kept_d_delta1 = d_delta1
                d_delta2_c += _mm(d_delta1 * dsig, tl.trans(w2), PRECISION)
            if PARTS > 1:
                tl.store(x_mine + x_c + tile, d_delta2_c)
                _meet(counter, PARTS * (4 * rc + 3))
                d_delta2_c = _sum_parts(x_lane, slot, x_c + tile, PARTS)
            d_delta2 += d_delta2_c
            d_pred = tl.where(tok_mask, 2.0 * d_delta2, 0.0)

            # ---- pass D: per block, the activations' and weights' adjoints; state adjoints out
            d_queries = tl.zeros((BT, BD), tl.float32)
            d_keys_d = tl.zeros((BT, BD), tl.float32)  # the hidden blocks' share of the key adjoint
            norm_term2 = 2.0 * d_norm_sq * delta2_sq
            for j in range(first, first + BLOCKS):
                loc1, mask1, loc2, mask2 = _slice_tiles(j * HB + rb, rd, d_ok, hidden, head_dim)
                w1 = tl.load(ck + loc1, mask=mask1, other=0.0)
                w2 = tl.load(ck + matrix + loc2, mask=mask2, other=0.0)
                s1 = tl.load(ck + 2 * matrix + loc1, mask=mask1, other=0.0)
                s2 = tl.load(ck + 3 * matrix + loc2, mask=mask2, other=0.0)
                if KEEP:
                    z, g1, d_delta1 = kept_z, kept_g1, kept_d_delta1
                    sig, act, dsig = _activations(z)
                    delta1 = g1 * dsig
                else:
                    dw1 = tl.load(dw1_ptr + pid * matrix + loc1, mask=mask1, other=0.0)
                    dw2 = tl.load(dw2_ptr + pid * matrix + loc2, mask=mask2, other=0.0)
                    ds1 = tl.load(ds1_ptr + pid * matrix + loc1, mask=mask1, other=0.0)
                    ds2 = tl.load(ds2_ptr + pid * matrix + loc2, mask=mask2, other=0.0)
                    z, sig, act, dsig, g1, delta1 = _block_forward(keys, delta2, w1, w2, PRECISION)
                    d_delta1 = _block_delta1_adjoint(keys, delta1, _mm(keys, tl.trans(dw1), PRECISION),
                                                     _mm(keys, tl.trans(ds1), PRECISION), s1, memory_step,
                                                     momentum_step, norm_term1, key_gram_adj, d_s0_dot_u, GRAMS,
                                                     PRECISION)
                d_g1 = d_delta1 * dsig
                d_act = (-_mm(delta2 * memory_step[:, None], dw2, PRECISION)
                         - _mm(delta2 * momentum_step[:, None], ds2, PRECISION)
                         + norm_term2[:, None] * act + _mm(d_pred, w2, PRECISION))
                d_keys_d -= _mm(delta1 * memory_step[:, None], dw1, PRECISION) + _mm(
                    delta1 * momentum_step[:, None], ds1, PRECISION)
                d_s1 = momentum_carry * dw1 + eta_total * ds1
                d_s2 = momentum_carry * dw2 + eta_total * ds2
                if GRAMS:
                    d_act += 2.0 * _mm(delta2_gram_adj, act, PRECISION) + _mm(delta2 * d_s0_dot_u[:, None], s2, PRECISION)
                    d_keys_d += _mm(delta1 * d_s0_dot_u[:, None], s1, PRECISION)
                    d_s1 += 2.0 * d_s0_sq * s1 + _mm(tl.trans(delta1 * d_s0_dot_u[:, None]), keys, PRECISION)
                    d_s2 += 2.0 * d_s0_sq * s2 + _mm(tl.trans(delta2 * d_s0_dot_u[:, None]), act, PRECISION)
                d_z = d_delta1 * g1 * (sig * (1.0 - sig) * (2.0 + z * (1.0 - 2.0 * sig))) + d_act * dsig  # σ''
                d_keys_d += _mm(d_z, w1, PRECISION)
                if READ:
                    zq = _mm(queries, tl.trans(w1), PRECISION)
                    sq = tl.sigmoid(zq)
                    d_zq = _mm(d_read, w2, PRECISION) * (sq * (1.0 + zq * (1.0 - sq)))
                    d_queries += _mm(d_zq, w1, PRECISION)
                    read_w1 = _mm(tl.trans(d_zq), queries, PRECISION)
                    read_w2 = _mm(tl.trans(d_read), zq * sq, PRECISION)
                else:
                    ra = ra_ptr + (pid * n_chunks + c) * 2 * matrix
                    read_w1 = tl.load(ra + loc1, mask=mask1, other=0.0)
                    read_w2 = tl.load(ra + matrix + loc2, mask=mask2, other=0.0)
                d_w1 = beta_total * dw1 + read_w1 + _mm(tl.trans(d_z), keys, PRECISION)
                d_w2 = (beta_total * dw2 + read_w2
                        + _mm(tl.trans(delta2), d_g1, PRECISION) + _mm(tl.trans(d_pred), act, PRECISION))
                if KEEP:  # the adjoint of the state before this chunk: the next (earlier) chunk's input
                    dw1, dw2, ds1, ds2 = d_w1, d_w2, d_s1, d_s2
                else:
                    tl.debug_barrier()  # every thread has read this block's adjoints before any overwrites them
                    tl.store(dw1_ptr + pid * matrix + loc1, d_w1, mask=mask1)
                    tl.store(dw2_ptr + pid * matrix + loc2, d_w2, mask=mask2)
                    tl.store(ds1_ptr + pid * matrix + loc1, d_s1, mask=mask1)
                    tl.store(ds2_ptr + pid * matrix + loc2, d_s2, mask=mask2)

            if PARTS > 1:
                tl.store(x_mine + x_d + tile, d_keys_d)
                if READ:
                    tl.store(x_mine + x_d + tile_size + tile, d_queries)
                _meet(counter, PARTS * (4 * rc + 4))
                d_keys_d = _sum_parts(x_lane, slot, x_d + tile, PARTS)
                if READ:
                    d_queries = _sum_parts(x_lane, slot, x_d + tile_size + tile, PARTS)
            d_keys += d_keys_d

            # ---- this chunk's input adjoints (part 0's to write)
            if part == 0:
                if READ:
                    tl.store(dq_ptr + tok_base + tok_off, d_queries.to(dq_ptr.dtype.element_ty), mask=tok_mask)
                tl.store(dk_ptr + tok_base + tok_off, d_keys.to(dk_ptr.dtype.element_ty), mask=tok_mask)
                tl.store(dv_ptr + tok_base + tok_off, (-d_pred).to(dv_ptr.dtype.element_ty), mask=tok_mask)
                tl.store(dlr_ptr + s_base + pos, d_theta, mask=t_ok)
                if not GD:
                    tl.store(deta_ptr + s_base + pos, tl.where(eta >= tiny, d_log_eta / eta, 0.0), mask=t_ok)
                if RETENTION <= 1:
                    tl.store(dalpha_ptr + s_base + pos, -d_log_beta / keep, mask=t_ok)
            tl.debug_barrier()
        if KEEP:
            tl.store(dw1_ptr + pid * matrix + own_loc1, dw1, mask=own_mask1)
            tl.store(dw2_ptr + pid * matrix + own_loc2, dw2, mask=own_mask2)
            tl.store(ds1_ptr + pid * matrix + own_loc1, ds1, mask=own_mask1)
            tl.store(ds2_ptr + pid * matrix + own_loc2, ds2, mask=own_mask2)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t detached, with unit stride in its last dimension (the kernels' token rows), copied only if not."""
    t = t.detach()
    return t if t.stride(-1) == 1 else t.contiguous()


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """t detached as fp32 contiguous, with no op where it already is (the input kernel's gates): each
    op costs host time per call."""
    t = t.detach()
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def _fused_forward(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config: MemoryConfig,
                   precision: str | None, num_warps: int | None = None, block_hidden: int | None = None,
                   checkpoints: torch.Tensor | None = None, momentum_signal: bool = True, parts: int | None = None,
                   read_apart: bool = True):
    """Run the kernel on detached tensors; returns (output, grad_norm, momentum_norm, weights, momenta).

    Where the config allows and the card has SMs to spare, each (row, head)'s hidden units are split
    across programs (triton_split.py). `parts`: None chooses; 0 runs the one-program kernel; P >= 1
    forces the split kernel with P parts (1 = its code path without splitting, for tests).
    read_apart: the split kernel leaves the read to triton_read (False: in its loop; benchmarks)."""
    batch, heads, length, dim = k.shape
    device = k.device
    out_dtype = q.dtype
    weight_dtype = weights[0].dtype
    kernel_precision = _kernel_precision(precision, q.dtype, device)

    q, k, v = (_unit_stride(t) for t in (q, k, v))
    lr_c, eta_c, alpha_c = (_fp32(t) for t in (lr, momentum, decay))
    delta_c = _fp32(huber_delta) if huber_delta is not None else lr_c
    # Working state, fp32, (B*H, out, in) contiguous; the kernel rewrites it chunk by chunk. The split
    # kernel reads the initial state where it lies; the others start from a copy (fill_state).
    initial = tuple(w.detach() for w in (*weights, *momenta))
    state = [torch.empty(w.shape, device=device, dtype=torch.float32) for w in initial]

    def fill_state():
        for working, start in zip(state, initial):
            working.copy_(start)

    depth = config.depth
    w1, s1 = state[0], state[depth]
    w2, s2 = (state[1], state[depth + 1]) if depth == 2 else (w1, s1)

    grad_norm = torch.empty(batch, heads, length, device=device, dtype=out_dtype)
    momentum_norm = torch.empty(batch, heads, length, device=device, dtype=out_dtype)
    if length > 0 and batch * heads > 0:
        hidden = config.hidden_dim if depth == 2 else dim
        block_t = _block(config.chunk_size)  # not min(chunk, length): one variant for every step length
        block_h = _block(hidden)
        if depth == 2 and config.retention not in ("lq", "kl"):  # those need whole matrices at chunk end
            block_h = min(block_h, _block(block_hidden or _DEFAULT_BLOCK_HIDDEN))
        requested_warps = num_warps
        if num_warps is None:
            num_warps = _DEFAULT_NUM_WARPS if depth == 2 and hidden * dim >= 4096 else 4
        if kernel_precision == "bf16" and not _bf16_tiles(dim, block_h if depth == 2 else 64):
            # On an H200 and an H100 with triton 3.6, bf16 products with 32-wide tiles (hidden blocks
            # of 32; head_dim 32 under training) hit an illegal memory access that tf32 products with
            # the same tiles did not; until that is understood, such shapes use tf32 products
            # (docs/KERNEL_NOTES.md).
            warnings.warn("triton_fused: bf16 products need 64-wide tiles; using tf32", stacklevel=3)
            kernel_precision = "tf32"
        output = _run_split(q, k, v, lr_c, eta_c, alpha_c, delta_c, w1, w2, s1, s2, grad_norm, momentum_norm,
                            config, kernel_precision, requested_warps, checkpoints, momentum_signal, parts, read_apart,
                            initial, fill_state)  # fmt: skip
        if output is None:  # the one-program kernel, writing (B, H, T, d) contiguous
            fill_state()
            output = torch.empty(batch, heads, length, dim, device=device, dtype=out_dtype)
            while True:
                try:
                    _launch(q, k, v, lr_c, eta_c, alpha_c, delta_c, w1, w2, s1, s2, output, grad_norm,
                            momentum_norm, config, heads, length, dim, hidden, block_t, block_h, kernel_precision,
                            num_warps, checkpoints, momentum_signal)
                    break
                except OutOfResources:
                    # Shared memory of the tile products grows with the hidden block (fp32 operands of
                    # tf32 products are the largest): halve it and compile again.
                    if block_h <= 16 or config.retention in ("lq", "kl") or kernel_precision == "bf16":
                        raise
                    block_h //= 2
    else:
        fill_state()
        if length == 0:
            output = q.clone().to(out_dtype)
        else:  # no (row, head): nothing to write
            output = torch.empty(batch, heads, length, dim, device=device, dtype=out_dtype)
    new_weights = tuple(s.to(weight_dtype) for s in state[:depth])
    new_momenta = tuple(s.to(weight_dtype) for s in state[depth:])
    return output, grad_norm, momentum_norm, new_weights, new_momenta


def _run_split(q, k, v, lr_c, eta_c, alpha_c, delta_c, w1, w2, s1, s2, grad_norm, momentum_norm,
               config, precision, num_warps, checkpoints, momentum_signal, parts, read_apart=True, initial=None,
               fill_state=None) -> torch.Tensor | None:
    """Run triton_split's kernel where it applies (`parts` forced, or chosen there); a chosen split
    that the card refuses warns. It starts from `initial` (the caller's state tensors) where their
    layout lets it (triton_split.initial_strides), else from w1, w2, s1, s2 after fill_state().

    Returns the output it wrote (in grad_norm's dtype), or None where it did not run (use the
    one-program kernel). With the read apart that is a (B, H, T, d) view of a (B, T, H, d) buffer:
    heads side by side per token, as the layer's output projection reads them, so the layer
    transposes nothing; with the read in the recurrence, (B, H, T, d) contiguous."""
    from . import triton_split

    if parts == 0:
        return None
    if not triton_split.split_supported(config, momentum_signal):
        if parts is not None:
            raise ValueError("the split kernel does not cover this config (see triton_split)")
        return None
    chosen = parts if parts is not None else triton_split.auto_parts(config, k.shape[0] * k.shape[1], precision,
                                                                     k.device)
    if chosen < 1 or (parts is None and chosen == 1):  # (the interpreter: one part per (row, head), no gain)
        return None
    if precision == "bf16" and not _bf16_tiles(k.shape[-1], config.hidden_dim // chosen):
        precision = "tf32"  # the bf16 guard of _fused_forward, at the slice width
    warps = num_warps or (_DEFAULT_NUM_WARPS if config.hidden_dim // chosen >= 64 else 4)
    batch, heads, length, dim = k.shape
    if read_apart:
        output = torch.empty(batch, length, heads, dim, device=k.device, dtype=grad_norm.dtype).permute(0, 2, 1, 3)
    else:
        output = torch.empty(batch, heads, length, dim, device=k.device, dtype=grad_norm.dtype)
    if initial is not None and triton_split.initial_strides(initial) is None:
        fill_state()
        initial = None
    try:
        triton_split.launch_split(q, k, v, lr_c, eta_c, alpha_c, delta_c, w1, w2, s1, s2, output, grad_norm,
                                  momentum_norm, config, chosen, precision, warps, checkpoints, read_apart, initial)
    except (OutOfResources, RuntimeError) as error:
        if parts is not None:
            raise
        warnings.warn(f"triton_fused: split kernel refused ({error}); using one program per head", stacklevel=4)
        return None
    return output


def _launch(q, k, v, lr_c, eta_c, alpha_c, delta_c, w1, w2, s1, s2, output, grad_norm, momentum_norm,
            config, heads, length, dim, hidden, block_t, block_h, kernel_precision, num_warps, checkpoints=None,
            momentum_signal=True):
    depth = config.depth
    shapes = config.weight_shapes()
    rho1 = retention_radius(config, shapes[0][1])
    rho2 = retention_radius(config, shapes[-1][1])
    batch = q.shape[0]
    aligned, strides = lane_strides(q, k, v)
    _memory_chunks_kernel[(batch * heads,)](
        q, k, v, lr_c, eta_c, alpha_c, delta_c,
        w1, w2, s1, s2,
        output, grad_norm, momentum_norm, w1 if checkpoints is None else checkpoints,
        *strides,
        lr_c.stride(0), lr_c.stride(1), lr_c.stride(2),
        heads, length, config.chunk_size, dim, hidden,
        float(config.max_grad_norm) if config.max_grad_norm != float("inf") else 1.0,
        float(config.p), float(config.q), float(rho1), float(rho2),
        BT=block_t, BD=_block(dim), BHID=_block(hidden), HB=block_h,
        DEPTH=depth, BIAS=_BIAS_CODES[config.attentional_bias],
        RETENTION=_RETENTION_CODES[config.retention],
        GD=config.algorithm == "gd", CLIP=config.max_grad_norm != float("inf"),
        PRECISION=kernel_precision, SAVE_STATE=checkpoints is not None, MOMENTUM_NORM=momentum_signal, ALIGNED=aligned,
        num_warps=num_warps,
        # No software pipelining: a prefetch of the next chunk's state would read it before
        # this chunk's stores (the state address does not change from chunk to chunk).
        num_stages=1,
    )


def backward_kernel_supported(config: MemoryConfig, precision: str = "bf16") -> bool:
    """Configs the Triton backward kernel covers; the others backpropagate through torch_chunked.

    With tf32 products (fp32 operands in shared memory) head_dim 64 / hidden 128 needs more shared
    memory than an H100 has at any hidden block (measured: three failed compiles, minutes lost), so
    tf32 is limited to head_dim 32."""
    covered = (config.depth == 2 and config.attentional_bias == "l2" and config.retention in ("decay", "none")
               and config.hidden_dim <= 128 and config.head_dim <= 64 and config.chunk_size <= 64)
    if precision == "tf32":
        covered = covered and config.head_dim <= 32
    return covered


def in_sixteenths(strides: list[int]) -> tuple[bool, list[int]]:
    """(ALIGNED, the strides to pass) for unspecialised strides a kernel multiplies back by 16 where
    ALIGNED (`_lane_offset`, prepare_triton's `_batch_strides`): divided by 16 where every one is a
    multiple of 16, else as they are."""
    aligned = all(s % 16 == 0 for s in strides)
    return aligned, [s // 16 for s in strides] if aligned else list(strides)


def lane_strides(*tensors: torch.Tensor) -> tuple[bool, list[int]]:
    """(ALIGNED, the strides to pass) for (B, H, T, d) tensors: batch, head and token stride of each,
    the first two `in_sixteenths`."""
    aligned, lane = in_sixteenths([s for t in tensors for s in t.stride()[:2]])
    return aligned, [s for i, t in enumerate(tensors) for s in (*lane[2 * i:2 * i + 2], t.stride(2))]


def _kernel_precision(precision: str | None, dtype: torch.dtype, device: torch.device) -> str:
    precision = precision or default_precision(dtype)
    if precision not in ("ieee", "tf32", "bf16"):
        raise ValueError(f"precision must be 'ieee', 'tf32' or 'bf16', got {precision!r}")
    if device.type != "cuda":  # Triton's interpreter (tests)
        return {"tf32": "ieee", "bf16": "bf16-emulated"}.get(precision, precision)
    return precision


def _triton_backward(config, precision, saved, checkpoints, grads, block_hidden: int | None = None,
                     momentum_signal: bool = True, parts: int | None = None, read_apart: bool = True):
    """Adjoints of (q, k, v, lr, momentum, decay, weights, momenta) by the backward kernel.

    read_apart: the read's adjoints come from triton_read.read_backward, one program per (lane,
    chunk), before the recurrence (False: in the backward kernel's last pass; benchmarks).

    Without the ||S_t|| Grams and with SMs to spare, each (row, head)'s hidden blocks are shared by
    `parts` programs (chosen by triton_split.auto_parts, as for the forward; a number forces it,
    1 = one program per (row, head))."""
    q, k, v, lr, momentum, decay, _huber_delta, *state = saved
    batch, heads, length, dim = k.shape
    hidden = config.hidden_dim
    device = k.device
    d_output, d_grad_norm, d_momentum_norm, *d_state = grads

    def buffer(grad, like):  # the state adjoints: fp32, rewritten in place by the kernel
        out = torch.empty(like.shape, device=device, dtype=torch.float32)
        return out.zero_() if grad is None else out.copy_(grad.detach())

    def read_only(grad, like):  # cotangents the kernel only reads (any float dtype, made fp32 there)
        return torch.zeros(like.shape, device=device, dtype=torch.float32) if grad is None else grad.detach().contiguous()

    d_w1, d_w2, d_s1, d_s2 = (buffer(g, t) for g, t in zip(d_state, state))
    if read_apart and d_output is not None and d_output.stride(-1) == 1:
        d_output = d_output.detach()  # only triton_read reads it, through its strides
    else:
        d_output = read_only(d_output, q)
    d_grad_norm = read_only(d_grad_norm, lr)
    d_momentum_norm = read_only(d_momentum_norm, lr)
    # every (token, channel) of these is written by the kernel, in the inputs' dtypes
    d_q, d_k, d_v = (torch.empty(batch, heads, length, dim, device=device, dtype=t.dtype) for t in (q, k, v))
    d_lr, d_eta, d_alpha = (torch.zeros(batch, heads, length, device=device, dtype=torch.float32) for _ in range(3))
    qs, ks, vs = (_unit_stride(t) for t in (q, k, v))
    lr_c, eta_c, alpha_c = (_fp32(t) for t in (lr, momentum, decay))
    kernel_precision = _kernel_precision(precision, q.dtype, device)
    block_h = min(_block(hidden), _block(block_hidden or _DEFAULT_BLOCK_HIDDEN))
    if kernel_precision == "bf16" and not _bf16_tiles(dim, block_h):  # see _fused_forward
        kernel_precision = "tf32"
    grams = momentum_signal and config.algorithm != "gd"
    forced = parts is not None
    if not forced:
        from .triton_split import auto_parts

        parts = 1 if grams else auto_parts(config, batch * heads, kernel_precision, device)
    elif parts > 1 and (grams or _interpreting()):
        raise ValueError("the backward kernel shares a (row, head) among programs only on CUDA and without "
                         "the ||S_t|| Grams")
    one_part_block = block_h
    if parts > 1:
        block_h = min(block_h, _block(hidden) // parts)  # at least one hidden block per part
    read_adjoints = None
    if read_apart and length > 0:
        from .triton_read import read_backward

        read_adjoints = read_backward(qs, checkpoints, d_output, d_q, config.chunk_size, hidden,
                                      min(block_h, _block(hidden)), kernel_precision)
    while length > 0:
        try:
            _launch_backward(qs, ks, vs, lr_c, eta_c, alpha_c, checkpoints, d_w1, d_w2, d_s1, d_s2, d_output,
                             d_grad_norm, d_momentum_norm, d_q, d_k, d_v, d_lr, d_eta, d_alpha, config, heads,
                             length, dim, hidden, block_h, kernel_precision, momentum_signal, parts, read_adjoints)
            break
        except OutOfResources:
            # fp32 operands (tf32 / ieee products) need twice bf16's shared memory: on an H100 the
            # 64-wide hidden blocks do not fit, 32-wide ones may. bf16 keeps 64 (see _fused_forward).
            if block_h <= 16 or kernel_precision == "bf16":
                raise
            block_h //= 2
        except RuntimeError as error:
            if parts == 1 or forced:
                raise
            # a cooperative grid the card refuses (other work holds SMs): one program per (row, head)
            warnings.warn(f"triton_fused: split backward refused ({error}); using one program per head")
            parts, block_h = 1, one_part_block
    cast = lambda g, like: g.to(like.dtype)  # noqa: E731
    state_grads = [cast(g, t) for g, t in zip((d_w1, d_w2, d_s1, d_s2), state)]
    return [cast(d_q, q), cast(d_k, k), cast(d_v, v), cast(d_lr, lr), cast(d_eta, momentum),
            cast(d_alpha, decay), None, *state_grads]


def _launch_backward(qs, ks, vs, lr_c, eta_c, alpha_c, checkpoints, d_w1, d_w2, d_s1, d_s2, d_output,
                     d_grad_norm, d_momentum_norm, d_q, d_k, d_v, d_lr, d_eta, d_alpha, config, heads,
                     length, dim, hidden, block_h, kernel_precision, momentum_signal=True, parts=1,
                     read_adjoints=None):
    from . import triton_split

    batch = qs.shape[0]
    lanes = batch * heads
    block_t, block_d = _block(config.chunk_size), _block(dim)
    # exchange slot per (row, head) and part, as laid out in the kernel (6 tiles, 4 vectors, 4 scalars)
    slot = 6 * block_t * block_d + 4 * block_t + 4
    exchange = torch.empty(lanes * parts * slot if parts > 1 else 1, device=qs.device, dtype=torch.float32)
    counters = torch.zeros(lanes if parts > 1 else 1, device=qs.device, dtype=torch.int32)
    aligned, strides = lane_strides(qs, ks, vs)
    _memory_chunks_backward_kernel[(lanes * parts,)](
        qs, ks, vs, lr_c, eta_c, alpha_c, checkpoints,
        d_w1, d_w2, d_s1, d_s2,
        d_output, d_grad_norm, d_momentum_norm,
        d_q, d_k, d_v, d_lr, d_eta, d_alpha, exchange, counters,
        d_w1 if read_adjoints is None else read_adjoints,
        *strides, lr_c.stride(0), lr_c.stride(1), lr_c.stride(2),
        heads, length, config.chunk_size, dim, hidden,
        float(config.max_grad_norm) if config.max_grad_norm != float("inf") else 1.0,
        BT=block_t, BD=block_d, BHID=_block(hidden), HB=block_h,
        RETENTION=_RETENTION_CODES[config.retention], GD=config.algorithm == "gd",
        CLIP=config.max_grad_norm != float("inf"),
        PRECISION=kernel_precision, GRAMS=momentum_signal and config.algorithm != "gd", PARTS=parts,
        READ=read_adjoints is None, ALIGNED=aligned, BLOCKS=_block(hidden) // block_h // parts, KEEP=_block(hidden) // block_h // parts == 1,
        num_warps=_DEFAULT_NUM_WARPS, num_stages=1, **(triton_split.cooperative_launch() if parts > 1 else {}),
    )


class _FusedMemoryUpdate(torch.autograd.Function):
    """Forward: the Triton kernel. Backward: the Triton backward kernel over checkpointed chunk-start
    states (``backward="triton"``, configs of `backward_kernel_supported`), else recompute through
    torch_chunked and backpropagate through it."""

    @staticmethod
    def forward(ctx, config, precision, backward, momentum_signal, q, k, v, lr, momentum, decay, huber_delta, *state):
        depth = config.depth
        weights, momenta = state[:depth], state[depth:]
        ctx.config = config
        ctx.precision = precision
        ctx.momentum_signal = momentum_signal
        kernel_precision = _kernel_precision(precision, q.dtype, k.device)
        if kernel_precision == "bf16" and not bf16_supported(config):
            kernel_precision = "tf32"
        ctx.use_kernel = backward in ("triton", "auto") and backward_kernel_supported(config, kernel_precision)
        checkpoints = None
        if ctx.use_kernel:
            batch, heads, length, _ = k.shape
            chunks = -(-length // config.chunk_size)
            checkpoints = torch.empty(batch * heads * chunks * 4 * config.hidden_dim * config.head_dim,
                                      device=k.device, dtype=torch.float32)
        output, grad_norm, momentum_norm, new_weights, new_momenta = _fused_forward(
            q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config, precision,
            checkpoints=checkpoints, momentum_signal=momentum_signal or not ctx.use_kernel,
        )
        ctx.save_for_backward(q, k, v, lr, momentum, decay, huber_delta, *state,
                              *(() if checkpoints is None else (checkpoints,)))
        return (output, grad_norm, momentum_norm, *new_weights, *new_momenta)

    @staticmethod
    def backward(ctx, *grads):
        config = ctx.config
        saved = ctx.saved_tensors
        if ctx.use_kernel:
            try:
                input_grads = _triton_backward(config, ctx.precision, saved[:-1], saved[-1], grads,
                                               momentum_signal=ctx.momentum_signal)
                input_grads = [g if need else None for g, need in zip(input_grads, ctx.needs_input_grad[4:])]
                return (None, None, None, None, *input_grads)
            except OutOfResources:  # the full-tile backward did not fit this GPU: recompute instead
                warnings.warn("triton_fused: backward kernel out of resources; recomputing through torch_chunked")
            saved = saved[:-1]

        from .torch_chunked import memory_update as chunked_update

        inputs = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(saved, ctx.needs_input_grad[4:])]
        q, k, v, lr, momentum, decay, huber_delta, *state = inputs
        depth = config.depth
        with torch.enable_grad():
            result = chunked_update(q, k, v, lr, momentum, decay, huber_delta,
                                    tuple(state[:depth]), tuple(state[depth:]), config)
            outputs = (result.output, result.grad_norm, result.momentum_norm, *result.weights, *result.momenta)
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            found = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) if pairs and wanted else []
        found = iter(found)
        input_grads = [next(found) if (t is not None and t.requires_grad) else None for t in inputs]
        return (None, None, None, None, *input_grads)


def memory_update(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config: MemoryConfig,
                  precision: str | None = None, backward: str = "auto", momentum_signal: bool = True) -> MemoryResult:
    """The memory update of torch_chunked, fused into one Triton launch (see the module docstring).

    Falls back to torch_chunked where `fused_supported` says no. momentum_signal=False: the caller
    reads no ||S_t||, so the kernels skip its Grams (~30 % of the chunk's products) and their
    adjoints, and return NaN for it (no gradient flows through it); with SMs to spare the forward
    then runs the split kernel (triton_split.py). Where the backward recomputes through
    torch_chunked, the forward keeps the signal. ``backward`` (training only):
    "torch" recomputes through torch_chunked; "triton" and "auto" (the default) run the backward
    kernel where `backward_kernel_supported` says so and it fits the GPU, else recompute.
    """
    if backward not in ("torch", "triton", "auto"):
        raise ValueError(f"backward must be 'torch', 'triton' or 'auto', got {backward!r}")
    check_inputs(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config)
    supported, _ = fused_supported(config, k.device)
    if torch.float64 in (q.dtype, weights[0].dtype):
        supported = False  # the kernel's state is fp32: float64 callers (tests, gradcheck) get torch_chunked
    if not supported:
        from .torch_chunked import memory_update as chunked_update

        return chunked_update(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config)
    tensors = (q, k, v, lr, momentum, decay, huber_delta, *weights, *momenta)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        outputs = _FusedMemoryUpdate.apply(config, precision, backward, momentum_signal, *tensors)
    else:
        outputs = _fused_forward(q, k, v, lr, momentum, decay, huber_delta, weights, momenta, config, precision,
                                 momentum_signal=momentum_signal)
        outputs = (*outputs[:3], *outputs[3], *outputs[4])
    depth = config.depth
    return MemoryResult(
        output=outputs[0],
        grad_norm=outputs[1],
        momentum_norm=outputs[2],
        weights=tuple(outputs[3 : 3 + depth]),
        momenta=tuple(outputs[3 + depth : 3 + 2 * depth]),
    )
