"""What every subcommand shares: input kind, model and device, progress on stderr, sharding."""

from __future__ import annotations

import atexit
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from rich.console import Console

from titans_cli.errors import TitansInputError

# The default model per input kind: the first of these that is installed (see default_model). Text:
# `text-base` reads books 0.48 bits/byte better than `text`, ranks sentences better for `summarize`
# (benchmarks/results/summarization_text_base.md) and its embeddings classify Brown genres better
# (models/heads/genre), at 1.6x `text`'s CPU time per byte, so it leads. DNA: `dna` is the model that
# streams a bacterial genome on 2 CPU cores in 3 minutes (`dna-base` is opt-in for GPUs).
DEFAULT_MODELS = {"sequence": ("dna",), "text": ("text-base", "text")}

# Typer help texts shared by the subcommands.
HELP_MODEL = "Shipped model name or model directory (default: dna for FASTA/FASTQ, text-base (else text) for text)."
HELP_DEVICE = "auto | cpu | cuda (auto: CUDA when a GPU is visible)."
HELP_BACKEND = "Memory-update implementation: auto | torch | numba | triton (auto: numba on CPU, triton on CUDA)."
HELP_OUTPUT = "Output file ('-' = stdout, the default)."
HELP_QUIET = "No progress bar, no summary on stderr."
HELP_ENCODING = "Encoding of text input (e.g. latin-1, cp1252, utf-16); FASTA/FASTQ are read as ASCII."

stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# The arguments of the running command (set by app.main), recorded in model and head cards.
ARGV: list[str] = []


def command_line() -> str:
    import shlex

    return "titans " + " ".join(shlex.quote(arg) for arg in ARGV)


def info(message: str, quiet: bool = False) -> None:
    """A log line on stderr (never stdout), printed by rank 0 only."""
    if not quiet and rank() == 0:
        stderr.print(message, markup=False)


def input_kind(sources: list[str], encoding: str = "utf-8") -> str:
    """"sequence" or "text" for all inputs (they must agree). Under a UTF-16/32 `encoding` every
    input is text: their NUL bytes would make the content sniffer call them binary."""
    from titans_cli.io.sequences import sniff_kind
    from titans_cli.io.text import codec_name

    if codec_name(encoding).startswith(("utf-16", "utf-32")):
        return "text"
    kinds = {}
    for source in sources:
        kinds[source] = sniff_kind(source)
        if kinds[source] == "text" and _sequence_name(source):
            raise _not_sequence_error(source)
    found = set(kinds.values())
    if len(found) > 1:
        listed = ", ".join(f"{name} ({kind})" for name, kind in kinds.items())
        raise TitansInputError(f"inputs mix sequences and text: {listed}")
    return found.pop()


SEQUENCE_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".frn", ".fas", ".fq", ".fastq", ".seq")


def _not_sequence_error(source: str) -> TitansInputError:
    """For a file named like FASTA/FASTQ that does not start with a header: the reader's own
    message, which gives the line and what was found there."""
    from titans_cli.io.sequences import iter_records

    try:
        next(iter(iter_records(source)), None)
    except TitansInputError as error:
        return error
    return TitansInputError(
        f"{source}: named like FASTA/FASTQ but does not start with a '>' or '@' header line "
        "(sequence before any header?)"
    )


def _sequence_name(source: str) -> bool:
    name = source.lower()
    for compressed in (".gz", ".bgz", ".bgzf"):
        name = name.removesuffix(compressed)
    return name.endswith(SEQUENCE_SUFFIXES)


@dataclass
class Session:
    loaded: object  # titans_cli.model.LoadedModel
    runtime: object  # titans_cli.device.Runtime
    kind: str
    model_name: str
    encoding: str = "utf-8"  # of text inputs

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer


def open_session(kind: str, model: str | None, device: str, backend: str, encoding: str = "utf-8") -> Session:
    from titans_cli.device import choose_runtime
    from titans_cli.model import load_model

    runtime = choose_runtime(device, backend)
    notice = runtime_notice(runtime, backend)
    if notice:
        info(f"titans: {notice}")
    name = model or default_model(kind)
    loaded = load_model(name, device=runtime.device)
    model_kind = "sequence" if loaded.config.tokenizer == "dna" else "text"
    if model_kind != kind:
        raise TitansInputError(
            f"model {name!r} reads {'DNA' if model_kind == 'sequence' else 'text'}, but the input is "
            f"{'FASTA/FASTQ' if kind == 'sequence' else 'text'}; pick another --model"
        )
    return Session(loaded, runtime, kind, name, encoding)


def default_model(kind: str) -> str:
    """The default model for an input kind ("sequence" or "text"): in the first folder of the model
    search path that has one of DEFAULT_MODELS[kind], the first of them (so models of one's own in
    $TITANS_MODELS win over the shipped ones)."""
    from titans_cli.model.files import CONFIG_FILE, model_search_path

    names = DEFAULT_MODELS[kind]
    for folder in model_search_path():
        for name in names:
            if (folder / name / CONFIG_FILE).is_file():
                return name
    return names[-1]  # none installed: load_model names it in its error


def runtime_notice(runtime, requested_backend: str) -> str | None:
    """A one-line warning when --backend auto had to settle for a slow path, else None."""
    if requested_backend == "auto" and runtime.device.type == "cuda" and runtime.backend == "torch":
        return ("triton is not installed: the GPU runs the unfused torch path, 20x slower or more "
                "(pip install 'titans-cli[gpu]', or a torch build that ships triton)")
    return None


def check_positive(name: str, value: int | float | None) -> None:
    if value is not None and not value > 0:
        raise TitansInputError(f"{name} must be a positive number, got {value}")


# -----------------------------------------------------------------------------
# Progress


def estimate_units(sources: list[str], kind: str, region: str | None = None) -> int | None:
    """Bases (or characters) to read, when that can be known cheaply: a region's length, a .fai's
    sum of lengths, a plain file's size. None for stdin and compressed files without an index."""
    if region is not None:
        try:
            from titans_cli.io.sequences import parse_region

            parsed = parse_region(region)
            if parsed.end is not None and parsed.start is not None:
                return parsed.end - parsed.start + 1
        except Exception:
            return None
        return None
    total = 0
    for source in sources:
        if source == "-" or not os.path.isfile(source):
            return None
        fai = Path(source + ".fai")
        if kind == "sequence" and fai.is_file():
            try:
                total += sum(int(line.split("\t")[1]) for line in fai.read_text().splitlines() if line.strip())
                continue
            except (ValueError, IndexError, OSError):
                return None
        with open(source, "rb") as handle:
            if handle.read(2) == b"\x1f\x8b":
                return None
        total += os.path.getsize(source)
    return total


class Progress:
    """Rich progress on stderr with bases/s or tokens/s and ETA; silent when stderr is not a
    terminal, under --quiet, and on ranks other than 0."""

    def __init__(self, total: int | None, unit: str, quiet: bool, description: str = "reading"):
        self.enabled = not quiet and sys.stderr.isatty() and rank() == 0
        self.unit = unit
        self._progress = None
        if self.enabled:
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,.0f}" + (" / {task.total:,.0f}" if total else "") + f" {unit}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=stderr,
                transient=True,
            )
            self._task = self._progress.add_task(description, total=total, rate="")

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int) -> None:
        if self._progress is not None:
            task = self._progress.tasks[0]
            elapsed = task.elapsed or 0.0
            rate = (task.completed + n) / elapsed if elapsed > 0 else 0.0
            self._progress.update(self._task, advance=n, rate=f"{rate:,.0f} {self.unit}/s")


def format_rate(tokens: int, seconds: float, unit: str) -> str:
    rate = tokens / max(seconds, 1e-9)
    where = f" on rank 0 of {world_size()}" if distributed() else ""
    return f"{tokens:,} {unit} in {seconds:.1f} s ({rate:,.0f} {unit}/s){where}"


# -----------------------------------------------------------------------------
# torchrun: shard records across ranks, gather results on rank 0 in input order


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def distributed() -> bool:
    return world_size() > 1


def init_distributed(runtime) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        from titans_cli.distributed import init_process_group

        init_process_group("nccl" if runtime.device.type == "cuda" else "gloo")
        # Tear the group down before the interpreter does: left to process exit, gloo's threads were
        # seen to abort a rank ("terminate called without an active exception", exit -6) after its
        # output was complete (titans_cli/distributed.py says why).
        atexit.register(_destroy_distributed)


def _destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def record_lengths(sources: list[str], kind: str, region: str | None) -> list[int]:
    """Length of every record in input order (a parse-only pass; for balancing shards)."""
    if kind == "text":
        return [os.path.getsize(source) for source in sources]
    from titans_cli.io.sequences import iter_records

    lengths = []
    for source in sources:
        for record in iter_records(source, region=region):
            lengths.append(sum(len(piece) for piece in record.pieces()))
    return lengths


def assign_shards(lengths: list[int], world: int) -> list[int]:
    """Longest-processing-time-first: each record, longest first, goes to the least-loaded rank
    (ties: lower rank, then input order) -> owner rank per record. Deterministic on every rank."""
    loads = [0] * world
    owners = [0] * len(lengths)
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        target = min(range(world), key=lambda r: (loads[r], r))
        owners[index] = target
        loads[target] += max(lengths[index], 1)
    return owners


def shard(records: Iterable, owners: list[int]) -> Iterator:
    """The records this rank owns (the others are skipped unread)."""
    me = rank()
    for record in records:
        if owners[record.index] == me:
            yield record


def gather_in_order(results: list[tuple[int, list]]) -> list[tuple[int, list]] | None:
    """Rank 0 receives every rank's (record index, items) and returns them in input order;
    other ranks get None."""
    import torch.distributed as dist

    gathered = [None] * world_size() if rank() == 0 else None
    dist.gather_object(results, gathered, dst=0)
    if rank() != 0:
        return None
    merged = [entry for part in gathered for entry in part]
    merged.sort(key=lambda entry: entry[0])
    return merged


@contextmanager
def sharded_run(session: Session, sources: list[str], region: str | None = None):
    """Yields (filter, finish): filter(records) keeps this rank's records; finish(results) gathers
    [(index, items)] on rank 0 (None elsewhere). A single process keeps everything."""
    if not distributed():
        yield (lambda records: records), (lambda results: results)
        return
    if "-" in sources:
        raise TitansInputError("under torchrun every rank reads the inputs: give files, not '-' (stdin)")
    init_distributed(session.runtime)
    owners = assign_shards(record_lengths(sources, session.kind, region), world_size())
    yield (lambda records: shard(records, owners)), gather_in_order


def records_for(session: Session, sources: list[str], region: str | None = None, keep_text: bool = False):
    from titans_cli.stream import sequence_records, text_records

    if session.kind == "sequence":
        return sequence_records(sources, session.tokenizer, region=region)
    if region is not None:
        raise TitansInputError("--region applies to FASTA input, not text")
    return text_records(sources, session.tokenizer, encoding=session.encoding, keep_text=keep_text)
