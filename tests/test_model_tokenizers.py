"""DNA and BPE tokenizers: round trips, soft-masking, IUPAC codes, offsets, save/load."""

import numpy as np
import pytest

from titans_cli.errors import TitansInputError
from titans_cli.model.tokenizers import BOS_ID, EOS_ID, PAD_ID, BPETokenizer, DNATokenizer, make_tokenizer, train_bpe


def test_dna_round_trip_and_ids():
    tokenizer = DNATokenizer()
    ids = tokenizer.encode("ACGTN")
    assert ids.dtype == np.int64
    assert list(ids) == [3, 4, 5, 6, 7], "A C G T N must follow the three specials"
    assert {PAD_ID, BOS_ID, EOS_ID} == {0, 1, 2} and tokenizer.vocab_size == 8
    rng = np.random.default_rng(0)
    sequence = "".join(rng.choice(list("ACGTN"), 5000))
    assert tokenizer.decode(tokenizer.encode(sequence)) == sequence
    assert tokenizer.encode(sequence.encode()).tolist() == tokenizer.encode(sequence).tolist(), "bytes and str differ"
    assert tokenizer.decode([BOS_ID, 3, 4, EOS_ID, PAD_ID]) == "AC", "specials must decode to nothing"


def test_dna_soft_mask_and_iupac():
    tokenizer = DNATokenizer()
    assert tokenizer.decode(tokenizer.encode("acgtnACGT")) == "ACGTNACGT", "lowercase must be upper-cased"
    assert tokenizer.decode(tokenizer.encode("RYSWKMBDHVryswkmbdhv")) == "N" * 20, "IUPAC codes must become N"
    assert tokenizer.decode(tokenizer.encode("UuACG")) == "TTACG", "U (RNA) reads as T"
    ids, offsets = tokenizer.encode_with_offsets("ACGT")
    assert offsets.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]


@pytest.mark.parametrize("bad, offset", [("ACGTX", 4), ("AC-GT", 2), ("ACG\nT", 3), ("ACGé", 3)])
def test_dna_rejects_non_nucleotides(bad, offset):
    with pytest.raises(TitansInputError, match=f"offset {offset}"):
        DNATokenizer().encode(bad)


def _generated_corpus(tmp_path):
    rng = np.random.default_rng(1)
    words = ["the", "memory", "learns", "while", "reading", "genome", "surprise", "naïve", "café", "über", "—"]
    text = "\n".join(" ".join(rng.choice(words, 12)) + "." for _ in range(400))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path, text


def test_bpe_train_round_trip_offsets_and_save(tmp_path):
    path, text = _generated_corpus(tmp_path)
    tokenizer = train_bpe([path], vocab_size=300)
    assert tokenizer.vocab_size <= 300
    assert [tokenizer.tokenizer.id_to_token(i) for i in range(3)] == ["<pad>", "<bos>", "<eos>"]
    sample = "The memory learns — naïve café, über 🧬 genome!\nNew line\ttab."
    ids, offsets = tokenizer.encode_with_offsets(sample)
    assert tokenizer.decode(ids) == sample, "byte-level BPE must round-trip any UTF-8 text"
    assert len(tokenizer.encode(text)) < len(text.encode()) / 2, "BPE did not learn merges on its corpus"
    # Offsets are character offsets into the input: each token's span covers the text it encodes.
    assert offsets.shape == (len(ids), 2) and (offsets[:, 0] <= offsets[:, 1]).all()
    assert offsets[-1, 1] == len(sample) and (np.diff(offsets[:, 0]) >= 0).all()
    second = sample.index("New")
    assert any(start == second or (start < second <= end) for start, end in offsets.tolist())

    tokenizer.save(tmp_path)
    loaded = make_tokenizer("bpe", tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == tokenizer.vocab_size
    assert loaded.encode(sample).tolist() == ids.tolist(), "saved tokenizer encodes differently"


def test_bpe_load_errors_name_the_file(tmp_path):
    with pytest.raises(TitansInputError, match="tokenizer.json"):
        BPETokenizer.load(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TitansInputError, match="tokenizer.json"):
        BPETokenizer.load(tmp_path / "tokenizer.json")
