"""What a model folder holds besides its weights: the record (``asr_transfer.json``) and the processor.

:class:`ModelRecord` says which language, normaliser, source and head initialisation a folder's model has; the
processor (tokenizer + feature extractor) maps text to label ids and audio to input values. Both the loader
(:mod:`asr_transfer.model.load`) and the adapters (:mod:`asr_transfer.model.adapters`) read and write them. A
two-head model's record also lists its kept heads' folders (``heads/<lang>/``, :mod:`asr_transfer.model.heads`);
:func:`head_folder` finds the one ``transcribe --lang`` asks for. This module imports no torch.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import PARSE_ERRORS, ConfigError, ModelError, UserError

RECORD_FILE = "asr_transfer.json"
HEADS_DIR = "heads"  # inside a saved model folder: one folder per kept head (train.mix.head = own), named by language
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


@dataclass(frozen=True)
class ModelRecord:
    """What asr-transfer knows about a model folder, stored as ``asr_transfer.json`` beside the weights.

    ``normalizer`` names the text normaliser (e.g. ``"de-v1"``) that ``evaluate``/``transcribe`` must apply to
    references; ``vocab`` is the token→id map of the CTC head; ``adapter`` is None, ``"lora"`` or ``"mms"``.
    """

    lang: str
    normalizer: str
    source_model: str
    head_init: str
    vocab: dict[str, int]
    adapter: str | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    package_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | os.PathLike | None = None) -> "ModelRecord":
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("lang", "normalizer", "source_model", "head_init", "vocab") if n not in d]
        if missing:
            raise ModelError(f"record is missing {', '.join(missing)}", path=path)
        # Keys from a newer version are kept (in extra) rather than dropped, so a re-save does not lose them.
        known = {k: v for k, v in d.items() if k in names}
        unknown = {k: v for k, v in d.items() if k not in names}
        known["extra"] = {**dict(known.get("extra") or {}), **unknown}
        if not isinstance(known["vocab"], dict):
            raise ModelError("record 'vocab' must be a token→id object", path=path)
        return cls(**known)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ModelRecord":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, *PARSE_ERRORS) as exc:
            raise ModelError(f"cannot read the record ({exc}); re-save the model or delete the file", path=path)
        if not isinstance(d, dict):
            raise ModelError("record must be a JSON object", path=path)
        return cls.from_dict(d, path=path)


def make_processor(vocab: dict[str, int], feat_extract_norm: str = "group", sample_rate: int = 16000):
    """A ``Wav2Vec2Processor`` for a character vocabulary (must hold ``<pad>``, ``<unk>`` and ``|``).

    ``return_attention_mask`` follows the model: True for ``feat_extract_norm="layer"`` models; False for
    ``"group"`` models such as base-960h, which were trained on zero-padded batches without a mask.
    An all-upper-case vocabulary (base-960h) gets ``do_lower_case=True`` so lower-case text encodes to it.
    """
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    for token in ("<pad>", "<unk>", "|"):
        if token not in vocab:
            raise ConfigError(f"vocabulary has no {token!r} token; build it with `asr-transfer vocab`")
    letters = [t for t in vocab if len(t) == 1 and t.isalpha()]
    upper = bool(letters) and all(t.isupper() for t in letters)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|",
            bos_token="<s>" if "<s>" in vocab else None, eos_token="</s>" if "</s>" in vocab else None,
            do_lower_case=upper,
        )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=sample_rate, padding_value=0.0, do_normalize=True,
        return_attention_mask=feat_extract_norm == "layer",
    )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def processor_vocab(processor) -> dict[str, int]:
    """The tokenizer's own token→id map (vocab.json), without tokens added later."""
    tokenizer = processor.tokenizer
    return dict(getattr(tokenizer, "encoder", None) or tokenizer.get_vocab())


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

    A folder without ``asr_transfer.json`` (or a hub id) counts as English, as :func:`.load.load_model` reads it.
    """
    if lang is None:
        return model_dir
    folder = Path(model_dir)
    record_file = folder / RECORD_FILE
    record = ModelRecord.read(record_file) if record_file.is_file() else None
    own = record.lang if record is not None else "en"
    if lang == own:
        return model_dir
    kept = kept_head_path(folder, lang)
    if kept is not None:
        return kept
    have = ", ".join([own, *sorted((record.extra.get("heads") or {}) if record is not None else {})])
    raise UserError(f"--lang {lang}: this model has no head for {lang!r}; it has: {have}", path=folder)
