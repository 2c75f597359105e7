"""What a model folder must pass before transformers reads it, and what a loaded model must pass after.

transformers will run Python code that a folder names (``auto_map``), asking on stdin; it loads a pickled
``pytorch_model.bin`` (which can run code too); and it accepts architecture values that silently drop layers. Each
is refused here with one :class:`~asr_transfer.errors.ModelError` line naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import PARSE_ERRORS, ModelError

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")
# What Wav2Vec2ForCTC loads as what it is; another model_type would be read as a wav2vec2 and mean something else.
WAV2VEC2_MODEL_TYPES = ("wav2vec2",)
# Files transformers reads from a model folder. An ``auto_map`` in any of them points it at Python code in the folder,
# which it then offers to run (and asks on stdin): such a folder is refused before transformers sees it.
_HF_CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json",
                    "feature_extractor_config.json", "adapter_config.json")
# Sizes that must be whole numbers >= 1: 0 or -1 loads without complaint and silently drops layers or heads.
_POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "num_feat_extract_layers", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "vocab_size")
_POSITIVE_INT_LISTS = ("conv_dim", "conv_kernel", "conv_stride")
_PROBABILITIES = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout",
                  "layerdrop", "mask_time_prob", "mask_feature_prob")


def read_config_json(path: Path) -> dict:
    """A model's ``config.json`` as a dict; one :class:`ModelError` line when it is not a JSON object."""
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS) as exc:
        raise ModelError(f"config.json is not valid JSON ({str(exc).splitlines()[0][:120]})", path=path) from None
    if not isinstance(cfg, dict):
        raise ModelError(f"config.json must hold a JSON object, got {type(cfg).__name__}", path=path)
    return cfg


def check_architecture(cfg: dict, path) -> None:
    """Refuse sizes and probabilities no wav2vec2 can have (``num_hidden_layers = -1`` loads with no layers)."""
    def positive(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    for key in _POSITIVE_INTS:
        if key in cfg and not positive(cfg[key]):
            raise ModelError(f"{key} must be a whole number >= 1, got {cfg[key]!r}; fix or replace config.json",
                             path=path)
    lengths = set()
    for key in _POSITIVE_INT_LISTS:
        if key in cfg:
            value = cfg[key]
            if not isinstance(value, list) or not value or not all(positive(v) for v in value):
                raise ModelError(f"{key} must be a non-empty list of whole numbers >= 1, got {value!r}", path=path)
            lengths.add(len(value))
    if len(lengths) > 1:
        raise ModelError(f"{', '.join(_POSITIVE_INT_LISTS)} differ in length; fix or replace config.json", path=path)
    for key in _PROBABILITIES:
        value = cfg.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (number and 0 <= value <= 1):
            raise ModelError(f"{key} must be a probability within 0-1, got {value!r}", path=path)


def check_no_custom_code(folder: Path) -> None:
    """Refuse a folder whose configs ask transformers to import its own Python code (``auto_map``)."""
    for name in _HF_CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, *PARSE_ERRORS):
            data = None  # unreadable: the loader of that file reports it
        if isinstance(data, dict) and "auto_map" in data:
            raise ModelError("asks to run custom Python code from the model folder (auto_map), which asr-transfer "
                             "never does; use a plain wav2vec2 model folder", path=path)


def check_local_folder(folder: Path, allow_pickle: bool) -> None:
    if not (folder / "config.json").is_file():
        raise ModelError(
            "no config.json: not a model folder (save it with save_pretrained)", path=folder / "config.json"
        )
    check_no_custom_code(folder)
    cfg = read_config_json(folder / "config.json")
    model_type = cfg.get("model_type", "wav2vec2")
    if model_type not in WAV2VEC2_MODEL_TYPES:
        raise ModelError(f"model_type {model_type!r} is not a wav2vec2 model ({', '.join(WAV2VEC2_MODEL_TYPES)}); "
                         "asr-transfer loads wav2vec2 CTC models only", path=folder / "config.json")
    check_architecture(cfg, folder / "config.json")
    shards = sorted(folder.glob("model*.safetensors"))
    if not shards:
        pickled = [n for n in PICKLE_WEIGHTS if (folder / n).exists()] + [p.name for p in folder.glob("*.pt")]
        if not pickled:
            raise ModelError("no model.safetensors in the folder", path=folder / "model.safetensors")
        if not allow_pickle:
            raise ModelError(
                f"only pickle weights ({pickled[0]}), which can run code when loaded; convert them to safetensors "
                "or pass --allow-pickle if you trust the source", path=folder / pickled[0])
        return
    from safetensors import safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # SafetensorError for truncated/garbage files; OSError for unreadable ones
            raise ModelError(
                f"corrupt or truncated safetensors file ({str(exc).splitlines()[0]}); re-download or re-save it",
                path=shard,
            )


def non_finite_weights(model: nn.Module) -> list[str]:
    """Names of weight tensors holding NaN or inf (a diverged run saved as is, or a damaged file)."""
    return [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
