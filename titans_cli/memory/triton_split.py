"""The fused memory update with each (row, head)'s hidden units split across P programs.

`triton_fused._memory_chunks_kernel` runs one program per (batch row, head): at issue 8's reference
shape (batch 8 x 4 heads) that is 32 programs on a 132-SM card, each walking 256 chunks as a chain
of small dependent products, so three quarters of the card idle. Here P programs ("parts") share a
(row, head). Part p owns the hidden units [p·HB, (p+1)·HB): rows of W1 and S1, columns of W2 and S2.
It keeps that slice of the state in registers for the whole call instead of rewriting it through L2
every chunk, and it does only its slice's products. In the chunk step of MEMORY_MATH.md everything
is local to a slice except three sums over all hidden units:

    pred_t = Σ_p W2,p σ(W1,p k_t)   (and ||a_t||²)                                   meeting 1
    ||δ1_t||² = Σ_p ||δ1,p,t||²     (the clip of ||u_t||, and the grad_norm signal)     meeting 2

so twice a chunk the P parts write their partial sums to a scratch buffer, wait at a barrier (an
atomic counter per (row, head)), and then every part adds the partials in the same order p = 0..P-1:
all P parts hold bit-identical δ2 and clip factors, so their slices stay one consistent state. Work
that needs no partials (the values' load, the chunk's gate products) goes between a part's arrival
and its wait. The read y = M0(q) needs only the chunk-start state: by default (READ off) each part
stores its slice of the chunk-start W1, W2, and the reads are computed from them off the chain:
by reader programs added to the grid on the SMs the parts leave idle, each chunk as soon as its
state is saved (`_read_behind`), or where there are too few idle SMs by triton_read afterwards, all
(lane, chunk) at once. Per part and chunk that leaves 7 products of b × d × HB on the chain (keys
forward 2, δ1 1, update 4; READ on adds the read's 2, summed at meeting 1 and written by part 0)
against 24 of b × d × 64 in the one-program kernel at hidden 128 (three passes, recomputing the keys
forward).

The barrier needs every part of a (row, head) resident at once: the launch is cooperative (the
driver refuses a grid that does not fit, and the caller falls back to the one-program kernel), and
the split is chosen only when batch x heads x P programs fit the card's SMs, which is exactly where
the one-program kernel leaves the card idle. Under Triton's interpreter programs run one after
another, so only P = 1 can run there (the tests check the arithmetic that way; P > 1 on CUDA).

The backward kernel (triton_fused._memory_chunks_backward_kernel, `PARTS`) shares a (row, head)'s
hidden blocks the same way, meeting after each of its four passes.

Scope: depth 2, retention decay or none (lq / kl need whole matrices at chunk end), any attentional
bias, momentum or gd, clipping or not, no ||S_t|| signal unless gd (its Grams are sums over hidden
units too; callers that need it get the one-program kernel).
"""

from __future__ import annotations

import functools

import torch

from .config import MemoryConfig
from .triton_fused import (
    _BIAS_CODES,
    _LENGTH_DEPENDENT,
    _RETENTION_CODES,
    TRITON_AVAILABLE,
    _block,
    _interpreting,
    lane_strides,
)

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    from .triton_fused import (
        _arrive, _bias_derivative, _chunk_gates, _chunk_inputs, _clip, _lane_offset, _mm, _slice_tiles, _state_step,
        _sum_parts, _wait,
    )
    from .triton_read import _read_chunk

    @triton.jit(do_not_specialize=_LENGTH_DEPENDENT)
    def _memory_split_kernel(
        q_ptr, k_ptr, v_ptr, lr_ptr, eta_ptr, alpha_ptr, hd_ptr,
        w1_ptr, w2_ptr, s1_ptr, s2_ptr, w1_in, w2_in, s1_in, s2_in, in_sb, in_sh,
        o_ptr, gn_ptr, mn_ptr, ckpt_ptr, xch_ptr, sync_ptr,
        q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st, o_sb, o_sh, o_st,
        g_sb, g_sh, g_st,
        num_heads, length, chunk, head_dim, hidden, lanes, readers,
        max_grad_norm, p_exp,
        BT: tl.constexpr, BD: tl.constexpr, HB: tl.constexpr, PARTS: tl.constexpr,
        BIAS: tl.constexpr, RETENTION: tl.constexpr, GD: tl.constexpr, CLIP: tl.constexpr,
        PRECISION: tl.constexpr, SAVES: tl.constexpr, READ: tl.constexpr, ALIGNED: tl.constexpr,
    ):
        # SAVES: how many chunk-start matrices go to ckpt_ptr per (lane, chunk): 0; 2 (W1, W2, for
        # _memory_read_kernel); 4 (W1, W2, S1, S2: the backward's checkpoints, triton_fused's layout).
        # READ: the read y = M0(q) here (meeting 1 adds its partials too); False leaves it to
        # _memory_read_kernel, off the chunk recurrence, or to the `readers` programs after the
        # lanes x PARTS that run it (_read_behind; o_sb, o_sh, o_st: the output's strides for them).
        tl.static_assert(READ or SAVES >= 2)
        pid = tl.program_id(0)
        if pid >= lanes * PARTS:
            _read_behind(q_ptr, ckpt_ptr, o_ptr, sync_ptr, pid - lanes * PARTS, readers, lanes, q_sb, q_sh, q_st,
                         o_sb, o_sh, o_st, num_heads, length, chunk, head_dim, hidden, SAVES, BT, BD, HB, PARTS,
                         PRECISION, ALIGNED)  # fmt: skip
        else:
            _recurrence(q_ptr, k_ptr, v_ptr, lr_ptr, eta_ptr, alpha_ptr, hd_ptr, w1_ptr, w2_ptr, s1_ptr, s2_ptr,
                        w1_in, w2_in, s1_in, s2_in, in_sb, in_sh, o_ptr, gn_ptr, mn_ptr, ckpt_ptr, xch_ptr, sync_ptr,
                        q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st, g_sb, g_sh, g_st, num_heads, length,
                        chunk, head_dim, hidden, max_grad_norm, p_exp, pid, BT, BD, HB, PARTS, BIAS, RETENTION, GD,
                        CLIP, PRECISION, SAVES, READ, ALIGNED)  # fmt: skip

    @triton.jit
    def _read_behind(q_ptr, st_ptr, o_ptr, sync_ptr, reader, readers, lanes, q_sb, q_sh, q_st, o_sb, o_sh, o_st,
                     num_heads, length, chunk, head_dim, hidden, SAVES: tl.constexpr, BT: tl.constexpr,
                     BD: tl.constexpr, HB: tl.constexpr, PARTS: tl.constexpr, PRECISION: tl.constexpr,
                     ALIGNED: tl.constexpr):
        """A reader: the reads of (lane, chunk) items reader, reader + readers, ... in chunk order,
        each once the lane's parts have met at chunk c's first meeting (all its start state saved).
        It polls the counter with plain volatile loads, not the atomics the parts meet with, then
        acquires once. The readers run on SMs the recurrence leaves idle, so the read (the separate
        kernel's ~0.1 ms at issue 8's shape) ends a few µs after the last chunk."""
        n_chunks = tl.cdiv(length, chunk)
        for item in range(reader, lanes * n_chunks, readers):
            c = item // lanes
            lane = item % lanes
            counter = sync_ptr + lane
            target = PARTS * (2 * c + 1)
            seen = tl.load(counter, volatile=True)
            while seen < target:
                seen = tl.load(counter, volatile=True)
            tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
            tl.debug_barrier()
            _read_chunk(q_ptr, st_ptr, o_ptr, lane, c, q_sb, q_sh, q_st, o_sb, o_sh, o_st, num_heads, length, chunk,
                        head_dim, hidden, SAVES, BT, BD, HB, PARTS, PRECISION, ALIGNED)

    @triton.jit
    def _recurrence(
        q_ptr, k_ptr, v_ptr, lr_ptr, eta_ptr, alpha_ptr, hd_ptr,
        w1_ptr, w2_ptr, s1_ptr, s2_ptr, w1_in, w2_in, s1_in, s2_in, in_sb, in_sh,
        o_ptr, gn_ptr, mn_ptr, ckpt_ptr, xch_ptr, sync_ptr,
        q_sb, q_sh, q_st, k_sb, k_sh, k_st, v_sb, v_sh, v_st,
        g_sb, g_sh, g_st,
        num_heads, length, chunk, head_dim, hidden,
        max_grad_norm, p_exp, pid,
        BT: tl.constexpr, BD: tl.constexpr, HB: tl.constexpr, PARTS: tl.constexpr,
        BIAS: tl.constexpr, RETENTION: tl.constexpr, GD: tl.constexpr, CLIP: tl.constexpr,
        PRECISION: tl.constexpr, SAVES: tl.constexpr, READ: tl.constexpr, ALIGNED: tl.constexpr,
    ):
        """Part pid % PARTS of the (row, head) pid // PARTS: the chunk recurrence on its hidden slice."""
        lane = pid // PARTS  # the (row, head) this part works for
        part = pid % PARTS
        row = lane // num_heads
        head = lane % num_heads

        rt = tl.arange(0, BT)
        rd = tl.arange(0, BD)
        d_ok = rd < head_dim
        q_base = q_ptr + _lane_offset(row, head, q_sb, q_sh, ALIGNED)
        k_base = k_ptr + _lane_offset(row, head, k_sb, k_sh, ALIGNED)
        v_base = v_ptr + _lane_offset(row, head, v_sb, v_sh, ALIGNED)
        g_off = row * g_sb + head * g_sh
        o_base = o_ptr + lane * length * head_dim
        s_base = lane * length
        causal = rt[:, None] >= rt[None, :]

        # This part's slice of the state, (HB, d) rows of W1/S1 and (d, HB) columns of W2/S2, held
        # in registers across the chunk loop: read from the initial state (any batch and head
        # strides: a fresh stream's is broadcast), written to w1_ptr.. (B*H, out, in) at the end.
        matrix = hidden * head_dim
        loc1, mask1, loc2, mask2 = _slice_tiles(part * HB + tl.arange(0, HB), rd, d_ok, hidden, head_dim)
        lane_in = row * in_sb + head * in_sh
        w1 = tl.load(w1_in + lane_in + loc1, mask=mask1, other=0.0).to(tl.float32)
        s1 = tl.load(s1_in + lane_in + loc1, mask=mask1, other=0.0).to(tl.float32)
        w2 = tl.load(w2_in + lane_in + loc2, mask=mask2, other=0.0).to(tl.float32)
        s2 = tl.load(s2_in + lane_in + loc2, mask=mask2, other=0.0).to(tl.float32)

        # Scratch per (row, head): per part [pred (BT, BD), read (BT, BD), ||a||² (BT), ||δ1||² (BT)].
        slot = 2 * BT * BD + 2 * BT
        x_lane = xch_ptr + lane * PARTS * slot
        x_mine = x_lane + part * slot
        tile = rt[:, None] * BD + rd[None, :]
        counter = sync_ptr + lane

        n_chunks = tl.cdiv(length, chunk)
        for c in range(0, n_chunks):
            pos = c * chunk + rt
            t_ok = (rt < chunk) & (pos < length)
            tok_mask = t_ok[:, None] & d_ok[None, :]
            keys, queries, theta, _eta, log_eta, _keep, log_keep, delta_t = _chunk_inputs(
                k_base, q_base, lr_ptr, eta_ptr, alpha_ptr, hd_ptr, g_off, pos, rd, t_ok, tok_mask, k_st, q_st, g_st,
                GD, BIAS)
            if RETENTION == 0:
                log_beta = log_keep
            else:
                log_beta = tl.zeros_like(log_keep)

            if SAVES >= 2:  # chunk-start state, laid out as triton_fused's checkpoints (first two: W1, W2)
                ck = ckpt_ptr + (lane * n_chunks + c) * SAVES * matrix
                tl.store(ck + loc1, w1.to(ckpt_ptr.dtype.element_ty), mask=mask1)
                tl.store(ck + matrix + loc2, w2.to(ckpt_ptr.dtype.element_ty), mask=mask2)
                if SAVES == 4:
                    tl.store(ck + 2 * matrix + loc1, s1, mask=mask1)
                    tl.store(ck + 3 * matrix + loc2, s2, mask=mask2)

            # ---- this slice's share of the keys forward (and of the read), at the chunk-start state
            z = _mm(keys, tl.trans(w1), PRECISION)
            sig = tl.sigmoid(z)
            act = z * sig
            pred_part = _mm(act, tl.trans(w2), PRECISION)
            tl.store(x_mine + tile, pred_part)
            tl.store(x_mine + 2 * BT * BD + rt, tl.sum(act * act, axis=1))
            if READ:
                zq = _mm(queries, tl.trans(w1), PRECISION)
                tl.store(x_mine + BT * BD + tile, _mm(zq * tl.sigmoid(zq), tl.trans(w2), PRECISION))
            _arrive(counter)  # meeting 1; what needs no partials is done before waiting for them
            values = tl.load(v_base + pos[:, None] * v_st + rd[None, :], mask=tok_mask, other=0.0).to(tl.float32)
            key_sq = tl.sum(keys * keys, axis=1)
            # the chunk's gate products with a unit step (the clipped step multiplies in below)
            gates = _chunk_gates(log_eta, log_beta, t_ok.to(tl.float32), t_ok, causal)
            _wait(counter, PARTS * (2 * c + 1))
            pred = _sum_parts(x_lane, slot, tile, PARTS)
            hidden_sq = _sum_parts(x_lane, slot, 2 * BT * BD + rt, PARTS)
            if READ and part == 0:
                read = _sum_parts(x_lane, slot, BT * BD + tile, PARTS)
                tl.store(o_base + pos[:, None] * head_dim + rd[None, :], read.to(o_ptr.dtype.element_ty), mask=tok_mask)

            delta2 = _bias_derivative(pred - values, delta_t, p_exp, BIAS)
            delta2 = tl.where(tok_mask, delta2, 0.0)
            delta1 = _mm(delta2, w2, PRECISION) * (sig * (1.0 + z * (1.0 - sig)))
            tl.store(x_mine + 2 * BT * BD + BT + rt, tl.sum(delta1 * delta1, axis=1))
            _arrive(counter)  # meeting 2
            _wait(counter, PARTS * (2 * c + 2))
            delta1_sq = _sum_parts(x_lane, slot, 2 * BT * BD + BT + rt, PARTS)
            grad_sq = delta1_sq * key_sq + tl.sum(delta2 * delta2, axis=1) * hidden_sq

            # ---- ||u_i||, its clip, the chunk's gate products (as triton_fused)
            grad_norm, clip, step = _clip(grad_sq, theta, t_ok, max_grad_norm, CLIP)
            grad_norm = grad_norm * clip
            memory_step, momentum_step = gates[2] * step, gates[3] * step
            momentum_carry, eta_total, beta_total = gates[4], gates[5], gates[6]
            if part == 0:
                if GD:
                    momentum_norm = theta * grad_norm  # S_t = -θ_t u_t exactly
                else:  # not asked for (the dispatcher sends callers that read it elsewhere)
                    momentum_norm = tl.full((BT,), float("nan"), tl.float32)
                tl.store(gn_ptr + s_base + pos, grad_norm.to(gn_ptr.dtype.element_ty), mask=t_ok)
                tl.store(mn_ptr + s_base + pos, momentum_norm.to(mn_ptr.dtype.element_ty), mask=t_ok)

            # ---- this slice of M_b = B M0 + c_S S0 - Σ w_i θ_i u_i and S_b = E S0 - Σ E(i+1..b) θ_i u_i
            w1, s1 = _state_step(w1, s1, delta1, keys, memory_step, momentum_step, momentum_carry, eta_total,
                                 beta_total, PRECISION)
            w2, s2 = _state_step(w2, s2, delta2, act, memory_step, momentum_step, momentum_carry, eta_total,
                                 beta_total, PRECISION)

        tl.store(w1_ptr + lane * matrix + loc1, w1, mask=mask1)
        tl.store(s1_ptr + lane * matrix + loc1, s1, mask=mask1)
        tl.store(w2_ptr + lane * matrix + loc2, w2, mask=mask2)
        tl.store(s2_ptr + lane * matrix + loc2, s2, mask=mask2)


def initial_strides(initial) -> tuple[int, int] | None:
    """The (batch, head) strides shared by initial state tensors (B, H, out, in) whose matrices are
    laid out row by row, as the split kernel reads them; None where they are not."""
    pairs = {(t.stride(0), t.stride(1)) for t in initial}
    if len(pairs) != 1 or any(t.stride(3) != 1 or t.stride(2) != t.shape[3] for t in initial):
        return None
    return pairs.pop()


def split_supported(config: MemoryConfig, momentum_signal: bool) -> bool:
    """Configs the split kernel covers (see the module docstring)."""
    return (TRITON_AVAILABLE and config.depth == 2 and config.retention in ("decay", "none")
            and (not momentum_signal or config.algorithm == "gd"))


@functools.cache
def _cooperative_supported() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions

        return "launch_cooperative_grid" in CUDAOptions.__dataclass_fields__
    except Exception:  # noqa: BLE001 - no NVIDIA backend, or another layout of triton's internals
        return False


def cooperative_launch() -> dict:
    """Launch options for a grid whose programs wait for each other: a cooperative launch, which
    Triton offers from 3.2 on (older versions: {}, and `auto_parts` never splits)."""
    return {"launch_cooperative_grid": True} if _cooperative_supported() else {}


def _programs_can_wait(device: torch.device) -> bool:
    """Whether a grid's programs on `device` may wait for each other: CUDA, with cooperative launches."""
    return device.type == "cuda" and _cooperative_supported()


def auto_parts(config: MemoryConfig, lanes: int, precision: str, device: torch.device) -> int:
    """The parts `choose_parts` picks for this card, or 1 where programs cannot wait for each other
    (not CUDA, or a triton without cooperative launches)."""
    if not _programs_can_wait(device):
        return 1
    return choose_parts(config, lanes, precision, _sm_count(device))


def _sm_count(device: torch.device) -> int:
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_parts(config: MemoryConfig, lanes: int, precision: str, sms: int) -> int:
    """How many programs share a (row, head) on a card of `sms` SMs: the most of 4 and 2 whose
    slices stay at least as wide as the products allow (64 hidden units with bf16 products, 32
    otherwise: see triton_fused's bf16 guard) and whose programs all fit the SMs at once, one per
    SM; 1 = do not split (the one-program kernel already has lanes enough)."""
    narrowest = 64 if precision == "bf16" else 32
    hidden = config.hidden_dim
    for parts in (4, 2):
        width = hidden // parts
        if hidden % parts == 0 and width >= narrowest and width == _block(width) and lanes * parts <= sms:
            return parts
    return 1


def reader_count(programs: int, lanes: int, device: torch.device) -> int:
    """Reader programs to add to a split grid of `programs` (`_read_behind`): the SMs it leaves idle,
    where there are at least as many as lanes (a reader per lane keeps up with the recurrence: a
    chunk's read is a fraction of its step; four readers for 32 lanes made the fp32 layer 2.6x
    slower on an H200) and programs can wait for each other; else 0, and the read runs as its own
    kernel after the recurrence (triton_read.read)."""
    if not _programs_can_wait(device):
        return 0
    spare = _sm_count(device) - programs
    return spare if spare >= lanes else 0


def launch_split(q, k, v, lr_c, eta_c, alpha_c, delta_c, w1, w2, s1, s2, output, grad_norm, momentum_norm,
                 config: MemoryConfig, parts: int, precision: str, num_warps: int, checkpoints=None,
                 read_apart: bool = True, initial=None):
    """Run the split kernel on triton_fused._fused_forward's prepared tensors: the state after the
    last chunk goes to w1, w2, s1, s2 ((B*H, out, in) fp32 contiguous). `initial`: the state to
    start from, (W1, W2, S1, S2) (B, H, out, in) each, any float dtype, unit strides within a matrix
    and one pair of batch / head strides for all four (a fresh stream's broadcast weights read in
    place, no copies); None starts from w1, w2, s1, s2 themselves. Raises on a launch the card
    refuses (cooperative grid too large, out of resources).

    read_apart: the recurrence stores each chunk's start W1, W2 (into the checkpoints when training,
    else into a buffer in the products' precision) and reader programs in the same grid read each
    chunk as soon as its start state is saved, on SMs the recurrence leaves idle (`reader_count`;
    where there are none, triton_read computes every chunk's read afterwards, one program per
    (lane, chunk)); False reads in the recurrence, as before."""
    batch, heads, length, dim = k.shape
    hidden = config.hidden_dim
    lanes = batch * heads
    if parts > 1 and _interpreting():
        raise ValueError("the split kernel runs P > 1 parts only on CUDA (the interpreter runs programs in turn)")
    block_t = _block(config.chunk_size)
    block_d = _block(dim)
    block_h = hidden // parts
    if hidden % parts or block_h != _block(block_h):
        raise ValueError(f"hidden {hidden} does not split into {parts} power-of-two slices of at least 16")
    slot = 2 * block_t * block_d + 2 * block_t
    exchange = torch.empty(lanes * parts * slot, device=k.device, dtype=torch.float32)
    counters = torch.zeros(lanes, device=k.device, dtype=torch.int32)
    saves, states = (0, w1) if checkpoints is None else (4, checkpoints)
    if read_apart and checkpoints is None:
        chunks = -(-length // config.chunk_size)
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32  # (what the products round to)
        saves, states = 2, torch.empty(lanes * chunks * 2 * hidden * dim, device=k.device, dtype=dtype)
    if initial is None:
        initial, in_strides = (w1, w2, s1, s2), (heads * hidden * dim, hidden * dim)
    else:
        in_strides = initial_strides(initial)
        if in_strides is None:
            raise ValueError("initial states need unit strides within a matrix and one batch / head stride pair")
    readers = reader_count(lanes * parts, lanes, k.device) if read_apart and length > 0 else 0
    aligned, strides = lane_strides(q, k, v, output)
    _memory_split_kernel[(lanes * parts + readers,)](
        q, k, v, lr_c, eta_c, alpha_c, delta_c,
        w1, w2, s1, s2, *initial, *in_strides,
        output, grad_norm, momentum_norm, states, exchange, counters,
        *strides,
        lr_c.stride(0), lr_c.stride(1), lr_c.stride(2),
        heads, length, config.chunk_size, dim, hidden, lanes, max(readers, 1),
        float(config.max_grad_norm) if config.max_grad_norm != float("inf") else 1.0,
        float(config.p),
        BT=block_t, BD=block_d, HB=block_h, PARTS=parts,
        BIAS=_BIAS_CODES[config.attentional_bias], RETENTION=_RETENTION_CODES[config.retention],
        GD=config.algorithm == "gd", CLIP=config.max_grad_norm != float("inf"),
        PRECISION=precision, SAVES=saves, READ=not read_apart, ALIGNED=aligned,
        num_warps=num_warps, num_stages=1, **(cooperative_launch() if parts > 1 or readers else {}),
    )
    if read_apart and not readers:
        from .triton_read import read

        read(q, states, saves, output, config.chunk_size, hidden, block_h, precision)
