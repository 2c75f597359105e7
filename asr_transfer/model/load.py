"""Loading and saving models: a local folder or a hub id in, an HF ``save_pretrained`` folder out.

A model folder is HF ``save_pretrained`` form (``config.json``, ``model.safetensors``, tokenizer + feature extractor
files) plus ``asr_transfer.json`` (:class:`~asr_transfer.model.record.ModelRecord`: language, normaliser, source,
head init) and a model card ``README.md``. Before transformers reads a folder it passes the checks in
:mod:`asr_transfer.model.checks` (no custom code, no pickles unless ``allow_pickle=True``, a possible architecture).

Adapters (LoRA / MMS-style) live in :mod:`asr_transfer.model.adapters`; ``load_model(base, adapter=DIR)`` applies one.
The CTC head swap is :mod:`asr_transfer.model.head`; named parameter groups are :mod:`asr_transfer.model.groups`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, UserError
from ..files import atomic_folder_write, sha256_files
from ..text import get_normalizer
from ..vocab import load_vocab
from .adapters import apply_saved_adapter
from .checks import check_local_folder, non_finite_weights
from .record import HEADS_DIR, RECORD_FILE, ModelRecord, make_processor, processor_vocab

# Hub ids are "name" or "owner/name"; anything else that is not a folder is a mistyped path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass
class LoadedModel:
    """A loaded CTC model: ``model`` (eval mode) maps ``(batch, samples)`` float audio to ``(batch, frames, vocab)``."""

    model: nn.Module
    processor: Any
    record: ModelRecord | None
    vocab: list[str]  # id -> token
    blank_id: int
    path: str
    lang: str
    normalizer_name: str


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` → cuda when available else cpu; ``"cuda"`` without CUDA is a :class:`UserError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")


# ---------------------------------------------------------------- processor


# ---------------------------------------------------------------- loading


def _offline() -> bool:
    # Read at call time: huggingface_hub caches the variable at import, too early for callers that set it later.
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _load_processor(source: str, folder: Path | None, config, local_only: bool):
    from transformers import Wav2Vec2Processor

    if folder is not None and not (folder / "vocab.json").is_file():
        raise ModelError(
            "no vocab.json (the CTC tokenizer); save the processor beside the model", path=folder / "vocab.json"
        )
    has_feature_config = folder is None or any(
        (folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json")
    )
    if not has_feature_config:
        # Trainer checkpoints often carry only the tokenizer: the feature extractor is fully determined by the config.

        return make_processor(load_vocab(folder / "vocab.json"), feat_extract_norm=config.feat_extract_norm)
    try:
        return Wav2Vec2Processor.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
    except Exception as exc:
        where = folder / "vocab.json" if folder is not None else source
        raise ModelError(
            f"cannot load the tokenizer/feature extractor "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            path=where,
        )


def _from_pretrained(source: str, allow_pickle: bool, local_only: bool):
    from transformers import Wav2Vec2ForCTC
    from transformers.utils import logging as hf_logging

    # trust_remote_code=False, said out loud: left unset, transformers asks on stdin whether to run a folder's code.
    kwargs = dict(local_files_only=local_only, dtype=torch.float32, output_loading_info=True)
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    # The library logs a 20-line load-report table for any key mismatch; load_model says what matters in one line.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            return Wav2Vec2ForCTC.from_pretrained(source, attn_implementation="sdpa", trust_remote_code=False, **kwargs)
        except (ValueError, ImportError) as exc:
            if "sdpa" not in str(exc).lower() and "attn" not in str(exc).lower():
                raise
        return Wav2Vec2ForCTC.from_pretrained(source, attn_implementation="eager", trust_remote_code=False, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def load_model(path_or_id: str | os.PathLike, device: str = "cpu", allow_pickle: bool = False,
               adapter: str | os.PathLike | None = None) -> LoadedModel:
    """Load a ``Wav2Vec2ForCTC`` + processor from a local folder or a hub id (cache only when offline).

    Never runs remote code. ``adapter`` names a folder written by :func:`asr_transfer.model.adapters.save_adapter`; its
    adapter and head weights are applied to this base model (an adapter folder passed as ``path_or_id`` loads onto
    the base named in its record). Every failure a user can fix is one ``ModelError`` line.
    """
    source = os.fspath(path_or_id)
    folder = Path(source).expanduser()
    local_only = _offline()
    if (
        folder.is_dir()
        and adapter is None
        and not (folder / "config.json").exists()
        and (folder / RECORD_FILE).is_file()
    ):
        record = ModelRecord.read(folder / RECORD_FILE)
        if record.adapter:  # an adapter folder on its own: load it onto the base it was trained on
            return load_model(record.source_model, device=device, allow_pickle=allow_pickle, adapter=folder)
    if folder.is_dir():
        check_local_folder(folder, allow_pickle)
        source, local_only = str(folder), True
    elif folder.exists():
        raise ModelError("is a file, expected a model folder", path=folder)
    else:
        folder = None
        if not _HUB_ID.match(source):
            raise ModelError(f"{source}: not a local folder; pass a model folder (e.g. models/en-synth-small)")
    try:
        model, info = _from_pretrained(source, allow_pickle, local_only)
    except UserError:
        raise
    except Exception as exc:
        if folder is not None:
            raise ModelError(
                f"cannot load the model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", path=folder
            )
        raise ModelError(
            f"{source}: not a local folder, not in the HF cache, and no network (or no such model on the hub); pass a "
            "local folder (e.g. models/en-synth-small) or set HF_HOME to a cache that has it / HF_HUB_OFFLINE=1"
            f" [{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}]")
    bad = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
    if bad:
        raise ModelError(f"weights do not match config.json (missing/mismatched: {', '.join(map(str, bad[:3]))}...)",
                         path=(folder / "model.safetensors") if folder else source)
    weights = (folder / "model.safetensors") if folder else source
    broken = non_finite_weights(model)
    if broken:
        # Such a model transcribes everything to "" without an error; nothing it outputs can be trusted.
        raise ModelError(f"{len(broken)} weight tensor(s) hold NaN/inf (e.g. {broken[0]}): the model is damaged or "
                         "was saved from a diverged run; use an earlier checkpoint or re-download it", path=weights)
    unused = sorted(info.get("unexpected_keys") or [])
    if unused:
        print(f"warning: {weights}: {len(unused)} weight(s) in the file are not used by config.json "
              f"(e.g. {unused[0]}); check that config.json belongs to these weights", file=sys.stderr)
    processor = _load_processor(source, folder, model.config, local_only)
    record = None
    if folder is not None and (folder / RECORD_FILE).is_file():
        record = ModelRecord.read(folder / RECORD_FILE)
    path = str(folder) if folder is not None else source
    if adapter is not None:
        processor, record = apply_saved_adapter(model, adapter)
        path = os.fspath(adapter)
    vocab = processor_vocab(processor)
    vocab_file = Path(path) / "vocab.json" if Path(path).is_dir() else "vocab.json"
    id_to_token = _id_to_token(vocab, vocab_file)
    out_features = model.lm_head.out_features
    if len(id_to_token) != out_features:
        raise ModelError(f"vocabulary has {len(id_to_token)} tokens but the CTC head has {out_features} outputs; "
                         "use the vocab.json the model was trained with", path=vocab_file)
    blank_id = model.config.pad_token_id
    if blank_id is None or not 0 <= blank_id < out_features:
        blank_id = vocab.get("<pad>", 0)
    lang = record.lang if record is not None else "en"
    if record is not None:
        normalizer_name = record.normalizer
    else:
        normalizer_name = get_normalizer(lang).name
    model.to(resolve_device(device)).eval()
    return LoadedModel(model=model, processor=processor, record=record, vocab=id_to_token, blank_id=int(blank_id),
                       path=path, lang=lang, normalizer_name=normalizer_name)


def model_fingerprint(path_or_id: str | os.PathLike) -> str:
    """Content hash of a model folder's files (a config file's bytes; a hub id's name), for the resume check.

    The folder's own files and its kept heads' (``heads/<lang>/``, which training from a two-head model reads) count;
    other subfolders do not (an ``onnx/`` export is made from the weights, it changes none). The model cards are left
    out: they are prose, and rewriting one changes no weight.
    """
    h = hashlib.sha256()
    path = Path(path_or_id)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        files += [p for p in (path / HEADS_DIR).rglob("*") if p.is_file()] if (path / HEADS_DIR).is_dir() else []
        files = sorted((p for p in files if p.name != "README.md"), key=lambda p: p.relative_to(path).as_posix())
    else:
        files = [path] if path.is_file() else []
    if not files:
        h.update(os.fspath(path_or_id).encode("utf-8"))
    for p in files:
        h.update((p.relative_to(path).as_posix() if path.is_dir() else p.name).encode("utf-8") + b"\0")
        sha256_files([p], h)
    return h.hexdigest()[:16]


def _id_to_token(vocab: dict[str, int], path) -> list[str]:
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise ModelError("token ids are not 0..N-1 without gaps", path=path)
    out = [""] * len(ids)
    for token, i in vocab.items():
        out[i] = token
    return out


# ---------------------------------------------------------------- saving
def save_model(out_dir: str | os.PathLike, model: nn.Module, processor, record: ModelRecord,
               card: dict[str, Any] | None = None, heads: dict[str, tuple] | None = None) -> Path:
    """Write an HF folder (safetensors + processor), ``asr_transfer.json`` and a model card ``README.md``, atomically.

    ``card`` maps section titles (e.g. ``"data"``, ``"stages"``, ``"metrics"``) to text, dicts, or lists of dicts.
    The folder loads with ``transformers.pipeline("automatic-speech-recognition", model=out_dir)``. ``heads`` (a
    kept head's language → ``(model, processor, record, card)``) are written as such folders in ``heads/<lang>/``
    inside it, in the same atomic write (:mod:`asr_transfer.model.heads`).
    """
    for m in [model, *(h[0] for h in (heads or {}).values())]:
        if any(".lora_" in n or ".base_layer." in n for n, _ in m.named_parameters()):
            raise ModelError("the model still has LoRA layers: merge them (adapters.merge_adapters) or use "
                             "save_adapter")

    def write(tmp: Path) -> None:
        _write_model(tmp, model, processor, record, card)
        for lang, (head_model, head_processor, head_record, head_card) in (heads or {}).items():
            sub = tmp / HEADS_DIR / lang
            sub.mkdir(parents=True)
            _write_model(sub, head_model, head_processor, head_record, head_card)

    return atomic_folder_write(out_dir, write)


def _write_model(folder: Path, model: nn.Module, processor, record: ModelRecord, card: dict[str, Any] | None) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    (folder / RECORD_FILE).write_text(json.dumps(record.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    (folder / "README.md").write_text(model_card(record, card), encoding="utf-8")


def _render(value: Any) -> str:
    if isinstance(value, dict):
        rows = "\n".join(f"| {k} | {_cell(v)} |" for k, v in value.items())
        return "| key | value |\n|---|---|\n" + rows
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        cols = list(dict.fromkeys(k for v in value for k in v))
        head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)
        return head + "\n" + "\n".join("| " + " | ".join(_cell(v.get(c, "")) for c in cols) + " |" for v in value)
    if isinstance(value, (list, tuple)):
        return "\n".join(f"- {_cell(v)}" for v in value)
    return str(value)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v).replace("|", "\\|").replace("\n", " ")


def model_card(record: ModelRecord, card: dict[str, Any] | None = None) -> str:
    """Markdown model card with HF front matter; sections from ``card`` follow the summary."""
    front = [
        "---",
        f"language: {record.lang}",
        "library_name: transformers",
        "pipeline_tag: automatic-speech-recognition",
        "tags: [wav2vec2, ctc, asr-transfer]",
    ]
    if record.source_model and not Path(record.source_model).is_absolute():
        front.append(f"base_model: {record.source_model}")
    front.append("---")
    body = [f"# wav2vec2 CTC ({record.lang})", "",
            f"Adapted from `{record.source_model}` with asr-transfer {record.package_version} on {record.created}.", "",
            _render({"language": record.lang, "text normaliser": record.normalizer, "head init": record.head_init,
                     "adapter": record.adapter or "none", "vocabulary": f"{len(record.vocab)} tokens"}), ""]
    for title, value in (card or {}).items():
        body += [f"## {str(title).replace('_', ' ').capitalize()}", "", _render(value), ""]
    body += ["## Use", "", "```python", "from asr_transfer import load_model, transcribe", "```",
             "References are compared after the normaliser above; other normalisation changes WER.", ""]
    return "\n".join(front + body)
