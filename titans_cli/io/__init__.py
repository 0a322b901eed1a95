"""Reading inputs and writing results; no CLI code, no printing.

- sequences: `iter_records(source, region=None, on_invalid="error")` streams FASTA/FASTQ records
  whose `.pieces()` are bounded chunks of ACGTN; `encode_bases`, `parse_region`, `sniff_kind`.
- text: `read_text`, `iter_text_pieces`, `split_sentences`, `iter_sentences` (verbatim offsets).
- tracks: `open_track_writer(path, format)` for bedGraph/bigWig/WIG/TSV/JSONL, `write_bed6`,
  `RowWriter` for TSV/JSONL tables.
- arrays: `write_embeddings`, `EmbeddingWriter` (.npy/.npz/.tsv/"-").
- atomic: `atomic_output`, `atomic_path`, `handle_termination_signals`, `quiet_broken_pipe`.

Bad input raises `titans_cli.errors.TitansInputError` with one line naming the file.
"""
