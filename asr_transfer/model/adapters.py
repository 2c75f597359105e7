"""Parameter-efficient adapters on a ``Wav2Vec2ForCTC``: LoRA (via peft) or MMS-style bottleneck adapters.

Both start as the identity (LoRA's B and the MMS adapter's second projection are zero), so adding an adapter does not
change the source model's output. Their parameters form the ``adapters`` group of
:func:`asr_transfer.model.groups.parameter_groups`.

An adapter folder (:func:`save_adapter`) holds only the adapter and CTC head weights (a few MB), the processor and the
record; ``load_model(base, adapter=DIR)`` applies it to a fresh base model.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..files import atomic_folder_write
from .checks import check_no_custom_code
from .groups import parameter_groups
from .head import set_vocab_config
from .record import RECORD_FILE, ModelRecord, make_processor

ADAPTER_MODES = ("lora", "mms")
LORA_FILE = "adapter.safetensors"
MMS_FILE = "adapter.{lang}.safetensors"  # transformers' own name, so Wav2Vec2ForCTC.load_adapter(lang) reads it


@dataclass(frozen=True)
class AdapterOptions:
    """``r``/``alpha``/``dropout``/``target_modules`` are LoRA's; ``attn_dim`` is the MMS bottleneck width."""

    mode: str = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    attn_dim: int = 16
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


def adapter_options(model: nn.Module) -> AdapterOptions | None:
    """The options :func:`add_adapters` used on this model, or None."""
    return getattr(model, "asr_transfer_adapter", None)


def add_adapters(model: nn.Module, mode: str = "lora", r: int = 8, alpha: int = 16,
                 target_modules: tuple[str, ...] = ("q_proj", "v_proj"), dropout: float = 0.0, attn_dim: int = 16,
                 seed: int = 0) -> AdapterOptions:
    """Add adapters in place and return their options (stored on the model for :func:`save_adapter`).

    ``lora``: peft LoRA on ``target_modules`` (any layer-norm placement). ``mms``: transformers' attention adapter
    layers (``config.adapter_attn_dim``), which exist only in stable-layer-norm encoders.
    """
    if mode not in ADAPTER_MODES:
        raise ConfigError(f"unknown adapter {mode!r}; use one of {', '.join(ADAPTER_MODES)}")
    if adapter_options(model) is not None:
        raise ConfigError("the model already has adapters")
    options = AdapterOptions(mode, int(r), int(alpha), float(dropout), tuple(target_modules), int(attn_dim), int(seed))
    # A private RNG stream: adding an adapter must not shift the caller's random state (data order, dropout).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if mode == "lora":
            _add_lora(model, options)
        else:
            _add_mms(model, options)
    model.asr_transfer_adapter = options
    return options


def _add_lora(model: nn.Module, options: AdapterOptions) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    if options.r < 1:
        raise ConfigError(f"LoRA rank r must be >= 1, got {options.r}")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    unknown = [t for t in options.target_modules if t not in names]
    if unknown:
        raise ConfigError(f"LoRA target module(s) {', '.join(unknown)} not in the model; try q_proj, k_proj, v_proj, "
                          "out_proj, intermediate_dense, output_dense")
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=list(options.target_modules), bias="none")
    # Wrapping in a PeftModel would rename every parameter; injecting keeps Wav2Vec2ForCTC and its names.
    inject_adapter_in_model(config, model)


def _add_mms(model: nn.Module, options: AdapterOptions) -> None:
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2AttnAdapterLayer

    config = model.config
    if not config.do_stable_layer_norm:
        raise ConfigError(
            "MMS adapters need a stable-layer-norm encoder (do_stable_layer_norm=true, e.g. MMS / XLS-R); "
            "this model is post-LN (like base-960h): use adapter 'lora'"
        )
    config.adapter_attn_dim = options.attn_dim
    weight = model.lm_head.weight
    for layer in model.wav2vec2.encoder.layers:
        adapter = Wav2Vec2AttnAdapterLayer(config).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            nn.init.normal_(adapter.linear_1.weight, std=config.initializer_range)
            nn.init.zeros_(adapter.linear_1.bias)
            nn.init.zeros_(adapter.linear_2.weight)  # identity at start: the residual branch adds 0
            nn.init.zeros_(adapter.linear_2.bias)
        layer.adapter_layer = adapter


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter and CTC head tensors by parameter name (contiguous CPU copies)."""
    groups = parameter_groups(model)
    return {n: p.detach().cpu().contiguous() for n, p in groups["adapters"] + groups["head"]}


def save_adapter(out_dir: str | os.PathLike, model: nn.Module, record: ModelRecord, processor=None) -> Path:
    """Write only adapter + head weights (safetensors), the processor and the record; atomic like ``save_model``.

    Stages that also trained base weights (``layers``...) need :func:`asr_transfer.model.load.save_model` instead.
    """
    from safetensors.torch import save_file

    options = adapter_options(model)
    if options is None:
        raise ModelError("the model has no adapters; use save_model")
    if processor is None:
        processor = make_processor(record.vocab, feat_extract_norm=model.config.feat_extract_norm)
    base = {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                  "intermediate_size", "do_stable_layer_norm")}
    record = replace(record, adapter=options.mode,
                     extra={**record.extra, "adapter": options.to_dict(), "base_config": base})
    filename = LORA_FILE if options.mode == "lora" else MMS_FILE.format(lang=record.lang)

    def write(tmp: Path) -> None:
        save_file(adapter_state_dict(model), str(tmp / filename), metadata={"format": "pt", "adapter": options.mode})
        processor.save_pretrained(tmp)
        (tmp / RECORD_FILE).write_text(
            json.dumps(record.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    return atomic_folder_write(out_dir, write)


def apply_saved_adapter(model: nn.Module, adapter_dir: str | os.PathLike):
    """Add the adapter saved in ``adapter_dir`` to ``model`` and load its weights; returns ``(processor, record)``."""
    from safetensors import safe_open
    from transformers import Wav2Vec2Processor

    folder = Path(adapter_dir)
    if not (folder / RECORD_FILE).is_file():
        raise ModelError(f"not an adapter folder (no {RECORD_FILE}); write it with save_adapter", path=folder)
    check_no_custom_code(folder)
    record = ModelRecord.read(folder / RECORD_FILE)
    spec = record.extra.get("adapter")
    if record.adapter not in ADAPTER_MODES or not isinstance(spec, dict):
        raise ModelError("record names no adapter; load this folder as a model instead", path=folder / RECORD_FILE)
    for key, value in (record.extra.get("base_config") or {}).items():
        if getattr(model.config, key, None) != value:
            raise ModelError(f"adapter was trained on a base with {key}={value}, this base has "
                             f"{getattr(model.config, key, None)}; pass the base it was trained on", path=folder)
    options = AdapterOptions(**{**spec, "target_modules": tuple(spec.get("target_modules", ()))})
    weights = folder / (LORA_FILE if options.mode == "lora" else MMS_FILE.format(lang=record.lang))
    try:
        with safe_open(str(weights), framework="pt") as handle:
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:
        raise ModelError(
            f"cannot read adapter weights ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            path=weights,
        )
    if "lm_head.weight" not in state:
        raise ModelError("adapter file has no lm_head weights", path=weights)
    add_adapters(model, **{k: v for k, v in options.to_dict().items() if k != "target_modules"},
                 target_modules=options.target_modules)
    head = state["lm_head.weight"]
    if head.shape != model.lm_head.weight.shape:
        model.lm_head = nn.Linear(head.shape[1], head.shape[0], device=model.lm_head.weight.device,
                                  dtype=model.lm_head.weight.dtype)
    expected = set(adapter_state_dict(model))
    if set(state) != expected:
        diff = sorted(set(state) ^ expected)
        raise ModelError(f"adapter weights do not match the model ({', '.join(diff[:3])}...)", path=weights)
    if options.mode == "mms":
        # transformers' own loader; it reads adapter.<lang>.safetensors from config._name_or_path.
        name_or_path = model.config._name_or_path
        model.config._name_or_path = str(folder)
        try:
            model.load_adapter(record.lang, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the MMS adapter ({str(exc).splitlines()[0]})", path=weights)
        finally:
            model.config._name_or_path = name_or_path
    else:
        with torch.no_grad():
            model.load_state_dict(state, strict=False)
    set_vocab_config(model.config, record.vocab)
    try:
        processor = Wav2Vec2Processor.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception:
        processor = make_processor(record.vocab, feat_extract_norm=model.config.feat_extract_norm)
    return processor, record


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold LoRA weights into the base linears (exact up to float rounding) so ``save_model`` can write the model.

    MMS adapters are non-linear and stay as layers; ``config.adapter_attn_dim`` lets transformers rebuild them.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if adapter_options(model) is not None and adapter_options(model).mode == "lora":
        del model.asr_transfer_adapter
    return model
