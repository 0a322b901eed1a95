"""Embedding files load back exactly with numpy / a TSV reader, and fail cleanly."""

import os

import numpy as np
import pytest

from titans_cli.errors import TitansInputError
from titans_cli.io.arrays import EmbeddingWriter, embedding_format, write_embeddings


@pytest.fixture
def rows():
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(7, 16)).astype(np.float32)
    ids = ["chr1", "chr1", "read/1", "contig_2", "x", "y", "z"]
    starts = [0, 500, 0, 0, 10, 20, 30]
    ends = [500, 1000, 150, 9999, 20, 30, 31]
    return vectors, ids, starts, ends


def test_npy_round_trip(tmp_path, rows):
    vectors, ids, starts, ends = rows
    path = str(tmp_path / "e.npy")
    write_embeddings(path, vectors, ids, starts, ends)
    loaded = np.load(path, allow_pickle=False)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, vectors)


def test_npz_round_trip_incremental(tmp_path, rows):
    vectors, ids, starts, ends = rows
    path = str(tmp_path / "e.npz")
    with EmbeddingWriter(path) as writer:
        writer.add(ids[:3], starts[:3], ends[:3], vectors[:3])
        writer.add(ids[3:], starts[3:], ends[3:], vectors[3:])
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["embeddings", "ends", "ids", "starts"]
        assert np.array_equal(archive["embeddings"], vectors)
        assert archive["ids"].tolist() == ids
        assert archive["starts"].tolist() == starts and archive["ends"].tolist() == ends


def test_tsv_round_trip_is_exact_for_float32(tmp_path, rows):
    vectors, ids, starts, ends = rows
    path = str(tmp_path / "e.tsv")
    write_embeddings(path, vectors, ids, starts, ends)
    lines = open(path).read().splitlines()
    assert lines[0].split("\t")[:4] == ["id", "start", "end", "e0"] and len(lines[0].split("\t")) == 19
    body = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in body] == ids
    assert [(int(row[1]), int(row[2])) for row in body] == list(zip(starts, ends))
    assert np.array_equal(np.array([[float(v) for v in row[3:]] for row in body], dtype=np.float32), vectors)


def test_dash_writes_tsv_to_stdout(capsys, rows):
    vectors, ids, starts, ends = rows
    write_embeddings("-", vectors[:2], ids[:2], starts[:2], ends[:2])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("chr1\t0\t500\t")


def test_format_from_extension_and_errors(tmp_path):
    assert embedding_format("x.NPZ") == "npz" and embedding_format("-") == "tsv"
    with pytest.raises(TitansInputError, match="use .npy, .npz or .tsv"):
        embedding_format("out.parquet")
    with pytest.raises(TitansInputError, match="unknown embedding format"):
        embedding_format("x.npy", "csv")


def test_failure_leaves_no_file_and_keeps_previous(tmp_path, rows):
    vectors, ids, starts, ends = rows
    path = tmp_path / "e.npy"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="dimension changed"):
        with EmbeddingWriter(str(path)) as writer:
            writer.add(ids[:1], starts[:1], ends[:1], vectors[:1])
            writer.add(ids[1:2], starts[1:2], ends[1:2], np.zeros((1, 3)))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["e.npy"]


def test_mismatched_row_counts_rejected(tmp_path, rows):
    vectors, ids, starts, ends = rows
    with pytest.raises(ValueError, match="same number of rows"):
        write_embeddings(str(tmp_path / "e.npz"), vectors, ids[:3], starts, ends)
    assert not (tmp_path / "e.npz").exists()
