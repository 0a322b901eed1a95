"""The shipped models in models/: they load and verify, stream exactly like the whole-sequence pass,
and score the shipped lambda genome sensibly; plus the training-backend choice that produced them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from titans_cli.errors import TitansInputError
from titans_cli.memory.config import MemoryConfig
from titans_cli.model.files import SHIPPED_MODELS, list_models, load_model_dir
from titans_cli.model.lm import bits_per_token
from titans_cli.tasks.train import _training_backend

REPO = Path(__file__).resolve().parents[1]
DNA_MODELS = ["dna", "dna-base"]


def lambda_tokens(tokenizer, n: int) -> torch.Tensor:
    lines = (REPO / "sample_data" / "lambda_phage.fa").read_text().splitlines()
    sequence = "".join(line.strip() for line in lines if not line.startswith(">"))[:n]
    return torch.as_tensor([tokenizer.bos_id, *tokenizer.encode(sequence)], dtype=torch.long).unsqueeze(0)


TEXT_MODELS = ["text", "text-base"]
# Written for this test (no outside prose may enter the repository).
ENGLISH = ("The ferry left the harbour an hour late, and by the time it reached the island the light had "
           "gone grey over the water. Martha stood at the rail with her brother, counting the gulls that "
           "followed the boat, while the old captain told anyone who would listen that the weather would "
           "turn before morning. Nobody believed him, but everyone buttoned their coats all the same.")


@pytest.mark.parametrize("name", DNA_MODELS + TEXT_MODELS)
def test_shipped_model_loads_verified_and_is_listed(name):
    loaded = load_model_dir(SHIPPED_MODELS / name)
    assert loaded.card.startswith("# titans"), "every shipped model has a card"
    assert name in [found for found, _, _ in list_models()]


@pytest.mark.parametrize("name", DNA_MODELS)
def test_shipped_dna_model_streams_like_the_whole_pass_and_scores_lambda(name):
    model, config, tokenizer = load_model_dir(SHIPPED_MODELS / name)
    model.eval()
    tokens = lambda_tokens(tokenizer, 3 * config.memory.chunk_size * 4 + 37)  # several chunks and a partial one
    with torch.no_grad():
        whole, _ = model.step(tokens)
        state, pieces, start = None, [], 0
        for size in (100, 1, 250, tokens.shape[1] - 351):
            output, state = model.step(tokens[:, start : start + size], state)
            pieces.append(output.logits)
            start += size
    streamed = torch.cat(pieces, dim=1)
    assert torch.allclose(streamed, whole.logits, atol=2e-4, rtol=1e-4)
    bits = bits_per_token(whole.logits, tokens).mean().item()
    # A DNA model trained on bacteria and phages predicts lambda better than uniform (2 bits/base)
    # and not absurdly well for 800 bases of a genome it never saw.
    assert 1.7 < bits < 2.0, bits


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_shipped_text_model_streams_like_the_whole_pass_and_reads_english(name):
    model, config, tokenizer = load_model_dir(SHIPPED_MODELS / name)
    model.eval()
    tokens = torch.as_tensor([tokenizer.bos_id, *tokenizer.encode(ENGLISH * 3)], dtype=torch.long).unsqueeze(0)
    assert tokens.shape[1] > 2 * config.memory.chunk_size
    with torch.no_grad():
        whole, _ = model.step(tokens)
        first, state = model.step(tokens[:, :70])
        rest, _ = model.step(tokens[:, 70:], state)
    assert torch.allclose(torch.cat([first.logits, rest.logits], dim=1), whole.logits, atol=5e-4, rtol=1e-4)
    bits = bits_per_token(whole.logits, tokens)[0]
    per_byte = bits.sum().item() / len((ENGLISH * 3).encode())
    assert per_byte < 3.0, f"{name}: {per_byte:.2f} bits/byte on plain English"
    # the passage repeats within the attention window: the later copies cost less than the first (only
    # a little: these models copy weakly, benchmarks/results/copying.md)
    third = len(bits) // 3
    assert bits[2 * third :].mean() < bits[:third].mean()


def test_text_base_is_the_better_text_model():
    scores, loaded = {}, {name: load_model_dir(SHIPPED_MODELS / name) for name in TEXT_MODELS}
    for name, (model, _, tokenizer) in loaded.items():
        tokens = torch.as_tensor([tokenizer.bos_id, *tokenizer.encode(ENGLISH)], dtype=torch.long).unsqueeze(0)
        with torch.no_grad():
            output, _ = model.eval().step(tokens)
        scores[name] = bits_per_token(output.logits, tokens).mean().item()
    assert scores["text-base"] < scores["text"], scores
    tokenizers = [(loaded[name].path / "tokenizer.json").read_bytes() for name in TEXT_MODELS]
    assert tokenizers[0] == tokenizers[1]


def test_dna_base_is_the_larger_model():
    small = load_model_dir(SHIPPED_MODELS / "dna").model
    base = load_model_dir(SHIPPED_MODELS / "dna-base").model
    assert sum(p.numel() for p in base.parameters()) > 5 * sum(p.numel() for p in small.parameters())


def test_training_backend_choice():
    cpu = torch.device("cpu")
    assert _training_backend("auto", cpu) == "torch", "no CUDA: torch_chunked"
    assert _training_backend("torch", cpu) == "torch"
    with pytest.raises(TitansInputError, match="CUDA"):
        _training_backend("triton", cpu)
    with pytest.raises(TitansInputError, match="auto, torch or triton"):
        _training_backend("numba", cpu)


def test_bf16_kernels_only_for_64_wide_tiles():
    triton_fused = pytest.importorskip("titans_cli.memory.triton_fused")
    assert triton_fused.bf16_supported(MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2))
    assert not triton_fused.bf16_supported(MemoryConfig(num_heads=4, head_dim=32, depth=2, expansion=2))
    reference = MemoryConfig(num_heads=4, head_dim=64, depth=2, expansion=2, chunk_size=64)
    assert triton_fused.backward_kernel_supported(reference, "bf16")
    assert not triton_fused.backward_kernel_supported(reference, "tf32"), "tf32 at d 64 does not fit an H100"
    assert triton_fused.backward_kernel_supported(MemoryConfig(num_heads=4, head_dim=32, depth=2, expansion=2), "tf32")


def test_shipped_genre_head_reads_text_base_and_classifies_a_passage():
    import titans_cli

    predictions = titans_cli.classify("genre", [("passage", ENGLISH)])
    assert predictions.classes[0] == "adventure" and len(predictions.classes) == 15
    assert len(predictions.labels) == 1 and predictions.labels[0] in predictions.classes
    assert np.allclose(predictions.probabilities.sum(axis=1), 1.0, atol=1e-5)
    from titans_cli.tasks.heads import load_head

    assert load_head("genre").settings["model"] == "text-base", "the head loads the embeddings' own model"
