"""Titans blocks: sliding-window attention with persistent memory, FFN, and the MAG/MAL/LMM/MAC blocks.

Read top to bottom in data-flow order: rotary positions -> sliding-window attention (one banded,
blockwise torch computation used both for training and for streaming; inference kernels of the same
computation in numba_cpu.py and attention_triton.py) -> SwiGLU FFN -> the four blocks.

Every block maps `(x (B,P,D), BlockState) -> (x, BlockState, signals)` (`momentum=False`: the
memory may skip its ||S_t|| signal, which is then NaN) and can be fed a sequence in
any pieces: the attention keeps a bounded cache of the last `window` keys/values, the memory keeps
its own MemoryStreamState (titans_cli.memory). Neither grows with the length of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from titans_cli.memory.layer import NeuralMemory

NORM_EPS = 1e-6  # every RMSNorm of the blocks (the fused CPU path relies on them sharing it)

# -----------------------------------------------------------------------------
# Rotary position embedding


def rotary(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE rotations e^{i * position * frequency} for integer positions (any shape), as complex
    numbers (*positions.shape, head_dim/2).

    Angles are formed in float64: a stream of 250 Mbp has positions ~2.5e8, where float32 would
    lose the fractional part of position * frequency and break the relative-position property."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (..., T, dh) by complex rotations (..., T, dh/2)."""
    # Complex multiply in float32 at least (there is no bfloat16 complex type: autocast training).
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    pairs = torch.view_as_complex(wide.reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation.to(pairs.dtype)).flatten(-2).to(x.dtype)


def _numpy32(t: torch.Tensor):
    """A float32 C-contiguous numpy array of a CPU tensor (no copy when it already is one)."""
    import numpy as np

    return np.ascontiguousarray(t.detach().to(torch.float32).numpy())


def _fused_cpu(x: torch.Tensor, backend: str) -> bool:
    """Whether a block runs its CPU inference path (Numba kernels, numba_cpu.py): the numba memory
    backend, no autograd, float32 on the CPU."""
    return backend == "numba" and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32


def _fused_gpu(x: torch.Tensor, backend: str) -> bool:
    """Whether a block runs its GPU inference path (Triton kernels, fused_triton.py): the triton
    memory backend, no autograd, no autocast (training's validation passes keep the torch path),
    on CUDA (or on CPU under TRITON_INTERPRET=1, for tests) in fp32, bf16 or fp16."""
    if backend != "triton" or torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return False
    from titans_cli.model import fused_triton

    return fused_triton.supported(x)[0]


# -----------------------------------------------------------------------------
# Sliding-window attention with persistent-memory tokens


@dataclass
class AttentionCache:
    """The last `window` keys/values of each lane (already rotated), whether each slot holds a real
    token, and each lane's next position. Fixed size: (B, H, window, streams, head_dim)."""

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor  # (B, window) bool
    position: torch.Tensor  # (B,) int64

    def reset_lanes(self, mask: torch.Tensor) -> "AttentionCache":
        """A copy where the selected lanes (bool (B,)) start afresh: empty window, position 0."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.valid.device)
        lane = mask.view(-1, 1, 1, 1, 1)
        return AttentionCache(
            keys=torch.where(lane, torch.zeros_like(self.keys), self.keys),
            values=torch.where(lane, torch.zeros_like(self.values), self.values),
            valid=self.valid & ~mask.unsqueeze(1),
            position=torch.where(mask, torch.zeros_like(self.position), self.position),
        )

    def detach(self) -> "AttentionCache":
        return AttentionCache(self.keys.detach(), self.values.detach(), self.valid, self.position)

    def to(self, device) -> "AttentionCache":
        return AttentionCache(*(t.to(device) for t in (self.keys, self.values, self.valid, self.position)))


class SlidingWindowAttention(nn.Module):
    """Causal multi-head attention over the last `window` tokens (the query's own included), plus
    `n_persistent` learnable tokens (Titans' persistent memory) that every query attends to.

    Queries are processed in blocks of `window`; block j attends to the keys of blocks j-1 and j
    under a band mask, so the cost is O(T * window), never O(T^2). The keys of the previous call
    come from the cache, so streaming and whole-sequence passes run the same computation.
    `n_streams` > 1 adds further key/value streams at the same positions (MAC's memory tokens)."""

    def __init__(self, config, n_streams: int = 1):
        super().__init__()
        assert config.d_model % config.n_heads == 0
        self.n_heads, self.head_dim = config.n_heads, config.d_model // config.n_heads
        self.window, self.n_streams = config.window, n_streams
        # Queries per block: each block scores window + query_block keys, so smaller blocks waste
        # less of the band; too small and the batched matmuls get inefficient.
        self.query_block = min(config.window, 64)
        self.query = nn.Linear(config.d_model, config.d_model, bias=False)
        self.key_value = nn.Linear(config.d_model, 2 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.persistent = nn.Parameter(torch.randn(config.n_persistent, config.d_model))
        # Precision and tiling of the triton backend's kernel (attention_triton.KernelOptions; None:
        # its defaults). The benchmarks sweep it; the tests pin "ieee" products.
        self.triton_options = None
        self._offset_tables: dict[torch.dtype, torch.Tensor] = {}

    def init_cache(self, batch: int, device=None, dtype=torch.float32) -> AttentionCache:
        shape = (batch, self.n_heads, self.window, self.n_streams, self.head_dim)
        return AttentionCache(
            keys=torch.zeros(shape, device=device, dtype=dtype),
            values=torch.zeros(shape, device=device, dtype=dtype),
            valid=torch.zeros(batch, self.window, dtype=torch.bool, device=device),
            position=torch.zeros(batch, dtype=torch.long, device=device),
        )

    def _rotary_offsets(self, length: int, device, dtype=torch.complex128) -> torch.Tensor:
        """rotary(arange(length)) as `dtype` (length, dh/2), cached per dtype at the largest length seen."""
        table = self._offset_tables.get(dtype)
        if table is None or table.shape[0] < length or table.device != torch.device(device):
            table = rotary(torch.arange(max(length, 1), device=device), self.head_dim).to(dtype)
            self._offset_tables[dtype] = table
        return table[:length]

    def _heads(self, x):  # (B, T, D) -> (B, H, T, dh)
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def _blocks(self, sequence: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, H, L, dh) -> (B, H, n_blocks, keys per block, dh): one gather, one copy."""
        return sequence[:, :, index]

    def forward(self, x: torch.Tensor, cache: AttentionCache, context: list[torch.Tensor] = (), backend: str = "torch"):
        """x: (B,P,D) new tokens; context: n_streams-1 tensors (B,P,D) of extra tokens at the same
        positions (keys/values only). Returns (y (B,P,D), updated cache). With backend "numba"
        (CPU inference, float32) the band is walked by a Numba kernel (numba_cpu.py); with backend
        "triton" (inference on CUDA, one key/value stream) by a Triton kernel (attention_triton.py)."""
        if _fused_cpu(x, backend):
            return self._forward_numba(x, cache, context)
        if backend == "triton" and not torch.is_grad_enabled():
            from titans_cli.model import attention_triton

            if attention_triton.supported(x, self.n_streams, self.head_dim, self.n_heads)[0]:
                return self._forward_triton(x, cache)
        B, P, D = x.shape
        W, H, dh, S = self.window, self.n_heads, self.head_dim, self.n_streams
        if torch.is_grad_enabled():
            positions = cache.position.unsqueeze(1) + torch.arange(P, device=x.device)  # (B, P)
            rotation = rotary(positions, dh).unsqueeze(1)  # (B, 1, P, dh/2)
        else:
            rotation = self._inference_rotation(cache.position, P, x.dtype)

        q = apply_rotary(self._heads(self.query(x)), rotation)
        keys, values = [], []
        for tokens in (x, *context):
            k, v = self.key_value(tokens).chunk(2, dim=-1)
            keys.append(apply_rotary(self._heads(k), rotation))
            values.append(self._heads(v))
        new_k, new_v = torch.stack(keys, dim=3), torch.stack(values, dim=3)  # (B, H, P, S, dh)

        # Cached window + new tokens: query i sits at key index W + i and sees indices i+1 .. W+i.
        all_k = torch.cat([cache.keys.to(new_k.dtype), new_k], dim=2)
        all_v = torch.cat([cache.values.to(new_v.dtype), new_v], dim=2)
        all_valid = torch.cat([cache.valid, cache.valid.new_ones(B, P)], dim=1)
        # Copies, not views: a view would keep the whole piece's keys alive in the cache.
        new_cache = AttentionCache(
            all_k[:, :, -W:].clone(), all_v[:, :, -W:].clone(), all_valid[:, -W:].clone(), cache.position + P
        )

        # Query blocks of b tokens. Block j (queries jb .. jb+b-1) needs key indices jb+1 .. jb+b-1+W,
        # i.e. the span jb .. jb+W+b-1; every block shares one band mask over its span. The
        # persistent tokens go first in every block, so one gather builds each block's keys.
        b, n_persistent = self.query_block, self.persistent.shape[0]
        n_blocks, span = -(-P // b), W + b
        pad = n_blocks * b - P
        q = F.pad(q, (0, 0, 0, pad)).view(B, H, n_blocks, b, dh)
        pk, pv = self.key_value(self.persistent.to(x.dtype)).chunk(2, dim=-1)  # (n_persistent, D)
        persistent_k = pk.view(n_persistent, H, dh).transpose(0, 1).expand(B, H, n_persistent, dh)
        persistent_v = pv.view(n_persistent, H, dh).transpose(0, 1).expand(B, H, n_persistent, dh)
        flat_k = torch.cat([persistent_k, all_k.flatten(2, 3), all_k.new_zeros(B, H, pad * S, dh)], dim=2)
        flat_v = torch.cat([persistent_v, all_v.flatten(2, 3), all_v.new_zeros(B, H, pad * S, dh)], dim=2)

        device = x.device
        token_index = (torch.arange(n_blocks, device=device) * b).unsqueeze(1) + torch.arange(span, device=device)
        flat_index = n_persistent + (token_index.unsqueeze(-1) * S + torch.arange(S, device=device)).flatten(1)
        index = torch.cat([torch.arange(n_persistent, device=device).expand(n_blocks, n_persistent), flat_index], dim=1)

        offset = torch.arange(span, device=device) - torch.arange(b, device=device).unsqueeze(1)
        band = ((offset >= 1) & (offset <= W)).repeat_interleave(S, dim=-1)  # (b, span*S)
        band = torch.cat([band.new_ones(b, n_persistent), band], dim=1)
        bias = torch.zeros(band.shape, dtype=q.dtype, device=device).masked_fill_(~band, float("-inf"))

        scores = torch.matmul(q * dh**-0.5, self._blocks(flat_k, index).transpose(-1, -2))  # (B, H, nb, b, keys)
        scores.add_(bias)
        if not bool(cache.valid.all()):
            # Cache slots not yet filled (stream start, reset lanes) sit in the first W keys only.
            early = min(n_blocks, -(-W // b))
            padded_valid = F.pad(all_valid, (0, pad), value=True)  # padded keys: seen by padded queries only
            invalid = ~padded_valid[:, token_index[:early]].repeat_interleave(S, dim=-1)  # (B, early, span*S)
            invalid = torch.cat([invalid.new_zeros(B, early, n_persistent), invalid], dim=-1)
            scores[:, :, :early].masked_fill_(invalid[:, None, :, None, :], float("-inf"))
        y = torch.matmul(torch.softmax(scores, dim=-1), self._blocks(flat_v, index))  # (B, H, nb, b, dh)
        y = y.reshape(B, H, n_blocks * b, dh)[:, :, :P].transpose(1, 2).reshape(B, P, D)
        return self.out(y), new_cache

    def _inference_rotation(self, position: torch.Tensor, length: int, dtype) -> torch.Tensor:
        """Rotations of positions position[b] + j, j < length: (B, 1, length, dh/2) complex.
        e^{i (p0 + j) f} = e^{i p0 f} e^{i j f}: a cached table for j < length and one polar per
        lane, both in float64 (as `rotary`), instead of length polar evaluations per lane.

        The product is formed in complex128 and written straight into a complex64 tensor for
        float32/bf16 activations (`out=`): on CUDA one kernel that rounds on the store, 8 bytes
        written per rotation, where a complex128 (B, length, dh/2) product and its cast move 40
        (on the CPU torch still goes through a complex128 temporary). The values are those
        of the cast product, so a rotation does not depend on where a stream was split into pieces
        (rounding the two factors to complex64 first would move it by ~1e-7 with the split)."""
        complex_dtype = torch.promote_types(torch.promote_types(dtype, torch.float32), torch.complex64)
        lane = rotary(position, self.head_dim).unsqueeze(1)  # (B, 1, dh/2) complex128
        offsets = self._rotary_offsets(length, position.device)
        rotation = torch.empty(position.shape[0], length, self.head_dim // 2, dtype=complex_dtype, device=position.device)
        return torch.mul(lane, offsets, out=rotation).unsqueeze(1)

    def _rotate_queries_and_keys(self, pairs: torch.Tensor, position: torch.Tensor) -> None:
        """Rotate queries and keys (B, P, 2, H, dh) in place by the positions position[b] + j.

        e^{i (p0 + j) f} = e^{i p0 f} e^{i j f} with both factors from float64 angles (as `rotary`)
        rounded to complex64: one (B, P, dh/2) complex64 product, never a complex128 one, then one
        complex multiply over queries and keys together. Same arithmetic as `apply_rotary`
        (float32 at least: there is no bfloat16 complex type)."""
        B, P = pairs.shape[:2]
        lane = rotary(position, self.head_dim).to(torch.complex64).unsqueeze(1)  # (B, 1, dh/2)
        rotation = (lane * self._rotary_offsets(P, position.device, torch.complex64))[:, :, None, None]
        if pairs.dtype == torch.float32:
            torch.view_as_complex(pairs.unflatten(-1, (-1, 2))).mul_(rotation)
        else:
            wide = pairs.float()
            torch.view_as_complex(wide.unflatten(-1, (-1, 2))).mul_(rotation)
            pairs.copy_(wide)

    def _triton_inputs(self, x: torch.Tensor, cache: AttentionCache) -> tuple[torch.Tensor, ...]:
        """attention_triton.sliding_window_attention's tensors for the piece x: queries, keys and
        values from one product (views of it), queries and keys rotated in place; the cache's first
        stream; the persistent keys and values."""
        B, P, D = x.shape
        H, dh = self.n_heads, self.head_dim
        projections = F.linear(x, torch.cat([self.query.weight, self.key_value.weight])).view(B, P, 3, H, dh)
        self._rotate_queries_and_keys(projections[:, :, :2], cache.position)
        q, k, v = projections.unbind(2)
        persistent_k, persistent_v = self.key_value(self.persistent.to(x.dtype)).view(-1, 2, H, dh).unbind(1)
        return q, k, v, cache.keys[:, :, :, 0], cache.values[:, :, :, 0], cache.valid, persistent_k, persistent_v

    def _forward_triton(self, x: torch.Tensor, cache: AttentionCache) -> tuple[torch.Tensor, AttentionCache]:
        """forward() for inference with the triton backend (one key/value stream): the fused kernel
        of attention_triton.py reads the rotated projections as views and returns the output and
        the new cache's keys and values; only the valid flags are built here."""
        from titans_cli.model.attention_triton import sliding_window_attention

        B, P, W = x.shape[0], x.shape[1], self.window
        out, keys, values = sliding_window_attention(*self._triton_inputs(x, cache), self.triton_options)
        new_tokens = cache.valid.new_ones(B, min(P, W))
        valid = new_tokens if P >= W else torch.cat([cache.valid[:, P:], new_tokens], dim=1)
        return self.out(out), AttentionCache(keys, values, valid, cache.position + P)

    def _forward_numba(self, x: torch.Tensor, cache: AttentionCache, context) -> tuple[torch.Tensor, AttentionCache]:
        from titans_cli.model.numba_cpu import sliding_window_attention

        B, P, D = x.shape
        W, H, dh = self.window, self.n_heads, self.head_dim
        rotation = torch.view_as_real(self._inference_rotation(cache.position, P, x.dtype)[:, 0])  # (B, P, dh/2, 2)
        key_values = torch.stack([self.key_value(t) for t in (x, *context)], dim=1) if context else self.key_value(x).unsqueeze(1)
        persistent = self.key_value(self.persistent.to(x.dtype)).view(-1, 2, H, dh).permute(1, 2, 0, 3)  # (2, H, n_p, dh)
        out, new_keys, new_values = sliding_window_attention(
            _numpy32(self.query(x)), _numpy32(key_values), _numpy32(cache.keys), _numpy32(cache.values),
            cache.valid.numpy(), _numpy32(rotation), _numpy32(persistent[0]), _numpy32(persistent[1]), dh**-0.5,
        )  # fmt: skip
        valid = torch.cat([cache.valid, cache.valid.new_ones(B, P)], dim=1)[:, -W:].clone()
        new_cache = AttentionCache(torch.from_numpy(new_keys), torch.from_numpy(new_values), valid, cache.position + P)
        return self.out(torch.from_numpy(out)), new_cache


# -----------------------------------------------------------------------------
# Feed-forward


class SwiGLU(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = 16 * round(config.ffn_mult * config.d_model / 16)
        self.gate_up = nn.Linear(config.d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, config.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)

    def residual_triton(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """x + forward(normed) for GPU inference: silu(gate)·up in one Triton pass
        (fused_triton.swiglu), the residual added inside the output projection's matrix product."""
        from titans_cli.model.fused_triton import swiglu

        hidden = swiglu(self.gate_up(normed)).reshape(-1, self.down.in_features)
        return torch.addmm(x.reshape(-1, x.shape[-1]), hidden, self.down.weight.t()).view(x.shape)

    def residual_cpu(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """x + forward(normed) for CPU inference in float32: silu(gate)·up in one Numba pass, the
        residual added inside the output projection's matrix product (addmm)."""
        from titans_cli.model.numba_cpu import swiglu

        width = x.shape[-1]
        gate_up = self.gate_up(normed).reshape(-1, self.down.in_features * 2)
        hidden = torch.empty(gate_up.shape[0], self.down.in_features)
        swiglu(_numpy32(gate_up), hidden.numpy())
        return torch.addmm(x.reshape(-1, width), hidden, self.down.weight.t()).view(x.shape)


# -----------------------------------------------------------------------------
# Blocks


@dataclass
class BlockState:
    """One block's streaming state: the neural memory's state and the attention cache (either may
    be None: LMM has no attention; the memory state is created by the memory on first use)."""

    memory: object | None
    attention: AttentionCache | None

    def reset_lanes(self, mask: torch.Tensor) -> "BlockState":
        return BlockState(
            self.memory.reset_lanes(mask) if self.memory is not None else None,
            self.attention.reset_lanes(mask) if self.attention is not None else None,
        )

    def detach(self) -> "BlockState":
        return BlockState(
            self.memory.detach() if self.memory is not None else None,
            self.attention.detach() if self.attention is not None else None,
        )

    def to(self, device) -> "BlockState":
        return BlockState(
            self.memory.to(device) if self.memory is not None else None,
            self.attention.to(device) if self.attention is not None else None,
        )


class TitansBlock(nn.Module):
    """Shared parts: pre-norm residual layout, the neural memory, the FFN."""

    has_attention = True
    attention_streams = 1

    def __init__(self, config):
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=NORM_EPS)
        self.memory = NeuralMemory(config.d_model, config.memory)
        if self.has_attention:
            self.attention = SlidingWindowAttention(config, n_streams=self.attention_streams)
        self.ffn_norm = nn.RMSNorm(config.d_model, eps=NORM_EPS)
        self.ffn = SwiGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> BlockState:
        cache = self.attention.init_cache(batch, device, dtype) if self.has_attention else None
        return BlockState(memory=None, attention=cache)

    def feed_forward(self, x):
        return x + self.dropout(self.ffn(self.ffn_norm(x)))

    def read_write_memory(self, h, state: BlockState, backend: str, frozen: bool, momentum: bool = True):
        if not frozen:
            return self.memory(h, state=state.memory, backend=backend, momentum=momentum)
        heads = self.memory.config.num_heads
        handle = self.memory.to_gates.register_forward_hook(lambda module, inputs, gates: _without_writes(gates, heads))
        try:
            return self.memory(h, state=state.memory, backend=backend, momentum=momentum)
        finally:
            handle.remove()


def _without_writes(gates: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Frozen memory, as a forward hook on NeuralMemory.to_gates: theta_t = 0 (no write) and
    alpha_t = 0 (no forgetting), so the memory keeps its initial weights while it is still read
    and still reports its surprise. Gate layout (..., gate, head) with gates ordered theta, eta,
    alpha[, huber delta] as in memory/layer.py; sigmoid(-1e4) is exactly 0."""
    frozen = gates.view(*gates.shape[:-1], -1, num_heads).clone()
    frozen[..., 0, :] = -1e4  # theta: learning rate 0
    frozen[..., 2, :] = -1e4  # alpha: decay 0
    return frozen.view_as(gates)


class MAGBlock(TitansBlock):
    """Memory as a gate (Titans §4.2): attention and memory branches read the same normed input;
    their normalised outputs are mixed by a per-channel sigmoid gate computed from the input."""

    def __init__(self, config):
        super().__init__(config)
        self.attention_out_norm = nn.RMSNorm(config.d_model, eps=NORM_EPS)
        self.memory_out_norm = nn.RMSNorm(config.d_model, eps=NORM_EPS)
        self.gate = nn.Linear(config.d_model, config.d_model)

    def forward(self, x, state: BlockState, backend="torch", frozen=False, momentum=True):
        h = self.norm(x)
        attended, cache = self.attention(h, state.attention, backend=backend)
        remembered, memory_state, signals = self.read_write_memory(h, state, backend, frozen, momentum)
        if not self.training and _fused_cpu(x, backend):
            x = self.mix_and_feed_forward_numba(x, h, attended, remembered)
        elif not self.training and _fused_gpu(x, backend):
            x = self.mix_and_feed_forward_triton(x, h, attended, remembered)
        else:
            x = self.mix_and_feed_forward(x, h, attended, remembered)
        return x, BlockState(memory_state, cache), signals

    def mix_and_feed_forward(self, x, h, attended, remembered):
        """The gate mix of the two branches, the residual and the FFN: the block's output."""
        gate = torch.sigmoid(self.gate(h))
        mixed = gate * self.attention_out_norm(attended) + (1 - gate) * self.memory_out_norm(remembered)
        return self.feed_forward(x + self.dropout(mixed))

    def mix_and_feed_forward_triton(self, x, h, attended, remembered):
        """mix_and_feed_forward for GPU inference (no dropout): the mix, residual and FFN norm in one
        pass (fused_triton.mag_mix) instead of ~10 torch ops, then SwiGLU.residual_triton."""
        from titans_cli.model.fused_triton import mag_mix

        norm_weights = (self.attention_out_norm.weight, self.memory_out_norm.weight, self.ffn_norm.weight)
        mixed, ffn_input = mag_mix(x, attended, remembered, self.gate(h), *norm_weights, NORM_EPS)
        return self.ffn.residual_triton(mixed, ffn_input)

    def mix_and_feed_forward_numba(self, x, h, attended, remembered):
        """mix_and_feed_forward for CPU inference in float32 (no dropout): the mix, residual and
        FFN norm in one Numba pass (numba_cpu.mag_mix), then SwiGLU.residual_cpu."""
        from titans_cli.model.numba_cpu import mag_mix

        batch, length, width = x.shape
        mixed = torch.empty_like(x)
        ffn_input = torch.empty_like(x)
        rows = lambda t: _numpy32(t).reshape(batch * length, -1)  # noqa: E731
        mag_mix(
            rows(x), rows(attended), rows(remembered), rows(self.gate(h)), _numpy32(self.attention_out_norm.weight),
            _numpy32(self.memory_out_norm.weight), _numpy32(self.ffn_norm.weight), NORM_EPS,
            mixed.numpy().reshape(batch * length, width), ffn_input.numpy().reshape(batch * length, width),
        )  # fmt: skip
        return self.ffn.residual_cpu(mixed, ffn_input)


class MALBlock(TitansBlock):
    """Memory as a layer (Titans §4.3): the memory layer, then sliding-window attention."""

    def __init__(self, config):
        super().__init__(config)
        self.attention_norm = nn.RMSNorm(config.d_model, eps=NORM_EPS)

    def forward(self, x, state: BlockState, backend="torch", frozen=False, momentum=True):
        remembered, memory_state, signals = self.read_write_memory(self.norm(x), state, backend, frozen, momentum)
        x = x + self.dropout(remembered)
        attended, cache = self.attention(self.attention_norm(x), state.attention, backend=backend)
        x = self.feed_forward(x + self.dropout(attended))
        return x, BlockState(memory_state, cache), signals


class LMMBlock(TitansBlock):
    """The long-term memory alone (Titans' LMM variant): memory layer + FFN, no attention."""

    has_attention = False

    def forward(self, x, state: BlockState, backend="torch", frozen=False, momentum=True):
        remembered, memory_state, signals = self.read_write_memory(self.norm(x), state, backend, frozen, momentum)
        x = self.feed_forward(x + self.dropout(remembered))
        return x, BlockState(memory_state, None), signals


class MACBlock(TitansBlock):
    """Memory as context (Titans §4.1), simplified so that it streams exactly: each token's memory
    retrieval (the memory as left by the previous chunks, read with this token's query) becomes an
    extra key/value token at the same position, so every query attends to the persistent tokens,
    the tokens of its window and the memory's retrievals for that window. The memory writes from
    the block input (not from the attention output, as the paper does) to stay causal per chunk."""

    attention_streams = 2

    def __init__(self, config):
        super().__init__(config)
        self.context_norm = nn.RMSNorm(config.d_model, eps=NORM_EPS)

    def forward(self, x, state: BlockState, backend="torch", frozen=False, momentum=True):
        h = self.norm(x)
        remembered, memory_state, signals = self.read_write_memory(h, state, backend, frozen, momentum)
        attended, cache = self.attention(h, state.attention, context=[self.context_norm(remembered)], backend=backend)
        x = self.feed_forward(x + self.dropout(attended))
        return x, BlockState(memory_state, cache), signals


BLOCKS = {"mag": MAGBlock, "mal": MALBlock, "lmm": LMMBlock, "mac": MACBlock}
