"""Sentence and word units for the text benchmarks, offline.

sumy's own Tokenizer loads NLTK's pretrained punkt model from nltk_data, which cannot be fetched
here. Instead every extractive method (Lead, LexRank, TextRank, LSA) works on the same sentence
list, cut by `split_sentences`:

* prose (SQuALITY, GovReport, Multi-News): paragraphs at blank lines, line breaks inside a paragraph
  joined (SQuALITY keeps the magazine's line breaks mid-sentence), then NLTK's Punkt algorithm
  (`PunktSentenceTokenizer`, code only, no downloaded model) with a fixed list of common English
  abbreviations below as its parameters;
* ScisummNet (`lines`): every line is its own paragraph (section titles stand alone as short
  "sentences"; each body line is a whole section), split by Punkt as above;
* PTB-tokenized lowercase text (CNN/DM from REALSumm): a sentence ends at a standalone `.`, `!` or
  `?` token (optionally followed by a closing quote token).

`WordTokenizer` is the object sumy's document model needs (`to_words`, `to_sentences`, `language`):
words are runs of letters/digits (with inner apostrophes), as sumy's summarizers only use them to
compare sentences.
"""

from __future__ import annotations

import re

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

ABBREVIATIONS = (
    "mr mrs ms dr st jr sr prof gen col capt lt sgt rev hon gov sen rep no vol fig figs al etc "
    "e.g i.e vs u.s u.k jan feb mar apr jun jul aug sep sept oct nov dec inc co corp ltd dept "
    "approx ca cf eq eqs sec p.m a.m"
).split()

_params = PunktParameters()
_params.abbrev_types = set(ABBREVIATIONS)
_PUNKT = PunktSentenceTokenizer(_params)

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_PTB_END = re.compile(r"(?<=\s)([.!?])(\s+(?:''|\"|'))?\s+")


def split_sentences(text: str, style: str = "prose") -> list[str]:
    if style == "lines":
        return [s.strip() for line in text.split("\n") if line.strip()
                for s in _PUNKT.tokenize(line.strip()) if s.strip()]
    if style == "ptb":
        out, last = [], 0
        padded = " " + text.strip() + " "
        for m in _PTB_END.finditer(padded):
            sent = padded[last:m.end()].strip()
            if sent:
                out.append(sent)
            last = m.end()
        tail = padded[last:].strip()
        if tail:
            out.append(tail)
        return out
    sentences = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(line.strip() for line in para.splitlines() if line.strip())
        if para:
            sentences.extend(s.strip() for s in _PUNKT.tokenize(para) if s.strip())
    return sentences


def n_words(text: str) -> int:
    return len(text.split())


class WordTokenizer:
    """The tokenizer interface sumy's Sentence and parsers use, without NLTK data files."""

    language = "english"

    def to_sentences(self, paragraph: str):
        return tuple(split_sentences(paragraph))

    def to_words(self, sentence: str):
        return tuple(_WORD.findall(sentence))
