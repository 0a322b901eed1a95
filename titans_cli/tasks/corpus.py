"""Training corpora: FASTA or text files as one compact token array, and random long crops of it.

A corpus is a flat token array in which every record (a FASTA record, a book) starts with the
tokenizer's BOS id, so a crop that crosses a record boundary carries the boundary inside it. DNA
codes fit uint8; BPE ids fit uint16 below 65,536 entries. 100 Mbp of DNA is 100 MB in memory.

Crops are drawn without state: the crops of step `s` on rank `r` come from a generator seeded with
`(seed, r, s)`. That makes a resumed run draw exactly the crops an uninterrupted run would have
drawn, at any world size, with nothing to save but the step.
"""

from __future__ import annotations

import gzip
import lzma
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from titans_cli.errors import TitansInputError

# A target equal to this is left out of the loss (torch.nn.functional.cross_entropy's default).
IGNORE_INDEX = -100


@dataclass
class TokenCorpus:
    """Records laid end to end in one token array, each opened by a BOS token."""

    tokens: np.ndarray  # (N,) uint8 / uint16 / int32
    record_starts: np.ndarray  # (R,) int64, index of each record's BOS in `tokens`
    record_names: list[str]
    record_sources: list[str]  # the file each record came from
    bos_id: int
    kind: str  # "dna" or "bpe"
    source_bytes: dict[str, int] = field(default_factory=dict)  # characters read per file

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_records(self) -> int:
        return len(self.record_starts)

    def record_end(self, index: int) -> int:
        return int(self.record_starts[index + 1]) if index + 1 < self.n_records else len(self.tokens)

    def describe(self) -> str:
        per_source: dict[str, list[int]] = {}
        for index, source in enumerate(self.record_sources):
            entry = per_source.setdefault(source, [0, 0])
            entry[0] += 1
            entry[1] += self.record_end(index) - int(self.record_starts[index]) - 1
        lines = [f"{Path(source).name}: {count} records, {size:,} tokens" for source, (count, size) in per_source.items()]
        if len(lines) > 12:  # a corpus of many books: one line, not one entry per book
            return f"{len(lines)} files, {self.n_records} records; " + "; ".join(lines[:3]) + "; ..."
        return "; ".join(lines)


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every token id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


# -----------------------------------------------------------------------------
# Loading


def _open_text(path: Path):
    """Binary handle on a plain, gzip or xz file, recognised by its first bytes."""
    with open(path, "rb") as probe:
        magic = probe.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _assemble(pieces, names, sources, bos_id, kind, vocab_size, source_bytes) -> TokenCorpus:
    dtype = token_dtype(vocab_size)
    lengths = np.array([len(piece) + 1 for piece in pieces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = np.empty(int(lengths.sum()), dtype=dtype)
    for start, piece in zip(starts, pieces):
        tokens[start] = bos_id
        tokens[start + 1 : start + 1 + len(piece)] = piece
    return TokenCorpus(tokens, starts, names, sources, bos_id, kind, source_bytes)


def load_dna_corpus(paths: Sequence[str | Path], tokenizer, max_tokens_per_file: int | None = None) -> TokenCorpus:
    """Read FASTA files (plain/gzip/bgzip) with the project's reader and tokenize every record.

    `max_tokens_per_file` keeps only the first records (the last one cut) of a large file, so a
    50 Mbp chromosome does not drown the rest of a mixed corpus."""
    from titans_cli.io.sequences import iter_records

    dtype = token_dtype(tokenizer.vocab_size)
    pieces, names, sources, source_bytes = [], [], [], {}
    for path in paths:
        path = Path(path)
        taken = 0
        for record in iter_records(path):
            if max_tokens_per_file is not None and taken >= max_tokens_per_file:
                break
            parts = []
            for piece in record.pieces():  # bounded pieces: a chromosome is never one Python string
                if max_tokens_per_file is not None:
                    piece = piece[: max_tokens_per_file - taken - sum(len(p) for p in parts)]
                if piece:
                    parts.append(tokenizer.encode(piece).astype(dtype, copy=False))
            ids = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
            if len(ids) == 0:
                continue
            pieces.append(ids)
            names.append(record.id)
            sources.append(str(path))
            taken += len(ids)
            source_bytes[str(path)] = source_bytes.get(str(path), 0) + len(ids)
        if taken == 0:
            raise TitansInputError(f"{path}: no sequence records found")
    return _assemble(pieces, names, sources, tokenizer.bos_id, "dna", tokenizer.vocab_size, source_bytes)


def load_text_corpus(paths: Sequence[str | Path], tokenizer, max_tokens_per_file: int | None = None) -> TokenCorpus:
    """Read UTF-8 text files (plain, .gz or .xz), one record (document) per file, and BPE-encode them."""
    texts, names, sources, source_bytes = [], [], [], {}
    for path in paths:
        path = Path(path)
        with _open_text(path) as handle:
            raw = handle.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TitansInputError(f"{path}: not valid UTF-8 at byte offset {error.start}") from None
        if not text.strip():
            raise TitansInputError(f"{path}: empty text file")
        texts.append(text)
        names.append(path.name.split(".")[0])
        sources.append(str(path))
        source_bytes[str(path)] = len(raw)
    pieces = _encode_many(tokenizer, texts)
    if max_tokens_per_file is not None:
        pieces = [piece[:max_tokens_per_file] for piece in pieces]
    dtype = token_dtype(tokenizer.vocab_size)
    pieces = [piece.astype(dtype, copy=False) for piece in pieces]
    return _assemble(pieces, names, sources, tokenizer.bos_id, "bpe", tokenizer.vocab_size, source_bytes)


def _encode_many(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Encode documents in parallel where the tokenizer allows it (the `tokenizers` batch call
    uses every core; the result equals encoding each text on its own)."""
    backend = getattr(tokenizer, "tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]
    return [tokenizer.encode(text) for text in texts]


def load_corpus(paths: Sequence[str | Path], tokenizer, max_tokens_per_file: int | None = None) -> TokenCorpus:
    """A DNA corpus for the DNA tokenizer, a text corpus for BPE."""
    if not paths:
        raise TitansInputError("no corpus files given")
    for path in paths:
        if not Path(path).is_file():
            raise TitansInputError(f"{path}: corpus file not found")
    if tokenizer.kind == "dna":
        return load_dna_corpus(paths, tokenizer, max_tokens_per_file)
    return load_text_corpus(paths, tokenizer, max_tokens_per_file)


# -----------------------------------------------------------------------------
# Validation split (carved from the training files, never from evaluation data)


def split_validation(corpus: TokenCorpus, fraction: float, seed: int = 0) -> tuple[TokenCorpus, TokenCorpus]:
    """Hold out about `fraction` of the corpus for monitoring; returns (train, validation).

    Text: whole documents, chosen with a seeded generator (at least one, never all).
    DNA: per source file, so every domain is represented -- files of 8 or more records lose whole
    records (seeded choice), files of fewer records (chromosomes) lose the tail `fraction` of
    their last records."""
    if not 0 < fraction < 1:
        raise ValueError("validation fraction must be in (0, 1)")
    rng = np.random.default_rng([seed, 7919])
    lengths = np.array([corpus.record_end(i) - int(corpus.record_starts[i]) for i in range(corpus.n_records)])
    train_parts: list[tuple[int, int, int]] = []  # (record index, start, end) in corpus.tokens
    val_parts: list[tuple[int, int, int]] = []

    def whole_records(indices: list[int]):
        if len(indices) < 2:
            train_parts.extend((i, *_span(corpus, i)) for i in indices)
            return
        order = [int(i) for i in rng.permutation(indices)]
        target = fraction * lengths[indices].sum()
        held, held_size = set(), 0
        for i in order:  # skip records that would overshoot (a whole chromosome of a genome file)
            if held_size >= target:
                break
            if held_size + lengths[i] <= 2 * target and len(held) < len(indices) - 1:
                held.add(i)
                held_size += lengths[i]
        if not held:
            held.add(min(indices, key=lambda i: lengths[i]))
        for i in indices:
            (val_parts if i in held else train_parts).append((i, *_span(corpus, i)))

    if corpus.kind != "dna":
        whole_records(list(range(corpus.n_records)))
    else:
        by_source: dict[str, list[int]] = {}
        for index, source in enumerate(corpus.record_sources):
            by_source.setdefault(source, []).append(index)
        for indices in by_source.values():
            if len(indices) >= 8:
                whole_records(indices)
                continue
            # tail of the source: walk back from its last record
            remaining = int(round(fraction * (lengths[indices].sum() - len(indices))))
            cuts = {}
            for i in reversed(indices):
                start, end = _span(corpus, i)
                content = end - start - 1
                if remaining <= 0:
                    break
                take = min(content, remaining)
                cuts[i] = take
                remaining -= take
            for i in indices:
                start, end = _span(corpus, i)
                take = cuts.get(i, 0)
                if end - take > start + 1:
                    train_parts.append((i, start, end - take))
                if take:
                    val_parts.append((i, end - take, end))
    if not val_parts:
        raise TitansInputError("corpus too small to hold out a validation slice (needs at least two records or one long one)")
    if not train_parts:
        raise TitansInputError("corpus too small: the validation slice took everything")
    return _subset(corpus, train_parts), _subset(corpus, val_parts)


def _span(corpus: TokenCorpus, index: int) -> tuple[int, int]:
    return int(corpus.record_starts[index]), corpus.record_end(index)


def _subset(corpus: TokenCorpus, parts: list[tuple[int, int, int]]) -> TokenCorpus:
    """A corpus of the given [start, end) slices; a slice that does not begin at a record's BOS
    gets one, so every record of the result is BOS-led."""
    pieces, names, sources = [], [], []
    for index, start, end in parts:
        if corpus.tokens[start] == corpus.bos_id and start == int(corpus.record_starts[index]):
            start += 1
        pieces.append(corpus.tokens[start:end])
        names.append(corpus.record_names[index])
        sources.append(corpus.record_sources[index])
    vocab_size = np.iinfo(corpus.tokens.dtype).max + 1
    return _assemble(pieces, names, sources, corpus.bos_id, corpus.kind, vocab_size, dict(corpus.source_bytes))


# -----------------------------------------------------------------------------
# Crops


def crop_batch(corpus: TokenCorpus, batch_size: int, crop_len: int, rng: np.random.Generator) -> np.ndarray:
    """`batch_size` random crops of `crop_len + 1` tokens, int64, each led by BOS.

    A crop position is drawn uniformly over tokens (long records weigh by length), then moved so
    the crop stays inside its record when the record is long enough; short records are read from
    their start on into the records after them. Column 0 is always BOS; targets equal to BOS (a
    record boundary inside the crop) should be ignored by the loss (see `targets_from`)."""
    total = len(corpus.tokens)
    if total < crop_len + 1:
        raise TitansInputError(f"corpus has {total:,} tokens, fewer than one crop of {crop_len + 1:,}")
    positions = rng.integers(0, total, size=batch_size)
    records = np.searchsorted(corpus.record_starts, positions, side="right") - 1
    starts = corpus.record_starts[records] + 1
    ends = np.append(corpus.record_starts[1:], total)[records]
    fits = ends - starts >= crop_len
    begin = np.where(fits, np.clip(positions, starts, ends - crop_len), starts)
    begin = np.minimum(begin, total - crop_len)
    batch = np.empty((batch_size, crop_len + 1), dtype=np.int64)
    batch[:, 0] = corpus.bos_id
    for row, offset in enumerate(begin):
        batch[row, 1:] = corpus.tokens[offset : offset + crop_len]
    return batch


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The crop generator of one step on one rank: a pure function of (seed, rank, step)."""
    return np.random.default_rng([seed, rank, step])


def validation_batches(corpus: TokenCorpus, crop_len: int, max_crops: int) -> list[np.ndarray]:
    """Fixed, evenly spaced validation crops (the same at every evaluation): up to `max_crops`."""
    total = len(corpus.tokens)
    crop_len = min(crop_len, total - 1)
    count = max(1, min(max_crops, total // (crop_len + 1)))
    offsets = np.linspace(0, total - crop_len, num=count, dtype=np.int64)
    crops = []
    for offset in offsets:
        crop = np.empty(crop_len + 1, dtype=np.int64)
        crop[0] = corpus.bos_id
        crop[1:] = corpus.tokens[offset : offset + crop_len]
        crops.append(crop)
    return crops


def targets_from(batch, bos_id: int):
    """Inputs (B, T) and targets (B, T) from a (B, T+1) batch of crops; BOS targets are ignored."""
    inputs = batch[:, :-1]
    targets = batch[:, 1:].clone() if hasattr(batch, "clone") else batch[:, 1:].copy()
    targets[targets == bos_id] = IGNORE_INDEX
    return inputs, targets
