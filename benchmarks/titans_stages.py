"""The titans rows of novel_regions and classification in three stages, so that the model runs on
another machine (the GPU device) that has the repository but not ../shared/data.

1. prepare (here): write the model inputs of both benchmarks, exactly the items the two scripts
   score, into a small folder (default carry/issue5/inputs, git-ignored):
     genomes/<genome>.fa.gz  the scored records of the five eval genomes (novel regions)
     phage.fa.gz             mycobacteriophage genomes with a cluster, train then eval
     domain.fa.gz            the sampled 2 kb domain-of-origin windows (full mode: 1,000 train per
                             collection, 600 eval per class), train then eval
     brown.jsonl.gz          the Brown documents (id, text), train then test
     manifest.json           the items of every split, in order, and the files' sha256

       python benchmarks/titans_stages.py prepare

2. compute (device machine): run the shipped models over them and write compact results into
   --out (at most 5 files):
     tracks.npz              per record, 500 bp window means of novelty, bits and grad
     embeddings_<n>.npz      per item, `--pool mean` and `--pool memory` embeddings (float32)
     info.json               device, torch, commit, titans_cli fingerprint, per-task timings,
                             the regions `titans surprise --regions` calls on the novelty track

       python benchmarks/titans_stages.py compute --inputs carry/issue5/inputs --out $OUT --device cuda

   Tasks run in --workers processes sharing the device. A time guard stops them after
   --time-limit seconds; the outputs are rewritten after every finished task, so whatever is done
   is in --out even if the command is killed.

3. tables (here): the two scripts read those results instead of running the model:

       python benchmarks/novel_regions.py --titans-from DIR
       python benchmarks/classification.py --titans-from DIR

What is computed is what the scripts would compute themselves:
  tracks   `titans surprise --metric novelty|bits|grad --window 500` on each scored record.
           Novelty streams every record twice (learn, then score with the frozen host-adapted
           memory); its first pass is the ordinary online stream, so the bits and grad tracks are
           read from that pass (the same per-token outputs as `--metric bits` / `--metric grad`).
           Window means are rounded to 6 significant digits, as the bedGraph writer prints them.
           The regions are those `--regions` calls (call_regions with the CLI defaults) on the
           unrounded novelty windows.
  vectors  `titans_cli.embed(model, items, per="record", pool=...)`: the same engine and
           PoolReducer, both pools read from one stream of each item (the engine then keeps
           hidden states and memory fingerprints together). DNA items are batched with
           lane_tokens = 2**18 so that phage genomes longer than the default 65,536 bases share waves;
           a record's outputs depend only on the record (stream.py), so this changes speed only.

Test the chain on a few items: `compute --device cpu --limit-items 4 --limit-bases 5000` (a test
run; the tables then say so in every titans cell).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from titans_cli.model.files import sha256_of_file  # noqa: E402

DEFAULT_INPUTS = common.REPO / "carry" / "issue5" / "inputs"
FORMAT = 1
TRACK_WINDOW = 500                 # novel_regions.TITANS_WINDOW
TRACK_METRICS = ("novelty", "bits", "grad")
POOLS = ("mean", "memory")
DNA_LANE_TOKENS = 1 << 18          # longest mycobacteriophage genome: 164,602 bases
SHARD_UNITS = 8_000_000            # bases (characters for text) per embedding task
VOLUME_BYTES = 12 << 20            # embeddings_<n>.npz files stay well below 16 MiB
# `titans surprise --regions` defaults (titans_cli/cli/surprise.py)
CLI_THRESHOLD, CLI_SMOOTH, CLI_MIN_LENGTH = 3.0, 2000, 1000


def _write_fasta(path: Path, records, width: int = 80) -> None:
    with gzip.open(path, "wt", compresslevel=9) as fh:
        for rid, seq in records:
            fh.write(f">{rid}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i:i + width] + "\n")


# ----------------------------------------------------------------------------- prepare


def prepare(directory: Path) -> None:
    import classification
    import novel_regions

    timer = common.Timer()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "genomes").mkdir(exist_ok=True)
    manifest: dict = {"format": FORMAT, "created_utc": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}",
                      "commit": common.git_commit(), "genomes": [], "embeddings": {}}
    files = []

    prophages = common.read_bed(common.DNA_EVAL / "prophages.bed")
    islands = common.read_bed(common.DNA_EVAL / "islands.bed")
    for genome in novel_regions.GENOMES:
        seqs = dict(common.read_fasta(common.DNA_EVAL / genome.fasta))
        bed = prophages if genome.kind == "prophage" else islands
        names = sorted({c for c, *_ in bed if c in seqs})   # the records novel_regions scores
        name = f"genomes/{genome.fasta}"
        _write_fasta(directory / name, [(n, seqs[n]) for n in names])
        manifest["genomes"].append({"label": genome.label, "file": name,
                                    "records": [{"id": n, "length": len(seqs[n])} for n in names]})
        files.append(name)
        common.log(f"prepare: {genome.label}: {names}")

    ph = classification.phage_items()
    _write_fasta(directory / "phage.fa.gz", [(i, s) for split in ("train", "eval") for i, s, *_ in ph[split]])
    manifest["embeddings"]["phage"] = {"kind": "dna", "file": "phage.fa.gz",
                                       "splits": {s: [i for i, *_ in ph[s]] for s in ("train", "eval")}}
    files.append("phage.fa.gz")
    common.log(f"prepare: phage {len(ph['train'])} + {len(ph['eval'])} genomes")

    n_tr, n_ev = classification.FULL_DOMAIN_SAMPLE
    dtrain, deval = classification.domain_items(n_tr, n_ev)
    ids = [i for i, *_ in dtrain + deval]
    if len(set(ids)) != len(ids):
        raise SystemExit("prepare: domain window ids are not unique")
    _write_fasta(directory / "domain.fa.gz", [(i, s) for i, s, _ in dtrain + deval])
    manifest["embeddings"]["domain"] = {"kind": "dna", "file": "domain.fa.gz",
                                        "n_train_per_collection": n_tr, "n_eval_per_class": n_ev,
                                        "splits": {"train": [i for i, *_ in dtrain], "eval": [i for i, *_ in deval]}}
    files.append("domain.fa.gz")

    br = classification.brown_items()
    with gzip.open(directory / "brown.jsonl.gz", "wt", compresslevel=9) as fh:
        for split in ("train", "test"):
            for i, text, _ in br[split]:
                fh.write(json.dumps({"id": i, "text": text}) + "\n")
    manifest["embeddings"]["brown"] = {"kind": "text", "file": "brown.jsonl.gz",
                                       "splits": {s: [i for i, *_ in br[s]] for s in ("train", "test")}}
    files.append("brown.jsonl.gz")

    manifest["sha256"] = {name: sha256_of_file(directory / name) for name in files}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum((directory / n).stat().st_size for n in files)
    common.log(f"prepare: wrote {directory} ({size / 2**20:.1f} MiB) in {timer.elapsed:.0f} s")


# ----------------------------------------------------------------------------- compute: tasks


def _read_items(directory: Path, spec: dict) -> list[tuple[str, str]]:
    path = directory / spec["file"]
    if spec["kind"] == "dna":
        return common.read_fasta(path)
    with gzip.open(path, "rt") as fh:
        return [(d["id"], d["text"]) for d in map(json.loads, fh)]


def _pick(n: int, limit: int | None) -> list[int]:
    """All indices, or `limit` evenly spaced ones (a test run: every class has a chance)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def plan_tasks(directory: Path, manifest: dict, limit_items: int | None, limit_bases: int | None) -> list[dict]:
    """Tasks, largest first: one per genome (two passes over it) and embedding shards of at most
    SHARD_UNITS bases or characters."""
    tasks = []
    for genome in manifest["genomes"]:
        units = 2 * sum(min(r["length"], limit_bases or r["length"]) for r in genome["records"])
        tasks.append({"name": f"tracks:{genome['label']}", "type": "tracks", "file": genome["file"],
                      "units": units})
    for task, spec in manifest["embeddings"].items():
        items = _read_items(directory, spec)
        position = {item_id: k for k, (item_id, _) in enumerate(items)}
        chosen = []
        for split_ids in spec["splits"].values():
            chosen += [position[split_ids[k]] for k in _pick(len(split_ids), limit_items)]
        lengths = [min(len(items[k][1]), limit_bases or len(items[k][1])) for k in chosen]
        shard, units, part = [], 0, 0
        for k, n in zip(chosen, lengths):
            shard.append(k)
            units += n
            if units >= SHARD_UNITS:
                tasks.append({"name": f"embed:{task}:{part}", "type": "embed", "task": task, "kind": spec["kind"],
                              "file": spec["file"], "rows": shard, "units": units})
                shard, units, part = [], 0, part + 1
        if shard:
            tasks.append({"name": f"embed:{task}:{part}", "type": "embed", "task": task, "kind": spec["kind"],
                          "file": spec["file"], "rows": shard, "units": units})
    return sorted(tasks, key=lambda t: -t["units"])


class _BitsAndGrad:
    """Reducer of novelty's first (online) pass: the bits and the grad tracks side by side."""

    def __init__(self, record, window: int):
        from titans_cli.tasks.surprise import SequenceTrackReducer

        self.parts = {m: SequenceTrackReducer(record, m, window) for m in ("bits", "grad")}

    def add(self, outputs):
        return [(m, item) for m, r in self.parts.items() for item in r.add(outputs)]

    def finish(self, end):
        return [(m, item) for m, r in self.parts.items() for item in r.finish(end)]


class _BothPools:
    """Both pools of titans_cli.tasks.embed from one stream of a record."""

    def __init__(self, record):
        from titans_cli.tasks.embed import PoolReducer

        self.parts = {pool: PoolReducer(record, pool) for pool in POOLS}

    def add(self, outputs):
        for r in self.parts.values():
            r.add(outputs)
        return []

    def finish(self, end):
        return [(pool, item) for pool, r in self.parts.items() for item in r.finish(end)]


def _truncated(records, limit_bases: int | None):
    """RecordInputs cut to their first `limit_bases` tokens (test runs)."""
    from titans_cli.stream import RecordInput

    for record in records:
        if limit_bases is None:
            yield record
            continue

        def pieces(source=record.pieces):
            left = limit_bases
            for piece in source:
                if left <= 0:
                    return
                yield piece[:left]
                left -= len(piece[:left])
        length = min(record.length or limit_bases, limit_bases)
        yield RecordInput(record.index, record.id, pieces(), length, record.meta)


def run_tracks(model, path: Path, limit_bases: int | None, scratch: Path, name: str) -> dict:
    """`titans surprise --metric novelty|bits|grad --window 500` of every record in `path`."""
    from titans_cli.io.tracks import format_value
    from titans_cli.stream import sequence_records
    from titans_cli.tasks.novelty import DEFAULT_FORM, novelty_records
    from titans_cli.tasks.regions import call_regions
    from titans_cli.tasks.surprise import RecordSummary, TrackChunk, WindowMeans

    engine = model.engine()
    records = _truncated(sequence_records([str(path)], model.loaded.tokenizer), limit_bases)
    arrays, regions, summaries = {}, {}, {}
    for record, first_pass, scores in novelty_records(engine, records, DEFAULT_FORM,
                                                      make_reducer=lambda r: _BitsAndGrad(r, TRACK_WINDOW)):
        summary = next(item for m, item in first_pass if m == "bits" and isinstance(item, RecordSummary))
        tracks = {m: [item for metric, item in first_pass if metric == m and isinstance(item, TrackChunk)]
                  for m in ("bits", "grad")}
        # novelty windows exactly as titans/cli/surprise.py builds them
        means, parts = WindowMeans(TRACK_WINDOW), []
        for start, values in scores:
            parts.append(means.add(start, values))
        parts.append(means.flush())
        index = np.concatenate([i for i, _ in parts])
        mean = np.concatenate([m for _, m in parts])
        starts = index * TRACK_WINDOW
        novelty = TrackChunk(record.id, starts + summary.offset,
                             np.minimum(starts + TRACK_WINDOW, summary.length) + summary.offset, mean)
        tracks["novelty"] = [novelty]
        found, _ = call_regions(record.id, novelty.starts, novelty.ends, novelty.values, CLI_THRESHOLD,
                                CLI_SMOOTH, CLI_MIN_LENGTH, merge_gap=CLI_SMOOTH // 2)
        regions[record.id] = [[r.start, r.end] for r in found]
        for metric, chunks in tracks.items():
            arrays[f"{metric}|{record.id}|starts"] = np.concatenate([c.starts for c in chunks]).astype(np.int64)
            arrays[f"{metric}|{record.id}|ends"] = np.concatenate([c.ends for c in chunks]).astype(np.int64)
            values = np.concatenate([c.values for c in chunks])
            arrays[f"{metric}|{record.id}|values"] = np.array([float(format_value(v)) for v in values])
        summaries[record.id] = {"length": summary.length, "bits_per_base": summary.bits_per_unit,
                                "mean_grad": summary.mean_grad}
    out = scratch / f"{_safe(name)}.npz"
    np.savez(out, **arrays)
    return {"file": out.name, "regions": regions, "records": summaries}


def run_embed(model, items: list[tuple[str, str]], kind: str, scratch: Path, name: str) -> dict:
    """titans_cli.embed(model, items, per="record", pool=p) for both pools in one stream."""
    import titans_cli

    options = {"lane_tokens": DNA_LANE_TOKENS} if kind == "dna" else {}
    engine = model.engine(**options)
    engine.want_hidden = engine.want_memory = True
    rows = {pool: [] for pool in POOLS}
    ids = []
    for _, produced in engine.run(titans_cli._records(model, items), _BothPools):
        for pool, embedding in produced:
            rows[pool].append(embedding.vector)
            if pool == POOLS[0]:
                ids.append(embedding.id)
    if ids != [i for i, _ in items]:
        raise RuntimeError(f"embed returned {len(ids)} rows in another order than the {len(items)} items")
    out = scratch / f"{_safe(name)}.npz"
    np.savez(out, ids=np.array(ids), **{pool: np.stack(rows[pool]).astype(np.float32) for pool in POOLS})
    return {"file": out.name}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _worker(inputs: str, scratch: str, device: str, threads: int | None, limit_bases: int | None,
            tasks, results) -> None:
    """Worker process: loads the models it needs, runs tasks until it gets None."""
    import torch

    import titans_bridge
    import titans_cli

    inputs_dir, scratch_dir = Path(inputs), Path(scratch)
    models: dict = {}

    def model(kind):
        if kind not in models:
            models[kind] = titans_cli.load_model(titans_bridge.model_name(kind), device=device)
            if models[kind].runtime.device.type == "cpu" and threads:
                from titans_cli.device import configure_threads
                configure_threads(threads)
            runtime = models[kind].runtime
            name = torch.cuda.get_device_name(runtime.device) if runtime.is_cuda else common.cpu_model()
            results.put(("device", {"device": name, "device_type": runtime.device.type,
                                    "backend": runtime.backend, "torch": torch.__version__,
                                    "cuda": torch.version.cuda}))
        return models[kind]

    while True:
        task = tasks.get()
        if task is None:
            return
        t0 = time.time()
        try:
            if task["type"] == "tracks":
                info = run_tracks(model("dna"), inputs_dir / task["file"], limit_bases, scratch_dir, task["name"])
            else:
                items = _read_items(inputs_dir, {"kind": task["kind"], "file": task["file"]})
                items = [items[k] for k in task["rows"]]
                if limit_bases is not None:
                    items = [(i, s[:limit_bases]) for i, s in items]
                info = run_embed(model(task["kind"]), items, task["kind"], scratch_dir, task["name"])
            results.put(("done", task["name"], time.time() - t0, info))
        except Exception:  # noqa: BLE001 - reported in info.json, the other tasks go on
            results.put(("failed", task["name"], time.time() - t0, traceback.format_exc()[-3000:]))


# ----------------------------------------------------------------------------- compute: outputs


def _write_outputs(out: Path, scratch: Path, tasks: list[dict], status: dict, details: dict, info: dict) -> None:
    """Rewrite --out from the finished tasks: tracks.npz, embeddings_<n>.npz, info.json."""
    out.mkdir(parents=True, exist_ok=True)
    tracks, regions, records = {}, {}, {}
    embedded: dict[str, list[dict]] = {}
    for task in tasks:
        if status[task["name"]]["status"] != "done":
            continue
        detail = details[task["name"]]
        with np.load(scratch / detail["file"]) as data:
            arrays = {k: data[k] for k in data.files}
        if task["type"] == "tracks":
            tracks.update(arrays)
            regions.update(detail["regions"])
            records.update(detail["records"])
        else:
            embedded.setdefault(task["task"], []).append((task["rows"][0], arrays))
    _atomic_npz(out / "tracks.npz", tracks)
    # embeddings: every embedding task whose shards are all done, in volumes below VOLUME_BYTES
    complete = {}
    for name in embedded:
        shards = [t for t in tasks if t["type"] == "embed" and t["task"] == name]
        if len(embedded[name]) == len(shards):
            parts = [a for _, a in sorted(embedded[name], key=lambda p: p[0])]
            complete[name] = {"ids": np.concatenate([p["ids"] for p in parts]),
                              **{pool: np.concatenate([p[pool] for p in parts]) for pool in POOLS}}
    volumes, current, size = [], {}, 0
    for name in sorted(complete):
        for key, array in complete[name].items():
            if current and size + array.nbytes > VOLUME_BYTES:
                volumes.append(current)
                current, size = {}, 0
            current[f"{name}|{key}"] = array
            size += array.nbytes
    if current:
        volumes.append(current)
    for old in out.glob("embeddings_*.npz"):
        old.unlink()
    for n, volume in enumerate(volumes, start=1):
        _atomic_npz(out / f"embeddings_{n}.npz", volume)
    info = dict(info, tasks=status, regions=regions, records=records, embeddings=sorted(complete),
                wall_s=round(time.time() - info["_t0"], 1))
    info.pop("_t0", None)
    tmp = out / "info.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(out / "info.json")


def _atomic_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def compute(args) -> int:
    import multiprocessing as mp
    import tempfile

    t0 = time.time()
    inputs = Path(args.inputs)
    manifest = json.loads((inputs / "manifest.json").read_text())
    for name, digest in manifest["sha256"].items():
        if sha256_of_file(inputs / name) != digest:
            raise SystemExit(f"compute: {inputs / name} does not match its sha256 in manifest.json")
    tasks = plan_tasks(inputs, manifest, args.limit_items, args.limit_bases)
    if args.only:
        tasks = [t for t in tasks if t["name"].startswith(tuple(args.only))]
        if not tasks:
            raise SystemExit(f"compute: no task name starts with any of {args.only}")
    import titans_bridge
    info = {"format": FORMAT, "_t0": t0, "started_utc": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}",
            "commit": common.git_commit(), "titans_fingerprint": titans_bridge.fingerprint(),
            "manifest_sha256": sha256_of_file(inputs / "manifest.json"), "host": platform.node(),
            "cpu": common.cpu_model(), "workers": args.workers, "time_limit_s": args.time_limit,
            "novelty_form": _novelty_form(),
            "limit_items": args.limit_items, "limit_bases": args.limit_bases,
            "test_run": args.limit_items is not None or args.limit_bases is not None,
            "command": " ".join(sys.argv)}
    info["embedding_kinds"] = {task: spec["kind"] for task, spec in manifest["embeddings"].items()}
    status = {t["name"]: {"status": "not finished within the time limit", "units": t["units"]} for t in tasks}
    details: dict = {}
    out = Path(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="titans-stages-"))
    ctx = mp.get_context("spawn")
    task_queue, results = ctx.Queue(), ctx.Queue()
    for task in tasks:
        task_queue.put(task)
    workers = [ctx.Process(target=_worker, args=(str(inputs), str(scratch), args.device, args.threads,
                                                 args.limit_bases, task_queue, results), daemon=True)
               for _ in range(args.workers)]
    for _ in workers:
        task_queue.put(None)
    for w in workers:
        w.start()
    # never wait at exit for queue data that terminated workers will not read
    task_queue.cancel_join_thread()
    results.cancel_join_thread()
    common.log(f"compute: {len(tasks)} tasks on {args.workers} workers, time limit {args.time_limit:.0f} s")
    pending = {t["name"] for t in tasks}
    _write_outputs(out, scratch, tasks, status, details, info)
    while pending:
        left = args.time_limit - (time.time() - t0)
        if left <= 0:
            common.log(f"compute: time limit reached, not finished: {sorted(pending)}")
            info["stopped_by_time_limit"] = True
            break
        try:
            message = results.get(timeout=min(left, 5.0))
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                common.log("compute: every worker has exited")
                break
            continue
        if message[0] == "device":
            info.setdefault("device", message[1])
            continue
        kind, name, seconds, detail = message
        pending.discard(name)
        if kind == "done":
            status[name] = {"status": "done", "seconds": round(seconds, 1), "units": status[name]["units"]}
            details[name] = detail
        else:
            status[name] = {"status": "failed", "seconds": round(seconds, 1), "units": status[name]["units"],
                            "error": detail}
        common.log(f"compute: {name} {kind} in {seconds:.1f} s ({status[name]['units']:,} units); "
                   f"{len(pending)} left, {time.time() - t0:.0f} s elapsed")
        _write_outputs(out, scratch, tasks, status, details, info)
    for w in workers:
        if w.is_alive():
            w.terminate()
    for w in workers:
        w.join(timeout=10)
    _write_outputs(out, scratch, tasks, status, details, info)
    shutil.rmtree(scratch, ignore_errors=True)
    failed = [n for n, s in status.items() if s["status"] != "done"]
    common.log(f"compute: wrote {out} in {time.time() - t0:.0f} s; not done: {failed or 'none'}")
    for f in sorted(out.iterdir()):
        common.log(f"  {f.name}: {f.stat().st_size / 2**20:.2f} MiB")
    return 0 if not failed else 1


# ----------------------------------------------------------------------------- tables: reading


class NotComputed(Exception):
    """The staged results lack what a table cell needs."""


def _novelty_form() -> str:
    from titans_cli.tasks.novelty import DEFAULT_FORM

    return DEFAULT_FORM


class StagedResults:
    """The outputs of one or more `compute` runs (e.g. a second run with --only for what the
    first one did not finish), read by novel_regions.py and classification.py (--titans-from)."""

    def __init__(self, directories):
        self.runs = []
        for directory in [directories] if isinstance(directories, (str, Path)) else directories:
            path = Path(directory) / "info.json"
            if not path.exists():
                raise SystemExit(f"--titans-from: {path} does not exist (run `titans_stages.py compute` first)")
            self.runs.append((Path(directory), json.loads(path.read_text())))
        self.tasks: dict[str, dict] = {}
        self.regions_by_record: dict[str, list] = {}
        self.embedding_kinds: dict[str, str] = {}
        for _, info in self.runs:
            for name, state in info["tasks"].items():
                if name not in self.tasks or state["status"] == "done":
                    self.tasks[name] = state
            self.regions_by_record.update(info["regions"])
            self.embedding_kinds.update(info["embedding_kinds"])
        self._tracks = None
        self._embeddings = None

    def novelty_form(self) -> str:
        """The novelty form of the run that supplied the tracks (the last run with them done)."""
        forms = [info.get("novelty_form", "adapted (the default before the combined form)") for _, info in self.runs
                 if any(name.startswith("tracks") and state["status"] == "done" for name, state in info["tasks"].items())]
        return forms[-1] if forms else "unknown"

    @property
    def test_run(self) -> bool:
        return any(info.get("test_run") for _, info in self.runs)

    def describe(self, what: str) -> str:
        """Sentences naming where and how `what` was computed."""
        parts = []
        for _, info in self.runs:
            d = info.get("device", {})
            done = sum(s["status"] == "done" for s in info["tasks"].values())
            parts.append(
                f"**{d.get('device', 'an unknown device')}** ({d.get('device_type', '?')}, memory backend "
                f"{d.get('backend', '?')}, torch {d.get('torch', '?')}; {done} of {len(info['tasks'])} tasks done, "
                f"{info.get('workers')} worker processes, {info.get('wall_s', 0) / 60:.1f} min, "
                f"{info.get('started_utc')} UTC, commit {info.get('commit')}, titans_cli fingerprint "
                f"{info.get('titans_fingerprint')})")
        text = (f"{what} were computed by `benchmarks/titans_stages.py compute` on " + "; and on ".join(parts)
                + "; the tables were computed from them on the CPU named above.")
        for _, info in self.runs:
            if info.get("test_run"):
                text += (f" **TEST RUN, not results**: compute ran with --limit-items {info.get('limit_items')} "
                         f"--limit-bases {info.get('limit_bases')}, so titans cells use truncated inputs or "
                         "item subsets.")
        return text

    def missing(self, prefix: str) -> str:
        """Table cell for results of the tasks named `prefix`... that are not there."""
        states = [s["status"] for n, s in self.tasks.items() if n.startswith(prefix)]
        bad = [s for s in states if s != "done"]
        if bad:
            return f"not computed on the device ({bad[0]})"
        if not states:
            return "not computed on the device (not asked for)"
        return "not in the device run (it has other items: the prepared full-mode ones)"

    # tracks

    def track(self, metric: str, record: str, length: int) -> np.ndarray:
        """Per-base values (NaN where no window covers a base), as read from the bedGraph."""
        if self._tracks is None:
            self._tracks = {}
            for directory, _ in self.runs:
                with np.load(directory / "tracks.npz") as data:
                    self._tracks.update({k: data[k] for k in data.files})
        key = f"{metric}|{record}|"
        if key + "values" not in self._tracks:
            raise NotComputed(f"no {metric} track of {record}")
        out = np.full(length, np.nan, dtype=np.float32)
        for s, e, v in zip(self._tracks[key + "starts"], self._tracks[key + "ends"], self._tracks[key + "values"]):
            out[s:e] = v
        return out

    def regions(self, record: str) -> list[tuple[int, int]]:
        if record not in self.regions_by_record:
            raise NotComputed(f"no regions of {record}")
        return [tuple(r) for r in self.regions_by_record[record]]

    # embeddings

    def embeddings(self, kind: str, ids: list[str], pool: str) -> np.ndarray:
        """(len(ids), features) float64; rows of items that were not computed are NaN (only in a
        test run); NotComputed when none of them was."""
        if self._embeddings is None:
            self._embeddings = {}
            for directory, _ in self.runs:
                for path in sorted(directory.glob("embeddings_*.npz")):
                    with np.load(path) as data:
                        self._embeddings.update({k: data[k] for k in data.files})
        index, dim = {}, None
        for key in self._embeddings:
            task, what = key.split("|")
            if what != pool:
                continue
            if self.embedding_kinds.get(task) != kind:
                continue
            for row, item_id in enumerate(self._embeddings[f"{task}|ids"]):
                index[str(item_id)] = (key, row)
            dim = self._embeddings[key].shape[1]
        hits = [index.get(i) for i in ids]
        if dim is None or not any(hits):
            raise NotComputed(f"{len(ids)} {kind} items, pool {pool}")
        out = np.full((len(ids), dim), np.nan)
        for row, hit in enumerate(hits):
            if hit is not None:
                out[row] = self._embeddings[hit[0]][hit[1]]
        return out


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare", help="write the model inputs (here, from ../shared/data)")
    p.add_argument("--dir", default=str(DEFAULT_INPUTS))
    c = sub.add_parser("compute", help="run the models over prepared inputs (on the device machine)")
    c.add_argument("--inputs", default=str(DEFAULT_INPUTS))
    c.add_argument("--out", required=True, help="folder for tracks.npz, embeddings_<n>.npz, info.json")
    c.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    c.add_argument("--workers", type=int, default=4, help="processes sharing the device")
    c.add_argument("--threads", type=int, default=None, help="CPU threads per worker (CPU runs)")
    c.add_argument("--time-limit", type=float, default=480.0,
                   help="seconds after which unfinished tasks are abandoned and the outputs written")
    c.add_argument("--only", nargs="+", metavar="PREFIX",
                   help="only the tasks whose names start with these prefixes (tracks:E. coli, "
                        "embed:phage, embed:domain, embed:brown ...); read several runs' folders with "
                        "--titans-from DIR1 DIR2")
    c.add_argument("--limit-items", type=int, default=None,
                   help="test run: this many evenly spaced items of every split")
    c.add_argument("--limit-bases", type=int, default=None,
                   help="test run: only the first bases (characters) of every record and item")
    args = ap.parse_args(argv)
    if args.stage == "prepare":
        prepare(Path(args.dir))
        return 0
    return compute(args)


if __name__ == "__main__":
    sys.exit(main())
