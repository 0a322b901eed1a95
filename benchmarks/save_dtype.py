"""What bfloat16 weight storage (`titans train --save-dtype bfloat16`) costs a model: bits/base with
the model's float32 weights vs the same weights rounded to bfloat16, on stretches of genomes.

    python benchmarks/save_dtype.py --model dna-base \
        ../shared/data/dna/train/homo_sapiens_chrX_0-50Mb.fa.gz:17000000-17300000 \
        ../shared/data/dna/train/klebsiella_pneumoniae.fa.gz:1000000-1300000

Each input is FILE[:START-END] (0-based, end exclusive, in the file's first record). The default
inputs are training data: this measures storage rounding, not generalisation, so any genome serves.
The bfloat16 copy is written with `save_model_dir(..., weights_dtype="bfloat16")` and loaded back
with `load_model_dir`, exactly as a saved model directory would be. Writes
benchmarks/results/save_dtype.md (the machine line names the CPU / GPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402

DEFAULT_INPUTS = [
    "../shared/data/dna/train/homo_sapiens_chrX_0-50Mb.fa.gz:17000000-17300000",
    "../shared/data/dna/train/klebsiella_pneumoniae.fa.gz:1000000-1300000",
]


def read_stretch(spec: str) -> tuple[str, str]:
    """(label, sequence) of FILE[:START-END] in the file's first record."""
    path, _, span = spec.partition(":")
    record_id, sequence = common.read_fasta(Path(path))[0]
    if span:
        start, end = (int(x.replace(",", "")) for x in span.split("-"))
        sequence = sequence[start:end]
    return f"{Path(path).name}{':' + span if span else ''}", sequence


def bits_per_base(model, label: str, sequence: str) -> tuple[float, float]:
    from titans_cli import surprise

    start = time.perf_counter()
    (track,) = surprise(model, [(label, sequence)], metric="bits")
    return track.bits_per_unit, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", default=DEFAULT_INPUTS)
    parser.add_argument("--model", default="dna-base")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from titans_cli import Model
    from titans_cli.device import choose_runtime
    from titans_cli.model import load_model as load_named, load_model_dir, save_model_dir

    timer = common.Timer()
    runtime = choose_runtime(args.device)
    stretches = [read_stretch(spec) for spec in args.inputs]
    loaded = load_named(args.model, device=runtime.device)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        half_dir = save_model_dir(loaded.model.cpu(), loaded.config, loaded.tokenizer, Path(scratch) / "bf16",
                                  weights_dtype="bfloat16")
        loaded.model.to(runtime.device)
        sizes = [(loaded.path / "model.safetensors").stat().st_size, (half_dir / "model.safetensors").stat().st_size]
        variants = [("float32", Model(args.model, loaded, runtime)),
                    ("bfloat16", Model(args.model, load_model_dir(half_dir, device=runtime.device), runtime))]
        for label, sequence in stretches:
            measured = {name: bits_per_base(model, label, sequence) for name, model in variants}
            common.log(f"{label}: " + ", ".join(f"{name} {bits:.4f} ({seconds:.0f} s)" for name, (bits, seconds) in measured.items()))
            rows.append([label, f"{len(sequence):,}", f"{measured['float32'][0]:.4f}", f"{measured['bfloat16'][0]:.4f}",
                         f"{measured['bfloat16'][0] - measured['float32'][0]:+.4f}"])
    body = (f"Model `{args.model}` on {runtime.device.type} (memory backend {runtime.backend}): bits/base of "
            f"`titans_cli.surprise(metric='bits')` with the float32 weights ({sizes[0] / 1e6:.1f} MB) and with "
            f"the same weights stored as bfloat16 ({sizes[1] / 1e6:.1f} MB) and loaded back. Command: "
            f"`python benchmarks/save_dtype.py {' '.join(sys.argv[1:])}`.\n\n"
            + common.md_table(["stretch", "bases", "float32", "bfloat16", "difference"], rows))
    gpu = None
    if runtime.device.type == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(runtime.device)
    path = common.write_section("save_dtype", "bfloat16 weight storage: what it costs", body, quick=False,
                                elapsed_s=timer.elapsed, gpu=gpu)
    print(path.read_text())


if __name__ == "__main__":
    main()
