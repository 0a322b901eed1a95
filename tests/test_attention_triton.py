"""The Triton sliding-window attention (model/attention_triton.py) equals the torch path of
SlidingWindowAttention and a dense float64 reference.

On a machine without CUDA the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set here
before triton is imported); with CUDA the same tests run on the GPU. Sizes are tiny (heads of 16
channels, windows of 8 to 24, pieces of 1 to 70 tokens) and most tests shrink the tiles to 16 or 32
so that several query blocks, several key tiles per program, cache tiles next to new-token tiles
and band starts that are not multiples of a tile all occur. Comparisons with the torch path pin
"ieee" products (the default on a GPU is tf32; the interpreter computes ieee either way).
"""

import math

import pytest
import torch

from triton_device import CUDA, DEVICE  # first: sets TRITON_INTERPRET=1 without CUDA

from titans_cli.memory.config import MemoryConfig  # noqa: E402
from titans_cli.model import attention_triton  # noqa: E402
from titans_cli.model.attention_triton import KernelOptions  # noqa: E402
from titans_cli.model.blocks import SlidingWindowAttention, apply_rotary, rotary  # noqa: E402
from titans_cli.model.config import ModelConfig  # noqa: E402
from titans_cli.model.lm import TitansLM  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def tiny_config(**overrides):
    values = dict(
        d_model=32, n_layers=2, n_heads=2, block="mag", window=16, n_persistent=3,
        memory=MemoryConfig(num_heads=2, head_dim=8, depth=2, expansion=2, chunk_size=8, conv_size=4),
    )  # fmt: skip
    values.update(overrides)
    return ModelConfig(**values)


def assert_caches_equal(got, want, tolerance, label):
    for name in ("keys", "values", "valid", "position"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape and a.dtype == b.dtype, f"{label}: cache {name} {a.shape}/{a.dtype} != {b.shape}/{b.dtype}"
        error = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        assert error <= tolerance, f"{label}: cache {name} differs by {error:.2e}"


# (window, block_m, block_n, n_persistent): the default tiles; 16-wide tiles where the window is a
# multiple of them; a window of 24, so that band starts fall anywhere in a tile, with query blocks of
# 32 over tiles of 16 and query blocks of 16 over tiles of 32; no persistent tokens.
TILINGS = [(16, None, None, 3), (16, 16, 16, 3), (24, 32, 16, 3), (24, 16, 32, 1), (16, 16, 16, 0)]


@pytest.mark.parametrize("window, block_m, block_n, n_persistent", TILINGS,
                         ids=["default tiles", "tiles of 16", "window 24, 32 over 16", "window 24, 16 over 32",
                              "no persistent tokens"])  # fmt: skip
def test_streamed_pieces_equal_the_torch_path(window, block_m, block_n, n_persistent):
    """Pieces shorter and longer than the window (not multiples of a block) from a fresh cache
    (every slot invalid) at positions near 2.5e8 (a chromosome in), the cache carried between them,
    one lane reset mid-stream (empty window, position 0) while the others keep theirs."""
    torch.manual_seed(5)
    attention = SlidingWindowAttention(tiny_config(window=window, n_persistent=n_persistent)).eval().to(DEVICE)
    attention.triton_options = KernelOptions(precision="ieee", block_m=block_m, block_n=block_n)
    batch = 3
    generator = torch.Generator().manual_seed(6)
    start = attention.init_cache(batch, DEVICE)
    start.position = torch.randint(0, 250_000_000, (batch,), generator=generator).to(DEVICE)
    caches = {"torch": start, "triton": start}
    with torch.no_grad():
        for step, length in enumerate((5, 40, 1, 17, 70)):
            x = torch.randn(batch, length, 32, generator=generator).to(DEVICE)
            if step == 3:
                lanes = torch.tensor([False, True, False], device=DEVICE)
                caches = {name: cache.reset_lanes(lanes) for name, cache in caches.items()}
            y_torch, caches["torch"] = attention(x, caches["torch"], backend="torch")
            y_triton, caches["triton"] = attention(x, caches["triton"], backend="triton")
            error = (y_triton - y_torch).abs().max().item()
            label = f"step {step} ({length} tokens)"
            assert error < 1e-6, f"{label}: triton attention differs from the torch path by {error:.2e}"
            assert_caches_equal(caches["triton"], caches["torch"], 1e-6, label)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotation_at_large_positions(dtype):
    """The triton path's rotation (complex64 lane x offset factors, in place on the q|k view of one
    projection) equals rotary positions formed wholly in float64, 250 Mbp into a stream, and leaves
    the values untouched."""
    attention = SlidingWindowAttention(tiny_config()).to(DEVICE)
    generator = torch.Generator().manual_seed(9)
    batch, length, heads, head_dim = 3, 300, 2, 16
    projections = torch.randn(batch, length, 3, heads, head_dim, generator=generator).to(DEVICE, dtype)
    position = torch.randint(249_000_000, 250_000_000, (batch,), generator=generator).to(DEVICE)
    rotation = rotary(position.unsqueeze(1) + torch.arange(length, device=DEVICE), head_dim).unsqueeze(2)
    want = apply_rotary(projections[:, :, :2].double().flatten(2, 3), rotation).view(batch, length, 2, heads, head_dim)
    values = projections[:, :, 2].clone()
    attention._rotate_queries_and_keys(projections[:, :, :2], position)
    error = ((projections[:, :, :2].double() - want).norm() / want.norm()).item()
    tolerance = 1e-6 if dtype == torch.float32 else 4e-3  # complex64 factors; bf16 rounding (2^-8)
    assert error < tolerance, f"{dtype} rotation at positions ~2.5e8: relative error {error:.2e} against float64"
    assert torch.equal(projections[:, :, 2], values), "the rotation wrote into the values"


def dense_reference(q, k, v, cache_keys, cache_values, valid, persistent_keys, persistent_values):
    """The attention written out per query in float64: [persistent | cache | new keys], band and
    valid flags as one mask. Inputs as attention_triton.sliding_window_attention takes them (q and
    k already rotated); returns (out (B, P, H*dh), last W keys and values (B, H, W, dh))."""
    q, k, v, cache_keys, cache_values, persistent_keys, persistent_values = (
        t.double() for t in (q, k, v, cache_keys, cache_values, persistent_keys, persistent_values))
    batch, length, heads, head_dim = q.shape
    window = cache_keys.shape[2]
    q = q.transpose(1, 2)  # (B, H, P, dh)
    keys = torch.cat([cache_keys, k.transpose(1, 2)], dim=2)
    values = torch.cat([cache_values, v.transpose(1, 2)], dim=2)
    key_valid = torch.cat([valid, valid.new_ones(batch, length)], dim=1)  # (B, W + P)
    index = torch.arange(window + length, device=q.device)
    offset = index - torch.arange(length, device=q.device).unsqueeze(1)  # key index - query index
    visible = (offset >= 1) & (offset <= window) & key_valid[:, None, :]  # (B, P, W + P)
    scores = q @ keys.transpose(-1, -2) / math.sqrt(head_dim)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    persistent_scores = torch.einsum("bhpd,nhd->bhpn", q, persistent_keys) / math.sqrt(head_dim)
    weights = torch.softmax(torch.cat([persistent_scores, scores], dim=-1), dim=-1)
    n_persistent = persistent_keys.shape[0]
    out = weights[..., :n_persistent] @ persistent_values.transpose(0, 1) + weights[..., n_persistent:] @ values
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim), keys[:, :, -window:], values[:, :, -window:]


def random_call(batch, length, heads, head_dim, window, n_persistent, dtype, generator):
    """Kernel inputs as views of wider tensors (the projections' layout) and random valid flags
    (including a whole invalid lane)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(DEVICE, dtype)

    q, k, v = randn(batch, length, 3, heads, head_dim).unbind(2)  # strided views, as the projection gives
    cache_keys = randn(batch, heads, window, 2, head_dim)[:, :, :, 0]  # a stream of a wider cache
    cache_values = randn(batch, heads, window, 1, head_dim)[:, :, :, 0]
    valid = (torch.rand(batch, window, generator=generator) < 0.6).to(DEVICE)
    valid[0] = False  # a lane at stream start
    persistent_keys, persistent_values = randn(n_persistent, 2, heads, head_dim).unbind(1)
    return q, k, v, cache_keys, cache_values, valid, persistent_keys, persistent_values


def run_kernel(*inputs, precision="ieee", **tiling):
    options = KernelOptions(precision=precision, **tiling)
    return attention_triton.sliding_window_attention(*inputs, options)


def relative_error(got, want):
    assert torch.isfinite(got).all(), "non-finite values (unwritten or NaN output)"
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("length, n_persistent", [(7, 4), (45, 4), (45, 0)],
                         ids=["piece shorter than the window", "longer, 3 query blocks", "no persistent tokens"])
def test_kernel_equals_dense_float64_reference(length, n_persistent):
    """Strided views, random valid flags (one lane all invalid), fp32 ieee products."""
    generator = torch.Generator().manual_seed(11)
    inputs = random_call(3, length, 2, 16, 24, n_persistent, torch.float32, generator)
    out, keys, values = run_kernel(*inputs, block_m=16, block_n=16)
    want_out, want_keys, want_values = dense_reference(*inputs)
    for name, got, want in (("out", out, want_out), ("keys", keys[:, :, :, 0], want_keys),
                            ("values", values[:, :, :, 0], want_values)):  # fmt: skip
        error = relative_error(got, want)
        assert error < 1e-6, f"{name} ({length} tokens): relative error {error:.2e} against float64"


def test_many_lanes():
    """Batch x 4 heads as one grid axis, each lane with its own cache and valid flags: lanes and
    heads stay apart. 128 rows (the streaming batch) on CUDA; 32 under the interpreter, which runs programs one by one."""
    batch = 128 if CUDA else 32
    generator = torch.Generator().manual_seed(12)
    inputs = random_call(batch, 3, 4, 16, 8, 2, torch.float32, generator)
    out, keys, _ = run_kernel(*inputs)
    want_out, want_keys, _ = dense_reference(*inputs)
    assert relative_error(out, want_out) < 1e-6, f"output of {batch} rows x 4 heads"
    assert relative_error(keys[:, :, :, 0], want_keys) < 1e-6, f"cache keys of {batch} rows x 4 heads"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    """bf16/fp16 in, products in that dtype (the attention weights rounded to it) with fp32
    accumulation, output and cache in the input dtype."""
    generator = torch.Generator().manual_seed(13)
    inputs = random_call(2, 20, 2, 16, 16, 3, dtype, generator)
    out, keys, values = run_kernel(*inputs, block_m=16, block_n=16)
    assert out.dtype == keys.dtype == values.dtype == dtype
    want_out, want_keys, _ = dense_reference(*inputs)
    tolerance = 8e-3 if dtype == torch.bfloat16 else 1e-3  # two roundings of 2^-8 / 2^-11
    assert relative_error(out, want_out) < tolerance, f"{dtype} output"
    assert relative_error(keys[:, :, :, 0], want_keys) == 0, f"{dtype} cache keys are copies"


def test_kernel_options():
    """Defaults per (head_dim, window), blocks clamped to short pieces, bad values named."""
    dna = KernelOptions().resolve(torch.float32, 32, 128, 4096)
    assert (dna.precision, dna.block_m, dna.block_n) == ("tf32", 64, 32), f"dna defaults: {dna}"
    short = KernelOptions(block_m=64, block_n=128).resolve(torch.float32, 16, 16, 5)
    assert (short.block_m, short.block_n) == (16, 32), f"5 tokens, window 16: {short}"
    with pytest.raises(ValueError, match="precision"):
        KernelOptions(precision="bf16").resolve(torch.float32, 32, 128, 64)
    with pytest.raises(ValueError, match="block_n"):
        KernelOptions(block_n=48).resolve(torch.float32, 32, 128, 64)


def test_unsupported_calls_take_the_torch_path():
    """Autograd, two key/value streams (MAC) and float64 fall back, with the reason named, and the
    triton backend then gives the torch path's result exactly."""
    config = tiny_config()
    torch.manual_seed(7)
    x = torch.randn(2, 9, 32, device=DEVICE)
    supported, reason = attention_triton.supported(x, 1, 16, 2)
    assert not supported and "autograd" in reason, "grad is enabled here: the kernel has no backward"
    with torch.no_grad():
        assert attention_triton.supported(x, 1, 16, 2) == (True, "")
        assert "streams" in attention_triton.supported(x, 2, 16, 2)[1]
        assert "float64" in attention_triton.supported(x.double(), 1, 16, 2)[1]
        assert "head_dim" in attention_triton.supported(x, 1, 15, 2)[1]
        mac = SlidingWindowAttention(config, n_streams=2).eval().to(DEVICE)
        context = [torch.randn(2, 9, 32, device=DEVICE)]
        cache = mac.init_cache(2, DEVICE)
        assert torch.equal(mac(x, cache, context, backend="triton")[0], mac(x, cache, context, backend="torch")[0])
    attention = SlidingWindowAttention(config).to(DEVICE)
    cache = attention.init_cache(2, DEVICE)
    assert torch.equal(attention(x, cache, backend="triton")[0], attention(x, cache, backend="torch")[0])


def test_mag_model_step_with_triton_attention(monkeypatch):
    """The whole MAG model streamed in pieces with the triton backend equals the torch backend (the
    memory update kept on torch_chunked here, so only the attention differs)."""
    from titans_cli.memory import triton_fused

    monkeypatch.setattr(triton_fused, "fused_supported", lambda config, device: (False, "attention test"))
    torch.manual_seed(0)
    model = TitansLM(tiny_config()).eval().to(DEVICE)
    for module in model.modules():
        if isinstance(module, SlidingWindowAttention):
            module.triton_options = KernelOptions(precision="ieee")
    tokens = torch.randint(0, 8, (2, 50), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        outputs = {}
        for backend in ("torch", "triton"):
            state, logits = None, []
            for start, end in ((0, 13), (13, 40), (40, 50)):
                output, state = model.step(tokens[:, start:end], state, backend=backend)
                logits.append(output.logits)
            outputs[backend] = torch.cat(logits, dim=1)
    error = (outputs["triton"] - outputs["torch"]).abs().max().item()
    assert error < 1e-5, f"MAG logits with triton attention differ by {error:.2e}"


@pytest.mark.skipif(not CUDA, reason="tf32 products need a CUDA GPU")
def test_tf32_products_on_cuda():
    generator = torch.Generator().manual_seed(14)
    inputs = random_call(4, 200, 4, 32, 128, 4, torch.float32, generator)
    out, _, _ = run_kernel(*inputs, precision="tf32")
    want_out, _, _ = dense_reference(*inputs)
    error = relative_error(out, want_out)
    assert error < 5e-3, f"tf32 products: relative error {error:.2e}"  # operands rounded to 10 mantissa bits
