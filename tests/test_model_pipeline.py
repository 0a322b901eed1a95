"""The CPU layer pipeline (>= 2 threads, inference steps >= 2048 tokens) must give what feeding the
same sub-pieces one by one gives: it only reorders independent work across two threads."""

import numpy as np
import pytest
import torch

from titans_cli.memory.config import MemoryConfig
from titans_cli.model.config import ModelConfig
from titans_cli.model.lm import TitansLM

SMALL = ModelConfig(
    vocab_size=8, d_model=32, n_layers=2, n_heads=2, block="mag", window=64, n_persistent=2, ffn_mult=2.0,
    tokenizer="dna", memory=MemoryConfig(num_heads=2, head_dim=16, depth=2, expansion=2, chunk_size=16),
)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_pipelined_step_equals_sub_pieces_fed_one_by_one(backend):
    torch.manual_seed(0)
    model = TitansLM(SMALL).eval()
    tokens = torch.as_tensor(np.random.default_rng(1).integers(3, 8, size=(2, 4096)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            parts = model._pipeline_parts(tokens, backend)
            assert parts >= 2, "a 4096-token inference step on 2 threads should take the pipeline"
            piped, _ = model.step(tokens, None, backend)
            torch.set_num_threads(1)
            assert model._pipeline_parts(tokens, backend) == 0
            state, outputs = None, []
            for piece in torch.tensor_split(tokens, parts, dim=1):
                out, state = model.step(piece, state, backend)
                outputs.append(out)
    finally:
        torch.set_num_threads(threads)
    for field in ("logits", "hidden", "grad", "momentum"):
        expected = torch.cat([getattr(o, field) for o in outputs], dim=1)
        got = getattr(piped, field)
        assert got.shape == expected.shape, f"{field}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (
            f"{field}: pipelined step differs from sub-pieces fed one by one "
            f"(max abs diff {(got - expected).abs().max().item():.3g})")


def test_streaming_threads_run_torch_on_one_thread_and_keep_the_pipeline():
    """Inside streaming_threads() (how the StreamEngine runs on a CPU) torch ops use one thread,
    the cores torch had still drive the layer pipeline, also for a wave of several short lanes,
    and the outputs equal a plain step's."""
    from titans_cli.model.lm import streaming_threads

    torch.manual_seed(0)
    model = TitansLM(SMALL).eval()
    tokens = torch.as_tensor(np.random.default_rng(2).integers(3, 8, size=(4, 640)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            with streaming_threads():
                assert torch.get_num_threads() == 1, "streaming_threads should leave torch one thread"
                parts = model._pipeline_parts(tokens, "numba")
                assert parts >= 2, "4 lanes x 640 tokens on 2 cores should take the pipeline"
                piped, _ = model.step(tokens, None, "numba")
            assert torch.get_num_threads() == 2, "streaming_threads should restore the thread count"
            torch.set_num_threads(1)
            plain, _ = model.step(tokens, None, "numba")
    finally:
        torch.set_num_threads(threads)
    for field in ("logits", "hidden", "grad", "momentum"):
        got, expected = getattr(piped, field), getattr(plain, field)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (
            f"{field}: pipelined step in streaming_threads differs (max abs diff {(got - expected).abs().max().item():.3g})")
