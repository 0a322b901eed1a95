"""Classification heads: linear probes (softmax regression) on titans embeddings.

A head is a directory: `head.safetensors` (weight (C, F), bias (C,), feature mean and scale),
`head.json` (class names, the model and the embedding settings it was trained on: per, window,
step, pool; training/held-out metrics) and `README.md` (its card). Shipped heads live in the
repository's `models/heads/<name>`.

Labels file (`titans heads train LABELS.tsv`): tab-separated `path_or_record<TAB>label[<TAB>split]`,
an optional header line, paths relative to the labels file. `path#ID` picks one record of a
FASTA/FASTQ file or one object (by its "id") of a JSONL(.gz) file of {"id", "text"} documents;
a bare path takes every record of the file. Without a split column, a deterministic fifth of the
samples (by a hash of the row, and of the window for per-window heads) is held out.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from titans_cli.errors import TitansInputError

HEAD_FILE, HEAD_CONFIG, HEAD_CARD = "head.safetensors", "head.json", "README.md"
HEADS_DIR = Path(__file__).resolve().parents[2] / "models" / "heads"
FORMAT_VERSION = 1


@dataclass
class Head:
    classes: list[str]
    weight: np.ndarray  # (C, F)
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (F,) feature standardisation
    scale: np.ndarray  # (F,)
    settings: dict  # model, kind, per, window, step, pool
    metrics: dict = field(default_factory=dict)
    path: Path | None = None

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.weight.shape[1]:
            raise TitansInputError(
                f"head expects {self.weight.shape[1]} features, the embeddings have {features.shape[-1]} "
                "(was the head trained on another model or --pool?)"
            )
        logits = ((features - self.mean) / self.scale) @ self.weight.T.astype(np.float64) + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.probabilities(features).argmax(axis=1)]


# -----------------------------------------------------------------------------
# Training


def _fit(features: np.ndarray, labels: np.ndarray, n_classes: int, l2: float, class_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    sample_weight = torch.as_tensor(class_weight[labels], dtype=torch.float64)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x @ weight.T + bias
        loss = (torch.nn.functional.cross_entropy(logits, y, reduction="none") * sample_weight).sum() / sample_weight.sum()
        loss = loss + l2 * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().numpy(), bias.detach().numpy()


def train_head(features: np.ndarray, labels: list[str], settings: dict, l2: float | None = None,
               groups: np.ndarray | None = None) -> Head:
    """Softmax regression with balanced class weights; L2 strength chosen on a grouped
    validation fifth of the training samples unless given."""
    features = np.asarray(features, dtype=np.float64)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise TitansInputError(f"a head needs at least two classes, the labels have {len(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index[name] for name in labels])
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-8] = 1.0
    x = (features - mean) / scale
    counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
    class_weight = len(y) / (len(classes) * np.maximum(counts, 1))
    if l2 is None:
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        validation = np.array([_bucket(f"val:{g}") == 0 for g in groups])
        if validation.all() or not validation.any() or len(set(y[~validation])) < 2:
            l2 = 1e-3
        else:
            best = None
            for candidate in (1e-4, 1e-3, 1e-2, 1e-1):
                w, b = _fit(x[~validation], y[~validation], len(classes), candidate, class_weight)
                accuracy = float(np.mean((x[validation] @ w.T + b).argmax(axis=1) == y[validation]))
                if best is None or accuracy > best[0] + 1e-12:
                    best = (accuracy, candidate)
            l2 = best[1]
    weight, bias = _fit(x, y, len(classes), l2, class_weight)
    settings = dict(settings, l2=l2)
    return Head(classes, weight.astype(np.float32), bias.astype(np.float32), mean, scale, settings)


def _bucket(key: str, buckets: int = 5) -> int:
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % buckets


def accuracy_report(head: Head, features: np.ndarray, labels: list[str]) -> dict:
    predicted = head.predict(features)
    labels = list(labels)
    report = {"n": len(labels), "accuracy": float(np.mean([p == t for p, t in zip(predicted, labels)])) if labels else float("nan")}
    per_class = {}
    for name in sorted(set(labels)):
        members = [i for i, t in enumerate(labels) if t == name]
        per_class[name] = {"n": len(members), "accuracy": float(np.mean([predicted[i] == name for i in members]))}
    report["per_class"] = per_class
    return report


# -----------------------------------------------------------------------------
# Files


def save_head(head: Head, directory, card: str | None = None) -> Path:
    from safetensors.numpy import save_file

    from titans_cli.io.atomic import atomic_output, atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "weight": np.ascontiguousarray(head.weight, dtype=np.float32),
        "bias": np.ascontiguousarray(head.bias, dtype=np.float32),
        "mean": np.ascontiguousarray(head.mean, dtype=np.float64),
        "scale": np.ascontiguousarray(head.scale, dtype=np.float64),
    }
    with atomic_path(str(directory / HEAD_FILE)) as temporary:
        save_file(tensors, temporary)
    document = {"format_version": FORMAT_VERSION, "classes": head.classes, "settings": head.settings, "metrics": head.metrics}
    with atomic_output(str(directory / HEAD_CONFIG)) as handle:
        handle.write(json.dumps(document, indent=2) + "\n")
    if card is not None:
        with atomic_output(str(directory / HEAD_CARD)) as handle:
            handle.write(card)
    return directory


def head_search_path() -> list[Path]:
    extra = [Path(entry) / "heads" for entry in os.environ.get("TITANS_MODELS", "").split(os.pathsep) if entry]
    return extra + [HEADS_DIR]


def resolve_head(name_or_path) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    if "/" not in str(name_or_path):
        for folder in head_search_path():
            if (folder / str(name_or_path) / HEAD_CONFIG).is_file():
                return folder / str(name_or_path)
    known = ", ".join(name for name, _, _ in list_heads()) or "none installed"
    raise TitansInputError(f"head {name_or_path!r} not found: not a directory and not a known head (available: {known})")


def load_head(name_or_path) -> Head:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = resolve_head(name_or_path)
    config_path, weights_path = path / HEAD_CONFIG, path / HEAD_FILE
    if not config_path.is_file():
        raise TitansInputError(f"{config_path}: missing (not a head directory?)")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
        classes = [str(c) for c in document["classes"]]
        settings = dict(document["settings"])
    except (ValueError, KeyError, TypeError) as error:
        raise TitansInputError(f"{config_path}: not a valid head config ({error})") from None
    if document.get("format_version") != FORMAT_VERSION:
        raise TitansInputError(f"{config_path}: unsupported format_version {document.get('format_version')!r}")
    if not weights_path.is_file():
        raise TitansInputError(f"{weights_path}: missing")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise TitansInputError(f"{weights_path}: not a readable safetensors file ({error})") from None
    try:
        weight, bias, mean, scale = (tensors[k] for k in ("weight", "bias", "mean", "scale"))
    except KeyError as error:
        raise TitansInputError(f"{weights_path}: tensor {error} missing") from None
    if weight.shape != (len(classes), mean.shape[0]) or bias.shape != (len(classes),) or scale.shape != mean.shape:
        raise TitansInputError(f"{weights_path}: tensor shapes do not match {len(classes)} classes in {config_path.name}")
    return Head(classes, weight, bias, mean, scale, settings, document.get("metrics", {}), path)


def list_heads() -> list[tuple[str, Path, str]]:
    found, seen = [], set()
    for folder in head_search_path():
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.iterdir()):
            if candidate.name in seen or not (candidate / HEAD_CONFIG).is_file():
                continue
            seen.add(candidate.name)
            found.append((candidate.name, candidate, head_summary(candidate)))
    return found


def head_summary(path: Path) -> str:
    try:
        document = json.loads((path / HEAD_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable head.json"
    settings = document.get("settings", {})
    metrics = document.get("metrics", {})
    held_out = metrics.get("held_out", {}).get("accuracy")
    parts = [f"{len(document.get('classes', []))} classes ({', '.join(document.get('classes', [])[:6])})",
             f"model {settings.get('model', '?')}, per {settings.get('per', '?')}"]
    if held_out is not None:
        parts.append(f"held-out accuracy {held_out:.3f}")
    for evaluation in metrics.get("evaluations", [])[-1:]:
        parts.append(f"accuracy {evaluation['accuracy']:.3f} on {os.path.basename(str(evaluation.get('labels', 'eval')))}")
    return "; ".join(parts)


# -----------------------------------------------------------------------------
# Labels files


@dataclass
class LabelRow:
    line: int
    target: str  # as written
    path: str
    record: str | None  # FASTA record id or JSONL object id
    label: str
    split: str | None


def read_labels(path) -> list[LabelRow]:
    path = Path(path)
    if not path.is_file():
        raise TitansInputError(f"{path}: no such labels file")
    rows = []
    base = path.parent
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            lines = handle.read().splitlines()
        except UnicodeDecodeError as error:
            raise TitansInputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.rstrip("\r").split("\t")
        if number == 1 and len(cells) >= 2 and cells[1].strip().lower() == "label":
            continue  # header
        if len(cells) < 2 or not cells[0].strip() or not cells[1].strip():
            raise TitansInputError(f"{path}: line {number}: expected 'path_or_record<TAB>label[<TAB>split]'")
        target = cells[0].strip()
        file_part, _, record = target.partition("#")
        file_path = file_part if os.path.isabs(file_part) else str(base / file_part)
        if not os.path.exists(file_path):
            raise TitansInputError(f"{path}: line {number}: {file_part}: no such file")
        split = cells[2].strip().lower() if len(cells) > 2 and cells[2].strip() else None
        if split not in (None, "train", "test"):
            raise TitansInputError(f"{path}: line {number}: split must be 'train' or 'test', got {split!r}")
        rows.append(LabelRow(number, target, file_path, record or None, cells[1].strip(), split))
    if not rows:
        raise TitansInputError(f"{path}: no labelled rows")
    return rows


def is_jsonl(path: str) -> bool:
    name = path.lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def jsonl_document(path: str, record_id: str):
    """The text of one {"id", "text"} object of a JSONL(.gz) file, as a named binary stream."""
    documents = _jsonl_documents(path)
    if record_id not in documents:
        raise TitansInputError(f"{path}: no document with id {record_id!r}")
    stream = io.BytesIO(documents[record_id].encode("utf-8"))
    stream.name = f"{os.path.basename(path)}#{record_id}"
    return stream


@functools.lru_cache(maxsize=4)
def _jsonl_documents(path: str) -> dict[str, str]:
    """id -> text of every object of a JSONL(.gz) file (read once per labels file)."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    documents = {}
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except ValueError:
                raise TitansInputError(f"{path}: line {number}: not valid JSON") from None
            documents[str(document.get("id"))] = str(document.get("text", ""))
    return documents


def held_out(row: LabelRow, window: str | None) -> bool:
    """Whether a sample is held out: the split column, else a deterministic fifth by a hash of the
    row (per-record heads) or of the row and the window (`record:start`, per-window heads)."""
    if row.split is not None:
        return row.split == "test"
    key = row.target if window is None else f"{row.target}@{window}"
    return _bucket(key) == 0
