"""FASTA/FASTQ reading as a user relies on it: bad input gets one clear line, good input is read
identically from any container (plain, gzip, bgzip, stdin), regions match slicing."""

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from Bio import SeqIO, bgzf

from titans_cli.errors import TitansInputError
from titans_cli.io import inputs
from titans_cli.io.sequences import (
    Region,
    encode_bases,
    iter_records,
    parse_region,
    read_records,
    sniff_kind,
)

from conftest import SAMPLE_DATA

LAMBDA = SAMPLE_DATA / "lambda_phage.fa"
LAMBDA_ID = "gi|9626243|ref|NC_001416.1|"
ECOLI = SAMPLE_DATA / "ecoli_k12_mg1655.fa.gz"
READS = SAMPLE_DATA / "lambda_reads_1.fq"


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


class _KeepOpen(io.BytesIO):
    def close(self):  # BgzfWriter closes its file object; keep the bytes readable
        pass


def bgzip_bytes(data: bytes) -> bytes:
    buffer = _KeepOpen()
    writer = bgzf.BgzfWriter(fileobj=buffer, mode="wb")
    writer.write(data)
    writer.close()
    return buffer.getvalue()


def error_for(source, **options) -> str:
    with pytest.raises(TitansInputError) as caught:
        read_records(source, **options)
    message = str(caught.value)
    assert "\n" not in message, f"error message must be one line, got {message!r}"
    return message


@pytest.fixture
def fake_stdin(monkeypatch):
    """Replace stdin by given bytes (the reader uses sys.stdin.buffer)."""

    def install(data: bytes):
        monkeypatch.setattr(inputs, "_stdin_pushback", b"")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    return install


# ---------------------------------------------------------------------------------------------
# Bad input: each is a TitansInputError naming the file and where the problem is


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", ["empty file"]),
        (b"\n  \n\n", ["empty file"]),
        (b">a\n>b\nACGT\n", ["record 'a'", "line 1", "has no sequence"]),
        (b">a\nACGT\n>b\n", ["record 'b'", "line 3", "has no sequence"]),
        (b"ACGT\n>a\nAC\n", ["line 1", "sequence before any header"]),
        (b"\n\nhello world\n", ["line 3", "not FASTA or FASTQ"]),
        (b">a\nACGT\nAC1T\n", ["record 'a'", "line 3", "column 3", "invalid character '1'"]),
        (b">a\nACGT\n>b desc\nAC*T\n", ["record 'b'", "line 4", "column 3", "'*'"]),
        (b">a\nAC\x01T\n", ["record 'a'", "line 2", "column 3", "\\x01"]),
        (b">a\nACGT\n>\nAC\n", ["line 3", "no record name"]),
        (b"@r1\nACGT\n+\nIII\n", ["record 'r1'", "quality length 3 differs from sequence length 4"]),
        (b"@r1\nACGT\n+\nIIIII\n@r2\nA\n+\nI\n", ["record 'r1'", "quality length 5 differs"]),
        (b"@r1\nACGT\n", ["record 'r1'", "ends before the '+' line"]),
        (b"@r1\nACGT\n+\nII", ["record 'r1'", "quality length 2", "ends inside the qualities"]),
        (b"@r1\nACGT\n+\nII I\n", ["record 'r1'", "line 4", "invalid quality character"]),
        (b"@r1\nACGT\n+\nIIII\nACGT\n", ["line 5", "expected a '@' FASTQ header"]),
        (b"@r1\n@r2\nACGT\n+\nIIII\n", ["record 'r1'", "before the '+' line"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["PNG image"]),
        (b"BZh91AY&SY", ["bzip2-compressed"]),
        (b"\xfd7zXZ\x00\x00", ["xz-compressed"]),
        (b">a\nAC\x00GT\n", ["binary data"]),
    ],
)
def test_bad_input_gives_one_line_naming_file_and_position(tmp_path, content, expected):
    path = write(tmp_path, "bad.fa", content)
    message = error_for(path)
    assert message.startswith(path + ":"), f"message must start with the file name: {message!r}"
    for fragment in expected:
        assert fragment in message, f"expected {fragment!r} in {message!r}"


def test_truncated_gzip_is_reported(tmp_path):
    data = b">a\n" + b"ACGT" * 50_000 + b"\n"
    path = write(tmp_path, "cut.fa.gz", gzip.compress(data)[:-200])
    message = error_for(path)
    assert path in message and "truncated gzip" in message, message


def random_fasta(length: int, seed: int = 0) -> bytes:
    bases = np.random.default_rng(seed).choice(list(b"ACGT"), length).astype(np.uint8).tobytes()
    return b">a\n" + b"\n".join(bases[i : i + 60] for i in range(0, length, 60)) + b"\n"


def test_truncated_bgzip_is_reported(tmp_path):
    compressed = bgzip_bytes(random_fasta(300_000))
    path = write(tmp_path, "cut.fa.gz", compressed[: len(compressed) // 2])
    message = error_for(path)
    assert path in message and "truncated bgzf" in message, message


def test_bgzip_cut_at_a_block_boundary_is_reported(tmp_path):
    compressed = bgzip_bytes(random_fasta(300_000))
    first_block_size = int.from_bytes(compressed[16:18], "little") + 1  # BSIZE field, SAM spec 4.1
    path = write(tmp_path, "cut.fa.gz", compressed[:first_block_size])
    message = error_for(path)
    assert path in message and "EOF marker" in message, message


def test_corrupt_gzip_is_reported(tmp_path):
    compressed = bytearray(gzip.compress(b">a\n" + np.random.default_rng(0).choice(list(b"ACGT"), 100_000).astype(np.uint8).tobytes()))
    compressed[len(compressed) // 2 : len(compressed) // 2 + 50] = b"\xff" * 50
    path = write(tmp_path, "bad.fa.gz", bytes(compressed))
    message = error_for(path)
    assert path in message and ("corrupt gzip" in message or "truncated gzip" in message), message


def test_bam_content_is_named(tmp_path):
    path = write(tmp_path, "reads.fa", bgzip_bytes(b"BAM\x01" + b"\x00" * 100))
    assert "BAM file" in error_for(path)


def test_missing_path_and_directory(tmp_path):
    missing = str(tmp_path / "nope.fa")
    assert error_for(missing) == f"{missing}: no such file"
    assert error_for(str(tmp_path)) == f"{tmp_path}: is a directory, not a file"


def test_unreadable_path(tmp_path, monkeypatch):
    path = write(tmp_path, "secret.fa", b">a\nACGT\n")

    def refuse(*args, **kwargs):  # what open() does for a mode-000 file when not root
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(inputs, "open", refuse, raising=False)
    assert error_for(path) == f"{path}: permission denied (file is not readable)"


def test_invalid_characters_masked_on_request(tmp_path):
    path = write(tmp_path, "x.fa", b">a\nAC1T*\x01G\n")
    assert read_records(path, on_invalid="mask") == [("a", b"ACNTNNG")]


def test_first_bad_record_found_after_good_records_are_streamed(tmp_path):
    path = write(tmp_path, "x.fa", b">good\nACGT\n>bad\nAC-T\n")
    records = iter_records(path)
    first = next(records)
    assert first.read() == b"ACGT"
    second = next(records)
    with pytest.raises(TitansInputError, match=r"record 'bad', line 4, column 3: invalid character '-'"):
        second.read()


# ---------------------------------------------------------------------------------------------
# Good input


def test_lambda_matches_biopython():
    expected = [(r.id, str(r.seq).upper().encode()) for r in SeqIO.parse(str(LAMBDA), "fasta")]
    got = read_records(LAMBDA)
    assert got == expected
    assert got[0][0] == LAMBDA_ID and len(got[0][1]) == 48502


def test_fastq_reads_match_biopython():
    expected = [(r.id, str(r.seq).upper().encode()) for r in SeqIO.parse(str(READS), "fastq")]
    records = list(iter_records(READS))  # listing first: unread short records stay readable
    assert [(r.id, r.read()) for r in records] == expected
    assert [r.length for r in records] == [len(seq) for _, seq in expected]


def test_multiline_fastq_and_description(tmp_path):
    path = write(tmp_path, "x.fq", b"@r1 sample=1 lane 2\nACG\nTA\n+r1\nII\nIII\n@r2\nGG\n+\n@I\n")
    records = list(iter_records(path))
    assert [(r.id, r.description, r.read()) for r in records] == [
        ("r1", "sample=1 lane 2", b"ACGTA"),
        ("r2", "", b"GG"),
    ]


def test_soft_masking_iupac_and_u(tmp_path):
    path = write(tmp_path, "x.fa", b">a\nacgtNn\nRYKMSWBDHVrykmswbdhv\nUu\n")
    assert read_records(path) == [("a", b"ACGTNN" + b"N" * 20 + b"TT")]


def test_windows_line_endings_and_blank_lines(tmp_path):
    unix = b">a desc\nACGT\nAC\n\n>b\nGG\n"
    windows = unix.replace(b"\n", b"\r\n")
    assert read_records(write(tmp_path, "w.fa", windows)) == read_records(write(tmp_path, "u.fa", unix))
    fastq = b"@r\r\nACGT\r\n+\r\nIIII\r\n"
    assert read_records(write(tmp_path, "w.fq", fastq)) == [("r", b"ACGT")]


def test_no_trailing_newline_and_utf8_bom(tmp_path):
    assert read_records(write(tmp_path, "x.fa", b"\xef\xbb\xbf>a\nAC\n>b\nGT")) == [("a", b"AC"), ("b", b"GT")]


def test_plain_gzip_bgzip_identical(tmp_path):
    data = LAMBDA.read_bytes() + b">second soft-masked\nacgtnRYacgt\n"
    plain = read_records(write(tmp_path, "x.fa", data))
    assert read_records(write(tmp_path, "x.fa.gz", gzip.compress(data))) == plain
    assert read_records(write(tmp_path, "y.fa.bgz", bgzip_bytes(data))) == plain
    # Detection is by content: a gzip file without the extension still reads.
    assert read_records(write(tmp_path, "z.fasta", gzip.compress(data))) == plain


def test_ecoli_bgzip_reads_whole_genome_in_bounded_pieces():
    (record,) = list(iter_records(ECOLI, piece_size=1 << 20))
    total, digest = 0, hashlib.sha256()
    for piece in record.pieces():
        assert len(piece) <= 1 << 20
        total += len(piece)
        digest.update(piece)
    assert record.id == "K-12-MG1655" and total == record.length == 4_639_675


def test_single_line_chromosome_streams_in_bounded_memory(tmp_path):
    length = 16_000_000
    path = tmp_path / "long.fa"
    rng = np.random.default_rng(1)
    with open(path, "wb") as handle:
        handle.write(b">chrLong\n")
        block = rng.choice(list(b"ACGTacgt"), 1_000_000).astype(np.uint8).tobytes()
        for _ in range(length // len(block)):
            handle.write(block)
        handle.write(b"\n")
    tracemalloc.start()
    try:
        total = 0
        for record in iter_records(str(path), piece_size=1 << 20):
            for piece in record.pieces():
                assert len(piece) <= 1 << 20
                total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == length
    assert peak < 12 * (1 << 20), f"peak traced memory {peak / 2**20:.1f} MiB for a {length} bp line"


def test_pieces_are_exactly_piece_size_except_last(tmp_path):
    path = write(tmp_path, "x.fa", b">a\n" + b"ACGTACGTAC\n" * 100)
    (record,) = list(iter_records(path, piece_size=64))
    sizes = [len(piece) for piece in record.pieces()]
    assert sizes == [64] * 15 + [40] and record.length == 1000


def test_partially_read_record_is_skipped_cleanly(tmp_path):
    path = write(tmp_path, "x.fa", b">a\n" + b"A" * 500 + b"\n>b\nCC\n")
    records = iter_records(path, piece_size=100)
    first = next(records)
    next(first.pieces())
    second = next(records)
    assert second.read() == b"CC" and first.length == 500


def test_stdin_equals_file_in_process(fake_stdin):
    data = READS.read_bytes()
    expected = read_records(READS)
    fake_stdin(gzip.compress(data))
    assert read_records("-") == expected


def test_sniffing_stdin_keeps_it_readable(fake_stdin):
    data = LAMBDA.read_bytes()
    fake_stdin(bgzip_bytes(data))
    assert sniff_kind("-") == "sequence"
    assert read_records("-") == read_records(LAMBDA)


def test_stdin_equals_file_through_a_real_pipe():
    script = (
        "import hashlib, sys; from titans_cli.io.sequences import iter_records\n"
        "for r in iter_records(sys.argv[1]):\n"
        "    h = hashlib.sha256(); [h.update(p) for p in r.pieces()]; print(r.id, r.length, h.hexdigest())\n"
    )
    from_file = subprocess.run([sys.executable, "-c", script, str(ECOLI)], capture_output=True, check=True)
    with open(ECOLI, "rb") as handle:
        from_pipe = subprocess.run([sys.executable, "-c", script, "-"], stdin=handle, capture_output=True, check=True)
    assert from_pipe.stdout == from_file.stdout and b"K-12-MG1655 4639675" in from_file.stdout


@pytest.mark.parametrize(
    "content, kind",
    [
        (b">chr1\nACGT\n", "sequence"),
        (b"\n\n>chr1 x\n\nacgtn\n", "sequence"),
        (b"@r1\nACGT\n+\nIIII\n", "sequence"),
        (b"> a quoted line in Markdown\n\nSome prose here.\n", "text"),
        (b"> chr1 with a space\nACGT\n", "sequence"),
        (b">sp|P69905|HBA_HUMAN Hemoglobin\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSF\n", "sequence"),
        (b"@author: someone\nHello\nWorld\n", "text"),
        (b"Call me Ishmael.\n", "text"),
    ],
)
def test_sniff_kind(tmp_path, content, kind):
    assert sniff_kind(write(tmp_path, "x", content)) == kind
    assert sniff_kind(write(tmp_path, "x.gz", gzip.compress(content))) == kind


def test_sniff_kind_rejects_empty_and_binary(tmp_path):
    with pytest.raises(TitansInputError, match="empty file"):
        sniff_kind(write(tmp_path, "e", b""))
    with pytest.raises(TitansInputError, match="PNG image"):
        sniff_kind(write(tmp_path, "p.png", b"\x89PNG\r\n\x1a\nxxxx"))


def test_encode_bases_codes():
    codes = encode_bases(b"ACGTNAC")
    assert codes.dtype == np.uint8 and codes.flags.writeable
    assert codes.tolist() == [0, 1, 2, 3, 4, 0, 1]


# ---------------------------------------------------------------------------------------------
# Regions


@pytest.mark.parametrize(
    "text, names, expected",
    [
        ("chr1", None, Region("chr1", 0, None)),
        ("chr1:100", None, Region("chr1", 99, None)),
        ("chr1:100-", None, Region("chr1", 99, None)),
        ("chr1:100-200", None, Region("chr1", 99, 200)),
        ("chr1:1,000-2,000", None, Region("chr1", 999, 2000)),
        ("chr1:-50", None, Region("chr1", 0, 50)),
        ("chr1:5-5", None, Region("chr1", 4, 5)),
        ("HLA-A*01:01", ["HLA-A*01:01", "chr1"], Region("HLA-A*01:01", 0, None)),
        ("HLA-A*01:01:5-9", ["HLA-A*01:01"], Region("HLA-A*01:01", 4, 9)),
        ("{HLA-A*01:01}:5-9", None, Region("HLA-A*01:01", 4, 9)),
        ("gi|9626243|ref|NC_001416.1|:10-20", None, Region("gi|9626243|ref|NC_001416.1|", 9, 20)),
    ],
)
def test_parse_region(text, names, expected):
    assert parse_region(text, names) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [("", "empty"), ("chr1:0-5", "1-based"), ("chr1:20-10", "before start"), ("chr1:", "expected chr"),
     (":5-10", "no sequence name"), ("{chr1", "unbalanced")],
)
def test_parse_region_errors(text, fragment):
    with pytest.raises(TitansInputError, match=fragment):
        parse_region(text)


def test_parse_region_ambiguity_is_an_error():
    with pytest.raises(TitansInputError, match="ambiguous"):
        parse_region("chr1:5", ["chr1:5", "chr1"])


def test_region_extraction_equals_slicing_plain_and_bgzip(tmp_path):
    genome = read_records(LAMBDA)[0][1]
    for start1, end1 in [(1, 10), (1000, 5000), (48_000, 48_502), (70, 71)]:
        (record,) = list(iter_records(LAMBDA, region=f"{LAMBDA_ID}:{start1}-{end1}", piece_size=1000))
        assert record.read() == genome[start1 - 1 : end1]
        assert (record.offset, record.length, record.full_length) == (start1 - 1, end1 - start1 + 1, 48502)
    ecoli = read_records(ECOLI)[0][1]
    rng = np.random.default_rng(7)
    for _ in range(5):
        start0 = int(rng.integers(0, len(ecoli) - 10_000))
        end0 = start0 + int(rng.integers(1, 10_000))
        (record,) = list(iter_records(ECOLI, region=f"K-12-MG1655:{start0 + 1}-{end0}"))
        assert record.read() == ecoli[start0:end0]
    (whole,) = list(iter_records(ECOLI, region="K-12-MG1655:4639000"))
    assert whole.read() == ecoli[4_638_999:]


def test_region_errors(tmp_path):
    gz = write(tmp_path, "g.fa.gz", gzip.compress(LAMBDA.read_bytes()))
    assert "not indexable: plain gzip" in error_for(gz, region=f"{LAMBDA_ID}:1-10")
    assert "compress with bgzip" in error_for(gz, region=f"{LAMBDA_ID}:1-10")
    message = error_for(LAMBDA, region="chrX:1-10")
    assert "no record named 'chrX'" in message and str(LAMBDA) in message
    message = error_for(LAMBDA, region=f"{LAMBDA_ID}:48000-48600")
    assert "ends past the end" in message and "48502 bp" in message
    assert "starts past the end" in error_for(LAMBDA, region=f"{LAMBDA_ID}:50000")
    fq = write(tmp_path, "r.fq", READS.read_bytes())
    assert "this is FASTQ" in error_for(fq, region="r1:1-5")


def test_region_from_stdin_is_refused(fake_stdin):
    fake_stdin(LAMBDA.read_bytes())
    assert "indexable FASTA file on disk" in error_for("-", region=f"{LAMBDA_ID}:1-5")


def test_region_builds_missing_index_and_handles_misnamed_compression(tmp_path):
    copy = tmp_path / "lambda.fa"
    shutil.copy(LAMBDA, copy)
    (record,) = list(iter_records(str(copy), region=f"{LAMBDA_ID}:11-20"))
    assert record.read() == read_records(LAMBDA)[0][1][10:20]
    assert (tmp_path / "lambda.fa.fai").exists(), "the .fai should be created beside a writable file"
    # bgzip content without a .gz name, and plain content with a .gz name, still work.
    data = b">a\n" + b"ACGTACGTAC\n" * 30 + b">b\nGGGGCCCC\n"
    misnamed_bgzf = write(tmp_path, "bgzf_named.fa", bgzip_bytes(data))
    misnamed_plain = write(tmp_path, "plain_named.fa.gz", data)
    for path in (misnamed_bgzf, misnamed_plain):
        (record,) = list(iter_records(path, region="b:3-6"))
        assert record.read() == b"GGCC", path


def test_region_with_inconsistent_line_lengths_is_explained(tmp_path):
    path = write(tmp_path, "ragged.fa", b">a\nACGTACGT\nACG\nACGTACGT\n")
    message = error_for(path, region="a:1-5")
    assert message.startswith(path) and "cannot index" in message


def test_region_when_index_cannot_be_written_beside_the_file(tmp_path):
    # A directory where the .fai should go makes writing it fail even for root, like a
    # read-only directory does for other users: the index is then built in a scratch directory.
    shutil.copy(LAMBDA, tmp_path / "lambda.fa")
    (tmp_path / "lambda.fa.fai").mkdir()
    (record,) = list(iter_records(str(tmp_path / "lambda.fa"), region=f"{LAMBDA_ID}:1-5"))
    assert record.read() == b"GGGCG"
    assert sorted(os.listdir(tmp_path)) == ["lambda.fa", "lambda.fa.fai"]


def test_progress_reports_compressed_bytes_read():
    with inputs.open_input(str(ECOLI)) as opened:
        start, size = opened.progress()
        assert size == os.path.getsize(ECOLI) and 0 < start < size
        for record in iter_records(opened):
            for _ in record.pieces():
                pass
        assert opened.progress() == (size, size)


def test_long_unread_record_is_skipped_with_a_clear_error(tmp_path, monkeypatch):
    from titans_cli.io import sequences

    monkeypatch.setattr(sequences, "KEEP_UNREAD_BYTES", 100)
    path = write(tmp_path, "x.fa", b">big\n" + b"A" * 500 + b"\n>small\nCC\n")
    big, small = list(iter_records(path, piece_size=64))
    assert small.read() == b"CC" and big.length == 500
    with pytest.raises(RuntimeError, match="record 'big' was skipped"):
        big.read()
