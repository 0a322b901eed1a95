"""Classification: k-mer / TF-IDF baselines vs linear probes on titans embeddings, same splits.

Usage: python benchmarks/classification.py [--quick] [--no-titans] [--titans-from DIR ...]
(--titans-from: embeddings computed on the GPU machine by benchmarks/titans_stages.py)

--quick is a smoke run (`make bench-quick`, about a minute of titans embedding on a 2-core CPU):
every row, titans included, on a small subsample (QUICK_* below), written to
benchmarks/results/quick/classification.md.
"""

from __future__ import annotations

import os
import sys

# Quick mode: one BLAS thread. On this shared 2-core VM, two OpenBLAS threads made the small
# logistic-regression fits of the smoke run ~10x slower (0.9 s vs 10.6 s for one k-mer probe,
# spinning threads waiting for a descheduled partner); full mode keeps its setting.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1" if "--quick" in sys.argv[1:] else "2")

import argparse  # noqa: E402
import csv  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "classification"
SEED = 20240611
KS = (4, 5, 6)
DOMAIN_WINDOW = 2000
FULL_DOMAIN_SAMPLE = (1000, 600)   # train windows per collection, eval windows per class
# Quick mode (smoke run): every task on a small subsample, items cut short, titans rows computed.
QUICK_DOMAIN_SAMPLE = (6, 6)       # train windows per collection, eval windows per class
QUICK_PHAGE_CLUSTERS = 8           # the clusters with the most train genomes
QUICK_PHAGE_TRAIN = 3              # train genomes per cluster, evenly spaced in file order
QUICK_PHAGE_BASES = 4000           # every genome cut to its first bases (train and eval)
QUICK_BROWN_TRAIN = 3              # train documents per genre (the first ones)
QUICK_BROWN_TEST = 1               # test documents per genre (the first one)
QUICK_BROWN_CHARS = 1000           # every document cut to its first characters
MAX_N_FRACTION = 0.01

TRAIN_COLLECTIONS = {   # file in dna/train -> domain label
    "helicobacter_pylori.fa.gz": "bacterium",
    "klebsiella_pneumoniae.fa.gz": "bacterium",
    "escherichia_phages_guelin.fa.gz": "phage",
    "mycobacteriophages_train.fa.gz": "phage",
    "saccharomyces_cerevisiae_s288c.fa.gz": "fungus",
    "ustilago_maydis.fa.gz": "fungus",
    "plasmodium_falciparum.fa.gz": "protist",
    "drosophila_melanogaster_upstream2000.fa.gz": "insect",
    "homo_sapiens_chrX_0-50Mb.fa.gz": "human",
}
EVAL_COLLECTIONS = {    # file in dna/eval -> domain label
    "escherichia_coli_k12_mg1655.fa.gz": "bacterium",
    "vibrio_cholerae_n16961.fa.gz": "bacterium",
    "staphylococcus_aureus_n315.fa.gz": "bacterium",
    "staphylococcus_aureus_usa300_fpr3757.fa.gz": "bacterium",
    "staphylococcus_aureus_jh1.fa.gz": "bacterium",
    "mycobacteriophages_eval.fa.gz": "phage",
    "homo_sapiens_chrX_60-65Mb.fa.gz": "human",
}

METHOD = f"""\
All probes and baselines are the same learner: standardised features -> multinomial logistic
regression, its C chosen by 3-fold cross-validation **on the training items only** from
{{0.01, 0.1, 1}} (TF-IDF: {{1, 10, 100}}, no scaling; lbfgs, at most 300 iterations, tol 1e-3). Eval files are used for measuring only.
Macro-F1 is over the classes present in the eval truth (sklearn `labels=` those classes).

* **Mycobacteriophage clusters**: one item per genome, labels = `cluster` of `phage_clusters.tsv`
  (genomes with cluster NA dropped); train = `mycobacteriophages_train`, eval =
  `mycobacteriophages_eval`; also reported on the eval genomes whose `kmer31_containment_in_train`
  < 0.5 (the novel-ish ones). k-mer baseline: canonical k-mer frequencies, k = {", ".join(map(str, KS))}
  concatenated (2,728 features).
* **DNA domain of origin**: non-overlapping {DOMAIN_WINDOW // 1000} kb windows (< {MAX_N_FRACTION:.0%} N) of
  `dna/train` labelled by collection (bacterium: H. pylori, K. pneumoniae; phage: E. coli phages,
  mycobacteriophages; fungus: S. cerevisiae, U. maydis; protist: P. falciparum; insect: D.
  melanogaster upstream regions; human: chrX 0-50 Mb), a fixed random sample per collection; eval =
  windows of the eval genomes (bacterium: E. coli, V. cholerae, S. aureus N315/USA300/JH1; phage:
  mycobacteriophages_eval; human: chrX 60-65 Mb, windows with N excluded), a fixed random sample
  per class. 2 kb because the D. melanogaster collection consists of 2 kb upstream regions. The
  model predicts among all 6 domains; eval truth has 3.
* **Brown genres**: the fixed `split` of `brown_genres.jsonl.gz` (400 train / 100 test, 15 genres);
  baseline TF-IDF of word 1-2 grams (sublinear tf, min_df 2).
* **titans rows**: the same learner on `titans embed --pool mean` and `--pool memory` embeddings of
  exactly the same items (one record / document per item)."""


# ----------------------------------------------------------------------------- learner


def fit_probe(X_train, y_train, scale=True, Cs=(0.01, 0.1, 1.0)):
    steps = [StandardScaler()] if scale else []
    pipe = make_pipeline(*steps, LogisticRegression(max_iter=300, tol=1e-3))
    search = GridSearchCV(pipe, {"logisticregression__C": list(Cs)},
                          cv=KFold(3, shuffle=True, random_state=SEED), n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        search.fit(X_train, y_train)
    return search


def scores(y_true, y_pred) -> tuple[float, float]:
    """Accuracy and macro-F1 over the classes present in the truth (a prediction of any other
    class counts against the true class's recall but adds no class of its own)."""
    labels = sorted(set(y_true))
    return (accuracy_score(y_true, y_pred),
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def confusion_note(y_true, y_pred) -> str:
    """'bacterium -> phage 40%, fungus 20%; ...' for the classes with errors."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    parts = []
    for lab in sorted(set(y_true)):
        wrong = y_pred[(y_true == lab) & (y_pred != lab)]
        if wrong.size == 0:
            continue
        n = int((y_true == lab).sum())
        kinds, counts = np.unique(wrong, return_counts=True)
        order = np.argsort(-counts)
        parts.append(f"{lab} -> " + ", ".join(f"{kinds[i]} {100 * counts[i] / n:.0f} %" for i in order))
    return "; ".join(parts) if parts else "no errors"


# ----------------------------------------------------------------------------- data


def phage_items():
    table = {}
    with open(common.DNA_EVAL / "phage_clusters.tsv") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            table[row["fasta_id"]] = row
    items = {"train": [], "eval": []}
    for split, path in (("train", common.DNA_TRAIN / "mycobacteriophages_train.fa.gz"),
                        ("eval", common.DNA_EVAL / "mycobacteriophages_eval.fa.gz")):
        for rid, seq in common.read_fasta(path):
            row = table.get(rid)
            if row is None or row["cluster"] in ("", "NA"):
                continue
            contain = float(row["kmer31_containment_in_train"]) if split == "eval" else float("nan")
            items[split].append((rid, seq, row["cluster"], contain))
    return items


def quick_phage_items(items):
    """Quick-mode subsample: the QUICK_PHAGE_CLUSTERS clusters with the most train genomes;
    QUICK_PHAGE_TRAIN evenly spaced train genomes of each, and the eval genomes of each with the
    lowest and the highest 31-mer containment in train (so that the containment < 0.5 columns have
    items); every genome cut to its first QUICK_PHAGE_BASES bases (ids say so)."""
    counts: dict[str, int] = {}
    for *_, cluster, _ in items["train"]:
        counts[cluster] = counts.get(cluster, 0) + 1
    chosen = sorted(counts, key=lambda c: (-counts[c], c))[:QUICK_PHAGE_CLUSTERS]
    out = {"train": [], "eval": []}
    n = QUICK_PHAGE_BASES
    for cluster in chosen:
        train = [it for it in items["train"] if it[2] == cluster]
        keep = np.unique(np.linspace(0, len(train) - 1, QUICK_PHAGE_TRAIN).round().astype(int))
        out["train"] += [train[k] for k in keep]
        ev = sorted((it for it in items["eval"] if it[2] == cluster), key=lambda it: it[3])
        out["eval"] += ev[:1] + ev[-1:] if len(ev) > 1 else ev
    cut = {split: [(f"{rid}:0-{n}", seq[:n], cluster, contain) for rid, seq, cluster, contain in rows]
           for split, rows in out.items()}
    return cut, chosen


def quick_brown_items(items):
    """Quick-mode subsample: the first QUICK_BROWN_TRAIN train and QUICK_BROWN_TEST test documents
    of each genre, cut to their first QUICK_BROWN_CHARS characters (ids say so)."""
    out = {}
    for split, per_genre in (("train", QUICK_BROWN_TRAIN), ("test", QUICK_BROWN_TEST)):
        seen: dict[str, int] = {}
        rows = []
        for doc_id, text, genre in items[split]:
            if seen.get(genre, 0) < per_genre:
                seen[genre] = seen.get(genre, 0) + 1
                rows.append((f"{doc_id}[:{QUICK_BROWN_CHARS}]", text[:QUICK_BROWN_CHARS], genre))
        out[split] = rows
    return out


def tile_windows(records, window, max_n):
    for rid, seq in records:
        for start in range(0, len(seq) - window + 1, window):
            w = seq[start:start + window]
            if w.count("N") <= max_n * window:
                yield f"{rid}:{start}-{start + window}", w


def domain_items(n_train_per_collection: int, n_eval_per_class: int):
    rng = np.random.default_rng(SEED)
    train = []
    for fname, label in TRAIN_COLLECTIONS.items():
        wins = list(tile_windows(common.read_fasta(common.DNA_TRAIN / fname), DOMAIN_WINDOW,
                                 MAX_N_FRACTION))
        pick = rng.choice(len(wins), size=min(n_train_per_collection, len(wins)), replace=False)
        train += [(wins[i][0], wins[i][1], label) for i in sorted(pick)]
        common.log(f"domain train {fname}: {len(wins)} windows, {len(pick)} sampled")
    by_class: dict[str, list] = {}
    for fname, label in EVAL_COLLECTIONS.items():
        max_n = 0.0 if label == "human" else MAX_N_FRACTION
        wins = list(tile_windows(common.read_fasta(common.DNA_EVAL / fname), DOMAIN_WINDOW, max_n))
        by_class.setdefault(label, []).extend(wins)
    evaluation = []
    for label in sorted(by_class):
        wins = by_class[label]
        pick = rng.choice(len(wins), size=min(n_eval_per_class, len(wins)), replace=False)
        evaluation += [(wins[i][0], wins[i][1], label) for i in sorted(pick)]
        common.log(f"domain eval {label}: {len(wins)} windows, {len(pick)} sampled")
    return train, evaluation


def brown_items():
    items = {"train": [], "test": []}
    with gzip.open(common.TEXT / "labeled" / "brown_genres.jsonl.gz", "rt") as fh:
        for line in fh:
            d = json.loads(line)
            items[d["split"]].append((d["id"], d["text"], d["genre"]))
    return items


# ----------------------------------------------------------------------------- titans


def titans_embedder():
    """Function (kind, items [(id, sequence_or_text)], pool) -> embedding matrix in item order,
    or None while the titans CLI / API cannot embed yet."""
    import titans_bridge
    fn = titans_bridge.embedder()
    if fn is None or not (titans_bridge.model_available("dna") and titans_bridge.model_available("text")):
        return None
    return fn


def staged_embedder(staged):
    """The same function, reading embeddings computed elsewhere by `titans_stages.py compute`."""
    import titans_bridge
    import titans_stages

    def embed(kind, items, pool, compute=True):
        try:
            return staged.embeddings(kind, [i for i, _ in items], pool)
        except titans_stages.NotComputed as exc:
            raise titans_bridge.NotCached(str(exc)) from exc
    return embed


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: every row on a small subsample of every task (see QUICK_*); "
                         "writes benchmarks/results/quick/")
    ap.add_argument("--no-titans", action="store_true")
    ap.add_argument("--titans-from", metavar="DIR", nargs="+",
                    help="titans embeddings from the output folder(s) of `benchmarks/titans_stages.py "
                         "compute` (run on another machine) instead of running the model here")
    args = ap.parse_args(argv)
    timer = common.Timer()
    staged = None
    if args.titans_from and not args.no_titans:
        import titans_stages
        staged = titans_stages.StagedResults(args.titans_from)
        embed = staged_embedder(staged)
    else:
        embed = None if args.no_titans else titans_embedder()
    titans_status = ("not run (--no-titans)" if args.no_titans else
                     "pending (no `titans_cli.embed` or no loadable dna/text model when this run started)")

    tables = []

    def titans_rows(task, kind, train_items, eval_items, y_train, y_eval, extra, n_extra,
                    compute=True, stage_task=""):
        """Linear-probe rows for both pools; `extra(pred)` gives the task's extra columns. With
        compute=False only cached embeddings are used; with --titans-from only the
        staged ones (`stage_task`: their task name there)."""
        import titans_bridge
        out = []
        for pool in ("mean", "memory"):
            label = f"titans embed --pool {pool} + LR"
            if embed is None:
                out.append([task, label, titans_status, "", ""] + [""] * n_extra)
                continue
            try:
                Xtr = embed(kind, train_items, pool, compute)
                Xev = embed(kind, eval_items, pool, compute)
                ytr, yev = np.asarray(y_train), np.asarray(y_eval)
                subset = ""
                keep_tr, keep_ev = np.isfinite(Xtr).all(1), np.isfinite(Xev).all(1)
                if not (keep_tr.all() and keep_ev.all()):
                    if staged is None or not staged.test_run:
                        raise titans_bridge.NotCached("some items have no embedding")
                    # a test run of the staged chain: probe the items it embedded, and say so
                    Xtr, ytr, Xev, yev = Xtr[keep_tr], ytr[keep_tr], Xev[keep_ev], yev[keep_ev]
                    subset = f" (TEST: {len(ytr)} train / {len(yev)} eval items)"
                model = fit_probe(Xtr, ytr)
                pred = model.predict(Xev)
                out.append([task, label + subset, *map(common.fmt, scores(yev, pred)),
                            f"C={model.best_params_['logisticregression__C']:g}",
                            *(extra(pred) if not subset else [""] * n_extra)])
            except titans_bridge.NotCached:
                why = ("full mode only" if staged is None else
                       staged.missing(f"embed:{stage_task}:"))
                out.append([task, label, why, "", ""] + [""] * n_extra)
            except Exception as exc:  # noqa: BLE001 - a failing titans run is reported, not hidden
                common.log(f"titans {task} pool={pool} failed: {exc}")
                out.append([task, label, f"failed: {str(exc)[:160]}", "", ""] + [""] * n_extra)
        return out

    # (a) phage clusters
    ph = phage_items()
    if args.quick:
        ph, quick_clusters = quick_phage_items(ph)
    y_tr = [c for _, _, c, _ in ph["train"]]
    y_ev = [c for _, _, c, _ in ph["eval"]]
    novel = np.array([c < 0.5 for *_, c in ph["eval"]])
    Xtr = np.stack([common.kmer_profile(s, KS) for _, s, _, _ in ph["train"]])
    Xev = np.stack([common.kmer_profile(s, KS) for _, s, _, _ in ph["eval"]])
    model = fit_probe(Xtr, y_tr)
    pred = model.predict(Xev)

    def phage_extra(pred, _y=np.asarray(y_ev), _m=novel):
        return list(map(common.fmt, scores(_y[_m], pred[_m])))
    rows = [["phage clusters", "k-mer (4-6) + LR", *map(common.fmt, scores(y_ev, pred)),
             f"C={model.best_params_['logisticregression__C']:g}", *phage_extra(pred)]]
    rows += titans_rows("phage clusters", "dna", [(i, s) for i, s, _, _ in ph["train"]],
                        [(i, s) for i, s, _, _ in ph["eval"]], y_tr, y_ev, phage_extra, 2,
                        stage_task="phage")
    n_clusters = len(set(y_tr) | set(y_ev))
    tables.append((f"**Mycobacteriophage clusters** ({len(y_tr)} train / {len(y_ev)} eval genomes, "
                   f"{n_clusters} clusters; {int(novel.sum())} eval genomes with "
                   f"kmer31_containment_in_train < 0.5):\n",
                   ["task", "method", "accuracy", "macro-F1", "chosen C",
                    f"accuracy, containment < 0.5 (n={int(novel.sum())})", "macro-F1, containment < 0.5"],
                   rows))
    common.log(f"phage clusters done at {timer.elapsed:.0f} s")

    # (b) domain of origin
    n_tr, n_ev = QUICK_DOMAIN_SAMPLE if args.quick else FULL_DOMAIN_SAMPLE
    dtrain, deval = domain_items(n_tr, n_ev)
    y_tr = [lab for *_, lab in dtrain]
    y_ev = [lab for *_, lab in deval]
    Xtr = np.stack([common.kmer_profile(s, KS) for _, s, _ in dtrain])
    Xev = np.stack([common.kmer_profile(s, KS) for _, s, _ in deval])
    model = fit_probe(Xtr, y_tr)
    pred = model.predict(Xev)
    per_class = {lab: np.array([y == lab for y in y_ev]) for lab in sorted(set(y_ev))}

    def domain_extra(pred):
        return [common.fmt(float((pred[m] == lab).mean())) for lab, m in per_class.items()]
    rows = [["domain of origin", "k-mer (4-6) + LR", *map(common.fmt, scores(y_ev, pred)),
             f"C={model.best_params_['logisticregression__C']:g}", *domain_extra(pred)]]
    rows += titans_rows("domain of origin", "dna", [(i, s) for i, s, _ in dtrain],
                        [(i, s) for i, s, _ in deval], y_tr, y_ev, domain_extra, len(per_class),
                        stage_task="domain")
    domain_errors = confusion_note(y_ev, pred)
    tables.append((f"**DNA domain of origin** ({DOMAIN_WINDOW // 1000} kb windows; {len(dtrain)} train "
                   f"windows ({n_tr} per collection), {len(deval)} eval windows ({n_ev} per class)); "
                   f"errors of the k-mer baseline: {domain_errors}:\n",
                   ["task", "method", "accuracy", "macro-F1", "chosen C"]
                   + [f"recall {lab}" for lab in per_class], rows))
    common.log(f"domain done at {timer.elapsed:.0f} s")

    # (c) Brown genres
    br = brown_items()
    if args.quick:
        br = quick_brown_items(br)
    y_tr = [g for *_, g in br["train"]]
    y_ev = [g for *_, g in br["test"]]
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    Xtr = vec.fit_transform([t for _, t, _ in br["train"]])
    Xev = vec.transform([t for _, t, _ in br["test"]])
    model = fit_probe(Xtr, y_tr, scale=False, Cs=(1.0, 10.0, 100.0))
    pred = model.predict(Xev)
    rows = [["Brown genres", "TF-IDF word 1-2 grams + LR", *map(common.fmt, scores(y_ev, pred)),
             f"C={model.best_params_['logisticregression__C']:g}"]]
    rows += titans_rows("Brown genres", "text", [(i, t) for i, t, _ in br["train"]],
                        [(i, t) for i, t, _ in br["test"]], y_tr, y_ev, lambda pred: [], 0,
                        stage_task="brown")
    tables.append((f"**Brown genres** ({len(y_tr)} train / {len(y_ev)} test documents, 15 genres; "
                   "the data README's 5-fold CV of all 500 gave accuracy 0.48, macro-F1 0.34):\n",
                   ["task", "method", "accuracy", "macro-F1", "chosen C"], rows))
    common.log(f"brown done at {timer.elapsed:.0f} s")

    body = [METHOD, ""]
    for caption, headers, rows in tables:
        body += [caption, common.md_table(headers, rows, "ll" + "r" * (len(headers) - 2)), ""]
    if staged is not None:
        body.append(staged.describe("The titans embeddings") + "\n")
    if args.quick:
        body.append(
            "**Quick mode (smoke run, subsample)**: every row, titans included, on the same small "
            f"subsample. Phage clusters: the {QUICK_PHAGE_CLUSTERS} clusters with the most train genomes "
            f"({', '.join(quick_clusters)}), {QUICK_PHAGE_TRAIN} evenly spaced train genomes each and the "
            "eval genomes of each with the lowest and highest 31-mer containment in train, every genome "
            f"cut to its first {QUICK_PHAGE_BASES:,} bases (full mode: all 502 / 124 whole genomes with a cluster). "
            f"Domain: {QUICK_DOMAIN_SAMPLE[0]} train windows per collection and {QUICK_DOMAIN_SAMPLE[1]} eval "
            f"windows per class (full mode: {FULL_DOMAIN_SAMPLE[0]:,} and {FULL_DOMAIN_SAMPLE[1]:,}). Brown: "
            f"the first {QUICK_BROWN_TRAIN} train and {QUICK_BROWN_TEST} test documents of each genre, cut "
            f"to their first {QUICK_BROWN_CHARS:,} characters (full mode: 400 / 100 whole documents). With "
            "so few items the numbers say that every row runs, not how the methods compare.")
    path = common.write_section(NAME, "Classification: k-mer / TF-IDF baselines vs titans embeddings",
                                "\n".join(body), args.quick, timer.elapsed)
    common.log(f"wrote {path} in {timer.elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
