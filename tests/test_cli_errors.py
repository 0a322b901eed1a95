"""Bad input and bad usage: exit code 2, one line `titans: error: ...` naming the problem, no
traceback, no output file. Internal errors: exit 1, one line, traceback only under --debug."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from test_cli_fixtures import lambda_sequence, run_in_process, tiny_models, titans_env, write_fasta  # noqa: F401

GOOD = "ACGT" * 50


def make_inputs(d: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = d / "empty.fa"
    files["empty"].write_bytes(b"")
    files["header_only"] = d / "header_only.fa"
    files["header_only"].write_text(">lonely\n")
    files["no_header"] = d / "no_header.fa"
    files["no_header"].write_text("ACGTACGT\n>r\nACGT\n")
    files["digits"] = d / "digits.fa"
    files["digits"].write_text(f">r\n{GOOD}\nACG7T\n")
    files["truncated_gz"] = d / "truncated.fa.gz"
    whole = gzip.compress(f">r\n{lambda_sequence()[:20000]}\n".encode())
    files["truncated_gz"].write_bytes(whole[: len(whole) // 2])
    files["png"] = d / "picture.fa"
    files["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    files["fastq_quality"] = d / "bad.fq"
    files["fastq_quality"].write_text("@r1\nACGTACGT\n+\nIIII\n")
    files["latin1_text"] = d / "latin1.txt"
    files["latin1_text"].write_bytes("Caf\xe9 au lait. Tr\xe8s bien.\n".encode("latin-1"))
    files["good"] = write_fasta(d / "good.fa", [("chr1", lambda_sequence()[:400])])
    files["text"] = d / "doc.txt"
    files["text"].write_text("One sentence here. Another one there.\n")
    return files


# (case name, arguments with {placeholders}, words the message must contain)
CASES = [
    ("empty file", ["surprise", "{empty}"], ["empty"]),
    ("header with no sequence", ["surprise", "{header_only}"], ["lonely"]),
    ("sequence before any header", ["surprise", "{no_header}"], ["no_header.fa"]),
    ("digit in sequence", ["surprise", "{digits}"], ["digits.fa", "'7'"]),
    ("truncated gzip", ["surprise", "{truncated_gz}"], ["truncated"]),
    ("PNG given as FASTA", ["surprise", "{png}"], ["PNG"]),
    ("FASTQ quality length", ["surprise", "{fastq_quality}"], ["bad.fq", "quality"]),
    ("non-UTF-8 text", ["summarize", "{latin1_text}"], ["latin1.txt", "byte offset"]),
    ("missing file", ["surprise", "{dir}/nope.fa"], ["nope.fa"]),
    ("directory", ["surprise", "{dir}"], ["directory"]),
    ("region outside record", ["surprise", "{good}", "--region", "chr1:300-900"], ["chr1"]),
    ("region of absent record", ["surprise", "{good}", "--region", "chrZ:1-10"], ["chrZ"]),
    ("window 0", ["surprise", "{good}", "--window", "0"], ["--window"]),
    ("negative window", ["surprise", "{good}", "--window", "-5"], ["--window"]),
    ("unknown format", ["surprise", "{good}", "--format", "bam"], ["--format", "bam"]),
    ("unknown metric", ["surprise", "{good}", "--metric", "entropy"], ["--metric"]),
    ("plot extension", ["surprise", "{good}", "--plot", "{dir}/x.pdf"], [".png"]),
    ("unknown model", ["surprise", "{good}", "--model", "nosuchmodel"], ["nosuchmodel"]),
    ("text model on DNA", ["surprise", "{good}", "--model", "text"], ["text"]),
    ("unknown device", ["surprise", "{good}", "--device", "tpu"], ["--device"]),
    ("embed step 0", ["embed", "{good}", "--per", "window", "--window", "100", "--step", "0"], ["--step"]),
    ("embed extension", ["embed", "{good}", "-o", "{dir}/out.parquet"], ["parquet"]),
    ("summarize DNA", ["summarize", "{good}"], ["text"]),
    ("summarize ratio", ["summarize", "{text}", "--ratio", "1.5"], ["--ratio"]),
    ("unknown head", ["classify", "{good}", "--head", "nosuchhead"], ["nosuchhead"]),
    ("output in missing directory", ["surprise", "{good}", "-o", "{dir}/missing/out.bg"], ["does not exist"]),
]


@pytest.mark.parametrize("name,args,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(titans_env, tmp_path, capsys, name, args, words):
    files = make_inputs(tmp_path)
    before = set(tmp_path.rglob("*"))
    filled = [a.format(dir=tmp_path, **files) for a in args] + ["-o" if "-o" not in args else "", ""]
    filled = [a for a in filled if a]
    if "-o" not in args:
        filled += [str(tmp_path / "result.out")] if filled[-1] == "-o" else []
    result = run_in_process(filled, capsys)
    assert result.code == 2, f"{name}: exit {result.code}, stderr: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{name}: expected one line, got: {result.stderr}"
    assert lines[0].startswith("titans: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], f"{name}: {word!r} missing from: {lines[0]}"
    # an index beside an indexable FASTA is what samtools faidx would leave too
    after = {path for path in tmp_path.rglob("*") if path.suffix not in (".fai", ".gzi")}
    assert after == before, f"{name}: files were created: {sorted(map(str, after - before))}"


def test_usage_error_is_exit_2(titans_env, capsys):
    result = run_in_process(["surprise", "--no-such-option", "x.fa"], capsys)
    assert result.code == 2
    assert "Traceback" not in result.stderr and "no-such-option" in result.stderr


def test_corrupted_model_is_exit_2(titans_env, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(titans_env / "dna", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    fasta = write_fasta(tmp_path / "a.fa", [("a", "ACGT" * 20)])
    result = run_in_process(["surprise", fasta, "--model", broken], capsys)
    assert result.code == 2 and "sha256" in result.stderr and "Traceback" not in result.stderr


def test_internal_error_is_exit_1_and_traceback_only_with_debug(titans_env, tmp_path, capsys, monkeypatch):
    import titans_cli.stream as stream

    def broken_run(self, records, make_reducer):
        raise RuntimeError("simulated engine failure")
        yield  # pragma: no cover

    monkeypatch.setattr(stream.StreamEngine, "run", broken_run)
    fasta = write_fasta(tmp_path / "a.fa", [("a", "ACGT" * 20)])
    quiet = run_in_process(["surprise", fasta, "-o", tmp_path / "o.bg"], capsys)
    assert quiet.code == 1
    assert quiet.stderr.strip().splitlines() == ["titans: error: internal error: RuntimeError: simulated engine failure (run with --debug for the traceback)"]
    assert not (tmp_path / "o.bg").exists(), "a failed run leaves no output"
    loud = run_in_process(["--debug", "surprise", fasta, "-o", tmp_path / "o.bg"], capsys)
    assert loud.code == 1 and "Traceback" in loud.stderr


def test_heads_labels_errors(titans_env, tmp_path, capsys):
    labels = tmp_path / "labels.tsv"
    labels.write_text("missing.fa\tphage\n")
    result = run_in_process(["heads", "train", labels, "-o", tmp_path / "head"], capsys)
    assert result.code == 2 and "missing.fa" in result.stderr and "line 1" in result.stderr
    assert not (tmp_path / "head").exists()
