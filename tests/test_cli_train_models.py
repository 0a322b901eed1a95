"""`titans train` (the wrapper of tasks/train.py) and `titans models` with heads."""

from __future__ import annotations

import torch

from test_cli_fixtures import lambda_sequence, run_in_process, tiny_models, titans_env, write_fasta  # noqa: F401


def test_train_fine_tunes_into_a_loadable_model(titans_env, tmp_path, capsys, monkeypatch):
    corpus = write_fasta(tmp_path / "corpus.fa", [("a", lambda_sequence()[:3000]), ("b", lambda_sequence()[5000:8000])])
    run = tmp_path / "run"
    result = run_in_process(["train", corpus, "--init-from", "dna", "-o", run, "--steps", "2", "--batch-size", "2",
                             "--crop-len", "128", "--device", "cpu"], capsys)
    assert result.code == 0, result.stderr
    assert (run / "model" / "config.json").is_file() and (run / "checkpoint").is_dir()
    assert "titans train" in (run / "model" / "README.md").read_text(), "the card records the command"
    # the new model directory works with every command
    surprise = run_in_process(["surprise", corpus, "--model", run / "model", "--window", "1000", "-q"], capsys)
    assert surprise.code == 0, surprise.stderr
    assert len(surprise.stdout.splitlines()) == 1 + 6


def test_train_needs_a_preset_or_a_model(titans_env, tmp_path, capsys):
    corpus = write_fasta(tmp_path / "corpus.fa", [("a", "ACGT" * 100)])
    result = run_in_process(["train", corpus, "-o", tmp_path / "run", "--steps", "1"], capsys)
    assert result.code == 2 and "--preset" in result.stderr


def test_models_lists_models_and_heads(titans_env, tmp_path, capsys, monkeypatch):
    labels = tmp_path / "labels.tsv"
    sequence = lambda_sequence()
    write_fasta(tmp_path / "x.fa", [("p", sequence[:800]), ("q", sequence[10000:10800])])
    labels.write_text("x.fa#p\tone\nx.fa#q\ttwo\nx.fa#p\tone\ttest\nx.fa#q\ttwo\ttest\n")
    heads_dir = titans_env / "heads"
    trained = run_in_process(["heads", "train", labels, "-o", heads_dir / "tiny", "-q"], capsys)
    assert trained.code == 0, trained.stderr
    listing = run_in_process(["models"], capsys)
    assert listing.code == 0
    text = listing.stdout
    assert "dna" in text and "Tiny random DNA model" in text and "text" in text
    dna_line = next(line for line in text.splitlines() if line.split()[:1] == ["dna"])
    assert "dna: " in dna_line and " x MAG, d " in dna_line and " MB" in dna_line, dna_line
    assert "tiny" in text.split("HEADS")[1] and "2 classes" in text


def test_train_options_reach_the_run_and_its_card(titans_env, tmp_path, capsys):
    corpus = write_fasta(tmp_path / "corpus.fa", [("a", lambda_sequence()[:4000]), ("b", lambda_sequence()[6000:9000])])
    run = tmp_path / "run"
    result = run_in_process(["train", corpus, "--preset", "dna-small", "-o", run, "--steps", "2", "--batch-size", "2",
                             "--crop-len", "128", "--bptt-len", "64", "--warmup-steps", "1", "--eval-every", "1",
                             "--val-crops", "2", "--weight-decay", "0.05", "--memory-backend", "torch",
                             "--save-dtype", "bfloat16", "--device", "cpu"], capsys)
    assert result.code == 0, result.stderr
    card = (run / "model" / "README.md").read_text()
    assert "truncated backpropagation every 64 tokens" in card and "memory backend torch" in card
    assert "weight decay 0.05" in card and "warmup 1 steps" in card
    assert "weights stored as bfloat16" in card
    from safetensors import safe_open

    with safe_open(str(run / "model" / "model.safetensors"), "pt") as weights:
        assert weights.get_tensor("embed.weight").dtype == torch.bfloat16
    reloaded = run_in_process(["surprise", corpus, "--model", run / "model", "-o", tmp_path / "s.bedgraph", "--device", "cpu"], capsys)
    assert reloaded.code == 0, reloaded.stderr


def test_train_rejects_an_unknown_memory_backend(titans_env, tmp_path, capsys):
    corpus = write_fasta(tmp_path / "corpus.fa", [("a", "ACGT" * 100)])
    result = run_in_process(["train", corpus, "--preset", "dna-small", "-o", tmp_path / "run", "--steps", "1",
                             "--memory-backend", "numba"], capsys)
    assert result.code == 2 and "memory backend" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_train_reuses_a_given_tokenizer(titans_env, tmp_path, capsys):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "models" / "text" / "tokenizer.json"
    book, other = tmp_path / "book.txt", tmp_path / "other.txt"
    book.write_text("It was the best of times, it was the worst of times. " * 40)
    other.write_text("Call me Ishmael. Some years ago, never mind how long precisely. " * 40)
    run = tmp_path / "run"
    result = run_in_process(["train", book, other, "--preset", "text-small", "--tokenizer", shipped, "-o", run,
                             "--steps", "1", "--batch-size", "1", "--crop-len", "64", "--bptt-len", "64",
                             "--val-crops", "1", "--device", "cpu"], capsys)
    assert result.code == 0, result.stderr
    assert (run / "model" / "tokenizer.json").read_bytes() == shipped.read_bytes(), "no new BPE was trained"
    refused = run_in_process(["train", book, "--preset", "dna-small", "--tokenizer", shipped, "-o", tmp_path / "r2",
                              "--steps", "1"], capsys)
    assert refused.code == 2 and "text presets" in refused.stderr
    missing = run_in_process(["train", book, "--preset", "text-small", "--tokenizer", tmp_path / "none.json", "-o",
                              tmp_path / "r3", "--steps", "1"], capsys)
    assert missing.code == 2 and "none.json: no such file" in missing.stderr


def test_default_text_model_prefers_text_base_within_a_folder(tmp_path, monkeypatch):
    from titans_cli.cli.common import default_model

    monkeypatch.setenv("TITANS_MODELS", str(tmp_path / "nothing-here"))
    assert default_model("text") == "text-base", "the shipped folder has both: the larger model leads"
    assert default_model("sequence") == "dna"
    own = tmp_path / "own"
    (own / "text").mkdir(parents=True)
    (own / "text" / "config.json").write_text("{}")
    monkeypatch.setenv("TITANS_MODELS", str(own))
    assert default_model("text") == "text", "a model of one's own in $TITANS_MODELS wins over the shipped ones"
