"""The data-efficiency curve: test CER/WER against minutes of target training audio, for several systems.

``curve(name, config, out_dir)`` runs on the recipe's stage runner (:mod:`asr_transfer.recipe`):

* stages 0–2 (data, validate, vocab + LM) run once, with the recipe's train split made at the largest size; every
  point trains on a nested prefix of that split (a seeded shuffle of its utterances, then the first ones up to the
  point's minutes), and every point is scored on the same test set, whose voices and sentences never occur in
  training (:mod:`asr_transfer.corpora.synth`, or Common Voice's own speaker-disjoint splits). The vocabulary and the
  LM are the same for every point (built from the largest train set, dev and test sentences excluded);
* stage 3 (baseline) gives the zero-shot line: the best zero-shot system (:func:`results.best_zero_shot`), no training;
* each trained (system, minutes) point is a training run folder ``<out>/curve/<system>-<minutes>min/`` with its own
  ``run.json``; its test evaluations are written below it (``eval/test-greedy``, ``eval/test-lm``) and, last,
  ``curve-point.json``. A rerun skips finished points, resumes a half-trained one from its last checkpoint and
  retrains a point only when its inputs changed.

Systems: ``transfer`` (mapped head, the recipe's schedule scaled to ``steps``), ``random-head`` (the same with
``model.head_init = random``), ``scratch`` (``model.from_scratch``: the same architecture with random weights, the
same data and number of optimiser steps, one stage training everything at the recipe's ``control.lr``: staged
freezing only handicaps random weights) and ``zero-shot`` (a flat line).

Scoring is the independent evaluation path (:func:`evaluation.evaluate`) on the recipe's test split, greedy and,
with ``lm.enabled`` and ``eval.beam``, beam + the recipe's LM; the LM weight and word bonus are tuned on dev per model
when ``eval.tune_lm`` is set (as in stage 5). Outputs under ``<out>/curve/``: ``report.html`` (self-contained),
``report.md`` (the table with 95% intervals), ``figures/curve.png`` and ``curve.json`` (every number).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import report_plots as plots
from .config import from_dict, option, to_dict
from .errors import ConfigError, UserError
from .evaluation import evaluate, result_line, tune_lm
from .files import atomic_write_json, read_json_or
from .inference import InferenceOptions, as_recognizer
from .manifest import fingerprint, read_manifest, write_manifest
from .recipe import RecipeConfig, RecipeRunner, config_digest
from .recipe_stages import from_scratch_changes, replay_changes, train_once, trained_model_dir
from .report import Document, write_page
from .results import best_zero_shot, load_evaluation
from .zeroshot import FOLDER as ZERO_SHOT_LM_FOLDER

SYSTEMS = ("transfer", "random-head", "scratch", "zero-shot")
TRAINED = SYSTEMS[:3]
LABELS = {"transfer": "transfer (mapped head)", "random-head": "transfer (random head)", "scratch": "from scratch",
          "zero-shot": "zero-shot"}
DEFAULT_MINUTES = (1.0, 5.0, 20.0)
FULL_MINUTES = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0)
# Optimiser steps per point by default (the demo's schedule has 480). Measured on de-synth on two CPU cores shared with
# other jobs: 120 steps took 1.5-4 min for a transfer point and 5.5-6.5 min for a from-scratch one (every layer on raw
# audio), 49 min for the default 9-point curve with its scoring.
DEFAULT_STEPS = 120
FOLDER = "curve"
POINT_RECORD = "curve-point.json"
# A synthetic split falls a few seconds short of its target minutes (whole utterances): tolerated at the top size.
SHORT_SPLIT_TOLERANCE = 0.05


@dataclass(frozen=True)
class CurveOptions:
    minutes: tuple[float, ...] = option("train sizes in minutes of audio: nested prefixes of the train split",
                                        DEFAULT_MINUTES)
    systems: tuple[str, ...] = option("systems: " + ", ".join(SYSTEMS), SYSTEMS)
    steps: int | None = option("optimiser steps per trained point: the recipe's stages scaled to this total (None: "
                               "the recipe's schedule as it is)", DEFAULT_STEPS)
    lm: bool = option("also score beam + the recipe's LM (with lm.enabled and eval.beam)", True)

    def __post_init__(self):
        if not self.minutes:
            raise ConfigError("curve.minutes needs at least one size")
        bad = [m for m in self.minutes if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0)]
        if bad:
            raise ConfigError(f"curve.minutes must be > 0, got {bad[0]}")
        if len(set(self.minutes)) != len(self.minutes):
            raise ConfigError(f"curve.minutes has a size twice: {list(self.minutes)}")
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown or not self.systems:
            raise ConfigError(f"curve.systems: unknown {unknown[0]!r}; use some of {', '.join(SYSTEMS)}" if unknown
                              else "curve.systems needs at least one system")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"curve.steps must be >= 1, got {self.steps}")


def curve_options(data: dict | CurveOptions | None = None, full: bool = False) -> CurveOptions:
    """Options from a dict (unknown keys are an error); ``full`` changes the defaults to the longer sweep."""
    if isinstance(data, CurveOptions):
        return data
    base = {"minutes": FULL_MINUTES, "steps": None} if full else {}
    return from_dict(CurveOptions, {**base, **(data or {})}, prefix="curve")


# ------------------------------------------------------------------------------------------------- data
def data_at_largest(config: RecipeConfig, minutes: float) -> RecipeConfig:
    """The recipe with its train split made at ``minutes`` (dev and test keep their own sizes)."""
    d = config.data
    if d.kind == "synth":
        return dataclasses.replace(config, data=dataclasses.replace(d, minutes=float(minutes)))
    return dataclasses.replace(config, data=dataclasses.replace(d, train_minutes=float(minutes)))


def nested_prefixes(train: Path, minutes, seed: int, out_dir: Path) -> dict[float, Path]:
    """``{minutes: manifest}``: the first utterances of one seeded shuffle of ``train`` up to each size.

    Shuffled first so that a small size does not take the first speaker of a corpus ordered by speaker; the same
    shuffle for every size, so each set holds every smaller one.
    """
    utts = read_manifest(train)
    order = np.random.default_rng(seed).permutation(len(utts))
    available = sum(u.duration for u in utts) / 60
    out = {}
    for m in sorted(minutes):
        if m > available * (1 + SHORT_SPLIT_TOLERANCE):
            raise UserError(f"the train split holds {available:.2f} min; the curve asks for {m:g}", path=train)
        kept, total = [], 0.0
        for i in order:
            if total >= m * 60:
                break
            kept.append(utts[i])
            total += utts[i].duration
        path = out_dir / f"train-{m:g}min.jsonl"
        new = write_manifest(path.with_suffix(".tmp"), kept)
        if not path.is_file() or path.read_bytes() != new.read_bytes():
            new.replace(path)  # rewritten only when it changed: its fingerprint is part of each point's inputs
        else:
            new.unlink()
        out[m] = path
    return out


# ------------------------------------------------------------------------------------------------- schedules
def scaled_stages(config: RecipeConfig, steps: int | None) -> list[dict]:
    """The recipe's train stages as dicts, with their steps scaled to ``steps`` in all (each stage at least 1)."""
    stages = [to_dict(s) for s in config.train_config("x", "x", "x", "run").stages]
    if steps is None:
        return stages
    unsized = [s["name"] for s in stages if s.get("steps") is None]
    if unsized:
        raise UserError(f"--steps scales step-counted stages; stage {unsized[0]!r} of the recipe's schedule ends by "
                        "epochs or a plateau: give it steps, or run the recipe's schedule as it is (--full)")
    if steps < len(stages):
        raise UserError(f"--steps {steps} is fewer than the schedule's {len(stages)} stages")
    planned = sum(s["steps"] for s in stages)
    scaled = [max(1, round(s["steps"] * steps / planned)) for s in stages]
    scaled[-1] = max(1, steps - sum(scaled[:-1]))
    return [{**s, "steps": n} for s, n in zip(stages, scaled)]


def scratch_stage(config: RecipeConfig, stages: list[dict]) -> dict:
    """One stage training every group of random weights for as many optimiser steps as the transfer schedule."""
    c = config.control
    steps = c.steps
    if steps is None:
        if any(s.get("steps") is None for s in stages):
            raise UserError("the scratch system needs a step count: the recipe's schedule ends a stage by epochs or "
                            "a plateau; set control.steps")
        steps = sum(s["steps"] for s in stages)
    return {"name": "scratch", "train": list(c.groups), "lr": c.lr, "steps": steps, "warmup_ratio": c.warmup_ratio}


def system_changes(r: RecipeRunner, system: str, stages: list[dict]) -> dict:
    """``--set``-style changes of the recipe's train table for one trained system."""
    if system == "scratch":
        return from_scratch_changes(r.source, scratch_stage(r.config, stages))
    return {"model.source": r.source, "model.head_init": "random" if system == "random-head" else "mapped",
            "stages": stages}


# ------------------------------------------------------------------------------------------------- points
def point_name(system: str, minutes: float) -> str:
    return f"{system}-{minutes:g}min"


def _scoring_inputs(r: RecipeRunner, options: CurveOptions) -> dict:
    cfg, e = r.config, r.config.eval
    lm = options.lm and cfg.lm.enabled and e.beam
    inputs = {"eval.model": e.model, "eval.max_utts": e.max_utts, "eval.precision": e.precision, "lm": lm}
    if lm:
        inputs.update({"eval.beam_size": e.beam_size, "eval.tune_lm": e.tune_lm})
        inputs.update({"eval.alphas": e.alphas, "eval.betas": e.betas} if e.tune_lm else
                      {"eval.lm_weight": e.lm_weight, "eval.word_score": e.word_score})
    return inputs


def run_point(r: RecipeRunner, system: str, minutes: float, train: Path, stages: list[dict],
              options: CurveOptions) -> dict:
    """Train (or reuse, or resume) one point and score it on test; returns its ``curve-point.json`` record."""
    cfg = r.config
    run_dir = r.path(FOLDER, point_name(system, minutes))
    label = f"{system} {minutes:g} min"
    changes = system_changes(r, system, stages)
    train_inputs = {"train": cfg.train_inputs(**{**changes, "model.source": ""}), "lang": cfg.lang,
                    "source": cfg.source, "source_weights": r.source_digest(), "deps": r.stage_inputs(4)["deps"],
                    "train_manifest": fingerprint(train)}
    inputs = {"train": config_digest(train_inputs), "score": _scoring_inputs(r, options)}
    digest = config_digest(inputs)
    done = read_json_or(run_dir / POINT_RECORD, {})
    if not r.force and done.get("hash") == digest and (run_dir / "run.json").is_file():
        r.log(f"{label}: done earlier; skipping")
        return done
    (run_dir / POINT_RECORD).unlink(missing_ok=True)
    config = cfg.train_config(train, r.manifest("dev"), r.path("lang", "vocab.json"), run_dir,
                              **changes, **replay_changes(r))
    summary = train_once(r, label, config, train_inputs)
    shutil.rmtree(run_dir / "eval", ignore_errors=True)  # scored with other settings, or half scored when killed
    scores = score_point(r, system, minutes, trained_model_dir(run_dir, cfg.eval.model), run_dir, options)
    record = {"hash": digest, "inputs": inputs, "system": system, "minutes": minutes,
              "train_minutes": summary.get("train_minutes"), "train_utterances": summary.get("train_utterances"),
              "steps": summary.get("steps"), "train_s": summary.get("wall_s"), "run": str(run_dir), **scores}
    atomic_write_json(run_dir / POINT_RECORD, record, default=str)
    return record


def score_point(r: RecipeRunner, system: str, minutes: float, model_dir: Path, run_dir: Path,
                options: CurveOptions) -> dict:
    """``{"greedy": rates, "lm": rates | None}`` of ``model_dir`` on test; rates hold wer/cer and their 95% CIs."""
    cfg, e = r.config, r.config.eval
    rec = as_recognizer(str(model_dir), InferenceOptions(device=e.device, precision=e.precision))
    common = dict(lang=cfg.lang, max_utts=e.max_utts, extra={"recipe": r.name, "system": system, "minutes": minutes})
    label = f"{LABELS[system]}, {minutes:g} min"
    s = evaluate(rec, r.manifest("test"), out_dir=run_dir / "eval" / "test-greedy", name=f"{label} (greedy)",
                 **common)
    r.log(result_line(s))
    out = {"greedy": _rates(s), "lm": None}
    if not _scoring_inputs(r, options)["lm"]:
        return out
    alpha, beta = e.lm_weight, e.word_score
    if e.tune_lm:
        tuned = tune_lm(rec, r.manifest("dev"), r.path("lm"), e.alphas, e.betas, out_dir=run_dir / "eval" / "dev-tune",
                        lang=cfg.lang, beam_size=e.beam_size)
        alpha, beta = tuned["best"]["lm_weight"], tuned["best"]["word_score"]
    s = evaluate(rec, r.manifest("test"), decoder="beam", lm_dir=r.path("lm"), beam_size=e.beam_size,
                 lm_weight=alpha, word_score=beta, out_dir=run_dir / "eval" / "test-lm", name=f"{label} + LM",
                 **common)
    r.log(result_line(s))
    out["lm"] = {**_rates(s), "lm_weight": alpha, "word_score": beta}
    return out


def _rates(summary: dict) -> dict:
    return {k: summary.get(k) for k in ("wer", "wer_ci95", "cer", "cer_ci95", "n_utterances")}


def zero_shot_line(r: RecipeRunner) -> dict | None:
    """The best zero-shot system of stage 3 (lowest test WER; no target audio used), or None without stage 3."""
    folders = [r.path("baseline", n) for n in ("raw", "zero-shot", ZERO_SHOT_LM_FOLDER)]
    evaluations = [load_evaluation(f) for f in folders if (f / "summary.json").is_file()]
    best = best_zero_shot(evaluations)
    if best is None:
        return None
    ev = next(e for e in evaluations if e.name == best)
    lm = (ev.summary.get("decoder") or {}).get("lm_dir") is not None
    return {"name": best, "folder": str(ev.folder), "decoder": "beam + LM" if lm else "greedy", **_rates(ev.summary)}


# ------------------------------------------------------------------------------------------------- the curve
def curve(name: str, config: RecipeConfig, out_dir: str | Path, options: CurveOptions | dict | None = None,
          cv_root: str | Path | None = None, force: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Train and score every (system, minutes) point of the recipe; write the plot, tables and page.

    Returns the ``curve.json`` record: ``points`` (one per trained system, size and decoder), ``zero_shot``,
    ``files``. ``force`` reruns the shared stages and retrains every point.
    """
    options = curve_options(options)
    started = time.perf_counter()
    config = data_at_largest(config, max(options.minutes))
    r = RecipeRunner(name, config, out_dir, cv_root=cv_root, force=force, progress=progress, log=log)
    want_zero_shot = "zero-shot" in options.systems and config.baseline.enabled
    if "zero-shot" in options.systems and not want_zero_shot:
        log("zero-shot: baseline.enabled is false in the recipe; no zero-shot line")
    r.run(0, 3 if want_zero_shot else 2)
    if force:  # every point retrains, once: the runner's force is spent on the shared stages
        shutil.rmtree(r.path(FOLDER), ignore_errors=True)
        r.force = False
    prefixes = nested_prefixes(r.manifest("train"), options.minutes, config.data.seed, r.path(FOLDER, "data"))
    stages = scaled_stages(config, options.steps)
    trained = [s for s in options.systems if s in TRAINED]
    todo = [(minutes, system) for minutes in sorted(options.minutes) for system in trained]
    points = []
    for i, (minutes, system) in enumerate(todo, start=1):
        log(f"point {i}/{len(todo)}: {LABELS[system]}, {minutes:g} min of training audio")
        points.append(run_point(r, system, minutes, prefixes[minutes], stages, options))
    zero_shot = zero_shot_line(r) if want_zero_shot else None
    record = {"recipe": name, "lang": config.lang, "source": config.source, "minutes": sorted(options.minutes),
              "systems": list(options.systems), "options": to_dict(options), "schedule": stages,
              "scratch_stage": scratch_stage(config, stages) if "scratch" in trained else None,
              "test": {"manifest": str(r.manifest("test")), **_split_minutes(r.manifest("test"))},
              "points": points, "zero_shot": zero_shot, "wall_s": round(time.perf_counter() - started, 1)}
    record["files"] = write_outputs(r.path(FOLDER), record)
    log(curve_table(record))
    return record


def _split_minutes(manifest: Path) -> dict:
    utts = read_manifest(manifest)
    return {"utterances": len(utts), "minutes": round(sum(u.duration for u in utts) / 60, 2)}


# ------------------------------------------------------------------------------------------------- outputs
def _pct(rates: dict | None, key: str) -> str:
    if not rates or rates.get(key) is None:
        return "n/a"
    ci = rates.get(f"{key}_ci95")
    return f"{100 * rates[key]:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def table_rows(record: dict) -> list[list[str]]:
    """system | decoder | minutes | train minutes | WER % [95% CI] | CER % [95% CI] | steps | train s."""
    rows = []
    zs = record.get("zero_shot")
    if zs:
        rows.append([f"zero-shot ({zs['name']})", zs.get("decoder", "?"), "0", "0", _pct(zs, "wer"), _pct(zs, "cer"),
                     "0", "0"])
    for decoder in ("greedy", "lm"):
        for system in TRAINED:
            for p in record["points"]:
                if p["system"] != system or not p.get(decoder):
                    continue
                rows.append([LABELS[system], "greedy" if decoder == "greedy" else "beam + LM", f"{p['minutes']:g}",
                             f"{p.get('train_minutes') or 0:.2f}", _pct(p[decoder], "wer"), _pct(p[decoder], "cer"),
                             str(p.get("steps")), f"{p.get('train_s') or 0:.0f}"])
    return rows


TABLE_HEADERS = ["system", "decoder", "minutes", "train min", "WER % [95% CI]", "CER % [95% CI]", "steps",
                 "train s"]


def curve_table(record: dict) -> str:
    """The table as aligned text (what the command prints)."""
    rows = [TABLE_HEADERS, *table_rows(record)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADERS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def curve_series(record: dict) -> list[dict]:
    """Plot series: one per trained system and decoder, ``{label, style, minutes, wer, wer_ci95, cer, cer_ci95}``."""
    series = []
    for decoder in ("greedy", "lm"):
        for system in TRAINED:
            pts = sorted((p for p in record["points"] if p["system"] == system and p.get(decoder)),
                         key=lambda p: p["minutes"])
            if not pts:
                continue
            s = {"label": f"{LABELS[system]}, {'greedy' if decoder == 'greedy' else 'beam + LM'}", "system": system,
                 "dashed": decoder == "lm", "minutes": [p["minutes"] for p in pts]}
            for key in ("wer", "wer_ci95", "cer", "cer_ci95"):
                s[key] = [p[decoder].get(key) for p in pts]
            series.append(s)
    return series


def write_outputs(out: Path, record: dict) -> dict:
    """``report.html``, ``report.md``, ``figures/curve.png`` and ``curve.json`` in ``out``; returns their paths."""
    test = record["test"]
    title = (f"{record['recipe']}: test ({test['utterances']} utterances, {test['minutes']:g} min) against "
             f"minutes of {record['lang']} training audio")
    png = plots.data_efficiency_png(curve_series(record), record.get("zero_shot"), record["minutes"], title)
    doc = Document(out)
    doc.heading(f"Data efficiency: {record['recipe']}", 1)
    steps = record["schedule"]
    schedule = " / ".join(f"{s['name']} {s.get('steps')}" for s in steps)
    scratch = record.get("scratch_stage")
    doc.para(
        f"Source {record['source']}; each point trains on a nested prefix of the recipe's train split and is scored "
        f"on the same test split (voices and sentences held out). Transfer schedule (steps per stage): {schedule}"
        + (f"; from scratch: {scratch['steps']} steps in one stage training everything at lr {scratch['lr']:g}"
           if scratch else "")
        + ". The best dev checkpoint of each run is scored; 95% intervals are bootstrap intervals over test "
        f"utterances. Training took {sum(p.get('train_s') or 0 for p in record['points']):.0f} s over all points; "
        f"this invocation {record['wall_s']:.0f} s (finished points and stages are skipped on a rerun)."
    )
    doc.figure(png, "curve", "test CER and WER against training minutes")
    doc.table(TABLE_HEADERS, table_rows(record))
    page = write_page(doc, out, f"asr-transfer data efficiency: {record['recipe']}")
    files = {"png": str(out / "figures" / "curve.png"), "markdown": str(out / "report.md"),
             "json": str(out / "curve.json"), "html": str(page)}
    atomic_write_json(out / "curve.json", {**record, "files": files}, default=str)
    return files


def curve_json(out_dir: str | Path) -> dict:
    """A finished curve's record (``<out>/curve/curve.json``)."""
    path = Path(out_dir) / FOLDER / "curve.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("no finished curve here", path=path) from None
