"""Typed run configuration: frozen dataclasses with help text, loaded from TOML/JSON plus ``--set key=value``.

Config never executes code: it is parsed as data and checked against the dataclass fields. An unknown key, a value
of the wrong type or an impossible value is a :class:`~asr_transfer.errors.ConfigError` naming the key. The resolved
config is written to the run folder (``config.resolved.json``) so that every run can be reproduced from it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import PARSE_ERRORS, ConfigError
from .text import LANGUAGES
from .training.schedule import Stage

# Training autocast precisions. Inference has its own set (inference.PRECISIONS): int8 is dynamic quantisation,
# which cannot train, and fp16 needs a GPU loss scaler that only training has.
TRAIN_PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def option(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A config field with its help text (shown by ``--help`` listings and the docs), as ``dataclasses.field``."""
    kw: dict[str, Any] = {"metadata": {"help": text}}
    if factory is not dataclasses.MISSING:
        kw["default_factory"] = factory
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return field(**kw)


@dataclass(frozen=True)
class ModelArgs:
    source: str = option("source model: a local folder in HF form or a hub id", "models/en-synth-small")
    lang: str = option("target language code (picks the normaliser and base-letter map)", "de")
    head_init: str = option("new CTC head: mapped (copy shared letters, seed new ones), random, keep", "mapped")
    vocab: str | None = option("target vocab.json; None builds it from the train manifest", None)
    base_letters: dict[str, str] | None = option("override the language's base-letter map, e.g. {ä = 'a'}", None)
    from_scratch: bool = option("re-initialise every weight (the from-scratch control: same architecture)", False)
    adapter: str = option("none, lora (peft) or mms (stable-layer-norm models only)", "none")
    lora_r: int = option("LoRA rank", 8)
    lora_alpha: int = option("LoRA alpha", 16)
    allow_pickle: bool = option("allow pickle-based .bin weights (pickle can run code; only for trusted files)", False)
    init_config: str | None = option(
        "build a randomly initialised model from this Wav2Vec2Config JSON instead of loading "
        "source (pre-training a source model; needs vocab and head_init = keep)",
        None,
    )

    def __post_init__(self):
        one_of("model.head_init", self.head_init, ("mapped", "random", "keep"))
        one_of("model.adapter", self.adapter, ("none", "lora", "mms"))
        if not self.source.strip() and not self.init_config:
            raise ConfigError("model.source is empty; give a model folder (e.g. models/en-synth-small)")
        _range("model.lora_r", self.lora_r, 1)
        _range("model.lora_alpha", self.lora_alpha, 1)


@dataclass(frozen=True)
class DataArgs:
    train_manifest: str = option("training manifest (JSONL)", "")
    dev_manifest: str | None = option("dev manifest for evaluation, plateau detection and best-checkpoint choice", None)
    max_batch_s: float = option("batch size as total padded audio seconds (length-bucketed batches)", 80.0)
    max_utt_s: float = option("skip (and count) training utterances longer than this", 20.0)
    min_utt_s: float = option("skip (and count) training utterances shorter than this", 0.1)
    max_dev_utts: int | None = option("evaluate on at most this many dev utterances (None: all)", 200)
    speed_perturb: tuple[float, ...] = option("speed factors drawn per utterance and epoch, e.g. [0.9, 1.0, 1.1]", ())
    noise_snr_db: tuple[float, ...] = option("additive white-noise SNR range [lo, hi] dB; empty: off", ())
    eq_db: float = option(
        "random equaliser: two peaking filters per utterance and epoch at log-uniform 150-6000 Hz with "
        "gains uniform in [-eq_db, +eq_db] dB, for timbre and formant-level variety (0: off)",
        0.0,
    )

    def __post_init__(self):
        # "not (x > 0)" rather than "x <= 0": NaN (TOML has nan) fails every comparison and must fail the check too.
        finite = all(math.isfinite(v) for v in (self.max_batch_s, self.max_utt_s, self.min_utt_s))
        if not (finite and self.max_batch_s > 0 and self.max_utt_s > 0 and self.min_utt_s >= 0):
            raise ConfigError("data.max_batch_s, data.max_utt_s must be finite and > 0 and data.min_utt_s >= 0")
        if self.max_utt_s > self.max_batch_s:
            raise ConfigError(f"data.max_utt_s ({self.max_utt_s}) exceeds data.max_batch_s ({self.max_batch_s})")
        if not all(math.isfinite(f) and f > 0 for f in self.speed_perturb):
            raise ConfigError("data.speed_perturb factors must be finite and > 0")
        if self.noise_snr_db and (len(self.noise_snr_db) != 2 or not all(map(math.isfinite, self.noise_snr_db))
                                  or not self.noise_snr_db[0] <= self.noise_snr_db[1]):
            raise ConfigError("data.noise_snr_db must be [lo, hi] (finite, lo <= hi) or empty")
        _range("data.max_dev_utts", self.max_dev_utts, 1)
        if not 0 <= self.eq_db <= 24:
            raise ConfigError(f"data.eq_db must be within 0-24 dB, got {self.eq_db}")


@dataclass(frozen=True)
class AugmentArgs:
    mask_time_prob: float = option("SpecAugment time-mask probability (applied at the cache boundary, see docs)", 0.05)
    mask_time_length: int = option("SpecAugment time-mask length in frames", 10)
    mask_feature_prob: float = option("SpecAugment feature-mask probability", 0.0)
    mask_feature_length: int = option("SpecAugment feature-mask length in channels", 10)
    layerdrop: float = option("LayerDrop probability for trainable transformer layers", 0.0)
    dropout: float | None = option("override hidden/attention/activation dropout of the model (None: keep)", None)

    def __post_init__(self):
        _range("augment.mask_time_prob", self.mask_time_prob, 0, 1)
        _range("augment.mask_feature_prob", self.mask_feature_prob, 0, 1)
        _range("augment.mask_time_length", self.mask_time_length, 1)
        _range("augment.mask_feature_length", self.mask_feature_length, 1)
        _range("augment.layerdrop", self.layerdrop, 0, 1, hi_open=True)
        _range("augment.dropout", self.dropout, 0, 1, hi_open=True)


@dataclass(frozen=True)
class MixArgs:
    """Replay: part of every epoch's training audio is source-language speech (joint training on both languages)."""

    manifest: str = option("source-language train manifest replayed during training (empty: no replay)", "")
    share: float = option(
        "share of the training audio seconds drawn from the replay manifest, per epoch (0: off); each epoch adds "
        "share/(1-share) x the target seconds of replay, and batches are length-bucketed over both", 0.0
    )
    lang: str = option("language of the replay manifest: its text goes through this language's normaliser", "en")
    head: str = option(
        "shared: replay text is labelled through the target head; own: the source model's CTC head (its rows and its "
        "vocabulary) is kept beside the new one, replay utterances train it, the encoder is shared, and the saved "
        "model gets a second folder heads/<train.mix.lang>/ (transcribe --lang picks the head)", "shared"
    )

    def __post_init__(self):
        _range("train.mix.share", self.share, 0, MAX_MIX_SHARE)
        if bool(self.manifest.strip()) != (self.share > 0):
            raise ConfigError("train.mix needs both a manifest and a share > 0 (or neither); got manifest "
                              f"{self.manifest!r}, share {self.share}")
        one_of("train.mix.lang", self.lang, LANGUAGES)
        one_of("train.mix.head", self.head, MIX_HEADS)
        if self.head == "own" and self.share <= 0:
            raise ConfigError("train.mix.head = own trains the kept source head on replay utterances; it needs "
                              "train.mix.share > 0 and train.mix.manifest")


@dataclass(frozen=True)
class L2spArgs:
    """L2-SP (Li et al. 2018): pull the source-initialised weights toward their starting point instead of toward 0."""

    alpha: float = option(
        "alpha/2 * ||w - w_source||^2 added to the loss over the trained weights that came from the source model "
        "(everything but the new head and adapters; 0: off)", 0.0
    )
    beta: float = option("beta/2 * ||w||^2 on the CTC head's weights (the paper's term for the new layer; 0: off)",
                         0.0)

    def __post_init__(self):
        _range("train.l2sp.alpha", self.alpha, 0)
        _range("train.l2sp.beta", self.beta, 0)

    @property
    def enabled(self) -> bool:
        return self.alpha > 0 or self.beta > 0


@dataclass(frozen=True)
class TrainArgs:
    output_dir: str = option("run folder", "runs/run")
    seed: int = option("seed for init, batching, augmentation and dropout", 0)
    grad_accum: int = option("micro-batches per optimiser step", 1)
    clip_norm: float = option("gradient-norm clip (0: off)", 1.0)
    precision: str = option("fp32, bf16 or fp16 (autocast); auto picks bf16 on GPUs that have it", "fp32")
    eval_every: int = option("evaluate on dev every N optimiser steps (and at each stage end)", 100)
    save_every: int = option("checkpoint every N optimiser steps (and at each stage end)", 200)
    keep_last: int = option("checkpoints kept besides best/", 2)
    selection_metric: str = option(
        "dev metric for best checkpoint, plateaus and early stopping: cer, wer or loss", "cer"
    )
    early_stop_patience: int | None = option("stop the whole run after N evaluations without improvement", None)
    cache: bool = option("cache the frozen prefix's outputs across epochs (bounded memory, spills to disk)", True)
    cache_max_mem_mb: int = option("memory budget of the frozen-prefix cache before it spills to disk", 2048)
    log_every: int = option("log train loss every N optimiser steps", 10)
    watchdog: str = option("on blank collapse: warn, lower-lr (halve) or rollback (to the best checkpoint)", "warn")
    watchdog_blank_share: float = option("blank-frame share on dev that counts as collapse", 0.995)
    tracking: str = option("tensorboard (default) or mlflow (also logs to a local MLflow store)", "tensorboard")
    num_threads: int | None = option("torch CPU threads (None: torch default)", None)
    processes: int = option(
        "local data-parallel processes (DDP over gloo on CPU); >1 starts them with torch.distributed.run, each with "
        "num_threads threads (default: the caller's threads shared among them). The global batch stays the same",
        1,
    )
    loader_threads: int = option(
        "threads that decode and augment a batch's audio in parallel (0: the training thread); "
        "worth it on a GPU machine with spare cores, where audio loading is the step's bottleneck",
        0,
    )
    mix: MixArgs = option("replay of source-language speech (train.mix.manifest, train.mix.share)", factory=MixArgs)
    l2sp: L2spArgs = option("L2-SP: a pull toward the source weights (train.l2sp.alpha, train.l2sp.beta)",
                            factory=L2spArgs)

    def __post_init__(self):
        one_of("train.precision", self.precision, TRAIN_PRECISIONS)
        one_of("train.selection_metric", self.selection_metric, ("cer", "wer", "loss"))
        one_of("train.watchdog", self.watchdog, ("warn", "lower-lr", "rollback"))
        one_of("train.tracking", self.tracking, ("tensorboard", "mlflow"))
        if self.grad_accum < 1 or self.eval_every < 1 or self.save_every < 1 or self.keep_last < 1:
            raise ConfigError("train.grad_accum, eval_every, save_every and keep_last must be >= 1")
        if not self.output_dir.strip():
            # An empty path is the current folder: the run would land there, over any run.json it holds.
            raise ConfigError("train.output_dir is empty; name the run folder, e.g. --set train.output_dir=runs/de-1")
        _range("train.loader_threads", self.loader_threads, 0)
        _range("train.seed", self.seed, 0, SEED_MAX)
        _range("train.log_every", self.log_every, 1)
        _range("train.num_threads", self.num_threads, 1)
        _range("train.processes", self.processes, 1, 64)
        _range("train.early_stop_patience", self.early_stop_patience, 1)
        _range("train.cache_max_mem_mb", self.cache_max_mem_mb, 0)
        _range("train.clip_norm", self.clip_norm, 0)
        _range("train.watchdog_blank_share", self.watchdog_blank_share, 0, 1)


def _default_stages() -> tuple[Stage, ...]:
    return (
        Stage(name="head", train=("head",), lr=1e-3, steps=300),
        Stage(name="top", train=("head", "layers.-4:"), lr=1e-4, until_plateau=True, patience=3, max_steps=2000),
        Stage(name="all", train=("head", "layers", "feature_projection"), lr=3e-5, layer_decay=0.9, epochs=10),
    )


@dataclass(frozen=True)
class TrainConfig:
    """Everything a transfer-training run needs. Sections: model, data, augment, train, stages."""

    model: ModelArgs = option("source model and head swap", factory=ModelArgs)
    data: DataArgs = option("manifests and batching", factory=DataArgs)
    augment: AugmentArgs = option("SpecAugment, LayerDrop, dropout", factory=AugmentArgs)
    train: TrainArgs = option("loop, checkpoints, logging", factory=TrainArgs)
    stages: tuple[Stage, ...] = option("staged unfreezing schedule, trained in order", factory=_default_stages)

    def __post_init__(self):
        if self.train.l2sp.alpha > 0 and (self.model.from_scratch or self.model.init_config):
            raise ConfigError("train.l2sp.alpha pulls weights toward the source model's, and a from-scratch or "
                              "init_config model has none; set train.l2sp.alpha = 0")
        if self.train.mix.head == "own":
            if self.model.from_scratch or self.model.init_config:
                raise ConfigError("train.mix.head = own keeps the source model's CTC head, and a from-scratch or "
                                  "init_config model has none; set train.mix.head = shared")
            if self.model.adapter != "none":
                raise ConfigError("train.mix.head = own is not supported with model.adapter (an adapter folder holds "
                                  "one head); set model.adapter = none or train.mix.head = shared")
            if self.train.mix.lang == self.model.lang:
                raise ConfigError(f"train.mix.head = own: the replay language ({self.train.mix.lang}) is the target "
                                  "language; a second head needs a second language (train.mix.lang)")


MIX_HEADS = ("shared", "own")  # train.mix.head: replay through the target head, or the source head kept beside it
# At 0.9 a tenth of the audio is target speech; more than that is pre-training the source again, not adapting it.
MAX_MIX_SHARE = 0.9
# numpy's legacy seeding takes 0 … 2**32 - 1; torch and numpy's Generator take that range too.
SEED_MAX = 2**32 - 1


def _range(key: str, value, lo: float, hi: float = math.inf, hi_open: bool = False) -> None:
    """Refuse a number outside ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``), NaN and inf included; ``None`` passes."""
    if value is None:
        return
    try:
        ok = math.isfinite(value) and lo <= value and (value < hi if hi_open else value <= hi)
    except OverflowError:  # an int of hundreds of digits has no float
        ok = False
    if not ok:
        upper = "" if hi == math.inf else (f" and < {hi}" if hi_open else f" and <= {hi}")
        raise ConfigError(f"{key} must be a finite number >= {lo}{upper}, got {value!r}")


def one_of(key: str, value: str, choices: Sequence[str]) -> None:
    """Raise a one-line :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


# ---------------------------------------------------------------------------------------------------------- parsing
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` (parsed TOML/JSON data) against the annotation ``tp`` and convert containers."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table/object, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table/object, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover - a bug in the dataclasses


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from plain data; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]} (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


def to_dict(obj) -> Any:
    """Plain, JSON-able data of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_value(text: str) -> Any:
    """An override's value as TOML (``1e-4``, ``true``, ``["a", "b"]``), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except PARSE_ERRORS:  # TOMLDecodeError, a 5,000-digit number, [[[[… nested past the recursion limit
        return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to nested plain data in place; list items are addressed by index (``stages.0.lr``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"--set {key}: no list item {part}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a table")
    last = parts[-1]
    if isinstance(node, list):
        if not last.lstrip("-").isdigit() or not -len(node) <= int(last) < len(node):
            raise ConfigError(f"--set {key}: no list item {last}")
        node[int(last)] = parse_value(raw)
    else:
        node[last] = parse_value(raw)


def read_config_data(path: str | Path) -> dict:
    """Parse a TOML or JSON config file into plain data (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path=path)
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except PARSE_ERRORS as exc:  # also numbers past 4,300 digits and nesting past the recursion limit
        raise ConfigError(f"cannot parse config ({str(exc).splitlines()[0][:200]})", path=path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"cannot parse config (the top level must be a table/object, got {type(data).__name__})",
                          path=path)
    return data


def load_config(cls, path: str | Path | None = None, overrides: Sequence[str] = (), base: dict | None = None):
    """``cls`` from ``base`` data, then the file at ``path``, then ``--set`` overrides (later wins)."""
    data: dict = json.loads(json.dumps(base)) if base else {}
    if path is not None:
        _deep_update(data, read_config_data(path))
    if "stages" not in data and any(o.strip().startswith("stages.") for o in overrides):
        data["stages"] = to_dict(_default_stages())
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        if path is not None and exc.path is None:
            raise ConfigError(str(exc), path=path) from None
        raise


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def save_config(config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(config), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def describe(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, help)`` rows for every field, for ``--help-config``."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            to_dict(f.default_factory()) if f.default_factory is not dataclasses.MISSING else "")
        rows.append((key, json.dumps(to_dict(default), ensure_ascii=False), f.metadata.get("help", "")))
    return rows
