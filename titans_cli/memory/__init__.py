"""The MIRAS neural long-term memory: one signature, three implementations (fla-org shape).

- ``reference.memory_update``: per token, float64, autograd — the definition of the semantics;
- ``torch_chunked.memory_update``: the chunked closed form of MEMORY_MATH.md (training, GPU);
- ``numba_cpu.memory_update``: Numba kernels for inference on CPU;
- ``NeuralMemory``: the nn.Module with projections, gates and the streaming state.
"""

from .config import PRESETS, MemoryConfig, preset
from .layer import BACKENDS, MemoryStreamState, NeuralMemory, memory_op
from .mlp import MemoryResult

__all__ = [
    "BACKENDS",
    "PRESETS",
    "MemoryConfig",
    "MemoryResult",
    "MemoryStreamState",
    "NeuralMemory",
    "memory_op",
    "preset",
]
