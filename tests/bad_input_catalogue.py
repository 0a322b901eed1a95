"""The bad inputs of issue 6, in one place: the files, damaged model directories and the `titans`
command lines. tests/test_cli_errors.py runs every case in-process on tiny models (CI);
benchmarks/bad_inputs.py runs the same cases through the real CLI and shipped models and writes the
table in docs/RESULTS.md, so the table and the tests cannot drift apart.

The rule for a bad input: exit code 2, exactly one stderr line `titans: error: ...` that contains
every word of `names` (the file, and the record and line where they apply), no traceback, no
output file, and a previous file of the same name left as it was. Cases with `ok_like` must work:
exit 0 with the output of the named control case (Windows line endings, `--encoding`).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = "previous output of the same name: must survive a failed run\n"
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # linux/prctl.h, linux/capability.h

SURPRISE = ["surprise", "--quiet", "--device", "cpu"]
SUMMARIZE = ["summarize", "--quiet", "--device", "cpu", "--sentences", "2"]
EMBED = ["embed", "--quiet", "--device", "cpu"]
CLASSIFY = ["classify", "--quiet", "--device", "cpu"]


@dataclass(frozen=True)
class Case:
    input: str  # the bad input, in the words
    args: tuple  # titans arguments; {file.ext} = a file of make_inputs, {dir} its folder, {models} damaged models
    names: tuple = ()  # words the one-line message must contain
    output: str | None = ".out"  # extension of the -o file the runner adds; None: the case gives its own -o
    ok_like: str | None = None  # must exit 0 with the output of this control case
    modes_bind_root: bool = False  # root ignores file modes: run it with CAP_DAC_OVERRIDE dropped
    note: str = ""

    @property
    def is_control(self) -> bool:
        return self.input.startswith("control:")

    @property
    def must_fail(self) -> bool:
        return not self.is_control and self.ok_like is None


def case(input, args, names=(), **options) -> Case:
    return Case(input, tuple(args), tuple(names), **options)


S, T, E, C = SURPRISE, SUMMARIZE, EMBED, CLASSIFY
CASES = [
    case("control: a good FASTA", S + ["{good.fa}"]),
    case("control: good FASTQ", S + ["{reads.fq}"]),
    case("control: good UTF-8 text", T + ["{doc.txt}"]),
    case("control: UTF-8 twin of the latin-1 text", T + ["{doc_utf8.txt}"]),
    case("empty file (FASTA name)", S + ["{empty.fa}"], ["empty.fa", "empty"]),
    case("empty file (text)", T + ["{empty.txt}"], ["empty.txt", "empty"]),
    case("only blank lines", S + ["{blank.fa}"], ["blank.fa", "empty"]),
    case("empty stdin", S + ["-"], ["<stdin>", "empty"], note="stdin is empty"),
    case("FASTA header with no sequence (only record)", S + ["{lonely.fa}"], ["lonely.fa", "'lonely'", "line 1"]),
    case("FASTA header with no sequence (between records)", S + ["{hole.fa}"], ["hole.fa", "'hollow'", "line 3"],
         note="the record before it was already streamed"),
    case("sequence before any header", S + ["{noheader.fa}"], ["noheader.fa", "line 1", "before any header"]),
    case("digit in sequence", S + ["{digits.fa}"], ["digits.fa", "'chr1'", "line 3", "'7'"]),
    case("`*` in sequence", S + ["{star.fa}"], ["star.fa", "'chr1'", "line 3", "'*'"]),
    case("control byte (0x01) in sequence", S + ["{control.fa}"], ["control.fa", "'chr1'", "line 3", "\\x01"]),
    case("protein FASTA", S + ["{protein.fa}"], ["protein.fa", "line 2", "'L'"]),
    case("truncated gzip", S + ["{truncated.fa.gz}"], ["truncated.fa.gz", "truncated"]),
    case("truncated bgzip (cut inside a block)", S + ["{truncated_bgzip.fa.gz}"], ["truncated_bgzip.fa.gz", "truncated"]),
    case("bgzip without its EOF block", S + ["{no_eof_block.fa.gz}"], ["no_eof_block.fa.gz", "EOF"]),
    case("PNG given as FASTA", S + ["{picture.fa}"], ["picture.fa", "PNG"]),
    case("PNG given as text", T + ["{picture.txt}"], ["picture.txt", "PNG"]),
    case("PNG under its own name", S + ["{picture.png}"], ["picture.png", "PNG"]),
    case("FASTQ quality shorter than sequence", S + ["{short_quality.fq}"], ["short_quality.fq", "'r1'", "quality"]),
    case("FASTQ quality longer than sequence", S + ["{long_quality.fq}"], ["long_quality.fq", "'r1'", "quality"]),
    case("`--region` past the end of the record", S + ["{good.fa}", "--region", "chr1:1500-3000"], ["good.fa", "chr1", "end"]),
    case("`--region` starting past the end", S + ["{good.fa}", "--region", "chr1:5001-6000"], ["good.fa", "chr1"]),
    case("`--region` naming an absent record", S + ["{good.fa}", "--region", "chrZ:1-100"], ["good.fa", "chrZ"]),
    case("`--region` start after end", S + ["{good.fa}", "--region", "chr1:900-100"], ["chr1:900-100"]),
    case("damaged bgzip (bytes flipped inside a block)", S + ["{damaged.fa.gz}"], ["damaged.fa.gz", "corrupt"]),
    case("`--region` in a damaged bgzip (index built now)", S + ["{damaged.fa.gz}", "--region", "chr1:235001-235100"],
         ["damaged.fa.gz", "bgzf"]),
    case("`--region` in a damaged bgzip (index from before the damage)",
         S + ["{damaged_indexed.fa.gz}", "--region", "chr1:235001-235100"],
         ["damaged_indexed.fa.gz", "chr1", "235001-235100"]),
    case("`--region` on plain gzip (not indexable)", S + ["{plain_gzip.fa.gz}", "--region", "chr1:1-100"],
         ["plain_gzip.fa.gz", "bgzip"]),
    case("unreadable file (mode 000)", S + ["{unreadable.fa}"], ["unreadable.fa", "permission"], modes_bind_root=True),
    case("missing file", S + ["{dir}/missing.fa"], ["missing.fa", "no such file"]),
    case("a directory", S + ["{folder.fa}"], ["folder.fa", "directory"]),
    case("non-UTF-8 (latin-1) text", T + ["{latin1.txt}"], ["latin1.txt", "byte offset", "--encoding"]),
    case("non-UTF-8 text with `--encoding latin-1`", T + ["{latin1.txt}", "--encoding", "latin-1"],
         ok_like="control: UTF-8 twin of the latin-1 text"),
    case("unknown `--encoding`", T + ["{latin1.txt}", "--encoding", "klingon"], ["klingon"]),
    case("Windows line endings, FASTA", S + ["{good_crlf.fa}"], ok_like="control: a good FASTA"),
    case("Windows line endings, FASTQ", S + ["{reads_crlf.fq}"], ok_like="control: good FASTQ"),
    case("Windows line endings, text", T + ["{doc_crlf.txt}"], ok_like="control: good UTF-8 text"),
    case("`--window 0`", S + ["{good.fa}", "--window", "0"], ["--window", "0"]),
    case("`--window -5`", S + ["{good.fa}", "--window", "-5"], ["--window", "-5"]),
    case("`--window abc` (not a number)", S + ["{good.fa}", "--window", "abc"], ["--window"]),
    case("`--smooth -100`", S + ["{good.fa}", "--smooth", "-100"], ["--smooth"]),
    case("`--min-length -1`", S + ["{good.fa}", "--min-length", "-1"], ["--min-length"]),
    case("`--threshold nan`", S + ["{good.fa}", "--threshold", "nan"], ["--threshold"]),
    case("embed `--window 0`", E + ["{good.fa}", "--per", "window", "--window", "0"], ["--window"], output=".npy"),
    case("embed `--step -10`", E + ["{good.fa}", "--per", "window", "--window", "100", "--step", "-10"], ["--step"],
         output=".npy"),
    case("embed `--step 0`", E + ["{good.fa}", "--per", "window", "--window", "100", "--step", "0"], ["--step"],
         output=".npy"),
    case("summarize `--sentences -1`", T + ["{doc.txt}", "--sentences", "-1"], ["--sentences"]),
    case("summarize `--ratio 1.5`", T + ["{doc.txt}", "--ratio", "1.5"], ["--ratio"]),
    case("unknown `--format`", S + ["{good.fa}", "--format", "bam"], ["--format", "bam"]),
    case("unknown summarize `--format`", T + ["{doc.txt}", "--format", "xml"], ["--format", "xml"]),
    case("unknown `--metric`", S + ["{good.fa}", "--metric", "entropy"], ["--metric", "entropy"]),
    case("`--context-mixing` on text", S + ["{doc.txt}", "--context-mixing"], ["--context-mixing", "DNA"]),
    case("`--context-mixing` with `--metric grad`", S + ["{good.fa}", "--context-mixing", "--metric", "grad"],
         ["--context-mixing", "bits"]),
    case("unknown `--device`", S[:2] + ["{good.fa}", "--device", "tpu"], ["--device", "tpu"]),
    case("unknown option", S + ["{good.fa}", "--no-such-option"], ["--no-such-option"]),
    case("`--plot` to an unsupported extension", S + ["{good.fa}", "--plot", "{dir}/plot.pdf"], [".png", "plot.pdf"]),
    case("embed output extension unknown", E + ["{good.fa}", "-o", "{dir}/vectors.parquet"], ["parquet"], output=None),
    case("output into a missing directory", S + ["{good.fa}", "-o", "{dir}/missing/out.bg"], ["missing", "does not exist"],
         output=None),
    case("summarize given DNA", T + ["{good.fa}"], ["good.fa", "text"]),
    case("classify with an unknown head", C + ["{good.fa}", "--head", "nosuchhead"], ["nosuchhead"]),
    case("model: unknown name", S + ["{good.fa}", "--model", "nosuchmodel"], ["nosuchmodel"]),
    case("model: text model on DNA", S + ["{good.fa}", "--model", "text"], ["'text'", "FASTA/FASTQ"]),
    case("model: corrupted weights (one byte flipped)", S + ["{good.fa}", "--model", "{models}/corrupted"],
         ["corrupted/model.safetensors", "sha256"]),
    case("model: truncated weights", S + ["{good.fa}", "--model", "{models}/truncated"],
         ["truncated/model.safetensors", "sha256"]),
    case("model: truncated weights, sha256 updated to match", S + ["{good.fa}", "--model", "{models}/truncated_rehashed"],
         ["truncated_rehashed/model.safetensors", "safetensors"]),
    case("model: weights of another model, sha256 updated", S + ["{good.fa}", "--model", "{models}/mismatched"],
         ["mismatched/model.safetensors", "config.json"]),
    case("model: weights of another model, config untouched", S + ["{good.fa}", "--model", "{models}/foreign_weights"],
         ["foreign_weights/model.safetensors", "sha256"]),
    case("model: config.json not valid JSON", S + ["{good.fa}", "--model", "{models}/bad_json"],
         ["bad_json/config.json", "JSON"]),
    case("model: config.json with n_layers -1", S + ["{good.fa}", "--model", "{models}/bad_value"],
         ["bad_value/config.json", "n_layers"]),
    case("model: weights file missing", S + ["{good.fa}", "--model", "{models}/no_weights"],
         ["no_weights/model.safetensors", "missing"]),
    case("model: a pickle instead of safetensors", S + ["{good.fa}", "--model", "{models}/pickled"],
         ["pickled/model.safetensors", "missing"], note="a pytorch_model.bin is never unpickled"),
]


# --------------------------------------------------------------------------------------------- inputs


def lambda_sequence() -> str:
    return "".join(line.strip() for line in (REPO / "sample_data" / "lambda_phage.fa").read_text().splitlines()[1:])


def fasta_text(records: list[tuple[str, str]], newline: str = "\n", width: int = 60) -> str:
    lines = []
    for name, sequence in records:
        lines.append(f">{name}")
        lines += [sequence[i : i + width] for i in range(0, len(sequence), width)]
    return newline.join(lines) + newline


def fastq_text(reads: list[tuple[str, str]], newline: str = "\n") -> str:
    return "".join(newline.join([f"@{name}", seq, "+", "I" * len(seq)]) + newline for name, seq in reads)


def bgzip(data: bytes, scratch: Path) -> bytes:
    from Bio import bgzf

    with bgzf.BgzfWriter(str(scratch), "wb") as writer:
        writer.write(data)
    compressed = scratch.read_bytes()
    scratch.unlink()
    return compressed


TEXT = (
    "The harbour was quiet in the early morning. Fishing boats rocked at their moorings.\n\n"
    "A woman walked along the quay, counting the boats. She stopped at the last one and called out.\n\n"
    "Nobody answered. The gulls circled overhead and the tide turned slowly.\n"
)
BGZF_EOF_BYTES = 28


def make_inputs(d: Path) -> dict[str, Path]:
    """Every input file of CASES, written into `d` (keys: file names)."""
    sequence = lambda_sequence()
    good = sequence[:2000]
    files: dict[str, Path] = {}

    def put(name: str, content: bytes | str) -> None:
        files[name] = d / name
        files[name].write_bytes(content.encode() if isinstance(content, str) else content)

    put("good.fa", fasta_text([("chr1", good)]))
    put("good_crlf.fa", fasta_text([("chr1", good)], newline="\r\n"))
    reads = [(f"read{i}", sequence[i * 150 : i * 150 + 150]) for i in range(4)]
    put("reads.fq", fastq_text(reads))
    put("reads_crlf.fq", fastq_text(reads, newline="\r\n"))
    put("doc.txt", TEXT)
    put("doc_crlf.txt", TEXT.replace("\n", "\r\n"))
    accented = TEXT.replace("woman", "femme \u00e9l\u00e9gante")
    put("doc_utf8.txt", accented)
    put("latin1.txt", accented.encode("latin-1"))
    put("empty.fa", b"")
    put("empty.txt", b"")
    put("blank.fa", "\n\n   \n\t\n")
    put("lonely.fa", ">lonely\n")
    put("hole.fa", f">first\n{good[:120]}\n>hollow\n>third\n{good[:120]}\n")
    put("noheader.fa", f"{good[:60]}\n>chr1\n{good[:120]}\n")
    put("digits.fa", f">chr1\n{good[:60]}\n{good[60:90]}7{good[91:120]}\n")
    put("star.fa", f">chr1\n{good[:60]}\n{good[60:100]}*\n")
    put("control.fa", f">chr1\n{good[:60]}\n{good[60:80]}\x01{good[81:120]}\n")
    put("protein.fa", ">sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSH\n")
    longer = fasta_text([("chr1", sequence[:30000])]).encode()
    whole = gzip.compress(longer)
    put("truncated.fa.gz", whole[: len(whole) // 2])
    blocks = bgzip(longer, d / "scratch.bgz")
    put("truncated_bgzip.fa.gz", blocks[: len(blocks) // 2])
    put("no_eof_block.fa.gz", blocks[:-BGZF_EOF_BYTES])
    put("plain_gzip.fa.gz", gzip.compress(fasta_text([("chr1", good)]).encode()))
    # 240 kb in four BGZF blocks; bytes flipped in the last one, past what is read to sniff the file
    intact = bgzip(fasta_text([("chr1", (sequence * 5)[:240_000])]).encode(), d / "scratch.bgz")
    damaged = bytearray(intact)
    at = int(len(intact) * 0.9)
    damaged[at : at + 200] = bytes(byte ^ 0x55 for byte in damaged[at : at + 200])
    put("damaged.fa.gz", bytes(damaged))
    put("damaged_indexed.fa.gz", intact)
    index_stale_copy(files["damaged_indexed.fa.gz"], bytes(damaged))
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
    for name in ("picture.fa", "picture.txt", "picture.png"):
        put(name, png)
    put("short_quality.fq", "@r1\nACGTACGTAC\n+\nIIII\n")
    put("long_quality.fq", "@r1\nACGT\n+\nIIIIIIII\n@r2\nACGT\n+\nIIII\n")
    put("unreadable.fa", fasta_text([("chr1", good)]))
    files["unreadable.fa"].chmod(0)
    files["folder.fa"] = d / "folder.fa"
    files["folder.fa"].mkdir()
    return files


def index_stale_copy(path: Path, damaged: bytes) -> None:
    """Index the intact BGZF file at `path` (.fai, .gzi), then damage it while keeping the index
    newer than the file, so that pyfaidx trusts the index and only a read of the bases fails."""
    import os

    import pyfaidx

    pyfaidx.Faidx(str(path), build_index=True).close()
    path.write_bytes(damaged)
    later = path.stat().st_mtime + 100
    for index in (Path(f"{path}.fai"), Path(f"{path}.gzi")):
        os.utime(index, (later, later))


def damage_models(dna_model: Path, other_weights: Path, d: Path) -> None:
    """Damaged copies of the model directory `dna_model` in `d/<damage>`; `other_weights` is the
    model.safetensors of a different model."""
    from titans_cli.model.files import sha256_of_file

    def copy(name: str) -> Path:
        return Path(shutil.copytree(dna_model, d / name))

    def rewrite_config(path: Path, **changes) -> None:
        document = json.loads((path / "config.json").read_text())
        document.update(changes)
        (path / "config.json").write_text(json.dumps(document, indent=2))

    def halve(weights: Path) -> None:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    weights = copy("corrupted") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    halve(copy("truncated") / "model.safetensors")
    path = copy("truncated_rehashed")  # the safetensors parser, not the hash, must catch this one
    halve(path / "model.safetensors")
    rewrite_config(path, weights_sha256=sha256_of_file(path / "model.safetensors"))
    path = copy("mismatched")
    shutil.copyfile(other_weights, path / "model.safetensors")
    rewrite_config(path, weights_sha256=sha256_of_file(path / "model.safetensors"))
    shutil.copyfile(other_weights, copy("foreign_weights") / "model.safetensors")
    (copy("bad_json") / "config.json").write_text('{"format_version": 1, "d_model": 128,')
    rewrite_config(copy("bad_value"), n_layers=-1)
    (copy("no_weights") / "model.safetensors").unlink()
    path = copy("pickled")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")


def fill(args, places: dict[str, str]) -> list[str]:
    """Arguments with {name} replaced by places[name]."""
    return [re.sub(r"\{([^}]+)\}", lambda match: places[match.group(1)], arg) for arg in args]


def drop_file_mode_override() -> None:
    """preexec_fn of a child process: root loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (from
    the bounding set, so for good), and file modes bind it like any user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def problems(case: Case, code: int, stderr: str) -> list[str]:
    """How a failing run breaks the rule (empty when it follows it); output files are checked by
    the caller."""
    found = []
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Traceback" in stderr:
        found.append("traceback on stderr")
    if code != 2:
        found.append(f"exit {code}, expected 2")
    if len(lines) != 1:
        found.append(f"{len(lines)} stderr lines, expected 1")
    elif not lines[0].startswith("titans: error: "):
        found.append("stderr line does not start with 'titans: error:'")
    missing = [name for name in case.names if name not in " ".join(lines)]
    if missing:
        found.append("message does not name " + ", ".join(f"`{m}`" for m in missing))
    return found
