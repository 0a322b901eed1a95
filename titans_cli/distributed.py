"""Joining the process group torchrun describes (env://), so that leaving it ends cleanly.

torch 2.13 keeps a process group alive after `destroy_process_group` when `torch._dynamo` is first
imported while the group exists, and the first optimizer, DDP and `torch.compile` all import it.
The group's gloo worker threads then run on into the interpreter's shutdown; one still releasing a
finished collective's tensors at that moment needs the GIL, cannot get it, and aborts the process
(`terminate called without an active exception`, exit -6) after all its output was written. That
happened in 2 of 68 two-rank training runs (the torchrun test's, on a 2-core machine kept busy),
and a core dump showed the worker thread in `~AsyncBarrierWork`. With `torch._dynamo` imported
before the group is created, `destroy_process_group` joins those threads while Python is still
running: no abort in 105 runs under the same load. The import costs about 0.9 s a rank; training
pays it anyway, and the sharded inference commands pay it so that no later import can bring the
leak back.
"""

from __future__ import annotations


def init_process_group(backend: str) -> None:
    """`torch.distributed.init_process_group(backend, env://)`, with torch._dynamo imported first."""
    import torch._dynamo  # noqa: F401  (see the module docstring)
    import torch.distributed as dist

    dist.init_process_group(backend=backend, init_method="env://")

