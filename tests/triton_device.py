"""Where the Triton kernel tests run: on CUDA when there is a GPU, else under Triton's interpreter.

Import this before anything that imports triton (`from triton_device import CUDA, DEVICE`): without
CUDA it sets TRITON_INTERPRET=1, which triton reads once, at its first import. The importing test
module is skipped when triton is not installed or TRITON_INTERPRET was set to something else.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton

pytest.importorskip("triton", reason="triton is not installed (optional: pip install triton)")

DEVICE = torch.device("cuda" if CUDA else "cpu")
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is set to something other than 1", allow_module_level=True)
