"""Text input and sentence splitting: decode errors with byte offsets, verbatim sentence offsets."""

import gzip
import io
import sys

import pytest

from titans_cli.errors import TitansInputError
from titans_cli.io import inputs
from titans_cli.io.text import (
    TextPiece,
    iter_sentences,
    iter_text_pieces,
    read_text,
    split_sentences,
)


def write(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def texts(sentences):
    return [sentence.text for sentence in sentences]


# ---------------------------------------------------------------------------------------------
# Reading


def test_utf8_crlf_lone_cr_and_bom_are_normalised(tmp_path):
    path = write(tmp_path, "t.txt", "\ufeffÉtude\r\nline two\rline three\n".encode("utf-8"))
    assert read_text(path) == "Étude\nline two\nline three\n"


def test_crlf_split_across_read_blocks(tmp_path):
    data = b"a" * 9 + b"\r\n" + b"b" * 10
    path = write(tmp_path, "t.txt", data)
    pieces = list(iter_text_pieces(path, piece_bytes=10))
    assert "".join(piece.text for piece in pieces) == "a" * 9 + "\n" + "b" * 10
    assert all(piece.start == sum(len(p.text) for p in pieces[:i]) for i, piece in enumerate(pieces))


def test_decode_error_names_byte_offset_even_across_blocks(tmp_path):
    data = "ééééé".encode("utf-8") + b"abc\xffdef"
    path = write(tmp_path, "bad.txt", data)
    for block in (3, 4, 7, 1 << 20):
        with pytest.raises(TitansInputError) as caught:
            list(iter_text_pieces(path, piece_bytes=block))
        message = str(caught.value)
        assert message.startswith(path) and "byte 0xff at byte offset 13" in message, (block, message)


def test_truncated_multibyte_character_at_end(tmp_path):
    path = write(tmp_path, "cut.txt", "abc é".encode("utf-8")[:-1])
    with pytest.raises(TitansInputError, match="byte offset 4"):
        read_text(path)


def test_other_encoding_on_request(tmp_path):
    path = write(tmp_path, "latin.txt", "café au lait".encode("latin-1"))
    with pytest.raises(TitansInputError, match="not valid utf-8"):
        read_text(path)
    assert read_text(path, encoding="latin-1") == "café au lait"
    utf16 = write(tmp_path, "u16.txt", "hello wörld".encode("utf-16"))
    assert read_text(utf16, encoding="utf-16") == "hello wörld"
    with pytest.raises(TitansInputError, match="unknown text encoding"):
        read_text(path, encoding="klingon")


@pytest.mark.parametrize(
    "data, fragment",
    [(b"\x89PNG\r\n\x1a\n\x00\x00", "PNG image, not text"), (b"abc\x00def", "NUL bytes"),
     (b"", "empty file"), (b"  \n\n", "empty file"), (b"%PDF-1.4 xx", "PDF document")],
)
def test_binary_and_empty_text_rejected(tmp_path, data, fragment):
    path = write(tmp_path, "x.txt", data)
    with pytest.raises(TitansInputError) as caught:
        read_text(path)
    assert str(caught.value).startswith(path) and fragment in str(caught.value)


def test_gzip_text_and_stdin(tmp_path, monkeypatch):
    content = "It was the best of times.\r\nIt was the worst of times.\n"
    path = write(tmp_path, "t.txt.gz", gzip.compress(content.encode()))
    expected = content.replace("\r\n", "\n")
    assert read_text(path) == expected
    monkeypatch.setattr(inputs, "_stdin_pushback", b"")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content.encode())))
    assert read_text("-") == expected


# ---------------------------------------------------------------------------------------------
# Sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith went to Washington. He stayed.", ["Mr. Smith went to Washington.", "He stayed."]),
        ("Dr. Watson and St. John met Prof. Moriarty. Then rain.",
         ["Dr. Watson and St. John met Prof. Moriarty.", "Then rain."]),
        ('"Where are you going?" asked Tom. "Home!" He ran.',
         ['"Where are you going?" asked Tom.', '"Home!"', "He ran."]),
        ("“Stop!” she cried. ‘Why?’ he asked.", ["“Stop!” she cried.", "‘Why?’ he asked."]),
        ("J. R. R. Tolkien wrote it. It sold.", ["J. R. R. Tolkien wrote it.", "It sold."]),
        ("Pi is about 3.14 and e about 2.72. Both are irrational.",
         ["Pi is about 3.14 and e about 2.72.", "Both are irrational."]),
        ("Use a tool, e.g. a hammer, i.e. a heavy one. Done.",
         ["Use a tool, e.g. a hammer, i.e. a heavy one.", "Done."]),
        ("See No. 5 on p. 12. Next.", ["See No. 5 on p. 12.", "Next."]),
        ("He waited... Then he left.", ["He waited...", "Then he left."]),
        ("He waited... and waited.", ["He waited... and waited."]),
        ("A line without a stop\n\nA new paragraph", ["A line without a stop", "A new paragraph"]),
        ("CHAPTER I\nIt was a dark night. Snow fell.", ["CHAPTER I", "It was a dark night.", "Snow fell."]),
        ("Chapter 12: The Return\nShe came back.", ["Chapter 12: The Return", "She came back."]),
        ("# Introduction\nThis tool reads genomes.", ["# Introduction", "This tool reads genomes."]),
        ("Part of the problem was money.\nIt always is.", ["Part of the problem was money.", "It always is."]),
        ("The U.S. Army arrived. It was late.", ["The U.S. Army arrived.", "It was late."]),
        ("hard-wrapped lines\ncontinue the sentence. Next one.",
         ["hard-wrapped lines\ncontinue the sentence.", "Next one."]),
    ],
)
def test_sentence_boundaries(text, expected):
    assert texts(split_sentences(text)) == expected


def test_sentence_offsets_are_verbatim_in_a_book_like_text():
    book = (
        "THE ADVENTURE\n\nCHAPTER I.\n\n"
        "Mr. Sherlock Holmes, who was usually very late in the mornings, was seated at the\n"
        "breakfast table. I stood upon the hearth-rug. \"Well, Watson, what do you make of it?\"\n"
        "Holmes was sitting with his back to me... \"How did you know?\" I asked.\n\n"
        "   Indented paragraph with trailing spaces.   \n\n\n"
        "CHAPTER II.\nThe end is near!\n"
    )
    sentences = split_sentences(book, offset=100)
    assert texts(sentences)[:3] == ["THE ADVENTURE", "CHAPTER I.",
                                    "Mr. Sherlock Holmes, who was usually very late in the mornings, was seated at the\nbreakfast table."]
    previous_end = 100
    for sentence in sentences:
        assert book[sentence.start - 100 : sentence.end - 100] == sentence.text
        assert sentence.text == sentence.text.strip() and sentence.text
        assert sentence.start >= previous_end
        previous_end = sentence.end
    covered = "".join(book[s.start - 100 : s.end - 100] for s in sentences)
    assert "".join(covered.split()) == "".join(book.split()), "sentences must cover every non-space character"


def test_streaming_sentences_equal_whole_text_split():
    text = ("CHAPTER I\nIt was a dark night. Mr. Brown said \"Hi.\" Then left.\n\n" * 40) + "Last words"
    whole = split_sentences(text)
    for size in (1, 7, 64, 1000):
        pieces = [TextPiece(start, text[start : start + size]) for start in range(0, len(text), size)]
        assert list(iter_sentences(pieces)) == whole, f"piece size {size}"


def test_streaming_long_paragraph_is_bounded():
    paragraph = "Word after word goes here. " * 2000  # no paragraph break for ~54 kB
    pieces = [paragraph[i : i + 500] for i in range(0, len(paragraph), 500)]
    sentences = list(iter_sentences(pieces, max_buffer_chars=4000))
    assert texts(sentences) == texts(split_sentences(paragraph))
    for sentence in sentences:
        assert paragraph[sentence.start : sentence.end] == sentence.text


def test_streaming_from_a_file_with_offsets(tmp_path):
    content = "Première phrase. Deuxième phrase!\r\n\r\nTroisième?\r\n"
    path = write(tmp_path, "fr.txt", content.encode())
    normalised = read_text(path)
    sentences = list(iter_sentences(iter_text_pieces(path, piece_bytes=5)))
    assert texts(sentences) == ["Première phrase.", "Deuxième phrase!", "Troisième?"]
    assert all(normalised[s.start : s.end] == s.text for s in sentences)


def test_utf16_without_byte_order_mark_is_an_input_error(tmp_path):
    # Found by benchmarks/fuzz_parsers.py: the UTF-16 codec raises UnicodeError, not a decode error.
    path = write(tmp_path, "u16.txt", b"h\x00i\x00")
    with pytest.raises(TitansInputError, match="not valid utf-16"):
        read_text(path, encoding="utf-16")
