"""Model directories: save/load round trip, and every damaged file refused with its name."""

import json

import pytest
import torch

from titans_cli.errors import TitansInputError
from titans_cli.memory.config import MemoryConfig
from titans_cli.model.config import ModelConfig
from titans_cli.model.files import card_summary, list_models, load_model, load_model_dir, resolve_model, save_model_dir
from titans_cli.model.lm import TitansLM
from titans_cli.model.tokenizers import DNATokenizer, train_bpe


def tiny_config(**overrides):
    values = dict(
        d_model=32, n_layers=1, n_heads=2, window=16, n_persistent=2,
        memory=MemoryConfig(num_heads=2, head_dim=8, chunk_size=8),
    )
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture
def dna_model_dir(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    model = TitansLM(config).eval()
    path = save_model_dir(model, config, DNATokenizer(), tmp_path / "dna-tiny", card_text="# dna-tiny\n\nA tiny test model.\n")
    return path, model


def test_dna_round_trip_gives_identical_logits(dna_model_dir):
    path, model = dna_model_dir
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_model_dir(path)
    tokens = torch.randint(0, 8, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded.model(tokens)), "reloaded model computes different logits"
    assert loaded.config == model.config and loaded.tokenizer.kind == "dna"
    model_, config_, tokenizer_ = loaded  # the unpacking form used by the trainer
    assert model_ is loaded.model and config_ is loaded.config and tokenizer_ is loaded.tokenizer
    document = json.loads((path / "config.json").read_text())
    assert document["format_version"] == 1 and len(document["weights_sha256"]) == 64


def test_bfloat16_storage_halves_the_file_and_rounds_each_weight_once(dna_model_dir, tmp_path):
    path, model = dna_model_dir
    half = save_model_dir(model, model.config, DNATokenizer(), tmp_path / "dna-bf16", weights_dtype="bfloat16")
    from safetensors.torch import load_file

    stored = load_file(str(half / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in stored.values() if t.is_floating_point())
    assert (half / "model.safetensors").stat().st_size < 0.6 * (path / "model.safetensors").stat().st_size
    loaded = load_model_dir(half)
    for name, parameter in loaded.model.state_dict().items():
        assert parameter.dtype == torch.float32, f"{name} is loaded back as float32"
        assert torch.equal(parameter, model.state_dict()[name].to(torch.bfloat16).float()), name
    with pytest.raises(ValueError, match="weights_dtype"):
        save_model_dir(model, model.config, DNATokenizer(), tmp_path / "bad", weights_dtype="float8")


def test_bpe_round_trip_with_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the memory learns while it reads. " * 200 + "surprise! novelty? genome.\n" * 50)
    tokenizer = train_bpe([corpus], vocab_size=280)
    config = tiny_config(tokenizer="bpe", vocab_size=tokenizer.vocab_size)
    model = TitansLM(config).eval()
    path = save_model_dir(model, config, tokenizer, tmp_path / "text-tiny")
    assert (path / "tokenizer.json").is_file()
    loaded = load_model_dir(path)
    ids = torch.as_tensor(loaded.tokenizer.encode("the memory reads novelty")).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(ids), loaded.model(ids))
    (path / "tokenizer.json").unlink()
    with pytest.raises(TitansInputError, match="tokenizer.json"):
        load_model_dir(path)


def _rewrite_config(path, **changes):
    document = json.loads((path / "config.json").read_text())
    document.update(changes)
    (path / "config.json").write_text(json.dumps(document))


@pytest.mark.parametrize(
    "damage, file, message",
    [
        ("flip a byte", "model.safetensors", "sha256"),
        ("truncate", "model.safetensors", "sha256"),
        ("delete weights", "model.safetensors", "missing"),
        ("delete config", "config.json", "missing"),
        ("bad json", "config.json", "JSON"),
        ("window below chunk", "config.json", "window"),
        ("unknown block", "config.json", "block"),
        ("unknown field", "config.json", "unknown ModelConfig field"),
        ("future format", "config.json", "format_version"),
        ("weights of another shape", "model.safetensors", "shape"),
        ("weights of another architecture", "model.safetensors", "tensor"),
    ],
)
def test_damaged_model_dirs_raise_input_error_naming_the_file(dna_model_dir, damage, file, message):
    path, _ = dna_model_dir
    weights = path / "model.safetensors"
    if damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "delete weights":
        weights.unlink()
    elif damage == "delete config":
        (path / "config.json").unlink()
    elif damage == "bad json":
        (path / "config.json").write_text('{"d_model": 32,')
    elif damage == "window below chunk":
        _rewrite_config(path, window=4)
    elif damage == "unknown block":
        _rewrite_config(path, block="transformer-xl")
    elif damage == "unknown field":
        _rewrite_config(path, colour="red")
    elif damage == "future format":
        _rewrite_config(path, format_version=99)
    elif damage in ("weights of another shape", "weights of another architecture"):
        # Consistent sha256, but weights of a different model: a config/weights mismatch.
        other = tiny_config(d_model=48) if damage.endswith("shape") else tiny_config(block="lmm")
        save_model_dir(TitansLM(other), other, DNATokenizer(), path.parent / "other")
        weights.write_bytes((path.parent / "other" / "model.safetensors").read_bytes())
        _rewrite_config(path, weights_sha256=json.loads((path.parent / "other" / "config.json").read_text())["weights_sha256"])
    with pytest.raises(TitansInputError) as raised:
        load_model_dir(path)
    text = str(raised.value)
    assert file in text and message in text, f"{damage}: message should name {file} and say {message!r}: {text}"
    assert "\n" not in text, "error messages are one line"


def test_resolve_and_list_models(dna_model_dir, monkeypatch):
    path, _ = dna_model_dir
    monkeypatch.setenv("TITANS_MODELS", str(path.parent))
    assert resolve_model("dna-tiny") == path
    assert resolve_model(str(path)) == path
    listed = {name: (where, summary) for name, where, summary in list_models()}
    assert listed["dna-tiny"] == (path, "A tiny test model."), listed
    (path / "README.md").write_text("# titans `dna-tiny`: a tiny test model for lists\n\nLonger text. More.\n")
    assert card_summary(path) == "a tiny test model for lists", "the card's title after its colon"
    (path / "README.md").write_text("# dna-tiny\n\nFirst sentence runs\nover two lines. Second.\n")
    assert card_summary(path) == "First sentence runs over two lines.", "the first sentence of the first paragraph"
    assert load_model("dna-tiny").config.d_model == 32
    with pytest.raises(TitansInputError, match="no-such-model.*available: .*dna-tiny"):
        resolve_model("no-such-model")
    with pytest.raises(TitansInputError, match="not a model directory"):
        resolve_model(str(path / "config.json"))
