"""MemoryConfig: the MIRAS design choices of the neural long-term memory, and the named presets.

Every field changes the math (see MEMORY_MATH.md and the docstrings of `mlp.py`):

- memory architecture: ``depth`` (1 = linear memory ``M(k) = W k``; L >= 2 = MLP
  ``W_L σ(... σ(W_1 k))`` with SiLU σ and hidden width ``expansion * head_dim``);
- attentional bias (the inner loss ``Σ_j f(M(k)_j - v_j)``): ``l2`` f(r) = r², ``lp`` f(r) = |r|^p,
  ``huber`` f(r) = r² for |r| <= δ_t else 2δ_t|r| - δ_t² (δ_t per token, from the input);
- retention: ``decay`` (Titans' M_t = (1 - α_t) M_{t-1} + S_t), ``lq`` (decay plus an l_q-ball
  normalisation of every weight matrix at chunk end, Moneta), ``kl`` (softmax normalisation of the
  rows in log space at chunk end with α_t as a log-space temperature, Memora), ``none`` (M_t =
  M_{t-1} + S_t);
- learning algorithm: ``momentum`` (S_t = η_t S_{t-1} - θ_t u_t) or ``gd`` (S_t = -θ_t u_t).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

ATTENTIONAL_BIASES = ("l2", "lp", "huber")
RETENTIONS = ("decay", "lq", "kl", "none")
ALGORITHMS = ("gd", "momentum")


@dataclass(frozen=True)
class MemoryConfig:
    num_heads: int = 4
    head_dim: int = 64
    depth: int = 2  # 1 = linear memory
    expansion: int = 2  # hidden width of the memory MLP = expansion * head_dim
    chunk_size: int = 64  # tokens per mini-batch of the inner gradient descent (paper §3.2)
    attentional_bias: str = "l2"
    p: float = 3.0  # exponent of the lp attentional bias
    retention: str = "decay"
    q: float = 4.0  # exponent of the lq retention norm
    retention_radius: float = 1.5  # radius of the lq ball / row mass of kl, in units of 1/sqrt(fan_in)
    algorithm: str = "momentum"
    max_lr: float = 0.1  # theta_t = max_lr * sigmoid(.)
    max_grad_norm: float = 1.0  # ||u_t|| is clipped to this (bounds every inner step; titans-pytorch #22/#29)
    conv_size: int = 4  # depthwise causal conv after the q/k/v projections; 1 = none

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MemoryConfig.{name} must be a positive integer, got {value!r}")

        for name in ("num_heads", "head_dim", "depth", "expansion", "chunk_size", "conv_size"):
            positive_int(name)
        if self.attentional_bias not in ATTENTIONAL_BIASES:
            raise ValueError(
                f"MemoryConfig.attentional_bias must be one of {', '.join(ATTENTIONAL_BIASES)}, "
                f"got {self.attentional_bias!r}"
            )
        if self.retention not in RETENTIONS:
            raise ValueError(
                f"MemoryConfig.retention must be one of {', '.join(RETENTIONS)}, got {self.retention!r}"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"MemoryConfig.algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}"
            )
        # p >= 1 keeps f(r) = |r|^p convex with a finite derivative f'(r) = p sign(r) |r|^(p-1).
        if not (isinstance(self.p, (int, float)) and math.isfinite(self.p) and self.p >= 1.0):
            raise ValueError(f"MemoryConfig.p (lp attentional bias) must be a finite number >= 1, got {self.p!r}")
        if not (isinstance(self.q, (int, float)) and math.isfinite(self.q) and self.q >= 1.0):
            raise ValueError(f"MemoryConfig.q (lq retention) must be a finite number >= 1, got {self.q!r}")
        for name in ("retention_radius", "max_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"MemoryConfig.{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0):
            raise ValueError(
                f"MemoryConfig.max_grad_norm must be > 0 (float('inf') disables clipping), got {self.max_grad_norm!r}"
            )

    @property
    def hidden_dim(self) -> int:
        return self.expansion * self.head_dim

    @property
    def inner_dim(self) -> int:
        """Width of the concatenated heads (q/k/v projection size)."""
        return self.num_heads * self.head_dim

    def weight_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of each memory layer: depth 1 is d x d; otherwise h x d, (h x h)*, d x h."""
        d, h = self.head_dim, self.hidden_dim
        if self.depth == 1:
            return [(d, d)]
        return [(h, d)] + [(h, h)] * (self.depth - 2) + [(d, h)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MemoryConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MemoryConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "MemoryConfig":
        return replace(self, **changes)


PRESETS: dict[str, MemoryConfig] = {
    # Titans (arXiv 2501.00663): l2 loss, weight decay alpha_t, momentum.
    "titans": MemoryConfig(attentional_bias="l2", retention="decay", algorithm="momentum"),
    # YAAD (MIRAS): Huber loss with a per-token delta_t, decay, momentum.
    "yaad": MemoryConfig(attentional_bias="huber", retention="decay", algorithm="momentum"),
    # MONETA (MIRAS): l_p loss (p = 3), l_q (q = 4) normalisation, plain gradient descent.
    "moneta": MemoryConfig(attentional_bias="lp", p=3.0, retention="lq", q=4.0, algorithm="gd"),
    # MEMORA (MIRAS): l2 loss, KL / softmax retention, plain gradient descent.
    "memora": MemoryConfig(attentional_bias="l2", retention="kl", algorithm="gd"),
}


def preset(name: str, **overrides) -> MemoryConfig:
    """A named preset with optional field overrides, e.g. ``preset("moneta", head_dim=32)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown memory preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
