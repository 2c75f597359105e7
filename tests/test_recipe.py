"""Recipes and the stage runner: data + validate for every recipe, markers (skip / --force / config change), the
whole pipeline on a tiny random source (mechanics only), and the reduced demo on the shipped source (quality)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from test_corpora import make_commonvoice
from train_fixtures import make_source_model

from asr_transfer.cli import main
from asr_transfer.corpora.synth import VOICE_SETS
from asr_transfer.manifest import read_manifest
from asr_transfer.recipe import RECIPES_DIR, list_recipes, load_recipe

SYNTH = ["de-synth", "nl-synth", "es-synth", "fr-synth"]
COMMONVOICE = ["de", "nl", "es", "fr"]
TINY_SYNTH = ["--set", "data.minutes=0.2", "--set", "data.dev_minutes=0.05", "--set", "data.test_minutes=0.05",
              "--set", "data.source_test_minutes=0.1", "--set", "data.source_train_minutes=0.2"]
SHIPPED = RECIPES_DIR.parent / "models" / "en-synth-small"


def recipe(capsys, *args) -> tuple[int, str, str]:
    rc = main(["recipe", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def markers(out: Path) -> dict[int, dict]:
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (out / ".done").glob("stage-[0-9].json")}


TINY_TRAIN = ["--set", "lm.order=3", "--set", "train.stages.0.steps=2", "--set", "train.stages.1.steps=2",
              "--set", "train.train.eval_every=2", "--set", 'train.stages.1.train=["head", "layers.-1:"]',
              "--set", "train.data.max_batch_s=20", "--set", "eval.beam_size=4", "--set", "eval.tune_lm=true",
              "--set", "eval.alphas=[0.5]", "--set", "eval.betas=[0.0, 1.0]"]


@pytest.fixture(scope="module")
def cv_release(tmp_path_factory) -> Path:
    """A tiny Common Voice language folder: 4 client_ids, mp3 clips, official TSVs, two broken clips."""
    return make_commonvoice(tmp_path_factory.mktemp("cv"))


def test_every_language_has_a_synthetic_and_a_commonvoice_recipe_with_a_control():
    assert set(list_recipes()) == set(SYNTH + COMMONVOICE)
    for name in SYNTH + COMMONVOICE:
        _, config, path = load_recipe(name)
        assert config.lang == name.split("-")[0]
        assert config.data.kind == ("synth" if name.endswith("-synth") else "commonvoice")
        assert "[control]" in path.read_text(), f"{name} must state its from-scratch control"
        assert (path.parent / "run.sh").stat().st_mode & 0o111, f"{name}/run.sh is not executable"
    _, de, _ = load_recipe("de")
    stages = de.train_config("t.jsonl", "d.jsonl", "v.json", "run").stages
    assert [s.name for s in stages] == ["head", "top4", "all"] and de.source == "facebook/wav2vec2-base-960h"


@pytest.mark.parametrize("name", SYNTH)
def test_synthetic_recipe_data_and_validate(name, tmp_path, capsys):
    out = tmp_path / "exp"
    rc, stdout, stderr = recipe(capsys, name, "--out", out, "--stop-stage", 1, *TINY_SYNTH)
    assert rc == 0, stderr
    lang = name.split("-")[0]
    for split in ("train", "dev", "test"):
        utts = read_manifest(out / "data" / f"{split}.jsonl")
        assert utts and {u.lang for u in utts} == {lang}
        report = json.loads((out / "validate" / f"{split}.json").read_text())
        assert report["utterances"] == len(utts) and not [p for p in report["problems"] if p["severity"] == "error"]
    assert sorted(markers(out)) == [0, 1]
    assert "problems    0 errors" in stdout


@pytest.mark.parametrize("name", COMMONVOICE)
def test_commonvoice_recipe_data_and_validate(name, cv_release, tmp_path, capsys):
    out = tmp_path / "exp"
    rc, stdout, stderr = recipe(capsys, name, "--out", out, "--stop-stage", 1, "--cv-root", cv_release)
    assert rc == 0, stderr
    train = read_manifest(out / "data" / "train.jsonl")
    assert len(train) == 4 and all(u.audio_filepath.endswith(".mp3") for u in train)  # two broken clips skipped
    assert {u.speaker for u in train} == {"c_aaa", "c_bbb"}
    assert len(read_manifest(out / "data" / "dev.jsonl")) == 2 and len(read_manifest(out / "data" / "test.jsonl")) == 2
    assert markers(out)[0]["inputs"]["config"]["cv_root"] == str(cv_release.resolve())
    # A rerun without --cv-root reuses the recorded folder and skips.
    rc, stdout, _ = recipe(capsys, name, "--out", out, "--stop-stage", 1)
    assert rc == 0 and stdout.count("skipping") == 2


def test_commonvoice_recipe_without_cv_root_is_one_line_error(tmp_path, capsys):
    rc, _, stderr = recipe(capsys, "de", "--out", tmp_path / "exp")
    assert rc == 1
    assert stderr.count("\n") == 1 and "--cv-root" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("override", ["data.minuts=1", "train.stages.0.lrate=1", "train.model.source=x", "lang=xx"])
def test_unknown_or_bad_key_is_exit_1_one_line(override, tmp_path, capsys):
    rc, stdout, stderr = recipe(capsys, "de-synth", "--out", tmp_path / "exp", "--set", override)
    assert rc == 1 and stderr.startswith("error: ") and stderr.count("\n") == 1
    assert not (tmp_path / "exp").exists()  # nothing ran


def test_missing_source_test_manifest_is_one_line_before_any_synthesis(tmp_path, capsys):
    rc, _, stderr = recipe(
        capsys,
        "de-synth",
        "--out",
        tmp_path / "exp",
        "--set",
        f"data.source_test={tmp_path}/no.jsonl",
        "--stop-stage",
        "0",
    )
    assert rc == 1 and stderr.count("\n") == 1 and "data.source_test" in stderr and "no.jsonl" in stderr
    assert not (tmp_path / "exp" / "data" / "train.jsonl").exists()


def test_unknown_recipe_lists_the_known_ones(capsys):
    rc, _, stderr = recipe(capsys, "xx-synth")
    assert rc == 1 and "de-synth" in stderr


def test_markers_skip_force_and_config_change(tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["de-synth", "--out", out, "--stop-stage", 1, *TINY_SYNTH]
    assert recipe(capsys, *args)[0] == 0
    first = markers(out)
    assert {n: m["name"] for n, m in first.items()} == {0: "data", 1: "validate"}
    assert all(m["wall_s"] >= 0 and len(m["hash"]) == 16 for m in first.values())

    rc, stdout, _ = recipe(capsys, *args)  # rerun: both skipped, nothing rewritten
    assert rc == 0 and stdout.count("skipping") == 2 and markers(out) == first

    rc, stdout, _ = recipe(capsys, *args, "--stage", 1, "--force")  # --force reruns only the selected stage
    assert rc == 0 and "stage 1 (validate): running" in stdout and "stage 0 (data): running" not in stdout
    assert markers(out)[0] == first[0] and markers(out)[1]["finished"] > first[1]["finished"]

    # A changed data setting reruns data and, through the marker chain, validate.
    rc, stdout, _ = recipe(capsys, *args, "--set", "data.seed=1")
    assert rc == 0 and "stage 0 (data): its config changed since it ran (data); rerunning" in stdout
    assert "stage 1 (validate): a stage it reads from ran again since; rerunning" in stdout

    # Running a later stage alone needs its inputs to be up to date with the config.
    rc, _, stderr = recipe(capsys, *args, "--stage", 1, "--set", "data.seed=2")
    assert rc == 1 and "needs stage 0 (data)" in stderr and "--stage 0" in stderr
    rc, _, stderr = recipe(capsys, "de-synth", "--out", tmp_path / "fresh", "--stage", 2, "--stop-stage", 2)
    assert rc == 1 and "needs stage 1 (validate)" in stderr


LM_TEXT = """Der Hund schläft im Garten. Die Katze trinkt Milch aus der Schale.
Wir fahren morgen mit dem Zug nach Berlin.
Das Wetter ist heute schön und warm. Ich lese gern ein gutes Buch am Abend. Die Kinder spielen auf der Straße."""


def test_whole_pipeline_mechanics_on_a_tiny_random_source(tmp_path, capsys):
    """Every stage on a random 2-layer source: asserts what ran and what was written, not quality."""
    source = make_source_model(tmp_path / "src")
    (tmp_path / "lm.txt").write_text(LM_TEXT, encoding="utf-8")
    out = tmp_path / "exp"
    args = ["de-synth", "--out", out, "--set", f"source={source}", *TINY_SYNTH, "--set", "data.minutes=0.3",
            "--set", f'lm.text_files=["{tmp_path / "lm.txt"}"]', "--set", "lm.order=3",
            "--set", "train.stages.0.steps=2", "--set", "train.stages.1.steps=2", "--set", "train.train.eval_every=2",
            "--set", 'train.stages.1.train=["head", "layers.-1:"]',  # the default top 4 layers; this source has 2
            "--set", "train.data.max_batch_s=20", "--set", "eval.beam_size=4", "--set", "eval.tune_lm=true",
            "--set", "eval.alphas=[0.5]", "--set", "eval.betas=[0.0, 1.0]", "--set", "control.enabled=true",
            "--set", "baseline.alphas=[2.0]", "--set", "baseline.betas=[0.0, 1.0]"]
    rc, stdout, stderr = recipe(capsys, *args)
    assert rc == 0, stderr
    stage3 = markers(out)[3]["inputs"]["config"]  # the LM is on: zero-shot + LM's settings are stage 3's too
    assert stage3["baseline.alphas"] == [2.0] and stage3["eval.beam_size"] == 4 and stage3["lm.enabled"] is True
    tuned = json.loads((out / "baseline" / "zero-shot-lm-tune" / "tune.json").read_text())
    assert tuned["select"] == "cer" and len(tuned["grid"]) == 2 and "dev.jsonl" in tuned["manifest"]
    zs_lm = json.loads((out / "baseline" / "zero-shot-lm" / "summary.json").read_text())
    assert zs_lm["decoder"]["lm_weight"] == 2.0 and zs_lm["decoder"]["word_score"] == tuned["best"]["word_score"]
    # Retention: the English test (held-out voices, stage 0) scored by the source (stage 3) and each adapted model's
    # own head (stage 5), with the English normaliser.
    assert markers(out)[0]["result"]["source_test"]["utterances"] >= 1
    for folder, system in (("baseline/source-test", "raw"), ("eval/adapted-source-test", "adapted (greedy)"),
                           ("eval/control-source-test", "control (greedy)")):
        s = json.loads((out / folder / "summary.json").read_text())
        assert s["test_set"] == "source" and s["system"] == system and s["normalizer"] == "en-v1", folder
        assert s["manifest"] == str((out / "data" / "source" / "test.jsonl").resolve())
    retained = stdout[stdout.index("retention = source CER"):]
    assert [line.split("  ")[0] for line in retained.splitlines()[3:6]] == ["raw", "adapted (greedy)",
                                                                             "control (greedy)"]
    assert retained.splitlines()[3].rstrip().endswith("1.00")  # the unadapted source against itself
    assert 'data-metric="retention"' in (out / "report" / "report.html").read_text()
    assert [m["name"] for _, m in sorted(markers(out).items())] == [
        "data",
        "validate",
        "vocab + LM",
        "baseline",
        "train",
        "evaluate",
        "self-train",
        "report",
    ]
    vocab = json.loads((out / "lang" / "vocab.json").read_text())
    assert {"ä", "ö", "ü", "ß"} <= set(vocab)  # vocab.all_letters: the whole German alphabet
    lm_record = json.loads((out / "lm" / "lm.json").read_text())
    excluded = {Path(e["path"]).name for e in lm_record["excluded_manifests"]}
    assert lm_record["order"] == 3 and excluded == {"dev.jsonl", "test.jsonl"}

    transfer = json.loads((out / "train" / "train_summary.json").read_text())
    control = json.loads((out / "control" / "train_summary.json").read_text())
    assert transfer["steps"] == 4 and control["steps"] == 4  # same optimiser-step budget
    control_config = json.loads((out / "control" / "config.resolved.json").read_text())
    transfer_config = json.loads((out / "train" / "config.resolved.json").read_text())
    assert control_config["model"]["from_scratch"] is True and not transfer_config["model"]["from_scratch"]
    assert control_config["data"] == transfer_config["data"]  # same data, same batching
    assert (out / "eval" / "adapted-tune" / "tune.json").is_file()

    systems = ["raw", "zero-shot + LM", "adapted (greedy)", "adapted + LM", "control (greedy)", "control + LM"]
    table = stdout[stdout.index("system"):]
    assert [line.split("  ")[0] for line in table.splitlines()[2:2 + len(systems)]] == systems
    for line in table.splitlines()[2:2 + len(systems)]:
        assert re.search(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]\s+\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", line), line
    html = out / "report" / "report.html"
    assert f"report: {html.resolve()}" in stdout
    page = html.read_text()
    assert all(f'data-system="{s}"' in page.replace("&quot;", '"') for s in ("raw", "adapted + LM", "control (greedy)"))

    rc, stdout, _ = recipe(capsys, *args)  # all done: every stage skipped, the table printed again
    assert rc == 0 and stdout.count("skipping") == 8 and "adapted + LM" in stdout

    # Only the control changed: stage 4 reruns the control and reuses the transfer run; evaluation follows.
    rc, stdout, stderr = recipe(capsys, *args, "--set", "control.steps=1")
    assert rc == 0, stderr
    assert "transfer: finished earlier with the same inputs; reusing" in stdout
    assert json.loads((out / "control" / "train_summary.json").read_text())["steps"] == 1
    assert "stage 3 (baseline): done" in stdout and "stage 5 (evaluate): a stage it reads from ran again" in stdout

    # Only zero-shot + LM's grid changed: stage 3 reruns (and the report), training and evaluation do not.
    rc, stdout, stderr = recipe(capsys, *args, "--set", "control.steps=1", "--set", "baseline.betas=[1.0]")
    assert rc == 0, stderr
    assert "stage 3 (baseline): its config changed since it ran (baseline.betas)" in stdout
    assert "stage 4 (train): done" in stdout and "stage 5 (evaluate): done" in stdout


def test_self_training_stage_labels_withheld_audio_trains_on_the_mix_and_reports_the_pair(tmp_path, capsys):
    """Stage 6 on a random 2-layer source, two rounds: what it labels, trains on, records and reports."""
    from asr_transfer.files import sha256_file

    source = make_source_model(tmp_path / "src")
    (tmp_path / "lm.txt").write_text(LM_TEXT, encoding="utf-8")
    out = tmp_path / "exp"
    args = ["de-synth", "--out", out, "--set", f"source={source}", *TINY_SYNTH, "--set", "data.minutes=0.3",
            "--set", f'lm.text_files=["{tmp_path / "lm.txt"}"]', *TINY_TRAIN, "--set", "baseline.enabled=false",
            "--set", "selftrain.enabled=true", "--set", "selftrain.untranscribed_minutes=0.3",
            "--set", "selftrain.rounds=2", "--set", "selftrain.oversample=2", "--set", "selftrain.top_share=0.5"]
    rc, stdout, stderr = recipe(capsys, *args)
    assert rc == 0, stderr
    train, pool = read_manifest(out / "data" / "train.jsonl"), read_manifest(out / "data" / "untranscribed.jsonl")
    truth = read_manifest(out / "data" / "untranscribed-truth.jsonl")
    assert 0.3 <= sum(u.duration for u in train) / 60 < 0.3 + max(u.duration for u in train) / 60
    assert all(u.text == "" and u.extra["untranscribed"] is True for u in pool) and len(pool) == len(truth)
    assert not {u.uid for u in pool} & {u.uid for u in train} and all(u.text for u in truth)
    test_voices = {u.speaker for u in read_manifest(out / "data" / "test.jsonl")}
    assert test_voices and not test_voices & {u.speaker for u in pool}  # test voices stay held out
    assert markers(out)[0]["result"]["untranscribed"]["utterances"] == len(pool)

    result = markers(out)[6]["result"]
    assert len(result["rounds"]) == 2 and "self-trained (greedy)" in result and "self-trained + LM" in result
    for k, facts in enumerate(result["rounds"], start=1):
        labels = json.loads((out / "selftrain" / f"round-{k}" / "labels" / "summary.json").read_text())
        assert labels["filter"] == {"kind": "top_share", "value": 0.5} and labels["decoder"] == "beam"
        assert labels["lm"]["dir"] == str((out / "lm").resolve())
        assert labels["lm"]["lm_weight"] == markers(out)[5]["result"]["adapted + LM"]["lm_weight"]
        want = out / ("train" if k == 1 else "selftrain/round-1/run")
        assert Path(labels["model"]).parent == want.resolve()  # round 2 labels with round 1's model
        mixed = read_manifest(out / "selftrain" / f"round-{k}" / "train.jsonl")
        assert len(mixed) == 2 * len(train) + labels["kept"] and labels["kept"] == facts["labels"]["kept"]
        record = json.loads((out / "selftrain" / f"round-{k}" / "run" / "run.json").read_text())
        used = record["pseudo_labels"]
        assert used["sha256"] == sha256_file(used["manifest"]) == labels["manifest_sha256"] and used["round"] == k
        assert facts["label_accuracy"]["all"]["utterances"] == labels["labelled"]
        config = json.loads((out / "selftrain" / f"round-{k}" / "run" / "config.resolved.json").read_text())
        assert config["model"]["head_init"] == "keep" and config["model"]["source"] == labels["model"]
    page = (out / "report" / "report.html").read_text()
    assert "Paired comparisons" in page and "self-trained + LM" in page
    table = stdout[stdout.index("system  "):]
    assert [line.split("  ")[0] for line in table.splitlines()[2:6]] == [
        "adapted (greedy)", "adapted + LM", "self-trained (greedy)", "self-trained + LM"]

    # Only the filter changed: stages 0-5 are kept, stage 6 and the report rerun.
    rc, stdout, stderr = recipe(capsys, *args[:-2], "--set", "selftrain.min_confidence=0.0")
    assert rc == 0, stderr
    assert "stage 5 (evaluate): done" in stdout and "stage 6 (self-train): its config changed" in stdout
    labels = json.loads((out / "selftrain" / "round-1" / "labels" / "summary.json").read_text())
    assert labels["filter"] == {"kind": "min_confidence", "value": 0.0} and labels["dropped"] == 0


def test_export_onnx_scores_the_deployed_int8_model_beside_the_adapted_one(tmp_path, capsys):
    """export.onnx: stage 5 writes the adapted model's ONNX export where `transcribe` finds it, scores its int8 model
    greedy and + LM at the adapted model's tuned weights, and the report pairs each with the torch row."""
    from asr_transfer.onnx_engine import find_export, read_meta
    from asr_transfer.recipe import RecipeRunner

    source = make_source_model(tmp_path / "src")
    (tmp_path / "lm.txt").write_text(LM_TEXT, encoding="utf-8")
    out = tmp_path / "exp"
    args = ["de-synth", "--out", out, "--set", f"source={source}", *TINY_SYNTH, "--set", "data.minutes=0.3",
            "--set", f'lm.text_files=["{tmp_path / "lm.txt"}"]', *TINY_TRAIN, "--set", "baseline.enabled=false"]
    rc, stdout, stderr = recipe(capsys, *args, "--set", "export.onnx=true")
    assert rc == 0, stderr
    model = out / "train" / "best"
    assert find_export(model, "auto", device="cpu") == model / "onnx"  # what `transcribe --model` then runs
    assert read_meta(model / "onnx")["lang"] == "de"
    stage5 = markers(out)[5]
    assert stage5["inputs"]["config"]["export.onnx"] is True
    result = stage5["result"]
    greedy = json.loads((out / "eval" / "adapted-onnx-int8-greedy" / "summary.json").read_text())
    lm = json.loads((out / "eval" / "adapted-onnx-int8-lm" / "summary.json").read_text())
    assert greedy["name"] == "adapted, ONNX int8 (greedy)" and greedy["engine"] == "onnx"
    assert (lm["decoder"]["lm_weight"], lm["decoder"]["word_score"]) == (
        result["adapted + LM"]["lm_weight"], result["adapted + LM"]["word_score"])
    assert result["adapted, ONNX int8 + LM"]["cer"] == lm["cer"]
    table = stdout[stdout.index("system  "):]
    assert [line.split("  ")[0] for line in table.splitlines()[2:6]] == [
        "adapted (greedy)", "adapted + LM", "adapted, ONNX int8 (greedy)", "adapted, ONNX int8 + LM"]
    page = (out / "report" / "report.html").read_text()
    assert "Paired comparisons" in page and "adapted, ONNX int8 + LM" in page

    # Off (the default), the key is not part of stage 5's inputs: folders made before it existed keep their markers.
    name, config, _ = load_recipe("de-synth")
    assert "export.onnx" not in RecipeRunner(name, config, tmp_path / "off").stage_inputs(5)["config"]


def test_a_marker_of_another_stage_under_a_number_is_no_marker(tmp_path):
    """Output folders from before stage 6 existed hold the report's marker as stage-6.json."""
    from asr_transfer.recipe import RecipeRunner

    name, config, _ = load_recipe("de-synth")
    runner = RecipeRunner(name, config, tmp_path)
    runner.marker_path(6).parent.mkdir(parents=True)
    runner.marker_path(6).write_text(json.dumps({"stage": 6, "name": "report", "hash": "x"}))
    assert runner.marker(6) is None and not runner.is_fresh(6)
    runner.marker_path(6).write_text(json.dumps({"stage": 6, "name": "self-train", "hash": "x"}))
    assert runner.marker(6)["hash"] == "x"


def test_stage3_keys_hold_the_lm_settings_only_when_the_lm_is_on(tmp_path):
    from asr_transfer.recipe import RecipeRunner, load_recipe

    for lm_on in (True, False):
        name, config, _ = load_recipe("de-synth", [f"lm.enabled={str(lm_on).lower()}"])
        keys = RecipeRunner(name, config, tmp_path / str(lm_on)).stage_inputs(3)["config"]
        assert ("baseline.alphas" in keys and "eval.beam_size" in keys) is lm_on, keys


@pytest.mark.slow
def test_reduced_demo_on_the_shipped_source_beats_zero_shot(tmp_path, capsys):
    """The demo at reduced size on models/en-synth-small: adapted test CER below zero-shot's and below 50%."""
    if not (SHIPPED / "model.safetensors").is_file():
        pytest.skip(f"{SHIPPED}/model.safetensors is absent (the shipped English source is built by "
                    "`asr-transfer pretrain-source`); the reduced demo needs it")
    import torch

    out = tmp_path / "exp"
    threads = torch.get_num_threads()
    started = time.perf_counter()
    try:
        rc, stdout, stderr = recipe(capsys, "de-synth", "--out", out, *REDUCED_DEMO)
    finally:
        torch.set_num_threads(threads)  # the recipe's num_threads is process-wide
    wall_s = time.perf_counter() - started
    assert rc == 0, stderr
    zero_shot = json.loads((out / "baseline" / "zero-shot" / "summary.json").read_text())
    adapted = json.loads((out / "eval" / "adapted-greedy" / "summary.json").read_text())
    print(stdout[stdout.index("system"):], f"\nreduced demo: {wall_s:.0f} s")
    assert adapted["cer"] < zero_shot["cer"], (adapted["cer"], zero_shot["cer"])
    assert adapted["cer"] < 0.5, adapted["cer"]


# The reduced demo (≤ 3 min on two shared cores): de-synth with less audio, half-size batches, fewer steps, a
# trigram LM, no LM decode. One thread: `make test` runs two pytest workers on two cores.
REDUCED_DEMO = ["--set", "num_threads=1", "--set", "data.minutes=8", "--set", "data.dev_minutes=0.5",
                "--set", "data.test_minutes=1.0", "--set", "train.data.max_batch_s=30",
                "--set", "train.stages.0.steps=80", "--set", "train.stages.1.steps=160", "--set", "lm.order=3",
                "--set", "eval.beam=false", "--set", "baseline.lm=false"]  # no beam decodes, zero-shot + LM's neither

def test_missing_local_source_fails_before_any_stage(tmp_path, capsys):
    rc, _, stderr = recipe(capsys, "de-synth", "--out", tmp_path / "exp", "--set", f"source={tmp_path}/nope/model")
    assert rc == 1 and "source model folder" in stderr and "not found" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "exp").exists()


def test_lm_text_drops_pieces_of_test_transcripts(tmp_path):
    """Running text can hold a test sentence as shorter sentences; those pieces must not reach the LM."""
    from asr_transfer.manifest import Utterance, write_manifest
    from asr_transfer.recipe_stages import _text_without_pieces_of

    test = write_manifest(tmp_path / "test.jsonl", [Utterance(str(tmp_path / "a.wav"), 2.0,
                          "Der alte Mann ging langsam nach Hause und die Sonne schien hell.", id="t1")])
    text = tmp_path / "text.txt"
    text.write_text("Der alte Mann ging langsam nach Hause.\nUnd die Sonne schien hell.\n\n"
                    "Die Sonne schien gestern hell.\nDer alte Mann.\n", encoding="utf-8")
    files, dropped = _text_without_pieces_of([text, test], [test], "de", 4, tmp_path / "lm.txt")
    kept = (tmp_path / "lm.txt").read_text(encoding="utf-8").splitlines()
    assert dropped == 2 and files == [tmp_path / "lm.txt", test]
    assert kept == ["die sonne schien gestern hell", "der alte mann"]  # not a run of the transcript / too short


def test_replay_set_from_stage_0_is_trained_on_and_its_share_is_part_of_stage_4(tmp_path, capsys):
    """data.source_train_minutes: English by the source voices, sentences disjoint from the English test; the
    transfer run replays it at train.train.mix.share, and a changed share reruns stage 4 only."""
    source = make_source_model(tmp_path / "src")
    out = tmp_path / "exp"
    args = ["de-synth", "--out", out, "--set", f"source={source}", *TINY_SYNTH, "--set", "data.minutes=0.3",
            "--set", "data.source_train_minutes=0.2", "--set", "train.train.mix.share=0.3",
            "--set", "lm.enabled=false", "--set", "baseline.enabled=false", "--set", "train.stages.0.steps=2",
            "--set", "train.stages.1.steps=2", "--set", 'train.stages.1.train=["head", "layers.-1:"]',
            "--set", "train.data.max_batch_s=20", "--stop-stage", 4]
    rc, stdout, stderr = recipe(capsys, *args)
    assert rc == 0, stderr
    replay, test = (read_manifest(out / "data" / "source" / f"{s}.jsonl") for s in ("train", "test"))
    assert sum(u.duration for u in replay) >= 0.2 * 60 and not {u.text for u in replay} & {u.text for u in test}
    assert {u.speaker for u in replay} <= set(VOICE_SETS["source"])  # the English source model's own voices
    assert markers(out)[0]["result"]["source_train"]["utterances"] == len(replay)
    summary = json.loads((out / "train" / "train_summary.json").read_text())
    assert summary["mix"]["share"] == 0.3 and summary["mix"]["share_trained"] > 0
    assert summary["mix"]["manifest"] == str(out / "data" / "source" / "train.jsonl")
    assert markers(out)[4]["inputs"]["config"]["train"]["train"]["mix"] == {"manifest": "", "share": 0.3,
                                                                             "lang": "en", "head": "own"}
    rc, stdout, stderr = recipe(capsys, *args[:-2], "--set", "train.train.mix.share=0.5", "--stop-stage", 4)
    assert rc == 0, stderr
    assert "stage 0 (data): done" in stdout and "stage 4 (train): its config changed since it ran (train)" in stdout
    assert json.loads((out / "train" / "train_summary.json").read_text())["mix"]["share"] == 0.5


@pytest.mark.parametrize("override, message", [
    ("train.train.mix.share=0.3", "needs source-language speech to replay"),
    ("train.train.mix.manifest=x.jsonl", "set by the recipe runner"),
])
def test_replay_without_a_replay_set_is_a_config_error(override, message, tmp_path, capsys):
    # nl-synth: de-synth makes a replay set by default (data.source_train_minutes), nl-synth does not.
    rc, _, stderr = recipe(capsys, "nl-synth", "--out", tmp_path, "--set", override)
    assert rc == 1 and stderr.count("\n") == 1 and message in stderr


def test_two_heads_in_a_recipe_score_the_kept_english_head_into_retention(tmp_path, capsys):
    """train.train.mix.head = own: stage 5 scores the German head and the kept English head on the English test; the
    final table and the report show both retention rows (docs/forgetting.md, "Two heads")."""
    source = make_source_model(tmp_path / "src")
    out = tmp_path / "exp"
    rc, stdout, stderr = recipe(
        capsys, "de-synth", "--out", out, "--set", f"source={source}", *TINY_SYNTH, "--set", "data.minutes=0.3",
        "--set", "train.train.mix.share=0.3", "--set", "train.train.mix.head=own", "--set", "lm.enabled=false",
        "--set", "train.stages.0.steps=2", "--set", "train.stages.1.steps=2", "--set", "train.data.max_batch_s=20",
        "--set", 'train.stages.1.train=["head", "layers.-1:"]', "--set", "control.enabled=false",
        "--set", "eval.beam=false")
    assert rc == 0, stderr
    assert json.loads((out / "train" / "train_summary.json").read_text())["mix"]["head"] == "own"
    kept = json.loads((out / "eval" / "adapted-source-test-en-head" / "summary.json").read_text())
    assert kept["head"] == "en" and kept["model"].endswith("heads/en") and kept["system"] == "adapted (greedy)"
    table = stdout[stdout.index("source language (en) test"):]
    assert re.search(r"adapted \(greedy\)\s+own\s", table) and re.search(r"adapted \(greedy\)\s+kept en\s", table)
    section = (out / "report" / "report.md").read_text().split("## Source language")[1]
    assert "| adapted (greedy) | kept en |" in section and "| adapted (greedy) | own |" in section


def _long_recording_manifest(folder: Path) -> Path:
    """An `asr-transfer align`-style manifest: three segments of one long file, one of them marked."""
    import numpy as np

    from asr_transfer.audio import write_wav

    t = np.arange(12 * 16000) / 16000
    noise = 0.01 * np.random.default_rng(0).normal(size=t.size)
    write_wav(folder / "book.wav", 0.3 * np.sin(2 * np.pi * 220 * t) + noise)
    rows = [{"audio_filepath": "book.wav", "offset": 0.5, "duration": 2.5, "text": "Guten Morgen.", "id": "book-1",
             "align_score": -0.9},
            {"audio_filepath": "book.wav", "offset": 4.0, "duration": 3.0, "text": "Das Haus ist groß.", "id": "book-2",
             "align_score": -1.1},
            {"audio_filepath": "book.wav", "offset": 8.0, "duration": 3.5, "text": "Nicht gesagt.", "id": "book-3",
             "align_score": -4.0, "align_flag": "low_score"}]
    manifest = folder / "aligned.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return manifest


def test_train_manifest_replaces_the_train_split_and_its_contents_are_part_of_stage_0(tmp_path, capsys):
    """data.train_manifest (e.g. `align`'s segments): stage 0 keeps dev/test, keeps the corpus's train split apart,
    counts the marked segments; validate and the LM read the given segments; editing the file reruns stage 0, and
    a recipe that leaves the key unset hashes as before the key existed (its old markers hold)."""
    from asr_transfer.recipe import RecipeRunner

    manifest = _long_recording_manifest(tmp_path)
    out = tmp_path / "exp"
    args = ["de-synth", "--out", out, "--stop-stage", 1, *TINY_SYNTH, "--set", f"data.train_manifest={manifest}"]
    rc, stdout, stderr = recipe(capsys, *args)
    assert rc == 0, stderr
    train = read_manifest(out / "data" / "train.jsonl")
    assert [u.id for u in train] == ["book-1", "book-2", "book-3"]
    assert {u.audio_filepath for u in train} == {str(tmp_path / "book.wav")} and train[1].offset == 4.0
    assert read_manifest(out / "data" / "train-corpus.jsonl")  # the synthetic train split, not trained on
    facts = markers(out)[0]["result"]["train"]
    assert facts["utterances"] == 3 and facts["marked"] == 1 and facts["marked_minutes"] == round(3.5 / 60, 3)
    assert "1 marked by align" in stdout
    assert json.loads((out / "validate" / "train.json").read_text())["utterances"] == 2  # the marked one skipped
    rc, stdout, _ = recipe(capsys, *args)
    assert rc == 0 and stdout.count("skipping") == 2
    manifest.write_text(manifest.read_text().replace("Guten Morgen", "Guten Abend"), encoding="utf-8")
    rc, stdout, _ = recipe(capsys, *args)
    assert rc == 0 and "stage 0 (data): its config changed since it ran (data); rerunning" in stdout
    assert read_manifest(out / "data" / "train.jsonl")[0].text == "Guten Abend."

    name, config, _ = load_recipe("de-synth")
    data_inputs = RecipeRunner(name, config, tmp_path / "plain").stage_inputs(0)["config"]["data"]
    assert "train_manifest" not in data_inputs and "train_manifest_sha256" not in data_inputs


@pytest.mark.parametrize("override, message", [
    ("data.train_manifest={tmp}/no.jsonl", "no.jsonl"),
    ("data.train_manifest={tmp}/aligned.jsonl", "set one of them"),
    ("train.data.train_manifest={tmp}/aligned.jsonl", "set data.train_manifest (a train split of your own)"),
])
def test_train_manifest_errors_are_one_line_before_any_synthesis(override, message, tmp_path, capsys):
    _long_recording_manifest(tmp_path)
    extra = ["--set", "data.train_minutes=1"] if "set one" in message else []
    rc, _, stderr = recipe(capsys, "de-synth", "--out", tmp_path / "exp", "--stop-stage", 0,
                           "--set", override.format(tmp=tmp_path), *extra)
    assert rc == 1 and stderr.count("\n") == 1 and message in stderr, stderr
    assert not (tmp_path / "exp" / "data" / "train.jsonl").exists()
