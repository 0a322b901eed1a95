"""Nothing lost: outputs appear whole or not at all, signals clean up, closed pipes are quiet."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from titans_cli.errors import TitansInputError
from titans_cli.io.atomic import atomic_output, atomic_path, handle_termination_signals

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, **kwargs):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          timeout=60, **kwargs)


def test_success_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "out.bedgraph"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    with atomic_output(str(path)) as handle:
        handle.write("new\n")
        assert path.read_text() == "old\n", "the destination must not change before the block ends"
    assert path.read_text() == "new\n"
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["out.bedgraph"]


def test_new_file_gets_umask_permissions(tmp_path):
    path = tmp_path / "new.bed"
    with atomic_output(str(path)) as handle:
        handle.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_keeps_previous_file_and_removes_temporary(tmp_path, failure):
    path = tmp_path / "out.tsv"
    path.write_text("previous\n")
    with pytest.raises(type(failure)):
        with atomic_output(str(path)) as handle:
            handle.write("partial")
            raise failure
    assert path.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["out.tsv"], f"left behind: {os.listdir(tmp_path)}"


def test_failure_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(str(tmp_path / "x.bw")) as temporary:
            open(temporary, "wb").write(b"partial")
            raise ValueError
    assert os.listdir(tmp_path) == []


def test_unwritable_destinations_are_input_errors(tmp_path):
    with pytest.raises(TitansInputError, match="does not exist"):
        with atomic_output(str(tmp_path / "missing" / "out.bed")):
            pass
    with pytest.raises(TitansInputError, match="is a directory"):
        with atomic_output(str(tmp_path)):
            pass


def test_sigterm_during_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "out.bedgraph"
    path.write_text("previous\n")
    ready = tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from titans_cli.io.atomic import atomic_output, handle_termination_signals
        with handle_termination_signals():
            with atomic_output({str(path)!r}) as handle:
                handle.write("partial\\n" * 1000)
                handle.flush()
                open({str(ready)!r}, "w").close()
                time.sleep(30)
    """)], cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "child never started writing"
    assert any(name.endswith(".titans-tmp") for name in os.listdir(tmp_path)), "expected a temporary file"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.returncode != 0
    assert path.read_text() == "previous\n"
    assert sorted(os.listdir(tmp_path)) == ["out.bedgraph", "ready"], os.listdir(tmp_path)


def test_handlers_restored_after_block():
    before = signal.getsignal(signal.SIGTERM)
    with handle_termination_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_closed_pipe_ends_quietly():
    code = """
        from titans_cli.io.atomic import atomic_output, quiet_broken_pipe
        with quiet_broken_pipe():
            with atomic_output("-") as out:
                for index in range(2_000_000):
                    out.write(f"chr1\\t{index}\\t{index + 1}\\t0.5\\n")
    """
    pipeline = subprocess.run(
        f"{sys.executable} -c '{textwrap.dedent(code)}' | head -n 2",
        shell=True, cwd=REPO, capture_output=True, timeout=120, executable="/bin/bash",
    )
    assert pipeline.stdout.decode().splitlines() == ["chr1\t0\t1\t0.5", "chr1\t1\t2\t0.5"]
    assert pipeline.stderr == b"", pipeline.stderr.decode()
