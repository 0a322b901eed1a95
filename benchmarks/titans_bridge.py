"""Adapters from the benchmarks to the titans Python API (`titans_cli.load_model`, `embed`,
`summarize`). Each returns None while the API or a shipped model is missing, and the benchmark then
prints "pending" for its titans rows. Embeddings are cached under benchmarks/.cache keyed by a hash
of the titans_cli sources + model configs and of the items, so re-running a section is cheap."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

import common


def model_name(kind: str) -> str:
    """The model a benchmark uses: the shipped 'dna' / 'text', or a directory given in
    TITANS_BENCH_DNA_MODEL / TITANS_BENCH_TEXT_MODEL (to measure a model before it ships)."""
    return os.environ.get(f"TITANS_BENCH_{kind.upper()}_MODEL", kind)

_MODELS: dict = {}


_FINGERPRINT: list[str] = []


def fingerprint() -> str:
    """Hash of the titans_cli sources and the model configs (which carry the weights' sha256)."""
    if _FINGERPRINT:
        return _FINGERPRINT[0]
    h = hashlib.sha256()
    roots = [common.REPO / "titans_cli", common.REPO / "models"]
    roots += [Path(os.environ[v]) for v in ("TITANS_BENCH_DNA_MODEL", "TITANS_BENCH_TEXT_MODEL") if v in os.environ]
    for root in roots:
        if not root.exists():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in {".py", ".json"}:
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
    _FINGERPRINT.append(h.hexdigest()[:16])
    return _FINGERPRINT[0]


def model(kind: str):
    """The shipped model for 'dna' or 'text', loaded once; raises if it cannot be loaded."""
    if kind not in _MODELS:
        api = common.titans_api("load_model")
        if api is None:
            raise RuntimeError("titans_cli.load_model is missing")
        _MODELS[kind] = api.load_model(model_name(kind))
    return _MODELS[kind]


def model_available(kind: str) -> bool:
    try:
        model(kind)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not available yet"
        common.log(f"titans {kind} model not available: {str(exc)[:200]}")
        return False


class NotCached(Exception):
    """Quick mode asked for embeddings that only a full run computes, and none are cached."""


def embedder():
    """(kind, items [(id, sequence or text)], pool) -> (n_items, dim) matrix, one row per item in
    item order, from `titans_cli.embed(model, items, per="record", pool=pool)`."""
    api = common.titans_api("load_model", "embed")
    if api is None:
        return None

    def embed(kind: str, items, pool: str, compute: bool = True) -> np.ndarray:
        key = hashlib.sha256(("\n".join(i for i, _ in items) + f"|{kind}|{pool}|{fingerprint()}").encode())
        path = common.CACHE_DIR / "embeddings" / f"{key.hexdigest()[:24]}.npy"
        if path.exists():
            return np.load(path)
        if not compute:
            raise NotCached(f"{len(items)} {kind} items, pool {pool}")
        t = common.Timer()
        result = api.embed(model(kind), list(items), per="record", pool=pool)
        ids = list(result.ids)
        if ids != [i for i, _ in items]:
            raise RuntimeError(f"titans embed returned {len(ids)} rows in another order than the {len(items)} items")
        matrix = np.asarray(result.matrix, dtype=np.float64)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, matrix)
        common.log(f"titans embed {kind} pool={pool}: {len(items)} items in {t.elapsed:.0f} s")
        return matrix

    return embed


def summary_fn(cut_to_budget):
    """(text, budget) -> summary. The titans ranking is the order in which its summariser's
    maximal-marginal-relevance loop picks sentences (greedy, so the first n picks do not depend on
    the number asked for); it is recovered from `titans_cli.tasks.summarize.pick_sentences` with
    n = 1, 2, ... on the features of one streaming pass, and cut to the word budget with the same
    rule as the baselines."""
    api = common.titans_api("load_model", "summarize")
    if api is None:
        return None
    from titans_cli.tasks.summarize import SentenceFeatures, pick_sentences

    def summarize(text: str, budget: int) -> str:
        m = model("text")
        engine = m.engine()
        engine.want_hidden = True
        features = None
        for _, items in engine.run(api._records(m, ("doc", text)), SentenceFeatures):
            for f in items:
                features = f
        sentences = [s.text for s in features.sentences]
        order: list[int] = []
        words = 0
        for n in range(1, len(sentences) + 1):
            picked = [s.index for s in pick_sentences(features, n).sentences]
            new = [i for i in picked if i not in order]
            if not new:
                break
            order += new
            words += sum(len(sentences[i].split()) for i in new)
            if words >= budget:
                break
        return cut_to_budget(sentences, order, budget)

    return summarize
