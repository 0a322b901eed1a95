"""The fused Triton memory update equals torch_chunked (and the float64 reference).

On a machine without CUDA the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set here
before triton is imported); with CUDA the same tests run on the GPU. Sizes are tiny (one head
of d=16, h=32, chunks of 16, 40 tokens: two full chunks and a partial one; two heads and two batch
rows where indexing is the point) so the interpreter stays fast.
"""

import pytest
import torch
import torch.nn.functional as F

from triton_device import CUDA, DEVICE  # first: sets TRITON_INTERPRET=1 without CUDA

from titans_cli.memory import reference, torch_chunked  # noqa: E402
from titans_cli.memory import triton_fused, triton_split  # noqa: E402
from titans_cli.memory.config import MemoryConfig  # noqa: E402
from titans_cli.memory.mlp import initial_memory_weights  # noqa: E402

# The interpreter evaluates both sides of tl.where with numpy (log of 0 in the unused branch).
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def random_inputs(config: MemoryConfig, batch=1, length=40, seed=None, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    heads, dim = config.num_heads, config.head_dim
    shape = (batch, heads, length)

    def rand(*size):
        return torch.rand(*size, generator=generator)

    def randn(*size):
        return torch.randn(*size, generator=generator)

    q = F.normalize(randn(*shape, dim), dim=-1)
    k = F.normalize(randn(*shape, dim), dim=-1)
    v = randn(*shape, dim)
    lr = rand(*shape) * config.max_lr
    momentum = 0.01 + 0.98 * rand(*shape)
    decay = 0.2 * rand(*shape)
    huber_delta = 0.1 + rand(*shape) if config.attentional_bias == "huber" else None
    weights = tuple(
        w.expand(batch, *w.shape).clone() + 0.1 * randn(batch, *w.shape)
        for w in initial_memory_weights(config, generator)
    )
    momenta = tuple(0.05 * randn(*w.shape) for w in weights)
    move = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    qkv = tuple(t.to(DEVICE, dtype) for t in (q, k, v))
    return (*qkv, *map(move, (lr, momentum, decay, huber_delta))), tuple(map(move, weights)), tuple(map(move, momenta))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), "non-finite values (unwritten or NaN output)"
    want = want.double()
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


def assert_results_close(got, want, tolerance, label=""):
    pairs = {"output": (got.output, want.output), "grad_norm": (got.grad_norm, want.grad_norm),
             "momentum_norm": (got.momentum_norm, want.momentum_norm)}
    for layer, (a, b) in enumerate(zip(got.weights, want.weights)):
        pairs[f"weights[{layer}]"] = (a, b)
    for layer, (a, b) in enumerate(zip(got.momenta, want.momenta)):
        pairs[f"momenta[{layer}]"] = (a, b)
    for name, (a, b) in pairs.items():
        error = relative_error(a, b)
        assert error < tolerance, f"{label} {name}: relative error {error:.2e} >= {tolerance:.0e}"


CONFIGS = {
    "titans (depth 2, l2, decay, momentum, clipped)": dict(),
    "depth 1 (linear memory)": dict(depth=1),
    "yaad-like (huber, gd)": dict(attentional_bias="huber", algorithm="gd"),
    "moneta (lp p=3, lq q=4, gd)": dict(attentional_bias="lp", retention="lq", algorithm="gd"),
    "memora (kl retention)": dict(retention="kl", algorithm="gd"),
    "no retention, no clipping, chunk 10": dict(retention="none", max_grad_norm=float("inf"), chunk_size=10),
}


@pytest.mark.parametrize("changes", list(CONFIGS.values()), ids=list(CONFIGS))
def test_fused_equals_torch_chunked_in_fp32(changes):
    config = MemoryConfig(num_heads=1, head_dim=16, chunk_size=16, max_grad_norm=0.5).replace(**changes)
    assert triton_fused.fused_supported(config, DEVICE)[0], "this config should run the fused kernel"
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    fused = triton_fused.memory_update(*args, precision="ieee")
    chunked = torch_chunked.memory_update(*args)
    assert_results_close(fused, chunked, 1e-4, "fused vs torch_chunked:")


@pytest.mark.parametrize("changes", [dict(), dict(depth=1), dict(algorithm="gd")], ids=["titans", "depth 1", "gd"])
def test_without_the_momentum_signal_everything_else_is_unchanged(changes):
    """momentum_signal=False (inference callers that read no ||S_t||) skips the Grams: the same
    output, grad norms and state (to 1e-6: compiled without the Grams, a GPU may schedule the shared
    products differently), and NaN for ||S_t||."""
    config = MemoryConfig(num_heads=2, head_dim=16, chunk_size=16, max_grad_norm=0.5).replace(**changes)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=2, length=40)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    full = triton_fused.memory_update(*args, precision="ieee")
    lean = triton_fused.memory_update(*args, precision="ieee", momentum_signal=False)
    assert torch.isnan(lean.momentum_norm).all(), "||S_t|| should be NaN when it is not asked for"
    assert torch.isfinite(full.momentum_norm).all()
    pairs = [("output", lean.output, full.output), ("grad_norm", lean.grad_norm, full.grad_norm)]
    pairs += [("state", a, b) for a, b in zip((*lean.weights, *lean.momenta), (*full.weights, *full.momenta))]
    for name, a, b in pairs:
        assert relative_error(a, b) < 1e-6, f"{name} changed without the momentum signal"


def test_hidden_units_in_several_blocks_equal_one_block():
    """Depth 2 walks the hidden units in blocks; 4 blocks of 16 must give torch_chunked's result."""
    config = MemoryConfig(num_heads=1, head_dim=16, expansion=4, chunk_size=16, max_grad_norm=0.5)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, length=24)
    output, grad_norm, momentum_norm, new_weights, new_momenta = triton_fused._fused_forward(
        q, k, v, lr, momentum, decay, delta, weights, momenta, config, "ieee", num_warps=4, block_hidden=16
    )
    fused = triton_fused.MemoryResult(output, grad_norm, momentum_norm, new_weights, new_momenta)
    chunked = torch_chunked.memory_update(q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    assert_results_close(fused, chunked, 1e-4, "4 hidden blocks of 16:")


def test_fused_equals_float64_reference():
    config = MemoryConfig(num_heads=1, head_dim=16, chunk_size=8, max_grad_norm=0.5)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=1, length=20)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    fused = triton_fused.memory_update(*args, precision="ieee")
    exact = reference.memory_update(*(t.double() if torch.is_tensor(t) else t for t in args[:7]),
                                    tuple(w.double() for w in weights), tuple(s.double() for s in momenta), config)
    assert_results_close(fused, exact, 1e-5, "fused vs float64 reference:")


def test_strided_inputs_as_the_layer_passes_them():
    """q/k/v arrive as (B, T, H, d) transposed views and gates as permuted views in layer.py."""
    config = MemoryConfig(num_heads=2, head_dim=16, chunk_size=16)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=2)
    strided = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
    gates = lambda t: t.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # noqa: E731
    args = (strided(q), strided(k), strided(v), gates(lr), gates(momentum), gates(decay), delta, weights, momenta, config)
    assert not args[0].is_contiguous() and not args[3].is_contiguous()
    fused = triton_fused.memory_update(*args, precision="ieee")
    chunked = torch_chunked.memory_update(q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    assert_results_close(fused, chunked, 1e-4, "strided inputs:")


def test_gradients_flow_and_equal_torch_chunked():
    config = MemoryConfig(num_heads=1, head_dim=16, chunk_size=16)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=1, length=20)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, lr, *weights)]

    def loss(impl, **kwargs):
        q_, k_, v_, lr_, *w_ = leaves
        result = impl(q_, k_, v_, lr_, momentum, decay, delta, tuple(w_), momenta, config, **kwargs)
        return (result.output.square().sum() + result.momentum_norm.sum() + result.grad_norm.sum()
                + sum(w.square().sum() for w in result.weights))

    fused_grads = torch.autograd.grad(loss(triton_fused.memory_update, precision="ieee"), leaves)
    chunked_grads = torch.autograd.grad(loss(torch_chunked.memory_update), leaves)
    for index, (a, b) in enumerate(zip(fused_grads, chunked_grads)):
        error = relative_error(a, b)
        assert error < 1e-4, f"gradient of input {index}: relative error {error:.2e}"


@pytest.mark.parametrize("changes, block_hidden, momentum_signal",
                         [(dict(), 64, True), (dict(algorithm="gd", max_grad_norm=0.3), 16, True), (dict(), 16, False)],
                         ids=["titans, one hidden block", "gd clipped, two hidden blocks",
                              "titans without the ||S_t|| signal, two hidden blocks"])
def test_backward_kernel_equals_torch_chunked_gradients(changes, block_hidden, momentum_signal, monkeypatch):
    """backward="triton": the reverse chunk loop over checkpointed states, against autograd through
    torch_chunked, for every input and every output (output, both signals, weights, momenta; without
    the ||S_t|| signal, every output but that one: the kernels skip its Grams and their adjoints)."""
    monkeypatch.setattr(triton_fused, "_DEFAULT_BLOCK_HIDDEN", block_hidden)
    check_backward_gradients(MemoryConfig(num_heads=1, head_dim=16, chunk_size=16).replace(**changes), momentum_signal)


@pytest.mark.skipif(not CUDA, reason="programs that wait for each other need a GPU (the interpreter runs them in turn)")
@pytest.mark.parametrize("parts", [2, 4])
def test_split_backward_equals_torch_chunked_gradients(parts, monkeypatch):
    """Forward and backward with a (row, head)'s hidden units (64, in slices of 64 / parts) shared by
    `parts` programs that meet after each pass."""
    monkeypatch.setattr(triton_split, "choose_parts", lambda *args: parts)
    check_backward_gradients(MemoryConfig(num_heads=2, head_dim=16, expansion=4, chunk_size=16), False)


def check_backward_gradients(config, momentum_signal):
    assert triton_fused.backward_kernel_supported(config)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, length=24)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, lr, momentum, decay, *weights, *momenta)]
    generator = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(shape, generator=generator).to(DEVICE) for shape in
                  [q.shape, lr.shape, lr.shape] + [w.shape for w in (*weights, *momenta)]]

    def loss(impl, **kwargs):
        q_, k_, v_, lr_, momentum_, decay_, w1, w2, s1, s2 = leaves
        result = impl(q_, k_, v_, lr_, momentum_, decay_, None, (w1, w2), (s1, s2), config, **kwargs)
        outputs = (result.output, result.grad_norm, result.momentum_norm, *result.weights, *result.momenta)
        return sum((o * c).sum() for i, (o, c) in enumerate(zip(outputs, cotangents)) if momentum_signal or i != 2)

    fused_loss = loss(triton_fused.memory_update, precision="ieee", backward="triton", momentum_signal=momentum_signal)
    fused = torch.autograd.grad(fused_loss, leaves, allow_unused=True)
    chunked = torch.autograd.grad(loss(torch_chunked.memory_update), leaves, allow_unused=True)
    names = ["q", "k", "v", "lr", "momentum", "decay", "W1", "W2", "S1", "S2"]
    for name, a, b in zip(names, fused, chunked):
        if b is None or b.abs().max() < 1e-20:  # gd: no η; S0 reaches nothing but tiny products
            continue
        error = relative_error(a, b)
        assert error < 1e-4, f"gradient of {name}: relative error {error:.2e}"


def test_unsupported_config_falls_back_to_torch_chunked():
    config = MemoryConfig(num_heads=1, head_dim=16, chunk_size=16, depth=3)
    supported, reason = triton_fused.fused_supported(config, DEVICE)
    assert not supported and "depth 3" in reason
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=1, length=20)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    assert_results_close(triton_fused.memory_update(*args), torch_chunked.memory_update(*args), 1e-12, "fallback:")


@pytest.mark.skipif(not CUDA, reason="tf32 and bf16 tensor-core products need a CUDA GPU")
# tf32 / bf16 round every product's operands (~5e-4 / ~4e-3); over a stream the state carries those
# errors forward (tf32 measured 6.8e-3 on weights[0] at T=300 on an H200).
@pytest.mark.parametrize("precision, dtype, tolerance", [("tf32", torch.float32, 1e-2), ("bf16", torch.bfloat16, 3e-2)])
def test_reduced_precision_on_cuda(precision, dtype, tolerance):
    config = MemoryConfig(num_heads=1, head_dim=64, chunk_size=64)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, length=300)
    exact = torch_chunked.memory_update(q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    low = tuple(t.to(dtype) for t in (q, k, v))
    fused = triton_fused.memory_update(*low, lr, momentum, decay, delta, weights, momenta, config, precision=precision)
    assert_results_close(fused, exact, tolerance, f"{precision} fused vs fp32 torch_chunked:")


# ---- triton_split: a (row, head)'s hidden units across P programs that meet twice a chunk

SPLIT_CONFIGS = {
    "titans (momentum, clipped)": dict(),
    "yaad-like (huber, gd)": dict(attentional_bias="huber", algorithm="gd"),
    "no retention, no clipping, chunk 10": dict(retention="none", max_grad_norm=float("inf"), chunk_size=10),
}


@pytest.mark.parametrize("changes", list(SPLIT_CONFIGS.values()), ids=list(SPLIT_CONFIGS))
def test_split_kernel_equals_torch_chunked(changes):
    """One part anywhere (the interpreter runs programs in turn, so parts that wait for each other
    need CUDA); one, two and four parts (hidden 64 in slices of 16) on CUDA. ||S_t|| is NaN unless
    gd, where it is θ·||u||."""
    config = MemoryConfig(num_heads=2, head_dim=16, expansion=4, chunk_size=16, max_grad_norm=0.5).replace(**changes)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=2, length=40)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config)
    chunked = torch_chunked.memory_update(*args)
    for parts in (1, 2, 4) if CUDA else (1,):
        split = triton_fused.MemoryResult(*triton_fused._fused_forward(*args, "ieee", momentum_signal=False, parts=parts))
        want = chunked
        if config.algorithm != "gd":  # compare everything but the signal it did not compute
            assert torch.isnan(split.momentum_norm).all(), "||S_t|| should be NaN when it is not asked for"
            split = split._replace(momentum_norm=torch.zeros_like(split.grad_norm))
            want = chunked._replace(momentum_norm=torch.zeros_like(split.grad_norm))
        assert_results_close(split, want, 1e-4, f"split P={parts} vs torch_chunked:")


def test_split_kernel_reads_a_broadcast_initial_state_in_place():
    """A fresh stream's state (weights and zero momenta broadcast over the batch, as
    NeuralMemory.initial_state makes them) is read where it lies; the caller's tensors stay as they
    were; mixed layouts (one broadcast, one not) are copied first. Same results either way."""
    config = MemoryConfig(num_heads=2, head_dim=16, chunk_size=16, max_grad_norm=0.5)
    (q, k, v, lr, momentum, decay, delta), weights, _ = random_inputs(config, batch=2, length=40)
    shared = tuple(w[0] for w in weights)  # (H, out, in) per layer
    broadcast = tuple(w.unsqueeze(0).expand(2, *w.shape) for w in shared)
    zeros = tuple(torch.zeros_like(w).unsqueeze(0).expand(2, *w.shape) for w in shared)
    contiguous = tuple(w.contiguous() for w in broadcast)
    assert triton_split.initial_strides((*broadcast, *zeros)) == (0, shared[0][0].numel())
    assert triton_split.initial_strides((*contiguous, *zeros)) is None
    want = torch_chunked.memory_update(q, k, v, lr, momentum, decay, delta, contiguous,
                                       tuple(z.contiguous() for z in zeros), config)  # fmt: skip
    before = [w.clone() for w in shared]
    for label, state in (("broadcast", (broadcast, zeros)), ("mixed", (contiguous, zeros))):
        got = triton_fused.MemoryResult(*triton_fused._fused_forward(q, k, v, lr, momentum, decay, delta, *state, config,
                                                                     "ieee", momentum_signal=False, parts=1))
        got = got._replace(momentum_norm=torch.zeros_like(got.grad_norm))
        assert_results_close(got, want._replace(momentum_norm=torch.zeros_like(got.grad_norm)), 1e-4, f"{label}:")
    assert all(torch.equal(a, b) for a, b in zip(before, shared)), "the initial state was written to"
    assert all((z == 0).all() for z in zeros)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training checkpoints"])
def test_reader_programs_equal_the_read_kernel(training, monkeypatch):
    """Reader programs added to the split grid (each read once its chunk's start state is saved)
    write what the separate read kernel writes, bit for bit, from the bf16-or-fp32 states of
    inference and from the training checkpoints alike; more readers than items, and fewer."""
    config = MemoryConfig(num_heads=2, head_dim=16, chunk_size=16, max_grad_norm=0.5)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=2, length=40)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config, "ieee")
    size = 2 * 2 * 3 * 4 * config.hidden_dim * config.head_dim

    def run(readers):
        monkeypatch.setattr(triton_split, "reader_count", lambda programs, lanes, device: readers)
        checkpoints = torch.empty(size, device=DEVICE) if training else None
        return triton_fused._fused_forward(*args, checkpoints=checkpoints, momentum_signal=False, parts=1)[0]

    want = run(0)
    for readers in (3, 17):  # 4 lanes x 3 chunks = 12 items
        assert torch.equal(run(readers), want), f"{readers} readers"


def test_split_kernel_saves_the_checkpoints_of_the_one_program_kernel():
    """The chunk-start states the backward kernel reads, written part by part, in the same layout."""
    config = MemoryConfig(num_heads=2, head_dim=16, chunk_size=16, max_grad_norm=0.5)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=2, length=40)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config, "ieee")
    size = 2 * 2 * 3 * 4 * config.hidden_dim * config.head_dim  # batch x heads x chunks x [W1, W2, S1, S2]
    one, split = (torch.full((size,), float("nan"), device=DEVICE) for _ in range(2))
    triton_fused._fused_forward(*args, checkpoints=one, momentum_signal=False, parts=0)
    triton_fused._fused_forward(*args, checkpoints=split, momentum_signal=False, parts=1)
    assert torch.isfinite(split).all(), "some checkpoint entries were not written"
    assert relative_error(split, one) < 1e-6


def test_split_kernel_refuses_what_it_does_not_cover():
    config = MemoryConfig(num_heads=1, head_dim=16, chunk_size=16, retention="lq")
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, length=20)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config, "ieee")
    with pytest.raises(ValueError, match="does not cover"):
        triton_fused._fused_forward(*args, momentum_signal=False, parts=2)
    with pytest.raises(ValueError, match="does not cover"):  # the ||S_t|| Grams are sums over all parts
        triton_fused._fused_forward(*args[:-2], config.replace(retention="decay"), "ieee", momentum_signal=True, parts=2)
    if not CUDA:
        with pytest.raises(ValueError, match="only on CUDA"):
            triton_fused._fused_forward(*args[:-2], config.replace(retention="decay"), "ieee",
                                        momentum_signal=False, parts=2)


def test_split_is_chosen_only_where_the_card_has_idle_sms():
    from titans_cli.memory.triton_split import auto_parts, choose_parts

    reference = MemoryConfig(num_heads=4, head_dim=64, chunk_size=64)  # issue 8's shape: hidden 128
    assert choose_parts(reference, 32, "bf16", 132) == 2  # bf16 products need 64-wide slices
    assert choose_parts(reference, 32, "tf32", 132) == 4
    assert choose_parts(reference, 40, "tf32", 132) == 2  # 160 programs would not all be resident
    assert choose_parts(reference, 512, "bf16", 132) == 1  # 128 lanes x 4 heads already fill the card
    dna = MemoryConfig(num_heads=4, head_dim=32, chunk_size=64)  # the shipped dna model: hidden 64
    assert choose_parts(dna, 4, "tf32", 132) == 2
    assert auto_parts(reference, 32, "bf16", torch.device("cpu")) == 1  # programs that wait need CUDA


# ---- triton_read: the read and its adjoints over all (lane, chunk) at once, off the recurrence

@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_read_apart_equals_the_read_in_the_recurrence(precision):
    """The read kernel adds the hidden slices in the split kernel's order, with the chunk-start states
    in the products' precision (bf16 states for bf16 products): the same bits under the interpreter,
    fp32 rounding apart on CUDA (the compiled tiles may accumulate in another order)."""
    config = MemoryConfig(num_heads=2, head_dim=16, expansion=4, chunk_size=16, max_grad_norm=0.5)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=2, length=40)
    args = (q, k, v, lr, momentum, decay, delta, weights, momenta, config, precision)
    for parts in (1, 2, 4) if CUDA else (1,):
        if precision == "bf16" and CUDA and parts > 1:
            continue  # bf16 products need 64-wide slices (triton_fused's guard)
        apart, inside = (triton_fused.MemoryResult(*triton_fused._fused_forward(
            *args, momentum_signal=False, parts=parts, read_apart=flag)) for flag in (True, False))
        assert torch.isfinite(apart.output).all()
        if CUDA:  # other compiled tile orders: fp32 rounding apart (||S_t||: NaN, not asked for)
            zero = torch.zeros_like(apart.grad_norm)
            assert_results_close(apart._replace(momentum_norm=zero), inside._replace(momentum_norm=zero), 1e-6,
                                 f"P={parts}, read apart vs in the recurrence:")
        else:  # the interpreter multiplies in one order: the same bits
            assert torch.equal(apart.output, inside.output), f"P={parts}: reads differ"


@pytest.mark.parametrize("momentum_signal", [True, False])
def test_read_adjoints_apart_equal_the_backward_kernels_own(momentum_signal):
    """Every input and state adjoint, with the read's adjoints from triton_read and from pass D."""
    config = MemoryConfig(num_heads=2, head_dim=16, chunk_size=16, max_grad_norm=0.5)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=2, length=40, seed=3)
    state = (*weights, *momenta)
    chunks = 3
    checkpoints = torch.empty(2 * 2 * chunks * 4 * config.hidden_dim * config.head_dim, device=DEVICE)
    output, grad_norm, momentum_norm, new_weights, new_momenta = triton_fused._fused_forward(
        q, k, v, lr, momentum, decay, delta, weights, momenta, config, "ieee", checkpoints=checkpoints,
        momentum_signal=momentum_signal)
    generator = torch.Generator().manual_seed(5)
    grads = [torch.randn(t.shape, generator=generator).to(DEVICE)
             for t in (output, grad_norm, momentum_norm, *new_weights, *new_momenta)]
    saved = (q, k, v, lr, momentum, decay, None, *state)
    apart, inside = (triton_fused._triton_backward(config, "ieee", saved, checkpoints, grads,
                                                   momentum_signal=momentum_signal, read_apart=flag)
                     for flag in (True, False))
    for name, a, b in zip(["q", "k", "v", "lr", "momentum", "decay", "delta", "W1", "W2", "S1", "S2"], apart, inside):
        if b is not None:
            assert relative_error(a, b) < 1e-6, f"adjoint of {name}"


def test_unaligned_strides_take_the_elementwise_loads():
    """q, k, v as views of (B, H, T, 17) tensors: their batch and head strides are not multiples of 16,
    so the kernels get them as they are (lane_strides' ALIGNED off) rather than divided by 16. The
    one-program kernel, the split kernel with its read kernel, and the backward with its read
    adjoints give what they give on contiguous copies."""
    config = MemoryConfig(num_heads=2, head_dim=16, chunk_size=16, max_grad_norm=0.5)
    (q, k, v, lr, momentum, decay, delta), weights, momenta = random_inputs(config, batch=2, length=37, seed=7)
    padded = lambda t: torch.cat([t, torch.zeros_like(t[..., :1])], dim=-1)[..., :16]  # noqa: E731
    views = tuple(padded(t) for t in (q, k, v))
    assert not triton_fused.lane_strides(*views)[0] and triton_fused.lane_strides(q, k, v)[0]
    for parts in (0, 1):  # the one-program kernel; the split kernel's code path and the read kernel
        got, want = (triton_fused.MemoryResult(*triton_fused._fused_forward(
            *inputs, lr, momentum, decay, delta, weights, momenta, config, "ieee", momentum_signal=False,
            parts=parts)) for inputs in (views, (q, k, v)))
        zero = torch.zeros_like(got.grad_norm)
        assert_results_close(got._replace(momentum_norm=zero), want._replace(momentum_norm=zero), 1e-6,
                             f"parts={parts}, unaligned views vs contiguous:")
    chunks = 3
    checkpoints = torch.empty(2 * 2 * chunks * 4 * config.hidden_dim * config.head_dim, device=DEVICE)
    outputs = triton_fused._fused_forward(q, k, v, lr, momentum, decay, delta, weights, momenta, config, "ieee",
                                          checkpoints=checkpoints, momentum_signal=False)
    generator = torch.Generator().manual_seed(9)
    grads = [torch.randn(t.shape, generator=generator).to(DEVICE) for t in (*outputs[:3], *outputs[3], *outputs[4])]
    got, want = (triton_fused._triton_backward(config, "ieee", (*inputs, lr, momentum, decay, None, *weights, *momenta),
                                               checkpoints, grads, momentum_signal=False)
                 for inputs in (views, (q, k, v)))
    for index, (a, b) in enumerate(zip(got, want)):
        if b is not None:
            assert relative_error(a, b) < 1e-6, f"adjoint {index}: unaligned views vs contiguous"
