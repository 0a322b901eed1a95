"""The streaming engine: records -> token pieces -> model state carried across pieces -> per-token
outputs, in a footprint that does not depend on how long a record is.

How a record is fed. The model reads `[BOS, t_0, ..., t_{n-1}]`. Token t_j is scored twice over:
its bits come from the logits at the input before it (`-log2 p(t_j | BOS, t_<j)`), its memory
signals (grad, momentum) and hidden state from the step that reads t_j itself. The engine aligns
both onto the token, so a task sees one row per base or BPE token.

Batching. Short records (reads, contigs, documents, windows) are gathered into a buffer, sorted by
length and run as *waves* of up to `lanes` records side by side, every lane starting from the
initial state. A record longer than `lane_tokens` streams alone in a wave of one, read from its
source piece by piece, and its results are handed on while it is read. A wave's step shrinks to end
exactly on the last token of the active lane closest to its end; so a record's outputs and its final
memory state are, as arithmetic, functions of the record alone, never of which records share its wave
(the property torchrun sharding relies on), and padding never reaches a memory that is still wanted.
In floating point they are equal only up to rounding: other wave shapes can cut steps elsewhere and run
other kernels, and the shipped DNA model's memory recurrence amplifies a 1e-6 difference to ~0.1 bits
per base within a few kilobases (window means stay within ~0.004 bits; benchmarks/stability.py).

Tasks consume the engine through *reducers*: for each record the task makes a reducer, the engine
calls `reducer.add(TokenOutputs)` for consecutive stretches of tokens and `reducer.finish(end)` once,
and yields `(record, items)` in input order, where items are whatever the reducer returned. With
`reducer_threads` > 1 (context mixing) `add` runs in a pool thread, beside other lanes' reducers and
the model's next step, but a reducer's calls still come one at a time and in order.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from titans_cli.device import Runtime
from titans_cli.model.lm import streaming_threads

LN2 = math.log(2.0)


@dataclass
class RecordInput:
    """One record to stream: its token ids come from `pieces` (arrays, in order, no BOS)."""

    index: int  # position in the input, across every input file
    id: str
    pieces: Iterable[np.ndarray]
    length: int | None = None  # number of tokens, when known in advance
    meta: dict = field(default_factory=dict)  # task-specific (source file, window start, text...)


@dataclass
class TokenOutputs:
    """Per-token outputs for tokens [start, start + n) of one record."""

    start: int
    tokens: np.ndarray  # (n,) int64
    bits: np.ndarray  # (n,) float32: -log2 p(t_j | t_<j)
    grad: np.ndarray  # (n,) float32: ||u_t|| of the memory, mean over heads and layers
    momentum: np.ndarray  # (n,) float32: ||S_t|| (NaN when no reducer of the wave reads it)
    hidden: np.ndarray | None  # (n, D) float32, only when the engine was asked for it
    # (n, len(want_probs)) float32: p(t_j = id | t_<j) for the engine's want_probs ids, when asked
    probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class RecordEnd:
    length: int  # tokens read
    memory_fingerprint: np.ndarray | None  # fixed-size sketch of the memory's change, if asked


class Reducer(Protocol):
    # Optional attribute `uses_momentum` (default True): False lets the engine skip ||S_t||.
    def add(self, outputs: TokenOutputs) -> Iterable[Any]: ...

    def finish(self, end: RecordEnd) -> Iterable[Any]: ...


class Throughput:
    """Tokens read so far and the rate, for progress bars and the closing summary."""

    def __init__(self, callback: Callable[[int], None] | None = None):
        self.tokens = 0
        self.started = time.perf_counter()
        self.callback = callback

    def add(self, n: int) -> None:
        self.tokens += n
        if self.callback is not None:
            self.callback(n)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


# -----------------------------------------------------------------------------
# Memory fingerprints


class MemorySketch:
    """A fixed random projection of the change of the memory weights while reading a record.

    For a weight matrix W (out x in) of one layer and head, the sketch is R_out^T (W_end - W_0) R_in
    with fixed Gaussian R of width `rank`: a Kronecker-structured random projection, so the whole
    fingerprint has layers x heads x matrices x rank^2 values whatever the record's length, without
    materialising a dense projection of the ~10^5 memory weights."""

    def __init__(self, rank: int = 4, seed: int = 20240611):
        self.rank, self.seed = rank, seed
        self._projections: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _pair(self, out_dim: int, in_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (out_dim, in_dim, str(device))
        if key not in self._projections:
            generator = torch.Generator().manual_seed(self.seed + 7919 * out_dim + in_dim)
            left = torch.randn(out_dim, self.rank, generator=generator) / math.sqrt(out_dim)
            right = torch.randn(in_dim, self.rank, generator=generator) / math.sqrt(in_dim)
            self._projections[key] = (left.to(device), right.to(device))
        return self._projections[key]

    def __call__(self, deltas: Sequence[torch.Tensor]) -> torch.Tensor:
        """deltas: weight changes, each (B, H, out, in) -> (B, features)."""
        parts = []
        for delta in deltas:
            left, right = self._pair(delta.shape[-2], delta.shape[-1], delta.device)
            sketch = left.T @ delta.float() @ right  # (B, H, rank, rank)
            parts.append(sketch.flatten(1))
        return torch.cat(parts, dim=1)


# -----------------------------------------------------------------------------
# The engine


@dataclass
class _Lane:
    record: RecordInput
    reducer: Reducer
    source: Iterator[np.ndarray]
    buffer: np.ndarray  # inputs not yet fed (BOS first at the start)
    exhausted: bool = False
    fed: int = 0  # inputs fed so far (BOS included)
    length: int = 0  # tokens seen so far in the source
    done: bool = False
    carry_bits: float | None = None  # bits of the token before this step's first input
    carry_probs: np.ndarray | None = None  # its probabilities (want_probs), likewise
    items: list = field(default_factory=list)

    def fill(self, need: int) -> None:
        """Read from the source until `need` inputs are buffered or the source ends."""
        while not self.exhausted and len(self.buffer) < need:
            try:
                piece = next(self.source)
            except StopIteration:
                self.exhausted = True
                break
            piece = np.asarray(piece, dtype=np.int64)
            if piece.size:
                self.length += piece.size
                self.buffer = np.concatenate([self.buffer, piece])

    @property
    def remaining(self) -> int:
        """Inputs still to feed, known only once the source is exhausted (else a lower bound)."""
        return len(self.buffer)


class StreamEngine:
    """Runs records through a model. One engine per process; reuse it across inputs."""

    def __init__(
        self,
        model,
        runtime: Runtime,
        piece_tokens: int | None = None,
        lanes: int | None = None,
        lane_tokens: int | None = None,
        buffer_records: int = 256,
        buffer_tokens: int | None = None,
        want_hidden: bool = False,
        want_memory: bool = False,
        progress: Callable[[int], None] | None = None,
        want_probs: Sequence[int] | None = None,
    ):
        self.model = model
        self.runtime = runtime
        config = model.config
        self.chunk = int(config.memory.chunk_size)
        default_piece = piece_tokens is None
        if piece_tokens is None:
            # On a CPU the layer pipeline (TitansLM._run_pipelined) splits each step into sub-pieces
            # of ~1024 tokens and drains at the step's end, a core idling for one sub-piece: 8192-
            # token steps (8 sub-pieces) lose 1/9 of the time where 4096 lose 1/5. Models with a
            # large vocabulary keep 4096 (the logits of a step are lanes x piece x vocabulary).
            small_vocabulary = int(config.vocab_size) <= 256
            piece_tokens = 8192 if runtime.device.type == "cpu" and small_vocabulary else 4096
        self.piece_tokens = max(self.chunk, (piece_tokens // self.chunk) * self.chunk)
        # A wave of one lane (a chromosome streaming alone) on a CPU takes 4x longer steps: the
        # pipeline's drain at each step's end costs 1/33 of the time instead of 1/9, for ~100 MB more.
        solo = 4 if runtime.device.type == "cpu" and int(config.vocab_size) <= 256 and default_piece else 1
        self.solo_piece_tokens = self.piece_tokens * solo
        if lanes is None:
            # A GPU wants wide waves, as wide as the logits of a step (lanes x piece x vocabulary,
            # float32) stay within ~2 GiB; on a CPU ~16 lanes already keep every core busy.
            fit = (1 << 31) // (self.piece_tokens * int(config.vocab_size) * 4)
            lanes = max(4, min(128, fit)) if runtime.device.type == "cuda" else 16
        self.lanes = max(1, lanes)
        on_gpu = runtime.device.type == "cuda"
        if lane_tokens is None:
            # Records up to this length are held (compactly, see _compact) and share waves; a longer
            # one streams alone. A GPU is only busy with many lanes, and genomes of phages, plasmids
            # and contigs run to a few 100 kb, so it holds records of up to 4M tokens; a CPU is busy
            # with one lane and keeps its footprint small.
            lane_tokens = (1 << 22) if on_gpu else (1 << 16)
        self.lane_tokens = max(1, lane_tokens)
        if buffer_tokens is None:
            buffer_tokens = (1 << 28) if on_gpu else self.lanes * self.lane_tokens
        self.buffer_tokens = max(self.lane_tokens, buffer_tokens)
        self.buffer_records = max(self.lanes, buffer_records)
        self._token_dtype = _compact_dtype(int(config.vocab_size))
        self.bos_id, self.pad_id = int(config.bos_id), int(config.pad_id)
        self.want_hidden, self.want_memory = want_hidden, want_memory
        # token ids whose predicted probabilities every position reports (TokenOutputs.probs), or None
        self.want_probs = None if want_probs is None else tuple(int(i) for i in want_probs)
        self.sketch = MemorySketch()
        # Builds the state a wave starts from (default: the model's initial state); novelty uses
        # it to start from a host-adapted memory.
        self.state_factory: Callable[[int], Any] | None = None
        # Called after every step as after_step(state, rows, fed): rows of the lanes that read
        # tokens in the step and how many inputs each read (novelty averages the memory with it).
        self.after_step: Callable[[Any, list[int], list[int]], None] | None = None
        self.throughput = Throughput(progress)
        # Threads that run the lanes' reducer.add side by side, and beside the model's next step; worth
        # it only for reducers whose work releases the GIL (context mixing's Numba mixers). 1: in turn.
        self.reducer_threads = 1

    # -- public ---------------------------------------------------------------------------------

    def run(
        self, records: Iterable[RecordInput], make_reducer: Callable[[RecordInput], Reducer]
    ) -> Iterator[tuple[RecordInput, Iterator[Any]]]:
        """Yield `(record, items)` in input order. For a long record `items` is live: consume it
        before asking for the next record (as with itertools.groupby)."""
        buffered: list[tuple[RecordInput, np.ndarray]] = []
        buffered_tokens = 0
        for record in records:
            head, rest, complete = _take(record.pieces, self.lane_tokens + 1)
            if complete and len(head) <= self.lane_tokens:
                if record.length is None:
                    record.length = len(head)  # (reducers may size themselves by it)
                buffered.append((record, head.astype(self._token_dtype)))
                buffered_tokens += len(head)
                if len(buffered) >= self.buffer_records or buffered_tokens >= self.buffer_tokens:
                    yield from self._run_buffer(buffered, make_reducer)
                    buffered, buffered_tokens = [], 0
                continue
            yield from self._run_buffer(buffered, make_reducer)
            buffered, buffered_tokens = [], 0
            source = _chain([head], rest)
            lane = self._new_lane(record, make_reducer(record), source)
            yield record, self._run_wave_live(lane)
        yield from self._run_buffer(buffered, make_reducer)

    # -- waves ----------------------------------------------------------------------------------

    def _new_lane(self, record: RecordInput, reducer: Reducer, source: Iterator[np.ndarray]) -> _Lane:
        return _Lane(record, reducer, iter(source), np.array([self.bos_id], dtype=np.int64))

    def _run_buffer(self, buffered, make_reducer):
        if not buffered:
            return
        order = sorted(range(len(buffered)), key=lambda i: -len(buffered[i][1]))
        results: dict[int, list] = {}
        for first in range(0, len(order), self.lanes):
            wave = [order[i] for i in range(first, min(first + self.lanes, len(order)))]
            lanes = [self._new_lane(buffered[i][0], make_reducer(buffered[i][0]), self._pieces_of(buffered[i][1]))
                     for i in wave]
            for _ in self._run_wave(lanes):
                pass
            for i, lane in zip(wave, lanes):
                results[i] = lane.items
        for i, (record, _) in enumerate(buffered):
            yield record, iter(results.pop(i))

    def _pieces_of(self, tokens: np.ndarray) -> Iterator[np.ndarray]:
        """A held record fed a piece at a time, so that only the pieces in flight are widened to int64."""
        step = self.piece_tokens
        return (tokens[i : i + step] for i in range(0, len(tokens), step))

    def stream_lanes(self, lanes: Sequence[tuple[RecordInput, Reducer, Iterable[np.ndarray]]]) -> Iterator[list]:
        """Run given records side by side in one wave (novelty's paired passes); yields, after each
        step, the items each lane's reducer produced in that step."""
        wave = [self._new_lane(record, reducer, iter(source)) for record, reducer, source in lanes]
        for _ in self._run_wave(wave):
            produced = []
            for lane in wave:
                produced.append(lane.items)
                lane.items = []
            yield produced

    def _run_wave_live(self, lane: _Lane) -> Iterator[Any]:
        for _ in self._run_wave([lane]):
            items, lane.items = lane.items, []
            yield from items
        yield from lane.items

    def _run_wave(self, lanes: list[_Lane]) -> Iterator[None]:
        """Feed every lane to its end; yields after each step (items accumulate on the lanes)."""
        model, device = self.model, self.runtime.device
        state = self.state_factory(len(lanes)) if self.state_factory else model.init_state(len(lanes), device)
        # On a CPU, torch ops on one thread; the other cores run the layer pipeline and Numba lanes.
        threads = streaming_threads() if device.type == "cpu" else contextlib.nullcontext()
        # ||S_t|| only when a reducer reads it (reducers say so by `uses_momentum`; default: yes).
        want_momentum = any(getattr(lane.reducer, "uses_momentum", True) for lane in lanes)
        wanted = None if self.want_probs is None else torch.tensor(self.want_probs, device=device)
        # With reducer threads, each lane's reducer.add runs in the pool while the model computes the
        # next step; its items are collected once that step's outputs are on the host (before the lane's
        # next add, so a reducer still sees its stretches in order) or before the lane's finish.
        pool = None
        if self.reducer_threads > 1:
            pool = ThreadPoolExecutor(min(self.reducer_threads, len(lanes)), thread_name_prefix="reducer")
        in_flight: list[tuple[_Lane, Any]] = []  # (lane, future of its reducer.add)

        def collect(done: Callable[[_Lane], bool] = lambda lane: True) -> None:
            nonlocal in_flight
            for lane, future in in_flight:
                if done(lane):
                    lane.items.extend(future.result())
            in_flight = [(lane, future) for lane, future in in_flight if not done(lane)]

        with torch.inference_mode(), threads, pool or contextlib.nullcontext():
            while not all(lane.done for lane in lanes):
                piece = self.solo_piece_tokens if len(lanes) == 1 else self.piece_tokens
                for lane in lanes:
                    if not lane.done:
                        lane.fill(piece + 1)
                step = self._step_length(lanes)
                inputs = np.full((len(lanes), step), self.pad_id, dtype=np.int64)
                targets = np.full((len(lanes), step), self.pad_id, dtype=np.int64)
                for row, lane in enumerate(lanes):
                    if lane.done:
                        continue
                    fed = lane.buffer[:step]
                    inputs[row, : len(fed)] = fed
                    following = lane.buffer[1 : step + 1]
                    targets[row, : len(following)] = following
                tokens = torch.from_numpy(inputs).to(device)
                output, state = model.step(tokens, state, backend=self.runtime.backend, momentum=want_momentum)
                # -log2 softmax(logits)[target] without materialising a second vocabulary-wide tensor
                logits = output.logits.float()
                target_tensor = torch.from_numpy(targets).to(device)
                chosen = logits.gather(-1, target_tensor.unsqueeze(-1)).squeeze(-1)
                bits = ((torch.logsumexp(logits, dim=-1) - chosen) / LN2).cpu().numpy()
                grad = output.grad.float().cpu().numpy()
                momentum = output.momentum.float().cpu().numpy()
                hidden = output.hidden.float().cpu().numpy() if self.want_hidden else None
                probs = None if wanted is None else torch.softmax(logits, dim=-1).index_select(-1, wanted).cpu().numpy()
                collect()
                finished, fed_rows, fed_counts = [], [], []
                for row, lane in enumerate(lanes):
                    if lane.done:
                        continue
                    n_fed = min(step, len(lane.buffer))
                    fed_rows.append(row)
                    fed_counts.append(n_fed)
                    outputs = self._emit(lane, n_fed, bits[row], grad[row], momentum[row],
                                         None if hidden is None else hidden[row], None if probs is None else probs[row])
                    if outputs is not None and pool:
                        in_flight.append((lane, pool.submit(lane.reducer.add, outputs)))
                    elif outputs is not None:
                        lane.items.extend(lane.reducer.add(outputs))
                    lane.buffer = lane.buffer[n_fed:]
                    lane.fed += n_fed
                    if lane.exhausted and len(lane.buffer) == 0:
                        lane.done = True
                        finished.append(row)
                if self.after_step is not None:
                    self.after_step(state, fed_rows, fed_counts)
                if finished:
                    collect(lambda lane: lane.done)
                    fingerprints = self._fingerprints(state, finished)
                    for position, row in enumerate(finished):
                        lane = lanes[row]
                        end = RecordEnd(lane.length, None if fingerprints is None else fingerprints[position])
                        lane.items.extend(lane.reducer.finish(end))
                yield

    def _step_length(self, lanes: list[_Lane]) -> int:
        """At most piece_tokens; a step ends exactly on the last input of the active lane closest
        to its end (when that end is known), so the memory state after the step is that record's
        own final state, untouched by padding. Steps need not be whole chunks: the memory keeps a
        partial chunk pending, and every lane of a wave started at position 0 together."""
        step = self.solo_piece_tokens if len(lanes) == 1 else self.piece_tokens
        for lane in lanes:
            if not lane.done and lane.exhausted:
                step = min(step, max(1, len(lane.buffer)))
        return step

    def _emit(self, lane: _Lane, n_fed: int, bits, grad, momentum, hidden, probs=None) -> TokenOutputs | None:
        """The outputs of the tokens this step completed, for the lane's reducer (None: none completed).

        Inputs fed this step are positions [a, a + n_fed) of [BOS, t_0, ...]; row r holds the
        signals of input a + r (= token a + r - 1) and the bits of token a + r (predicted there)."""
        a = lane.fed
        n_tokens_total = lane.length if lane.exhausted else None
        # tokens whose signals arrived this step: j = a + r - 1 for rows r in [first_row, n_fed)
        first_row = 1 if a == 0 else 0
        if n_fed <= first_row:
            _keep_carry(lane, n_fed, bits, probs)
            return None
        j_start = a + first_row - 1
        end = n_fed
        if n_tokens_total is not None:  # rows past the record's last token carry nothing
            end = max(first_row, min(n_fed, n_tokens_total - j_start + first_row))
        count = end - first_row
        token_bits = _by_token(bits, lane.carry_bits, first_row, end)
        token_probs = None if probs is None else _by_token(probs, lane.carry_probs, first_row, end)
        _keep_carry(lane, n_fed, bits, probs)
        if count == 0:
            return None
        rows = slice(first_row, end)  # copies, not views: a reducer may keep them past this step
        outputs = TokenOutputs(
            start=j_start,
            tokens=lane.buffer[rows].copy(),
            bits=token_bits,
            grad=grad[rows].copy(),
            momentum=momentum[rows].copy(),
            hidden=None if hidden is None else hidden[rows].copy(),
            probs=token_probs,
        )
        self.throughput.add(count)
        return outputs

    def _fingerprints(self, state, rows: list[int]):
        if not self.want_memory:
            return None
        deltas = []
        for block in state.blocks:
            memory = block.memory
            if memory is None:
                continue
            for current, initial in zip(memory.current_weights, memory.initial_weights):
                deltas.append(current[rows] - initial.unsqueeze(0).to(current.dtype))
        return self.sketch(deltas).cpu().numpy()


# -----------------------------------------------------------------------------
# Helpers


def _by_token(rows: np.ndarray, carry, first_row: int, end: int) -> np.ndarray:
    """Values predicted for tokens (bits, probabilities) re-indexed by the token: token j's were
    computed at input j = row j - a, the row before its own (for the first, the carry of the
    previous step, or row 0 at the start of the record)."""
    by_token = np.empty((end - first_row, *rows.shape[1:]), dtype=np.float32)
    by_token[0:1] = carry if first_row == 0 else rows[0]
    by_token[1:] = rows[first_row : end - 1]
    return by_token


def _keep_carry(lane: _Lane, n_fed: int, bits, probs) -> None:
    """The last fed row's predictions, which belong to the first token of the lane's next step."""
    if n_fed:
        lane.carry_bits = float(bits[n_fed - 1])
        if probs is not None:
            lane.carry_probs = probs[n_fed - 1].copy()


def _compact_dtype(vocab_size: int):
    """The smallest integer type that holds every token id (held records cost 1-2 bytes a token)."""
    for dtype in (np.uint8, np.uint16, np.int32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return dtype
    return np.int64


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def _take(pieces: Iterable[np.ndarray], limit: int) -> tuple[np.ndarray, Iterator[np.ndarray], bool]:
    """Read pieces until more than `limit` tokens are held or the source ends.
    Returns (tokens read, the rest of the source, whether the source ended)."""
    iterator = iter(pieces)
    held: list[np.ndarray] = []
    total = 0
    while total <= limit:
        try:
            piece = np.asarray(next(iterator), dtype=np.int64)
        except StopIteration:
            return _concat(held), iter(()), True
        held.append(piece)
        total += piece.size
    return _concat(held), iterator, False


def _concat(pieces: list[np.ndarray]) -> np.ndarray:
    if not pieces:
        return np.zeros(0, dtype=np.int64)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _chain(first: list[np.ndarray], rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield from first
    yield from rest


# -----------------------------------------------------------------------------
# Inputs: io records -> RecordInput


def sequence_records(
    sources: Sequence[str],
    tokenizer,
    region: str | None = None,
    on_invalid: str = "error",
    first_index: int = 0,
) -> Iterator[RecordInput]:
    """Every FASTA/FASTQ record of every source, tokenised piece by piece (nothing held whole).

    `meta` carries the io record: its `offset` (non-zero for --region) and `full_length`."""
    from titans_cli.io.sequences import iter_records

    index = first_index
    for source in sources:
        for record in iter_records(source, region=region, on_invalid=on_invalid):
            pieces = (tokenizer.encode(piece) for piece in record.pieces())
            yield RecordInput(index, record.id, pieces, record.length, {"record": record, "source": source})
            index += 1


class TextDocument:
    """Token character offsets and sentences of one document, produced while it is tokenised.

    The text is cut into blocks at paragraph breaks (hard sentence boundaries, so the sentences
    equal those of the whole text), each block tokenised on its own; consumers fetch the offsets
    of the tokens they are handed, in order, and the memory held is a few blocks."""

    BLOCK_CHARS = 1 << 16

    def __init__(self, source, tokenizer, encoding: str = "utf-8", keep_text: bool = False):
        self.source, self.tokenizer, self.encoding = source, tokenizer, encoding
        self.keep_text = keep_text
        self.sentences: deque = deque()  # Sentence objects not yet consumed, in order
        self._offsets: list[tuple[int, np.ndarray]] = []  # (first token index, (n, 2) offsets)
        self.tokens = 0
        self.chars = 0
        self.utf8_bytes = 0
        self.text_parts: list[str] = []

    def pieces(self) -> Iterator[np.ndarray]:
        from titans_cli.io.text import iter_text_pieces, split_sentences

        buffer, buffer_start = "", 0
        for piece in iter_text_pieces(self.source, self.encoding):
            buffer += piece.text
            while len(buffer) >= self.BLOCK_CHARS:
                cut = _block_cut(buffer, self.BLOCK_CHARS)
                yield self._block(buffer[:cut], buffer_start, split_sentences)
                buffer, buffer_start = buffer[cut:], buffer_start + cut
        if buffer:
            yield self._block(buffer, buffer_start, split_sentences)

    def _block(self, text: str, start: int, split_sentences) -> np.ndarray:
        ids, offsets = self.tokenizer.encode_with_offsets(text)
        self._offsets.append((self.tokens, offsets.astype(np.int64) + start))
        self.sentences.extend(split_sentences(text, start))
        self.tokens += len(ids)
        self.chars += len(text)
        self.utf8_bytes += len(text.encode("utf-8"))
        if self.keep_text:
            self.text_parts.append(text)
        return ids

    def offsets(self, start: int, n: int) -> np.ndarray:
        """(n, 2) character offsets of tokens [start, start + n); blocks before them are freed."""
        parts, position = [], start
        while self._offsets and self._offsets[0][0] + len(self._offsets[0][1]) <= start:
            self._offsets.pop(0)
        for first, offsets in self._offsets:
            if position >= start + n:
                break
            lo = position - first
            if lo >= len(offsets):
                continue
            take = offsets[lo : lo + (start + n - position)]
            parts.append(take)
            position += len(take)
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def _block_cut(buffer: str, size: int) -> int:
    """Where to end a block: after the last paragraph break in the first `size` characters
    (else the last whitespace, else `size`)."""
    cut = buffer.rfind("\n\n", 0, size)
    if cut > 0:
        return cut + 2
    cut = max(buffer.rfind(" ", 0, size), buffer.rfind("\n", 0, size))
    return cut + 1 if cut > 0 else size


def text_records(sources: Sequence[str], tokenizer, encoding: str = "utf-8", keep_text: bool = False,
                 first_index: int = 0) -> Iterator[RecordInput]:
    """One record per text input (a document); `meta["document"]` is its TextDocument."""
    from titans_cli.io.inputs import display_name

    for index, source in enumerate(sources, start=first_index):
        document = TextDocument(source, tokenizer, encoding, keep_text)
        name = display_name(source)
        yield RecordInput(index, name, document.pieces(), None, {"document": document, "source": source})
