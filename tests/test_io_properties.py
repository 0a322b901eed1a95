"""Property-based tests (hypothesis): parsers round-trip what writers of FASTA/FASTQ produce,
regions parse and extract like slicing, every track/array writer round-trips, sentence offsets
are verbatim, and arbitrary bytes never escape as anything but TitansInputError."""

import gzip
import io
import json
import string

import numpy as np
import pyBigWig
import pytest
from Bio import bgzf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from titans_cli.errors import TitansInputError
from titans_cli.io.arrays import write_embeddings
from titans_cli.io.sequences import Region, iter_records, parse_region, read_records
from titans_cli.io.text import TextPiece, iter_sentences, split_sentences
from titans_cli.io.tracks import BedRegion, open_track_writer, window_bounds, write_bed6

from test_io_tracks import expand, read_bedgraph, read_fixed_step_wig

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

IUPAC_TO_N = str.maketrans({**{c: "N" for c in "RYKMSWBDHV"}, "U": "T"})
record_ids = st.text(alphabet=string.ascii_letters + string.digits + "_.|-:", min_size=1, max_size=16)
descriptions = st.text(alphabet=string.ascii_letters + " =;,", max_size=20)
sequences = st.text(alphabet="ACGTNacgtnRYKMSWBDHVUu", min_size=1, max_size=400)


def expected_bases(sequence: str) -> bytes:
    return sequence.upper().translate(IUPAC_TO_N).encode()


class _KeepOpen(io.BytesIO):
    def close(self):
        pass


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "bgzf":
        buffer = _KeepOpen()
        writer = bgzf.BgzfWriter(fileobj=buffer, mode="wb")
        writer.write(data)
        writer.close()
        return buffer.getvalue()
    return data


def wrap(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


@settings(max_examples=150, **SETTINGS)
@given(
    records=st.lists(st.tuples(record_ids, descriptions, sequences), min_size=1, max_size=5),
    width=st.integers(1, 90),
    newline=st.sampled_from(["\n", "\r\n"]),
    compression=st.sampled_from(["none", "gzip", "bgzf"]),
    piece_size=st.integers(1, 70),
    final_newline=st.booleans(),
    blank_lines=st.booleans(),
)
def test_fasta_round_trip(records, width, newline, compression, piece_size, final_newline, blank_lines):
    lines = []
    for record_id, description, sequence in records:
        lines.append(f">{record_id} {description}".rstrip())
        lines.extend(wrap(sequence, width))
        if blank_lines:
            lines.append("")
    text = newline.join(lines) + (newline if final_newline else "")
    source = io.BytesIO(compress(text.encode(), compression))
    parsed = list(iter_records(source, piece_size=piece_size))
    got = [(r.id, r.description, r.read(), r.length) for r in parsed]
    assert got == [(i, d.strip(), expected_bases(s), len(s)) for i, d, s in records]


@settings(max_examples=150, **SETTINGS)
@given(
    reads=st.lists(
        st.tuples(record_ids, sequences, st.randoms(use_true_random=False)), min_size=1, max_size=5),
    width=st.one_of(st.none(), st.integers(1, 50)),
    repeat_id=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    piece_size=st.integers(1, 70),
)
def test_fastq_round_trip(reads, width, repeat_id, newline, piece_size):
    lines = []
    for record_id, sequence, rng in reads:
        qualities = "".join(chr(rng.randint(33, 126)) for _ in sequence)  # '@' and '+' included
        lines.append(f"@{record_id}")
        lines.extend(wrap(sequence, width) if width else [sequence])
        lines.append(f"+{record_id}" if repeat_id else "+")
        lines.extend(wrap(qualities, width) if width else [qualities])
    data = (newline.join(lines) + newline).encode()
    got = read_records(io.BytesIO(data), piece_size=piece_size)
    assert got == [(record_id, expected_bases(sequence)) for record_id, sequence, _ in reads]


chrom_names = st.text(alphabet=string.ascii_letters + string.digits + "_.|-*:", min_size=1, max_size=16).filter(
    lambda name: not name.startswith("{") and name.strip() == name)


@settings(max_examples=300, **SETTINGS)
@given(chrom=chrom_names, start=st.integers(1, 10**9), extent=st.integers(0, 10**6), commas=st.booleans())
def test_region_parsing_round_trip(chrom, start, extent, commas):
    end = start + extent
    number = (lambda n: f"{n:,}") if commas else str
    name = f"{{{chrom}}}" if ":" in chrom else chrom
    assert parse_region(f"{name}:{number(start)}-{number(end)}") == Region(chrom, start - 1, end)
    assert parse_region(f"{name}:{number(start)}") == Region(chrom, start - 1, None)
    assert parse_region(chrom, known_names=[chrom]) == Region(chrom)
    region = Region(chrom, start - 1, end)
    assert parse_region(str(region), known_names=[chrom]) == region


@pytest.fixture(scope="module")
def small_genome(tmp_path_factory):
    rng = np.random.default_rng(11)
    records = {"chrA": 3001, "chrB": 977, "chr:C": 64}
    sequences, text = {}, []
    for (name, length), width in zip(records.items(), (60, 80, 7)):
        bases = "".join(rng.choice(list("ACGTacgtN"), length))
        sequences[name] = bases.upper().encode()
        text.append(f">{name} description\n" + "\n".join(wrap(bases, width)) + "\n")
    directory = tmp_path_factory.mktemp("genome")
    plain = directory / "genome.fa"
    plain.write_text("".join(text))
    packed = directory / "genome.fa.gz"
    packed.write_bytes(compress(plain.read_bytes(), "bgzf"))
    return {"plain": str(plain), "bgzf": str(packed)}, sequences


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_region_extraction_equals_slicing(small_genome, data):
    paths, sequences = small_genome
    chrom = data.draw(st.sampled_from(sorted(sequences)))
    length = len(sequences[chrom])
    start1 = data.draw(st.integers(1, length))
    end1 = data.draw(st.integers(start1, length))
    path = paths[data.draw(st.sampled_from(["plain", "bgzf"]))]
    name = f"{{{chrom}}}" if ":" in chrom else chrom
    (record,) = list(iter_records(path, region=f"{name}:{start1}-{end1}", piece_size=data.draw(st.integers(1, 500))))
    assert record.read() == sequences[chrom][start1 - 1 : end1]
    assert record.offset == start1 - 1 and record.full_length == length
    beyond = data.draw(st.integers(length + 1, length + 100))
    with pytest.raises(TitansInputError, match="past the end"):
        list(iter_records(path, region=f"{name}:{start1}-{beyond}"))


# ---------------------------------------------------------------------------------------------
# Writers

track_records = st.lists(
    st.tuples(st.integers(1, 3000), st.integers(1, 400), st.integers(0, 5000), st.integers(0, 500)),
    min_size=1, max_size=4)


def window_values(length, window, seed):
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(0, 3, -(-length // window)), 2)
    values[rng.random(values.shape[0]) < 0.3] = 1.0  # runs of equal values exercise merging
    return values


@settings(max_examples=60, **SETTINGS)
@given(records=track_records, format=st.sampled_from(["bedgraph", "wig", "tsv", "jsonl"]))
def test_text_track_writers_round_trip(tmp_path, records, format):
    path = str(tmp_path / f"track.{format}")
    expected = {}
    with open_track_writer(path, format) as writer:
        for index, (length, window, offset, tail) in enumerate(records):
            chrom = f"rec{index}"
            values = window_values(length, window, index)
            writer.add_windows(chrom, values, window, length, offset=offset, chrom_length=offset + length + tail)
            expected[chrom] = (offset, length, offset + length + tail, np.repeat(values, window)[:length])
    if format == "bedgraph":
        rows = read_bedgraph(path)
    elif format == "wig":
        rows = read_fixed_step_wig(path)
    elif format == "tsv":
        lines = open(path).read().splitlines()[1:]
        rows = [(c, int(s), int(e), float(v)) for c, s, e, v in (line.split("\t") for line in lines)]
    else:
        rows = [tuple(json.loads(line).values()) for line in open(path)]
    for chrom, (offset, length, chrom_length, per_base) in expected.items():
        spans = [(s, e) for c, s, e, _ in rows if c == chrom]
        assert spans[0][0] == offset and spans[-1][1] == offset + length, "must cover every base of the record"
        assert all(b[0] == a[1] for a, b in zip(spans, spans[1:])), "gap or overlap"
        assert 0 <= spans[0][0] and spans[-1][1] <= chrom_length, "coordinates inside the record"
        got = expand(rows, chrom, offset + length)[offset:]
        np.testing.assert_allclose(got, per_base, rtol=1e-5, atol=1e-9)


@settings(max_examples=15, **SETTINGS)
@given(records=track_records)
def test_bigwig_writer_round_trip(tmp_path, records):
    path = str(tmp_path / "track.bw")
    expected = {}
    with open_track_writer(path, "bigwig") as writer:
        for index, (length, window, offset, tail) in enumerate(records):
            chrom = f"rec{index}"
            values = window_values(length, window, index)
            writer.add_windows(chrom, values, window, length, offset=offset, chrom_length=offset + length + tail)
            expected[chrom] = (offset + length + tail, window_bounds(window, length, offset), values)
    bigwig = pyBigWig.open(path)
    try:
        assert bigwig.chroms() == {chrom: size for chrom, (size, _, _) in expected.items()}
        for chrom, (_, (starts, ends), values) in expected.items():
            intervals = bigwig.intervals(chrom)
            assert [(s, e) for s, e, _ in intervals] == list(zip(starts.tolist(), ends.tolist()))
            np.testing.assert_allclose([v for _, _, v in intervals], values, rtol=1e-6)
    finally:
        bigwig.close()


@settings(max_examples=60, **SETTINGS)
@given(spans=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 5000), st.integers(0, 1000)), max_size=20))
def test_bed6_round_trip(tmp_path, spans):
    regions = [BedRegion("chr1", start, start + size, f"novel_{i}", score) for i, (start, size, score) in enumerate(spans)]
    path = str(tmp_path / "r.bed")
    write_bed6(path, regions)
    lines = open(path).read().splitlines()
    parsed = [BedRegion(c, int(s), int(e), n, int(sc), st_) for c, s, e, n, sc, st_ in (l.split("\t") for l in lines)]
    assert parsed == regions


@settings(max_examples=40, **SETTINGS)
@given(rows=st.integers(1, 20), dim=st.integers(1, 40), format=st.sampled_from(["npy", "npz", "tsv"]), seed=st.integers(0, 99))
def test_embedding_writers_round_trip(tmp_path, rows, dim, format, seed):
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    ids = [f"r{i}" for i in range(rows)]
    starts = list(range(rows))
    ends = [s + 10 for s in starts]
    path = str(tmp_path / f"e.{format}")
    write_embeddings(path, vectors, ids, starts, ends)
    if format == "npy":
        loaded = np.load(path)
    elif format == "npz":
        with np.load(path) as archive:
            loaded = archive["embeddings"]
            assert archive["ids"].tolist() == ids and archive["ends"].tolist() == ends
    else:
        body = [line.split("\t") for line in open(path).read().splitlines()[1:]]
        loaded = np.array([[float(v) for v in row[3:]] for row in body], dtype=np.float32)
    assert np.array_equal(loaded, vectors)


# ---------------------------------------------------------------------------------------------
# Sentences

prose = st.lists(
    st.sampled_from(list("ab cD E.!?…\"'“”‘’()\n\n\t3,:") + ["Mr.", "Dr. ", "e.g. ", "CHAPTER I\n", "J. ", "\r"]),
    max_size=120,
).map(lambda tokens: "".join(tokens).replace("\r", "\n"))


@settings(max_examples=300, **SETTINGS)
@given(text=prose, offset=st.integers(0, 1000))
def test_sentence_offsets_verbatim_and_cover_text(text, offset):
    sentences = split_sentences(text, offset)
    end = offset
    for sentence in sentences:
        assert text[sentence.start - offset : sentence.end - offset] == sentence.text
        assert sentence.text and sentence.text == sentence.text.strip()
        assert sentence.start >= end
        end = sentence.end
    covered = "".join(s.text for s in sentences)
    assert "".join(covered.split()) == "".join(text.split())


@settings(max_examples=200, **SETTINGS)
@given(text=prose, size=st.integers(1, 50))
def test_streaming_sentences_equal_whole(text, size):
    pieces = [TextPiece(i, text[i : i + size]) for i in range(0, len(text), size)]
    assert list(iter_sentences(pieces)) == split_sentences(text)


# ---------------------------------------------------------------------------------------------
# Robustness: any bytes give records or a TitansInputError, never another exception

fragments = st.sampled_from(
    [b">", b"@", b"+", b"\n", b"\r\n", b"ACGT", b"acgtn", b"NNRY", b"I", b"!!", b" ", b"\t", b"r1", b"\x00",
     b"\xff", b"*", b"1", b">chr1\n", b"@r\nAC\n+\nII\n", b"\xef\xbb\xbf"])


@settings(max_examples=300, **SETTINGS)
@given(parts=st.lists(st.one_of(fragments, st.binary(max_size=4)), max_size=40),
       compression=st.sampled_from(["none", "gzip", "bgzf"]), cut=st.integers(0, 64),
       on_invalid=st.sampled_from(["error", "mask"]), piece_size=st.integers(1, 16))
def test_arbitrary_bytes_only_raise_input_errors(parts, compression, cut, on_invalid, piece_size):
    data = compress(b"".join(parts), compression)
    if cut and compression != "none":
        data = data[: max(0, len(data) - cut)]
    try:
        for record in iter_records(io.BytesIO(data), on_invalid=on_invalid, piece_size=piece_size):
            sequence = record.read()
            assert set(sequence) <= set(b"ACGTN") and len(sequence) == record.length > 0
    except TitansInputError as error:
        assert "\n" not in str(error)
