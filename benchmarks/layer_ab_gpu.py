"""Same-machine A/B of the memory layer between source trees: issue 8's reference layer (bf16 autocast,
momentum=False) and its parts, timed with the titans_cli package of the tree given, so that two
commits can be compared on one warm GPU in one device call. Calls on fresh machines spread by 10-20 %,
more than most single changes gain; run the trees alternately, more than once.

    git archive COMMIT titans_cli | tar -x -C carry/t_COMMIT     # one tree per commit to compare
    for tree in carry/t_A carry/t_B carry/t_A carry/t_B; do python benchmarks/layer_ab_gpu.py $tree; done

Prints one line per measurement (median of CUDA-event timings, synchronised after each call): layer
forward (and back to back: 10 calls queued, common.cuda_queued_ms), layer forward+backward of a
mean-square loss, the input kernel alone, and the memory op's forward alone.
Writes no results file (the lines go into the notes of the change they measured).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", type=Path, help="a directory holding a titans_cli package")
    parser.add_argument("--label", help="printed before each line (default: the tree's name)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py (no titans_cli import)
    sys.path.insert(0, str(tree))
    import common
    import torch

    import titans_cli
    from titans_cli.memory import prepare_triton, triton_fused
    from titans_cli.memory.config import MemoryConfig
    from titans_cli.memory.layer import NeuralMemory

    if not Path(titans_cli.__file__).resolve().is_relative_to(tree):
        sys.exit(f"imported titans_cli from {titans_cli.__file__}, not from {tree}")
    if not torch.cuda.is_available():
        sys.exit("layer_ab_gpu.py needs a CUDA GPU")
    label = args.label or tree.name

    def median_ms(fn, warmup=3, repeats=15):
        return statistics.median(common.cuda_times_ms(fn, warmup, repeats))

    torch.manual_seed(0)
    config = MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64)
    layer = NeuralMemory(256, config).cuda()
    x = torch.randn(8, 16384, 256, device="cuda")

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return layer(x, backend="triton", momentum=False)

    def forward_backward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x, backend="triton", momentum=False)[0]
        y.float().square().mean().backward()
        layer.zero_grad(set_to_none=True)

    print(f"{label}: layer forward {median_ms(forward):.2f} ms ({common.cuda_queued_ms(forward, 10):.2f} back to "
          f"back), forward+backward {median_ms(forward_backward, 2, 7):.2f} ms", flush=True)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        projected, gate_pre, state = layer.to_qkv(x), layer.to_gates(x), layer.initial_state(8)

        def prepare():
            return prepare_triton.prepare_inputs(projected, state.conv_tail, layer.conv.weight, layer.conv.bias,
                                                 gate_pre, config.num_heads, config.max_lr)

        print(f"{label}: input kernel {median_ms(prepare) * 1e3:.0f} µs", flush=True)
        q, k, v, gates = prepare()
        op_ms = median_ms(lambda: triton_fused._fused_forward(q, k, v, gates[0], gates[1], gates[2], None,
                                                              state.weights, state.momenta, config, None,
                                                              momentum_signal=False))
        print(f"{label}: memory op forward {op_ms:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
