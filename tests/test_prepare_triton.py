"""The memory layer's GPU input kernel (memory/prepare_triton.py) equals the torch ops it replaces,
and a NeuralMemory streamed in pieces with backend "triton" equals the torch path.

Without CUDA the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported); with CUDA the same tests run on the GPU. Piece lengths are shorter and longer than the
kernel's 64-token blocks and than the conv's tail, head sizes are not powers of two.
"""

import pytest
import torch
import torch.nn.functional as F

from triton_device import DEVICE  # first: sets TRITON_INTERPRET=1 without CUDA

from titans_cli.memory import layer as memory_layer  # noqa: E402
from titans_cli.memory.config import MemoryConfig  # noqa: E402
from titans_cli.memory.layer import NeuralMemory  # noqa: E402
from titans_cli.memory.prepare_triton import prepare_backward, prepare_inputs, supported  # noqa: E402


def torch_inputs(projected, tail, conv_weight, conv_bias, gate_pre, heads, max_lr):
    """The definition, in float64: conv over [tail; projected], SiLU, per-head L2 norms, gates."""
    batch, length, width = projected.shape
    with_tail = torch.cat([tail, projected], dim=1).double()
    convolved = F.conv1d(with_tail.transpose(1, 2), conv_weight.double(), conv_bias.double(), groups=width)
    q, k, v = F.silu(convolved.transpose(1, 2)).chunk(3, dim=-1)
    split = lambda t: t.reshape(batch, length, heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = F.normalize(split(q), dim=-1), F.normalize(split(k), dim=-1), split(v)
    pre = gate_pre.double().view(batch, length, -1, heads).permute(2, 0, 3, 1)
    gates = [torch.sigmoid(pre[0]) * max_lr, torch.sigmoid(pre[1]), torch.sigmoid(pre[2])]
    if pre.shape[0] == 4:
        gates.append(F.softplus(pre[3]))
    return q, k, v, torch.stack(gates)


@pytest.mark.parametrize("heads, dim, size, n_gates, length", [(2, 8, 4, 3, 70), (3, 12, 4, 4, 5), (1, 20, 1, 3, 65),
                                                                (4, 32, 3, 3, 1)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepare_inputs_equals_the_definition(heads, dim, size, n_gates, length, dtype):
    generator = torch.Generator().manual_seed(heads * 100 + length)
    batch, width = 3, 3 * heads * dim
    rand = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=generator)).to(DEVICE)  # noqa: E731
    projected, tail = rand(batch, length, width).to(dtype), rand(batch, size - 1, width).to(dtype)
    conv_weight, conv_bias = rand(width, 1, size, scale=0.5), rand(width, scale=0.1)
    gate_pre = rand(batch, length, n_gates * heads, scale=8.0)  # softplus past its threshold of 20 too
    gate_pre[0, 0, -1] = 30.0
    got = prepare_inputs(projected, tail, conv_weight, conv_bias, gate_pre, heads, 0.3)
    want = torch_inputs(projected.float(), tail.float(), conv_weight, conv_bias, gate_pre, heads, 0.3)
    tolerance = 2e-6 if dtype == torch.float32 else 2**-7
    for name, a, b in zip(("q", "k", "v", "gates"), got, want):
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        assert a.dtype == (torch.float32 if name == "gates" else dtype), f"{name}: dtype {a.dtype}"
        error = ((a.double() - b).abs() / (b.abs() + 1.0)).max().item()  # relative, absolute below 1
        assert error < tolerance, f"{name} ({dtype}, heads {heads} x {dim}, conv {size}): relative error {error:.2e}"


@pytest.mark.parametrize("preset", ["titans", "yaad"])
def test_layer_streamed_with_triton_inputs_equals_torch(monkeypatch, preset):
    """A NeuralMemory fed pieces of 5, 70, 2 and 64 tokens (conv tail and pending tokens carried),
    backend "triton" vs "torch", no grad. The update runs torch_chunked for both (memory_op patched),
    so the input kernel is the only difference."""
    memory_op = memory_layer.memory_op
    monkeypatch.setattr(memory_layer, "memory_op", lambda backend: memory_op("torch" if backend == "triton" else backend))
    calls = []
    monkeypatch.setattr(memory_layer, "_prepare_on_gpu", lambda x, head_dim: calls.append(supported(x, head_dim)[0]) or calls[-1])
    config = MemoryConfig(num_heads=2, head_dim=12, depth=2, expansion=2, chunk_size=16, conv_size=4,
                          attentional_bias="huber" if preset == "yaad" else "l2")  # fmt: skip
    torch.manual_seed(3)
    layer = NeuralMemory(24, config).to(DEVICE).eval()
    generator = torch.Generator().manual_seed(4)
    states = {"torch": None, "triton": None}
    with torch.no_grad():
        for length in (5, 70, 2, 64):
            x = torch.randn(2, length, 24, generator=generator).to(DEVICE)
            outputs = {}
            for backend in states:
                outputs[backend], states[backend], _ = layer(x, states[backend], backend=backend)
            error = (outputs["triton"] - outputs["torch"]).abs().max().item()
            assert error < 1e-5, f"{preset}, piece of {length}: output differs by {error:.2e}"
    assert calls == [True] * 4, f"the input kernel ran {calls} (once per piece expected)"
    for name in ("conv_tail", "pending_k", "pending_v", "pending_lr", "pending_momentum", "pending_decay"):
        a, b = getattr(states["triton"], name), getattr(states["torch"], name)
        assert a.shape == b.shape, f"state {name}: {tuple(a.shape)} != {tuple(b.shape)}"
        assert (a - b).abs().max().item() < 1e-5, f"state {name} differs"
    for a, b in zip(states["triton"].weights, states["torch"].weights):
        assert (a - b).abs().max().item() < 1e-5, "memory weights differ"


def test_one_projection_gemm_follows_parameter_changes_and_hooks(monkeypatch):
    """Without autograd the triton path computes q|k|v and the gate pre-activations in one GEMM over
    concatenated weights it keeps: the same outputs as the torch path, also after an in-place change
    of a parameter, and not used while a hook watches to_gates (frozen memory)."""
    memory_op = memory_layer.memory_op
    monkeypatch.setattr(memory_layer, "memory_op", lambda backend: memory_op("torch" if backend == "triton" else backend))
    config = MemoryConfig(num_heads=2, head_dim=12, depth=2, expansion=2, chunk_size=16)
    torch.manual_seed(5)
    layer = NeuralMemory(24, config).to(DEVICE).eval()
    x = torch.randn(2, 40, 24).to(DEVICE)

    def difference():
        with torch.no_grad():
            return (layer(x, backend="triton")[0] - layer(x, backend="torch")[0]).abs().max().item()

    assert difference() < 1e-5
    assert "projections" in layer._inference_cache  # the one-GEMM path ran
    with torch.no_grad():
        layer.to_gates.bias[0] += 3.0  # the learning-rate gate of head 0: a visibly different update
        layer.to_qkv.weight.mul_(1.5)
    assert difference() < 1e-5, "the kept weights did not follow an in-place parameter change"
    layer._inference_cache.clear()
    handle = layer.to_gates.register_forward_hook(lambda module, inputs, gates: gates * 0.5)
    try:
        assert difference() < 1e-5
        assert "projections" not in layer._inference_cache, "a hooked to_gates was bypassed"
    finally:
        handle.remove()


@pytest.mark.parametrize("heads, dim, size, n_gates, length", [(2, 8, 4, 3, 70), (3, 12, 4, 4, 5), (1, 20, 1, 3, 65)])
def test_prepare_inputs_gradients_equal_the_definition(heads, dim, size, n_gates, length):
    """Under autograd the kernel's backward (the adjoint kernel and the conv's transpose) gives the
    float64 definition's gradients for the projections, the conv tail, taps and bias and the gate
    pre-activations, for random cotangents on q, k, v and the gates."""
    generator = torch.Generator().manual_seed(heads * 10 + length)
    batch, width = 2, 3 * heads * dim
    rand = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=generator)).to(DEVICE)  # noqa: E731
    inputs = [rand(batch, length, width), rand(batch, size - 1, width), rand(width, 1, size, scale=0.5),
              rand(width, scale=0.1), rand(batch, length, n_gates * heads, scale=8.0)]
    inputs[4][0, 0, -1] = 30.0  # softplus past its threshold
    got_leaves = [t.clone().requires_grad_(True) for t in inputs]
    want_leaves = [t.double().requires_grad_(True) for t in inputs]
    got = prepare_inputs(*got_leaves, heads, 0.3)
    want = torch_inputs(*want_leaves, heads, 0.3)
    cotangents = [rand(*t.shape) for t in got]
    got_grads = torch.autograd.grad(sum((o * c).sum() for o, c in zip(got, cotangents)), got_leaves)
    want_grads = torch.autograd.grad(sum((o * c.double()).sum() for o, c in zip(want, cotangents)), want_leaves,
                                     allow_unused=True)
    for name, a, b in zip(("projected", "tail", "conv weight", "conv bias", "gate pre-activations"), got_grads, want_grads):
        b = torch.zeros_like(a, dtype=torch.float64) if b is None else b
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        error = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
        assert error < 1e-5, f"gradient of {name} (heads {heads} x {dim}, conv {size}): relative error {error:.2e}"


@pytest.mark.parametrize("block_t, num_warps", [(None, None), (16, 2), (64, 4)])
def test_prepare_backward_in_bf16_and_other_blocks(block_t, num_warps):
    """bf16 projections (as under autocast): the conv output's adjoint goes through memory in bf16
    between the two backward kernels, and the adjoints stay within bf16's rounding of the float64
    definition's; the tokens and warps per program (benchmarks/prepare_gpu.py sweeps them) change
    nothing but the speed."""
    heads, dim, size, n_gates, length, batch = 2, 16, 4, 3, 70, 2
    generator = torch.Generator().manual_seed(3)
    width = 3 * heads * dim
    rand = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=generator)).to(DEVICE)  # noqa: E731
    inputs = [rand(batch, length, width).bfloat16(), rand(batch, size - 1, width).bfloat16(),
              rand(width, 1, size, scale=0.5), rand(width, scale=0.1),
              rand(batch, length, n_gates * heads, scale=4.0).bfloat16()]
    cotangents = [rand(batch, heads, length, dim).bfloat16() for _ in range(3)] + [rand(n_gates, batch, heads, length)]
    got = prepare_backward(*inputs, heads, 0.3, cotangents, block_t=block_t, num_warps=num_warps)
    leaves = [t.double().requires_grad_(True) for t in inputs]
    want = torch.autograd.grad(sum((o * c.double()).sum() for o, c in zip(torch_inputs(*leaves, heads, 0.3), cotangents)),
                               leaves)
    for name, a, b in zip(("projected", "tail", "conv weight", "conv bias", "gate pre-activations"), got, want):
        assert a.dtype == inputs[("projected", "tail", "conv weight", "conv bias", "gate pre-activations").index(name)].dtype
        error = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
        assert error < 1e-2, f"gradient of {name} (bf16, block {block_t}, warps {num_warps}): relative error {error:.2e}"


def test_layer_gradients_with_triton_inputs_equal_torch(monkeypatch):
    """Training through a NeuralMemory with backend "triton" (the input kernel and its backward) and
    "torch" (conv1d, F.normalize under autograd): the same parameter gradients. The update runs
    torch_chunked for both, so the input path is the only difference."""
    memory_op = memory_layer.memory_op
    monkeypatch.setattr(memory_layer, "memory_op", lambda backend: memory_op("torch" if backend == "triton" else backend))
    calls = []
    monkeypatch.setattr(memory_layer, "_prepare_on_gpu", lambda x, head_dim: calls.append(supported(x, head_dim)[0]) or calls[-1])
    config = MemoryConfig(num_heads=2, head_dim=12, depth=2, expansion=2, chunk_size=16, conv_size=4)
    torch.manual_seed(5)
    layer = NeuralMemory(24, config).to(DEVICE)
    x = torch.randn(2, 40, 24, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    grads = {}
    for backend in ("torch", "triton"):
        layer.zero_grad(set_to_none=True)
        y, _, _ = layer(x, backend=backend)
        y.square().mean().backward()
        grads[backend] = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    assert calls == [True], f"the input kernel ran {calls} (once expected)"
    assert grads["triton"].keys() == grads["torch"].keys()
    for name, want in grads["torch"].items():
        error = ((grads["triton"][name] - want).norm() / want.norm().clamp_min(1e-30)).item()
        assert error < 1e-4, f"gradient of {name}: relative error {error:.2e}"
