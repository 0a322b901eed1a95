"""Shared helpers for the benchmark scripts: data paths, machine description, FASTA reading,
k-mer counting, the robust z-score region caller, markdown sections, and detection of the titans
CLI / Python API (titans rows run only when it exists; until then they say "pending").

Nothing here imports titans_cli at module import time: the baselines must run without it.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import importlib
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
# Quick mode (`--quick`, `make bench-quick`) is a smoke run: its sections go here (git-ignored) and
# into docs/RESULTS_quick.md, never over the committed full-mode sections in RESULTS_DIR.
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"
# TITANS_BENCH_CACHE: another cache folder (e.g. an empty one, to time a run from a cold cache).
CACHE_DIR = Path(os.environ.get("TITANS_BENCH_CACHE") or BENCH_DIR / ".cache")
DATA = Path(os.environ.get("TITANS_SHARED_DATA", REPO.parent / "shared" / "data"))
DNA_EVAL = DATA / "dna" / "eval"
DNA_TRAIN = DATA / "dna" / "train"
TEXT = DATA / "text"

PENDING = "pending"
# The benchmarks import titans_cli from this checkout even when it is not pip-installed.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
_LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_line(gpu: str | None = None) -> str:
    """One line naming the machine a section was produced on (`gpu`: the card's name, if one was used)."""
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_model()}, {os.cpu_count()} cores, {ram_gib():.0f} GiB RAM, {gpu or 'no GPU'}; "
            f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {git_commit()}; "
            f"1-min load average {_LOAD_AT_START:.1f} at start, {load_end:.1f} at end "
            f"(above {os.cpu_count()} = other jobs shared the CPU, timings inflated)")


# ----------------------------------------------------------------------------- sections


def md_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub markdown table; `align` is one char per column: l or r (default: first l, rest r)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    for row in rows:
        out.append("| " + " | ".join("" if c is None else str(c) for c in row) + " |")
    return "\n".join(out)


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return PENDING
    if isinstance(x, str):
        return x
    if isinstance(x, float) and not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def section_dir(quick: bool) -> Path:
    """Where a section is written: RESULTS_DIR, or QUICK_RESULTS_DIR in quick mode."""
    return QUICK_RESULTS_DIR if quick else RESULTS_DIR


def write_section(name: str, title: str, body: str, quick: bool, elapsed_s: float,
                  script: str | None = None, gpu: str | None = None, mode: str | None = None) -> Path:
    """Write benchmarks/results/<name>.md (quick mode: benchmarks/results/quick/<name>.md): a
    level-2 heading, the machine line, then `body`. `mode` overrides the words naming the mode."""
    directory = section_dir(quick)
    directory.mkdir(parents=True, exist_ok=True)
    mode = mode or ("**quick mode** (`--quick`: a smoke run on a small subsample, see the notes; "
                    "not comparable to the full tables)" if quick else "full mode")
    text = (f"## {title}\n\n"
            f"*Machine: {machine_line(gpu)}. Script: `benchmarks/{script or name}.py`, {mode}, "
            f"ran in {elapsed_s / 60:.1f} min.*\n\n{body.rstrip()}\n")
    path = directory / f"{name}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


class Timer:
    def __init__(self):
        self.t0 = time.time()

    @property
    def elapsed(self) -> float:
        return time.time() - self.t0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cuda_times_ms(fn, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls of fn() between CUDA events, after `warmup` calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def cuda_queued_ms(fn, calls: int, runs: int = 3) -> float:
    """Milliseconds per call of `calls` calls of fn() queued back to back between two CUDA events,
    with no synchronisation between them (the host prepares the next call while the GPU runs this
    one, as a stream of pieces runs); median of `runs`, after one call."""
    import statistics

    def queued():
        for _ in range(calls):
            fn()

    fn()
    return statistics.median(ms / calls for ms in cuda_times_ms(queued, warmup=0, repeats=runs))


# ----------------------------------------------------------------------------- sequences


def read_fasta(path: Path) -> list[tuple[str, str]]:
    """All records of a (gzipped) FASTA file as (id, uppercase sequence)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    records, name, parts = [], None, []
    with opener(path, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                if name is not None:
                    records.append((name, "".join(parts).upper()))
                name, parts = line[1:].split(None, 1)[0], []
            else:
                parts.append(line.strip())
    if name is not None:
        records.append((name, "".join(parts).upper()))
    return records


_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i


def encode(seq: str) -> np.ndarray:
    """A C G T -> 0 1 2 3; anything else (N) -> 4."""
    return _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def kmer_index(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For every start position i of a k-mer: its index in 4**k (A=0 ... T=3, first base most
    significant) and whether it is valid (contains no N)."""
    n = len(codes) - k + 1
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    idx = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for j in range(k):
        c = codes[j:j + n]
        bad |= c > 3
        idx = idx * 4 + np.minimum(c, 3)
    return idx, ~bad


def canonical_map(k: int) -> tuple[np.ndarray, int]:
    """Map every k-mer index to the index of its canonical class (k-mer or reverse complement,
    whichever is smaller), numbered 0..n_classes-1."""
    all_idx = np.arange(4**k)
    digits = (all_idx[:, None] // 4 ** np.arange(k - 1, -1, -1)) % 4
    rc_digits = 3 - digits[:, ::-1]
    rc = (rc_digits * 4 ** np.arange(k - 1, -1, -1)).sum(1)
    canon = np.minimum(all_idx, rc)
    classes, inverse = np.unique(canon, return_inverse=True)
    return inverse, len(classes)


def kmer_profile(seq_or_codes, ks=(4, 5, 6), canonical: bool = True) -> np.ndarray:
    """Concatenated k-mer frequency vectors (each k normalised to sum 1) of one sequence."""
    codes = encode(seq_or_codes) if isinstance(seq_or_codes, str) else seq_or_codes
    parts = []
    for k in ks:
        idx, ok = kmer_index(codes, k)
        if canonical:
            cmap, n_classes = canonical_map(k)
            counts = np.bincount(cmap[idx[ok]], minlength=n_classes).astype(np.float64)
        else:
            counts = np.bincount(idx[ok], minlength=4**k).astype(np.float64)
        parts.append(counts / max(counts.sum(), 1.0))
    return np.concatenate(parts)


# ----------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class CallerConfig:
    """The plain robust z-score region caller, with the semantics of `titans surprise --regions`:
    a centred moving average of the binned track over `smooth_bases`, robust z over the record,
    bins with z >= threshold, runs joined across gaps <= merge_gap, runs shorter than min_length
    dropped."""
    smooth_bases: int
    threshold: float = 3.0
    min_length: int = 1000
    merge_gap: int = 1000


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD) over the finite values; NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    fin = x[np.isfinite(x)]
    med = np.median(fin)
    scale = 1.4826 * np.median(np.abs(fin - med))
    if not scale > 0:
        scale = fin.std() or 1.0
    return (x - med) / scale


def _own_call_regions(starts, ends, values, cfg: CallerConfig) -> list[tuple[int, int]]:
    """Independent implementation of the same caller, used only when titans_cli's is absent."""
    width = max(1, int(np.median(ends - starts)))
    bins = max(1, int(round(cfg.smooth_bases / width)))
    fin = np.isfinite(values)
    kernel = np.ones(bins)
    sums = np.convolve(np.where(fin, values, 0.0), kernel, mode="same")
    counts = np.convolve(fin.astype(float), kernel, mode="same")
    smoothed = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    z = robust_z(smoothed)
    hits = np.flatnonzero(np.nan_to_num(z, nan=-np.inf) >= cfg.threshold)
    regions: list[list[int]] = []
    for i in hits:
        s, e = int(starts[i]), int(ends[i])
        if regions and s - regions[-1][1] <= cfg.merge_gap:
            regions[-1][1] = max(regions[-1][1], e)
        else:
            regions.append([s, e])
    return [(s, e) for s, e in regions if e - s >= cfg.min_length]


def caller_source() -> str:
    try:
        from titans_cli.tasks.regions import call_regions as _  # noqa: F401
        return "`titans_cli.tasks.regions.call_regions` (the caller behind `titans surprise --regions`)"
    except Exception:  # noqa: BLE001
        return "`benchmarks/common.py` (`titans_cli.tasks.regions` not importable at this commit)"


def call_regions(starts: np.ndarray, ends: np.ndarray, values: np.ndarray,
                 cfg: CallerConfig) -> list[tuple[int, int]]:
    """Regions (0-based half-open) called on one record's binned track [starts, ends)."""
    try:
        from titans_cli.tasks.regions import call_regions as titans_call
    except Exception:  # noqa: BLE001 - not there yet: same semantics, own code
        return _own_call_regions(starts, ends, values, cfg)
    regions, _ = titans_call("record", np.asarray(starts), np.asarray(ends), np.asarray(values, float),
                             threshold=cfg.threshold, smooth_bases=cfg.smooth_bases,
                             min_length=cfg.min_length, merge_gap=cfg.merge_gap)
    return [(r.start, r.end) for r in regions]


def mask_from_intervals(length: int, intervals) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    for s, e in intervals:
        mask[max(0, s):min(length, e)] = True
    return mask


def read_bed(path: Path) -> list[tuple[str, int, int, str]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        f = line.split("\t")
        rows.append((f[0], int(f[1]), int(f[2]), f[3] if len(f) > 3 else ""))
    return rows


# ----------------------------------------------------------------------------- titans


def titans_cmd() -> list[str] | None:
    """The titans CLI as an argv prefix, or None while it does not run yet."""
    candidates = []
    exe = Path(sys.executable).with_name("titans")
    if exe.exists():
        candidates.append([str(exe)])
    if shutil.which("titans"):
        candidates.append([shutil.which("titans")])
    candidates.append([sys.executable, "-m", "titans_cli"])
    for argv in candidates:
        try:
            r = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120,
                               cwd=REPO)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and "surprise" in r.stdout:
            return argv
    return None


def titans_subcommand_ok(argv: list[str] | None, sub: str) -> bool:
    if argv is None:
        return False
    r = subprocess.run(argv + [sub, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    return r.returncode == 0


def titans_api(*names: str):
    """The titans_cli module when it exports every function in `names`, else None."""
    try:
        mod = importlib.import_module("titans_cli")
    except Exception as exc:  # noqa: BLE001 - any import failure means "not there yet"
        log(f"titans_cli does not import: {str(exc)[:200]}")
        return None
    if all(callable(getattr(mod, n, None)) for n in names):
        return mod
    return None


def run_titans(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run one titans CLI command; raise with its stderr on failure."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


def read_bedgraph_to_array(path: Path, lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """Per-base float arrays (NaN where the bedGraph has no value) from a bedGraph file."""
    out = {name: np.full(n, np.nan, dtype=np.float32) for name, n in lengths.items()}
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        for line in fh:
            if not line.strip() or line.startswith(("track", "browser", "#")):
                continue
            chrom, s, e, v = line.split()[:4]
            if chrom in out:
                out[chrom][int(s):int(e)] = float(v)
    return out
