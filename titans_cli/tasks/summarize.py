"""Extractive summaries driven by the model: the memory's surprise and the model's embeddings.

Each sentence gets two model-derived features while the document streams through once:
- *novelty*: the mean memory surprise (grad norm of the associative loss) over its tokens — the
  sentences the memory had to learn most from;
- *centrality*: the cosine between the sentence's mean hidden state and the document's mean
  sentence embedding — how much of the document's main thread it carries.
Relevance = z(centrality) + novelty_weight * z(novelty) (robust z-scores, clipped to +-3). Sentences
are picked greedily by maximal marginal relevance (Carbonell & Goldstein 1998):
`lambda * relevance - (1 - lambda) * max cosine to the sentences already picked`, which penalises
redundancy; the summary lists the picked sentences in document order, verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from titans_cli.errors import TitansInputError
from titans_cli.stream import RecordEnd, RecordInput, StreamEngine, TokenOutputs
from titans_cli.tasks.regions import robust_z


@dataclass
class SummarySentence:
    index: int  # sentence number in the document (0-based)
    offset: int  # character offset in the document
    length: int
    text: str
    score: float  # relevance (before the redundancy penalty)


@dataclass
class Summary:
    id: str
    sentences: list[SummarySentence]  # picked, in document order
    n_sentences: int  # sentences in the document


class SentenceFeatures:
    """Per-sentence sums of bits, grad, hidden state and token counts for one document."""

    def __init__(self, record: RecordInput):
        self.record = record
        self.document = record.meta["document"]
        self.sentences: list = []
        self.ends = np.zeros(0, dtype=np.int64)
        self.bits: list[float] = []
        self.grad: list[float] = []
        self.tokens: list[int] = []
        self.hidden: list[np.ndarray] = []

    def _pull_sentences(self) -> None:
        new = list(self.document.sentences)
        self.document.sentences.clear()
        if not new:
            return
        self.sentences.extend(new)
        self.ends = np.concatenate([self.ends, np.array([s.end for s in new], dtype=np.int64)])
        self.bits.extend([0.0] * len(new))
        self.grad.extend([0.0] * len(new))
        self.tokens.extend([0] * len(new))
        self.hidden.extend([None] * len(new))

    def add(self, outputs: TokenOutputs) -> list:
        self._pull_sentences()
        offsets = self.document.offsets(outputs.start, len(outputs))
        index = np.searchsorted(self.ends, offsets[:, 0], side="right")
        keep = index < len(self.sentences)
        index = index[keep]
        if index.size == 0:
            return []
        bounds = np.flatnonzero(np.diff(index)) + 1
        bits, grad = outputs.bits[keep], outputs.grad[keep]
        hidden = outputs.hidden[keep]
        for group in np.split(np.arange(index.size), bounds):
            i = int(index[group[0]])
            self.bits[i] += float(bits[group].sum())
            self.grad[i] += float(grad[group].sum())
            self.tokens[i] += group.size
            part = hidden[group].sum(axis=0, dtype=np.float64)
            self.hidden[i] = part if self.hidden[i] is None else self.hidden[i] + part
        return []

    def finish(self, end: RecordEnd) -> list:
        self._pull_sentences()
        return [self]


def pick_sentences(
    features: SentenceFeatures,
    n: int | None = None,
    ratio: float | None = None,
    redundancy: float = 0.3,
    novelty_weight: float = 0.5,
    min_tokens: int = 6,
) -> Summary:
    sentences = features.sentences
    count = len(sentences)
    if n is None:
        n = max(1, int(round((ratio if ratio is not None else 0.1) * count)))
    tokens = np.asarray(features.tokens, dtype=np.float64)
    usable = np.flatnonzero(tokens > 0)
    if usable.size == 0:
        return Summary(features.record.id, [], count)
    dim = next(h for h in features.hidden if h is not None).shape[0]
    embeddings = np.zeros((count, dim))
    for i in usable:
        embeddings[i] = features.hidden[i] / tokens[i]
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0)
    centroid = unit[usable].mean(axis=0)
    centroid /= max(np.linalg.norm(centroid), 1e-12)
    centrality = unit @ centroid
    novelty = np.divide(np.asarray(features.grad), tokens, out=np.zeros(count), where=tokens > 0)
    relevance = np.full(count, -np.inf)
    z_centrality = np.clip(np.nan_to_num(robust_z(centrality[usable])), -3, 3)
    z_novelty = np.clip(np.nan_to_num(robust_z(novelty[usable])), -3, 3)
    relevance[usable] = z_centrality + novelty_weight * z_novelty
    # Candidates: sentences with enough tokens to say something (headings, "Yes." are never picked
    # unless the document has nothing else).
    candidates = usable[tokens[usable] >= min_tokens]
    if candidates.size == 0:
        candidates = usable
    n = min(n, candidates.size)
    scaled = relevance[candidates]
    span = scaled.max() - scaled.min()
    scaled = (scaled - scaled.min()) / span if span > 0 else np.ones_like(scaled)
    chosen: list[int] = []
    max_similarity = np.full(candidates.size, -1.0)
    available = np.ones(candidates.size, dtype=bool)
    for _ in range(n):
        penalty = np.where(max_similarity > -1.0, max_similarity, 0.0)
        value = (1 - redundancy) * scaled - redundancy * penalty
        value[~available] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        available[best] = False
        max_similarity = np.maximum(max_similarity, unit[candidates] @ unit[candidates[best]])
    picked = sorted(int(candidates[i]) for i in chosen)
    return Summary(
        features.record.id,
        [
            SummarySentence(i, sentences[i].start, sentences[i].end - sentences[i].start, sentences[i].text, float(relevance[i]))
            for i in picked
        ],
        count,
    )


def run_summarize(engine: StreamEngine, records, n: int | None = None, ratio: float | None = None,
                  redundancy: float = 0.3):
    """A Summary per text record, in input order."""
    if n is not None and n < 1:
        raise TitansInputError(f"--sentences must be at least 1, got {n}")
    if ratio is not None and not 0 < ratio <= 1:
        raise TitansInputError(f"--ratio must be in (0, 1], got {ratio}")
    if n is not None and ratio is not None:
        raise TitansInputError("give --sentences or --ratio, not both")
    engine.want_hidden = True
    for _, items in engine.run(records, SentenceFeatures):
        for features in items:
            yield pick_sentences(features, n, ratio, redundancy)
