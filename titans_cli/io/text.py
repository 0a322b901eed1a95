"""Text input: UTF-8 (or a named encoding) from a path or stdin, and sentence splitting for books.

Line endings are normalised (CRLF and lone CR become LF) and a UTF-8 byte-order mark is dropped;
every character offset refers to that normalised text, the string `read_text` returns, so
`text[sentence.start:sentence.end] == sentence.text` always holds.

Sentence boundaries: terminal punctuation (. ! ? …) plus any closing quotes/brackets, followed
by whitespace and a capital letter, digit or opening quote; not after abbreviations (Mr., Dr.,
St., e.g., i.e., No. 5, ...) or initials (J. R. R. Tolkien). Blank lines (paragraph breaks) always
end a sentence, and a heading line (CHAPTER IV, Part Two, # Title, an all-capitals line) is a
sentence of its own.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from titans_cli.errors import TitansInputError
from titans_cli.io.inputs import Source, binary_content_label, open_input

READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class TextPiece:
    """A run of decoded, newline-normalised text starting at character `start` of the document."""

    start: int
    text: str


@dataclass(frozen=True)
class Sentence:
    start: int  # character offset of the first character
    end: int  # offset one past the last character
    text: str


# --------------------------------------------------------------------------------------------
# Reading


def codec_name(encoding: str) -> str:
    """Python's canonical name of a text encoding; TitansInputError when there is none."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise TitansInputError(f"unknown text encoding {encoding!r}") from None
    # utf-8-sig drops a byte-order mark; with plain utf-8 it would become text (U+FEFF).
    return "utf-8-sig" if name in ("utf-8", "utf-8-sig") else name


def iter_text_pieces(source: Source, encoding: str = "utf-8",
                     piece_bytes: int = READ_BLOCK) -> Iterator[TextPiece]:
    """Decode a text input piece by piece (each from at most `piece_bytes` input bytes).

    gzip/bgzip input is decompressed. Binary input and undecodable bytes raise
    TitansInputError; the latter names the byte offset (in the decompressed stream).
    """
    codec = codec_name(encoding)
    opened = open_input(source)
    owns = opened is not source
    try:
        name = opened.name
        suffix = " after decompression" if opened.compression != "none" else ""
        if codec.startswith("utf-8"):  # UTF-16/32 text legitimately contains NUL bytes
            label = binary_content_label(opened.head)
            if label is not None:
                raise TitansInputError(f"{name}: {label}, not text")
        if not opened.head.strip():
            raise TitansInputError(f"{name}: empty file (no text)")
        decoder = codecs.getincrementaldecoder(codec)(errors="strict")
        byte_offset = 0
        char_offset = 0
        carried_cr = ""
        while True:
            block = opened.stream.read(piece_bytes)
            final = not block
            buffered = len(decoder.getstate()[0])
            try:
                decoded = decoder.decode(block, final)
            except UnicodeDecodeError as error:
                position = byte_offset - buffered + error.start
                bad = error.object[error.start : error.start + 1]
                raise TitansInputError(
                    f"{name}: not valid {encoding} text: byte 0x{bad.hex() or '??'} at byte offset "
                    f"{position}{suffix} ({error.reason}); name its encoding, e.g. --encoding latin-1"
                ) from None
            except UnicodeError as error:  # e.g. UTF-16 without a byte-order mark
                raise TitansInputError(
                    f"{name}: not valid {encoding} text near byte offset {byte_offset}{suffix} "
                    f"({' '.join(str(error).split())})"
                ) from None
            byte_offset += len(block)
            decoded = carried_cr + decoded
            carried_cr = ""
            if not final and decoded.endswith("\r"):  # its "\n" may start the next block
                carried_cr, decoded = "\r", decoded[:-1]
            decoded = decoded.replace("\r\n", "\n").replace("\r", "\n")
            if decoded:
                yield TextPiece(char_offset, decoded)
                char_offset += len(decoded)
            if final:
                break
    finally:
        if owns:
            opened.close()


def read_text(source: Source, encoding: str = "utf-8") -> str:
    """The whole (normalised) text of an input; for inputs that fit in memory."""
    return "".join(piece.text for piece in iter_text_pieces(source, encoding))


# --------------------------------------------------------------------------------------------
# Sentence splitting

# Words after which a period does not end a sentence: titles before names, Latin abbreviations.
_ALWAYS_ABBREVIATED = frozenset(
    "mr mrs ms mx dr prof st sr jr rev hon gen col capt lt sgt maj cpl adm gov pres sen messrs "
    "mme mlle mssrs fr e.g i.e viz cf vs al ca approx esp".split()
)
# Abbreviations that usually precede a number: "No. 5", "p. 12", "Fig. 3", "Jan. 1".
_BEFORE_NUMBER = frozenset(
    "no nos vol vols p pp fig figs ch chap sec art ed eds eq eqs ref refs jan feb mar apr jun jul "
    "aug sep sept oct nov dec op".split()
)
_OPENERS = "\"'“‘«([{—"
_CLOSERS = "\"'”’»)]}"

_CANDIDATE = re.compile(r"((?:[.!?]+|…)[\"'”’»)\]}]*)\s+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n\s*")
_NUMBER_WORDS = (
    r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last"
)
_HEADING = re.compile(
    rf"""^[ \t]*(?:
        (?i:chapter|book|part|volume|act|scene|canto|section)[ \t]+
            (?:[0-9]+|(?i:[ivxlcdm]+)|(?i:the[ \t]+)?(?i:{_NUMBER_WORDS}))\b[^\n]{{0,70}}
      | (?i:prologue|epilogue|preface|introduction|contents|table[ \t]+of[ \t]+contents|
            appendix|afterword|foreword|the[ \t]+end)[ \t.:]*
      | \#{{1,6}}[ \t]+\S[^\n]*
      | [IVXLC]+\.?
      | [^a-z\n]*[A-Z][^a-z\n]*[A-Z][^a-z\n]*
    )[ \t]*$""",
    re.VERBOSE | re.MULTILINE,
)


def _word_before(text: str, index: int) -> str:
    """The letters-and-dots word ending just before text[index] (the period)."""
    start = index
    while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "."):
        start -= 1
    return text[start:index]


def _ends_sentence(text: str, punct_start: int, punct_end: int, next_index: int) -> bool:
    """Decide a candidate: punctuation text[punct_start:punct_end], next sentence at next_index."""
    if next_index >= len(text):
        return True
    following = next_index
    while following < len(text) and text[following] in _OPENERS:
        following += 1
    if following >= len(text):
        return True
    first = text[following]
    if not (first.isupper() or first.isdigit() or following > next_index):
        return False  # "What?" he asked. / "e.g. a list" / 3 p.m. today
    punctuation = text[punct_start:punct_end].rstrip(_CLOSERS)
    if punctuation != ".":
        return True
    word = _word_before(text, punct_start)
    lowered = word.lower()
    if lowered in _ALWAYS_ABBREVIATED:
        return False
    if lowered in _BEFORE_NUMBER and first.isdigit():
        return False
    if len(word) == 1 and word.isupper():  # an initial: J. R. R. Tolkien
        return False
    if "." in word and len(word) <= 6 and all(len(part) <= 2 for part in word.split(".")):
        return False  # dotted abbreviations: U.S. Army, Ph.D. students
    return True


def _heading_spans(text: str) -> Iterator[tuple[int, int]]:
    """Heading lines that stand alone: after a blank line (or at the start), before a line end."""
    for match in _HEADING.finditer(text):
        start, end = match.span()
        if not text[start:end].strip() or end >= len(text) or text[end] != "\n":
            continue  # at the end of a streamed buffer the line may still continue
        if start > 0:
            previous_line = text[text.rfind("\n", 0, start - 1) + 1 : start - 1]
            if previous_line.strip():
                continue
        yield start, end


def _boundaries(text: str) -> list[int]:
    cuts = set()
    for match in _CANDIDATE.finditer(text):
        punct_start, punct_end = match.span(1)
        if _ends_sentence(text, punct_start, punct_end, match.end()):
            cuts.add(punct_end)
    for match in _PARAGRAPH_BREAK.finditer(text):
        cuts.add(match.start())
    for start, end in _heading_spans(text):
        cuts.add(start)
        cuts.add(end)
    return sorted(cuts)


def split_sentences(text: str, offset: int = 0) -> list[Sentence]:
    """Sentences of `text` with offsets (plus `offset`) such that text[start:end] is verbatim.

    Leading and trailing whitespace of each sentence is excluded; whitespace-only spans vanish.
    """
    sentences = []
    previous = 0
    for cut in _boundaries(text) + [len(text)]:
        start, end = previous, cut
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            sentences.append(Sentence(offset + start, offset + end, text[start:end]))
        previous = cut
    return sentences


def iter_sentences(pieces: Iterable[TextPiece | str], max_buffer_chars: int = 1 << 20) -> Iterator[Sentence]:
    """Split a stream of text pieces into sentences with document offsets, in bounded memory.

    Text is split up to the last paragraph break seen (a hard boundary, so the result equals
    `split_sentences` of the whole text); a paragraph longer than `max_buffer_chars` is split
    early at its last sentence boundary, or cut at that length when it has none.
    """
    buffer = ""
    buffer_start = 0
    position = 0
    for piece in pieces:
        if isinstance(piece, str):
            piece = TextPiece(position, piece)
        if not buffer:
            buffer_start = piece.start
        # Breaks before the old buffer's last newline were already cut away: search from there.
        search_from = max(0, buffer.rfind("\n"))
        buffer += piece.text
        position = piece.start + len(piece.text)
        last_break = None
        for last_break in _PARAGRAPH_BREAK.finditer(buffer, search_from):
            pass
        if last_break is not None:
            # Keep the blank line in the emitted part; the rest starts a fresh paragraph.
            cut = last_break.end()
            yield from split_sentences(buffer[:cut], buffer_start)
            buffer, buffer_start = buffer[cut:], buffer_start + cut
        if len(buffer) > max_buffer_chars:
            sentences = split_sentences(buffer, buffer_start)
            if len(sentences) > 1:
                keep_from = sentences[-1].start - buffer_start
                yield from sentences[:-1]
            else:
                keep_from = len(buffer)
                yield from sentences
            buffer, buffer_start = buffer[keep_from:], buffer_start + keep_from
    if buffer:
        yield from split_sentences(buffer, buffer_start)
