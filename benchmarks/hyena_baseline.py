"""A HyenaDNA-shaped baseline for GPU throughput: our own implementation of the small-32k shape.

HyenaDNA (Nguyen et al. 2023) "small-32k": d_model 256, 4 Hyena blocks, operator order 2, implicit
long filters (a small MLP over a positional encoding, sine activations, exponential decay window),
short depthwise convolution of width 3, MLP expansion 4, single-nucleotide vocabulary (12 ids),
~3.3 M parameters. Written here from the paper's description (no code copied), random weights:
it measures how fast that *shape* runs — a forward pass over whole 32k sequences with FFT long
convolutions, not streaming — beside the shipped Titans model in the same run and on the same card.

    python benchmarks/hyena_baseline.py --batches 8 16 32 --length 32768
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F


class Sine(nn.Module):
    def __init__(self, width: int, frequency: float = 1.0):
        super().__init__()
        self.frequency = nn.Parameter(frequency * torch.ones(1, width))

    def forward(self, x):
        return torch.sin(self.frequency * x)


class ImplicitFilter(nn.Module):
    """h_c(t) = MLP(position encoding of t)_c * exp(-decay_c t): one long filter per channel."""

    def __init__(self, channels: int, max_length: int, width: int = 64, emb_dim: int = 5):
        super().__init__()
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, max_length).unsqueeze(1)  # (L, 1)
        angle = 2 * math.pi * torch.arange(max_length).unsqueeze(1) / max_length
        frequencies = torch.linspace(1e-4, bands - 1, bands).unsqueeze(0)
        self.register_buffer("encoding", torch.cat([t, torch.cos(angle * frequencies), -torch.sin(angle * frequencies)], dim=1))
        self.register_buffer("time", t)
        self.mlp = nn.Sequential(
            nn.Linear(emb_dim, width), Sine(width), nn.Linear(width, width), Sine(width),
            nn.Linear(width, width), Sine(width), nn.Linear(width, channels, bias=False),
        )
        fast, slow = math.log(1e-2) / 0.3, math.log(1e-2) / 1.5  # decay to 1% at 30% .. 150% of the length
        self.register_buffer("decay", torch.linspace(fast, slow, channels).abs().unsqueeze(0))

    def forward(self, length: int) -> torch.Tensor:  # (channels, length)
        filters = self.mlp(self.encoding[:length]) * torch.exp(-self.decay * self.time[:length])
        return filters.transpose(0, 1)


class HyenaOperator(nn.Module):
    """Order-2 Hyena: y = out(x2 * (h2 * (x1 * (h1 * v)))), * along time = causal FFT convolution."""

    def __init__(self, d_model: int, max_length: int, order: int = 2):
        super().__init__()
        self.d_model, self.order = d_model, order
        self.in_proj = nn.Linear(d_model, (order + 1) * d_model)
        self.short = nn.Conv1d((order + 1) * d_model, (order + 1) * d_model, 3, padding=2, groups=(order + 1) * d_model)
        self.filters = ImplicitFilter(order * d_model, max_length)
        self.filter_bias = nn.Parameter(torch.randn(order * d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x):  # (B, L, D)
        length = x.shape[1]
        u = self.in_proj(x).transpose(1, 2)  # (B, (order+1) D, L)
        u = self.short(u)[..., :length]
        *gates, v = u.split(self.d_model, dim=1)
        filters = self.filters(length).view(self.order, self.d_model, length)
        bias = self.filter_bias.view(self.order, self.d_model, 1)
        size = 2 * length
        for i, gate in enumerate(gates):
            spectrum = torch.fft.rfft(v, n=size) * torch.fft.rfft(filters[i], n=size)
            v = gate * (torch.fft.irfft(spectrum, n=size)[..., :length] + v * bias[i])
        return self.out_proj(v.transpose(1, 2))


class HyenaBlock(nn.Module):
    def __init__(self, d_model: int, max_length: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.mixer = HyenaOperator(d_model, max_length)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HyenaLM(nn.Module):
    def __init__(self, d_model: int = 256, n_layers: int = 4, max_length: int = 32768, vocab: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(HyenaBlock(d_model, max_length) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def bits_per_token(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """-log2 p(next token): the same per-position output the Titans surprise track computes."""
    logits = logits[:, :-1].float()
    return (torch.logsumexp(logits, -1) - logits.gather(-1, tokens[:, 1:, None]).squeeze(-1)) / math.log(2)


def throughput(batch: int, length: int, device: torch.device, repeats: int = 5, tf32: bool = False) -> dict:
    """Bases/s of a forward pass + per-base bits in fp32 (matrix products in tf32 when `tf32`),
    random weights and random bases."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return {**_throughput(batch, length, device, repeats), "tf32": tf32}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@torch.inference_mode()
def _throughput(batch: int, length: int, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    model = HyenaLM(max_length=length).to(device).eval()
    tokens = torch.randint(7, 11, (batch, length), device=device)  # A C G T ids of HyenaDNA's vocabulary
    bits_per_token(model(tokens), tokens)  # warm-up
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bits_per_token(model(tokens), tokens)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    return {
        "batch": batch, "length": length, "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": seconds, "rate": batch * length / seconds,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--length", type=int, default=32768)
    args = parser.parse_args()
    device = torch.device("cuda")
    for batch in args.batches:
        row = throughput(batch, args.length, device)
        print(f"HyenaDNA-shaped small-32k ({row['parameters']:,} parameters) batch {batch} x {args.length}: "
              f"{row['rate'] / 1e6:.2f} M bases/s, peak {row['peak_gib']:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
