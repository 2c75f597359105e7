"""Training speed: our staged trainer against a plain ``transformers.Trainer`` loop (bench/hf_baseline.py).

Three measurements, each side by side in one process:

1. Throughput per stage (audio seconds trained per wall second) on the shipped model with German synthetic data:
   head only, top-k layers, all layers (+ feature projection). Our trainer caches the frozen prefix, so its first
   epoch (which fills the cache) and later epochs are reported apart, and over the whole measured stage.
2. Time to equal dev CER over a whole staged schedule: our schedule runs to its end (no evaluation in the loop) and its
   final dev CER is the target; the HF loop runs the same schedule, evaluated every few steps with the timer paused,
   until it reaches that CER (or a cap of ``--hf-cap`` × the schedule, repeating the last stage). A faster loop
   cannot win by learning less. Our time includes everything ``train()`` does (audio decoding, checkpoints, the
   final save); the HF time counts only ``Trainer.train()`` (its up-front vectorising is reported apart).
3. Throughput per stage for a base-960h-sized model (the config from tests/assets, random weights), small sizes.

Run: ``.venv/bin/python bench/train_speed.py`` (default sizes, a few minutes on 2 cores) or ``--full``.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import common
import numpy as np
from common import BASE960_CONFIG, DEFAULT_MODEL, Section, Stopwatch, fmt, ratio, table

STAGE_KINDS = ("head", "top", "all")


def stage_groups(kind: str, top_k: int) -> list[str]:
    return {"head": ["head"], "top": ["head", f"layers.-{top_k}:"], "all": ["head", "layers", "feature_projection"]}[
        kind
    ]


def make_config(out_dir: Path, train_manifest: Path, stages: list[dict], max_batch_s: float, seed: int,
                model: dict, dev_manifest: Path | None = None, log_every: int = 1, eval_every: int = 10**9):
    from asr_transfer.config import TrainConfig, load_config

    base = {
        "model": {"lang": "de", **model},
        "data": {"train_manifest": str(train_manifest), "dev_manifest": str(dev_manifest) if dev_manifest else None,
                 "max_batch_s": max_batch_s, "max_utt_s": min(20.0, max_batch_s)},
        "train": {"output_dir": str(out_dir), "seed": seed, "eval_every": eval_every, "save_every": 10**9,
                  "log_every": log_every, "keep_last": 1},
        "stages": stages,
    }
    return load_config(TrainConfig, None, (), base=base)


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------------------ ours
def run_ours(config) -> tuple[object, float]:
    from asr_transfer.training.loop import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(config, progress=False)
    trainer.run()
    return trainer, time.perf_counter() - t0


def ours_stage_throughput(config) -> dict:
    """One stage over several epochs; per-step times come from ``metrics.jsonl`` (``log_every = 1``)."""
    from asr_transfer.training.runlog import read_metrics

    trainer, wall = run_ours(config)
    steps = [r for r in read_metrics(config.train.output_dir) if r.get("split") == "train"]
    times = {r["step"]: r["time_s"] for r in steps}
    durations = np.array([e.duration_s for e in trainer.train_examples])
    total_steps = trainer.state.stages[-1]["total_steps"]
    per_step_audio, epoch_of = [], []
    epoch = 0
    while len(per_step_audio) < total_steps:
        for b in trainer.sampler.batches(epoch):
            per_step_audio.append(float(durations[b].sum()))
            epoch_of.append(epoch)
        epoch += 1
    per_step_audio, epoch_of = per_step_audio[:total_steps], epoch_of[:total_steps]
    n0 = epoch_of.count(0)
    last = max(times)
    first_epoch_s = times[n0]
    later_audio = sum(per_step_audio[n0:last])
    return {
        "epochs": epoch_of[last - 1] + 1,
        "steps": last,
        "steps_epoch1": n0,
        "epoch1_audio_s_per_s": sum(per_step_audio[:n0]) / first_epoch_s,
        "steady_audio_s_per_s": later_audio / (times[last] - first_epoch_s) if last > n0 else None,
        "overall_audio_s_per_s": sum(per_step_audio[:last]) / times[last],
        "boundary": trainer.state.stages[-1]["boundary"],
        "trainable_params": trainer.state.stages[-1]["trainable_params"],
        "cache": trainer.cache.stats(),
        "wall_s": wall,
    }


# ------------------------------------------------------------------------------------------------ HF
def hf_stage_throughput(loop, stage, epochs: float = 1.0) -> dict:
    """The HF loop for ``epochs`` epochs + 1 step; the first step (warm-up) is left out of the steady rate."""
    from hf_baseline import step_clock

    clock = step_clock()
    steps = max(2, math.ceil(epochs * loop.steps_per_epoch) + 1)
    out = loop.run_stage(stage, steps, callbacks=[clock])
    audio = out["batch_audio_s"][: len(clock.times)]
    t = clock.times
    return {"steps": len(t), "batch_size": loop.batch_size,
            "steady_audio_s_per_s": sum(audio[1:]) / (t[-1] - t[0]),
            "overall_audio_s_per_s": sum(audio) / (t[-1] - clock.begin), "wall_s": out["wall_s"]}


def throughput_section(label: str, model_args: dict, train_manifest: Path, work: Path, max_batch_s: float,
                       top_k: int, epochs: int, seed: int, lrs: dict) -> tuple[list, dict]:
    """Per-stage throughput of both loops on one model; returns table rows and raw data."""
    from hf_baseline import HFLoop

    rows, raw = [], {}
    for kind in STAGE_KINDS:
        stage = {"name": kind, "train": stage_groups(kind, top_k), "lr": lrs[kind], "epochs": float(epochs),
                 "warmup_ratio": 0.1}
        cfg = make_config(fresh(work / f"ours-{kind}"), train_manifest, [stage], max_batch_s, seed, model_args)
        ours = ours_stage_throughput(cfg)
        loop = HFLoop(cfg, out_dir=work / "hf-out")
        hf = hf_stage_throughput(loop, cfg.stages[0])
        raw[kind] = {"ours": ours, "hf": hf, "hf_settings": loop.settings()}
        rows.append([label, f"{kind} ({'+'.join(stage['train'])})", ours["boundary"], ours["epochs"],
                     hf["steady_audio_s_per_s"], ours["epoch1_audio_s_per_s"], ours["steady_audio_s_per_s"],
                     ours["overall_audio_s_per_s"],
                     ratio(ours["steady_audio_s_per_s"], hf["steady_audio_s_per_s"]),
                     ratio(ours["overall_audio_s_per_s"], hf["steady_audio_s_per_s"])])
        print(f"[{label}] {kind}: HF {hf['steady_audio_s_per_s']:.2f} audio-s/s, ours steady "
              f"{fmt(ours['steady_audio_s_per_s'])}, epoch 1 {ours['epoch1_audio_s_per_s']:.2f}", flush=True)
        del loop
    return rows, raw


THROUGHPUT_HEADERS = ["model", "stage (trained groups)", "cached segments", "our epochs", "HF audio-s/s",
                      "ours epoch 1 (fills cache)", "ours later epochs", "ours whole stage", "× later epochs",
                      "× whole stage"]


# ------------------------------------------------------------------------------------------------ time to CER
def _verdict(name: str, value: float | None, goal: float, lower_bound: bool) -> str:
    """``name: value — met/MISSED``; a lower bound below the goal proves nothing either way."""
    if value is None:
        return f"{name}: – — not measured"
    if lower_bound:
        return f"{name}: ≥ {fmt(value)} — " + (
            "met" if value >= goal else "undetermined (HF did not reach the target CER within its cap)"
        )
    return f"{name}: {fmt(value)} — {'met' if value >= goal else 'MISSED'}"


def time_to_cer(model_args: dict, corpus: dict, work: Path, max_batch_s: float, stages: list[dict], seed: int,
                hf_cap: float, evals: int) -> dict:
    from hf_baseline import DevSet, HFLoop

    from asr_transfer.model.forward import unwrap
    from asr_transfer.training.loop import Trainer

    dev = DevSet(corpus["dev"], "de")
    schedule_steps = sum(s["steps"] for s in stages)
    every = max(1, schedule_steps // evals)

    class CurveTrainer(Trainer):
        """Our trainer, scored by the same DevSet at each of its evaluations; evaluation time is kept apart."""

        curve: list = []
        eval_s = 0.0

        def evaluate(self):
            t0 = time.time()
            train_s = t0 - self.t_start - self.eval_s  # t_start: the loop's start, after model preparation
            out = super().evaluate()
            scores = dev.score(unwrap(self.model), self.vocab)
            self.curve.append((self.state.step, round(train_s, 2), scores["cer"]))
            self.eval_s += time.time() - t0
            return out

    cfg = make_config(fresh(work / "ours-schedule"), corpus["train"], stages, max_batch_s, seed, model_args,
                      dev_manifest=corpus["dev"], log_every=10, eval_every=every)
    t0 = time.perf_counter()
    trainer = CurveTrainer(cfg, progress=False)
    trainer.curve = []
    trainer.run()
    ours_wall = time.perf_counter() - t0
    final = next(c for c in reversed(trainer.curve) if c[0] == schedule_steps)
    target = final[2]
    ours_first = next(c for c in trainer.curve if c[2] <= target)
    ours_scores = {"cer": target}
    ours_s = ours_first[1]
    print(f"ours: schedule done in {ours_wall:.1f}s ({trainer.eval_s:.1f}s of it evaluating), final dev CER "
          f"{target:.4f}, first reached at step {ours_first[0]} after {ours_s:.1f}s of training", flush=True)

    loop = HFLoop(cfg, out_dir=work / "hf-out")
    cap_steps = int(math.ceil(hf_cap * schedule_steps))
    watch = Stopwatch()
    state = {"step": 0, "reached_step": None, "reached_s": None, "curve": []}

    from transformers import TrainerCallback

    class UntilTarget(TrainerCallback):
        def on_train_begin(self, args, s, control, **kw):
            watch.start()

        def on_step_end(self, args, s, control, **kw):
            state["step"] += 1
            if state["step"] % every and s.global_step < s.max_steps:
                return
            watch.stop()
            scores = loop_dev_score()
            state["curve"].append((state["step"], round(watch.total, 2), scores["cer"]))
            if scores["cer"] <= target:
                state["reached_step"], state["reached_s"] = state["step"], watch.total
                control.should_training_stop = True
            watch.start()

        def on_train_end(self, args, s, control, **kw):
            watch.stop()

    def loop_dev_score():
        return dev.score(loop.model, loop.prepared.vocab)

    plan = list(cfg.stages)
    while sum(s.steps for s in plan) < cap_steps:
        plan.append(cfg.stages[-1])  # past the schedule: repeat the last stage (fresh warm-up and decay)
    for stage in plan:
        if state["reached_step"] is not None or state["step"] >= cap_steps:
            break
        loop.run_stage(stage, min(stage.steps, cap_steps - state["step"]), callbacks=[UntilTarget()])
        print(f"HF: after stage {stage.name} (step {state['step']}), train time {watch.total:.1f}s, "
              f"curve {state['curve'][-1] if state['curve'] else None}", flush=True)
    hf_at_schedule_end = next((c for c in state["curve"] if c[0] >= schedule_steps), None)
    return {
        "ours_s": ours_s,
        "ours_steps": ours_first[0],
        "ours_wall_s": ours_wall,
        "ours_eval_s": trainer.eval_s,
        "ours_curve": trainer.curve,
        "ours_dev": ours_scores,
        "target_cer": target,
        "schedule_steps": schedule_steps,
        "hf_reached": state["reached_step"] is not None,
        "hf_s": state["reached_s"] if state["reached_step"] else watch.total,
        "hf_steps": state["reached_step"] or state["step"],
        "hf_cap_steps": cap_steps,
        "hf_eval_every": every,
        "hf_curve": state["curve"],
        "hf_cer_at_schedule_end": hf_at_schedule_end,
        "hf_vectorize_s": loop.data.prepare_s,
        "hf_settings": loop.settings(),
        "stages": [s.to_dict() for s in cfg.stages],
    }


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="the source model folder (English)")
    p.add_argument("--minutes", type=float, default=None, help="German train minutes (default 3; --full 10)")
    p.add_argument("--max-batch-s", type=float, default=20.0, help="batch size in padded audio seconds (both loops)")
    p.add_argument("--top-k", type=int, default=2, help="layers trained in the top-k stage")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per stage for our throughput runs (default 3; --full 4)"
    )
    p.add_argument(
        "--steps", default=None, help="time-to-CER schedule steps head,top,all (default 40,40,40; --full 150,150,150)"
    )
    p.add_argument("--hf-cap", type=float, default=2.0, help="HF loop gives up after this × the schedule's steps")
    p.add_argument("--evals", type=int, default=12, help="HF dev evaluations over the schedule (timer paused)")
    p.add_argument(
        "--base-minutes", type=float, default=None, help="audio for the base-960h rows (default 0.5; --full 2)"
    )
    p.add_argument("--base-max-batch-s", type=float, default=8.0)
    p.add_argument("--base-config", default=str(BASE960_CONFIG), help="Wav2Vec2Config JSON for the random-weights rows")
    p.add_argument("--train", default=None, help="use this train manifest instead of the synthetic German corpus")
    p.add_argument("--dev", default=None, help="dev manifest to go with --train")
    p.add_argument("--skip", default="", help="comma list of parts to skip: throughput,cer,base960")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    minutes = args.minutes or (10.0 if args.full else 3.0)
    epochs = args.epochs or (4 if args.full else 3)
    steps = [int(s) for s in (args.steps or ("150,150,150" if args.full else "40,40,40")).split(",")]
    base_minutes = args.base_minutes or (2.0 if args.full else 0.5)
    work = Path(args.work_dir) / "train_speed"
    lrs = {"head": 2e-3, "top": 3e-4, "all": 1e-4}

    section = Section("train_speed: our trainer vs transformers.Trainer" + (" (--full)" if args.full else "")).start()
    if args.train:
        corpus = {"train": Path(args.train), "dev": Path(args.dev or args.train)}
    else:
        corpus = common.synth_corpus(args.work_dir, "de", minutes, dev_minutes=1.0, test_minutes=0.5, seed=args.seed)
    data: dict = {"train_minutes": common.manifest_minutes(corpus["train"]), "max_batch_s": args.max_batch_s,
                  "top_k": args.top_k, "lrs": lrs}
    rows: list = []
    model_args = None
    if not {"throughput", "cer"} <= skip:
        model_args = {"source": str(common.require_model(args.model))}
        section.model = args.model
    if "throughput" not in skip:
        r, raw = throughput_section(Path(args.model).name, model_args, corpus["train"], work, args.max_batch_s,
                                    args.top_k, epochs, args.seed, lrs)
        rows += r
        data["throughput"] = raw
    if "base960" not in skip:
        from asr_transfer.manifest import read_manifest
        from asr_transfer.vocab import build_vocab, save_vocab

        base_train = common.manifest_prefix(corpus["train"], base_minutes, work / f"base-train-{base_minutes:g}m.jsonl")
        vocab_path = save_vocab(
            build_vocab([u.text for u in read_manifest(corpus["train"])], "de"), work / "vocab.json"
        )
        base_args = {"init_config": str(args.base_config), "vocab": str(vocab_path), "head_init": "keep",
                     "source": "random-base-960h"}
        base_layers = json.loads(Path(args.base_config).read_text())["num_hidden_layers"]
        base_top_k = min(4, max(1, base_layers // 2))  # top-4 of base-960h's 12, as the default schedule
        r, raw = throughput_section(f"{Path(args.base_config).parent.name} (random)", base_args, base_train, work,
                                    args.base_max_batch_s, base_top_k, 2, args.seed, lrs)
        rows += r
        data["base960"] = raw
    if rows:
        source = f"`{args.train}`" if args.train else "German synthetic (espeak-ng, target voices)"
        desc = [f"Train data: {source}, {data['train_minutes']:.1f} min."]
        for part, label in (
            ("throughput", f"`{Path(args.model).name}`"),
            ("base960", "base-960h-sized (random weights)"),
        ):
            if part in data:
                b = data[part]["head"]["hf_settings"]
                desc.append(
                    f"{label}: our batches ≤ {b['max_batch_s (ours)']:g} padded seconds (length-bucketed); HF "
                    f"per-device batch {b['per_device_train_batch_size']} (= {b['max_batch_s (ours)']:g} s / mean "
                    f"{b['mean_duration_s']} s)"
                    + (f", first {base_minutes:g} min of the data" if part == "base960" else "")
                    + "."
                )
        desc.append(
            "HF loop: random sampling (group_by_length=False), freeze_feature_encoder, fp32 both, no eval, "
            "no checkpoints. Rates are audio seconds per wall second; × = ours / HF (HF after its first step). "
            "'cached segments' = frozen segments below the first trainable one, which our trainer computes once "
            "per utterance in epoch 1 and then reads from its cache (segments: CNN, projection, pos-conv, "
            "layer 0, layer 1, ...)."
        )
        section.add(" ".join(desc) + "\n")
        section.add(table(THROUGHPUT_HEADERS, rows) + "\n")
    if "cer" not in skip:
        stages = [{"name": k, "train": stage_groups(k, args.top_k), "lr": lrs[k], "steps": n, "warmup_ratio": 0.1,
                   **({"layer_decay": 0.9} if k == "all" else {})} for k, n in zip(STAGE_KINDS, steps)]
        res = time_to_cer(model_args, corpus, work, args.max_batch_s, stages, args.seed, args.hf_cap, args.evals)
        data["time_to_cer"] = res
        hf_cell = f"{res['hf_s']:.1f}" + ("" if res["hf_reached"] else f" (not reached in {res['hf_steps']} steps)")
        section.add(
            f"Time to equal dev CER, schedule {'/'.join(map(str, steps))} steps (head/top-{args.top_k}/all). "
            f"Target = our dev CER at the end of the schedule. Both loops are scored every "
            f"{res['hf_eval_every']} steps (and at stage ends) by the same function (greedy, one unpadded "
            f"utterance at a time, dev {common.manifest_minutes(corpus['dev']):.1f} min, held-out voices) with "
            "evaluation time taken out; each loop's time is its training time until its first evaluation at "
            f"or below the target. Ours counts from the start of its loop (after model preparation; audio "
            f"decoding, cache filling and best-checkpoint saves included); HF counts `Trainer.train()` only, its "
            f"up-front vectorising "
            f"({res['hf_vectorize_s']:.1f} s) not counted. Our whole run took {res['ours_wall_s']:.1f} s wall "
            f"({res['ours_eval_s']:.1f} s of it evaluating).\n"
        )
        rat = ratio(res["hf_s"], res["ours_s"])
        section.add(
            table(
                ["loop", "steps to target", "train s to target", "dev CER reached", "time ratio (HF / ours)"],
                [
                    ["ours", res["ours_steps"], res["ours_s"], res["target_cer"], None],
                    [
                        "transformers.Trainer",
                        res["hf_steps"],
                        hf_cell,
                        min((c[2] for c in res["hf_curve"]), default=None),
                        (f"{fmt(rat)}" if res["hf_reached"] else f"≥ {fmt(rat)}"),
                    ],
                ],
            )
            + "\n"
        )
        section.add("Dev CER curves (step: CER): ours " + ", ".join(f"{c[0]}: {c[2]:.3f}" for c in res["ours_curve"])
                    + "; HF " + ", ".join(f"{c[0]}: {c[2]:.3f}" for c in res["hf_curve"]) + ".\n")
        if res["hf_cer_at_schedule_end"]:
            section.add(
                f"HF dev CER after the same {res['schedule_steps']} steps: {res['hf_cer_at_schedule_end'][2]:.4f}.\n"
            )
    targets = []
    if "throughput" in data:
        t = data["throughput"]
        targets.append(
            (
                "head-only ≥ 5× (later epochs)",
                ratio(t["head"]["ours"]["steady_audio_s_per_s"], t["head"]["hf"]["steady_audio_s_per_s"]),
                5,
                False,
            )
        )
        targets.append(
            (
                f"top-{args.top_k} ≥ 2× (later epochs)",
                ratio(t["top"]["ours"]["steady_audio_s_per_s"], t["top"]["hf"]["steady_audio_s_per_s"]),
                2,
                False,
            )
        )
    if "time_to_cer" in data:
        res = data["time_to_cer"]
        # HF stopped at its cap without reaching our CER: its time is a lower bound, and so is the ratio.
        targets.append(("time-to-equal-CER ≥ 1.5×", ratio(res["hf_s"], res["ours_s"]), 1.5, not res["hf_reached"]))
    if targets:
        section.add("Targets: " + "; ".join(_verdict(*t) for t in targets) + ".\n")
    section.data = data
    section.append(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
