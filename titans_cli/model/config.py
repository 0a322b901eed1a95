"""ModelConfig: the architecture of a Titans language model, and the named presets we ship.

A model directory's config.json is `ModelConfig.to_dict()` plus `format_version` and
`weights_sha256` (see files.py). Invalid values raise ValueError with a message naming the field;
the loader turns that into a TitansInputError naming config.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from titans_cli.memory.config import MemoryConfig
from titans_cli.model.tokenizers import BOS_ID, EOS_ID, PAD_ID, DNATokenizer

BLOCK_TYPES = ("mag", "mal", "lmm", "mac")
TOKENIZER_KINDS = ("dna", "bpe")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = DNATokenizer.vocab_size
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4  # attention heads (the memory has its own: memory.num_heads)
    block: str = "mag"  # mag | mal | lmm | mac
    window: int = 128  # sliding attention window in tokens (>= memory.chunk_size)
    n_persistent: int = 4  # learnable persistent-memory tokens every query attends to
    ffn_mult: float = 2.5  # SwiGLU hidden width = ffn_mult * d_model (rounded to 16)
    dropout: float = 0.0
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    tokenizer: str = "dna"  # dna | bpe
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "window"):
            positive_int(name)
        if not isinstance(self.memory, MemoryConfig):
            raise ValueError(f"memory must be a MemoryConfig, got {type(self.memory).__name__}")
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"block must be one of {', '.join(BLOCK_TYPES)}, got {self.block!r}")
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {self.tokenizer!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"attention head size d_model/n_heads ({self.d_model // self.n_heads}) must be even (rotary positions)")
        # The memory is updated once per chunk; a window shorter than a chunk would leave the
        # tokens of the current chunk, which the memory cannot see yet, outside attention too.
        if self.window < self.memory.chunk_size:
            raise ValueError(f"window ({self.window}) must be >= memory.chunk_size ({self.memory.chunk_size})")
        if not isinstance(self.n_persistent, int) or isinstance(self.n_persistent, bool) or self.n_persistent < 0:
            raise ValueError(f"n_persistent must be an integer >= 0, got {self.n_persistent!r}")
        if not (isinstance(self.ffn_mult, (int, float)) and math.isfinite(self.ffn_mult) and self.ffn_mult > 0):
            raise ValueError(f"ffn_mult must be a finite number > 0, got {self.ffn_mult!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        specials = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        for name, value in specials.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be an integer in [0, vocab_size={self.vocab_size}), got {value!r}")
        if len(set(specials.values())) != 3:
            raise ValueError(f"bos_id, eos_id and pad_id must differ, got {specials}")
        if self.tokenizer == "dna" and self.vocab_size != DNATokenizer.vocab_size:
            raise ValueError(f"a DNA model has vocab_size {DNATokenizer.vocab_size}, got {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        values = dict(data)
        if "memory" in values:
            if not isinstance(values["memory"], dict):
                raise ValueError("memory must be a JSON object of MemoryConfig fields")
            values["memory"] = MemoryConfig.from_dict(values["memory"])
        return cls(**values)

    def replace(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


# -----------------------------------------------------------------------------
# Presets
#
# How to pick a preset. The shipped DNA model must stream a bacterial genome on a 2-core CPU in
# a few minutes (E. coli, 4.6 Mbp, in <= 3 min = 25,000 bases/s), so its size is set by CPU
# throughput, measured with `python -m titans_cli.model.throughput PRESET --backend numba`
# (TitansLM.step, one lane, pieces of 8192 tokens, Numba memory kernels, weights at init).
# Measured on the project's 2-core AMD EPYC VM (AVX2) while other jobs held the load average at
# 10-14, so only CPU-time figures are meaningful (best of 4, torch and Numba at 1 thread):
#   d_model 128, 2 layers, 4 attention heads, window 128     11,200 tokens/s per core
#   d_model 128, 2 layers, 2 attention heads, window 128     13,100 tokens/s per core  <- dna-small
#   d_model 128, 2 layers, 2 heads, window 64, ffn 2.0       13,100 tokens/s per core
#   d_model 160, 2 layers, 2 heads, window 128, ffn 2.0      11,800 tokens/s per core
#   d_model 128, 3 layers, 2 heads, window 128, ffn 2.0       8,300 tokens/s per core
# Two cores give at most twice the per-core figure, so dna-small reaches ~25k bases/s only on an
# otherwise idle machine; anything larger misses the 3-minute E. coli budget. Time goes to the
# dense layers (~40%: every linear is d x d-sized), the Numba memory update (~30%) and the banded
# attention (~20%). text-small is 4x larger per token (d_model 256, 4 layers, 8k BPE vocabulary;
# a BPE token is ~4 bytes of text, so its per-byte cost is close to the DNA model's per-base cost).

PRESETS: dict[str, ModelConfig] = {
    "dna-small": ModelConfig(
        vocab_size=DNATokenizer.vocab_size,
        d_model=128,
        n_layers=2,
        n_heads=2,
        block="mag",
        window=128,
        n_persistent=4,
        ffn_mult=2.5,
        memory=MemoryConfig(num_heads=4, head_dim=32, depth=2, expansion=2, chunk_size=64),
        tokenizer="dna",
    ),
    # The GPU model: 8x dna-small's parameters (4.6M) at ~6x its CPU time per base (382 vs 56
    # CPU-s/Mbase: E. coli in ~17 min on 2 cores, benchmarks/results/speed_model_cpu_dna_base.md).
    # Its memory (4 heads x 64, hidden 128) is the reference configuration of the fused kernels,
    # bf16 backward included, so it trains at ~480k tokens/s on one H100.
    "dna-base": ModelConfig(
        vocab_size=DNATokenizer.vocab_size,
        d_model=256,
        n_layers=4,
        n_heads=4,
        block="mag",
        window=256,
        n_persistent=4,
        ffn_mult=2.5,
        memory=MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64),
        tokenizer="dna",
    ),
    "text-small": ModelConfig(
        vocab_size=8192,
        d_model=256,
        n_layers=4,
        n_heads=4,
        block="mag",
        window=256,
        n_persistent=4,
        ffn_mult=2.5,
        memory=MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64),
        tokenizer="bpe",
    ),
}
# The larger text model (the shipped default for text): text-small twice as deep (8 blocks, 11.3M
# parameters), stored in bf16 (22.7 MB) to stay under the ~25 MB cap. 1.6x the shipped `text`'s
# CPU time per byte (237 vs 149 CPU-s per MB, benchmarks/results/speed_model_cpu_text_base.md);
# its memory is the fused kernels' reference configuration (4 heads x 64), so it trains with the
# bf16 Triton backward.
PRESETS["text-base"] = PRESETS["text-small"].replace(n_layers=8)


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset with optional overrides, e.g. `preset("dna-small", block="mal")`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def resolve_config(config) -> ModelConfig:
    """A ModelConfig from a ModelConfig, a preset name or a dict of fields (e.g. from a checkpoint)."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, dict):
        return ModelConfig.from_dict(config)
    raise TypeError(f"expected a ModelConfig, a preset name or a dict, got {type(config).__name__}")
