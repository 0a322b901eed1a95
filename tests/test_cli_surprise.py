"""`titans surprise` end to end on small real sequence (cut from lambda) with a tiny model."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
from test_cli_fixtures import (  # noqa: F401 (fixtures)
    SAMPLE,
    TEXT,
    lambda_sequence,
    read_bedgraph,
    run_in_process,
    small_fasta,
    tiny_models,
    titans_env,
    write_fasta,
)


def check_full_coverage(rows, lengths: dict[str, int]) -> None:
    chroms = []
    for chrom, start, end, value in rows:
        if not chroms or chroms[-1][0] != chrom:
            assert chrom not in [c for c, _ in chroms], f"{chrom} appears in two separate blocks"
            chroms.append([chrom, 0])
        assert start == chroms[-1][1], f"{chrom}: gap or overlap at {start} (previous end {chroms[-1][1]})"
        assert end > start, f"{chrom}: empty interval {start}-{end}"
        assert math.isfinite(value), f"{chrom}:{start}: value {value} is not finite"
        chroms[-1][1] = end
    assert {c: e for c, e in chroms} == lengths, "every base of every record is covered, nothing beyond"
    assert [c for c, _ in chroms] == list(lengths), "records keep input order"


def test_bedgraph_is_valid_and_covers_every_base(titans_env, small_fasta, tmp_path, capsys):
    out = tmp_path / "track.bedgraph"
    result = run_in_process(["surprise", small_fasta, "--window", "50", "-o", out], capsys)
    assert result.code == 0, result.stderr
    text = out.read_text()
    assert text.startswith("track type=bedGraph"), "a track line IGV understands"
    rows = read_bedgraph(text)
    check_full_coverage(rows, {"chrA": 1500, "chrB": 900})
    assert all(0 <= v < 20 for *_, v in rows), "bits of a 5-letter alphabet model stay in a sane range"
    # the summary goes to stderr, one line per record, with bits/base
    assert "chrA" in result.stderr and "bits/base" in result.stderr
    assert result.stdout == "", "nothing on stdout when -o is given"


def test_stdin_and_gzip_equal_file_input(titans_env, small_fasta, tmp_path, capsys, monkeypatch):
    from_file = run_in_process(["surprise", small_fasta, "--window", "100", "-q"], capsys)
    from_stdin = run_in_process(["surprise", "-", "--window", "100", "-q"], capsys,
                                stdin=small_fasta.read_bytes(), monkeypatch=monkeypatch)
    zipped = tmp_path / "small.fa.gz"
    zipped.write_bytes(gzip.compress(small_fasta.read_bytes()))
    from_gzip = run_in_process(["surprise", zipped, "--window", "100", "-q"], capsys)
    assert from_file.code == from_stdin.code == from_gzip.code == 0, from_stdin.stderr + from_gzip.stderr
    assert from_file.stdout == from_stdin.stdout == from_gzip.stdout
    assert from_file.stderr == "", "--quiet prints nothing on stderr"


def test_windows_line_endings_just_work(titans_env, tmp_path, capsys):
    sequence = lambda_sequence()[:700]
    unix = write_fasta(tmp_path / "unix.fa", [("r", sequence)])
    dos = write_fasta(tmp_path / "dos.fa", [("r", sequence)], newline="\r\n")
    a = run_in_process(["surprise", unix, "-q"], capsys)
    b = run_in_process(["surprise", dos, "-q"], capsys)
    assert a.code == b.code == 0, b.stderr
    assert a.stdout == b.stdout


def test_region_of_bgzip_genome_has_chrom_coordinates(titans_env, capsys):
    result = run_in_process(["surprise", SAMPLE / "ecoli_k12_mg1655.fa.gz", "--region", "K-12-MG1655:1001-1600",
                             "--window", "100", "--format", "tsv", "-q"], capsys)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["chrom", "start", "end"]
    rows = [line.split("\t") for line in lines[1:]]
    assert rows[0][:3] == ["K-12-MG1655", "1000", "1100"], "1-based region start 1001 is BED 1000"
    assert rows[-1][2] == "1600", "1-based inclusive end 1600 is BED end 1600"
    assert len(rows) == 6


@pytest.mark.parametrize("metric", ["grad", "momentum"])
def test_memory_metrics_as_jsonl(titans_env, small_fasta, capsys, metric):
    result = run_in_process(["surprise", small_fasta, "--metric", metric, "--window", "300", "--format", "jsonl", "-q"], capsys)
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 5 + 3
    assert all(metric in row and row[metric] >= 0 and math.isfinite(row[metric]) for row in rows)


def test_bigwig_output_reads_back(titans_env, small_fasta, tmp_path, capsys):
    import pyBigWig

    out = tmp_path / "t.bw"
    result = run_in_process(["surprise", small_fasta, "--format", "bigwig", "-o", out, "-q"], capsys)
    assert result.code == 0, result.stderr
    bigwig = pyBigWig.open(str(out))
    assert bigwig.chroms() == {"chrA": 1500, "chrB": 900}
    values = bigwig.values("chrA", 0, 1500)
    assert len(values) == 1500 and all(math.isfinite(v) for v in values)


def test_regions_and_plot(titans_env, tmp_path, capsys):
    """A record made of two unrelated sequences: regions are BED6 inside the record, plot is a PNG."""
    sequence = lambda_sequence()
    rng = np.random.default_rng(0)
    foreign = "".join(rng.choice(list("GC"), size=600))  # a GC-only stretch: nothing like lambda
    record = sequence[:1500] + foreign + sequence[1500:2700]
    fasta = write_fasta(tmp_path / "mosaic.fa", [("mosaic", record)])
    bed, png = tmp_path / "novel.bed", tmp_path / "plot.png"
    result = run_in_process(["surprise", fasta, "--metric", "novelty", "--window", "50", "--regions", bed,
                             "--threshold", "2", "--smooth", "200", "--min-length", "100", "--plot", png,
                             "-o", tmp_path / "n.bedgraph"], capsys)
    assert result.code == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_full_coverage(read_bedgraph(tmp_path / "n.bedgraph"), {"mosaic": len(record)})
    for line in bed.read_text().splitlines():
        chrom, start, end, name, score, strand = line.split("\t")
        assert chrom == "mosaic" and 0 <= int(start) < int(end) <= len(record)
        assert 0 <= int(score) <= 1000 and strand == "."
    assert "novel region" in result.stderr


def test_text_rows_are_sentences(titans_env, tmp_path, capsys):
    document = tmp_path / "story.txt"
    document.write_text(TEXT, encoding="utf-8")
    result = run_in_process(["surprise", document, "-q"], capsys)
    assert result.code == 0, result.stderr
    header, *rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert header == ["id", "offset", "length", "tokens", "bits", "grad"]
    offsets = [int(r[1]) for r in rows]
    assert offsets == sorted(offsets) and len(rows) >= 15
    first = TEXT[int(rows[0][1]) : int(rows[0][1]) + int(rows[0][2])]
    assert first == "CHAPTER I. The Voyage", "the heading is a sentence of its own, offsets are characters"
    assert all(int(r[3]) > 0 and float(r[4]) > 0 for r in rows)
