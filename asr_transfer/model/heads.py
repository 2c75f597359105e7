"""Kept heads (``train.mix.head = own``): the source model's CTC head kept beside the new target head.

The encoder is shared; each head is an ``nn.Linear(hidden, vocab)`` over the same top-layer features. The target
head is the model's own ``lm_head``; a kept head lives in ``model.kept_heads[lang]`` (an ``nn.ModuleDict``), so the
model's ``state_dict`` (checkpoints, exact resume), its parameter groups (the ``head`` group) and DDP all see it.

On disk a model with kept heads is the ordinary target folder — a standard ``Wav2Vec2ForCTC`` without the kept
heads' weights, what every command loads — plus one standard ``Wav2Vec2ForCTC`` folder per kept head::

    final/                  the target language (config.json, model.safetensors, vocab.json, asr_transfer.json …)
    final/heads/en/         the same encoder with the kept English head, its own vocab.json and asr_transfer.json

``transformers.pipeline("automatic-speech-recognition", model="final/heads/en")`` loads the second one as it is.
The target folder's ``asr_transfer.json`` lists the kept heads (``extra.heads``: language → folder), which is how
:func:`asr_transfer.model.record.head_folder` (``transcribe --lang``) finds them; that lookup lives in the torch-free
record module, so transcription on the ONNX engine can use it without importing torch.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .head import set_vocab_config
from .record import HEADS_DIR

KEPT_HEADS = "kept_heads"  # the attribute (and state_dict prefix) of the kept heads on a Wav2Vec2ForCTC
TARGET = ""  # the head name of the target head (``lm_head``) in per-utterance head lists


def keep_source_head(model: nn.Module, lang: str, head: nn.Linear | None = None) -> None:
    """Copy ``head`` (default ``model.lm_head``: the source head, before the swap) into ``model.kept_heads[lang]``."""
    heads = getattr(model, KEPT_HEADS, None) or nn.ModuleDict()
    heads[lang] = copy.deepcopy(model.lm_head if head is None else head)
    setattr(model, KEPT_HEADS, heads)


def kept_heads(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's kept heads by language (empty for a one-head model)."""
    heads = getattr(model, KEPT_HEADS, None)
    return dict(heads.items()) if heads is not None else {}


def logits_by_head(base: nn.Module, h: torch.Tensor, heads: Sequence[str]) -> dict[str, tuple[torch.Tensor,
                                                                                             torch.Tensor]]:
    """Each utterance's logits through its own head.

    Args:
        h: ``(batch, frames, hidden)``, the head segment's input after its LayerNorm and dropout.
        heads: one head name per batch row: :data:`TARGET` (``lm_head``) or a kept head's language.
    Returns:
        head name → ``(rows, logits)``: ``rows`` ``(n,)`` long batch indices, ``logits`` ``(n, frames, vocab_head)``.
    """
    kept = kept_heads(base)
    out = {}
    for name in dict.fromkeys(heads):
        rows = torch.tensor([i for i, n in enumerate(heads) if n == name], dtype=torch.long, device=h.device)
        head = base.lm_head if name == TARGET else kept[name]
        out[name] = (rows, head(h.index_select(0, rows)))
    return out


@contextmanager
def without_kept_heads(model: nn.Module) -> Iterator[dict[str, nn.Linear]]:
    """The model as a plain ``Wav2Vec2ForCTC`` for the duration (what ``save_pretrained`` of the target folder must
    see); yields the kept heads."""
    heads = model._modules.pop(KEPT_HEADS, None)
    try:
        yield dict(heads.items()) if heads is not None else {}
    finally:
        if heads is not None:
            model._modules[KEPT_HEADS] = heads


def head_model(model: nn.Module, lang: str, vocab: dict[str, int]) -> nn.Module:
    """A standalone ``Wav2Vec2ForCTC``: a copy of ``model``'s encoder with kept head ``lang`` as its ``lm_head``."""
    with without_kept_heads(model) as heads:
        out = copy.deepcopy(model)
    out.lm_head = copy.deepcopy(heads[lang])
    set_vocab_config(out.config, vocab)
    return out
