"""Bounded fuzz run of the input parsers (hypothesis-driven; no network, no GPU).

Every input must either parse or raise TitansInputError with a one-line message; any other
exception is a bug. Targets: the FASTA/FASTQ reader (plain, gzip, bgzip, truncated), region
queries through pyfaidx on fuzzed files, samtools region parsing, content sniffing, and the text
reader with the streaming sentence splitter.

    python benchmarks/fuzz_parsers.py --examples 5000      # per target
    python benchmarks/fuzz_parsers.py --examples 200 --seed 1
    python benchmarks/fuzz_parsers.py --write-section      # also benchmarks/results/fuzz_parsers.md

Prints how many inputs each target tried and every non-TitansInputError exception (type,
message, input); exits 1 when a bug was found. With --write-section the counts, seed, time and
bugs found become the fuzz_parsers section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import common  # noqa: E402  (at the start: its machine line records the load average from here)

from Bio import bgzf  # noqa: E402

from titans_cli.errors import TitansInputError  # noqa: E402
from titans_cli.io.inputs import open_input  # noqa: E402
from titans_cli.io.sequences import iter_records, parse_region, sniff_kind  # noqa: E402
from titans_cli.io.text import iter_sentences, iter_text_pieces  # noqa: E402

SEED_FILES = [REPO / "sample_data" / "lambda_phage.fa", REPO / "sample_data" / "lambda_reads_1.fq"]

# Pieces that steer random inputs toward parser states worth reaching.
TOKENS = [
    b">", b"@", b"+", b"\n", b"\r\n", b"\r", b"ACGT", b"acgtn", b"RYKMSWBDHVU", b"IIII", b"!~", b" ", b"\t",
    b"\x00", b"\xff", b"\xef\xbb\xbf", b"*", b"-", b"1", b">chr1 desc\n", b"@r1\nACGT\n+\nIIII\n", b"+r1\n",
    b"\x1f\x8b", b"BAM\x01", b"\x89PNG\r\n\x1a\n", b"Mr. ", b"Dr. ", b"e.g. ", b"\"Hi!\" ", b"\xe2\x80\x9c",
    b"\xc3\xa9", b"\xc3", b". ", b"? ", b"\n\n", b"CHAPTER I\n", b"# Title\n",
]


class _KeepOpen(io.BytesIO):
    def close(self):
        pass


def bgzip(data: bytes) -> bytes:
    buffer = _KeepOpen()
    writer = bgzf.BgzfWriter(fileobj=buffer, mode="wb")
    writer.write(data)
    writer.close()
    return buffer.getvalue()


def seed_slices() -> list[bytes]:
    slices = []
    for path in SEED_FILES:
        data = path.read_bytes()
        slices += [data[:600], data[-400:], data[1000:1800]]
    return slices


def fuzzed_bytes():
    """Random concatenations of tokens, raw bytes and slices of real files, sometimes mutated."""
    part = st.one_of(st.sampled_from(TOKENS), st.binary(max_size=8), st.sampled_from(seed_slices()))

    @st.composite
    def build(draw):
        data = bytearray(b"".join(draw(st.lists(part, max_size=30))))
        for _ in range(draw(st.integers(0, 3))):  # point mutations
            if data:
                position = draw(st.integers(0, len(data) - 1))
                data[position] = draw(st.integers(0, 255))
        container = draw(st.sampled_from(["none", "none", "gzip", "bgzf"]))
        if container == "gzip":
            data = bytearray(gzip.compress(bytes(data)))
        elif container == "bgzf":
            data = bytearray(bgzip(bytes(data)))
        if container != "none" and draw(st.booleans()):
            cut = draw(st.integers(0, len(data)))
            data = data[:cut]
        return bytes(data)

    return build()


class Findings:
    def __init__(self):
        self.tried = {}
        self.bugs = []

    def check(self, target: str, data, action) -> None:
        self.tried[target] = self.tried.get(target, 0) + 1
        try:
            action()
        except TitansInputError as error:
            if "\n" in str(error):
                self.bugs.append((target, "multi-line TitansInputError", str(error), data))
        except Exception as error:  # anything else escaping a parser is a bug
            self.bugs.append((target, f"{type(error).__name__}: {error}", traceback.format_exc(limit=6), data))


def run(examples: int, seed: int) -> Findings:
    findings = Findings()
    common = dict(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
    scratch = tempfile.mkdtemp(prefix="titans-fuzz-")

    @hypothesis_seed(seed)
    @settings(**common)
    @given(data=fuzzed_bytes(), piece_size=st.integers(1, 64), mask=st.booleans())
    def fuzz_records(data, piece_size, mask):
        def action():
            for record in iter_records(io.BytesIO(data), on_invalid="mask" if mask else "error",
                                       piece_size=piece_size):
                sequence = record.read()
                assert set(sequence) <= set(b"ACGTN"), "non-ACGTN byte in a piece"
                assert record.length == len(sequence) > 0, "length differs from bases read"
        findings.check("fasta/fastq reader", data, action)

    @hypothesis_seed(seed + 1)
    @settings(**{**common, "max_examples": max(1, examples // 5)})
    @given(data=fuzzed_bytes(), region=st.text(max_size=20), plain_name=st.booleans())
    def fuzz_regions(data, region, plain_name):
        path = os.path.join(scratch, "input.fa" if plain_name else "input.fa.gz")
        for suffix in ("", ".fai", ".gzi"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        with open(path, "wb") as handle:
            handle.write(data)

        def action():
            for record in iter_records(path, region=region or "chr1"):
                record.read()
        findings.check("region queries (pyfaidx)", (data, region), action)

    @hypothesis_seed(seed + 2)
    @settings(**common)
    @given(text=st.text(max_size=40), names=st.lists(st.text(max_size=10), max_size=3))
    def fuzz_region_syntax(text, names):
        findings.check("region syntax", (text, names), lambda: parse_region(text, names or None))

    @hypothesis_seed(seed + 3)
    @settings(**common)
    @given(data=fuzzed_bytes())
    def fuzz_sniff(data):
        def action():
            with open_input(io.BytesIO(data)) as opened:
                assert sniff_kind(opened) in ("sequence", "text")
        findings.check("content sniffing", data, action)

    @hypothesis_seed(seed + 4)
    @settings(**common)
    @given(data=fuzzed_bytes(), block=st.integers(1, 64), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    def fuzz_text(data, block, encoding):
        def action():
            pieces = list(iter_text_pieces(io.BytesIO(data), encoding=encoding, piece_bytes=block))
            text = "".join(piece.text for piece in pieces)
            for sentence in iter_sentences(pieces, max_buffer_chars=64):
                assert text[sentence.start : sentence.end] == sentence.text, "sentence offset not verbatim"
        findings.check("text reader + sentences", data, action)

    for target in (fuzz_records, fuzz_regions, fuzz_region_syntax, fuzz_sniff, fuzz_text):
        target()
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="inputs per target (regions: a fifth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-section", action="store_true", help="write benchmarks/results/fuzz_parsers.md")
    args = parser.parse_args()
    started = time.perf_counter()
    findings = run(args.examples, args.seed)
    elapsed = time.perf_counter() - started
    total = sum(findings.tried.values())
    print(f"fuzz_parsers: seed {args.seed}, {elapsed:.1f} s on {platform.machine()} "
          f"({os.cpu_count()} CPUs), python {platform.python_version()}")
    for target, count in findings.tried.items():
        print(f"  {target:28s} {count:8d} inputs")
    print(f"  {'total':28s} {total:8d} inputs, {len(findings.bugs)} non-TitansInputError exceptions")
    for target, summary, details, data in findings.bugs[:20]:
        print(f"\nBUG in {target}: {summary}\n  input: {data!r:.300}\n{details}")
    if args.write_section:
        write_section(findings, args, elapsed)
    return 1 if findings.bugs else 0


def write_section(findings: Findings, args, elapsed: float) -> None:
    total = sum(findings.tried.values())
    rows = [[target, f"{count:,}", str(sum(1 for bug in findings.bugs if bug[0] == target))]
            for target, count in findings.tried.items()]
    rows.append(["**total**", f"**{total:,}**", f"**{len(findings.bugs)}**"])
    body = "\n".join([
        f"Hypothesis-driven fuzzing of the input parsers (`python benchmarks/fuzz_parsers.py --examples "
        f"{args.examples} --seed {args.seed} --write-section`): **{total:,} inputs** in {elapsed:.0f} s, seed "
        f"{args.seed}, {args.examples:,} per target (a fifth for region queries, which write files). Inputs are "
        "random concatenations of FASTA/FASTQ/text tokens, raw bytes and slices of the sample files, point "
        "mutations, plain/gzip/BGZF containers, truncations. Every input must parse or raise TitansInputError "
        "with a one-line message; anything else counts as a bug.",
        "",
        common.md_table(["target", "inputs tried", "bugs found"], rows, "lrr"),
        "",
        ("Bugs found: " + "; ".join(sorted({f"{target}: {summary.splitlines()[0][:200]}"
                                            for target, summary, _, _ in findings.bugs})) + "."
         if findings.bugs else "No input escaped as anything but TitansInputError, and every message was one line."),
    ])
    path = common.write_section("fuzz_parsers", "Fuzzing the input parsers", body, False, elapsed)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
