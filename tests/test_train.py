"""Training: crops and validation split, loss goes down, exact resume, and DDP under torchrun (gloo)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from titans_cli.memory.config import MemoryConfig
from titans_cli.model.config import preset
from titans_cli.model.tokenizers import DNATokenizer
from titans_cli.tasks.corpus import IGNORE_INDEX, crop_batch, load_corpus, split_validation, step_rng, targets_from
from titans_cli.tasks.train import train

REPO = Path(__file__).resolve().parents[1]
TINY = preset(
    "dna-small",
    d_model=32,
    n_layers=1,
    n_heads=2,
    window=32,
    n_persistent=2,
    memory=MemoryConfig(num_heads=2, head_dim=16, depth=2, expansion=2, chunk_size=16),
)
TINY_OPTIONS = dict(batch_size=4, crop_len=64, lr=1e-2, warmup_steps=2, val_crops=4, log_every=1, eval_every=1000,
                    checkpoint_minutes=None, val_fraction=0.1)


def learnable_dna(rng: np.random.Generator, length: int) -> str:
    """A sequence with structure a small model picks up in a few steps: a Markov chain that
    follows a fixed successor table 90% of the time (about 0.6 bits/base at best, 2 at random)."""
    successor = rng.permutation(4)
    seq = np.empty(length, dtype=np.int64)
    seq[0] = rng.integers(0, 4)
    noise = rng.random(length) < 0.1
    random_bases = rng.integers(0, 4, size=length)
    for i in range(1, length):
        seq[i] = random_bases[i] if noise[i] else successor[seq[i - 1]]
    return "".join("ACGT"[b] for b in seq)


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "generated.fa.gz"
    rng = np.random.default_rng(11)
    with gzip.open(path, "wt") as handle:
        for index in range(10):
            sequence = learnable_dna(rng, 3000 if index % 3 else 700)
            handle.write(f">rec{index} generated\n")
            for start in range(0, len(sequence), 80):
                handle.write(sequence[start : start + 80] + "\n")
    return path


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


# -----------------------------------------------------------------------------
# Corpus


def test_crops_start_with_bos_and_ignore_record_boundaries(fasta):
    corpus = load_corpus([fasta], DNATokenizer())
    assert corpus.n_records == 10 and corpus.tokens.dtype == np.uint8
    assert (corpus.tokens[corpus.record_starts] == DNATokenizer.bos_id).all(), "every record must open with BOS"
    batch = crop_batch(corpus, 64, 1000, step_rng(0, 0, 0))
    assert batch.shape == (64, 1001) and (batch[:, 0] == DNATokenizer.bos_id).all()
    again = crop_batch(corpus, 64, 1000, step_rng(0, 0, 0))
    other_rank = crop_batch(corpus, 64, 1000, step_rng(0, 1, 0))
    assert np.array_equal(batch, again), "crops of one (seed, rank, step) must be reproducible"
    assert not np.array_equal(batch, other_rank), "ranks must read different crops"
    inputs, targets = targets_from(torch.from_numpy(batch), DNATokenizer.bos_id)
    assert inputs.shape == targets.shape == (64, 1000)
    assert not (targets == DNATokenizer.bos_id).any() and (targets == IGNORE_INDEX).any(), (
        "record boundaries inside crops (700-base records, 1000-base crops) must be masked out of the loss"
    )


def test_validation_split_is_disjoint_and_deterministic(fasta):
    corpus = load_corpus([fasta], DNATokenizer())
    train_a, val_a = split_validation(corpus, 0.2, seed=3)
    train_b, val_b = split_validation(corpus, 0.2, seed=3)
    assert np.array_equal(val_a.tokens, val_b.tokens)
    # 10 records in one file: whole records are held out
    assert set(train_a.record_names).isdisjoint(val_a.record_names)
    assert train_a.n_records + val_a.n_records == corpus.n_records
    assert len(train_a) + len(val_a) == len(corpus)
    # a file of few records (chromosomes) loses the tail of its last record instead
    few = load_corpus([fasta], DNATokenizer(), max_tokens_per_file=3000)
    assert few.n_records == 2  # 700 + the first 2300 of the next record
    train_few, val_few = split_validation(few, 0.1)
    assert len(val_few) - 1 == 300 and train_few.n_records == 2 and val_few.n_records == 1
    assert np.array_equal(np.concatenate([train_few.tokens, val_few.tokens[1:]]), few.tokens)


# -----------------------------------------------------------------------------
# Training


def test_few_steps_reduce_loss_and_write_a_loadable_model(fasta, tmp_path):
    from titans_cli.model.files import load_model_dir

    result = train(TINY, [fasta], tmp_path, device="cpu", max_steps=25, **{**TINY_OPTIONS, "eval_every": 25},
                   command="pytest")
    losses = [m["loss_bits"] for m in read_metrics(tmp_path) if "loss_bits" in m]
    assert len(losses) == 25
    first, last = np.mean(losses[:3]), np.mean(losses[-5:])
    assert last < first - 0.5, f"training loss should fall well within 25 steps: {first:.3f} -> {last:.3f} bits"
    assert result.val_bits_per_token < 1.6, f"held-out bits/token {result.val_bits_per_token:.3f} (random: 2.0)"
    loaded = load_model_dir(result.model_dir)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor.cpu()), f"saved weights differ at {name}"
    card = (result.model_dir / "README.md").read_text()
    assert "tokens seen: 6,400" in card and "pytest" in card


def test_resume_gives_the_same_next_losses(fasta, tmp_path):
    whole = tmp_path / "whole"
    train(TINY, [fasta], whole, device="cpu", max_steps=6, **TINY_OPTIONS)
    parts = tmp_path / "parts"
    first = train(TINY, [fasta], parts, device="cpu", max_steps=6, stop_after_steps=3, **TINY_OPTIONS)
    assert not first.finished and first.steps == 3
    assert json.loads((parts / "checkpoint" / "state.json").read_text())["step"] == 3
    second = train(None, [fasta], parts, device="cpu", max_steps=6, **TINY_OPTIONS)
    assert second.finished and second.steps == 6
    expected = {m["step"]: m["loss_bits"] for m in read_metrics(whole) if "loss_bits" in m}
    resumed = {m["step"]: m["loss_bits"] for m in read_metrics(parts) if "loss_bits" in m}
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), (
            f"step {step}: loss {resumed[step]} after resume, {expected[step]} without interruption"
        )
    from safetensors.torch import load_file

    uninterrupted = load_file(str(whole / "model" / "model.safetensors"))
    for name, tensor in second.model.state_dict().items():
        assert torch.allclose(tensor, uninterrupted[name], atol=1e-6), f"weights differ after resume at {name}"


def test_budget_is_required(fasta, tmp_path):
    from titans_cli.errors import TitansInputError

    with pytest.raises(TitansInputError, match="budget"):
        train(TINY, [fasta], tmp_path, device="cpu")


# -----------------------------------------------------------------------------
# torchrun: 2 ranks, gloo


def gloo_threads() -> list[str]:
    """Names of this process's gloo threads still running (Linux; empty where /proc is missing)."""
    tasks = Path("/proc/self/task")
    names = []
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended while we looked
            continue
        if "gloo" in name:
            names.append(name)
    return names


RANK_SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys
    import numpy as np, torch
    sys.path.insert(0, {repo!r})
    from tests.test_train import TINY, TINY_OPTIONS, gloo_threads
    from titans_cli.tasks.train import train

    # bptt_len < crop_len: several pieces per crop, so the initial memory weights get their
    # gradients only under no_sync, the case that must still end with equal weights.
    result = train(TINY, [{fasta!r}], {out!r}, device="cpu", max_steps=3, bptt_len=32, **TINY_OPTIONS)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    with open(os.path.join({out!r}, "rank%s.sha256" % os.environ["RANK"]), "w") as handle:
        handle.write(digest.hexdigest())
    # train() destroyed the process group it made: no gloo thread may outlive it into the
    # interpreter's shutdown (titans_cli/distributed.py).
    with open(os.path.join({out!r}, "rank%s.threads" % os.environ["RANK"]), "w") as handle:
        handle.write(" ".join(gloo_threads()))
    """
)


def test_torchrun_two_ranks_end_with_equal_weights(fasta, tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(repo=str(REPO), fasta=str(fasta), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert completed.returncode == 0, f"torchrun failed:\n{completed.stderr[-3000:]}"
    hashes = [(out / f"rank{rank}.sha256").read_text() for rank in (0, 1)]
    assert hashes[0] == hashes[1], "DDP ranks ended with different weights"
    for rank in (0, 1):
        left = (out / f"rank{rank}.threads").read_text()
        assert left == "", f"rank {rank}: gloo threads still running after train() returned: {left}"
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["world_size"] == 2
    assert state["tokens_seen"] == 3 * 2 * TINY_OPTIONS["batch_size"] * TINY_OPTIONS["crop_len"]
    # The same checkpoint resumes in one process (a different world size).
    result = train(None, [fasta], out, device="cpu", max_steps=4, **TINY_OPTIONS)
    assert result.steps == 4 and result.finished


def test_truncated_backprop_keeps_the_forward_pass_exact():
    """Pieces of 32 tokens carry the streaming state: the loss equals the whole-crop forward's, and
    with one piece the gradients equal plain backpropagation exactly."""
    import torch.nn.functional as F

    from titans_cli.model.lm import TitansLM
    from titans_cli.tasks.train import _forward_backward, _PieceLoss

    torch.manual_seed(0)
    model = TitansLM(TINY)
    batch = torch.randint(3, 8, (3, 129))
    batch[:, 0] = DNATokenizer.bos_id
    inputs, targets = batch[:, :-1], batch[:, 1:]
    whole = F.cross_entropy(model(inputs).reshape(-1, 8), targets.reshape(-1))
    model.zero_grad()
    whole.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    one_piece = _forward_backward(_PieceLoss(model, None), inputs, targets, None)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[name], atol=1e-6), f"single-piece gradient differs at {name}"
    model.zero_grad()
    pieces = _forward_backward(_PieceLoss(model, None), inputs, targets, 32)
    assert float(pieces) == pytest.approx(whole.item(), abs=1e-5), "piecewise forward must equal the whole pass"
    assert float(one_piece) == pytest.approx(whole.item(), abs=1e-5)
