"""Experiment management: run.json records, `runs` listing/compare, `reproduce` (tiny CPU runs, seconds each)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from train_fixtures import make_corpus, make_source_model

STAGES = [{"name": "head", "train": ["head"], "lr": 1e-3, "steps": 2},
          {"name": "top", "train": ["head", "layers.-1:"], "lr": 1e-3, "steps": 2}]


def _config(root: Path, source: Path, train: Path, dev: Path, name: str, *overrides: str):
    from asr_transfer.config import TrainConfig, load_config

    base = {"model": {"source": str(source), "lang": "de"},
            "data": {"train_manifest": str(train), "dev_manifest": str(dev), "max_batch_s": 4.0, "max_utt_s": 2.0},
            "augment": {"mask_time_prob": 0.2, "mask_time_length": 2},
            "train": {"output_dir": str(root / name), "eval_every": 2, "save_every": 100, "log_every": 1},
            "stages": STAGES}
    return load_config(TrainConfig, None, list(overrides), base=base)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny corpus + source and two finished 4-step runs that differ only in the second stage's lr."""
    from asr_transfer.training.loop import train

    d = tmp_path_factory.mktemp("runs")
    train_m, dev_m = make_corpus(d / "corpus", n_train=6, n_dev=3)
    src = make_source_model(d / "src")
    root = d / "runs"
    for name, lr in (("a", "1e-3"), ("b", "5e-4")):
        train(_config(root, src, train_m, dev_m, name, f"stages.1.lr={lr}"), progress=False)
    return {"root": root, "src": src, "train": train_m, "dev": dev_m, "a": root / "a", "b": root / "b"}


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from asr_transfer.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_json_records_code_environment_data_source_and_metrics(world):
    from asr_transfer.manifest import fingerprint

    rec = json.loads((world["a"] / "run.json").read_text())
    summary = json.loads((world["a"] / "train_summary.json").read_text())
    assert rec["schema"] == 1 and rec["kind"] == "train" and rec["status"] == "finished"
    assert set(rec["code"]) == {"package_version", "commit", "dirty"}
    assert rec["environment"]["versions"]["torch"] and rec["environment"]["versions"]["transformers"]
    assert rec["environment"]["device"] == "cpu" and rec["environment"]["versions"]["python"]
    assert rec["manifests"]["train"]["fingerprint"] == fingerprint(world["train"])
    assert rec["manifests"]["dev"]["fingerprint"] == fingerprint(world["dev"])
    weights = (world["src"] / "model.safetensors").read_bytes()
    assert rec["source"]["kind"] == "local" and rec["source"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert rec["config"]["stages"][1]["lr"] == pytest.approx(1e-3) and rec["stages"] == ["head", "top"]
    assert rec["metrics"]["final_dev_cer"] == summary["final_dev"]["cer"] and rec["metrics"]["steps"] == 4
    assert rec["data"]["train_utterances"] == 6 and rec["data"]["train_minutes"] > 0
    assert rec["wall_s"] > 0 and len(rec["invocations"]) == 1 and isinstance(rec["argv"], list)


def test_runs_lists_both_runs_and_compare_shows_only_the_lr(world, capsys):
    rc, out, _ = _cli(capsys, "runs", world["root"])
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["name", "date", "kind", "source", "lang"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {str(world["a"]), str(world["b"])}
    assert rows[str(world["a"])][3:5] == ["train", str(world["src"])]  # the date takes two fields
    assert "head,top" in rows[str(world["a"])]
    assert rows[str(world["a"])][-3] == "-"  # no test evaluation yet: test_wer is missing

    rc, out, _ = _cli(capsys, "runs", world["root"], "--filter", "stages.1.lr=5e-4", "--json")
    listed = json.loads(out)
    assert [r["name"] for r in listed] == [str(world["b"])] and listed[0]["dev_cer"] is not None
    rc, out, _ = _cli(capsys, "runs", world["root"], "--filter", "name~/b", "--filter", "kind=train", "--json")
    assert [r["name"] for r in json.loads(out)] == [str(world["b"])]

    rc, out, _ = _cli(capsys, "runs", "compare", world["a"], world["b"], "--json")
    cmp = json.loads(out)
    assert cmp["config"] == [["stages.1.lr", [0.001, 0.0005]]]  # output_dir names the run: never a "difference"
    metrics = {k: (v, d) for k, v, d in cmp["metrics"]}
    a_cer, b_cer = metrics["final_dev_cer"][0]
    assert metrics["final_dev_cer"][1] == [0.0, pytest.approx(b_cer - a_cer)]
    rc, out, _ = _cli(capsys, "runs", "compare", world["a"], world["b"])
    assert "stages.1.lr  0.001" in out and "train.output_dir" not in out and "final_dev_cer" in out


def test_compare_report_builds_html(world, tmp_path, capsys):
    rc, out, _ = _cli(capsys, "runs", "compare", world["a"], world["b"], "--report", tmp_path / "rep")
    assert rc == 0 and (tmp_path / "rep" / "report.html").is_file()


def test_reproduce_gives_the_same_metrics(world, capsys):
    rc, out, err = _cli(capsys, "reproduce", world["a"], "--out", world["root"] / "a-again", "--no-progress")
    assert rc == 0
    assert "manifest" not in err and "source model" not in err
    new = json.loads((world["root"] / "a-again" / "run.json").read_text())
    old = json.loads((world["a"] / "run.json").read_text())
    for key in ("final_dev_cer", "final_dev_wer", "final_dev_loss", "best_dev_cer"):
        assert new["metrics"][key] == pytest.approx(old["metrics"][key], abs=1e-6)
    assert new["reproduces"]["run"] == str(world["a"].resolve())
    table = [line.split() for line in out.splitlines() if line.startswith("final_dev_loss")]
    assert table and table[0][-1] in ("+0", "-0")


def test_changing_one_manifest_line_changes_fingerprint_and_reproduce_warns(world, capsys):
    from asr_transfer.manifest import fingerprint

    dev = world["dev"]
    original = dev.read_bytes()
    before = fingerprint(dev)
    lines = original.decode().splitlines(keepends=True)
    row = json.loads(lines[1])
    row["text"] = row["text"] + " noch"
    try:
        dev.write_text("".join([lines[0], json.dumps(row, ensure_ascii=False) + "\n", *lines[2:]]), encoding="utf-8")
        after = fingerprint(dev)
        assert after != before
        rc, out, err = _cli(capsys, "reproduce", world["a"], "--check")
        assert rc == 0 and "nothing was run" in out
        warned = [line for line in err.splitlines() if "dev manifest" in line]
        assert warned == [f"warning: dev manifest {dev} changed since the run (fingerprint {before} -> {after})"]
    finally:
        dev.write_bytes(original)
    assert fingerprint(dev) == before
    rc, out, err = _cli(capsys, "reproduce", world["a"], "--check")
    assert "manifest" not in err


def test_evaluation_is_recorded_updates_its_run_and_reproduces(world, capsys):
    from asr_transfer.evaluation import evaluate

    out = world["b"] / "eval" / "test"
    summary = evaluate(str(world["b"] / "final"), world["dev"], out_dir=out, device="cpu")
    rec = json.loads((out / "run.json").read_text())
    assert rec["kind"] == "evaluate" and rec["status"] == "finished" and rec["reproducible"] is True
    assert rec["options"]["model"] == str(world["b"] / "final") and rec["options"]["device"] == "cpu"
    assert rec["metrics"]["test_wer"] == summary["wer"] and rec["manifests"]["test"]["fingerprint"]
    parent = json.loads((world["b"] / "run.json").read_text())
    assert parent["metrics"]["test_wer"] == summary["wer"]  # the training run's record picks up its test WER

    rc, listing, _ = _cli(capsys, "runs", world["root"], "--filter", "kind=train", "--json")
    by_name = {r["name"]: r for r in json.loads(listing)}
    assert by_name[str(world["b"])]["test_wer"] == summary["wer"]

    rc, text, _ = _cli(capsys, "reproduce", out, "--out", world["root"] / "eval-again")
    again = json.loads((world["root"] / "eval-again" / "summary.json").read_text())
    assert rc == 0 and again["wer"] == summary["wer"] and again["cer"] == summary["cer"]
    rc, _, err = _cli(capsys, "reproduce", out, "--set", "beam=3", "--check")
    assert rc == 1 and err.startswith("error: --set") and len(err.splitlines()) == 1


def test_baseline_is_one_record_listed_through_its_parts(world, tmp_path, capsys):
    from asr_transfer.evaluation import baseline

    out = tmp_path / "exp" / "base"
    results = baseline(str(world["src"]), world["dev"], lang="de", out_dir=out, device="cpu")
    rec = json.loads((out / "run.json").read_text())
    assert rec["kind"] == "baseline" and rec["parts"] == ["raw", "zero-shot"] and rec["options"]["lang"] == "de"
    assert rec["metrics"]["zero-shot.wer"] == results["zero-shot"]["wer"]
    assert json.loads((out / "raw" / "run.json").read_text())["parent"] == ".."
    rc, listing, _ = _cli(capsys, "runs", tmp_path / "exp", "--json")
    assert sorted((r["name"], r["kind"]) for r in json.loads(listing)) == [
        (str(out / "raw"), "baseline"), (str(out / "zero-shot"), "baseline")]
    rc, text, _ = _cli(capsys, "reproduce", out / "zero-shot", "--check")
    assert rc == 0 and str(out) in text  # a part reproduces through its baseline


def test_paused_and_resumed_run_keeps_one_record_with_two_invocations(world, tmp_path):
    from asr_transfer.training.loop import train

    cfg = _config(tmp_path, world["src"], world["train"], world["dev"], "r")
    train(cfg, progress=False, stop_after_steps=2)
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["status"] == "paused" and rec["invocations"][0]["status"] == "paused"
    train(cfg, resume=True, progress=False)
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["status"] == "finished" and [i["status"] for i in rec["invocations"]] == ["paused", "finished"]
    assert rec["wall_s"] == pytest.approx(sum(i["wall_s"] for i in rec["invocations"]), abs=1e-3)


def test_without_git_the_commit_is_null_and_reproduce_says_so(world, tmp_path, monkeypatch, capsys):
    from asr_transfer import provenance

    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable anywhere
    assert provenance.code_state()["commit"] is None
    provenance.begin(tmp_path / "x", "evaluate", options={})
    assert json.loads((tmp_path / "x" / "run.json").read_text())["code"]["commit"] is None
    rc, _, err = _cli(capsys, "reproduce", world["a"], "--check")
    assert rc == 0 and "warning: code version unknown" in err


def test_source_identity_of_a_hub_id_reads_the_cached_commit(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from asr_transfer.provenance import source_identity

    refs = tmp_path / "models--facebook--wav2vec2-base-960h" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("22aad52d435eb6dbaf354bdad9b0da84ce7d6156")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    ident = source_identity("facebook/wav2vec2-base-960h")
    assert ident == {
        "id": "facebook/wav2vec2-base-960h",
        "kind": "hub",
        "revision": "22aad52d435eb6dbaf354bdad9b0da84ce7d6156",
    }
    assert source_identity("org/never-downloaded")["revision"] is None


def test_filters_sorting_and_bad_input(world, capsys):
    from asr_transfer.runs import flatten, format_duration, parse_filter

    assert flatten({"a": {"b": [1, 2]}, "s": [{"lr": 1}]}) == {"a.b": [1, 2], "s.0.lr": 1}
    assert parse_filter("test_wer<0.3") == ("test_wer", "<", "0.3")
    assert [format_duration(s) for s in (5.04, 125, 3725)] == ["5.0s", "2m05s", "1h02m"]
    rc, out, _ = _cli(capsys, "runs", world["root"], "--filter", "kind=train", "--sort", "stages.1.lr", "--json")
    names = [r["name"] for r in json.loads(out)]
    assert names.index(str(world["b"])) < names.index(str(world["a"]))
    rc, out, _ = _cli(
        capsys, "runs", world["root"], "--filter", "kind=train", "--sort", "stages.1.lr", "--desc", "--json"
    )
    names = [r["name"] for r in json.loads(out)]
    assert names.index(str(world["a"])) < names.index(str(world["b"]))
    for argv, msg in (
        (["runs", world["root"] / "missing"], "no such folder"),
        (["runs", "--filter", "x"], "--filter"),
        (["runs", "compare", world["a"]], "at least two"),
        (["reproduce", world["root"]], "not a run folder"),
    ):
        rc, _, err = _cli(capsys, *argv)
        assert rc == 1 and msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(__import__("importlib").util.find_spec("mlflow") is not None, reason="mlflow is installed")
def test_mlflow_tracking_without_mlflow_is_one_line_error(world, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "model": {"source": str(world["src"]), "lang": "de"},
                "data": {"train_manifest": str(world["train"]), "max_batch_s": 4.0, "max_utt_s": 2.0},
                "train": {"output_dir": str(tmp_path / "m"), "tracking": "mlflow"},
                "stages": STAGES[:1],
            }
        )
    )
    rc, _, err = _cli(capsys, "train", cfg, "--no-progress")
    assert rc == 1 and err.strip().splitlines() == [
        "error: train.tracking = mlflow needs the mlflow package: pip install 'asr-transfer[mlflow]'"]


def test_audio_content_hashes_survive_touching_the_audio(world, tmp_path, monkeypatch):
    import os
    import shutil

    from asr_transfer import provenance

    corpus = tmp_path / "corpus"
    shutil.copytree(world["dev"].parent, corpus)
    manifest = corpus / "dev.jsonl"
    monkeypatch.setenv(provenance.HASH_AUDIO_ENV, "1")
    record = {"manifests": {"dev": provenance.manifest_entry(manifest)}}
    assert record["manifests"]["dev"]["audio_content"]
    wav = next((corpus / "wav").glob("*.wav"))
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))  # same bytes, new mtime
    stat_only = provenance.check_against(record, {"dev": str(manifest)}, None, hash_audio=False)
    assert [w for w in stat_only if "fingerprint" in w]
    by_content = provenance.check_against(record, {"dev": str(manifest)}, None, hash_audio=True)
    assert not [w for w in by_content if "manifest" in w]
    wav.write_bytes(wav.read_bytes()[:-2] + b"\x01\x02")  # one sample changed
    changed = provenance.check_against(record, {"dev": str(manifest)}, None, hash_audio=True)
    assert [w for w in changed if "audio content hash" in w]


def test_a_command_that_fails_records_how_it_ended(world, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(bad), "duration": 1.0, "text": "hallo"}) + "\n")
    out = tmp_path / "eval"
    rc, _, err = _cli(capsys, "evaluate", "--model", world["b"] / "final", "--manifest", manifest, "--out", out,
                      "--device", "cpu")
    assert rc == 1 and "could be read" in err
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "failed" and rec["invocations"][-1]["status"] == "failed"
    assert rec["error"].startswith("UserError: ") and "could be read" in rec["error"]
    rc, listing, _ = _cli(capsys, "runs", tmp_path, "--json")
    assert [r["status"] for r in json.loads(listing)] == ["failed"]


def test_record_failure_closes_only_this_process_s_open_records(tmp_path):
    from asr_transfer import provenance

    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for folder in (mine, theirs):
        folder.mkdir()
        provenance.begin(folder, "evaluate")
    record = provenance.read_record(theirs)
    record["invocations"][-1]["pid"] = 1  # resumed by another process since
    provenance.write_record(theirs, record)
    assert provenance.record_failure(SystemExit(0)) == []  # a clean exit is no failure
    assert provenance.record_failure(KeyboardInterrupt()) == [mine.resolve()]
    assert provenance.read_record(mine)["status"] == "interrupted"
    assert provenance.read_record(mine)["error"] == "KeyboardInterrupt"
    assert provenance.read_record(theirs)["status"] == "running"
    assert provenance.record_failure(RuntimeError("late")) == []  # nothing is left open
    provenance.begin(mine, "evaluate", resume=True)  # a rerun of a failed folder starts clean
    assert provenance.read_record(mine)["status"] == "running" and "error" not in provenance.read_record(mine)
    provenance.finish(mine)
