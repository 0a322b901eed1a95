"""Track and region files that IGV, bedtools and UCSC tools accept: validity, coverage, round trips."""

import json
import os

import numpy as np
import pyBigWig
import pytest

from titans_cli.errors import TitansInputError
from titans_cli.io.tracks import (
    BedRegion,
    RowWriter,
    bed_score,
    open_track_writer,
    window_bounds,
    write_bed6,
    write_track,
)


def read_bedgraph(path):
    """Parse a bedGraph and check it the way bedGraphToBigWig/IGV would: 4 columns, integers,
    0-based half-open, each chrom's lines together, sorted and non-overlapping."""
    rows = []
    seen_chroms = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith("track"):
                assert number == 1, "a track line may only be the first line"
                continue
            fields = line.rstrip("\n").split("\t")
            assert len(fields) == 4, f"line {number}: expected 4 tab-separated columns, got {fields}"
            chrom, start, end, value = fields[0], int(fields[1]), int(fields[2]), float(fields[3])
            assert 0 <= start < end, f"line {number}: bad interval {start}-{end}"
            if not seen_chroms or seen_chroms[-1] != chrom:
                assert chrom not in seen_chroms, f"line {number}: {chrom} lines are not contiguous"
                seen_chroms.append(chrom)
            elif rows:
                assert start >= rows[-1][2], f"line {number}: overlaps or unsorted after {rows[-1]}"
            rows.append((chrom, start, end, value))
    return rows


def assert_covers_every_base(rows, chrom, first, last):
    spans = [(start, end) for c, start, end, _ in rows if c == chrom]
    assert spans, f"no intervals for {chrom}"
    assert spans[0][0] == first and spans[-1][1] == last, f"{chrom}: covers {spans[0][0]}-{spans[-1][1]}, not {first}-{last}"
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start == end, f"{chrom}: gap or overlap between {end} and {start}"


def expand(rows, chrom, length):
    """Per-base values of a track (NaN where uncovered)."""
    values = np.full(length, np.nan)
    for c, start, end, value in rows:
        if c == chrom:
            values[start:end] = value
    return values


def test_window_bounds_cover_record_and_last_window_is_shorter():
    starts, ends = window_bounds(50, 48502)
    assert len(starts) == 971 and starts[0] == 0 and ends[-1] == 48502 and ends[-1] - starts[-1] == 2
    assert np.all(starts[1:] == ends[:-1])
    starts, ends = window_bounds(10, 25, offset=100)
    assert starts.tolist() == [100, 110, 120] and ends.tolist() == [110, 120, 125]


def test_bedgraph_windows_full_coverage_and_values(tmp_path):
    path = str(tmp_path / "t.bedgraph")
    rng = np.random.default_rng(0)
    records = {"gi|9626243|ref|NC_001416.1|": 48502, "plasmid": 1001, "tiny": 3}
    per_base = {}
    with open_track_writer(path, "bedgraph") as writer:
        for chrom, length in records.items():
            values = np.round(rng.normal(2.0, 0.5, -(-length // 50)), 3)
            if len(values) > 6:
                values[3:6] = values[2]  # equal neighbours may be merged
            writer.add_windows(chrom, values, 50, length)
            per_base[chrom] = np.repeat(values, 50)[:length]
    rows = read_bedgraph(path)
    assert [row[0] for row in rows][0] == "gi|9626243|ref|NC_001416.1|"
    for chrom, length in records.items():
        assert_covers_every_base(rows, chrom, 0, length)
        np.testing.assert_allclose(expand(rows, chrom, length), per_base[chrom], rtol=1e-5)
    assert len(rows) < sum(-(-n // 50) for n in records.values()), "equal neighbours should merge"


def test_bedgraph_region_offset_uses_chrom_coordinates(tmp_path):
    path = str(tmp_path / "r.bedgraph")
    with open_track_writer(path, "bedgraph", track_name="titans bits", description='says "hi"') as writer:
        writer.add_windows("chr1", [1.0, 2.0, 3.0], 10, 25, offset=1000, chrom_length=5000)
    with open(path) as handle:
        assert handle.readline() == "track type=bedGraph name=\"titans bits\" description=\"says 'hi'\"\n"
    rows = read_bedgraph(path)
    assert rows == [("chr1", 1000, 1010, 1.0), ("chr1", 1010, 1020, 2.0), ("chr1", 1020, 1025, 3.0)]


@pytest.mark.parametrize(
    "calls, error, fragment",
    [
        ([("chr1", 0, 10, 1.0), ("chr1", 5, 20, 1.0)], ValueError, "overlap"),
        ([("chr1", 10, 20, 1.0), ("chr1", 0, 5, 1.0)], ValueError, "out of order"),
        ([("chr1", 10, 10, 1.0)], ValueError, "empty or reversed"),
        ([("chr1", -5, 10, 1.0)], ValueError, "negative"),
        ([("chr1", 0, 10, float("nan"))], ValueError, "non-finite"),
        ([("chr 1", 0, 10, 1.0)], ValueError, "whitespace"),
        ([("a", 0, 10, 1.0), ("b", 0, 10, 1.0), ("a", 10, 20, 1.0)], TitansInputError, "occurs more than once"),
    ],
)
@pytest.mark.parametrize("format", ["bedgraph", "bigwig", "wig", "tsv", "jsonl"])
def test_invalid_intervals_rejected_and_no_file_left(tmp_path, calls, error, fragment, format):
    path = tmp_path / f"t.{format}"
    with pytest.raises(error, match=fragment):
        with open_track_writer(str(path), format) as writer:
            for call in calls:
                writer.add_interval(*call)
    assert not path.exists(), "a failed track must not leave a file"
    assert os.listdir(tmp_path) == [], f"temporary files left behind: {os.listdir(tmp_path)}"


def test_wrong_window_count_and_beyond_chrom_length(tmp_path):
    with pytest.raises(ValueError, match="expected 3"):
        with open_track_writer(str(tmp_path / "a.bedgraph"), "bedgraph") as writer:
            writer.add_windows("chr1", [1.0, 2.0], 10, 25)
    with pytest.raises(ValueError, match="beyond chrom length"):
        with open_track_writer(str(tmp_path / "b.bedgraph"), "bedgraph", chrom_lengths={"chr1": 20}) as writer:
            writer.add_interval("chr1", 0, 25, 1.0)


def test_unknown_format_is_a_usage_error(tmp_path):
    with pytest.raises(TitansInputError, match="unknown track format 'bam'"):
        open_track_writer(str(tmp_path / "x"), "bam")


def test_bigwig_round_trip(tmp_path):
    path = str(tmp_path / "t.bw")
    rng = np.random.default_rng(3)
    lengths = {"chrA": 10_007, "chrB": 55}
    expected = {}
    with open_track_writer(path, "bigwig") as writer:
        for chrom, length in lengths.items():
            values = rng.random(-(-length // 100)) * 8
            writer.add_windows(chrom, values, 100, length)
            expected[chrom] = values
    bigwig = pyBigWig.open(path)
    try:
        assert bigwig.isBigWig() and bigwig.chroms() == lengths
        for chrom, values in expected.items():
            intervals = bigwig.intervals(chrom)
            starts, ends = window_bounds(100, lengths[chrom])
            assert [(s, e) for s, e, _ in intervals] == list(zip(starts.tolist(), ends.tolist()))
            np.testing.assert_allclose([v for _, _, v in intervals], values, rtol=1e-6)
    finally:
        bigwig.close()


def test_bigwig_region_declares_full_chrom_size(tmp_path):
    path = str(tmp_path / "r.bw")
    with open_track_writer(path, "bigwig") as writer:
        writer.add_windows("chr1", [1.0, 2.0], 50, 80, offset=1000, chrom_length=4_639_675)
    bigwig = pyBigWig.open(path)
    assert bigwig.chroms() == {"chr1": 4_639_675}
    assert bigwig.intervals("chr1") == ((1000, 1050, 1.0), (1050, 1080, 2.0))
    bigwig.close()


def read_fixed_step_wig(path):
    rows = []
    chrom = position = span = step = None
    with open(path) as handle:
        for line in handle:
            if line.startswith("track"):
                continue
            if line.startswith("fixedStep"):
                fields = dict(item.split("=") for item in line.split()[1:])
                chrom, step, span = fields["chrom"], int(fields["step"]), int(fields["span"])
                position = int(fields["start"]) - 1  # WIG is 1-based
                continue
            rows.append((chrom, position, position + span, float(line)))
            position += step
    return rows


def test_wig_round_trip_with_short_last_window(tmp_path):
    path = str(tmp_path / "t.wig")
    with open_track_writer(path, "wig", track_name="bits") as writer:
        writer.add_windows("chr1", [1.5, 2.5, 3.5], 10, 25)
        writer.add_windows("chr2", [7.0], 10, 4)
    text = open(path).read()
    assert "fixedStep chrom=chr1 start=1 step=10 span=10" in text
    assert "fixedStep chrom=chr1 start=21 step=5 span=5" in text
    assert read_fixed_step_wig(path) == [
        ("chr1", 0, 10, 1.5), ("chr1", 10, 20, 2.5), ("chr1", 20, 25, 3.5), ("chr2", 0, 4, 7.0)]


def test_tsv_and_jsonl_tracks(tmp_path):
    for format in ("tsv", "jsonl"):
        path = str(tmp_path / f"t.{format}")
        with open_track_writer(path, format, value_name="bits") as writer:
            writer.add_windows("chr1", [0.25, 1.0], 10, 15)
        lines = open(path).read().splitlines()
        if format == "tsv":
            assert lines == ["chrom\tstart\tend\tbits", "chr1\t0\t10\t0.25", "chr1\t10\t15\t1"]
        else:
            assert [json.loads(line) for line in lines] == [
                {"chrom": "chr1", "start": 0, "end": 10, "bits": 0.25},
                {"chrom": "chr1", "start": 10, "end": 15, "bits": 1.0}]


def test_track_to_stdout(capsys):
    with open_track_writer("-", "bedgraph") as writer:
        writer.add_windows("chr1", [1.0, 2.0], 5, 7)
    assert capsys.readouterr().out == "chr1\t0\t5\t1\nchr1\t5\t7\t2\n"


def test_row_writer_escapes_text(tmp_path):
    path = str(tmp_path / "s.tsv")
    with RowWriter(path, ["offset", "length", "sentence", "bits"]) as rows:
        rows.write_row([0, 9, "a\tb\nc", 1.25])
        rows.write_row({"offset": 10, "length": 2, "sentence": "ok", "bits": float("nan")})
    assert open(path).read().splitlines() == [
        "offset\tlength\tsentence\tbits", "0\t9\ta\\tb\\nc\t1.25", "10\t2\tok\tnan"]
    path = str(tmp_path / "s.jsonl")
    with RowWriter(path, ["offset", "sentence", "bits"], format="jsonl") as rows:
        rows.write_row([0, "é \"q\"", float("inf")])
    assert json.loads(open(path).read()) == {"offset": 0, "sentence": "é \"q\"", "bits": None}


def test_bed6_columns(tmp_path):
    path = str(tmp_path / "novel.bed")
    regions = [BedRegion("chr1", 100, 250, "novel_1", bed_score(3.5, 0, 10)),
               BedRegion("chr1", 400, 401, "novel_2", 1000)]
    assert write_bed6(path, regions, chrom_lengths={"chr1": 1000}) == 2
    lines = [line.split("\t") for line in open(path).read().splitlines()]
    assert lines == [["chr1", "100", "250", "novel_1", "350", "."], ["chr1", "400", "401", "novel_2", "1000", "."]]
    for fields in lines:
        assert len(fields) == 6 and 0 <= int(fields[4]) <= 1000 and fields[5] in "+-."


@pytest.mark.parametrize(
    "region, fragment",
    [(BedRegion("chr1", 5, 5, "x", 1), "empty"), (BedRegion("chr1", 0, 2000, "x", 1), "beyond"),
     (BedRegion("chr1", 0, 5, "x", 1001), "0-1000"), (BedRegion("chr1", 0, 5, "x", 2.5), "integer"),
     (BedRegion("chr1", 0, 5, "a b", 1), "name"), (BedRegion("chr1", 0, 5, "x", 1, "*"), "strand")],
)
def test_bed6_rejects_invalid_regions_and_keeps_previous_file(tmp_path, region, fragment):
    path = tmp_path / "novel.bed"
    path.write_text("previous\n")
    with pytest.raises(ValueError, match=fragment):
        write_bed6(str(path), [BedRegion("chr1", 0, 5, "ok", 5), region], chrom_lengths={"chr1": 1000})
    assert path.read_text() == "previous\n"


def test_bed_score_scaling():
    assert [bed_score(v, 2.0, 6.0) for v in (0.0, 2.0, 4.0, 6.0, 9.0, float("nan"))] == [0, 0, 500, 1000, 1000, 0]


def test_write_track_from_interval_stream(tmp_path):
    path = str(tmp_path / "s.bedgraph")
    intervals = [("chr1", 0, 5, 0.5), ("chr1", 5, 9, 0.5), ("chr1", 12, 20, 2.0), ("chr2", 0, 3, 1.0)]
    write_track(path, "bedgraph", iter(intervals))
    assert read_bedgraph(path) == [("chr1", 0, 9, 0.5), ("chr1", 12, 20, 2.0), ("chr2", 0, 3, 1.0)]
