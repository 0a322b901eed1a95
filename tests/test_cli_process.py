"""The command as a process: `python -m titans_cli`, SIGTERM mid-run, `| head`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from test_cli_fixtures import REPO, SAMPLE, lambda_sequence, run_subprocess, subprocess_env, tiny_models, write_fasta  # noqa: F401


def test_python_dash_m_is_the_titans_command(tiny_models):
    version = run_subprocess(["--version"], tiny_models)
    assert version.returncode == 0 and version.stdout.startswith("titans ")
    listing = run_subprocess(["models"], tiny_models)
    assert listing.returncode == 0, listing.stderr
    assert "dna" in listing.stdout and "Tiny random DNA model" in listing.stdout
    helped = run_subprocess(["surprise", "--help"], tiny_models)
    assert helped.returncode == 0 and "--metric" in helped.stdout


def test_sigterm_leaves_no_partial_file_and_keeps_the_old_one(tiny_models, tmp_path):
    # lambda 20 times (~1 Mbp): the tiny model must still be busy a second after it starts writing
    fasta = write_fasta(tmp_path / "long.fa", [(f"copy{i}", lambda_sequence()) for i in range(20)])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "track.bedgraph"
    out.write_text("previous result\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "titans_cli", "surprise", str(fasta), "--window", "1", "-o", str(out)],
        env=subprocess_env(tiny_models), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    # wait until the run is writing (its temporary file exists), then terminate it
    while time.time() < deadline and not list(out_dir.glob(".track.bedgraph.*")):
        assert process.poll() is None, f"finished before it could be interrupted: {process.stderr.read()}"
        time.sleep(0.1)
    assert list(out_dir.glob(".track.bedgraph.*")), "the run never started writing"
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert out.read_text() == "previous result\n", "the previous output is intact"
    assert sorted(p.name for p in out_dir.iterdir()) == ["track.bedgraph"], "no temporary file left behind"


def test_closed_pipe_ends_quietly(tiny_models, tmp_path):
    # 4,000 one-base bedGraph lines (~100 kB) overflow the pipe buffer after head has gone
    fasta = write_fasta(tmp_path / "r.fa", [("r1", lambda_sequence()[:4000])])
    command = f"{sys.executable} -m titans_cli surprise {fasta} --window 1 | head -n 2; echo \"status=${{PIPESTATUS[0]}}\""
    result = subprocess.run(["bash", "-c", command], env=subprocess_env(tiny_models), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("track type=bedGraph") and lines[1].startswith("r1\t0\t1\t")
    assert lines[-1] == "status=0", result.stdout
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
