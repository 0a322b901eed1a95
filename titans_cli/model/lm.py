"""TitansLM: token embedding -> Titans blocks -> final RMSNorm -> LM head (tied to the embedding).

`forward(tokens)` is the training pass over whole sequences (torch memory backend, differentiable).
`step(tokens, state)` is the streaming pass: it carries each block's memory state and attention
cache, so feeding a sequence in any pieces gives the logits and signals of one whole pass, in a
footprint that does not depend on how much has been read.
"""

from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from titans_cli.device import flush_denormals
from titans_cli.model.blocks import BLOCKS, BlockState
from titans_cli.model.config import ModelConfig


_PIPELINE_POOL: ThreadPoolExecutor | None = None


class _StreamingCores(threading.local):
    cores: int | None = None  # inside streaming_threads(): the cores the pipeline may use


_STREAMING = _StreamingCores()


@contextlib.contextmanager
def streaming_threads():
    """Context for a CPU streaming loop: torch ops run on one thread, and the cores torch was given
    serve the layer pipeline (TitansLM._run_pipelined) and the Numba lane pool instead.

    Intra-op OpenMP parallelism makes each small op wait at its parallel region for a thread the
    OS may have descheduled. Measured on the 2-core machine under load ~7: a 2 MB torch.cat took
    33 ms with 2 threads and 0.65 ms with 1, a logsumexp over (4096, 8) 33 vs 1.6 ms; and switching
    the thread count back and forth around every step costs nearly as much (5 ms)."""
    previous_threads, previous_cores = torch.get_num_threads(), _STREAMING.cores
    _STREAMING.cores = previous_threads if previous_cores is None else previous_cores
    torch.set_num_threads(1)
    flush_denormals()  # (left on: see flush_denormals)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        _STREAMING.cores = previous_cores


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, P, V): logits[:, t] predicts token t + 1
    hidden: torch.Tensor  # (B, P, D): final-norm hidden state
    grad: torch.Tensor  # (B, P): ||u_t||, the memory's momentary surprise, mean over heads and layers
    momentum: torch.Tensor  # (B, P): ||S_t||, mean over heads and layers


@dataclass
class ModelState:
    """Streaming state of the whole model: one BlockState per layer."""

    blocks: list[BlockState]

    def reset_lanes(self, mask) -> "ModelState":
        """Return the selected batch lanes (bool mask (B,)) to the start-of-stream state, in place
        (the state is also returned). For the memory this is exact when the lanes' position is a
        multiple of memory.chunk_size (chunk boundaries are shared by the batch)."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        self.blocks = [block.reset_lanes(mask) for block in self.blocks]
        return self

    def detach(self) -> "ModelState":
        return ModelState([block.detach() for block in self.blocks])

    def to(self, device) -> "ModelState":
        return ModelState([block.to(device) for block in self.blocks])

    def nbytes(self) -> int:
        """Bytes of tensor storage the state keeps alive (each storage counted once, whole: a
        small view of a large buffer holds the large buffer)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors_in(self.blocks)}
        return sum(storages.values())


def _tensors_in(obj, seen=None) -> Iterator[torch.Tensor]:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors_in(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors_in(item, seen)
    elif hasattr(obj, "__dict__"):
        for item in vars(obj).values():
            yield from _tensors_in(item, seen)


class TitansLM(nn.Module):
    def __init__(self, config: ModelConfig, frozen_memory: bool = False):
        super().__init__()
        self.config = config
        # Frozen memory reads but never writes (learning rate 0, no decay): the same network
        # without test-time memorisation, to measure what the memorisation is worth.
        self.frozen_memory = frozen_memory
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(BLOCKS[config.block](config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 style init for our dense layers; the neural memory keeps its own initialisation."""
        nn.init.normal_(self.embed.weight, std=0.02)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.blocks.named_modules():
            if ".memory" in f".{name}" or not isinstance(module, nn.Linear):
                continue
            is_residual_out = name.endswith("attention.out") or name.endswith("ffn.down")
            nn.init.normal_(module.weight, std=residual_std if is_residual_out else 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch: int, device=None) -> ModelState:
        device = device if device is not None else self.embed.weight.device
        dtype = self.embed.weight.dtype
        return ModelState([block.init_state(batch, device, dtype) for block in self.blocks])

    def _run(self, tokens: torch.Tensor, state: ModelState, backend: str, want_momentum: bool = True):
        x = self.embed(tokens)
        grad, momentum, new_blocks = 0.0, 0.0, []
        for block, block_state in zip(self.blocks, state.blocks):
            x, block_state, signals = block(x, block_state, backend=backend, frozen=self.frozen_memory, momentum=want_momentum)
            new_blocks.append(block_state)
            grad = grad + signals["grad"]
            momentum = momentum + signals["momentum"]
        hidden = self.norm(x)
        logits = F.linear(hidden, self.embed.weight)
        n = len(self.blocks)
        return StepOutput(logits, hidden, grad / n, momentum / n), ModelState(new_blocks)

    def _pipeline_parts(self, tokens: torch.Tensor, backend: str) -> int:
        """How many sub-pieces the layer pipeline splits this step into (0: no pipeline).

        On a CPU with >= 2 cores (torch threads, or the cores kept by `streaming_threads`),
        inference steps of >= 2048 tokens (lanes x length) run as a two-stage pipeline over
        sub-pieces of whole memory chunks: while one thread runs the first half of the layers on
        sub-piece j + 1, another runs the second half on sub-piece j, each single-threaded. Each
        stage syncs once per sub-piece instead of at every op's parallel region, which keeps both
        cores busy even while other processes hold the CPU (intra-op OpenMP barriers then stall on
        a descheduled thread). Exact: the streaming state makes any split give the same outputs."""
        cores = _STREAMING.cores if _STREAMING.cores is not None else torch.get_num_threads()
        if (
            torch.is_grad_enabled()
            or tokens.device.type != "cpu"
            or len(self.blocks) < 2
            or cores < 2
            or backend not in ("numba", "torch")
        ):
            return 0
        batch, length = tokens.shape
        parts = min(8, batch * length // 1024, length // self.config.memory.chunk_size)
        return parts if parts >= 2 else 0

    def _run_pipelined(self, tokens: torch.Tensor, state: ModelState, backend: str, parts: int, want_momentum: bool = True):
        global _PIPELINE_POOL
        from titans_cli.memory.numba_cpu import sequential_lanes

        length = tokens.shape[1]
        chunk = self.config.memory.chunk_size
        size = -(-length // parts)
        size = -(-size // chunk) * chunk  # sub-pieces of whole memory chunks
        spans = [(start, min(start + size, length)) for start in range(0, length, size)]
        half = (len(self.blocks) + 1) // 2
        first, second = list(zip(self.blocks, state.blocks))[:half], list(zip(self.blocks, state.blocks))[half:]
        first_states = [s for _, s in first]
        second_states = [s for _, s in second]

        def run_blocks(x, modules, states):
            grad, momentum = 0.0, 0.0
            for i, block in enumerate(modules):
                x, states[i], signals = block(x, states[i], backend=backend, frozen=self.frozen_memory, momentum=want_momentum)
                grad = grad + signals["grad"]
                momentum = momentum + signals["momentum"]
            return x, grad, momentum

        # Grad and inference modes are thread-local: the pipeline thread runs under the caller's.
        inference, grad_enabled = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def stage_two(x, grad, momentum):
            if torch.get_num_threads() != 1:
                torch.set_num_threads(1)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad_enabled), sequential_lanes():
                x, g2, m2 = run_blocks(x, [b for b, _ in second], second_states)
                hidden = self.norm(x)
                return F.linear(hidden, self.embed.weight), hidden, grad + g2, momentum + m2

        if _PIPELINE_POOL is None:
            _PIPELINE_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="titans-pipeline",
                                                initializer=flush_denormals)
        futures = []
        # Outside streaming_threads() the thread count is switched for this step only.
        with streaming_threads() if torch.get_num_threads() != 1 else contextlib.nullcontext():
            try:
                with sequential_lanes():
                    for start, end in spans:
                        x = self.embed(tokens[:, start:end])
                        x, grad, momentum = run_blocks(x, [b for b, _ in first], first_states)
                        futures.append(_PIPELINE_POOL.submit(stage_two, x, grad, momentum))
                results = [future.result() for future in futures]
            finally:
                for future in futures:
                    future.cancel()
            logits, hidden, grad, momentum = (torch.cat([r[i] for r in results], dim=1) for i in range(4))
        n = len(self.blocks)
        return StepOutput(logits, hidden, grad / n, momentum / n), ModelState(first_states + second_states)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Training pass: tokens (B, T), tokens[:, 0] = BOS -> logits (B, T, V)."""
        output, _ = self._run(tokens, self.init_state(tokens.shape[0]), backend="torch")
        return output.logits

    def step(self, tokens: torch.Tensor, state: ModelState | None = None, backend: str = "torch", momentum: bool = True):
        """Feed the next piece (B, P) of each lane's stream -> (StepOutput, new state).
        momentum=False: the caller does not read StepOutput.momentum; the numba backend then skips
        that signal (a third of its memory-update work) and leaves it NaN."""
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        parts = self._pipeline_parts(tokens, backend)
        if parts:
            return self._run_pipelined(tokens, state, backend, parts, momentum)
        return self._run(tokens, state, backend, momentum)

    @torch.no_grad()
    def stream(self, pieces: Iterable, state: ModelState | None = None, backend: str = "torch"):
        """Yield (StepOutput, state) for each piece: (B, P) tensors, or 1-D arrays for one lane."""
        device = self.embed.weight.device
        for piece in pieces:
            tokens = torch.as_tensor(np.asarray(piece) if not isinstance(piece, torch.Tensor) else piece)
            tokens = tokens.to(device=device, dtype=torch.long)
            if tokens.dim() == 1:
                tokens = tokens.unsqueeze(0)
            output, state = self.step(tokens, state, backend)
            yield output, state


def bits_per_token(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """-log2 p(tokens[:, t+1] | logits[:, t]) -> (B, T-1): the bits of every token after the first."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nats = -log_probs.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    return nats / math.log(2)
