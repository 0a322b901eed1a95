"""Model directories: save, load (with checks that name the faulty file), and the model registry.

A model directory holds
  config.json        ModelConfig fields + "format_version" + "weights_sha256"
  model.safetensors  the weights (safetensors only: loading never unpickles anything), float32 or
                     bfloat16 (`titans train --save-dtype`), always loaded into float32 parameters
  tokenizer.json     BPE models only
  README.md          the model card
Shipped models live in the repository's `models/<name>`; `TITANS_MODELS` (a path list) adds more.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from titans_cli.errors import TitansInputError
from titans_cli.model.config import ModelConfig
from titans_cli.model.lm import TitansLM
from titans_cli.model.tokenizers import BPETokenizer, DNATokenizer, make_tokenizer

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, CARD_FILE = "config.json", "model.safetensors", "tokenizer.json", "README.md"
# The repository's models/ folder: titans_cli/model/files.py -> repository root (editable installs
# and source checkouts; a wheel install finds models through TITANS_MODELS instead).
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"


@dataclass
class LoadedModel:
    model: TitansLM
    config: ModelConfig
    tokenizer: DNATokenizer | BPETokenizer
    path: Path
    card: str  # README.md text ("" when absent)

    def __iter__(self):
        """Unpacks as `model, config, tokenizer = load_model_dir(path)`."""
        return iter((self.model, self.config, self.tokenizer))


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, write) -> None:
    """write(temporary_path) then rename over `path`: an interrupted save leaves no partial file."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# Storage types of model.safetensors. Loading casts to the model's float32 parameters, so bfloat16
# storage halves the file (and doubles the parameters that fit a size cap) at the cost of rounding
# every weight to 8 significant bits once.
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def save_model_dir(model: TitansLM, config: ModelConfig, tokenizer, path, card_text: str | None = None,
                   weights_dtype: str = "float32") -> Path:
    """Write a loadable model directory (created if needed) and return its path; floating-point
    weights are stored as `weights_dtype` (a WEIGHT_DTYPES key)."""
    from safetensors.torch import save_file

    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    stored = WEIGHT_DTYPES[weights_dtype]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer.kind != config.tokenizer or tokenizer.vocab_size != config.vocab_size:
        raise ValueError(
            f"tokenizer ({tokenizer.kind}, vocab {tokenizer.vocab_size}) does not match the config "
            f"({config.tokenizer}, vocab {config.vocab_size})"
        )
    weights = {
        name: tensor.detach().to("cpu", stored if tensor.is_floating_point() else tensor.dtype).contiguous()
        for name, tensor in model.state_dict().items()
    }
    _write_atomically(path / WEIGHTS_FILE, lambda temporary: save_file(weights, str(temporary), metadata={"format": "pt"}))
    if tokenizer.kind == "bpe":
        _write_atomically(path / TOKENIZER_FILE, lambda temporary: tokenizer.tokenizer.save(str(temporary)))
    document = {"format_version": FORMAT_VERSION, **config.to_dict(), "weights_sha256": sha256_of_file(path / WEIGHTS_FILE)}
    _write_atomically(path / CONFIG_FILE, lambda temporary: temporary.write_text(json.dumps(document, indent=2) + "\n"))
    if card_text is not None:
        _write_atomically(path / CARD_FILE, lambda temporary: temporary.write_text(card_text, encoding="utf-8"))
    return path


def read_config(path) -> tuple[ModelConfig, dict]:
    """Parse and validate a model directory's config.json -> (ModelConfig, the whole JSON object)."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise TitansInputError(f"{config_path}: missing (not a model directory?)")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TitansInputError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise TitansInputError(f"{config_path}: expected a JSON object")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise TitansInputError(f"{config_path}: unsupported format_version {version!r} (this titans reads {FORMAT_VERSION})")
    if not isinstance(document.get("weights_sha256"), str):
        raise TitansInputError(f"{config_path}: missing weights_sha256")
    fields = {key: value for key, value in document.items() if key not in ("format_version", "weights_sha256")}
    try:
        config = ModelConfig.from_dict(fields)
    except (ValueError, TypeError) as error:
        raise TitansInputError(f"{config_path}: invalid model config: {error}") from None
    return config, document


def load_model_dir(path, device="cpu", frozen_memory: bool = False) -> LoadedModel:
    """Load and verify a model directory; any problem raises TitansInputError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise TitansInputError(f"{path}: model directory not found")
    config, document = read_config(path)

    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise TitansInputError(f"{weights_path}: missing")
    actual = sha256_of_file(weights_path)
    if actual != document["weights_sha256"]:
        raise TitansInputError(
            f"{weights_path}: sha256 {actual[:16]}... does not match config.json's weights_sha256 "
            f"{document['weights_sha256'][:16]}... (corrupted, truncated or from another model)"
        )
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise TitansInputError(f"{weights_path}: not a readable safetensors file ({error})") from None

    model = TitansLM(config, frozen_memory=frozen_memory)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)} tensor(s), e.g. {missing[0]}" if missing else "",
                f"unexpected {len(unexpected)} tensor(s), e.g. {unexpected[0]}" if unexpected else "",
            )
            if part
        )
        raise TitansInputError(f"{weights_path}: weights do not fit config.json ({detail})")
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            raise TitansInputError(
                f"{weights_path}: tensor {name} has shape {tuple(weights[name].shape)}, "
                f"config.json implies {tuple(tensor.shape)}"
            )
        if not torch.isfinite(weights[name]).all():
            raise TitansInputError(f"{weights_path}: tensor {name} holds NaN or infinite values")
    model.load_state_dict(weights)
    model.to(device).eval()

    tokenizer = make_tokenizer(config.tokenizer, path)
    if tokenizer.vocab_size != config.vocab_size:
        raise TitansInputError(
            f"{path / TOKENIZER_FILE}: vocabulary of {tokenizer.vocab_size} tokens, config.json says {config.vocab_size}"
        )
    card_path = path / CARD_FILE
    card = card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else ""
    return LoadedModel(model, config, tokenizer, path, card)


# -----------------------------------------------------------------------------
# Registry


def model_search_path() -> list[Path]:
    """Folders whose subdirectories are models: $TITANS_MODELS entries first, then models/."""
    extra = [Path(entry) for entry in os.environ.get("TITANS_MODELS", "").split(os.pathsep) if entry]
    return extra + [SHIPPED_MODELS]


def list_models() -> list[tuple[str, Path, str]]:
    """(name, path, card summary) of every model directory on the search path, first name wins."""
    found, seen = [], set()
    for folder in model_search_path():
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.iterdir()):
            if candidate.name in seen or not (candidate / CONFIG_FILE).is_file():
                continue
            seen.add(candidate.name)
            found.append((candidate.name, candidate, card_summary(candidate)))
    return found


def card_summary(path: Path, width: int = 110) -> str:
    """What the model card (README.md) says the model is: its title after the colon ("# titans `dna`:
    a small ..."), else the first sentence of its first prose paragraph, cut to `width` characters at
    a word; without a card, a line built from config.json."""
    card = Path(path) / CARD_FILE
    if card.is_file():
        lines = card.read_text(encoding="utf-8", errors="replace").splitlines()
        title = lines[0].strip() if lines else ""
        if title.startswith("# ") and ": " in title:
            return title.split(": ", 1)[1].strip()
        paragraph = []
        for line in lines:
            line = line.strip()
            if paragraph and not line:
                break
            if line and not line.startswith(("#", "|", "---", "```", "<!--")):
                paragraph.append(line)
        if paragraph:
            text = " ".join(paragraph)
            end = text.find(". ")
            sentence = text if end < 0 else text[: end + 1]
            return sentence if len(sentence) <= width else sentence[: width - 1].rsplit(" ", 1)[0] + "…"
    try:
        config, _ = read_config(path)
    except TitansInputError as error:
        return f"unreadable: {error}"
    return f"{config.tokenizer} model, {config.block}, d_model {config.d_model}, {config.n_layers} layers"


def resolve_model(name_or_path) -> Path:
    """A model directory path, or the name of a model on the search path -> its directory."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    if candidate.exists():
        raise TitansInputError(f"{candidate}: not a model directory")
    name = str(name_or_path)
    if os.sep not in name and "/" not in name:
        for folder in model_search_path():
            if (folder / name / CONFIG_FILE).is_file():
                return folder / name
    available = ", ".join(entry[0] for entry in list_models()) or "none installed"
    raise TitansInputError(f"model {name!r} not found: not a directory and not a known model (available: {available})")


def load_model(name_or_path, device="cpu", frozen_memory: bool = False) -> LoadedModel:
    """Resolve a shipped model name or a directory, then load and verify it."""
    return load_model_dir(resolve_model(name_or_path), device=device, frozen_memory=frozen_memory)
