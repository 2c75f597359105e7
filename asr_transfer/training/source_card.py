"""The model card (``README.md``) of the English source model that :mod:`asr_transfer.training.pretrain` exports.

It is written from what the runs left on disk, so that it can be re-made without training again: each run's
``train_summary.json``, ``stages.json``, resolved config and dev metrics (:func:`run_facts`), and the wall log that
``pretrain`` appends one line to per invocation (:data:`WALL_LOG`), which keeps the wall time and the hardware of
every run across pauses, resumes and machines.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import TrainConfig, load_config
from ..environment import hardware
from ..errors import ConfigError, UserError
from ..model.groups import count_parameters
from .data import EQ_BANDS
from .runlog import read_metrics

if TYPE_CHECKING:  # the pipeline imports this module, not the other way round
    from .pretrain import PretrainOptions, PretrainResult

TARGET_TEST_CER = 0.10  # the quality target on the held-out synthetic test set
WALL_LOG = "pretrain_wall.jsonl"  # one line per invocation: the card's wall time survives pauses and resumes


def run_facts(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "train_summary.json").read_text(encoding="utf-8"))
    stages = json.loads((run_dir / "stages.json").read_text(encoding="utf-8"))
    config = json.loads((run_dir / "config.resolved.json").read_text(encoding="utf-8"))
    dev = [m for m in read_metrics(run_dir) if m.get("split") == "dev"]
    return {"run": run_dir.name, "steps": summary["steps"], "stages": stages, "config": config,
            "train_minutes": summary.get("train_minutes"), "utterances": summary.get("train_utterances"),
            "skipped": summary.get("skipped", {}).get("total", 0),
            "dev_curve": [(m["step"], m["cer"], m["wer"], m["loss"], m.get("blank_share")) for m in dev]}


def _wall_rows(runs_dir: Path) -> list[dict]:
    path = runs_dir / WALL_LOG
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def _hardware(runs_dir: Path) -> dict[str, str]:
    """The machine each run trained on (``train <run>`` → hardware), from the wall log; its last invocation wins."""
    return {row["what"]: row["hardware"] for row in _wall_rows(runs_dir)
            if row.get("hardware") and row["what"].startswith("train ")}


def _wall(runs_dir: Path) -> dict[str, float]:
    """Seconds of wall time from the wall log: ``train`` and ``evaluate`` in all, and ``train <run>`` per run."""
    out: dict[str, float] = {}
    for row in _wall_rows(runs_dir):
        key = "evaluate" if row["what"] == "evaluate" else "train"
        out[key] = out.get(key, 0.0) + row["wall_s"]
        if key == "train":
            out[row["what"]] = out.get(row["what"], 0.0) + row["wall_s"]
    return out


def model_card(model, options: PretrainOptions, result: PretrainResult, runs: list[dict], manifests: dict) -> str:
    """The README.md of the exported folder: data, architecture, training, results, reproduction."""

    cfg = model.config
    corpus = json.loads(Path(manifests["corpus"]).read_text(encoding="utf-8"))
    sp = corpus["splits"]
    params = count_parameters(list(model.named_parameters()))
    wall = _wall(Path(options.runs_dir))
    ev = result.evaluations
    main_cfg = runs[-1]["config"]

    def pct(name, key):
        r = ev.get(name)
        return f"{100 * r[key]:.1f} %" if r and r.get(key) is not None else "n/a"

    lines = [
        "---", "language: en", "library_name: transformers", "pipeline_tag: automatic-speech-recognition",
        "tags: [wav2vec2, ctc, asr-transfer, synthetic-speech]", "---",
        "# en-synth-small: a small English wav2vec2 CTC model trained from scratch on synthetic speech", "",
        "The source model of asr-transfer's offline demo: built by `asr-transfer pretrain-source` from a random "
        "initialisation on espeak-ng English only (no pre-trained weights, no real speech). Its vocabulary and case "
        "follow `facebook/wav2vec2-base-960h` (`<pad>`=0 is the CTC blank, `<s>`, `</s>`, `<unk>`, `|`, upper-case "
        "A-Z, `'`), so transfer code written for base-960h runs on it unchanged. It is trained for espeak-ng voices; "
        "on real speech it is poor (see below) — it exists to exercise and demonstrate transfer offline.", "",
        "## Results (greedy CTC decoding, no LM)", "",
        "| set | utterances | WER | CER |", "|---|---|---|---|",
    ]
    for name, label in (
        ("synth_dev", "synthetic dev (held-out voices)"),
        ("synth_test", "synthetic test (held-out voices, unseen sentences)"),
        ("realspeech_en", "real English speech (`realspeech/en.jsonl`)"),
    ):
        if name in ev:
            lines.append(f"| {label} | {ev[name]['n_utterances']} | {pct(name, 'wer')} | {pct(name, 'cer')} |")
    test = ev.get("synth_test")
    if test and test.get("cer") is not None and test["cer"] > TARGET_TEST_CER:
        lines += [
            "",
            f"**Below target**: the project's target is a synthetic test CER of at most {100 * TARGET_TEST_CER:.0f} %. "
            + dev_trend_text(runs),
        ]
    lines += [
        "",
        "References and hypotheses are compared after the `en` text normaliser.",
        "",
        *voice_table(ev.get("synth_test")),
        "## Data",
        "",
        f"espeak-ng {corpus['espeak']['version']} (`{corpus['espeak']['voice']}`), sentences from the system's "
        f"English text ({corpus['sentences_available']} usable sentences, {corpus['sentence_filter']['min_words']}-"
        f"{corpus['sentence_filter']['max_words']} words).",
        "",
        f"- train: {sp['train']['minutes']:.1f} min, {sp['train']['utterances']} utterances, "
        f"{len(sp['train']['speakers'])} `source` voice variants ({', '.join(sp['train']['speakers'])})",
        f"- dev: {sp['dev']['minutes']:.1f} min, {sp['dev']['utterances']} utterances; test: "
        f"{sp['test']['minutes']:.1f} min, "
        f"{sp['test']['utterances']} utterances — `held-out` voice variants "
        f"({', '.join(corpus['variants']['held-out'])}) "
        "and sentences that never occur in train",
        f"- per utterance: speed uniform {corpus['speed_wpm'][0]}-{corpus['speed_wpm'][1]} wpm, pitch uniform "
        f"{corpus['pitch'][0]}-{corpus['pitch'][1]}, peak level {corpus['peak'][0]}-{corpus['peak'][1]}, "
        + (f"white or pink noise at {corpus['noise']['snr_db']:g} dB SNR" if corpus.get("noise") else "no noise"),
        f"- training-time augmentation: {augmentation_text(main_cfg)}",
        "",
        "## Architecture",
        "",
        f"wav2vec2 (`Wav2Vec2ForCTC`), **{params:,} parameters** ({params * 4 / 1e6:.1f} MB fp32), randomly "
        f"initialised:",
        "",
        f"- feature encoder: 7 conv layers, channels {list(cfg.conv_dim)}, kernels {list(cfg.conv_kernel)}, strides "
        f"{list(cfg.conv_stride)} (20 ms frames, 400-sample receptive field, as base), "
        f"`feat_extract_norm=\"{cfg.feat_extract_norm}\"`",
        f"- feature projection {cfg.conv_dim[-1]} → {cfg.hidden_size}; positional conv embedding kernel "
        f"{cfg.num_conv_pos_embeddings}, {cfg.num_conv_pos_embedding_groups} groups",
        f"- transformer: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
        f"FFN {cfg.intermediate_size}, `do_stable_layer_norm={cfg.do_stable_layer_norm}` (pre-LN: trains from scratch "
        "without a long warm-up, and enables MMS adapters in transfer)",
        f"- CTC head: {cfg.vocab_size} tokens (base-960h layout)",
        "",
        "## Training",
        "",
        f"Config `{options.config}` (architecture `{_architecture_path(options, runs)}`), "
        "AdamW, gradient clipping at "
        f"{main_cfg['train']['clip_norm']}, batches of at most {main_cfg['data']['max_batch_s']:g} s padded audio, "
        f"all parameter groups trainable (CNN included), one training loop (`asr_transfer.training.loop`) in "
        f"{len(runs)} runs: "
        "a curriculum run on short utterances, then one run per later stage, each starting from the previous "
        "run's final model with a fresh optimiser:",
        "",
        "| run | utterances | audio min | stage | steps | peak lr | warm-up | schedule | precision | torch threads | "
        "wall min | hardware |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    machines = _hardware(Path(options.runs_dir))
    for r in runs:
        run_wall = wall.get(f"train {r['run']}")
        machine = machines.get(f"train {r['run']}", "")
        for st_cfg, st in zip(r["config"]["stages"], r["stages"]):
            steps = (st.get("end_step") or r["steps"]) - st["start_step"]
            lines.append(
                f"| {r['run']} | {r['utterances']} | {r['train_minutes']:.1f} | {st['name']} | {steps} | "
                f"{st_cfg['lr']:g} "
                f"| {st_cfg.get('warmup_steps')} | {st_cfg['schedule']} | "
                f"{r['config']['train'].get('precision', 'fp32')} "
                f"| {r['config']['train'].get('num_threads')} "
                f"| {'' if run_wall is None else f'{run_wall / 60:.1f}'} | {machine} |"
            )
    trained_on = sorted(set(machines.values())) or [hardware()]
    lines += [
        "",
        f"Total: {sum(r['steps'] for r in runs)} optimiser steps, training wall time "
        f"{wall.get('train', 0) / 60:.1f} min on {' and '.join(trained_on)} (+ {wall.get('evaluate', 0) / 60:.1f} min "
        f"evaluation on {hardware()}). Runs that shared the cores with other jobs took longer than they would alone.",
        "",
        "Dev curve (greedy, synthetic dev set, held-out voices):",
        "",
        "| run | step | dev CER | dev WER | dev loss | blank share |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        for step, cer, wer, loss, blank in r["dev_curve"]:
            lines.append(f"| {r['run']} | {step} | {100 * cer:.1f} % | {100 * wer:.1f} % | {loss:.2f} | "
                         f"{'' if blank is None else f'{100 * blank:.1f} %'} |")
    lines += ["", "## What each run bought", "", *run_gains(runs, wall), "",
              "## The blank plateau", "", blank_plateau_notes(cfg, runs), "", plateau_summary(runs), "",
              "## Reproduce", "", "```sh", options.command or "asr-transfer pretrain-source", "```", "",
              "Long runs can be time-boxed: add `--time-budget-min N`, then repeat the command with `--resume` "
              "(resumes exactly from the last checkpoint).", "",
              "## Use", "", "```python", "from transformers import pipeline",
              f"asr = pipeline(\"automatic-speech-recognition\", model=\"{options.out}\")", "```", "",
              "or `asr-transfer transcribe --model models/en-synth-small audio.wav`; as a transfer source: "
              "`model.source = \"models/en-synth-small\"` in a train config.", ""]
    return "\n".join(lines)


def _architecture_path(options: PretrainOptions, runs: list[dict]) -> str:
    """The Wav2Vec2Config JSON the recipe names (the first run's record when the recipe file cannot be read)."""

    try:
        named = load_config(TrainConfig, options.config, options.overrides).model.init_config
    except (OSError, ConfigError, UserError):
        named = None
    return named or runs[0]["config"]["model"].get("init_config") or "?"


def voice_table(test: dict | None) -> list[str]:
    """Synthetic test CER per held-out voice, worst first, and the share of all character errors each holds."""
    by = (test or {}).get("by_speaker") or {}
    total = sum(v["char_errors"] for v in by.values())
    if not by or not total:
        return []
    rows = ["Per held-out voice (synthetic test set, worst first):", "",
            "| voice | utterances | CER | share of all character errors |", "|---|---|---|---|"]
    rows += [f"| {spk} | {v['n_utterances']} | {100 * v['cer']:.1f} % | {100 * v['char_errors'] / total:.1f} % |"
             for spk, v in by.items()]
    return rows + [""]


def augmentation_text(run_config: dict) -> str:
    """The trainer-side augmentation of a run's resolved config, in words ("none" when all is off)."""

    data, aug = run_config["data"], run_config["augment"]
    parts = []
    if data.get("speed_perturb"):
        parts.append(f"speed perturbation {list(data['speed_perturb'])}")
    if data.get("noise_snr_db"):
        parts.append(f"extra white noise at SNR uniform {list(data['noise_snr_db'])} dB")
    if data.get("eq_db"):
        parts.append(f"random equaliser ({EQ_BANDS} peaking filters, gains within ±{data['eq_db']:g} dB)")
    if aug.get("mask_time_prob"):
        parts.append(f"SpecAugment time masks p={aug['mask_time_prob']} length {aug['mask_time_length']}")
    return ", ".join(parts) if parts else "none (the corpus itself varies speed, pitch, level and noise)"


def blank_plateau_notes(cfg, runs: list[dict]) -> str:
    """What the recipe does against the CTC blank plateau, read from the model config and the runs' resolved configs."""
    peak = max(st["lr"] for r in runs for st in r["config"]["stages"]) if runs else None
    short_s = runs[0]["config"]["data"]["max_utt_s"] if len(runs) > 1 and runs[0]["run"] == "short" else None
    batch_s = runs[-1]["config"]["data"]["max_batch_s"] if runs else None
    cnn = ("a CNN with one GroupNorm in its first layer (`feat_extract_norm=\"group\"`, as base-960h)"
           if cfg.feat_extract_norm == "group" else "a layer-normalised CNN (`feat_extract_norm=\"layer\"`)")
    return (
        "Small CTC models trained from scratch first learn to emit only blanks (per-character loss ≈ 3.0, CER 1.0) "
        f"and can stay there for hundreds of steps. The recipe used against it: pre-LN transformer "
        f"(`do_stable_layer_norm={cfg.do_stable_layer_norm}`) with {cnn}; per-utterance zero-mean unit-variance input "
        "normalisation; a linear warm-up to a high peak learning rate (AdamW"
        + (f", {peak:g}" if peak else "")
        + ")"
        + (f"; a curriculum whose first run sees only utterances of at most {short_s:g} s" if short_s else "")
        + (f"; small batches ({batch_s:g} s of audio: many updates per CPU minute)" if batch_s else "")
        + "."
    )


def plateau_summary(runs: list[dict]) -> str:
    """Where the dev curve left the all-blank plateau, counted in optimiser steps over both runs."""
    offset = 0
    for r in runs:
        for step, cer, _, loss, blank in r["dev_curve"]:
            if blank is not None and blank < 0.95 and cer < 1.0:
                return (
                    f"On this run the dev blank share first fell below 95 % (dev CER {100 * cer:.1f} %, loss "
                    f"{loss:.2f}) "
                    f"at step {offset + step} of {sum(x['steps'] for x in runs)} (run `{r['run']}`, step {step})."
                )
        offset += r["steps"]
    return "On this run the dev output never left the all-blank plateau."


def run_gains(runs: list[dict], wall: dict[str, float]) -> list[str]:
    """A table of dev CER at each run's start and best, per 100 steps and per wall minute: which settings paid."""
    out = ["| run | peak lr | steps | dev CER start → best | CER points / 100 steps | CER points / wall min |",
           "|---|---|---|---|---|---|"]
    for r in runs:
        curve = r["dev_curve"]
        if not curve or not r["steps"]:
            continue
        start, best = min(curve[0][1], 1.0), min(c for _, c, *_ in curve)  # a random start's CER can exceed 1
        gain = 100 * (start - best)
        minutes = wall.get(f"train {r['run']}")
        lrs = "/".join(f"{st['lr']:g}" for st in r["config"]["stages"])
        out.append(f"| {r['run']} | {lrs} | {r['steps']} | {100 * start:.1f} % → {100 * best:.1f} % | "
                   f"{100 * gain / r['steps']:.2f} | {'' if not minutes else f'{gain / (minutes / 60):.2f}'} |")
    return out


def dev_trend(runs: list[dict], min_fall: float = 0.005) -> tuple[bool, float, float, int] | None:
    """Whether the final run's dev CER was still falling over its last quarter of steps.

    Compares the best dev CER (a fraction) at or before the step where the last quarter starts with the best after it.
    Best-of rather than last-of, because single evaluations on a small dev set move by a point either way (the last
    three of a falling curve are often not in order). Returns ``(falling, best_before, best_after, quarter_step)``, or
    None when the final run has fewer than four evaluations after step 0. ``falling`` needs a fall of at least
    ``min_fall`` (0.5 CER points by default).
    """
    curve = [(step, cer) for step, cer, *_ in runs[-1]["dev_curve"] if step > 0] if runs else []
    if len(curve) < 4:
        return None
    quarter = curve[-1][0] * 3 // 4
    early = [cer for step, cer in curve if step <= quarter]
    late = [cer for step, cer in curve if step > quarter]
    if not early or not late:
        return None
    before, after = min(early), min(late)
    return before - after >= min_fall, before, after, quarter


def dev_trend_text(runs: list[dict]) -> str:
    """The below-target note's reading of the dev curve, with the numbers it rests on."""
    trend = dev_trend(runs)
    if trend is None:
        return "The final run has too few dev evaluations to say whether more steps would help."
    falling, before, after, quarter = trend
    numbers = (f"(best dev CER {100 * before:.1f} % up to step {quarter} of the final run, {100 * after:.1f} % "
               f"after it)")
    if falling:
        return (f"The dev curve was still falling in the final run's last quarter {numbers}, so a longer schedule "
                "is the next thing to try: raise the last stage's steps or add a `[[stages]]` entry and run with "
                "`--resume`. With a decaying learning rate part of a late fall is the decay itself, so this is likely, "
                "not certain, to help.")
    return (f"The dev curve had flattened in the final run's last quarter {numbers}: a larger model or more varied "
            "data is needed, not more steps.")
