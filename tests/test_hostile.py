"""Hostile inputs, round two (issue 20): each class of what a hostile or careless user did that still got through.

Classes: a model folder that asks to run its own code; hangs (a FIFO for audio is in test_bad_input's battery; a
training run whose every step is NaN); numbers and strings Python, the OS or UTF-8 cannot take; output paths that
cannot take the output; garbage checksums; config values out of range; silent wrong results (an empty output_dir,
a wrong-typed offset, NaN weights, impossible architectures, a tab inside a Common Voice sentence); and what a kill
during a final/best save leaves, or a change to vocab.json or the source model between kill and resume.

Every command runs in-process under :func:`badinput_fixtures.deadline`, so a hang fails the test instead of the
suite; the code-execution test runs the real CLI with ``y`` piped to its stdin.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

# Import the heavy libraries outside pytest's output capture: their loggers keep the stream they first see.
import transformers  # noqa: F401
from badinput_fixtures import (
    copy_model,
    custom_code_model,
    deadline,
    fifo,
    manifest_line,
    model_with_config,
    model_with_nan_weights,
    tone,
    write_audio,
    write_manifest_lines,
)
from train_fixtures import TEXTS, make_source_model

import asr_transfer.evaluation  # noqa: F401
import asr_transfer.training.loop  # noqa: F401
from asr_transfer.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOOD_TEXT = "das haus ist groß"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from asr_transfer.vocab import build_vocab, save_vocab

    root = tmp_path_factory.mktemp("hostile")
    good = [write_audio(root / "good" / f"g{i}.wav", tone(0.8, freq_hz=200 + 60 * i)) for i in range(2)]
    vocab = root / "vocab.json"
    save_vocab(build_vocab(TEXTS + ["da"], "de"), vocab)
    lines = [manifest_line(p, 0.8, GOOD_TEXT if i == 0 else "guten morgen", f"g{i}") for i, p in enumerate(good)]
    return SimpleNamespace(root=root, source=make_source_model(root / "src"), good=good, vocab=vocab, lines=lines,
                           manifest=write_manifest_lines(root / "good.jsonl", lines))


def _run(capfd, argv: list[str]) -> tuple[int, str, str]:
    with deadline(120):
        rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return rc, out, err


def _one_error(rc: int, err: str, *needles) -> str:
    """Exit 1 and exactly one ``error:`` line, the last on stderr, holding every needle; returns the line."""
    assert rc == 1, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0], err
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


def _config(world, path: Path, run: Path, manifest: Path | None = None, **sections) -> Path:
    cfg = {
        "model": {"source": str(world.source), "lang": "de", "vocab": str(world.vocab)},
        "data": {"train_manifest": str(manifest or world.manifest), "max_batch_s": 4.0, "max_utt_s": 3.0},
        "augment": {"mask_time_prob": 0.0},
        "train": {"output_dir": str(run), "log_every": 1, "eval_every": 100, "save_every": 100},
        "stages": [{"name": "head", "train": ["head"], "lr": 1e-3, "steps": 2}],
    }
    for section, values in sections.items():
        if section == "stages":
            cfg["stages"] = values
        else:
            cfg[section].update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def _manifest_with(world, folder: Path, line: bytes | dict) -> Path:
    """The two good lines, then ``line`` as line 3 (raw bytes, or a dict written as JSON)."""
    raw = line if isinstance(line, bytes) else json.dumps(line).encode("utf-8")
    return write_manifest_lines(folder / "m.jsonl", [*world.lines, raw])


# ================================================================================================ security
_PROMPT = "[y/N]"


def test_custom_code_model_is_refused_and_piped_yes_runs_nothing(world, tmp_path):
    """transformers asks "Do you wish to run the custom code? [y/N]" on stdin when trust_remote_code is unset; a
    piped ``y`` used to run the folder's Python file. Now the folder is refused before transformers sees it."""
    marker = tmp_path / "PWNED"
    evil = custom_code_model(world.source, tmp_path / "evil", marker)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for argv in (["transcribe", "--model", evil, "--device", "cpu", world.good[0]],
                 ["evaluate", "--model", evil, "--manifest", world.manifest, "--lang", "de", "--device", "cpu",
                  "--out", tmp_path / "eval"]):
        res = subprocess.run([sys.executable, "-m", "asr_transfer", *map(str, argv)], input="y\ny\ny\n",
                             capture_output=True, text=True, timeout=120, env=env)
        assert "Traceback" not in res.stderr, res.stderr
        _one_error(res.returncode, res.stderr, evil / "config.json", "auto_map")
        assert _PROMPT not in res.stdout and _PROMPT not in res.stderr
        assert not marker.exists(), f"{argv[0]}: the folder's code ran"


def test_custom_code_model_is_refused_by_train(world, tmp_path, capfd):
    marker = tmp_path / "PWNED"
    evil = custom_code_model(world.source, tmp_path / "evil", marker)
    cfg = _config(world, tmp_path / "cfg.json", tmp_path / "run", model={"source": str(evil)})
    rc, out, err = _run(capfd, ["train", cfg, "--no-progress"])
    _one_error(rc, err, evil / "config.json", "auto_map")
    assert not marker.exists() and _PROMPT not in out


def test_custom_code_asked_for_by_the_tokenizer_config_is_refused(world, tmp_path, capfd):
    marker = tmp_path / "PWNED"
    evil = custom_code_model(world.source, tmp_path / "evil", marker, where="tokenizer_config.json")
    rc, out, err = _run(capfd, ["transcribe", "--model", evil, "--device", "cpu", world.good[0]])
    _one_error(rc, err, evil / "tokenizer_config.json", "auto_map")
    assert not marker.exists()


@pytest.mark.parametrize("model_type", ["hubert", "bert"])
def test_model_type_outside_the_wav2vec2_family_is_refused(world, tmp_path, capfd, model_type):
    """transformers loads a hubert config into Wav2Vec2ForCTC with only a warning; the weights mean something else."""
    folder = model_with_config(world.source, tmp_path / model_type, model_type=model_type)
    rc, out, err = _run(capfd, ["transcribe", "--model", folder, "--device", "cpu", world.good[0]])
    _one_error(rc, err, folder / "config.json", f"model_type '{model_type}'")


def test_adapter_folder_that_asks_for_custom_code_is_refused(world, tmp_path):
    from asr_transfer.errors import ModelError
    from asr_transfer.model.load import load_model

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "asr_transfer.json").write_text("{}", encoding="utf-8")
    (adapter / "adapter_config.json").write_text(json.dumps({"auto_map": {"AutoModel": "x.Y"}}), encoding="utf-8")
    with pytest.raises(ModelError, match="auto_map"):
        load_model(world.source, adapter=adapter)


# ================================================================================================ hangs
def test_fifo_given_to_transcribe_directly_or_through_a_link_fails_alone(world, tmp_path, capfd):
    pipe = fifo(tmp_path / "pipe.wav")
    link = tmp_path / "link.wav"
    link.symlink_to(fifo(tmp_path / "other-pipe.wav"))
    real_link = tmp_path / "real.wav"
    real_link.symlink_to(world.good[0])  # a link to a regular file is audio
    rc, out, err = _run(capfd, ["transcribe", "--model", world.source, "--device", "cpu", pipe, link, real_link])
    assert rc == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "FIFO" in errors[0] and str(pipe) in errors[0] and str(link) in errors[1], err
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == [str(real_link)]


def test_fifo_as_vocabulary_does_not_block(world, tmp_path, capfd):
    pipe = fifo(tmp_path / "vocab.json")
    rc, out, err = _run(capfd, ["validate", world.manifest, "--lang", "de", "--vocab", pipe])
    _one_error(rc, err, pipe, "not a regular file")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_training_whose_every_step_is_nan_stops_with_one_line(world, tmp_path, capfd, monkeypatch):
    from asr_transfer.training.loop import MAX_CONSECUTIVE_NAN_STEPS

    monkeypatch.setenv("ASR_TRANSFER_INJECT_NAN_EVERY", "1")  # every micro-batch's loss is NaN
    run = tmp_path / "run"
    rc, out, err = _run(capfd, ["train", _config(world, tmp_path / "cfg.json", run), "--no-progress"])
    _one_error(rc, err, run, f"{MAX_CONSECUTIVE_NAN_STEPS} optimiser steps in a row", "huge samples", "source model")
    skipped = [r for r in _metrics(run) if "nan_skipped" in r]
    assert len(skipped) == MAX_CONSECUTIVE_NAN_STEPS


def test_training_on_a_source_that_overflows_stops_with_one_line(world, tmp_path, capfd):
    """Finite weights so large (1e38) that the frozen encoder's output is inf: every loss is NaN."""
    source = model_with_nan_weights(world.source, tmp_path / "huge",
                                    "wav2vec2.encoder.layers.0.attention.v_proj.weight", value=1e38)
    run = tmp_path / "run"
    cfg = _config(world, tmp_path / "cfg.json", run, model={"source": str(source)},
                  stages=[{"name": "head", "train": ["head"], "lr": 1e-3, "steps": 100}])
    rc, out, err = _run(capfd, ["train", cfg, "--no-progress"])
    _one_error(rc, err, run, "in a row", "source model")


def test_nan_steps_that_are_not_consecutive_do_not_stop_the_run(world, tmp_path, capfd, monkeypatch):
    from asr_transfer.training.loop import MAX_CONSECUTIVE_NAN_STEPS

    monkeypatch.setenv("ASR_TRANSFER_INJECT_NAN_EVERY", "2")  # every other step is NaN: more in all than the limit
    run = tmp_path / "run"
    steps = MAX_CONSECUTIVE_NAN_STEPS + 2
    cfg = _config(world, tmp_path / "cfg.json", run, stages=[{"name": "head", "train": ["head"], "lr": 1e-3,
                                                             "steps": steps}])
    rc, out, err = _run(capfd, ["train", cfg, "--no-progress"])
    assert rc == 0, err
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == steps and summary["nan_skipped"] > MAX_CONSECUTIVE_NAN_STEPS


# ================================================================================================ numbers
_HUGE_INT = "1" * 5000  # past Python's 4,300-digit limit for int(str)
_DEEP = "[" * 100_000  # past the recursion limit of json and tomllib


@pytest.mark.parametrize("text", [_HUGE_INT, _DEEP], ids=["int-5000-digits", "nested-100000"])
def test_manifest_line_python_cannot_parse(world, tmp_path, capfd, text):
    line = b'{"audio_filepath": "g.wav", "duration": ' + text.encode() + b', "text": "x"}'
    manifest = _manifest_with(world, tmp_path, line)
    rc, out, err = _run(capfd, ["validate", manifest, "--lang", "de"])
    assert rc == 1 and f"{manifest}:3: bad_json:" in out, out
    rc, out, err = _run(capfd, ["evaluate", "--model", world.source, "--manifest", manifest, "--lang", "de",
                                "--device", "cpu", "--out", tmp_path / "eval"])
    _one_error(rc, err, f"{manifest}:3: not valid JSON")


@pytest.mark.parametrize("text", [_HUGE_INT, _DEEP, "[1, 2]"], ids=["int-5000-digits", "nested-100000", "array"])
@pytest.mark.parametrize("target", ["config", "vocab", "model-config", "summary"])
def test_json_files_python_cannot_take_are_one_line(world, tmp_path, capfd, text, target):
    if target == "config":
        path = tmp_path / "cfg.json"
        path.write_text(text, encoding="utf-8")
        argv = ["train", path, "--no-progress"]
    elif target == "vocab":
        path = tmp_path / "vocab.json"
        path.write_text(text, encoding="utf-8")
        argv = ["validate", world.manifest, "--lang", "de", "--vocab", path]
    elif target == "model-config":
        model = copy_model(world.source, tmp_path / "model")
        path = model / "config.json"
        path.write_text(text, encoding="utf-8")
        argv = ["transcribe", "--model", model, "--device", "cpu", world.good[0]]
    else:
        (tmp_path / "eval").mkdir()
        path = tmp_path / "eval" / "summary.json"
        path.write_text(text, encoding="utf-8")
        argv = ["report", path.parent, "--out", tmp_path / "report"]
    rc, out, err = _run(capfd, argv)
    _one_error(rc, err, path)


def test_duration_and_offset_python_cannot_turn_into_samples(world, tmp_path, capfd):
    """1e308 s is a finite float, but times the sample rate it is inf, which int() cannot take."""
    manifest = _manifest_with(world, tmp_path, {"audio_filepath": str(world.good[0]), "duration": 1e308,
                                                "text": GOOD_TEXT, "id": "long"})
    rc, out, err = _run(capfd, ["validate", manifest, "--lang", "de"])
    assert rc == 1 and f"{manifest}:3: duration_mismatch:" in out, out
    rc, out, err = _run(capfd, ["evaluate", "--model", world.source, "--manifest", manifest, "--lang", "de",
                                "--device", "cpu", "--out", tmp_path / "eval"])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert rc == 0 and [s["id"] for s in summary["skipped"]] == ["long"], err  # the file holds less than that
    manifest = _manifest_with(world, tmp_path, {"audio_filepath": str(world.good[0]), "duration": 0.5,
                                                "offset": 1e308, "text": GOOD_TEXT, "id": "far"})
    rc, out, err = _run(capfd, ["evaluate", "--model", world.source, "--manifest", manifest, "--lang", "de",
                                "--device", "cpu", "--out", tmp_path / "eval2"])
    summary = json.loads((tmp_path / "eval2" / "summary.json").read_text())
    assert rc == 0 and [s["id"] for s in summary["skipped"]] == ["far"], err
    assert "past the end" in summary["skipped"][0]["reason"] and len(summary["skipped"][0]["reason"]) < 200


def test_audio_loader_takes_any_finite_slice(world):
    from asr_transfer.audio import load_audio
    from asr_transfer.errors import AudioError

    assert len(load_audio(world.good[0], 0.0, 1e308)) == len(load_audio(world.good[0]))
    for offset, duration in ((1e308, 1.0), (float("nan"), None), (0.0, float("nan"))):
        with pytest.raises(AudioError):
            load_audio(world.good[0], offset, duration)


# ================================================================================================ strings
@pytest.mark.parametrize("field", ["text", "id", "speaker"])
def test_lone_surrogate_is_a_manifest_error_not_a_crash_while_writing(world, tmp_path, capfd, field):
    line = {"audio_filepath": str(world.good[0]), "duration": 0.8, "text": GOOD_TEXT, "id": "bad", "speaker": "s"}
    raw = json.dumps(line, ensure_ascii=False).replace(f'"{line[field]}"', '"x\\ud800y"', 1).encode("utf-8")
    manifest = _manifest_with(world, tmp_path, raw)
    rc, out, err = _run(capfd, ["validate", manifest, "--lang", "de"])
    assert rc == 1 and f"{manifest}:3: bad_value: '{field}' holds a lone UTF-16 surrogate" in out, out
    out_dir = tmp_path / "eval"
    rc, out, err = _run(capfd, ["evaluate", "--model", world.source, "--manifest", manifest, "--lang", "de",
                                "--device", "cpu", "--out", out_dir])
    _one_error(rc, err, f"{manifest}:3:", "surrogate")
    assert not (out_dir / "summary.json").exists() and not (out_dir / "utterances.jsonl").exists()


def test_nul_byte_in_audio_filepath(world, tmp_path, capfd):
    manifest = _manifest_with(world, tmp_path, {"audio_filepath": "a\u0000b.wav", "duration": 1.0, "text": "x"})
    rc, out, err = _run(capfd, ["validate", manifest, "--lang", "de"])
    assert rc == 1 and f"{manifest}:3: bad_value:" in out and "NUL" in out, out
    rc, out, err = _run(capfd, ["evaluate", "--model", world.source, "--manifest", manifest, "--lang", "de",
                                "--device", "cpu", "--out", tmp_path / "eval"])
    _one_error(rc, err, f"{manifest}:3:", "NUL")


def test_audio_file_whose_name_is_not_utf8(world, tmp_path, capfd):
    """Such a name reaches Python as surrogate escapes; libsndfile and the transcript file must get its own bytes."""
    name = os.fsdecode(b"bad\xff.wav")
    audio = tmp_path / name
    audio.write_bytes(world.good[0].read_bytes())
    rc, out, err = _run(capfd, ["transcribe", "--model", world.source, "--device", "cpu", "--format", "json",
                                "--out", tmp_path / "out", audio])
    assert rc == 0, err
    assert os.listdir(os.fsencode(tmp_path / "out")) == [b"bad\xff.json"]


def test_evaluation_files_are_never_half_written(tmp_path):
    """A row UTF-8 cannot hold fails before anything is written: the previous summary and rows stay a pair."""
    from asr_transfer.evaluation import write_evaluation

    write_evaluation(tmp_path, {"wer": 0.5}, [{"id": "a"}])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UnicodeEncodeError):
        write_evaluation(tmp_path, {"wer": 0.1}, [{"id": "a"}, {"id": "b\ud800"}])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ================================================================================================ output paths
def test_evaluate_out_that_is_a_file_fails_before_the_model_loads(world, tmp_path, capfd):
    out_file = tmp_path / "taken"
    out_file.write_text("mine", encoding="utf-8")
    rc, out, err = _run(capfd, ["evaluate", "--model", tmp_path / "no-such-model", "--manifest", world.manifest,
                                "--lang", "de", "--device", "cpu", "--out", out_file])
    _one_error(rc, err, out_file, "is a file")  # not the model error: the output is checked first
    assert out_file.read_text() == "mine"


def test_tune_lm_out_that_is_a_file_fails_before_the_model_loads(world, tmp_path, capfd):
    out_file = tmp_path / "taken"
    out_file.write_text("mine", encoding="utf-8")
    rc, out, err = _run(capfd, ["tune-lm", "--model", tmp_path / "no-such-model", "--manifest", world.manifest,
                                "--lm", tmp_path / "no-lm", "--device", "cpu", "--out", out_file])
    _one_error(rc, err, out_file, "is a file")


def test_transcribe_out_problems_are_found_before_any_work(world, tmp_path, capfd):
    blocked = tmp_path / "out"
    (blocked / "g1.txt").mkdir(parents=True)  # a folder where g1's transcript must go
    for out_dir, needle in ((blocked, blocked / "g1.txt"), (world.good[0], world.good[0]),
                            (Path("/proc/asr-transfer-out"), "cannot write")):
        rc, out, err = _run(capfd, ["transcribe", "--model", world.source, "--device", "cpu", "--out", out_dir,
                                    *world.good])
        _one_error(rc, err, needle, "--out")
        assert out == "" and not (blocked / "g0.txt").exists()  # nothing was transcribed, so nothing is lost


@pytest.mark.parametrize("case", ["file", "run.json-is-a-folder", "checkpoints-is-a-file"])
def test_train_output_dir_problems_are_found_before_the_run(world, tmp_path, capfd, case):
    run = tmp_path / "run"
    if case == "file":
        run.write_text("x", encoding="utf-8")
        bad = run
    else:
        run.mkdir()
        bad = run / case.split("-is-")[0]
        bad.mkdir() if case.endswith("folder") else bad.write_text("x", encoding="utf-8")
    rc, out, err = _run(capfd, ["train", _config(world, tmp_path / "cfg.json", run), "--no-progress"])
    _one_error(rc, err, bad, "train.output_dir")


def test_cli_turns_an_oserror_about_a_path_into_one_line(monkeypatch, capfd):
    import asr_transfer.commands.runs as runs_command

    def fail(args):
        raise IsADirectoryError(21, "Is a directory", "/data/out/summary.json")

    monkeypatch.setattr(runs_command, "run", fail)
    rc, out, err = _run(capfd, ["runs"])
    assert _one_error(rc, err) == "error: /data/out/summary.json: Is a directory"

    def bug(args):
        raise OSError(5, "Input/output error")  # names no path: not the user's to fix, a traceback

    monkeypatch.setattr(runs_command, "run", bug)
    with pytest.raises(OSError):
        main(["runs"])


def test_cli_oserror_from_a_real_command(world, tmp_path, capfd):
    """A report whose --out lies under a file: mkdir fails inside the command, the user sees one line."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(json.dumps({"name": "e", "wer": 0.1, "cer": 0.1}))
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="utf-8")
    rc, out, err = _run(capfd, ["report", tmp_path / "eval", "--out", blocker / "report"])
    _one_error(rc, err, blocker)


# ================================================================================================ checksums
@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00garbage", b"[" * 100_000, b'["model.safetensors"]'],
                         ids=["not-utf8", "nested-100000", "a-list"])
def test_garbage_checksums_fall_back_to_the_previous_checkpoint(world, tmp_path, capfd, garbage):
    from asr_transfer.config import TrainConfig, load_config
    from asr_transfer.training.loop import train

    cfg = _config(world, tmp_path / "cfg.json", tmp_path / "run", train={"save_every": 1, "keep_last": 3},
                  stages=[{"name": "head", "train": ["head"], "lr": 1e-3, "steps": 4}])
    train(load_config(TrainConfig, cfg), progress=False, stop_after_steps=2)  # checkpoints step-1, step-2
    capfd.readouterr()
    (tmp_path / "run" / "checkpoints" / "step-2" / "checksums.json").write_bytes(garbage)
    rc, out, err = _run(capfd, ["train", cfg, "--resume", "--no-progress", "--stop-after-steps", "1"])
    assert rc == 0, err
    assert "step-2: checksum mismatch or incomplete checkpoint; skipping it" in out + err
    assert "resuming from step-1" in out + err


# ================================================================================================ config values
@pytest.mark.parametrize("override, key", [
    ("train.seed=-1", "train.seed"), (f"train.seed={10**23}", "train.seed"), ("train.num_threads=-3", "num_threads"),
    ("augment.dropout=2.0", "augment.dropout"), ("augment.mask_time_prob=2.0", "mask_time_prob"),
    ("augment.mask_feature_prob=nan", "mask_feature_prob"), ("augment.layerdrop=1.0", "layerdrop"),
    ("data.max_batch_s=inf", "max_batch_s"), ("train.log_every=0", "log_every"),
    ("data.speed_perturb=[inf]", "speed_perturb"),
    ("train.clip_norm=-1.0", "clip_norm"), ("augment.mask_time_length=0", "mask_time_length"),
    ("stages.0.lr=1e38", "lr must be"), ("stages.0.weight_decay=inf", "weight_decay"),
])
def test_config_values_out_of_range_fail_before_the_run_folder_exists(world, tmp_path, capfd, override, key):
    run = tmp_path / "run"
    cfg = _config(world, tmp_path / "cfg.json", run)
    rc, out, err = _run(capfd, ["train", cfg, "--no-progress", "--set", override])
    _one_error(rc, err, cfg, key)
    assert not run.exists()


def test_config_top_level_must_be_a_table(world, tmp_path, capfd):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps([{"model": {}}]), encoding="utf-8")
    rc, out, err = _run(capfd, ["train", cfg, "--no-progress"])
    _one_error(rc, err, cfg, "top level")


# ================================================================================================ report, prepare
@pytest.mark.parametrize("change", [{"wer": "0.25"}, {"n_utterances": "3"}, {"cer_ci95": ["0.1", "0.2"]}])
def test_report_on_a_summary_whose_numbers_are_strings(tmp_path, capfd, change):
    folder = tmp_path / "eval"
    folder.mkdir()
    summary = {"name": "e", "wer": 0.3, "cer": 0.1, "n_utterances": 3, "wer_ci95": [0.2, 0.4], "cer_ci95": [0, 0.2]}
    (folder / "summary.json").write_text(json.dumps({**summary, **change}), encoding="utf-8")
    rc, out, err = _run(capfd, ["report", folder, "--out", tmp_path / "report"])
    _one_error(rc, err, folder / "summary.json", f"'{next(iter(change))}' must be")


@pytest.mark.parametrize("change", [{"hits": "3"}, {"ref_len": None}, {"id": ["a"]}])
def test_report_on_utterance_rows_of_the_wrong_type(tmp_path, capfd, change):
    folders = []
    for name in ("a", "b"):  # two systems, so rows are paired by id and their counts summed
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"name": name, "wer": 0.3, "cer": 0.1}), encoding="utf-8")
        row = {"id": "u1", "ref": "das haus", "hyp": "das", "substitutions": 0, "deletions": 1, "insertions": 0,
               "hits": 1, "ref_len": 2, "char_errors": 5, "char_ref_len": 8, "alignment": []}
        (folder / "utterances.jsonl").write_text(json.dumps({**row, **(change if name == "b" else {})}) + "\n")
        folders.append(folder)
    rc, out, err = _run(capfd, ["report", *folders, "--out", tmp_path / "report"])
    _one_error(rc, err, folders[1] / "utterances.jsonl", f"'{next(iter(change))}' must be")


@pytest.mark.parametrize("delimiter", [";;", '"', "\\n"])
def test_prepare_tabular_with_a_delimiter_csv_cannot_take(world, tmp_path, capfd, delimiter):
    table = tmp_path / "list.txt"
    table.write_text(f"path;;text\n{world.good[0]};;das haus\n", encoding="utf-8")
    rc, out, err = _run(capfd, ["prepare", "tabular", table, "--lang", "de", "--out", tmp_path / "out",
                                "--delimiter", delimiter.replace("\\n", "\n")])
    _one_error(rc, err, table, "--delimiter")


def test_row_with_a_tab_inside_the_text_is_skipped_and_counted_not_cut(world, tmp_path):
    from asr_transfer.corpora.commonvoice import prepare_commonvoice
    from asr_transfer.corpora.splits import FIELD_COUNT_SKIP
    from asr_transfer.corpora.tabular import prepare_tabular
    from asr_transfer.manifest import read_manifest

    clips = tmp_path / "cv" / "de" / "clips"
    clips.mkdir(parents=True)
    rows = []
    for i, sentence in enumerate(["Das Haus.", "Guten\tMorgen.", "Die Straße."]):
        write_audio(clips / f"c{i}.wav", tone(0.8))
        rows.append(f"s{i}\tc{i}.wav\t{sentence}\t2\t0\t\t\tde")
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\tlocale"
    (clips.parent / "train.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    summary = prepare_commonvoice(clips.parent, tmp_path / "cv-out", "de", splits=("train",))
    assert summary.skipped == {FIELD_COUNT_SKIP: 1}
    assert [u.text for u in read_manifest(tmp_path / "cv-out" / "train.jsonl")] == ["Das Haus.", "Die Straße."]

    table = tmp_path / "list.tsv"
    table.write_text("path\ttext\n" + "".join(f"{clips / f'c{i}.wav'}\t{t}\n" for i, t in
                                               enumerate(["eins", "zwei\tdrei", "vier"])), encoding="utf-8")
    summary = prepare_tabular(table, tmp_path / "tab-out", "de", fractions={"train": 1.0})
    assert summary.skipped == {FIELD_COUNT_SKIP: 1}
    assert sorted(u.text for u in read_manifest(tmp_path / "tab-out" / "train.jsonl")) == ["eins", "vier"]


# ================================================================================================ silent results
@pytest.mark.parametrize("override, key", [("train.output_dir=", "train.output_dir"),
                                           ("train.output_dir=' '", "train.output_dir"),
                                           ("model.source=", "model.source")])
def test_empty_paths_in_the_config_are_errors(world, tmp_path, capfd, monkeypatch, override, key):
    monkeypatch.chdir(tmp_path)  # an empty output_dir is the current folder: the run would land here
    (tmp_path / "run.json").write_text("precious", encoding="utf-8")
    rc, out, err = _run(capfd, ["train", _config(world, tmp_path / "cfg.json", tmp_path / "run"), "--no-progress",
                                "--set", override])
    _one_error(rc, err, key, "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "run.json"]
    assert (tmp_path / "run.json").read_text() == "precious"


@pytest.mark.parametrize("offset", [False, "", []], ids=["false", "empty-string", "empty-list"])
def test_wrong_typed_offset_is_an_error_not_zero(world, tmp_path, capfd, offset):
    manifest = _manifest_with(world, tmp_path, {"audio_filepath": str(world.good[0]), "duration": 0.8,
                                                "text": GOOD_TEXT, "id": "bad", "offset": offset})
    rc, out, err = _run(capfd, ["validate", manifest, "--lang", "de"])
    assert rc == 1 and f"{manifest}:3: wrong_type: 'offset' must be a number" in out, out
    rc, out, err = _run(capfd, ["evaluate", "--model", world.source, "--manifest", manifest, "--lang", "de",
                                "--device", "cpu", "--out", tmp_path / "eval"])
    _one_error(rc, err, f"{manifest}:3: 'offset' must be a number")


@pytest.mark.parametrize("tensor", ["lm_head.weight", "wav2vec2.encoder.layers.1.attention.k_proj.weight",
                                    "wav2vec2.feature_extractor.conv_layers.0.conv.weight"])
def test_model_with_nan_weights_is_refused_not_transcribed_to_nothing(world, tmp_path, capfd, tensor):
    model = model_with_nan_weights(world.source, tmp_path / "nan", tensor)
    rc, out, err = _run(capfd, ["transcribe", "--model", model, "--device", "cpu", world.good[0]])
    _one_error(rc, err, model / "model.safetensors", "NaN/inf", tensor)
    assert out == ""


def test_source_model_with_nan_head_is_refused_by_train(world, tmp_path, capfd):
    model = model_with_nan_weights(world.source, tmp_path / "nan")
    cfg = _config(world, tmp_path / "cfg.json", tmp_path / "run", model={"source": str(model)})
    rc, out, err = _run(capfd, ["train", cfg, "--no-progress"])
    _one_error(rc, err, model / "model.safetensors", "NaN/inf")


@pytest.mark.parametrize("changes, key", [
    ({"num_hidden_layers": -1}, "num_hidden_layers"), ({"hidden_size": 0}, "hidden_size"),
    ({"conv_stride": [5, 2, 0, 2, 2, 2, 2]}, "conv_stride"), ({"hidden_dropout": 2.0}, "hidden_dropout"),
])
def test_impossible_architecture_is_refused(world, tmp_path, capfd, changes, key):
    model = model_with_config(world.source, tmp_path / "bad", **changes)
    rc, out, err = _run(capfd, ["transcribe", "--model", model, "--device", "cpu", world.good[0]])
    line = _one_error(rc, err, model / "config.json", key)
    assert "LOAD REPORT" not in err and len(err.strip().splitlines()) == 1, line


def test_load_report_table_stays_out_of_stderr(world, tmp_path, capfd):
    """Weights the config does not use: one warning line of ours, not the library's table."""
    import torch
    from safetensors.torch import load_file, save_file

    model = copy_model(world.source, tmp_path / "extra")
    weights = load_file(str(model / "model.safetensors"))
    weights["wav2vec2.encoder.layers.9.final_layer_norm.weight"] = torch.ones(32)
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    rc, out, err = _run(capfd, ["transcribe", "--model", model, "--device", "cpu", world.good[0]])
    assert rc == 0, err
    assert "LOAD REPORT" not in err and "layers.9" in err
    assert [line for line in err.splitlines() if line.strip()] == [line for line in err.splitlines()
                                                                  if line.startswith("warning:")]


# ================================================================================================ resume gaps
def test_what_a_killed_folder_write_leaves_is_cleaned_up(tmp_path):
    """Every state a kill inside atomic_folder_write can leave: the model is never lost, no stray folder stays."""
    from asr_transfer.files import recover_folder_write

    def folder(path: Path, text: str) -> Path:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_text(text)
        return path

    best = tmp_path / "best"
    folder(tmp_path / ".best.tmp-a1", "half")  # killed while writing: best/ intact
    folder(best, "old")
    recover_folder_write(best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"] and (best / "model.safetensors").read_text() == "old"

    (best / "model.safetensors").rename(tmp_path / "keep")
    best.rmdir()  # killed between setting best/ aside and moving the new one in
    folder(tmp_path / ".best.old-b2" / "best", "old")
    folder(tmp_path / ".best.tmp-c3", "new")
    recover_folder_write(best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "keep"]
    assert (best / "model.safetensors").read_text() == "old"

    folder(tmp_path / ".best.old-d4" / "best", "older")  # killed after the swap, before the old one was deleted
    recover_folder_write(best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "keep"]
    assert (best / "model.safetensors").read_text() == "old"


def test_finished_run_leaves_no_stray_folder_after_killed_final_and_best_saves(world, tmp_path, capfd):
    run = tmp_path / "run"
    for name in (".final.tmp-x1", ".best.tmp-x2", ".final.old-x3/final", "checkpoints/.step-1.tmp-99"):
        (run / name).mkdir(parents=True)
    dev = write_manifest_lines(tmp_path / "dev.jsonl", world.lines)
    cfg = _config(world, tmp_path / "cfg.json", run, data={"dev_manifest": str(dev)})
    rc, out, err = _run(capfd, ["train", cfg, "--no-progress", "--resume"])
    assert rc == 0, err
    stray = [p.relative_to(run) for p in run.rglob(".*") if p.is_dir()]
    assert not stray, stray
    assert (run / "final" / "model.safetensors").is_file() and (run / "best" / "model.safetensors").is_file()


def _paused_run(world, tmp_path, vocab: Path, source: Path) -> Path:
    from asr_transfer.config import TrainConfig, load_config
    from asr_transfer.training.loop import train

    cfg = _config(world, tmp_path / "cfg.json", tmp_path / "run", train={"save_every": 1},
                  model={"vocab": str(vocab), "source": str(source)},
                  stages=[{"name": "head", "train": ["head"], "lr": 1e-3, "steps": 3}])
    train(load_config(TrainConfig, cfg), progress=False, stop_after_steps=1)
    return cfg


@pytest.mark.parametrize("change", ["vocab-ids", "source-weights", "source-config"])
def test_changed_vocabulary_or_source_model_refuses_resume(world, tmp_path, capfd, change):
    vocab = tmp_path / "vocab.json"
    vocab.write_bytes(world.vocab.read_bytes())
    source = copy_model(world.source, tmp_path / "src")
    cfg = _paused_run(world, tmp_path, vocab, source)
    if change == "vocab-ids":  # the same tokens, two letters' ids swapped: the head's rows now mean other letters
        tokens = json.loads(vocab.read_text(encoding="utf-8"))
        tokens["a"], tokens["b"] = tokens["b"], tokens["a"]
        vocab.write_text(json.dumps(tokens), encoding="utf-8")
    elif change == "source-weights":
        make_source_model(tmp_path / "other", seed=1)
        (source / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    else:
        config = json.loads((source / "config.json").read_text())
        config["hidden_dropout"] = 0.3
        (source / "config.json").write_text(json.dumps(config))
    rc, out, err = _run(capfd, ["train", cfg, "--resume", "--no-progress"])
    what = "the target vocabulary changed" if change.startswith("vocab") else "the source model (its weights or config)"
    _one_error(rc, err, what, "changed (fingerprint)", "--allow-inexact-resume")


def test_reformatted_vocabulary_still_resumes(world, tmp_path, capfd):
    vocab = tmp_path / "vocab.json"
    vocab.write_bytes(world.vocab.read_bytes())
    cfg = _paused_run(world, tmp_path, vocab, world.source)
    vocab.write_text(json.dumps(json.loads(vocab.read_text(encoding="utf-8")), indent=4), encoding="utf-8")
    rc, out, err = _run(capfd, ["train", cfg, "--resume", "--no-progress"])
    assert rc == 0, err
