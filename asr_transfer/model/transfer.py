"""Preparing a model for transfer: source model → target vocabulary → head swap (or from-scratch control) → adapters.

This is the "model" step of training, kept apart from the loop so that ``baseline`` (zero-shot) and the from-scratch
control reuse exactly what ``train`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config import AugmentArgs, ModelArgs
from ..errors import UserError
from ..manifest import read_manifest
from ..text import get_normalizer
from ..vocab import build_vocab, load_vocab
from .adapters import add_adapters, merge_adapters, save_adapter
from .checks import check_architecture
from .head import swap_head
from .heads import head_model, keep_source_head, kept_heads, without_kept_heads
from .load import load_model, save_model
from .record import HEADS_DIR, ModelRecord, kept_head_path, make_processor


@dataclass
class PreparedModel:
    model: torch.nn.Module  # Wav2Vec2ForCTC (possibly with adapters), on CPU, train-ready
    processor: object
    vocab: dict[str, int]  # target token -> id
    source_vocab: dict[str, int]
    head_report: dict
    source: str
    kept_vocabs: dict[str, dict[str, int]] = field(default_factory=dict)  # kept head's language → its vocabulary


def target_vocab_for(args: ModelArgs, train_manifest: str | Path) -> dict[str, int]:
    """The target vocabulary: ``args.vocab`` if given, else built from the train manifest's normalised text."""

    if args.vocab:
        return dict(load_vocab(args.vocab))
    texts = [u.text for u in read_manifest(train_manifest)]
    if not texts:
        raise UserError("train manifest has no utterances", path=train_manifest)
    return dict(build_vocab(texts, args.lang))


def prepare_model(args: ModelArgs, augment: AugmentArgs, train_manifest: str | Path, seed: int = 0,
                  keep_head: str | None = None) -> PreparedModel:
    """Load ``args.source``, swap its CTC head for the target vocabulary and apply dropout/adapter settings.

    ``keep_head`` (a language, ``train.mix.head = own``): keep the source head, its rows and its vocabulary, beside the
    new one as ``model.kept_heads[keep_head]`` (:mod:`asr_transfer.model.heads`). A source that is itself a two-head
    model (self-training continues from the adapted one) passes on its kept head from ``heads/<keep_head>/``.
    """

    vocab = target_vocab_for(args, train_manifest)
    loaded = None
    if args.init_config:
        model, source_vocab = _random_model(args, vocab, seed)
    else:
        loaded = load_model(args.source, device="cpu", allow_pickle=args.allow_pickle)
        model = loaded.model
        source_vocab = {tok: i for i, tok in enumerate(loaded.vocab)}
    if args.from_scratch:
        # The control: the same architecture, every weight random, same data and budget.
        from transformers import Wav2Vec2ForCTC

        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(model.config)
    kept_vocabs = {}
    if keep_head is not None:
        kept_vocabs[keep_head] = _keep_head(model, args, loaded, source_vocab, keep_head)
    mode = "random" if args.from_scratch else args.head_init
    report = swap_head(model, source_vocab, vocab, mode=mode, lang=args.lang, base_letters=args.base_letters, seed=seed)
    if augment.dropout is not None:
        _set_dropout(model, augment.dropout)
    model.config.layerdrop = 0.0  # LayerDrop is applied by asr_transfer.model.forward, on trainable layers only
    if args.adapter != "none":
        add_adapters(model, mode=args.adapter, r=args.lora_r, alpha=args.lora_alpha)
    processor = make_processor(vocab, feat_extract_norm=model.config.feat_extract_norm)
    model.train()
    return PreparedModel(model, processor, vocab, source_vocab, report.to_dict(), str(args.init_config or args.source),
                         kept_vocabs)


def _random_model(args: ModelArgs, vocab: dict[str, int], seed: int):
    """A randomly initialised ``Wav2Vec2ForCTC`` from ``args.init_config`` whose head already fits ``vocab``."""

    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    path = Path(args.init_config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise UserError(f"must hold a JSON object (a Wav2Vec2Config), got {type(data).__name__}", path=path)
        check_architecture(data, path)
        config = Wav2Vec2Config(**{**data, "vocab_size": len(vocab), "pad_token_id": vocab["<pad>"]})
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise UserError(f"cannot read the Wav2Vec2Config ({exc})", path=path) from None
    if args.head_init != "keep" or not args.vocab:
        raise UserError("model.init_config needs model.vocab (a vocab.json) and model.head_init = keep", path=path)
    torch.manual_seed(seed)
    return Wav2Vec2ForCTC(config), dict(vocab)


def _set_dropout(model: torch.nn.Module, p: float) -> None:
    for key in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout"):
        setattr(model.config, key, p)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p


def trained_record(config, source: str, normalizer_name: str, vocab: dict[str, int], step: int) -> ModelRecord:
    """The ``asr_transfer.json`` of a model that ``config`` trained from ``source`` for ``step`` steps."""
    model = config.model
    return ModelRecord(lang=model.lang, normalizer=normalizer_name, source_model=source,
                       head_init="scratch" if model.from_scratch else model.head_init, vocab=vocab,
                       adapter=None if model.adapter == "none" else model.adapter,
                       extra={"train_manifest": str(config.data.train_manifest), "step": step})


def save_trained(out_dir: Path, model: torch.nn.Module, processor, record, card: dict, config,
                 kept_vocabs: dict[str, dict[str, int]] | None = None) -> Path:
    """Save a trained model: adapter + head weights only when nothing else trained, else the whole (merged) model.

    A model with kept heads (``kept_vocabs``: language → vocabulary) is saved as the target folder plus one standard
    folder per kept head, ``heads/<lang>/`` (:mod:`asr_transfer.model.heads`), in one atomic write.
    """
    if kept_heads(model):
        return _save_with_heads(out_dir, model, processor, record, card, kept_vocabs or {})

    if config.model.adapter != "none":
        if all(p in ("adapters", "head") for st in config.stages for p in st.train):
            # Only adapter + head weights changed: save those (a few MB); load_model(base, adapter=DIR) restores them.

            return save_adapter(out_dir, model, record, processor)
        # Base weights trained too: fold LoRA into a copy and save the whole model.
        import copy


        model = merge_adapters(copy.deepcopy(model))
    return save_model(out_dir, model, processor, record, card)


def _save_with_heads(out_dir: Path, model: torch.nn.Module, processor, record: ModelRecord, card: dict,
                     kept_vocabs: dict[str, dict[str, int]]) -> Path:
    """The target folder (without the kept heads' weights) and ``heads/<lang>/`` per kept head."""
    heads = {}
    for lang in kept_heads(model):
        vocab = kept_vocabs[lang]
        head_record = ModelRecord(lang=lang, normalizer=get_normalizer(lang).name, source_model=record.source_model,
                                  head_init="kept", vocab=vocab,
                                  extra={**record.extra, "kept_head_of": record.lang})
        heads[lang] = (head_model(model, lang, vocab), make_processor(vocab, model.config.feat_extract_norm),
                       head_record, {**card, "head": f"the source model's CTC head ({lang}), kept beside the "
                                                    f"{record.lang} head and trained on replay utterances; the "
                                                    f"encoder is the {record.lang} model's (../../)"})
    record = replace(record, extra={**record.extra, "heads": {lang: f"{HEADS_DIR}/{lang}" for lang in heads}})
    with without_kept_heads(model):
        return save_model(out_dir, model, processor, record, card, heads=heads)


def _keep_head(model: torch.nn.Module, args: ModelArgs, loaded, source_vocab: dict[str, int], lang: str
               ) -> dict[str, int]:
    """Put the source's ``lang`` head on ``model`` as a kept head (before the head swap); returns its vocabulary."""
    if loaded.lang == lang:
        keep_source_head(model, lang)
        return dict(source_vocab)
    folder = kept_head_path(loaded.path, lang)
    if folder is None:
        raise UserError(f"train.mix.head = own keeps the source model's {lang} head, but this {loaded.lang} model has "
                        f"none (no heads/{lang}/); use a {lang} source or train.mix.head = shared", path=args.source)
    kept = load_model(folder, device="cpu", allow_pickle=args.allow_pickle)
    keep_source_head(model, lang, kept.model.lm_head)
    return {tok: i for i, tok in enumerate(kept.vocab)}
