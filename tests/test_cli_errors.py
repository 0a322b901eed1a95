"""Bad input and bad usage: exit code 2, one line `titans: error: ...` naming the problem, no
traceback, no output file (and a previous file of the same name kept). Internal errors: exit 1,
one line, traceback only under --debug.

The cases are tests/bad_input_catalogue.py, the same ones benchmarks/bad_inputs.py runs through the
real CLI for the table in docs/RESULTS.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bad_input_catalogue import CASES, PREVIOUS, damage_models, drop_file_mode_override, fill, make_inputs, problems
from test_cli_fixtures import run_in_process, run_subprocess, tiny_models, titans_env, write_fasta  # noqa: F401

MUST_FAIL = [c for c in CASES if c.must_fail and not c.modes_bind_root]
MUST_WORK = [c for c in CASES if c.ok_like is not None]
UNREADABLE = [c for c in CASES if c.modes_bind_root]


@pytest.fixture(scope="session")
def damaged_models(tiny_models, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("damaged-models")
    damage_models(tiny_models / "dna", tiny_models / "text" / "model.safetensors", folder)
    return folder


def inputs(tmp_path: Path, damaged_models: Path) -> dict[str, str]:
    """The catalogue's files in tmp_path/in, and the places its arguments refer to."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    files = make_inputs(tmp_path / "in")
    return {"dir": str(tmp_path / "in"), "models": str(damaged_models), **{k: str(v) for k, v in files.items()}}


def listing(root: Path) -> set[Path]:
    # an index beside an indexable FASTA is what samtools faidx would leave too
    return {path for path in root.rglob("*") if path.suffix not in (".fai", ".gzi")}


@pytest.mark.parametrize("case", MUST_FAIL, ids=[c.input for c in MUST_FAIL])
def test_bad_input_exits_2_with_one_line_and_no_output(titans_env, damaged_models, tmp_path, capsys, monkeypatch, case):
    args = fill(case.args, inputs(tmp_path, damaged_models))
    # once into a new -o file (it must not appear), once over an existing one (it must stay as it was)
    for previous in ([False, True] if case.output is not None else [None]):
        out = tmp_path / "out" / f"{'previous' if previous else 'new'}{case.output}"
        if previous:
            out.write_text(PREVIOUS)
        before = listing(tmp_path)
        result = run_in_process(args + (["-o", out] if previous is not None else []), capsys, stdin=b"",
                                monkeypatch=monkeypatch)
        assert not problems(case, result.code, result.stderr), f"{case.input}: {problems(case, result.code, result.stderr)}; stderr: {result.stderr}"
        assert listing(tmp_path) == before, f"{case.input}: files created: {sorted(map(str, listing(tmp_path) - before))}"
        if previous:
            assert out.read_text() == PREVIOUS, f"{case.input}: the previous -o file was changed"


STDOUT_CASES = [c for c in MUST_FAIL if c.input.startswith(("`--region` past", "`--region` naming", "digit",
                                                              "FASTQ quality shorter", "model: corrupted"))]


@pytest.mark.parametrize("case", STDOUT_CASES, ids=[c.input for c in STDOUT_CASES])
def test_error_before_any_value_leaves_stdout_empty(titans_env, damaged_models, tmp_path, capsys, case):
    """Without -o the track goes to stdout: a run that fails before its first value writes
    nothing there, not even the track or header line."""
    result = run_in_process(fill(case.args, inputs(tmp_path, damaged_models)), capsys)
    assert result.code == 2 and result.stdout == "", f"{case.input}: stdout {result.stdout!r}"


@pytest.mark.parametrize("case", MUST_WORK, ids=[c.input for c in MUST_WORK])
def test_inputs_that_must_work_give_their_controls_output(titans_env, damaged_models, tmp_path, capsys, case):
    places = inputs(tmp_path, damaged_models)
    control = next(c for c in CASES if c.input == case.ok_like)
    outputs = []
    for run in (control, case):
        out = tmp_path / "out" / f"{len(outputs)}.out"
        result = run_in_process(fill(run.args, places) + ["-o", out], capsys)
        assert result.code == 0 and "Traceback" not in result.stderr, f"{run.input}: exit {result.code}: {result.stderr}"
        outputs.append(out.read_bytes())
    assert outputs[0], f"{control.input}: empty output"
    assert outputs[1] == outputs[0], f"{case.input}: output differs from {control.input}'s"


@pytest.mark.parametrize("case", UNREADABLE, ids=[c.input for c in UNREADABLE])
def test_unreadable_file(tiny_models, damaged_models, tmp_path, case):
    """Root reads mode-000 files (CAP_DAC_OVERRIDE): as root, the child drops that capability
    (and CAP_DAC_READ_SEARCH) so that file modes bind it like any user."""
    out = tmp_path / "out" / "previous.bg"
    args = fill(case.args, inputs(tmp_path, damaged_models)) + ["-o", out]
    out.write_text(PREVIOUS)
    before = listing(tmp_path)
    as_root = os.geteuid() == 0
    result = run_subprocess(args, tiny_models, preexec_fn=drop_file_mode_override if as_root else None)
    assert not problems(case, result.returncode, result.stderr), f"{problems(case, result.returncode, result.stderr)}: {result.stderr}"
    assert listing(tmp_path) == before and out.read_text() == PREVIOUS


def test_catalogue_names_every_bad_input_of_the_issue():
    """Issue 6's list, each matched by at least one case."""
    topics = ["empty file", "header with no sequence", "sequence before any header", "digit", "`*`",
              "control byte", "truncated gzip", "PNG given as FASTA", "PNG given as text", "FASTQ quality",
              "`--region` past the end", "`--region` naming an absent record", "unreadable", "directory",
              "non-UTF-8", "--encoding", "Windows line endings", "`--window 0`", "`--window -5`",
              "unknown `--format`", "model: corrupted", "model: truncated", "model: weights of another model"]
    names = [c.input for c in CASES]
    assert not [t for t in topics if not any(t in name for name in names)]


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
