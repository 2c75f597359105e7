"""Named parameter groups of a ``Wav2Vec2ForCTC``: what a stage of the unfreezing schedule can name.

``feature_encoder`` (the CNN), ``feature_projection`` (with ``masked_spec_embed``), ``pos_conv``, ``encoder_norm``,
``layers.N`` for each transformer layer, ``head`` (``lm_head`` and any kept source head) and ``adapters`` (LoRA or
MMS adapter weights).
Every parameter belongs to exactly one group.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:  # annotations only: the training schedule, and so the config, parse without torch
    from torch import nn

GROUP_ORDER = ("feature_encoder", "feature_projection", "pos_conv", "encoder_norm")


def _group_of(name: str) -> str:
    if ".lora_" in name or ".adapter_layer." in name or name.startswith("wav2vec2.adapter."):
        return "adapters"
    if name.startswith("lm_head.") or name.startswith("kept_heads."):  # kept heads (model/heads.py) train with it
        return "head"
    if name.startswith("wav2vec2.feature_extractor."):
        return "feature_encoder"
    if name.startswith("wav2vec2.feature_projection.") or name == "wav2vec2.masked_spec_embed":
        return "feature_projection"
    if name.startswith("wav2vec2.encoder.pos_conv_embed."):
        return "pos_conv"
    if name.startswith("wav2vec2.encoder.layer_norm."):
        return "encoder_norm"
    m = re.match(r"wav2vec2\.encoder\.layers\.(\d+)\.", name)
    if m:
        return f"layers.{int(m.group(1))}"
    raise ModelError(f"parameter {name!r} belongs to no known group; only Wav2Vec2ForCTC models are supported")


def group_names(num_layers: int) -> list[str]:
    """All group names, bottom of the network to top."""
    return [*GROUP_ORDER, *(f"layers.{i}" for i in range(num_layers)), "head", "adapters"]


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every parameter of a ``Wav2Vec2ForCTC`` in exactly one named group (bottom to top; groups may be empty).

    ``feature_encoder`` (CNN), ``feature_projection`` (+ ``masked_spec_embed``), ``pos_conv``, ``encoder_norm`` (the
    encoder's top-level LayerNorm), ``layers.N``, ``head`` (``lm_head``), ``adapters`` (LoRA / MMS adapter layers).
    A ``config.add_adapter`` conv adapter (``wav2vec2.adapter``) also counts as ``adapters``.
    ``encoder_norm`` is its own group; stage patterns attach it to the layer it touches (see
    :func:`asr_transfer.training.schedule.resolve_groups`): below layer 0 for post-LN models (base-960h), above the top
    layer
    for stable-layer-norm models.
    """
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {n: [] for n in group_names(model.config.num_hidden_layers)}
    for name, param in model.named_parameters():
        group = _group_of(name)
        if group not in groups:
            raise ModelError(f"parameter {name!r} is in layer beyond config.num_hidden_layers")
        groups[group].append((name, param))
    return groups


def count_parameters(params) -> int:
    return sum(p.numel() for _, p in params)

