"""Tokenizers: single-nucleotide DNA and byte-level BPE for text, one interface.

Both tokenizers reserve the same special ids (pad 0, bos 1, eos 2), so a ModelConfig's special ids
do not depend on the tokenizer kind. `encode` returns an int64 numpy array without specials; the
streaming layer adds BOS. `encode_with_offsets` also returns, per token, the [start, end) character
offsets in the input string: that is how per-token surprise is folded back onto sentences.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from titans_cli.errors import TitansInputError

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")


# -----------------------------------------------------------------------------
# DNA


class DNATokenizer:
    """A C G T N plus pad/bos/eos. Lowercase (soft-masked) bases are upper-cased, U reads as T,
    IUPAC ambiguity codes (R Y S W K M B D H V) read as N; any other byte is an error."""

    kind = "dna"
    alphabet = "ACGTN"
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
    vocab_size = len(SPECIAL_TOKENS) + len(alphabet)  # 8

    def __init__(self):
        first = len(SPECIAL_TOKENS)
        self.base_ids = {base: first + i for i, base in enumerate(self.alphabet)}
        # byte -> token id; -1 marks bytes that are not nucleotides.
        table = np.full(256, -1, dtype=np.int64)
        for base, token in self.base_ids.items():
            table[ord(base)] = table[ord(base.lower())] = token
        table[ord("U")] = table[ord("u")] = self.base_ids["T"]
        for code in "RYSWKMBDHV":
            table[ord(code)] = table[ord(code.lower())] = self.base_ids["N"]
        self.byte_to_id = table
        # token id -> byte; specials decode to nothing.
        self.id_to_char = np.array(["", "", ""] + list(self.alphabet), dtype=object)

    def encode(self, sequence: str | bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
        if isinstance(sequence, str):
            sequence = sequence.encode("ascii", errors="replace")  # non-ASCII becomes '?', an error
        raw = np.frombuffer(sequence, dtype=np.uint8) if not isinstance(sequence, np.ndarray) else sequence
        ids = self.byte_to_id[raw]
        if (ids < 0).any():
            offset = int(np.flatnonzero(ids < 0)[0])
            char = chr(raw[offset])
            shown = repr(char) if char.isprintable() else f"byte 0x{raw[offset]:02x}"
            raise TitansInputError(f"invalid nucleotide {shown} at sequence offset {offset}")
        return ids

    def encode_with_offsets(self, sequence) -> tuple[np.ndarray, np.ndarray]:
        ids = self.encode(sequence)
        starts = np.arange(len(ids), dtype=np.int64)
        return ids, np.stack([starts, starts + 1], axis=1)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id out of range for the DNA vocabulary (0..{self.vocab_size - 1})")
        return "".join(self.id_to_char[ids])

    def save(self, directory: str | Path) -> None:
        """DNA models need no tokenizer file: the vocabulary is fixed by this class."""

    def __repr__(self):
        return "DNATokenizer(vocab_size=8)"


# -----------------------------------------------------------------------------
# Byte-level BPE for text


class BPETokenizer:
    """Byte-level BPE (the `tokenizers` library): every UTF-8 string round-trips exactly."""

    kind = "bpe"
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != expected_id:
                raise ValueError(f"BPE tokenizer must map {token} to id {expected_id}")
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str | bytes) -> np.ndarray:
        return self.encode_with_offsets(text)[0]

    def encode_with_offsets(self, text: str | bytes) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and (N, 2) [start, end) character offsets into `text` (a str; bytes are
        decoded as UTF-8 first, so offsets are always in characters)."""
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as error:
                raise TitansInputError(f"text is not valid UTF-8 at byte offset {error.start}") from None
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int64)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        return ids, offsets

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return self.tokenizer.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        self.tokenizer.save(str(Path(directory) / "tokenizer.json"))

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Load a tokenizer.json; problems raise TitansInputError naming the file."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise TitansInputError(f"{path}: tokenizer file is missing")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the library raises plain Exception subclasses on bad JSON
            raise TitansInputError(f"{path}: not a valid tokenizer.json ({_one_line(error)})") from None
        try:
            return cls(tokenizer)
        except ValueError as error:
            raise TitansInputError(f"{path}: {error}") from None

    def __repr__(self):
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _read_text_files(files: Iterable[str | Path], max_chars_per_file: int | None) -> Iterator[str]:
    """Yield the text of each (optionally gzipped) file in paragraphs-sized pieces."""
    for file in files:
        opener = gzip.open if str(file).endswith(".gz") else open
        with opener(file, "rb") as handle:
            text = io.TextIOWrapper(handle, encoding="utf-8", errors="replace").read(max_chars_per_file or -1)
        for start in range(0, len(text), 1 << 16):
            yield text[start : start + (1 << 16)]


def train_bpe(files: Iterable[str | Path], vocab_size: int = 8192, max_chars_per_file: int | None = None):
    """Train a byte-level BPE tokenizer on text files (.txt or .txt.gz). Train on train files only.

    Returns a BPETokenizer with pad/bos/eos at ids 0/1/2 and `vocab_size` entries in total."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_read_text_files(files, max_chars_per_file), trainer=trainer)
    return BPETokenizer(tokenizer)


# -----------------------------------------------------------------------------
# Selection by kind


def make_tokenizer(kind: str, directory: str | Path | None = None):
    """The tokenizer a model directory uses: DNA is built in; BPE reads directory/tokenizer.json."""
    if kind == "dna":
        return DNATokenizer()
    if kind == "bpe":
        if directory is None:
            raise ValueError("a BPE tokenizer needs the model directory holding tokenizer.json")
        return BPETokenizer.load(Path(directory) / "tokenizer.json")
    raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'dna' or 'bpe')")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


