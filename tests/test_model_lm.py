"""TitansLM: streaming equals the whole-sequence pass, bounded state, lane resets, and the parts
(banded attention, persistent tokens, MAG gate, frozen memory) doing what they claim."""

import math

import pytest
import torch

from titans_cli.memory.config import MemoryConfig
from titans_cli.model.blocks import SlidingWindowAttention, apply_rotary, rotary
from titans_cli.model.config import PRESETS, ModelConfig
from titans_cli.model.lm import TitansLM, bits_per_token

BLOCK_TYPES = ["mag", "mal", "lmm", "mac"]


def tiny_config(block="mag", **overrides):
    values = dict(
        d_model=32, n_layers=2, n_heads=2, block=block, window=16, n_persistent=3,
        memory=MemoryConfig(num_heads=2, head_dim=8, depth=2, expansion=2, chunk_size=8, conv_size=4),
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(block="mag", seed=0, **overrides):
    torch.manual_seed(seed)
    return TitansLM(tiny_config(block, **overrides)).eval()


def stream_in_pieces(model, tokens, sizes, backend="torch"):
    state, outputs, start = None, [], 0
    for size in sizes:
        output, state = model.step(tokens[:, start : start + size], state, backend=backend)
        outputs.append(output)
        start += size
    assert start == tokens.shape[1]
    return {name: torch.cat([getattr(o, name) for o in outputs], dim=1) for name in ("logits", "hidden", "grad", "momentum")}, state


def random_sizes(total, generator, largest=40):
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(int(torch.randint(1, largest, (1,), generator=generator)), total - sum(sizes)))
    return sizes


def backends():
    """torch always; numba where the Numba kernels are importable."""
    try:
        import titans_cli.memory.numba_cpu  # noqa: F401
    except ImportError:
        return ["torch"]
    return ["torch", "numba"]


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_streaming_in_random_pieces_equals_whole_forward(block):
    model = tiny_model(block)
    tokens = torch.randint(0, 8, (2, 101), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model.step(tokens, None, backend="torch")
        assert torch.equal(model(tokens), whole.logits), "forward() and one step() over the whole sequence differ"
        for trial, backend in enumerate(backends()):
            sizes = random_sizes(tokens.shape[1], torch.Generator().manual_seed(10 + trial))
            streamed, _ = stream_in_pieces(model, tokens, sizes, backend)
            for name in ("logits", "hidden", "grad", "momentum"):
                expected = getattr(whole, name)
                error = (streamed[name] - expected).abs().max().item()
                scale = expected.abs().max().item() + 1e-6
                assert error <= 1e-4 * scale, f"{block}/{backend}: streamed {name} differs by {error:.2e} (pieces {sizes})"


@pytest.mark.parametrize("block", ["mag", "mac"])  # attention cache (1 and 2 key streams) + memory state
def test_state_does_not_grow_with_stream_length(block):
    model = tiny_model(block)
    tokens = torch.randint(0, 8, (1, 400), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, state = model.step(tokens[:, :37])
        sizes = []
        for start in range(37, 37 + 3 * 72, 72):  # pieces of 9 memory chunks: same pending tail each time
            _, state = model.step(tokens[:, start : start + 72], state)
            sizes.append(state.nbytes())
    assert len(set(sizes)) == 1, f"{block}: state bytes change with stream length: {sizes}"


@pytest.mark.parametrize("block", ["mag", "mac"])
def test_reset_lanes_restarts_one_lane(block):
    model = tiny_model(block)
    generator = torch.Generator().manual_seed(3)
    first, second = torch.randint(0, 8, (2, 48), generator=generator), torch.randint(0, 8, (2, 30), generator=generator)
    with torch.no_grad():
        _, state = model.step(first)
        state.reset_lanes(torch.tensor([True, False]))
        continued, _ = model.step(second, state)
        fresh, _ = model.step(second[:1])
        carried, _ = model.step(torch.cat([first, second], dim=1)[1:])
    assert torch.allclose(continued.logits[:1], fresh.logits, atol=1e-5), "a reset lane must equal a fresh stream"
    assert torch.allclose(continued.logits[1:], carried.logits[:, 48:], atol=1e-5), "reset touched the other lane"


def test_banded_attention_equals_dense_sliding_window_reference():
    config = tiny_config(window=8)
    torch.manual_seed(4)
    attention = SlidingWindowAttention(config, n_streams=2).double()
    B, T, H, dh, W = 2, 45, config.n_heads, config.head_dim, config.window
    x, memory_tokens = torch.randn(B, T, config.d_model, dtype=torch.float64), torch.randn(B, T, config.d_model, dtype=torch.float64)
    outputs = []
    for query_block in (W, 3, 5):  # blocks as wide as the window, and narrower ones that do not divide it
        attention.query_block = query_block
        outputs.append(attention(x, attention.init_cache(B, dtype=torch.float64), context=[memory_tokens])[0])

    rotation = rotary(torch.arange(T).expand(B, T), dh).unsqueeze(1)
    q = apply_rotary(attention._heads(attention.query(x)), rotation)
    keys, values = [], []
    for tokens in (x, memory_tokens):
        k, v = attention.key_value(tokens).chunk(2, dim=-1)
        keys.append(apply_rotary(attention._heads(k), rotation))
        values.append(attention._heads(v))
    pk, pv = (t.view(-1, H, dh).transpose(0, 1).expand(B, H, -1, dh) for t in attention.key_value(attention.persistent).chunk(2, -1))
    expected = torch.zeros(B, H, T, dh, dtype=torch.float64)
    for t in range(T):
        start = max(0, t - W + 1)
        K = torch.cat([pk] + [k[:, :, start : t + 1] for k in keys], dim=2)
        V = torch.cat([pv] + [v[:, :, start : t + 1] for v in values], dim=2)
        weights = torch.softmax(q[:, :, t : t + 1] @ K.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        expected[:, :, t] = (weights @ V)[:, :, 0]
    expected = attention.out(expected.transpose(1, 2).reshape(B, T, -1))
    for query_block, y in zip((W, 3, 5), outputs):
        error = (y - expected).abs().max()
        assert torch.allclose(y, expected, atol=1e-12), f"banded attention (query blocks of {query_block}) differs from dense: {error:.2e}"


def test_rotary_positions_stay_relative_far_into_a_stream():
    """Keys/queries shifted by 2.5e8 positions (a whole chromosome later) must score the same."""
    torch.manual_seed(5)
    q, k = torch.randn(1, 1, 4, 16, dtype=torch.float64), torch.randn(1, 1, 4, 16, dtype=torch.float64)
    scores = []
    for offset in (0, 250_000_000):
        rotation = rotary(torch.arange(4).unsqueeze(0) + offset, 16).unsqueeze(1)
        scores.append(apply_rotary(q, rotation) @ apply_rotary(k, rotation).transpose(-1, -2))
    assert torch.allclose(scores[0], scores[1], atol=1e-6)


def test_inference_rotation_is_the_complex128_product_rounded_once():
    """The streaming rotation e^{i p0 f} e^{i j f} (lane rotation x cached offset table, formed in
    complex128) arrives as complex64 for float32/bf16 activations with the values of the rounded
    complex128 product: the same whatever the split of the stream into pieces (the pipelined step
    must equal the plain one, test_model_pipeline), and within 1e-7 of rotary() of the absolute
    positions far into a stream."""
    attention = SlidingWindowAttention(tiny_config(d_model=64, n_heads=2))
    position = torch.tensor([0, 17, 1_000_003, 250_000_000])
    length = 300
    wide = (rotary(position, attention.head_dim).unsqueeze(1) * rotary(torch.arange(length), attention.head_dim)).unsqueeze(1)
    absolute = rotary(position.unsqueeze(1) + torch.arange(length), attention.head_dim).unsqueeze(1)
    for dtype, complex_dtype in ((torch.float32, torch.complex64), (torch.bfloat16, torch.complex64), (torch.float64, torch.complex128)):
        rotation = attention._inference_rotation(position, length, dtype)
        assert rotation.dtype == complex_dtype and rotation.shape == wide.shape, f"{dtype}: {rotation.dtype} {tuple(rotation.shape)}"
        assert torch.equal(rotation, wide.to(complex_dtype)), f"{dtype}: not the complex128 product rounded once"
        error = (rotation.to(torch.complex128) - absolute).abs().max().item()
        assert error < 1e-7, f"{dtype} activations: rotations off the absolute positions' by {error:.2e}"
    shorter = attention._inference_rotation(position, 40, torch.float32)  # served from the cached table
    assert torch.equal(shorter, attention._inference_rotation(position, length, torch.float32)[:, :, :40])


def test_persistent_tokens_gate_and_memory_change_the_output():
    model = tiny_model("mag")
    tokens = torch.randint(0, 8, (1, 60), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        base = model(tokens)
        block = model.blocks[0]
        block.attention.persistent.add_(torch.randn_like(block.attention.persistent))
        assert not torch.allclose(model(tokens), base, atol=1e-4), "persistent tokens have no effect"
        model = tiny_model("mag")
        model.blocks[0].gate.bias.fill_(10.0)  # gate ~1: attention only
        attention_only = model(tokens)
        model.blocks[0].gate.bias.fill_(-10.0)  # gate ~0: memory only
        memory_only = model(tokens)
        assert not torch.allclose(attention_only, memory_only, atol=1e-4), "the MAG gate has no effect"


def test_frozen_memory_reads_but_does_not_learn():
    live = tiny_model("lmm")
    frozen = tiny_model("lmm")
    frozen.frozen_memory = True
    tokens = torch.randint(0, 8, (1, 80), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        live_logits, frozen_logits = live(tokens), frozen(tokens)
    chunk = live.config.memory.chunk_size
    # The first chunk reads the initial memory in both; later chunks differ only if memory learns.
    assert torch.allclose(live_logits[:, :chunk], frozen_logits[:, :chunk], atol=1e-6)
    assert not torch.allclose(live_logits[:, chunk:], frozen_logits[:, chunk:], atol=1e-4), "frozen memory still learns"
    with torch.no_grad():
        _, state = frozen.step(tokens[:, :40])
        later, _ = frozen.step(tokens[:, 40:], state)
        early, _ = frozen.step(tokens[:, 40:])
    # The short causal convolution of each layer's memory still sees the last few tokens.
    reach = frozen.config.n_layers * (frozen.config.memory.conv_size - 1)
    change = (later.logits[:, reach:] - early.logits[:, reach:]).abs().max().item()
    assert change < 1e-4, f"frozen LMM model output depends on what it read before (by {change:.2e})"


def test_forward_is_differentiable_everywhere():
    model = tiny_model("mag").train()
    tokens = torch.randint(0, 8, (2, 40), generator=torch.Generator().manual_seed(8))
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 8), tokens[:, 1:].reshape(-1))
    loss.backward()
    without_grad = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not without_grad, f"parameters without a finite gradient: {without_grad}"


def test_bits_per_token():
    tokens = torch.tensor([[1, 3, 4, 5]])
    uniform = torch.zeros(1, 4, 8)
    assert torch.allclose(bits_per_token(uniform, tokens), torch.full((1, 3), 3.0)), "uniform over 8 is 3 bits"
    certain = torch.full((1, 4, 8), -1e4)
    certain[0, torch.arange(3), tokens[0, 1:]] = 0.0
    assert bits_per_token(certain, tokens).abs().max() < 1e-3


def test_config_validation_round_trip_and_presets():
    config = tiny_config("mac")
    assert ModelConfig.from_dict(config.to_dict()) == config
    for name, preset in PRESETS.items():
        assert ModelConfig.from_dict(preset.to_dict()) == preset, name
        assert preset.window >= preset.memory.chunk_size
    bad = {
        "window": (4, "window"), "block": ("xyz", "block"), "n_heads": (3, "divisible"),
        "dropout": (1.5, "dropout"), "vocab_size": (9, "vocab_size"), "n_persistent": (-1, "n_persistent"),
        "bos_id": (2, "differ"), "tokenizer": ("char", "tokenizer"),
    }
    for field, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            tiny_config(**{field: value})
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_bfloat16_autocast_forward_matches_float32():
    """Training runs under bf16 autocast on the GPU; the same code path must work (CPU autocast here)."""
    model = tiny_model("mac")
    tokens = torch.randint(0, 8, (2, 40), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        reference = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = model(tokens)
    assert torch.isfinite(low_precision).all()
    error = (low_precision.float() - reference).abs().max().item()
    assert error < 0.1 * reference.abs().max().item() + 0.05, f"bf16 autocast logits off by {error:.3f}"


@pytest.mark.parametrize("streams", [1, 2])
def test_numba_attention_equals_the_torch_path(streams):
    """The CPU inference kernel (model/numba_cpu.attend_lane) against the torch path, in pieces
    shorter and longer than the window, from a fresh cache (unfilled slots masked), with one lane
    reset mid-stream, and with a second key stream (MAC)."""
    config = tiny_config(window=16)
    torch.manual_seed(5)
    attention = SlidingWindowAttention(config, n_streams=streams).eval()
    B, D = 3, config.d_model
    generator = torch.Generator().manual_seed(6)
    caches = {"torch": attention.init_cache(B), "numba": attention.init_cache(B)}
    with torch.no_grad():
        for step, length in enumerate((5, 40, 1, 17, 70)):
            x = torch.randn(B, length, D, generator=generator)
            context = [torch.randn(B, length, D, generator=generator) for _ in range(streams - 1)]
            if step == 3:
                caches = {name: cache.reset_lanes(torch.tensor([False, True, False])) for name, cache in caches.items()}
            y_torch, caches["torch"] = attention(x, caches["torch"], context, backend="torch")
            y_numba, caches["numba"] = attention(x, caches["numba"], context, backend="numba")
            error = (y_numba - y_torch).abs().max().item()
            assert error < 1e-5, f"step {step} ({length} tokens, {streams} streams): numba attention differs by {error:.2e}"
            for what in ("keys", "values", "valid", "position"):
                ours, theirs = getattr(caches["numba"], what), getattr(caches["torch"], what)
                assert ours.shape == theirs.shape and torch.allclose(ours.float(), theirs.float(), atol=1e-5), (
                    f"step {step}: numba attention cache {what} differs from the torch path")


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_numba_step_without_momentum_signal_changes_nothing_else(block):
    model = tiny_model(block)
    tokens = torch.randint(0, 8, (2, 50), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full, state = model.step(tokens, None, backend="numba")
        skipped, state_skipped = model.step(tokens, None, backend="numba", momentum=False)
    assert torch.isnan(skipped.momentum).all(), f"{block}: a skipped momentum signal should be NaN"
    for name in ("logits", "hidden", "grad"):
        assert torch.equal(getattr(full, name), getattr(skipped, name)), f"{block}: momentum=False changed {name}"
    for a, b in zip(state.blocks, state_skipped.blocks):
        assert all(torch.equal(x, y) for x, y in zip(a.memory.current_weights, b.memory.current_weights))
