"""Measure streaming throughput of a model preset on this machine (how the presets were chosen).

    python -m titans_cli.model.throughput dna-small --backend numba --tokens 200000 --piece 8192

Streams random tokens of the preset's vocabulary, one lane, in pieces of `--piece` tokens through
`TitansLM.step` (weights at initialisation: speed does not depend on their values) and prints
tokens/s by wall clock and by process CPU time. On a shared machine the wall-clock number is
what others' load leaves you; CPU time / threads is the number for an idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from titans_cli.model.config import PRESETS, ModelConfig, preset
from titans_cli.model.lm import TitansLM


def measure(config: ModelConfig, tokens: int, piece: int, backend: str, batch: int = 1, warmup: int = 2) -> dict:
    model = TitansLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    stream = torch.randint(3, config.vocab_size, (batch, tokens), generator=generator)
    with torch.inference_mode():
        state = None
        for _ in range(warmup):  # JIT compilation and allocator warm-up
            _, state = model.step(stream[:, :piece], state, backend=backend)
        state = None
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, tokens, piece):
            _, state = model.step(stream[:, start : start + piece], state, backend=backend)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    threads = torch.get_num_threads()
    return {
        "parameters": model.num_parameters(),
        "tokens_per_s_wall": batch * tokens / wall,
        "tokens_per_s_cpu": batch * tokens / (cpu / threads),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--backend", default="torch", choices=["torch", "numba"])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--piece", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field (int/float/str)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        field, value = item.split("=", 1)
        for cast in (int, float, str):
            try:
                overrides[field] = cast(value)
                break
            except ValueError:
                continue
    for name in args.presets:
        config = preset(name, **overrides)
        result = measure(config, args.tokens, args.piece, args.backend, args.batch)
        print(
            f"{name:12s} {args.backend:6s} params {result['parameters'] / 1e6:6.2f}M  "
            f"{result['tokens_per_s_wall']:9.0f} tokens/s wall  {result['tokens_per_s_cpu']:9.0f} tokens/s cpu/threads  "
            f"(threads {result['threads']}, piece {args.piece}, batch {args.batch})",
            flush=True,
        )


if __name__ == "__main__":
    main()
