"""The Titans language model: config and presets, tokenizers, blocks, the LM, model directories."""

from titans_cli.model.config import PRESETS, ModelConfig, preset, resolve_config
from titans_cli.model.files import LoadedModel, list_models, load_model, load_model_dir, resolve_model, save_model_dir
from titans_cli.model.lm import ModelState, StepOutput, TitansLM, bits_per_token
from titans_cli.model.tokenizers import BPETokenizer, DNATokenizer, make_tokenizer, train_bpe

__all__ = [
    "PRESETS", "ModelConfig", "preset", "resolve_config",
    "LoadedModel", "list_models", "load_model", "load_model_dir", "resolve_model", "save_model_dir",
    "ModelState", "StepOutput", "TitansLM", "bits_per_token",
    "BPETokenizer", "DNATokenizer", "make_tokenizer", "train_bpe",
]
