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
:func:`head_folder` (``transcribe --lang``) finds them.
"""
from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import UserError
from .head import set_vocab_config
from .record import RECORD_FILE, ModelRecord

KEPT_HEADS = "kept_heads"  # the attribute (and state_dict prefix) of the kept heads on a Wav2Vec2ForCTC
HEADS_DIR = "heads"  # inside a saved model folder: one folder per kept head, named by language
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


def kept_head_path(model_dir: str | os.PathLike | None, lang: str) -> Path | None:
    """``model_dir``'s kept ``lang`` head folder, or None when it is no folder or keeps no such head."""
    if model_dir is None or not (Path(model_dir) / RECORD_FILE).is_file():
        return None
    record = ModelRecord.read(Path(model_dir) / RECORD_FILE)
    sub = (record.extra.get("heads") or {}).get(lang) if record.lang != lang else None
    return Path(model_dir) / sub if sub and (Path(model_dir) / sub / "config.json").is_file() else None


def head_folder(model_dir: str | os.PathLike, lang: str | None) -> str | os.PathLike:
    """The folder holding ``model_dir``'s head for ``lang``: ``model_dir`` itself for its own language (or ``None``),
    ``heads/<lang>/`` for a kept head; anything else is a one-line :class:`UserError` naming the languages it has.

    A folder without ``asr_transfer.json`` (or a hub id) counts as English, as :func:`~.load.load_model` reads it.
    """
    if lang is None:
        return model_dir
    folder = Path(model_dir)
    record_file = folder / RECORD_FILE
    record = ModelRecord.read(record_file) if record_file.is_file() else None
    own = record.lang if record is not None else "en"
    if lang == own:
        return model_dir
    heads = dict((record.extra.get("heads") or {}) if record is not None else {})
    if lang in heads and (folder / heads[lang] / "config.json").is_file():
        return folder / heads[lang]
    have = ", ".join([own, *sorted(heads)])
    raise UserError(f"--lang {lang}: this model has no head for {lang!r}; it has: {have}", path=folder)
