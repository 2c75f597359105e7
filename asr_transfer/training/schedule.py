"""Staged unfreezing: which parameter groups train in each stage, at which learning rate, and until when.

A stage names group patterns (see :func:`resolve_groups`) over the groups of
:func:`asr_transfer.model.groups.parameter_groups`. Everything here is pure (no training loop) and unit-tested:
the trainer calls :func:`apply_stage`, builds AdamW from :func:`optimizer_param_groups` and steps
:func:`make_scheduler` once per optimiser step.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

from ..errors import ConfigError
from ..model.groups import group_names, parameter_groups

if TYPE_CHECKING:  # torch is imported where a model is trained: the config (and every command) parses without it
    import torch
    from torch import nn

SCHEDULES = ("linear", "cosine", "constant")
# Far above any rate AdamW trains a wav2vec2 with; past ~1e37 torch's update overflows float32 and raises mid-run.
LR_MAX = 1e3
# Groups that sit below the transformer layers: under layer-wise decay they get the lowest layer's rate × decay.
_BELOW_LAYERS = ("feature_encoder", "feature_projection", "pos_conv")
_LAYER_SLICE = re.compile(r"^layers\.(-?\d*):(-?\d*)$")
_LAYER_INDEX = re.compile(r"^layers\.(-?\d+)$")


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule. Exactly one of ``steps``, ``epochs``, ``until_plateau`` ends it.

    ``lr`` is the peak rate of the top layer and the head; ``layer_decay`` multiplies it once per layer below the
    top. Warm-up is linear over ``warmup_steps`` (or ``warmup_ratio`` of the stage's steps), then ``schedule`` decays.
    """

    name: str
    train: tuple[str, ...]
    lr: float
    steps: int | None = None
    epochs: float | None = None
    until_plateau: bool = False
    patience: int = 3
    min_delta: float = 0.0
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    schedule: str = "linear"
    layer_decay: float = 1.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        where = f"stage {self.name!r}: "
        _check_type(self, "name", str, where)
        if not isinstance(self.train, tuple) or not all(isinstance(p, str) for p in self.train):
            raise ConfigError(where + 'train must be a list of group patterns, e.g. ["head"] or ["layers.-4:", "head"]')
        for name, kind in (("lr", float), ("min_delta", float), ("warmup_ratio", float), ("layer_decay", float),
                           ("weight_decay", float), ("patience", int), ("until_plateau", bool), ("schedule", str),
                           ("steps", int | None), ("epochs", float | None), ("max_steps", int | None),
                           ("warmup_steps", int | None)):
            _check_type(self, name, kind, where)
        checks = [
            (0 < self.lr <= LR_MAX, f"lr must be > 0 and <= {LR_MAX:g}, got {self.lr}"),
            (bool(self.train), "train lists no groups"),
            (self.steps is None or self.steps > 0, f"steps must be > 0, got {self.steps}"),
            (self.epochs is None or 0 < self.epochs < math.inf, f"epochs must be finite and > 0, got {self.epochs}"),
            (self.max_steps is None or self.max_steps > 0, f"max_steps must be > 0, got {self.max_steps}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (0 <= self.min_delta < math.inf, f"min_delta must be finite and >= 0, got {self.min_delta}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (
                self.warmup_steps is None or self.warmup_steps >= 0,
                f"warmup_steps must be >= 0, got {self.warmup_steps}",
            ),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1], got {self.layer_decay}"),
            (0 <= self.weight_decay < math.inf, f"weight_decay must be finite and >= 0, got {self.weight_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(where + message)
        ends = [n for n, on in (("steps", self.steps is not None), ("epochs", self.epochs is not None),
                                ("until_plateau", self.until_plateau)) if on]
        if not ends:
            raise ConfigError(where + "has no end: set steps, epochs or until_plateau")
        if len(ends) > 1:
            raise ConfigError(where + f"sets {' and '.join(ends)}: set one (cap a plateau stage with max_steps)")
        if self.steps is not None and self.warmup_steps is not None and self.warmup_steps > self.steps:
            raise ConfigError(where + f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Stage":
        """Build from a config mapping; unknown keys and wrong types are :class:`ConfigError`."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a stage must be a table/mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        name = d.get("name", "?")
        for key in d:
            if key not in known:
                raise ConfigError(f"stage {name!r}: unknown key {key!r}; valid keys: {', '.join(sorted(known))}")
        for key in ("name", "train", "lr"):
            if key not in d:
                raise ConfigError(f"stage {name!r}: missing {key!r}")
        values = dict(d)
        if isinstance(values["train"], list):
            values["train"] = tuple(values["train"])
        elif isinstance(values["train"], str):
            raise ConfigError(f'stage {name!r}: train must be a list, e.g. ["{values["train"]}"]')
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["train"] = list(self.train)
        return out


def _check_type(stage: Stage, name: str, kind, where: str) -> None:
    value = getattr(stage, name)
    optional = kind not in (int, float, str, bool)
    base = float if optional and float in kind.__args__ else int if optional else kind
    if optional and value is None:
        return
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        object.__setattr__(stage, name, float(value))  # an integer where a float is expected is fine (lr: 1)
        return
    ok = isinstance(value, base) and (base is bool or not isinstance(value, bool))
    if not ok:
        hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) and base is float else ""
        raise ConfigError(where + f"{name} must be {'an' if base is int else 'a'} {base.__name__}"
                          f"{' or null' if optional else ''}, got {value!r}{hint}")


# ---------------------------------------------------------------- groups

GroupsLike = Union["nn.Module", Mapping[str, Any], int]


def resolve_groups(
    model_or_groups: GroupsLike, patterns: Iterable[str], stable_layer_norm: bool | None = None
) -> list[str]:
    """Group names selected by ``patterns``, bottom to top, without duplicates.

    ``model_or_groups`` is a model, the dict of :func:`parameter_groups`, or a layer count. Patterns: a group name
    (``head``, ``feature_projection``, ``pos_conv``, ``feature_encoder``, ``adapters``, ``encoder_norm``,
    ``layers.2``), ``layers`` (all), or a Python slice ``layers.a:b`` (``layers.-4:`` is the top four).

    ``encoder_norm`` travels with the layer it touches: any layer pattern that selects layer 0 of a post-LN model
    (base-960h: the norm sits below layer 0) or the top layer of a stable-layer-norm model (the norm sits above it)
    also selects ``encoder_norm``; so does ``layers``. It can also be named alone.
    """
    if isinstance(model_or_groups, int):
        num_layers = model_or_groups
    elif isinstance(model_or_groups, Mapping):
        num_layers = sum(1 for n in model_or_groups if n.startswith("layers."))
    else:  # a model
        num_layers = model_or_groups.config.num_hidden_layers
        if stable_layer_norm is None:
            stable_layer_norm = bool(model_or_groups.config.do_stable_layer_norm)
    names = group_names(num_layers)
    adjacent = num_layers - 1 if stable_layer_norm else 0
    selected: set[str] = set()
    for pattern in patterns:
        layers = _layer_pattern(pattern, num_layers)
        if layers is None:
            if pattern not in names:
                raise ConfigError(
                    f"unknown group {pattern!r}; valid: {', '.join(n for n in names if not n.startswith('layers.'))}, "
                    f"layers, layers.N or layers.a:b (N in -{num_layers}..{num_layers - 1})"
                )
            selected.add(pattern)
            continue
        selected.update(f"layers.{i}" for i in layers)
        if adjacent in layers:
            selected.add("encoder_norm")
    return [n for n in names if n in selected]


def _layer_pattern(pattern: str, num_layers: int) -> list[int] | None:
    if pattern == "layers":
        return list(range(num_layers))
    m = _LAYER_INDEX.match(pattern)
    if m:
        i = int(m.group(1))
        if not -num_layers <= i < num_layers:
            raise ConfigError(f"group {pattern!r}: layer index {i} out of range for {num_layers} layers")
        return [i % num_layers]
    m = _LAYER_SLICE.match(pattern)
    if m:
        bounds = [int(x) if x else None for x in m.groups()]
        for b in bounds:
            if b is not None and not -num_layers <= b <= num_layers:
                raise ConfigError(f"group {pattern!r}: index {b} out of range for {num_layers} layers")
        picked = list(range(num_layers))[slice(*bounds)]
        if not picked:
            raise ConfigError(f"group {pattern!r} selects no layers (model has {num_layers})")
        return picked
    return None


def _stage_params(model: nn.Module, stage: Stage) -> tuple[dict[str, list], list[str]]:
    groups = parameter_groups(model)
    chosen = resolve_groups(model, stage.train)
    if "adapters" in chosen and not groups["adapters"]:
        raise ConfigError(f"stage {stage.name!r} trains 'adapters' but the model has none; set an adapter (lora)")
    return groups, chosen


def trainable_count(model: nn.Module, stage: Stage) -> int:
    """Number of parameters ``stage`` trains on ``model`` (no side effects)."""
    groups, chosen = _stage_params(model, stage)
    return sum(p.numel() for g in chosen for _, p in groups[g])


def apply_stage(model: nn.Module, stage: Stage) -> int:
    """Set ``requires_grad`` so exactly the stage's groups train; returns the trainable parameter count.

    The CNN feature encoder stays frozen (also for its input gradients, as ``freeze_feature_encoder`` does) unless
    the stage names ``feature_encoder``.
    """
    groups, chosen = _stage_params(model, stage)
    for name, params in groups.items():
        for _, p in params:
            p.requires_grad_(name in chosen)
    encoder = model.wav2vec2.feature_extractor
    if "feature_encoder" in chosen:
        encoder._requires_grad = True
    else:
        model.freeze_feature_encoder()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases, norm scales, masked_spec_embed and the weight-norm magnitude g ("original0") are not decayed.
    return param.ndim <= 1 or name.endswith(".bias") or name.endswith(".original0") or "norm." in name


def group_lr(group: str, stage: Stage, num_layers: int, stable_layer_norm: bool) -> float:
    """Peak lr of one group under layer-wise decay: top layer, head and adapters at ``lr``; layer i at
    ``lr * decay**(num_layers - 1 - i)``; groups below the layers at the lowest layer's rate × decay."""
    if group.startswith("layers."):
        return stage.lr * stage.layer_decay ** (num_layers - 1 - int(group.split(".")[1]))
    if group == "encoder_norm":
        return stage.lr * (1.0 if stable_layer_norm else stage.layer_decay ** (num_layers - 1))
    if group in _BELOW_LAYERS:
        return stage.lr * stage.layer_decay ** num_layers
    return stage.lr


def optimizer_param_groups(model: nn.Module, stage: Stage) -> list[dict[str, Any]]:
    """AdamW param groups for the stage: one or two per named group (decayed / not decayed).

    Each dict has ``params``, ``names`` (parameter names, for saving optimiser state by name), ``lr``,
    ``weight_decay`` and ``group``.
    """
    groups, chosen = _stage_params(model, stage)
    num_layers = model.config.num_hidden_layers
    stable = bool(model.config.do_stable_layer_norm)
    out = []
    for group in chosen:
        lr = group_lr(group, stage, num_layers, stable)
        for decayed in (True, False):
            members = [(n, p) for n, p in groups[group] if _no_decay(n, p) != decayed]
            if members:
                out.append({"params": [p for _, p in members], "names": [n for n, _ in members], "lr": lr,
                            "weight_decay": stage.weight_decay if decayed else 0.0, "group": group})
    return out


# ---------------------------------------------------------------- schedule


def stage_total_steps(stage: Stage, steps_per_epoch: int | None = None) -> int | None:
    """Optimiser steps the stage will run: ``steps``, ``ceil(epochs × steps_per_epoch)``, or ``max_steps`` (plateau)."""
    if stage.steps is not None:
        return stage.steps
    if stage.epochs is not None:
        if not steps_per_epoch:
            raise ConfigError(f"stage {stage.name!r}: epochs needs the number of steps per epoch")
        return max(1, math.ceil(stage.epochs * steps_per_epoch))
    return stage.max_steps


def warmup_steps(stage: Stage, total_steps: int | None) -> int:
    if stage.warmup_steps is not None:
        return stage.warmup_steps
    return int(round(stage.warmup_ratio * total_steps)) if total_steps else 0


def lr_multiplier(step: int, total_steps: int | None, warmup: int, schedule: str) -> float:
    """Factor on the peak lr for the optimiser step with 0-based index ``step``.

    Warm-up: ``(step + 1) / warmup`` so the first step already learns and step ``warmup - 1`` is at the peak.
    Then ``linear`` falls to 0 at ``total_steps``, ``cosine`` follows half a cosine, ``constant`` stays at 1.
    Without ``total_steps`` (an uncapped plateau stage) the rate stays at the peak after warm-up.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or not total_steps:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def make_scheduler(optimizer: torch.optim.Optimizer, stage: Stage, total_steps: int | None):
    """``LambdaLR`` applying :func:`lr_multiplier` to every param group's own peak lr; step it once per optimiser
    step."""
    import torch

    warmup = warmup_steps(stage, total_steps)
    schedule = stage.schedule
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, warmup, schedule))


def validate_schedule(stages: Sequence[Stage], num_layers: int, has_eval: bool = True,
                      stable_layer_norm: bool = False) -> None:
    """Raise :class:`ConfigError` for a schedule that cannot run (checked before any training starts)."""
    if not stages:
        raise ConfigError("the schedule has no stages; add at least one (e.g. train head only)")
    seen: set[str] = set()
    for stage in stages:
        if not isinstance(stage, Stage):
            raise ConfigError(f"expected a Stage, got {type(stage).__name__}")
        if stage.name in seen:
            raise ConfigError(f"duplicate stage name {stage.name!r}")
        seen.add(stage.name)
        if stage.until_plateau and not has_eval:
            raise ConfigError(f"stage {stage.name!r} runs until_plateau but there is no dev set to evaluate; "
                              "set a dev manifest or use steps/epochs")
        try:
            resolve_groups(num_layers, stage.train, stable_layer_norm=stable_layer_norm)
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name!r}: {exc}")
