"""Where a training run stands, and the rules that end a stage or the whole run.

:class:`State` is saved as ``trainer.json`` in every checkpoint; together with the weights, optimiser, scheduler and
RNG states it is all an exact resume needs. The functions here are pure, so the stage-end rules are unit-testable.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from ..config import TrainConfig, to_dict
from .schedule import Stage

# Keys that change logging/checkpoint cadence but not what is learned… except eval_every, which can move the best
# checkpoint and plateau decisions; it is therefore part of the hash.
_HASH_EXEMPT = ("save_every", "keep_last", "log_every", "num_threads")


# What each fingerprint covers, for the one line that refuses a resume.
_FINGERPRINTED = {"train": "the train manifest", "dev": "the dev manifest", "vocab": "the target vocabulary",
                  "source": "the source model (its weights or config)", "replay": "the replay manifest (train.mix)"}
# Fingerprints that checkpoints from older versions lack: such a checkpoint still resumes.
_LATER_FINGERPRINTS = ("vocab", "source")


@dataclass
class State:
    """Where the run stands; saved as ``trainer.json`` in every checkpoint."""

    stage: int = 0
    stage_step: int = 0
    step: int = 0  # optimiser steps over the whole run
    epoch: int = 0  # epoch within the current stage
    batch: int = 0  # next batch index within the epoch
    best: float | None = None  # best selection metric over the run
    stage_best: float | None = None
    bad_evals: int = 0  # evaluations without improvement (stage plateau)
    run_bad_evals: int = 0  # ... for early stopping of the whole run
    nan_skipped: int = 0
    watchdog_events: int = 0
    done: bool = False
    opt_stage: int = -1  # the stage the saved optimiser/scheduler belong to
    stages: list = field(default_factory=list)  # [{name, start_step, end_step, trainable_params, boundary, ...}]
    config_hash: str = ""
    fingerprints: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=lambda: {"target": 0.0, "replay": 0.0})  # audio trained on, by source

    def replay_share(self) -> float | None:
        """The share of the audio seconds trained on so far that came from the replay manifest (train.mix)."""
        total = self.seconds["target"] + self.seconds["replay"]
        return round(self.seconds["replay"] / total, 4) if total else None

    @classmethod
    def from_saved(cls, saved: dict) -> "State":
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})


def config_hash(config: TrainConfig) -> str:
    """Hash of everything in the config that changes what a resumed run computes."""
    d = to_dict(config)
    d["train"] = {k: v for k, v in d["train"].items() if k not in _HASH_EXEMPT}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def stage_total_steps(stage: Stage, batches_per_epoch: int, grad_accum: int) -> int:
    """Optimiser steps the stage's schedule spans: its ``steps``, its ``epochs`` converted, or its plateau cap."""
    per_epoch = max(1, math.ceil(batches_per_epoch / grad_accum))
    if stage.steps is not None:
        return stage.steps
    if stage.epochs is not None:
        return max(1, math.ceil(stage.epochs * per_epoch))
    return stage.max_steps or 100 * per_epoch  # plateau-gated: the cap (or a generous horizon for the schedule)


@dataclass(frozen=True)
class Verdict:
    """What one dev evaluation means for the run."""

    new_best: bool  # best selection metric of the whole run so far: save best/
    plateaued: bool  # the stage is plateau-gated and ran out of patience: end the stage
    stop_run: bool  # early stopping: end the whole run


def record_evaluation(state: State, metric: float, stage: Stage, early_stop_patience: int | None) -> Verdict:
    """Update best/plateau counters in ``state`` with a dev ``metric`` (lower is better) and say what follows."""
    new_best = state.best is None or metric < state.best - 1e-12
    if new_best:
        state.best, state.run_bad_evals = metric, 0
    else:
        state.run_bad_evals += 1
    if state.stage_best is None or metric < state.stage_best - stage.min_delta:
        state.stage_best, state.bad_evals = metric, 0
    else:
        state.bad_evals += 1
    plateaued = stage.until_plateau and state.bad_evals >= stage.patience
    stop_run = bool(early_stop_patience) and state.run_bad_evals >= early_stop_patience
    return Verdict(new_best, plateaued, stop_run)


def end_stage(state: State, num_stages: int) -> None:
    """Close the current stage in ``state`` and point it at the next one (or mark the run done)."""
    state.stages[-1]["end_step"] = state.step
    state.stage += 1
    state.stage_step, state.epoch, state.batch = 0, 0, 0
    if state.stage >= num_stages:
        state.done = True


def resume_problems(parts: dict, state: State) -> list[str]:
    """Why resuming from checkpoint ``parts`` would not be exact for a run whose fresh ``state`` is given."""
    saved = parts["trainer"]
    problems = []
    if saved.get("config_hash") != state.config_hash:
        problems.append("the config changed since the checkpoint")
    saved_fps = saved.get("fingerprints", {})
    for k, v in state.fingerprints.items():
        if k in _LATER_FINGERPRINTS and k not in saved_fps:
            continue
        if saved_fps.get(k) != v:
            problems.append(f"{_FINGERPRINTED.get(k, f'the {k} manifest')} changed (fingerprint)")
    if "rng" not in parts or not parts["rng"][1].get("generator"):
        problems.append("RNG state missing")
    return problems


@dataclass
class Accum:
    """Gradient-accumulation bookkeeping between optimiser steps."""

    count: int = 0  # micro-batches since the last step
    loss_sum: float = 0.0  # summed per-utterance losses (for logging)
    n: int = 0  # utterances behind loss_sum
    bad: bool = False  # a micro-batch had a NaN/inf loss: skip the step

    def reset(self) -> None:
        self.count, self.loss_sum, self.n, self.bad = 0, 0.0, 0, False
