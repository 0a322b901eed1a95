"""torchrun sharding: 2 CPU processes (gloo) give the same embed and surprise outputs, in the same
order, as one process (values to float tolerance: lanes are batched differently per rank)."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
from test_cli_fixtures import REPO, SAMPLE, lambda_sequence, run_subprocess, subprocess_env, tiny_models, write_fasta  # noqa: F401


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], models) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "titans_cli", *map(str, args)]
    return subprocess.run(command, env=subprocess_env(models), cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture
def many_records(tmp_path):
    """Records of very different lengths, so the length balancing has something to balance."""
    sequence = lambda_sequence()
    records = [(f"rec{i}", sequence[i * 1000 : i * 1000 + length]) for i, length in enumerate([1500, 300, 700, 90, 40])]
    return write_fasta(tmp_path / "many.fa", records)


def test_sharded_embed_equals_single_process(tiny_models, many_records, tmp_path):
    single, sharded = tmp_path / "single.npz", tmp_path / "sharded.npz"
    one = run_subprocess(["embed", many_records, SAMPLE / "lambda_reads_1.fq", "--device", "cpu", "-o", single, "-q"], tiny_models)
    two = torchrun(["embed", many_records, SAMPLE / "lambda_reads_1.fq", "--device", "cpu", "-o", sharded, "-q"], tiny_models)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = np.load(single), np.load(sharded)
    assert list(a["ids"]) == list(b["ids"]), "input order is kept"
    assert (a["starts"] == b["starts"]).all() and (a["ends"] == b["ends"]).all()
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=1e-4, atol=1e-5)


def test_sharded_surprise_equals_single_process(tiny_models, many_records, tmp_path):
    single, sharded = tmp_path / "single.tsv", tmp_path / "sharded.tsv"
    one = run_subprocess(["surprise", many_records, "--format", "tsv", "--window", "100", "--device", "cpu", "-o", single], tiny_models)
    two = torchrun(["surprise", many_records, "--format", "tsv", "--window", "100", "--device", "cpu", "-o", sharded], tiny_models)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    rows_one = [line.split("\t") for line in single.read_text().splitlines()]
    rows_two = [line.split("\t") for line in sharded.read_text().splitlines()]
    assert [r[:3] for r in rows_one] == [r[:3] for r in rows_two], "same windows in the same order"
    values_one = np.array([float(r[3]) for r in rows_one[1:]])
    values_two = np.array([float(r[3]) for r in rows_two[1:]])
    np.testing.assert_allclose(values_one, values_two, rtol=1e-4)
    # the per-record summary lines (rank 0 prints all of them)
    summary = lambda text: sorted(line.split("\t")[0] for line in text.splitlines() if "bits/base" in line)  # noqa: E731
    assert summary(one.stderr) == summary(two.stderr) and len(summary(one.stderr)) == 5
