"""NeuralMemory: the Titans long-term memory as an nn.Module, with an exact streaming state.

Data flow (paper §3.1, "Architectural details"):

    x (B, T, D) -> q, k, v projections -> depthwise causal conv -> SiLU -> L2-norm on q, k
                -> per-token gates θ_t = max_lr·sigmoid, η_t = sigmoid, α_t = sigmoid
                   (and δ_t = softplus for the Huber attentional bias), per head
                -> memory_update (one of reference / torch_chunked / numba_cpu)
                -> heads merged -> output projection -> y (B, T, D)

Streaming: the state keeps the memory at the last chunk boundary and the pending (< chunk_size)
tokens after it. A new piece is processed together with the pending tokens, starting from the
boundary state, and the outputs of the pending tokens (already returned earlier) are discarded.
So chunk boundaries always fall at multiples of chunk_size from the stream start, and feeding a
sequence in any pieces gives exactly the outputs of feeding it whole.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MemoryConfig
from .mlp import MemoryResult, initial_memory_weights

BACKENDS = ("torch", "numba", "triton", "reference")

# Gate biases at initialisation: θ = max_lr/2, η ≈ 0.88 (momentum), α ≈ 0.0025 (slow forgetting:
# about 15% per 64-token chunk), Huber δ ≈ 1.
_ETA_BIAS, _ALPHA_BIAS, _HUBER_BIAS = 2.0, -6.0, 0.5413


def memory_op(backend: str):
    """The memory_update of a backend (numba is imported lazily: its import costs ~1 s)."""
    if backend == "torch":
        from .torch_chunked import memory_update
    elif backend == "numba":
        from .numba_cpu import memory_update
    elif backend == "triton":
        from .triton_fused import memory_update  # CUDA; falls back to torch_chunked where it must
    elif backend == "reference":
        from .reference import memory_update
    else:
        raise ValueError(f"unknown memory backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return memory_update


def _bf16_kernels(config: MemoryConfig) -> bool:
    from .triton_fused import bf16_supported

    return bf16_supported(config)


def _is_fused(op) -> bool:
    from .triton_fused import memory_update

    return op is memory_update


def _prepare_on_gpu(x: torch.Tensor, head_dim: int) -> bool:
    from .prepare_triton import supported

    return supported(x, head_dim)[0]


def _global_hooks() -> bool:
    module = nn.modules.module
    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


def _l2_normalize(t: torch.Tensor, heads: int) -> torch.Tensor:
    """F.normalize(t split into heads, dim=-1) computed on the (B, T, H, d) layout -> (B, T, H*d)."""
    batch, length, _ = t.shape
    rows = t.reshape(batch, length, heads, -1)
    norm = rows.square().sum(-1, keepdim=True).sqrt_().clamp_min_(1e-12)
    return (rows / norm).view(batch, length, -1)


@dataclass(frozen=True)  # never changed in place: layers hand the same fresh state out again
class MemoryStreamState:
    """Everything a NeuralMemory needs to continue a stream (size independent of its length).

    weights, momenta: memory M and momentum S at the last chunk boundary, layer i (B, H, out, in).
    current_weights: M after every token fed so far (the pending partial chunk applied): the memory's
        "fingerprint" at the end of a stream.
    pending_*: keys, values and gates of the tokens after the boundary, (B, H, P, .) with P < chunk.
    conv_tail: the last conv_size - 1 projected (pre-conv) q/k/v rows, (B, conv_size - 1, 3 H d).
    initial_weights: the layer's learned initial memory (H, out, in), used by reset_lanes.
    position: number of tokens fed.
    """

    weights: tuple
    momenta: tuple
    current_weights: tuple
    pending_k: torch.Tensor
    pending_v: torch.Tensor
    pending_lr: torch.Tensor
    pending_momentum: torch.Tensor
    pending_decay: torch.Tensor
    pending_huber_delta: torch.Tensor | None
    conv_tail: torch.Tensor
    initial_weights: tuple
    position: int = 0

    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def pending_tokens(self) -> int:
        return self.pending_k.shape[2]

    def _map(self, fn) -> "MemoryStreamState":
        return replace(
            self,
            weights=tuple(fn(w) for w in self.weights),
            momenta=tuple(fn(s) for s in self.momenta),
            current_weights=tuple(fn(w) for w in self.current_weights),
            pending_k=fn(self.pending_k),
            pending_v=fn(self.pending_v),
            pending_lr=fn(self.pending_lr),
            pending_momentum=fn(self.pending_momentum),
            pending_decay=fn(self.pending_decay),
            pending_huber_delta=None if self.pending_huber_delta is None else fn(self.pending_huber_delta),
            conv_tail=fn(self.conv_tail),
        )

    def detach(self) -> "MemoryStreamState":
        """Cut the autograd graph (truncated backprop through time); the learned initial weights
        stay attached so reset lanes keep training them."""
        return self._map(lambda t: t.detach())

    def to(self, device) -> "MemoryStreamState":
        moved = self._map(lambda t: t.to(device))
        return replace(moved, initial_weights=tuple(w.to(device) for w in self.initial_weights))

    def reset_lanes(self, mask: torch.Tensor) -> "MemoryStreamState":
        """Batch rows where mask is True start afresh (a new record): initial memory, zero momentum,
        zero conv tail. Their pending tokens (of the previous record) are neutralised with θ = 0 and
        α = 0, so they neither write to nor decay the fresh memory. A reset at a chunk boundary
        (position % chunk_size == 0) is exactly a fresh stream; elsewhere the new record's first chunk
        is the rest of the current one (chunk boundaries stay shared by the batch)."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.pending_k.device)
        if mask.shape != (self.batch_size,):
            raise ValueError(f"reset_lanes mask must have shape ({self.batch_size},), got {tuple(mask.shape)}")
        lane = mask.view(-1, 1, 1, 1)

        def fresh(weights):
            return tuple(torch.where(lane, init.to(w.dtype).unsqueeze(0), w) for w, init in zip(weights, self.initial_weights))

        gate_lane = mask.view(-1, 1, 1)
        return replace(
            self,
            weights=fresh(self.weights),
            current_weights=fresh(self.current_weights),
            momenta=tuple(torch.where(lane, torch.zeros_like(s), s) for s in self.momenta),
            pending_lr=torch.where(gate_lane, torch.zeros_like(self.pending_lr), self.pending_lr),
            pending_decay=torch.where(gate_lane, torch.zeros_like(self.pending_decay), self.pending_decay),
            conv_tail=torch.where(mask.view(-1, 1, 1), torch.zeros_like(self.conv_tail), self.conv_tail),
        )


class NeuralMemory(nn.Module):
    def __init__(self, d_model: int, config: MemoryConfig):
        super().__init__()
        self.d_model = d_model
        self.config = config
        inner = config.inner_dim
        heads = config.num_heads
        self.to_qkv = nn.Linear(d_model, 3 * inner, bias=False)
        # Depthwise causal convolution after the projections (paper §3.1; weight (3HD, 1, conv_size)).
        self.conv = nn.Conv1d(3 * inner, 3 * inner, config.conv_size, groups=3 * inner, bias=True)
        self.uses_huber = config.attentional_bias == "huber"
        self.to_gates = nn.Linear(d_model, (4 if self.uses_huber else 3) * heads)
        with torch.no_grad():
            self.to_gates.weight.mul_(0.1)
            bias = self.to_gates.bias.view(-1, heads)
            bias[0].zero_()  # θ
            bias[1].fill_(_ETA_BIAS)  # η
            bias[2].fill_(_ALPHA_BIAS)  # α
            if self.uses_huber:
                bias[3].fill_(_HUBER_BIAS)  # δ
        self.initial_weights = nn.ParameterList(nn.Parameter(w) for w in initial_memory_weights(config))
        self.to_out = nn.Linear(inner, d_model, bias=False)
        self._inference_cache: dict = {}  # name -> (key, tensor): see _cached

    def initial_state(self, batch_size: int, device=None) -> MemoryStreamState:
        """A fresh stream's state: the learned initial memory broadcast over the batch (views, no
        copies), zero momenta, no pending tokens, a zero conv tail. Nothing in a state is written in
        place, so without autograd the layer keeps the last one it made and returns it again while
        the initial weights are unchanged (tensors made per call cost host time the GPU waits for);
        under autograd each call makes its own, so gradients reach the initial weights."""
        device = device if device is not None else self.to_qkv.weight.device
        if torch.is_grad_enabled():
            return self._fresh_state(batch_size, device)
        key = (batch_size, str(device), *((w._version, w.data_ptr()) for w in self.initial_weights))
        return self._cached("fresh state", key, lambda: self._fresh_state(batch_size, device))

    def _fresh_state(self, batch_size: int, device) -> MemoryStreamState:
        config = self.config
        dtype = self.initial_weights[0].dtype
        init = tuple(w.to(device) for w in self.initial_weights)
        weights = tuple(w.unsqueeze(0).expand(batch_size, *w.shape) for w in init)
        # The momenta broadcast zero matrices, laid out as the weights (the split kernel reads both
        # in place); the empty pending tensors a zero scalar.
        zero = torch.zeros((), device=device, dtype=dtype)
        zero_momenta = tuple(torch.zeros_like(w) for w in init)
        shape = (batch_size, config.num_heads, 0)
        empty_gate = zero.expand(shape)
        empty_vec = zero.expand(*shape, config.head_dim)
        return MemoryStreamState(
            weights=weights,
            momenta=tuple(s.unsqueeze(0).expand(batch_size, *s.shape) for s in zero_momenta),
            current_weights=weights,
            pending_k=empty_vec,
            pending_v=empty_vec,
            pending_lr=empty_gate,
            pending_momentum=empty_gate,
            pending_decay=empty_gate,
            pending_huber_delta=empty_gate if self.uses_huber else None,
            conv_tail=torch.zeros(batch_size, config.conv_size - 1, 3 * config.inner_dim, device=device, dtype=dtype),
            initial_weights=init,
            position=0,
        )

    def _causal_conv(self, with_tail: torch.Tensor, length: int) -> torch.Tensor:
        """F.conv1d(with_tail^T, conv.weight, conv.bias, groups=C)^T without the transposes:
        out[:, t] = bias + sum_j weight[:, 0, j] * with_tail[:, t + j]."""
        taps = self.conv.weight[:, 0, :].t().to(with_tail.dtype)  # (conv_size, C)
        out = torch.addcmul(self.conv.bias.to(with_tail.dtype), with_tail[:, :length], taps[0])
        for j in range(1, taps.shape[0]):
            out.addcmul_(with_tail[:, j : j + length], taps[j])
        return out

    def _cached(self, name: str, key: tuple, build):
        """A tensor derived from parameters, built again only when `key` changes (include the
        parameters' _version counters, which every in-place change bumps, and their data_ptr)."""
        cached = self._inference_cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, build())
            self._inference_cache[name] = cached
        return cached[1]

    def _projections(self, x: torch.Tensor, kernels: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The q|k|v projections (B, T, 3HD) and gate pre-activations (B, T, G·H) of a piece.

        Where the input kernel reads them (`kernels`) and nothing else looks (no autograd, no hooks
        on the two projections: frozen memory hooks to_gates) one GEMM computes both, with
        [W_qkv; W_gates; 0] and [0; b_gates; 0] concatenated once in x's dtype and kept while the
        parameters are unchanged; the zero rows pad each token's row to a multiple of 8 values, so
        both views start 16-byte aligned for the kernel's vector loads."""
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (self.to_qkv, self.to_gates))
        if not kernels or torch.is_grad_enabled() or hooked or _global_hooks():
            return self.to_qkv(x), self.to_gates(x)
        qkv, gates = self.to_qkv.weight, self.to_gates
        width, n_gates = qkv.shape[0], gates.weight.shape[0]
        padded = -(-(width + n_gates) // 8) * 8
        key = (x.dtype, x.device, qkv._version, qkv.data_ptr(), gates.weight._version, gates.weight.data_ptr(),
               gates.bias._version, gates.bias.data_ptr())  # fmt: skip

        def build():
            weight = torch.zeros(padded, qkv.shape[1], device=x.device, dtype=x.dtype)
            weight[:width], weight[width : width + n_gates] = qkv, gates.weight
            bias = torch.zeros(padded, device=x.device, dtype=x.dtype)
            bias[width : width + n_gates] = gates.bias
            return weight, bias

        weight, bias = self._cached("projections", key, build)
        both = F.linear(x, weight, bias)
        return both[..., :width], both[..., width : width + n_gates]

    def _memory_inputs(self, projected: torch.Tensor, gate_pre: torch.Tensor, tail: torch.Tensor, kernels: bool):
        """From a piece's q|k|v projections (B, T, 3HD), gate pre-activations (B, T, G·H) and the
        previous piece's last conv_size - 1 projections: q, k, v (B, H, T, d) after the causal conv,
        SiLU and (q, k) L2 norms; the gates θ = max_lr·σ, η = σ, α = σ[, Huber δ = softplus] (B, H, T)
        each; and the tail the next piece needs. One computation, three implementations: torch's
        under autograd (conv1d, F.normalize), CPU inference's (shifted multiply-adds on the (B, T, C)
        layout, ~4x faster than conv1d's transposed path) and the triton backend's on a GPU (one
        Triton kernel, prepare_triton.py, with a backward of two more for training)."""
        config, heads = self.config, self.config.num_heads
        batch, length, _ = projected.shape
        kept = config.conv_size - 1
        if kernels:  # (the kernel reads the tail in any float dtype)
            from .prepare_triton import kernel_taps, prepare_inputs

            weight = self.conv.weight
            taps = None if torch.is_grad_enabled() else self._cached(
                "taps", (weight._version, weight.data_ptr()), lambda: kernel_taps(weight))
            q, k, v, gates = prepare_inputs(projected, tail, weight, self.conv.bias, gate_pre, heads, config.max_lr,
                                            taps=taps)  # fmt: skip
            new_tail = (projected[:, length - kept :] if length >= kept
                        else torch.cat([tail[:, length:].to(projected.dtype), projected], 1))  # fmt: skip
            return q, k, v, gates, new_tail.clone()  # not a view: that would keep the projections alive
        with_tail = torch.cat([tail.to(projected.dtype), projected], dim=1)
        if torch.is_grad_enabled():
            convolved = F.conv1d(with_tail.transpose(1, 2), self.conv.weight, self.conv.bias, groups=self.conv.groups)
            q, k, v = F.silu(convolved.transpose(1, 2)).chunk(3, dim=-1)
            q, k = F.normalize(self._split_heads(q), dim=-1), F.normalize(self._split_heads(k), dim=-1)
        else:
            q, k, v = F.silu(self._causal_conv(with_tail, length), inplace=True).chunk(3, dim=-1)
            q, k = self._split_heads(_l2_normalize(q, heads)), self._split_heads(_l2_normalize(k, heads))
        pre = gate_pre.view(batch, length, -1, heads).permute(2, 0, 3, 1)  # (G, B, H, T)
        gates = (torch.sigmoid(pre[0]) * config.max_lr, torch.sigmoid(pre[1]), torch.sigmoid(pre[2]),
                 F.softplus(pre[3]) if self.uses_huber else None)  # fmt: skip
        return q, k, self._split_heads(v), gates, with_tail[:, with_tail.shape[1] - kept :].clone()

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, length, _ = t.shape
        return t.view(batch, length, self.config.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, state: MemoryStreamState | None = None, backend: str = "torch",
                momentum: bool = True):
        """x (B, T, D) -> (y (B, T, D), state, {"grad": (B, T), "momentum": (B, T)}).
        momentum=False lets the numba and triton inference paths skip ||S_t|| (then NaN)."""
        config = self.config
        batch, length, _ = x.shape
        if state is None:
            state = self.initial_state(batch, x.device)
        elif state.batch_size != batch:
            raise ValueError(f"state holds {state.batch_size} batch rows, input has {batch}")
        if backend == "numba" and length > 0 and not torch.is_grad_enabled() and x.device.type == "cpu":
            return self._forward_numba(x, state, momentum)
        op = memory_op(backend)
        if backend == "triton" and not momentum and _is_fused(op):
            # nobody reads ||S_t||: the fused kernels skip its Grams and their adjoints (NaN, as the
            # numba path)
            op = functools.partial(op, momentum_signal=False)

        if torch.is_autocast_enabled(x.device.type):  # cast once: autocast would cast x for each projection
            x = x.to(torch.get_autocast_dtype(x.device.type))
        kernels = backend == "triton" and _prepare_on_gpu(x, config.head_dim)  # the input kernel (prepare_triton)
        q, k, v, gates, conv_tail = self._memory_inputs(*self._projections(x, kernels), state.conv_tail, kernels)
        lr, momentum, decay = gates[0], gates[1], gates[2]
        huber_delta = gates[3] if self.uses_huber else None
        if backend == "triton" and x.is_cuda and torch.is_autocast_enabled("cuda") and _bf16_kernels(config):
            # Under autocast the fused kernels take bf16 operands (state and accumulation stay fp32);
            # F.normalize left q and k in fp32, which would select tf32 products and, for the
            # backward at head_dim 64, more shared memory than an H100 has.
            dtype = torch.get_autocast_dtype("cuda")
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)

        # Re-run the pending tokens of the current chunk from the boundary state (outputs discarded).
        pending = state.pending_tokens
        if pending:
            cat = lambda old, new: torch.cat([old.to(new.dtype), new], dim=2)  # noqa: E731
        else:  # piece starts on a chunk boundary: nothing to prepend, no copies
            cat = lambda old, new: new if new is not None else None  # noqa: E731
        all_k, all_v = cat(state.pending_k, k), cat(state.pending_v, v)
        all_q = cat(state.pending_k, q)  # the pending reads are discarded; any finite value will do
        all_lr, all_momentum, all_decay = cat(state.pending_lr, lr), cat(state.pending_momentum, momentum), cat(state.pending_decay, decay)
        all_delta = cat(state.pending_huber_delta, huber_delta) if self.uses_huber else None
        total = pending + length
        boundary = (total // config.chunk_size) * config.chunk_size

        def run(span: slice, weights, momenta) -> MemoryResult:
            whole = span.start == 0 and span.stop == total  # (no views to make: a few µs of host each)
            tokens = lambda t: t if whole or t is None else t[:, :, span]  # noqa: E731
            inputs = (all_q, all_k, all_v, all_lr, all_momentum, all_decay, all_delta)
            return op(*(tokens(t) for t in inputs), weights, momenta, config)

        weights, momenta = state.weights, state.momenta
        outputs, grad_norms, momentum_norms = [], [], []
        if boundary > 0:
            full = run(slice(0, boundary), weights, momenta)
            weights, momenta = full.weights, full.momenta
            outputs.append(full.output), grad_norms.append(full.grad_norm), momentum_norms.append(full.momentum_norm)
        current_weights = weights
        if total > boundary:
            partial = run(slice(boundary, total), weights, momenta)
            current_weights = partial.weights
            outputs.append(partial.output), grad_norms.append(partial.grad_norm), momentum_norms.append(partial.momentum_norm)

        if outputs:
            join = lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # noqa: E731
            read = join(outputs)[:, :, pending:]
            grad_norm = join(grad_norms)[:, :, pending:]
            momentum_norm = join(momentum_norms)[:, :, pending:]
        else:
            read = q
            grad_norm = momentum_norm = lr
        if not torch.is_autocast_enabled(x.device.type):  # (under autocast to_out casts read itself)
            read = read.to(x.dtype)
        y = self.to_out(read.transpose(1, 2).reshape(batch, length, config.inner_dim))

        keep = slice(boundary, total)
        new_state = replace(
            state,
            weights=tuple(weights),
            momenta=tuple(momenta),
            current_weights=tuple(current_weights),
            pending_k=all_k[:, :, keep].clone(),
            pending_v=all_v[:, :, keep].clone(),
            pending_lr=all_lr[:, :, keep].clone(),
            pending_momentum=all_momentum[:, :, keep].clone(),
            pending_decay=all_decay[:, :, keep].clone(),
            pending_huber_delta=None if all_delta is None else all_delta[:, :, keep].clone(),
            conv_tail=conv_tail,
            position=state.position + length,
        )
        signals = {"grad": grad_norm.mean(dim=1), "momentum": momentum_norm.mean(dim=1)}
        return y, new_state, signals

    def _forward_numba(self, x: torch.Tensor, state: MemoryStreamState, want_momentum: bool = True):
        """forward() for CPU inference with the Numba kernels: the conv, SiLU, L2 norms and gates in
        one fused pass per batch row (numba_cpu.prepare_inputs), q/k/v written per head as the
        update reads them, and the update writing its reads in the (B, T, H, d) layout the output
        projection takes: none of the torch path's intermediate (B, T, 3HD) tensors or copies."""
        from .numba_cpu import flatten_weights, prepare_inputs, unflatten_weights, update_lanes

        config = self.config
        batch, length, _ = x.shape
        heads, dim, chunk = config.num_heads, config.head_dim, config.chunk_size
        lanes = batch * heads
        numpy32 = lambda t: np.ascontiguousarray(t.detach().to(torch.float32).numpy())  # noqa: E731

        projected = numpy32(self.to_qkv(x))
        tail = numpy32(state.conv_tail)
        q, k, v, gates = prepare_inputs(
            projected, tail, numpy32(self.conv.weight[:, 0, :].t()), numpy32(self.conv.bias), numpy32(self.to_gates(x)),
            heads, config.max_lr,
        )
        # the last conv_size - 1 rows of [tail; projected], copied out of the piece
        kept = tail.shape[1]
        conv_tail = projected[:, length - kept :].copy() if length >= kept else np.concatenate([tail[:, length:], projected], axis=1)

        # Re-run the pending tokens of the current chunk from the boundary state (outputs discarded).
        pending = state.pending_tokens
        pending_gates = [state.pending_lr, state.pending_momentum, state.pending_decay]
        if self.uses_huber:
            pending_gates.append(state.pending_huber_delta)
        if pending:
            join = lambda old, new: np.concatenate([numpy32(old), new], axis=2)  # noqa: E731
            q = join(state.pending_k, q)  # the pending reads are discarded; any finite value will do
            k, v = join(state.pending_k, k), join(state.pending_v, v)
            gates = np.stack([join(old, new) for old, new in zip(pending_gates, gates)])
        total = pending + length
        boundary = (total // chunk) * chunk
        q, k, v = (t.reshape(lanes, total, dim) for t in (q, k, v))  # lane = batch row * heads + head
        lr, eta, alpha = (g.reshape(lanes, total) for g in gates[:3])
        delta = gates[3].reshape(lanes, total) if self.uses_huber else np.ones((lanes, total), np.float32)
        output = np.empty((batch, total, heads, dim), dtype=np.float32)
        grad_norm = np.empty((lanes, total), dtype=np.float32)
        momentum_norm = np.empty((lanes, total), dtype=np.float32)

        def run(start: int, end: int, memory: np.ndarray, momenta: np.ndarray) -> None:
            update_lanes(
                q[:, start:end], k[:, start:end], v[:, start:end], lr[:, start:end], eta[:, start:end],
                alpha[:, start:end], delta[:, start:end], memory, momenta, output[:, start:end],
                grad_norm[:, start:end], momentum_norm[:, start:end], config, want_momentum,
            )  # fmt: skip

        memory, momenta = flatten_weights(state.weights), flatten_weights(state.momenta)
        if boundary > 0:
            run(0, boundary, memory, momenta)
        weights = unflatten_weights(memory, batch, config, state.weights)
        momenta_out = unflatten_weights(momenta, batch, config, state.momenta)
        current_weights = weights
        if total > boundary:  # the partial chunk: its writes are the current weights, not the boundary state
            run(boundary, total, memory, momenta)
            current_weights = unflatten_weights(memory, batch, config, state.weights)

        read = torch.from_numpy(output[:, pending:].reshape(batch, length, heads * dim))
        y = self.to_out(read.to(x.dtype))

        def pending_tensor(lane_array: np.ndarray) -> torch.Tensor:  # (lanes, total, ...) -> (B, H, kept, ...)
            per_head = lane_array.reshape(batch, heads, total, *lane_array.shape[2:])
            return torch.from_numpy(per_head[:, :, boundary:].copy()).to(x.dtype)

        def heads_mean(signal: np.ndarray) -> torch.Tensor:  # (lanes, total) -> (B, length)
            return torch.from_numpy(signal.reshape(batch, heads, total)[:, :, pending:].mean(axis=1)).to(x.dtype)

        new_state = replace(
            state,
            weights=weights,
            momenta=momenta_out,
            current_weights=current_weights,
            pending_k=pending_tensor(k),
            pending_v=pending_tensor(v),
            pending_lr=pending_tensor(lr),
            pending_momentum=pending_tensor(eta),
            pending_decay=pending_tensor(alpha),
            pending_huber_delta=pending_tensor(delta) if self.uses_huber else None,
            conv_tail=torch.from_numpy(conv_tail).to(x.dtype),
            position=state.position + length,
        )
        signals = {"grad": heads_mean(grad_norm), "momentum": heads_mean(momentum_norm)}
        return y, new_state, signals
