"""What `titans` does with each bad input of issue 6: a table made by running the real CLI.

    python benchmarks/bad_inputs.py              # writes benchmarks/results/bad_inputs.md (~5 min, CPU)
    python benchmarks/bad_inputs.py --only gzip  # a few cases, table on stdout

The cases (input files, damaged model directories, command lines) are those of
tests/bad_input_catalogue.py, which tests/test_cli_errors.py runs in CI on tiny models; here each
runs as a fresh `python -m titans_cli` process with the shipped models. The rule for a bad input
(issue 6): exit 2, exactly one stderr line `titans: error: ...` naming the file (and record and
line where they apply), no traceback, no output: the `-o` file exists with other content before the
run and must be unchanged after it, and no other file may appear (except the .fai/.gzi index a
region query builds beside an indexable FASTA, as samtools faidx does). Inputs that must work
(Windows line endings, `--encoding`) must exit 0 with output byte-identical to their control run.

An unreadable file (mode 000) cannot be tested by root, who reads it anyway (CAP_DAC_OVERRIDE):
when this script runs as root, that case runs a second time with CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH dropped from the child's capability bounding set (prctl), so that file modes
bind as for any user; both rows are reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO / "tests"))
from bad_input_catalogue import (  # noqa: E402
    CASES,
    PREVIOUS,
    Case,
    damage_models,
    drop_file_mode_override,
    fill,
    make_inputs,
    problems,
)


@dataclass
class Outcome:
    case: Case
    command: str
    code: int
    stderr: str
    user: str
    previous_intact: bool | None = None  # None: the case gives its own -o
    new_files: list[str] = field(default_factory=list)
    output: bytes | None = None
    same_as_control: bool | None = None

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def problems(self) -> list[str]:
        if not self.case.must_fail:
            found = ["traceback on stderr"] if "Traceback" in self.stderr else []
            if self.code != 0:
                found.append(f"exit {self.code}, expected 0")
            if self.same_as_control is False:
                found.append(f"output differs from `{self.case.ok_like}`")
            return found
        found = problems(self.case, self.code, self.stderr)
        if self.previous_intact is False:
            found.append("the previous -o file was changed")
        if self.new_files:
            found.append("files created: " + ", ".join(self.new_files))
        return found


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file under root with its content, except the index files region queries add."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in (".fai", ".gzi") or path.is_dir():
            continue
        try:
            found[str(path.relative_to(root))] = path.read_bytes()
        except PermissionError:
            found[str(path.relative_to(root))] = None
    return found


def run_case(case: Case, slug: str, root: Path, places: dict[str, str], restricted: bool) -> Outcome:
    args = fill(case.args, places)
    output = None
    if case.output is not None:
        output = root / "out" / f"{slug}{case.output}"
        args += ["-o", str(output)]
        if case.must_fail:
            output.write_text(PREVIOUS)
    before = snapshot(root)
    env = dict(os.environ, PYTHONPATH=str(common.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("TITANS_DEBUG", "TITANS_MODELS"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "titans_cli", *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, cwd=common.REPO, env=env, timeout=900,
                            preexec_fn=drop_file_mode_override if restricted else None)
    after = snapshot(root)
    where = str(root) + "/"
    user = ("root without CAP_DAC_OVERRIDE" if restricted else "root" if os.geteuid() == 0
            else f"uid {os.geteuid()}")
    outcome = Outcome(case, " ".join(["titans", *args]).replace(where, ""), result.returncode,
                      result.stderr.replace(where, ""), user)
    if case.must_fail:
        if output is not None:
            outcome.previous_intact = after.get(str(output.relative_to(root))) == PREVIOUS.encode()
        outcome.new_files = sorted(set(after) - set(before))
    elif output is not None and output.exists():
        outcome.output = output.read_bytes()
    return outcome


def cell(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def describe(outcome: Outcome) -> str:
    lines = outcome.lines
    if not outcome.case.must_fail:
        said = f"exit {outcome.code}"
        if outcome.output is not None:
            said += f", {len(outcome.output):,} bytes of output"
        if outcome.same_as_control is not None:
            said += ", identical to the control's" if outcome.same_as_control else ", **different from the control's**"
        return said + (f"; stderr: `{cell(lines[0], 200)}`" if lines else "")
    said = f"exit {outcome.code}: " + (f"`{cell(lines[0])}`" if lines else "nothing on stderr")
    if len(lines) > 1:
        said += f" (+{len(lines) - 1} more stderr lines)"
    if "Traceback" in outcome.stderr:
        said += "; **traceback**"
    if outcome.previous_intact is not None:
        said += "; previous -o file kept" if outcome.previous_intact else "; **previous -o file changed**"
    if outcome.new_files:
        said += "; **created " + ", ".join(outcome.new_files) + "**"
    elif outcome.code != 0:
        said += "; no file created"
    return said


def run_all(selected: list[Case]) -> list[Outcome]:
    root = Path(tempfile.mkdtemp(prefix="titans-bad-inputs-"))
    try:
        for sub in ("in", "out", "models"):
            (root / sub).mkdir()
        files = make_inputs(root / "in")
        damage_models(common.REPO / "models" / "dna", common.REPO / "models" / "text" / "model.safetensors",
                      root / "models")
        places = {"dir": str(root / "in"), "models": str(root / "models"),
                  **{name: str(path) for name, path in files.items()}}
        outcomes = []
        for index, case in enumerate(selected):
            for restricted in [False] + ([True] if case.modes_bind_root and os.geteuid() == 0 else []):
                common.log(f"bad_inputs: {case.input}{' (CAP_DAC_OVERRIDE dropped)' if restricted else ''}")
                outcomes.append(run_case(case, f"case{index:02d}{'r' if restricted else ''}", root, places,
                                         restricted))
            if case.ok_like is not None:
                # the control again, just before: the comparison is then unaffected by anything
                # that changed since the control row ran (the model code in a shared checkout)
                control = next(c for c in CASES if c.input == case.ok_like)
                reference = run_case(control, f"case{index:02d}c", root, places, False).output
                outcomes[-1].same_as_control = reference is not None and outcomes[-1].output == reference
    finally:
        unreadable = root / "in" / "unreadable.fa"
        if unreadable.exists():
            unreadable.chmod(0o644)
        shutil.rmtree(root, ignore_errors=True)
    return outcomes


def table(outcomes: list[Outcome]) -> tuple[str, int]:
    rows, failures = [], 0
    for outcome in outcomes:
        found = outcome.problems()
        if outcome.case.modes_bind_root and outcome.user == "root":
            verdict = "PASS" if not found else "n/a: root's CAP_DAC_OVERRIDE reads any file (next row)"
        else:
            verdict = "PASS" if not found else "**FAIL**: " + "; ".join(found)
            failures += bool(found)
        name = outcome.case.input
        if outcome.case.modes_bind_root:
            name += f" (run as {outcome.user})"
        if outcome.case.note:
            name += f"; {outcome.case.note}"
        must = ", ".join(f"`{w}`" for w in outcome.case.names) if outcome.case.must_fail else (
            "-" if outcome.case.is_control else f"output = `{outcome.case.ok_like}`")
        rows.append([cell(name), f"`{cell(outcome.command, 300)}`", describe(outcome), must, verdict])
    return common.md_table(["input", "command", "what titans does", "must name / expect", "verdict"], rows,
                           "lllll"), failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="only cases whose name contains one of these words "
                        "(controls always run); prints the table instead of writing the section")
    args = parser.parse_args(argv)
    timer = common.Timer()
    selected = [c for c in CASES if not args.only or c.is_control or any(w in c.input for w in args.only)]
    outcomes = run_all(selected)
    text, failures = table(outcomes)
    bad = sum(o.case.must_fail for o in outcomes)
    body = "\n".join([
        "Every bad input of issue 6 (and the CLI's other usage errors) given to the real CLI: "
        "`python -m titans_cli`, a fresh process per row, `--quiet --device cpu`, the shipped models, "
        "stdin empty. Rule for a bad input: exit 2, exactly one stderr line `titans: error: ...` that "
        "contains the *must name* words (the file, and the record and line where they apply), no "
        "traceback, and no output: the `-o` file existed with other content before the run and must "
        "be unchanged, and no other file may appear (a .fai/.gzi index beside an indexable FASTA is "
        "allowed). Windows line endings and `--encoding` must exit 0 with output byte-identical to the "
        "control run of their LF / UTF-8 twin. The cases are `tests/bad_input_catalogue.py`; "
        "`tests/test_cli_errors.py` runs each of them in CI (in-process, tiny models). Paths are "
        "relative to the temporary directory the script made (`in/`, `out/`, `models/`: damaged "
        "copies of the shipped `dna` model).",
        "",
        f"{len(outcomes)} runs, {bad} of them bad inputs or usage errors; **{failures} break the rule**."
        + (" This script ran as root, who reads mode-000 files: the unreadable file also ran with "
           "CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped (prctl), so that file modes bind."
           if os.geteuid() == 0 else ""),
        "",
        text,
    ])
    if args.only:
        print(body)
    else:
        path = common.write_section("bad_inputs", "Bad inputs: what titans does with each", body, False,
                                    timer.elapsed)
        common.log(f"bad_inputs: wrote {path}; {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
