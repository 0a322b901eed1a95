"""Host-side cost of one streaming step: handing a GPU-sized step's outputs (128 lanes x 4,096 tokens)
to the `surprise` reducers, and writing their 50-base windows as bedGraph, with no model in the loop.

On a GPU the engine waits for a step's outputs, then spends this time in Python and numpy before it
builds the next step (stream.StreamEngine._emit -> SequenceTrackReducer.add -> WindowMeans.add, 50-base
windows), so it adds to every step's wall time; the CLI then writes the windows (io.tracks). This
times both alone on this machine's CPU: random bits and grad arrays, `_emit` for every lane; random
window values through BedGraphWriter; median over rounds.

    python benchmarks/host_emit.py [--baseline-tree DIR] [--rounds 5] [--steps 40]

--baseline-tree DIR (e.g. a `git worktree` of an earlier commit) runs the same measurement with that
tree's titans_cli, alternating rounds with this tree's. Writes benchmarks/results/host_emit.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402

LANES, PIECE = 128, 4096


def one_round(steps: int) -> float:
    """Milliseconds per step of _emit over LANES lanes x PIECE tokens (run in the tree on sys.path)."""
    import numpy as np
    import torch

    from titans_cli.device import Runtime
    from titans_cli.model import load_model
    from titans_cli.stream import RecordInput, StreamEngine
    from titans_cli.tasks.surprise import SequenceTrackReducer

    engine = StreamEngine(load_model("dna").model, Runtime(torch.device("cpu"), "numba"), piece_tokens=PIECE,
                          lanes=LANES)  # fmt: skip
    rng = np.random.default_rng(0)
    lanes = []
    for i in range(LANES):
        record = RecordInput(i, f"r{i}", [], {"record": None})
        lane = engine._new_lane(record, SequenceTrackReducer(record, "bits", 50), iter([]))
        lane.buffer = rng.integers(3, 7, size=PIECE * (steps + 1)).astype(np.int64)
        lanes.append(lane)
    bits, grad = rng.random((LANES, PIECE), dtype=np.float32), rng.random((LANES, PIECE), dtype=np.float32)
    momentum = np.full((LANES, PIECE), np.nan, np.float32)
    emit = engine._emit
    start = time.perf_counter()
    for _ in range(steps):
        for row, lane in enumerate(lanes):
            emit(lane, PIECE, bits[row], grad[row], momentum[row], None)
            lane.buffer = lane.buffer[PIECE:]
            lane.fed += PIECE
            lane.items = []
    return (time.perf_counter() - start) / steps * 1e3


def writer_round(steps: int) -> float:
    """Milliseconds per step of writing a step's 50-base windows (LANES x PIECE / 50) as bedGraph
    (io.tracks.BedGraphWriter, as `titans surprise -o x.bedgraph` does), random values."""
    import tempfile

    import numpy as np

    from titans_cli.io.tracks import open_track_writer

    per_lane = PIECE // 50
    rng = np.random.default_rng(1)
    values = rng.random((steps, LANES, per_lane)) * 2
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        with open_track_writer(str(Path(scratch) / "t.bedgraph"), "bedgraph") as writer:
            for lane in range(LANES):  # one record per lane, its windows written in step order
                chrom = f"record{lane}"
                for step in range(steps):
                    first = step * per_lane * 50
                    starts = first + 50 * np.arange(per_lane)
                    writer.add_intervals(chrom, starts, starts + 50, values[step, lane])
        return (time.perf_counter() - start) / steps * 1e3


def measure_tree(tree: Path, steps: int, what: str = "one_round") -> float:
    """One round in a fresh interpreter with `tree` first on the path."""
    code = (f"import sys; sys.path.insert(1, {str(REPO / 'benchmarks')!r}); import host_emit, titans_cli; "
            f"assert titans_cli.__file__.startswith({str(tree)!r}), titans_cli.__file__; print(host_emit.{what}({steps}))")
    env = dict(os.environ, PYTHONPATH=str(tree))
    # cwd = the tree: `python -c` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    timer = common.Timer()
    trees = {"this tree": REPO}
    if args.baseline_tree:
        commit = subprocess.run(["git", "-C", str(args.baseline_tree), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or args.baseline_tree.name
        trees = {f"baseline (commit {commit})": args.baseline_tree.resolve(), **trees}
    parts = {"reducers (_emit)": "one_round", "bedGraph writer": "writer_round"}
    times = {(part, name): [] for part in parts for name in trees}
    for round_ in range(args.rounds):
        for part, function in parts.items():
            for name, tree in trees.items():
                times[(part, name)].append(measure_tree(tree, args.steps, function))
                common.log(f"round {round_}: {part}, {name}: {times[(part, name)][-1]:.1f} ms/step")
    rows = []
    for (part, name), values in times.items():
        median = statistics.median(values)
        rows.append([part, name, f"{median:.1f}", f"{min(values):.1f}-{max(values):.1f}",
                     f"{LANES * PIECE / median / 1e3:.1f}"])  # fmt: skip
    body = (f"`_emit` for {LANES} lanes x {PIECE:,} tokens per step (the `surprise --metric bits` reducer, 50-base "
            f"windows), {args.steps} steps per round, {args.rounds} rounds alternating between trees, each round in a "
            f"fresh interpreter; no model. Command: `python benchmarks/host_emit.py "
            f"{' '.join(sys.argv[1:])}`.\n\n"
            + common.md_table(["part", "code", "ms per step (median)", "range", "M tokens/s host-bound"], rows)
            + "\n\nRaw ms per step: `"
            + json.dumps({f"{part}, {name}": [round(v, 2) for v in vs] for (part, name), vs in times.items()}) + "`")
    path = common.write_section("host_emit", "Host-side cost of a streaming step", body, quick=False,
                                elapsed_s=timer.elapsed)
    print(path.read_text())


if __name__ == "__main__":
    main()
