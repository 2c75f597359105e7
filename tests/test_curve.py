"""The data-efficiency curve on a tiny random source: mechanics (nested data, one run folder per point, resume after
a kill, outputs), not quality."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_recipe import LM_TEXT, TINY_SYNTH
from train_fixtures import make_source_model

import asr_transfer.training.loop as training_loop
from asr_transfer.cli import main
from asr_transfer.config import ConfigError
from asr_transfer.curve import (
    POINT_RECORD,
    curve_options,
    nested_prefixes,
    point_name,
    scaled_stages,
    scratch_stage,
)
from asr_transfer.errors import UserError
from asr_transfer.manifest import Utterance, read_manifest, write_manifest
from asr_transfer.recipe import load_recipe

SIZES = (0.1, 0.2)


@pytest.fixture
def tiny_args(tmp_path) -> list[str]:
    source = make_source_model(tmp_path / "src")
    (tmp_path / "lm.txt").write_text(LM_TEXT, encoding="utf-8")
    return ["de-synth", "--out", str(tmp_path / "exp"), "--no-progress", "--steps", "3",
            "--minutes", *map(str, SIZES), "--set", f"source={source}", *TINY_SYNTH,
            "--set", f'lm.text_files=["{tmp_path / "lm.txt"}"]', "--set", "lm.order=3",
            "--set", 'train.stages.1.train=["head", "layers.-1:"]', "--set", "train.data.max_batch_s=20",
            "--set", "train.train.eval_every=2", "--set", "train.train.save_every=1",
            "--set", "train.train.log_every=1", "--set", "eval.beam_size=4",
            "--set", "eval.alphas=[0.5]", "--set", "eval.betas=[0.0, 1.0]",
            "--set", "baseline.alphas=[2.0]", "--set", "baseline.betas=[0.0]"]


def count_training(monkeypatch, fail_on: int | None = None, stop_after_steps: int | None = None) -> list[str]:
    """Record every training call (run folder names); the ``fail_on``-th call (1-based) is killed after
    ``stop_after_steps`` steps (or before it starts), as an interrupted process would be."""
    calls = []
    real = training_loop.train

    def train(config, resume=False, **kwargs):
        calls.append(Path(config.train.output_dir).name + (" (resumed)" if resume else ""))
        if len(calls) == fail_on:
            if stop_after_steps:
                real(config, resume=resume, **{**kwargs, "stop_after_steps": stop_after_steps})
            raise KeyboardInterrupt
        return real(config, resume=resume, **kwargs)

    monkeypatch.setattr(training_loop, "train", train)  # the stage imports it when it runs
    return calls


def test_curve_end_to_end_then_a_killed_rerun_resumes(tiny_args, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exp"
    # Killed during the 5th training run (random-head at 0.2 min) after 2 of its 3 steps.
    calls = count_training(monkeypatch, fail_on=5, stop_after_steps=2)
    assert main(["curve", *tiny_args]) == 130  # the CLI's exit code on an interrupt
    assert calls == [point_name(s, m) for m in SIZES for s in ("transfer", "random-head", "scratch")][:5]
    finished = [p.parent.name for p in (out / "curve").glob(f"*/{POINT_RECORD}")]
    assert sorted(finished) == sorted(calls[:4])
    half = out / "curve" / point_name("random-head", 0.2)
    assert json.loads((half / "run.json").read_text())["status"] == "paused"
    capsys.readouterr()

    calls = count_training(monkeypatch)
    assert main(["curve", *tiny_args]) == 0
    stdout = capsys.readouterr().out
    # Nothing finished is trained again; the half-trained point resumes its run; the last one trains.
    assert calls == [f"{point_name('random-head', 0.2)} (resumed)", point_name("scratch", 0.2)]
    assert stdout.count("done earlier; skipping") == 4
    steps = [json.loads(line)["step"] for line in (half / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("split") == "train"]
    assert steps == sorted(set(steps)) and max(steps) == 3

    record = json.loads((out / "curve" / "curve.json").read_text())
    assert [(p["system"], p["minutes"]) for p in record["points"]] == [
        (s, m) for m in SIZES for s in ("transfer", "random-head", "scratch")]
    for p in record["points"]:
        run = Path(p["run"])
        assert json.loads((run / "run.json").read_text())["kind"] == "train"
        assert p["steps"] == 3 and p["greedy"]["wer_ci95"] and p["lm"]["cer_ci95"], p
        assert (run / "eval" / "test-greedy" / "summary.json").is_file() and (run / "eval" / "dev-tune").is_dir()
    # Every point is scored on the same test manifest; the train sets are nested.
    tests = {json.loads((Path(p["run"]) / "eval" / "test-greedy" / "summary.json").read_text())["manifest_fingerprint"]
             for p in record["points"]}
    assert len(tests) == 1
    small, large = (read_manifest(out / "curve" / "data" / f"train-{m:g}min.jsonl") for m in SIZES)
    assert [u.id for u in small] == [u.id for u in large[: len(small)]] and len(small) < len(large)
    test_ids = {u.id for u in read_manifest(out / "data" / "test.jsonl")}
    assert not test_ids & {u.id for u in large}
    scratch = json.loads((out / "curve" / point_name("scratch", 0.1) / "config.resolved.json").read_text())
    assert scratch["model"]["from_scratch"] is True and len(scratch["stages"]) == 1
    random = json.loads((out / "curve" / point_name("random-head", 0.1) / "config.resolved.json").read_text())
    assert random["model"]["head_init"] == "random" and [s["steps"] for s in random["stages"]] == [1, 2]
    assert record["zero_shot"]["name"] in ("raw", "zero-shot", "zero-shot + LM")
    assert (out / "curve" / "figures" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "curve" / "report.html").read_text()
    assert "data:image/png;base64" in page and "transfer (random head)" in page and "zero-shot (" in page
    table = (out / "curve" / "report.md").read_text()
    assert table.count("| from scratch |") == 2 * len(SIZES)  # greedy and beam + LM rows

    # All done: a third run trains nothing and scores nothing.
    calls = count_training(monkeypatch)
    assert main(["curve", *tiny_args]) == 0
    assert calls == [] and capsys.readouterr().out.count("done earlier; skipping") == 6
    # Only the scoring changed: every point is scored again (greedy only now), none is retrained.
    assert main(["curve", *tiny_args, "--no-lm"]) == 0
    stdout = capsys.readouterr().out
    assert calls == [] and stdout.count("finished earlier with the same inputs; reusing") == 6
    record = json.loads((out / "curve" / "curve.json").read_text())
    assert all(p["lm"] is None and not (Path(p["run"]) / "eval" / "test-lm").exists() for p in record["points"])


def test_nested_prefixes_hold_each_smaller_set_and_refuse_more_than_the_split(tmp_path):
    utts = [Utterance(f"/a/{i}.wav", 6.0, "ja", id=f"u{i}", speaker=f"s{i // 5}") for i in range(20)]
    train = write_manifest(tmp_path / "train.jsonl", utts, relative=False)
    sets = nested_prefixes(train, [0.5, 1.0, 2.0], seed=0, out_dir=tmp_path / "p")
    ids = {m: [u.id for u in read_manifest(p)] for m, p in sets.items()}
    assert len(ids[0.5]) == 5 and len(ids[1.0]) == 10 and len(ids[2.0]) == 20
    assert ids[1.0][:5] == ids[0.5] and ids[2.0][:10] == ids[1.0]
    assert ids[0.5] != [f"u{i}" for i in range(5)]  # shuffled: not the first speaker's utterances
    with pytest.raises(UserError, match="holds 2.00 min; the curve asks for 3"):
        nested_prefixes(train, [3.0], seed=0, out_dir=tmp_path / "p")


def test_schedule_scaled_to_the_step_budget_and_scratch_gets_as_many():
    _, config, _ = load_recipe("de-synth")
    stages = scaled_stages(config, 120)
    assert [s["steps"] for s in stages] == [30, 90] and [s["name"] for s in stages] == ["head", "top"]
    assert [s["steps"] for s in scaled_stages(config, None)] == [120, 360]
    scratch = scratch_stage(config, stages)
    assert scratch["steps"] == 120 and scratch["lr"] == config.control.lr and "feature_encoder" in scratch["train"]
    with pytest.raises(UserError, match="fewer than the schedule's 2 stages"):
        scaled_stages(config, 1)


@pytest.mark.parametrize("data, message", [({"systems": ["transfer", "fine-tune"]}, "unknown 'fine-tune'"),
                                           ({"minutes": [0]}, "must be > 0"), ({"minutes": [1, 1]}, "twice"),
                                           ({"sizes": [1]}, "unknown config key curve.sizes"),
                                           ({"steps": 0}, "must be >= 1")])
def test_bad_options_are_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        curve_options(data)


def test_full_changes_the_defaults():
    assert curve_options(full=True).steps is None and max(curve_options(full=True).minutes) == 40
    assert curve_options({"minutes": [2]}, full=True).minutes == (2.0,)


def test_unknown_system_on_the_command_line_is_one_line(capsys):
    assert main(["curve", "de-synth", "--systems", "transfer,nope"]) == 1
    assert "unknown 'nope'" in capsys.readouterr().err
