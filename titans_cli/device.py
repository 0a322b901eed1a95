"""The one place that chooses where the model runs: torch device, memory backend, CPU threads.

`--device auto` takes CUDA when a GPU is visible, else the CPU. `--backend auto` takes the Numba
kernels for inference on the CPU (they parallelise over lanes x heads without autograd overhead)
and the fused Triton kernel on CUDA (the chunked torch form when triton is absent). Under torchrun each rank takes the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from titans_cli.errors import TitansInputError

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch", "numba", "triton")


@dataclass(frozen=True)
class Runtime:
    """Where one process runs the model."""

    device: torch.device
    backend: str  # memory-update implementation: "torch" or "numba"

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def local_rank() -> int:
    """This process's index on its node under torchrun (0 when not distributed)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def choose_device(requested: str = "auto") -> torch.device:
    if requested not in DEVICES:
        raise TitansInputError(f"unknown --device {requested!r} (expected one of: {', '.join(DEVICES)})")
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TitansInputError("--device cuda was asked for, but no CUDA GPU is visible to torch")
    if torch.cuda.is_available():
        index = local_rank() % torch.cuda.device_count()
        return torch.device("cuda", index)
    return torch.device("cpu")


def choose_backend(requested: str, device: torch.device) -> str:
    if requested not in BACKENDS:
        raise TitansInputError(f"unknown --backend {requested!r} (expected one of: {', '.join(BACKENDS)})")
    if requested == "numba":
        if device.type != "cpu":
            raise TitansInputError("--backend numba runs on the CPU only; use --device cpu or --backend torch")
        if not numba_available():
            raise TitansInputError("--backend numba was asked for, but numba is not installed")
        return "numba"
    if requested == "triton":
        if device.type != "cuda" or not triton_available():
            raise TitansInputError("--backend triton needs a CUDA GPU and the triton package")
        return "triton"
    if requested == "torch":
        return "torch"
    if device.type == "cuda":
        # The fused kernel is one launch per piece instead of ~60 per 64-token chunk (~25x faster
        # on an H100, benchmarks/results/memory_throughput_gpu.md); torch_chunked stays for training.
        return "triton" if triton_available() else "torch"
    return "numba" if numba_available() else "torch"


def configure_threads(threads: int | None = None) -> int:
    """Use every core the process may run on (or `threads`), for torch and numba alike."""
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            threads = os.cpu_count() or 1
        world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, threads // max(1, world))  # ranks on one host share its cores
    if threads < 1:
        raise TitansInputError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    if numba_available():
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return threads


def choose_runtime(device: str = "auto", backend: str = "auto", threads: int | None = None) -> Runtime:
    """Validate the user's --device/--backend and set up the process for inference."""
    chosen_device = choose_device(device)
    chosen_backend = choose_backend(backend, chosen_device)
    if chosen_device.type == "cpu":
        configure_threads(threads)
    else:
        torch.cuda.set_device(chosen_device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=chosen_device, backend=chosen_backend)


def flush_denormals() -> None:
    """Subnormal floats (|x| < 1.2e-38) read and written as zero on this thread, in torch's and
    Numba's code alike (x86's FTZ/DAZ flags; threads created afterwards inherit them). The memory's
    forget gate decays weights towards zero, and on x86 every operation on a subnormal is a slow
    microcode path: on a 2-core Intel Xeon the `dna` model streaming E. coli fell from 30k to 9k
    bases/s over its first Mbase, and ran at ~60k bases/s throughout with this
    (benchmarks/speed_model_cpu.py). Values that small change no bit of a track."""
    torch.set_flush_denormal(True)
