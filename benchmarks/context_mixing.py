"""Context mixing (titans_cli/model/context_mixing.py) on a model's saved probabilities: bits per
base with each group of experts and all of them, and the mixer's speed. This is where the mixer's
settings were chosen, on training data only.

Inputs: directories written by `compression.py model --save-probs DIR` (one `.probs.npy` and one
`.ids.npy` per record). Records given together with `+` are joined in that order into one sequence
(slices of one chromosome cut into files). The settings were chosen on `dna-base`'s probabilities
over GRCh37 chrX 40.0-41.5 and 41.5-43.0 Mb (cut from `dna/train/homo_sapiens_chrX_0-50Mb.fa.gz`,
outside every model's training slice) and H. pylori ELS37 (the first record of
`dna/train/helicobacter_pylori.fa.gz`):

    python benchmarks/compression.py model --model models/dna-base --kind dna --out tune.jsonl \\
        --segment 1000000 --lanes 128 --piece 8192 --modes live --save-probs probs chrX_400-415.fa.gz \\
        chrX_415-430.fa.gz hpylori_els37.fa.gz                       # on a GPU
    python benchmarks/context_mixing.py \\
        "chrX 40-43 Mb=probs/chrX_400-415.chrX_40000000_41500000+probs/chrX_415-430.chrX_41500000_43000000" \\
        "H. pylori ELS37=probs/hpylori_els37.NC_017063.1"

Each NAME=PATH[+PATH...] is a sequence (PATH without the .probs.npy / .ids.npy suffix). Bits are over
A/C/G/T positions, as compression.py scores them. Writes benchmarks/results/context_mixing.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from titans_cli.model.context_mixing import FIRST_BASE, ContextMixer, is_base  # noqa: E402

VARIANTS = {  # name -> ContextMixer keywords
    "model through the mixer": {"kmers": False, "repeats": False},
    "+ k-mer experts": {"repeats": False},
    "+ repeat experts": {"kmers": False},
    "all (the default)": {},
}


def load(spec: str) -> tuple[str, np.ndarray, np.ndarray]:
    name, paths = spec.split("=", 1)
    parts = [Path(p) for p in paths.split("+")]
    ids = np.concatenate([np.load(f"{p}.ids.npy") for p in parts]).astype(np.int64)
    probs = np.concatenate([np.load(f"{p}.probs.npy") for p in parts]).astype(np.float32)
    return name, ids, probs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sequences", nargs="+", help="NAME=PATH[+PATH...] (saved probabilities, see above)")
    args = parser.parse_args()
    started = time.time()
    ContextMixer(1000).bits(np.full(100, FIRST_BASE), np.full((100, 4), 0.25, dtype=np.float32))  # compile first
    rows = []
    for spec in args.sequences:
        name, ids, probs = load(spec)
        scored = is_base(ids)
        model_bits = -np.log2(probs[np.flatnonzero(scored), ids[scored] - FIRST_BASE].astype(np.float64)).mean()
        rows.append([name, f"{int(scored.sum()):,}", "the model alone", f"{model_bits:.4f}", "", ""])
        for variant, options in VARIANTS.items():
            began = time.perf_counter()
            bits = ContextMixer(len(ids), **options).bits(ids, probs)
            seconds = time.perf_counter() - began
            rows.append([name, "", variant, f"{np.mean(bits[scored], dtype=np.float64):.4f}", f"{seconds:.1f}",
                         f"{len(ids) / seconds:,.0f}"])
            common.log(f"{name} {variant}: {rows[-1][3]} bits/base, {seconds:.1f} s")
    body = ("Bits per base over A/C/G/T positions of a model's saved probabilities (`compression.py model "
            "--save-probs`), alone and mixed (`titans_cli/model/context_mixing.py`) with each group of experts; "
            "seconds and bases/s of the mixer on one core (table allocation included, compilation not). "
            f"Command: `python benchmarks/context_mixing.py {' '.join(repr(s) for s in args.sequences)}`.\n\n"
            + common.md_table(["sequence", "ACGT bases", "predictor", "bits/base", "s", "bases/s"], rows))
    path = common.write_section("context_mixing", "Context mixing on training slices (where its settings were chosen)",
                                body, quick=False, elapsed_s=time.time() - started)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
