"""`titans embed`, `summarize`, `classify`, `heads train/eval` end to end with tiny models."""

from __future__ import annotations

import json

import numpy as np
from test_cli_fixtures import (  # noqa: F401 (fixtures)
    SAMPLE,
    TEXT,
    lambda_sequence,
    run_in_process,
    small_fasta,
    tiny_models,
    titans_env,
    write_fasta,
)


def test_embed_window_counts_and_npz_contents(titans_env, small_fasta, tmp_path, capsys):
    out = tmp_path / "e.npz"
    result = run_in_process(["embed", small_fasta, SAMPLE / "lambda_reads_1.fq", "--per", "window", "--window", "400",
                             "--step", "300", "-o", out, "-q"], capsys)
    assert result.code == 0, result.stderr
    data = np.load(out)
    reads = [line.strip() for i, line in enumerate((SAMPLE / "lambda_reads_1.fq").read_text().splitlines()) if i % 4 == 1]
    # bedtools makewindows convention: starts 0, step, 2*step, ... while start < length
    expected = -(-1500 // 300) + -(-900 // 300) + sum(-(-len(r) // 300) for r in reads)
    assert data["embeddings"].shape[0] == expected == len(data["ids"]) == len(data["starts"]) == len(data["ends"])
    a = data["ids"] == "chrA"
    assert list(data["starts"][a]) == [0, 300, 600, 900, 1200]
    assert list(data["ends"][a]) == [400, 700, 1000, 1300, 1500]
    assert np.isfinite(data["embeddings"]).all()


def test_embed_records_tsv_to_stdout_is_deterministic(titans_env, small_fasta, capsys):
    first = run_in_process(["embed", small_fasta, "-q"], capsys)
    second = run_in_process(["embed", small_fasta, "-q"], capsys)
    assert first.code == second.code == 0
    assert first.stdout == second.stdout
    header, *rows = [line.split("\t") for line in first.stdout.splitlines()]
    assert header[:3] == ["id", "start", "end"] and len(rows) == 2
    assert [r[:3] for r in rows] == [["chrA", "0", "1500"], ["chrB", "0", "900"]]
    assert len(header) == 3 + 32, "mean pool has the model's hidden size"


def test_memory_pool_has_fixed_size_whatever_the_length(titans_env, tmp_path, capsys):
    sequence = lambda_sequence()
    fasta = write_fasta(tmp_path / "lengths.fa", [("short", sequence[:100]), ("long", sequence[:5000])])
    out = tmp_path / "m.npy"
    result = run_in_process(["embed", fasta, "--pool", "memory", "-o", out, "-q"], capsys)
    assert result.code == 0, result.stderr
    matrix = np.load(out)
    assert matrix.shape[0] == 2 and matrix.shape[1] > 0
    assert np.linalg.norm(matrix[1] - matrix[0]) > 1e-6, "different records leave different memories"


def test_embed_window_is_independent_of_its_neighbours(titans_env, tmp_path, capsys):
    """A window is read on its own: the same 300 bases give the same vector wherever they sit."""
    sequence = lambda_sequence()
    fasta = write_fasta(tmp_path / "w.fa", [("a", sequence[:600]), ("b", sequence[9000:9300] + sequence[300:600])])
    result = run_in_process(["embed", fasta, "--per", "window", "--window", "300", "-q"], capsys)
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:]]
    vectors = {(r[0], r[1]): np.array(r[3:], dtype=float) for r in rows}
    assert np.allclose(vectors[("a", "300")], vectors[("b", "300")], atol=1e-5)


def test_summary_sentences_are_verbatim_and_in_order(titans_env, tmp_path, capsys):
    document = tmp_path / "story.txt"
    document.write_text(TEXT, encoding="utf-8")
    result = run_in_process(["summarize", document, "--sentences", "4", "--format", "json", "-q"], capsys)
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    picked = summary["sentences"]
    assert len(picked) == 4 and summary["n_sentences"] >= 15
    offsets = [s["offset"] for s in picked]
    assert offsets == sorted(offsets), "document order"
    for s in picked:
        assert TEXT[s["offset"] : s["offset"] + s["length"]] == s["sentence"], "verbatim"
    text_run = run_in_process(["summarize", document, "--sentences", "4", "-q"], capsys)
    assert text_run.stdout.splitlines() == [" ".join(s["sentence"].split()) for s in picked]
    ratio_run = run_in_process(["summarize", document, "--ratio", "0.2", "--format", "json", "-q"], capsys)
    assert len(json.loads(ratio_run.stdout)["sentences"]) == round(0.2 * summary["n_sentences"])


def test_heads_train_classify_and_eval(titans_env, tmp_path, capsys):
    sequence = lambda_sequence()
    rng = np.random.default_rng(1)
    at_rich = "".join(rng.choice(list("AATTTAGC"), size=3000))
    data = write_fasta(tmp_path / "train.fa", [("lambda", sequence[:3000]), ("atrich", at_rich)])
    labels = tmp_path / "labels.tsv"
    labels.write_text("path_or_record\tlabel\ntrain.fa#lambda\tphage\ntrain.fa#atrich\tother\n")
    head = tmp_path / "head"
    trained = run_in_process(["heads", "train", labels, "-o", head, "--per", "window", "--window", "200", "-q"], capsys)
    assert trained.code == 0, trained.stderr
    assert "held-out: accuracy" in trained.stdout
    held_out = float(trained.stdout.split("held-out: accuracy ")[1].split()[0])
    assert held_out >= 0.75, f"composition this different is easy even for a random model: {trained.stdout}"
    assert {p.name for p in head.iterdir()} == {"head.safetensors", "head.json", "README.md"}
    assert "titans heads train" in (head / "README.md").read_text()

    query = write_fasta(tmp_path / "query.fa", [("q", sequence[5000:5600])])
    result = run_in_process(["classify", query, "--head", head, "-q"], capsys)
    assert result.code == 0, result.stderr
    header, *rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert header == ["id", "start", "end", "label", "p_other", "p_phage"]
    assert [(r[0], r[1], r[2]) for r in rows] == [("q", "0", "200"), ("q", "200", "400"), ("q", "400", "600")]
    for r in rows:
        probabilities = [float(x) for x in r[4:]]
        assert abs(sum(probabilities) - 1) < 1e-4, r
        assert r[3] == ["other", "phage"][int(np.argmax(probabilities))]
    evaluated = run_in_process(["heads", "eval", head, labels, "-q"], capsys)
    assert evaluated.code == 0 and evaluated.stdout.startswith("eval: accuracy")
