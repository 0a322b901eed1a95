"""Shared helpers for the CLI/task tests: tiny random models (the plumbing needs weights, not
skill), small inputs, and two ways to run `titans` (in-process and as a subprocess)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"

TEXT = """CHAPTER I. The Voyage

It was a bright cold day in April, and the clocks were striking thirteen. Mr. Smith walked
along the harbour, where the ships lay at anchor and the gulls cried over the water.

"Where are you going?" asked the captain. "To the island," said Mr. Smith, "and then home."
The captain laughed. He had heard that answer many times before, from many travellers.

The island was small and green. Its people grew barley and kept sheep on the hills; every
spring they sheared the sheep and sold the wool on the mainland. Nobody there had ever seen
a clock strike thirteen, and nobody wanted to.

CHAPTER II. The Island

On the second day the wind turned. The ship rolled and pitched, and the passengers stayed
below. Mr. Smith wrote letters to his sister, who lived in the city and worried about him.
When the storm was over, the island rose out of the sea like the back of a whale.
"""


def tiny_config(kind: str, vocab_size: int | None = None):
    from titans_cli.memory import MemoryConfig
    from titans_cli.model import preset

    memory = MemoryConfig(num_heads=2, head_dim=8, depth=2, expansion=2, chunk_size=16)
    if kind == "dna":
        return preset("dna-small", d_model=32, n_layers=1, n_heads=2, window=16, memory=memory)
    return preset("text-small", vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, window=16, memory=memory)


def build_tiny_models(root: Path) -> Path:
    """`root/dna` and `root/text`: random tiny models saved with the model package's own writer."""
    import torch

    from titans_cli.model import DNATokenizer, TitansLM, save_model_dir, train_bpe

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = tiny_config("dna")
    save_model_dir(TitansLM(config), config, DNATokenizer(), root / "dna", card_text="# dna\n\nTiny random DNA model (tests).\n")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 3, encoding="utf-8")
    tokenizer = train_bpe([corpus], vocab_size=300)
    config = tiny_config("text", tokenizer.vocab_size)
    save_model_dir(TitansLM(config), config, tokenizer, root / "text", card_text="# text\n\nTiny random text model (tests).\n")
    return root


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def titans_env(tiny_models, monkeypatch):
    """In-process runs see the tiny models as `dna` and `text`."""
    monkeypatch.setenv("TITANS_MODELS", str(tiny_models))
    if not os.environ.get("TITANS_TEST_DEBUG"):
        monkeypatch.delenv("TITANS_DEBUG", raising=False)
    return tiny_models


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60, newline: str = "\n") -> Path:
    lines = []
    for name, sequence in records:
        lines.append(f">{name}")
        lines.extend(sequence[i : i + width] for i in range(0, len(sequence), width))
    path.write_text(newline.join(lines) + newline, encoding="ascii", newline="")
    return path


def lambda_sequence() -> str:
    lines = (SAMPLE / "lambda_phage.fa").read_text().splitlines()
    return "".join(line.strip() for line in lines[1:])


@pytest.fixture
def small_fasta(tmp_path) -> Path:
    """Two records cut from lambda: 1,500 and 900 bases."""
    sequence = lambda_sequence()
    return write_fasta(tmp_path / "small.fa", [("chrA", sequence[:1500]), ("chrB extra words", sequence[20000:20900])])


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_in_process(args: list[str], capsys, stdin: bytes | None = None, monkeypatch=None) -> Result:
    """Run `titans ARGS` inside this process (fast: torch is already imported)."""
    from titans_cli.cli.app import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    code = exit_info.value.code
    return Result(code if isinstance(code, int) else 0, captured.out, captured.err)


def subprocess_env(models: Path) -> dict:
    env = dict(os.environ)
    env["TITANS_MODELS"] = str(models)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TITANS_DEBUG", None)
    return env


def run_subprocess(args: list[str], models: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "titans_cli", *map(str, args)], env=subprocess_env(models),
                          capture_output=True, text=True, cwd=REPO, **kwargs)


def read_bedgraph(path_or_text) -> list[tuple[str, int, int, float]]:
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    rows = []
    for line in text.splitlines():
        if line.startswith(("track", "browser", "#")):
            continue
        chrom, start, end, value = line.split("\t")
        rows.append((chrom, int(start), int(end), float(value)))
    return rows


def test_tiny_models_load(tiny_models):
    """The fixture itself: both tiny models load through the model package's verified loader."""
    from titans_cli.model import load_model

    assert load_model(tiny_models / "dna").config.tokenizer == "dna"
    assert load_model(tiny_models / "text").config.tokenizer == "bpe"
