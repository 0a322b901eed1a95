"""Extractive summarisation of long documents: ROUGE of Lead, LexRank, TextRank, LSA and titans.

Usage: python benchmarks/summarization.py [--quick | --subsample] [--jobs N] [--no-titans] [--section NAME]

--quick      smoke run (`make bench-quick`): 1-2 documents per set, every row including titans, written to
             benchmarks/results/quick/
--subsample  evenly spaced subsample of 4-30 documents per set (62 in all), written to
             benchmarks/results/<section>.md (the committed summarization_quick section:
             `--subsample --section summarization_quick`)
"""

from __future__ import annotations

import os

# One BLAS thread per worker process: OpenBLAS's own default on this VM made sumy's LSA SVD ~8x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import gzip
import json
import multiprocessing as mp
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import text_units  # noqa: E402

NAME = "summarization"
SUMM_DIR = common.TEXT / "eval" / "summarization"
METRICS = ("rouge1", "rouge2", "rougeL")
BASELINES = ("Lead", "LexRank", "TextRank", "LSA")


@dataclass(frozen=True)
class SummSet:
    label: str
    file: str
    style: str            # sentence splitting, see text_units.split_sentences
    reference: str        # field name
    subsample_docs: int   # documents in the --subsample run
    note: str = ""
    cache_tag: str = ""   # changes when this set's sentence split changes (per-document cache key)
    quick_docs: int = 1   # documents in the --quick smoke run


SETS = [
    SummSet("SQuALITY", "squality.jsonl.gz", "prose", "references", 8,
            "max over the 4 human references (per metric)"),
    SummSet("GovReport", "govreport.jsonl.gz", "prose", "reference", 4),
    SummSet("Multi-News", "multinews.jsonl.gz", "prose", "reference", 4),
    SummSet("ScisummNet", "scisumm.jsonl.gz", "lines", "summary", 16,
            "reference = `summary` (ScisummNet human summary), not the abstract", "lines-punkt", quick_docs=2),
    SummSet("CNN/DM (REALSumm)", "cnndm_realsumm.jsonl.gz", "ptb", "reference", 30,
            "reference = the highlights", quick_docs=2),
]

# Our earlier measurement of the baselines (issue 5), R-1/R-2/R-L F x 100.
EARLIER = {
    ("SQuALITY", "LexRank"): (44.6, 9.2, 17.7), ("SQuALITY", "Lead"): (39.4, 7.3, 15.1),
    ("GovReport", "Lead"): (53.2, 25.9, 29.5), ("GovReport", "LexRank"): (48.4, 19.3, 24.3),
    ("Multi-News", "Lead"): (39.6, 8.2, 15.9),
    ("ScisummNet", "Lead"): (40.3, 16.7, 24.7), ("ScisummNet", "LexRank"): (38.1, 9.1, 18.9),
    ("CNN/DM (REALSumm)", "Lead"): (40.4, 16.3, 25.7),
}

METHOD = """\
Every set in `../shared/data/text/eval/summarization`. Summaries are cut to a **word budget** = the
mean reference length of the set in whitespace-separated words (over all documents; SQuALITY: over
all 4 x 127 references): sentences are taken in the method's order (Lead: document order; the
others: descending sentence score) until the budget is reached, the sentence that crosses it is cut
to the remaining words, and the chosen sentences are output in document order. ROUGE-1/2/L F1
x 100 from `rouge-score` (`use_stemmer=True`; ROUGE-L is sentence-agnostic `rougeL`), averaged over
documents; SQuALITY takes the maximum over its 4 references for each metric. LexRank, TextRank and
LSA are sumy's (default settings, sumy's English stop words, Snowball stemmer); all methods share
one sentence split (`benchmarks/text_units.py`: Punkt with a fixed abbreviation list, each line
its own paragraph for ScisummNet, PTB sentence ends for the tokenized CNN/DM text), since sumy's own
tokenizer needs NLTK data that is not available offline."""


def load_set(s: SummSet) -> list[dict]:
    with gzip.open(SUMM_DIR / s.file, "rt") as fh:
        return [json.loads(line) for line in fh]


def references(doc: dict, s: SummSet) -> list[str]:
    ref = doc[s.reference]
    if isinstance(ref, str) and ref.startswith("["):
        import ast
        ref = ast.literal_eval(ref)
    return list(ref) if isinstance(ref, (list, tuple)) else [ref]


def word_budget(docs: list[dict], s: SummSet) -> int:
    lengths = [text_units.n_words(r) for d in docs for r in references(d, s)]
    return int(round(float(np.mean(lengths))))


def cut_to_budget(sentences: list[str], ranked: list[int], budget: int) -> str:
    chosen: dict[int, str] = {}
    used = 0
    for i in ranked:
        words = sentences[i].split()
        if used + len(words) >= budget:
            chosen[i] = " ".join(words[: budget - used])
            break
        chosen[i] = sentences[i]
        used += len(words)
    return " ".join(chosen[i] for i in sorted(chosen) if chosen[i])


class _RecordRanking:
    """Passed to a sumy summarizer as its sentence count: sumy hands it the sentences sorted by
    descending score, and it keeps that order (their positions in the document)."""

    def __init__(self):
        self.order: list[int] = []

    def __call__(self, infos):
        self.order = [info.order for info in infos]
        return infos


_WORKER: dict = {}


def _init_worker():
    from rouge_score import rouge_scorer
    from sumy.nlp.stemmers import Stemmer
    from sumy.summarizers.lex_rank import LexRankSummarizer
    from sumy.summarizers.lsa import LsaSummarizer
    from sumy.summarizers.text_rank import TextRankSummarizer
    from sumy.utils import get_stop_words

    stemmer = Stemmer("english")
    stop = get_stop_words("english")
    summarizers = {}
    for name, cls in (("LexRank", LexRankSummarizer), ("TextRank", TextRankSummarizer),
                      ("LSA", LsaSummarizer)):
        summ = cls(stemmer)
        summ.stop_words = stop
        summarizers[name] = summ
    _WORKER["summarizers"] = summarizers
    _WORKER["scorer"] = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    _WORKER["tokenizer"] = text_units.WordTokenizer()


def _rank_with_sumy(name: str, sentences: list[str]) -> list[int]:
    from sumy.models.dom import ObjectDocumentModel, Paragraph, Sentence

    tok = _WORKER["tokenizer"]
    document = ObjectDocumentModel([Paragraph([Sentence(s, tok) for s in sentences])])
    ranking = _RecordRanking()
    _WORKER["summarizers"][name](document, ranking)
    return ranking.order


def score_summary(summary: str, refs: list[str]) -> tuple[float, ...]:
    scorer = _WORKER["scorer"]
    best = [0.0] * len(METRICS)
    for ref in refs:
        sc = scorer.score(ref, summary)
        best = [max(b, sc[m].fmeasure) for b, m in zip(best, METRICS)]
    return tuple(100 * b for b in best)


# Bump when the sentence split, the budget rule or the summarizer settings change: cached
# per-document baseline scores are keyed by it.
BASELINE_VERSION = "1"


def _cache_path(set_label: str, doc_id: str, budget: int, tag: str = "") -> Path:
    safe = "".join(c if c.isalnum() else "_" for c in set_label) + (f".{tag}" if tag else "")
    return common.CACHE_DIR / "summarization" / f"v{BASELINE_VERSION}" / safe / f"{doc_id}.b{budget}.json"


def _baselines_for_doc(job):
    set_label, doc_id, text, refs, style, budget, tag = job
    cache = _cache_path(set_label, doc_id, budget, tag)
    if cache.exists():
        cached = json.loads(cache.read_text())
        return {m: tuple(v) for m, v in cached["scores"].items()}, cached["n_sentences"]
    if not _WORKER:
        _init_worker()
    sentences = text_units.split_sentences(text, style)
    out = {"Lead": score_summary(cut_to_budget(sentences, list(range(len(sentences))), budget), refs)}
    for name in ("LexRank", "TextRank", "LSA"):
        try:
            ranked = _rank_with_sumy(name, sentences)
        except Exception as exc:  # noqa: BLE001 - e.g. LSA on a one-sentence document
            common.log(f"{name} failed on a document ({exc}); scored as empty summary")
            ranked = []
        out[name] = score_summary(cut_to_budget(sentences, ranked, budget), refs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"scores": out, "n_sentences": len(sentences)}))
    tmp.replace(cache)
    return out, len(sentences)


def subsample(n: int, k: int) -> list[int]:
    """k evenly spaced indices of n (deterministic)."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


# ----------------------------------------------------------------------------- titans


def titans_summarizer():
    """A function (text, budget) -> summary driven by titans_cli.summarize, or None while the
    Python API does not exist. The API's sentences are ranked by its score and cut to the same
    word budget with the same rule as the baselines."""
    import titans_bridge
    if common.titans_api("load_model", "summarize") is None or not titans_bridge.model_available("text"):
        return None
    return titans_bridge.summary_fn(cut_to_budget)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="smoke run: 1-2 documents per set (the first, or the first and last), all rows; "
                           "writes benchmarks/results/quick/")
    mode.add_argument("--subsample", action="store_true",
                      help="evenly spaced subsample of each set (62 documents in all)")
    ap.add_argument("--jobs", type=int, default=min(2, mp.cpu_count()))
    ap.add_argument("--no-titans", action="store_true")
    ap.add_argument("--section", default=NAME,
                    help="section name: writes benchmarks/results/<section>.md (default summarization)")
    args = ap.parse_args(argv)
    timer = common.Timer()
    titans_fn = None if args.no_titans else titans_summarizer()

    rows, info_rows = [], []
    _init_worker()
    for s in SETS:
        docs = load_set(s)
        budget = word_budget(docs, s)
        if args.quick:
            idx = subsample(len(docs), s.quick_docs)
        elif args.subsample:
            idx = subsample(len(docs), s.subsample_docs)
        else:
            idx = list(range(len(docs)))
        jobs = [(s.label, str(docs[i]["id"]), docs[i]["text"], references(docs[i], s), s.style, budget,
                 s.cache_tag) for i in idx]
        common.log(f"{s.label}: {len(idx)} of {len(docs)} documents, budget {budget} words")
        if args.jobs > 1 and len(jobs) > 1:
            with mp.get_context("fork").Pool(min(args.jobs, len(jobs)), initializer=_init_worker) as pool:
                results = []
                for k, res in enumerate(pool.imap(_baselines_for_doc, jobs, chunksize=1), 1):
                    results.append(res)
                    if k % 10 == 0:
                        common.log(f"{s.label}: {k}/{len(jobs)} documents")
        else:
            results = [_baselines_for_doc(j) for j in jobs]
        n_sent = [n for _, n in results]
        scores = {m: np.mean([r[m] for r, _ in results], axis=0) for m in BASELINES}
        titans_scores = None
        titans_status = "pending (no `titans_cli.summarize` or no loadable text model when this run started)"
        if args.no_titans:
            titans_status = ("not run here (--no-titans: titans on every document takes hours on a 2-core "
                             "CPU); see the quick-subsample section for titans rows")
        elif titans_fn is not None:
            try:
                per_doc = [score_summary(titans_fn(text, budget), refs) for _, _, text, refs, _, _, _ in jobs]
                titans_scores = np.mean(per_doc, axis=0)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                titans_status = f"failed: {str(exc)[:200]}"
                common.log(f"titans summarize failed on {s.label}: {exc}")
        for m in BASELINES:
            r1, r2, rl = scores[m]
            earlier = EARLIER.get((s.label, m))
            rows.append([s.label, m, f"{r1:.1f}", f"{r2:.1f}", f"{rl:.1f}",
                         "/".join(f"{x:.1f}" for x in earlier) if earlier else ""])
        if titans_scores is not None:
            r1, r2, rl = titans_scores
            rows.append([s.label, "**titans**", f"{r1:.1f}", f"{r2:.1f}", f"{rl:.1f}", ""])
        else:
            rows.append([s.label, "**titans**", titans_status, "", "", ""])
        shown = " (quick-mode subsample)" if args.quick else " (subsample)" if len(idx) < len(docs) else ""
        info_rows.append([s.label, f"{len(idx)} of {len(docs)}" + shown,
                          budget, f"{np.mean(n_sent):.0f}", s.note])
        common.log(f"{s.label} done at {timer.elapsed:.0f} s")

    body = [METHOD, ""]
    body.append(common.md_table(["set", "documents scored", "budget (words)", "mean sentences / doc",
                                 "reference"], info_rows, "llrrl"))
    body.append("")
    body.append(common.md_table(["set", "method", "ROUGE-1", "ROUGE-2", "ROUGE-L",
                                 "earlier (issue 5) R-1/R-2/R-L"], rows, "llrrrl"))
    body.append("")
    if not args.no_titans:
        import titans_bridge

        body.append(f"titans rows: model `{Path(titans_bridge.model_name('text')).name}`.")
        body.append("")
    if args.quick:
        body.append("**Quick mode (smoke run, subsample)**: only the first document of SQuALITY, GovReport "
                    "and Multi-News and the first and last of ScisummNet and CNN/DM are scored (every "
                    "method, titans included, on the same documents; word budgets are still the means "
                    "over the whole set), so the numbers say that every row runs, not how the methods compare.")
    elif args.subsample:
        body.append("Subsample: each set is an evenly spaced subsample of its documents "
                    "(`numpy.linspace` over the file order), so numbers differ from the full run.")
    title = "Summarisation: ROUGE on long documents"
    if args.section != NAME:
        title += f" ({args.section})"
    mode = ("subsample mode (`--subsample`: evenly spaced documents of each set, see the notes)"
            if args.subsample else None)
    path = common.write_section(args.section, title, "\n".join(body), args.quick, timer.elapsed,
                                script=NAME, mode=mode)
    common.log(f"wrote {path} in {timer.elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
