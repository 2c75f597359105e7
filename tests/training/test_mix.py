"""Replay (train.mix): the mixed sampler, replay through the one head, exact resume, caching with clashing ids."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_replay_corpus, tiny_config

from asr_transfer.manifest import read_manifest, write_manifest
from asr_transfer.training.data import BucketSampler
from asr_transfer.training.mix import MixSampler, letters_outside

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_replay_corpus(tmp_path_factory.mktemp("corpus"))


def _cfg(tmp: Path, corpus, **over):
    source, train, dev, eng = corpus
    return tiny_config(tmp, source, train, dev, **{"train.mix.manifest": str(eng), "train.mix.share": "0.4", **over})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_mix_sampler_takes_the_share_walks_the_stream_and_is_a_function_of_seed_and_epoch():
    rng = np.random.default_rng(0)
    target, replay = rng.uniform(1, 5, 200), rng.uniform(1, 5, 300)
    s = MixSampler(target, replay, 20.0, 0.25, seed=3)
    n = len(target)
    want = target.sum() * 0.25 / 0.75
    seen = []
    for epoch in range(5):
        batches = s.batches(epoch)
        flat = [i for b in batches for i in b]
        assert sorted(i for i in flat if i < n) == list(range(n)), "every target utterance once per epoch"
        got = sum(replay[i - n] for i in flat if i >= n)
        assert abs(got - want) <= replay.max(), (epoch, got, want)  # within one utterance of the asked share
        durations = np.concatenate([target, replay])
        assert all(max(durations[b]) * len(b) <= 20.0 for b in batches)
        assert batches == MixSampler(target, replay, 20.0, 0.25, seed=3).batches(epoch)  # resume regenerates it
        seen.append([i for i in flat if i >= n])
    # The stream walks on: epochs 0 and 1 replay different utterances (S < the replay set), and five epochs of
    # S = 1/3 x 600 s reach past one pass over the 900 s replay set, so they replay every utterance.
    assert not set(seen[0]) & set(seen[1])
    assert len(set().union(*seen)) == len(replay)
    assert s.batches(0) != MixSampler(target, replay, 20.0, 0.25, seed=4).batches(0)


def test_bucket_sampler_without_subset_is_unchanged_by_the_subset_argument():
    d = np.random.default_rng(1).uniform(1, 5, 50)
    b = BucketSampler(d, 12.0, seed=2)
    assert b.batches(1) == b.batches(1, np.arange(50))


def test_letters_outside_the_head_are_counted():
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4}
    assert letters_outside(["ab a", "abc", "it's"], vocab) == {"c": 1, "i": 1, "t": 1, "'": 1, "s": 1}


def test_mixed_run_replays_its_share_and_reports_letters_outside_the_head(tmp_path, corpus):
    from asr_transfer.training.loop import train

    train(_cfg(tmp_path, corpus), progress=False)
    run = tmp_path / "run"
    summary = json.loads((run / "train_summary.json").read_text())
    mix = summary["mix"]
    assert mix["replay_utterances"] == 9  # 12 minus the three "it's cool"
    assert mix["replay_skipped"]["by_reason"] == {"characters not in vocabulary": 3}
    assert mix["letters_outside_head"] == {"'": 3}
    assert 0.25 < mix["share_trained"] < 0.55  # 0.4 asked; a tiny corpus rounds to whole utterances
    assert summary["train_utterances"] == 18  # the target's, replay counted apart
    assert json.loads((run / "run.json").read_text())["mix"]["share_trained"] == mix["share_trained"]
    logged = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "replay_share" in r]
    assert logged and logged[-1]["replay_share"] == mix["share_trained"]


def test_interrupted_mixed_run_resumes_to_the_same_weights(tmp_path, corpus):
    from asr_transfer.training.loop import train

    train(_cfg(tmp_path / "ref", corpus), progress=False)
    cfg = _cfg(tmp_path / "int", corpus)
    train(cfg, progress=False, stop_after_steps=3)  # mid-stage (stage 0 has 5 steps), mid-epoch
    train(cfg, resume=True, progress=False, stop_after_steps=4)  # into stage 1
    train(cfg, resume=True, progress=False)
    a, b = _weights(tmp_path / "ref" / "run" / "final"), _weights(tmp_path / "int" / "run" / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    sa, sb = (json.loads((tmp_path / x / "run" / "train_summary.json").read_text()) for x in ("ref", "int"))
    assert sa["mix"]["share_trained"] == sb["mix"]["share_trained"]


def test_cached_and_uncached_mixed_runs_agree_though_ids_clash(tmp_path, corpus):
    from asr_transfer.training.loop import train

    losses = []
    for cache in ("true", "false"):
        train(_cfg(tmp_path / cache, corpus, **{"train.cache": cache}), progress=False)
        rows = map(json.loads, (tmp_path / cache / "run" / "metrics.jsonl").read_text().splitlines())
        losses.append([r["loss"] for r in rows if r.get("split") == "train"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("setting, message", [
    ({"train.mix.share": "0.95"}, "train.mix.share must be"),
    ({"train.mix.manifest": ""}, "train.mix needs both"),
    ({"train.mix.lang": "xx"}, "train.mix.lang must be one of"),
])
def test_bad_mix_settings_are_config_errors(tmp_path, corpus, setting, message):
    from asr_transfer.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, corpus, **setting)


def test_a_replay_manifest_without_usable_utterances_is_a_user_error(tmp_path, corpus):
    from asr_transfer.errors import UserError
    from asr_transfer.training.loop import train

    utts = [replace(u, text="quixotic zyx") for u in read_manifest(corpus[3])]  # q, x, z: not in the tiny head
    bad = write_manifest(tmp_path / "bad.jsonl", utts)
    with pytest.raises(UserError, match="no usable replay utterances"):
        train(_cfg(tmp_path, corpus, **{"train.mix.manifest": str(bad)}), progress=False)
