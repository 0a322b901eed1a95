"""Held-out compression: model bits/base and bits/byte, live vs frozen memory, beside xz and zstd.

Three steps, so the GPU part and the CPU part can run on different machines:

  # model bits on the eval genomes / books, live and frozen memory (GPU if present)
  python benchmarks/compression.py model --model models/dna  --kind dna  --out dna_model.jsonl  DATA/dna/eval/*.fa.gz
  python benchmarks/compression.py model --model models/text --kind text --out text_model.jsonl DATA/text/eval/books/*.txt.gz
  # general-purpose compressors on the same content (ACGT-only sequence bytes / book bytes)
  python benchmarks/compression.py compressors --kind dna  --out dna_comp.json  DATA/dna/eval/*.fa.gz
  python benchmarks/compression.py compressors --kind text --out text_comp.json DATA/text/eval/books/*.txt.gz
  # the markdown table
  python benchmarks/compression.py table --dna dna_model.jsonl dna_comp.json --text text_model.jsonl text_comp.json \
      -o benchmarks/results/compression.md
  # a second model of a kind, appended under its own heading
  python benchmarks/compression.py table --append --text text_base_model.jsonl text_comp.json --text-name models/text-base

DNA: bits of every base whose *target* is A/C/G/T (N excluded from the average; N is still read as
context); per record and per file (total bits / total ACGT bases). Text: total bits of all tokens of
a book / its UTF-8 bytes, and the same over all books. "Live" lets the neural memory learn while it
reads (test-time memorisation); "frozen" is the same network with memory writes off.

Long records are streamed as independent segments of `--segment` bases, each its own batch lane
with a fresh model state (BOS, empty memory): lanes run in parallel on the GPU. The memory never
sees across a segment boundary, so this slightly understates what whole-record streaming gives.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# -----------------------------------------------------------------------------
# Machine


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    text = f"{os.cpu_count()} x {cpu}"
    try:
        import torch

        if torch.cuda.is_available():
            text = f"{torch.cuda.get_device_name()} + {text}"
    except ImportError:
        pass
    return text


# -----------------------------------------------------------------------------
# Inputs


def dna_records(path: Path):
    """(record id, uint8 token ids) of every record, through the project's reader and tokenizer."""
    from titans_cli.io.sequences import iter_records
    from titans_cli.model.tokenizers import DNATokenizer

    tokenizer = DNATokenizer()
    for record in iter_records(path):
        ids = np.concatenate([tokenizer.encode(piece) for piece in record.pieces()])
        yield record.id, ids.astype(np.int64)


def read_book(path: Path) -> bytes:
    with open(path, "rb") as handle:
        raw = handle.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


# -----------------------------------------------------------------------------
# Model bits


def stream_bits(model, lanes: list[np.ndarray], bos_id: int, pad_id: int, piece: int, device,
                probs: list | None = None) -> list[np.ndarray]:
    """Bits of every token after BOS for each lane (lanes stream in parallel, state carried). With
    `probs` (a list), appends to it each lane's (length, 4) float16 probabilities of A C G T (token
    ids context_mixing.BASE_IDS) at every position, as the model predicted that position."""
    import torch

    from titans_cli.model.context_mixing import BASE_IDS

    longest = max(len(lane) for lane in lanes)
    batch = np.full((len(lanes), longest + 1), pad_id, dtype=np.int64)
    batch[:, 0] = bos_id
    for row, lane in enumerate(lanes):
        batch[row, 1 : 1 + len(lane)] = lane
    tokens = torch.from_numpy(batch).to(device)
    bits = torch.empty(len(lanes), longest, dtype=torch.float64, device=device)
    base_probs = torch.empty(len(lanes), longest, 4, dtype=torch.float16, device=device) if probs is not None else None
    state, previous = None, None
    with torch.no_grad():
        for start in range(0, longest + 1, piece):
            part = tokens[:, start : start + piece]
            output, state = model.step(part, state)
            log_probs = torch.log_softmax(output.logits.float(), dim=-1)
            if previous is not None:  # the first token of this piece, predicted by the last of the previous
                bits[:, start - 1] = -previous.gather(-1, part[:, :1]).squeeze(-1).double() / math.log(2)
                if base_probs is not None:
                    base_probs[:, start - 1] = previous[:, BASE_IDS].exp().half()
            if part.shape[1] > 1:
                nats = -log_probs[:, :-1].gather(-1, part[:, 1:].unsqueeze(-1)).squeeze(-1)
                bits[:, start : start + part.shape[1] - 1] = nats.double() / math.log(2)
                if base_probs is not None:
                    base_probs[:, start : start + part.shape[1] - 1] = log_probs[:, :-1, BASE_IDS].exp().half()
            previous = log_probs[:, -1]
    bits = bits.cpu().numpy()
    if base_probs is not None:
        base_probs = base_probs.cpu().numpy()
        probs.extend(base_probs[row, : len(lane)] for row, lane in enumerate(lanes))
    return [bits[row, : len(lane)] for row, lane in enumerate(lanes)]


def run_model(args) -> None:
    import torch

    from titans_cli.device import choose_device
    from titans_cli.model.context_mixing import is_base
    from titans_cli.model.files import load_model_dir

    device = choose_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 for a reported number
    out = open(args.out, "w")
    out.write(json.dumps({"machine": machine(), "model": str(args.model), "segment": args.segment,
                          "lanes": args.lanes, "piece": args.piece}) + "\n")
    # The units to score: (file, record, token ids, scored mask, bytes)
    units = []
    for path in map(Path, args.data):
        if args.kind == "dna":
            for record_id, ids in dna_records(path):
                units.append((path.name, record_id, ids, None))
        else:
            from titans_cli.model.tokenizers import BPETokenizer

            tokenizer = BPETokenizer.load(Path(args.model) / "tokenizer.json")
            raw = read_book(path)
            units.append((path.name, path.name.split(".")[0], tokenizer.encode(raw.decode("utf-8")), len(raw)))
    for mode in args.modes.split(","):
        started = time.perf_counter()
        loaded = load_model_dir(args.model, frozen_memory=(mode == "frozen"))
        model = loaded.model.to(device).eval()
        config = loaded.config
        # segments: (unit index, start, end), longest first so each batch has lanes of similar length
        segments = []
        for index, (_, _, ids, _) in enumerate(units):
            step = args.segment if args.kind == "dna" else len(ids)
            for start in range(0, len(ids), step):
                segments.append((index, start, min(len(ids), start + step)))
        segments.sort(key=lambda s: s[2] - s[1], reverse=True)
        totals = {i: [0.0, 0] for i in range(len(units))}
        keep = (args.save_probs or args.mix) and args.kind == "dna" and mode == "live"
        saved = {i: [] for i in range(len(units))} if keep else None
        for first in range(0, len(segments), args.lanes):
            group = segments[first : first + args.lanes]
            lanes = [units[i][2][a:b] for i, a, b in group]
            lane_probs = [] if saved is not None else None
            lane_bits = stream_bits(model, lanes, config.bos_id, config.pad_id, args.piece, device, lane_probs)
            if saved is not None:
                for (i, a, _), probs in zip(group, lane_probs):
                    saved[i].append((a, probs))
            for (i, a, b), bits, lane in zip(group, lane_bits, lanes):
                scored = is_base(lane) if args.kind == "dna" else np.ones(len(lane), dtype=bool)
                totals[i][0] += float(bits[scored].sum())
                totals[i][1] += int(scored.sum())
        seconds = time.perf_counter() - started
        record_probs = None
        if saved is not None:  # each record's (tokens, 4) float16 probabilities, in order
            record_probs = {i: np.concatenate([p for _, p in sorted(parts, key=lambda t: t[0])])
                            for i, parts in saved.items()}
        if record_probs is not None and args.save_probs:  # with the token ids, one pair of .npy per record
            directory = Path(args.save_probs)
            directory.mkdir(parents=True, exist_ok=True)
            for i, (name, record_id, ids, _) in enumerate(units):
                stem = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name.split('.')[0]}.{record_id}")
                np.save(directory / f"{stem}.probs.npy", record_probs[i])
                np.save(directory / f"{stem}.ids.npy", ids.astype(np.uint8))
        if record_probs is not None and args.mix:
            mix_units(units, record_probs, out)
        for i, (name, record_id, ids, n_bytes) in enumerate(units):
            row = {"mode": mode, "file": name, "record": record_id, "bits": totals[i][0], "scored": totals[i][1],
                   "tokens": int(len(ids))}
            if n_bytes is not None:
                row["bytes"] = n_bytes
            out.write(json.dumps(row) + "\n")
        out.write(json.dumps({"mode": mode, "seconds": seconds}) + "\n")
        out.flush()
        print(f"{args.kind} {mode}: {seconds:.1f} s", file=sys.stderr, flush=True)
        del model


def mix_units(units, probs: dict, out) -> None:
    """Bits of every record under context mixing (titans_cli.model.context_mixing): the live model's
    probabilities mixed base by base with online k-mer and repeat models over the whole record, one
    record per thread (the mixer releases the GIL). Writes rows of mode "mixed"."""
    from concurrent.futures import ThreadPoolExecutor

    from titans_cli.model.context_mixing import is_base, mix_bits

    started = time.perf_counter()

    def one(i):
        ids = units[i][2]
        bits = mix_bits(ids, probs[i].astype(np.float32))
        scored = is_base(ids)
        return float(bits[scored].sum(dtype=np.float64)), int(scored.sum())

    order = sorted(range(len(units)), key=lambda i: -len(units[i][2]))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = dict(zip(order, pool.map(one, order)))
    for i, (name, record_id, ids, _) in enumerate(units):
        bits, scored = results[i]
        out.write(json.dumps({"mode": "mixed", "file": name, "record": record_id, "bits": bits, "scored": scored,
                              "tokens": int(len(ids))}) + "\n")
    seconds = time.perf_counter() - started
    out.write(json.dumps({"mode": "mixed", "seconds": seconds}) + "\n")
    out.flush()
    print(f"dna context mixing: {seconds:.1f} s", file=sys.stderr, flush=True)


# -----------------------------------------------------------------------------
# General-purpose compressors


COMPRESSORS = {"xz -9": ["xz", "-9", "-c", "-T1"], "zstd -19 --long=27": ["zstd", "-19", "--long=27", "-c", "-q"]}


def compressed_size(data: bytes, command: list[str]) -> int:
    return len(subprocess.run(command, input=data, capture_output=True, check=True).stdout)


def run_compressors(args) -> None:
    result = {"machine": machine(), "files": []}
    for path in map(Path, args.data):
        entry = {"file": path.name, "records": []}
        if args.kind == "dna":
            from titans_cli.io.sequences import iter_records

            whole = []
            for record in iter_records(path):
                acgt = record.read().translate(None, b"N")
                whole.append(acgt)
                sizes = {name: compressed_size(acgt, cmd) for name, cmd in COMPRESSORS.items()}
                entry["records"].append({"record": record.id, "bases": len(acgt), "compressed": sizes})
            data = b"".join(whole)
            entry["bases"] = len(data)
            entry["compressed"] = {name: compressed_size(data, cmd) for name, cmd in COMPRESSORS.items()}
        else:
            data = read_book(path)
            entry["bytes"] = len(data)
            entry["compressed"] = {name: compressed_size(data, cmd) for name, cmd in COMPRESSORS.items()}
        result["files"].append(entry)
        print(path.name, entry["compressed"], file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


# -----------------------------------------------------------------------------
# Table


def read_model(path: str):
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    header = lines[0]
    rows = [line for line in lines[1:] if "file" in line]
    seconds = {line["mode"]: line["seconds"] for line in lines[1:] if "seconds" in line}
    return header, rows, seconds


def fmt(value, digits=3):
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def model_label(header: dict, name: str | None) -> str:
    """The model's name, with the sha256 of its weights when the directory is at hand."""
    if name is None:
        return f"`{header['model']}`"
    config = json.loads((Path(name) / "config.json").read_text())
    return f"`{name}` (weights sha256 {config['weights_sha256'][:12]}…)"


def dna_section(model_path: str, comp_path: str, model_name: str | None = None) -> str:
    header, rows, seconds = read_model(model_path)
    comp = json.loads(Path(comp_path).read_text())
    by = {}
    for row in rows:
        by.setdefault((row["file"], row["record"]), {})[row["mode"]] = row
    files = {}
    for (name, record), modes in by.items():
        files.setdefault(name, []).append((record, modes))
    comp_files = {entry["file"]: entry for entry in comp["files"]}
    mixed = any(row["mode"] == "mixed" for row in rows)
    frozen_run = any(row["mode"] == "frozen" for row in rows)
    lines = [
        "| genome (file) | record | ACGT bases | live memory |" + (" frozen memory | frozen − live |" if frozen_run else "")
        + (" live + context mixing |" if mixed else "") + " xz -9 | zstd -19 --long=27 |",
        "|---|---|---:|---:|" + ("---:|---:|" if frozen_run else "") + ("---:|" if mixed else "") + "---:|---:|",
    ]
    details, joint = [], []
    for name in sorted(files):
        records = files[name]
        entry = comp_files.get(name, {"records": [], "compressed": {}})
        comp_records = {r["record"]: r for r in entry["records"]}

        def row(label, record_label, live_bits, frozen_bits, mixed_bits, scored, comp_sizes, bases):
            live, frozen = live_bits / scored, frozen_bits / scored
            xz = 8 * comp_sizes["xz -9"] / bases if comp_sizes else None
            zstd = 8 * comp_sizes["zstd -19 --long=27"] / bases if comp_sizes else None
            mix = f" {fmt(mixed_bits / scored)} |" if mixed else ""
            kept = f" {fmt(frozen)} | {fmt(frozen - live)} |" if frozen_run else ""
            return f"| {label} | {record_label} | {scored:,} | {fmt(live)} |{kept}{mix} {fmt(xz)} | {fmt(zstd)} |"

        per_record = []
        for record, modes in records:
            c = comp_records.get(record)
            per_record.append(row(name, record, modes["live"]["bits"], modes.get("frozen", {}).get("bits", math.nan),
                                  modes.get("mixed", {}).get("bits", math.nan), modes["live"]["scored"],
                                  c["compressed"] if c else None, c["bases"] if c else None))
        # Compressor totals: the sum of the records compressed alone, like the model, which
        # starts every record afresh (one stream of all records is reported in the note below).
        alone = {key: sum(r["compressed"][key] for r in entry["records"]) for key in COMPRESSORS}
        total_live = sum(m["live"]["bits"] for _, m in records)
        total_frozen = sum(m.get("frozen", {}).get("bits", math.nan) for _, m in records)
        total_mixed = sum(m.get("mixed", {}).get("bits", math.nan) for _, m in records)
        scored = sum(m["live"]["scored"] for _, m in records)
        if len(records) == 1:
            lines.append(per_record[0])
        elif len(records) <= 4:
            lines.extend(per_record)
            lines.append(row(name, f"**all {len(records)}**", total_live, total_frozen, total_mixed, scored, alone,
                             entry.get("bases")))
            joint.append((name, entry))
        else:
            lines.append(row(name, f"**all {len(records)} records**", total_live, total_frozen, total_mixed, scored,
                             alone, entry.get("bases")))
            joint.append((name, entry))
            details.append((name, per_record))
    text = "\n".join(lines) + "\n"
    text += (f"\nModel {model_label(header, model_name)}; records streamed in independent segments of {header['segment']:,} bases "
             f"({header['lanes']} lanes in parallel, pieces of {header['piece']:,}). Model time: live {seconds.get('live', float('nan')):.0f} s"
             + (f", frozen {seconds['frozen']:.0f} s" if "frozen" in seconds else "") + f" on {header['machine']}."
             + f" Compressors on {comp['machine']}: "
             "each record's ACGT bytes (N removed) compressed alone; a file's total is the sum over its records.\n")
    if mixed:
        text += ("\nLive + context mixing: the live model's probabilities mixed, base by base, with online k-mer and "
                 "repeat models run over each whole record (`titans_cli/model/context_mixing.py`; the model's own "
                 "segments as above); mixing took "
                 f"{seconds.get('mixed', float('nan')):.0f} s of CPU threads on the same machine.\n")
    for name, entry in joint:
        text += (f"\n{name}, all records' ACGT bytes as one stream (the compressor then also exploits similarity "
                 f"between records, which the per-record model cannot): xz -9 {fmt(8 * entry['compressed']['xz -9'] / entry['bases'])}, "
                 f"zstd -19 --long=27 {fmt(8 * entry['compressed']['zstd -19 --long=27'] / entry['bases'])} bits/base.\n")
    for name, per_record in details:
        text += f"\n<details><summary>{name}: every record</summary>\n\n" + "\n".join(lines[:2] + per_record) + "\n\n</details>\n"
    return text


def text_section(model_path: str, comp_path: str, model_name: str | None = None) -> str:
    header, rows, seconds = read_model(model_path)
    comp = {entry["file"]: entry for entry in json.loads(Path(comp_path).read_text())["files"]}
    books = {}
    for row in rows:
        books.setdefault(row["file"], {})[row["mode"]] = row
    lines = [
        "| book | UTF-8 bytes | live memory | frozen memory | frozen − live | xz -9 | zstd -19 --long=27 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    sums = {"live": 0.0, "frozen": 0.0, "bytes": 0, "xz -9": 0, "zstd -19 --long=27": 0}
    for name in sorted(books):
        live, frozen = books[name]["live"], books[name]["frozen"]
        n_bytes = live["bytes"]
        sizes = comp[name]["compressed"]
        sums["live"] += live["bits"]
        sums["frozen"] += frozen["bits"]
        sums["bytes"] += n_bytes
        for key in ("xz -9", "zstd -19 --long=27"):
            sums[key] += sizes[key]
        lines.append(f"| {name.split('.')[0]} | {n_bytes:,} | {fmt(live['bits'] / n_bytes)} | {fmt(frozen['bits'] / n_bytes)} | "
                     f"{fmt((frozen['bits'] - live['bits']) / n_bytes)} | {fmt(8 * sizes['xz -9'] / n_bytes)} | "
                     f"{fmt(8 * sizes['zstd -19 --long=27'] / n_bytes)} |")
    b = sums["bytes"]
    lines.append(f"| **all {len(books)} books** | {b:,} | **{fmt(sums['live'] / b)}** | {fmt(sums['frozen'] / b)} | "
                 f"{fmt((sums['frozen'] - sums['live']) / b)} | {fmt(8 * sums['xz -9'] / b)} | {fmt(8 * sums['zstd -19 --long=27'] / b)} |")
    text = "\n".join(lines) + "\n"
    text += (f"\nModel {model_label(header, model_name)}; each book streamed whole (one lane per book, pieces of {header['piece']:,} tokens); "
             f"bits/byte = total bits of the book's tokens / its UTF-8 bytes. Model time: live {seconds.get('live', float('nan')):.0f} s, "
             f"frozen {seconds.get('frozen', float('nan')):.0f} s on {header['machine']}. Compressors on {comp_machine(comp_path)}: each book compressed alone.\n")
    return text


def comp_machine(path: str) -> str:
    return json.loads(Path(path).read_text())["machine"]


def run_table(args) -> None:
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    if args.append:
        # Another model's section under its own heading, after the sections already in the file.
        if bool(args.dna) == bool(args.text):
            raise SystemExit("compression.py table --append: give one model's section, --dna or --text")
        if args.dna:
            title = args.append_title or f"DNA: bits per base (ACGT only), {args.dna_name or 'second model'}"
            body = dna_section(*args.dna, model_name=args.dna_name)
        else:
            title = args.append_title or f"Text: bits per UTF-8 byte, held-out books, {args.text_name or 'second model'}"
            body = text_section(*args.text, model_name=args.text_name)
        section = ["", f"## {title}", "", body]
        with open(args.output, "a") as handle:
            handle.write("\n".join(section))
        return
    parts = ["# Held-out compression: Titans models vs general-purpose compressors", "",
             "Generated by `benchmarks/compression.py` (see its docstring for the commands). Evaluation data: "
             "`../shared/data/dna/eval` and `../shared/data/text/eval/books`, never used for training or selection.", ""]
    if args.dna:
        parts += ["## DNA: bits per base (ACGT only)", "", dna_section(*args.dna, model_name=args.dna_name)]
    if args.text:
        parts += ["## Text: bits per UTF-8 byte, held-out books", "", text_section(*args.text, model_name=args.text_name)]
    Path(args.output).write_text("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    model = sub.add_parser("model", help="model bits, live and frozen memory")
    model.add_argument("data", nargs="+")
    model.add_argument("--model", required=True)
    model.add_argument("--kind", choices=("dna", "text"), required=True)
    model.add_argument("--out", required=True)
    model.add_argument("--segment", type=int, default=1_000_000, help="DNA: bases per independent lane")
    model.add_argument("--lanes", type=int, default=128)
    model.add_argument("--piece", type=int, default=8192)
    model.add_argument("--device", default="auto")
    model.add_argument("--modes", default="live,frozen", help="comma-separated: live, frozen")
    model.add_argument("--mix", action="store_true",
                       help="DNA: also score every record under context mixing (mode 'mixed' rows)")
    model.add_argument("--save-probs", metavar="DIR",
                       help="DNA: write each record's live A/C/G/T probabilities (float16) and token ids as .npy")
    comp = sub.add_parser("compressors", help="xz -9 and zstd -19 --long=27 on the same content")
    comp.add_argument("data", nargs="+")
    comp.add_argument("--kind", choices=("dna", "text"), required=True)
    comp.add_argument("--out", required=True)
    table = sub.add_parser("table", help="write the markdown table")
    table.add_argument("--dna", nargs=2, metavar=("MODEL_JSONL", "COMP_JSON"))
    table.add_argument("--text", nargs=2, metavar=("MODEL_JSONL", "COMP_JSON"))
    table.add_argument("--dna-name", default=None, help="name of the DNA model directory shown in the table")
    table.add_argument("--text-name", default=None, help="name of the text model directory shown in the table")
    table.add_argument("-o", "--output", default=str(REPO / "benchmarks/results/compression.md"))
    table.add_argument("--append", action="store_true",
                       help="append the --dna or --text section to OUTPUT under its own heading (a second model)")
    table.add_argument("--append-title", default=None, help="heading of the appended section")
    args = parser.parse_args()
    {"model": run_model, "compressors": run_compressors, "table": run_table}[args.step](args)


if __name__ == "__main__":
    main()
