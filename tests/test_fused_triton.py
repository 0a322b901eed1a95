"""The Triton inference kernels of the blocks (model/fused_triton.py) equal the torch expressions
they replace, and a MAG model stepped with backend "triton" equals the torch path.

On a machine without CUDA the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here
before triton is imported); with CUDA the same tests run on the GPU. Row counts are odd and widths
not powers of two, so the masked tails of the row and column blocks are exercised.
"""

import pytest
import torch
import torch.nn.functional as F

from triton_device import CUDA, DEVICE  # first: sets TRITON_INTERPRET=1 without CUDA

from titans_cli.memory import layer as memory_layer  # noqa: E402
from titans_cli.memory.config import MemoryConfig  # noqa: E402
from titans_cli.model import fused_triton  # noqa: E402
from titans_cli.model.attention_triton import KernelOptions  # noqa: E402
from titans_cli.model.blocks import NORM_EPS, SlidingWindowAttention  # noqa: E402
from titans_cli.model.config import ModelConfig  # noqa: E402
from titans_cli.model.lm import TitansLM  # noqa: E402


# Output tolerance, relative to each element's magnitude: fp32 arithmetic for fp32; for bf16 the
# kernel rounds once, on the way out: to nearest on a GPU (< 2^-8 relative), while Triton's
# interpreter (3.x) truncates fp32 -> bf16 casts (< 2^-7 relative).
TOLERANCE = {torch.float32: 2e-6, torch.bfloat16: 2**-8 if CUDA else 2**-7}


def assert_close_elementwise(got, want, dtype, label):
    assert got.shape == want.shape and got.dtype == dtype, f"{label}: {tuple(got.shape)} {got.dtype}"
    assert torch.isfinite(got).all(), f"{label}: non-finite values (unwritten rows or channels?)"
    excess = (got.double() - want).abs() - (TOLERANCE[dtype] * want.abs() + 1e-6)
    worst = excess.argmax()
    assert excess.max() <= 0, (
        f"{label}: element {worst.item()} is {got.flatten()[worst].item():.6g}, expected {want.flatten()[worst].item():.6g}"
    )


def rms_norm64(t, weight):
    t = t.double()
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + NORM_EPS) * weight.double()


@pytest.mark.parametrize(
    "shape, dtype",
    [((37, 96), torch.float32), ((3, 43, 128), torch.float32), ((5, 256), torch.float32), ((7, 512), torch.float32),
     ((37, 96), torch.bfloat16), ((2, 19, 256), torch.bfloat16)],
)  # fmt: skip
def test_mag_mix_equals_the_torch_expression(shape, dtype):
    generator = torch.Generator().manual_seed(shape[-1] + len(shape))
    width = shape[-1]

    def randn(*size, scale=1.0):
        return (scale * torch.randn(*size, generator=generator)).to(DEVICE, dtype)

    x, remembered = randn(*shape), randn(*shape, scale=0.1)
    # attended as a view of the first columns of wider rows: its row stride is not its width
    attended = randn(*shape[:-1], 2 * width, scale=3.0)[..., :width]
    gate_pre = randn(*shape, scale=4.0)  # saturated gates too
    weights = [randn(width) for _ in range(3)]
    mixed, ffn_input = fused_triton.mag_mix(x, attended, remembered, gate_pre, *weights, NORM_EPS)

    gate = torch.sigmoid(gate_pre.double())
    expected = x.double() + gate * rms_norm64(attended, weights[0]) + (1 - gate) * rms_norm64(remembered, weights[1])
    assert_close_elementwise(mixed, expected, dtype, f"mixed {shape} {dtype}")
    assert_close_elementwise(ffn_input, rms_norm64(expected, weights[2]), dtype, f"ffn_input {shape} {dtype}")


@pytest.mark.parametrize("rows, hidden, dtype", [(37, 320, torch.float32), (129, 48, torch.float32), (21, 640, torch.bfloat16)])
def test_swiglu_equals_silu_gate_times_up(rows, hidden, dtype):
    generator = torch.Generator().manual_seed(rows)
    gate_up = (3 * torch.randn(1, rows, 2 * hidden, generator=generator)).to(DEVICE, dtype)
    got = fused_triton.swiglu(gate_up)
    gate, up = gate_up.double().chunk(2, dim=-1)
    assert_close_elementwise(got, F.silu(gate) * up, dtype, f"swiglu {rows}x{hidden} {dtype}")


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # RMSNorm under autocast
def test_mag_model_step_with_triton_backend_equals_torch(monkeypatch):
    """A MAG model streamed in two pieces (carried state) with backend "triton" vs "torch", eval and
    no grad. The memory update runs torch_chunked for both backends (patched in memory_op) and the
    attention kernel multiplies in ieee fp32 (its tf32 default differs by ~1e-4 on CUDA), so the
    fused mix and SwiGLU kernels are the only difference that is not exact arithmetic."""
    memory_op = memory_layer.memory_op
    monkeypatch.setattr(memory_layer, "memory_op", lambda backend: memory_op("torch" if backend == "triton" else backend))
    calls = {"mag_mix": 0, "swiglu": 0}
    for name in calls:
        kernel = getattr(fused_triton, name)

        def counted(*args, _kernel=kernel, _name=name, **kwargs):
            calls[_name] += 1
            return _kernel(*args, **kwargs)

        monkeypatch.setattr(fused_triton, name, counted)

    config = ModelConfig(
        vocab_size=8, d_model=48, n_layers=2, n_heads=2, block="mag", window=16, n_persistent=3, ffn_mult=2.5,
        tokenizer="dna", memory=MemoryConfig(num_heads=2, head_dim=8, depth=2, expansion=2, chunk_size=8, conv_size=4),
    )  # fmt: skip
    torch.manual_seed(0)
    model = TitansLM(config).to(DEVICE).eval()
    for module in model.modules():
        if isinstance(module, SlidingWindowAttention):
            module.triton_options = KernelOptions(precision="ieee")
    tokens = torch.randint(0, 8, (3, 45), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    outputs = {}
    with torch.no_grad():
        for backend in ("torch", "triton"):
            first, state = model.step(tokens[:, :29], None, backend=backend)
            second, _ = model.step(tokens[:, 29:], state, backend=backend)
            outputs[backend] = {
                name: torch.cat([getattr(first, name), getattr(second, name)], dim=1) for name in ("logits", "hidden", "grad")
            }
    assert calls == {"mag_mix": 4, "swiglu": 4}, f"the fused path ran {calls} times, expected 2 layers x 2 steps"
    for name, want in outputs["torch"].items():
        error = (outputs["triton"][name] - want).abs().max().item()
        assert error < 1e-4, f"{name}: backend triton differs from torch by {error:.2e}"

    with torch.enable_grad():
        model.step(tokens, None, backend="triton")
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):  # training's validation passes
        model.step(tokens, None, backend="triton")
    model.train()
    with torch.no_grad():
        model.step(tokens, None, backend="triton")
    assert calls == {"mag_mix": 4, "swiglu": 4}, "training (grad enabled, autocast or train mode) must keep the torch path"
