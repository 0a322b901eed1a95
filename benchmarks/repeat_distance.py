"""How far back are a genome's exact repeats, and what does the model pay on them?

    python benchmarks/repeat_distance.py                      # the human eval piece, dna-base, ~5 min on 2 cores
    python benchmarks/repeat_distance.py --model dna --model-bases 400000

Issue 3's human target (below 1.58 bits/base on GRCh37 chrX 60-65 Mb, where xz -9 reaches 1.584 and the
models 1.83-1.92) is about copies: a general-purpose compressor wins there by pointing back at earlier
identical strings. This script measures, on the ACGT bases of one record:

1. the distance back to the previous occurrence of the k-mer (k = --k, exact, same strand) that ends at
   each base: the share of bases whose k-mer occurred within 256 bases (inside the models' attention
   window), 4 kb, 64 kb, 1 Mb, or anywhere earlier in the record; with --train FASTA, also the share
   whose k-mer occurs anywhere in that training file (what a model could have learned as a repeat family);
2. the model's bits per base (--model-bases bases in --lanes independent lanes at evenly spaced offsets
   over the record after its leading N run) split by those classes: a model that copies pays little on bases whose
   k-mer it saw shortly before.

Writes benchmarks/results/repeat_distance.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402
from compression import stream_bits  # noqa: E402

DEFAULT_FASTA = common.DNA_EVAL / "homo_sapiens_chrX_60-65Mb.fa.gz"
DISTANCES = (256, 4096, 65536, 1 << 20)


def kmers_ending_at(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(2-bit packed k-mer ending at each position, valid: the k-mer has no N and fits)."""
    n = len(codes)
    packed = np.zeros(n, dtype=np.uint64)
    bad = codes == 4
    clean = np.where(bad, 0, codes).astype(np.uint64)
    for j in range(k):  # base i-j contributes at bit 2j
        shifted = np.zeros(n, dtype=np.uint64)
        shifted[j:] = clean[: n - j] << np.uint64(2 * j)
        packed |= shifted
    has_n = np.convolve(bad.astype(np.int32), np.ones(k, dtype=np.int32))[:n] > 0
    valid = ~has_n
    valid[: k - 1] = False
    return packed, valid


def previous_distance(packed: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Distance to the previous position with the same k-mer (inf where none or invalid)."""
    positions = np.flatnonzero(valid)
    keys = packed[positions]
    order = np.lexsort((positions, keys))
    sorted_keys, sorted_pos = keys[order], positions[order]
    same = np.zeros(len(order), dtype=bool)
    same[1:] = sorted_keys[1:] == sorted_keys[:-1]
    gap = np.full(len(order), np.inf)
    gap[1:][same[1:]] = (sorted_pos[1:] - sorted_pos[:-1])[same[1:]]
    distance = np.full(len(packed), np.inf)
    distance[sorted_pos] = gap
    return distance


def in_training_file(packed: np.ndarray, valid: np.ndarray, train: Path, k: int) -> np.ndarray:
    """Whether each k-mer occurs anywhere in the training FASTA (every record, same strand)."""
    seen = []
    for _, sequence in common.read_fasta(train):
        codes = common.encode(sequence)
        train_packed, train_valid = kmers_ending_at(codes, k)
        seen.append(np.unique(train_packed[train_valid]))
    known = np.unique(np.concatenate(seen))
    hit = np.zeros(len(packed), dtype=bool)
    index = np.searchsorted(known, packed[valid])
    index[index >= len(known)] = 0
    hit[np.flatnonzero(valid)] = known[index] == packed[valid]
    return hit


def classes(distance: np.ndarray) -> list[tuple[str, np.ndarray]]:
    edges = [0, *DISTANCES]
    out = [(f"k-mer seen {lo + 1:,}-{hi:,} bases back", (distance > lo) & (distance <= hi))
           for lo, hi in zip(edges[:-1], edges[1:])]
    out.append((f"k-mer seen > {DISTANCES[-1]:,} bases back", np.isfinite(distance) & (distance > DISTANCES[-1])))
    out.append(("k-mer not seen before in the record", ~np.isfinite(distance)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", default=str(DEFAULT_FASTA))
    parser.add_argument("--train", default=str(common.DNA_TRAIN / "homo_sapiens_chrX_0-50Mb.fa.gz"),
                        help="training FASTA whose k-mers count as 'known' ('' to skip)")
    parser.add_argument("--k", type=int, default=24)
    parser.add_argument("--model", default="dna-base")
    parser.add_argument("--model-bases", type=int, default=400_000)
    parser.add_argument("--lanes", type=int, default=8)
    args = parser.parse_args()
    timer = common.Timer()
    fasta = Path(args.fasta)
    codes = common.encode(common.read_fasta(fasta)[0][1])  # 0-3 for A C G T, 4 for N
    packed, valid = kmers_ending_at(codes, args.k)
    distance = previous_distance(packed, valid)
    acgt = codes < 4
    n_acgt = int(acgt.sum())
    common.log(f"{fasta.name}: {n_acgt:,} ACGT bases, {int(valid.sum()):,} valid {args.k}-mers")
    rows = []
    within = [(f"within {d:,} bases", valid & (distance <= d)) for d in DISTANCES]
    within.append(("anywhere earlier in the record", valid & np.isfinite(distance)))
    for label, mask in within:
        rows.append([label, f"{100 * mask.sum() / valid.sum():.1f} %"])
    known = None
    if args.train:
        known = in_training_file(packed, valid, Path(args.train), args.k)
        rows.append([f"anywhere in `{Path(args.train).name}`", f"{100 * known[valid].mean():.1f} %"])
    common.log("k-mer distances done")

    # model bits on the first --model-bases ACGT bases after the leading N run, in independent lanes
    from titans_cli.model import load_model

    loaded = load_model(args.model)
    first = int(np.argmax(acgt))
    lane_len = args.model_bases // args.lanes
    starts = first + np.linspace(0, len(codes) - first - lane_len, args.lanes).astype(np.int64)
    tokenizer = loaded.tokenizer
    letters = np.frombuffer(b"ACGTN", dtype=np.uint8)
    lanes = [tokenizer.encode(letters[codes[s : s + lane_len]].tobytes().decode("ascii")) for s in starts]
    bits = np.concatenate(stream_bits(loaded.model.eval(), [np.asarray(lane, dtype=np.int64) for lane in lanes],
                                      tokenizer.bos_id, tokenizer.pad_id, 8192, "cpu"))
    positions = (starts[:, None] + np.arange(lane_len)).ravel()
    scored = codes[positions] < 4
    common.log("model bits done")
    model_rows = []
    split = classes(distance[positions])
    if known is not None:
        split.append(("k-mer not seen before, but in the training file", (~np.isfinite(distance[positions]))
                      & known[positions]))
    split.append(("all ACGT bases streamed", np.ones(len(positions), dtype=bool)))
    for label, mask in split:
        mask = mask & scored
        model_rows.append([label, f"{int(mask.sum()):,}", f"{100 * mask.sum() / scored.sum():.1f} %",
                           common.fmt(bits[mask].mean() if mask.any() else float("nan"))])
    body = "\n".join([
        f"Input: `{fasta.name}`, first record, {n_acgt:,} ACGT bases; exact {args.k}-mers (same strand) ending at each",
        "base. Share of valid k-mers whose previous occurrence is within a distance:",
        "",
        common.md_table(["previous occurrence of the k-mer", "share of bases"], rows),
        "",
        f"Model `{args.model}` on {len(positions):,} positions: {args.lanes} lanes of {lane_len:,} bases at evenly "
        "spaced offsets from the end of the leading N run to the end of the record, each streamed from an empty "
        "memory (bits of every ACGT base), split by where the k-mer ending at the base was seen before "
        "(within the lane or earlier in the record):",
        "",
        common.md_table(["bases", "count", "share", "mean bits/base"], model_rows),
        "",
        "A model that copies from its 256-base window would pay close to 0 bits on the first class.",
    ])
    path = common.write_section("repeat_distance", "Where the human piece's repeats are, and what the model pays on them",
                                body, quick=False, elapsed_s=timer.elapsed)
    print(path.read_text())


if __name__ == "__main__":
    main()
