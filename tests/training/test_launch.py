"""train.processes > 1: ``train()`` starts the DDP workers itself (torch.distributed.run, gloo on CPU)."""
from __future__ import annotations

import json

import pytest
from train_fixtures import make_corpus, make_source_model, tiny_config

from asr_transfer.errors import UserError
from asr_transfer.training import launch
from asr_transfer.training.loop import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    train_m, dev_m = make_corpus(d)
    return make_source_model(d / "src"), train_m, dev_m


def test_two_processes_train_through_the_plain_function_and_resume(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(launch.Path(__file__).resolve().parents[2]))
    cfg = tiny_config(tmp_path, *corpus, **{"train.processes": 2, "train.num_threads": 1})
    paused = train(cfg, progress=False, stop_after_steps=4)
    assert paused.name == "checkpoints" and any(paused.glob("step-*"))
    final = train(cfg, resume=True, progress=False)
    assert final == tmp_path / "run" / "final" and (final / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["processes"] == 2
    assert 0 < summary["cpu_s"]  # summed over both workers: how many cores the run kept busy, with wall_s
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "finished"


def test_a_failing_worker_is_one_user_error_naming_the_run(tmp_path, corpus):
    cfg = tiny_config(tmp_path, *corpus, **{"train.processes": 2, "data.train_manifest": str(tmp_path / "none.jsonl")})
    with pytest.raises(UserError, match="2 training processes failed") as info:
        train(cfg, progress=False)
    assert str(tmp_path / "run") in str(info.value) and "\n" not in str(info.value)


def test_threads_are_shared_among_the_workers_unless_set(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(launch.torch, "get_num_threads", lambda: 4)
    assert launch.threads_per_process(tiny_config(tmp_path, *corpus, **{"train.processes": 2})) == 2
    assert launch.threads_per_process(tiny_config(tmp_path, *corpus, **{"train.processes": 8})) == 1
    cfg = tiny_config(tmp_path, *corpus, **{"train.processes": 2, "train.num_threads": 3})
    assert launch.threads_per_process(cfg) == 3
