"""Self-training data: the withheld pool cut from a train manifest (resumable) and the oversampled mix."""
from __future__ import annotations

import json

import pytest

from asr_transfer.errors import UserError
from asr_transfer.manifest import read_manifest
from asr_transfer.selftrain import mix, split_pool


def _manifest(path, durations, prefix="u", text="ein satz"):
    rows = [{"audio_filepath": f"{prefix}{i}.wav", "duration": d, "text": text, "id": f"{prefix}{i}"}
            for i, d in enumerate(durations)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_split_pool_keeps_the_synthesisers_prefix_and_withholds_the_rest(tmp_path):
    train = _manifest(tmp_path / "train.jsonl", [20.0, 25.0, 30.0, 10.0, 5.0])
    pool, truth = tmp_path / "pool.jsonl", tmp_path / "truth.jsonl"
    facts = split_pool(train, 40.0, pool, truth)  # 20 < 40, 45 >= 40: two lines, as synth would cut
    assert [u.uid for u in read_manifest(train)] == ["u0", "u1"]
    assert facts == {"labelled": {"utterances": 2, "minutes": 0.75}, "untranscribed": {"utterances": 3,
                                                                                       "minutes": 0.75}}
    assert [(u.uid, u.text, u.extra) for u in read_manifest(pool)] == [
        (f"u{i}", "", {"untranscribed": True}) for i in (2, 3, 4)]
    assert [u.text for u in read_manifest(truth)] == ["ein satz"] * 3
    # Run again (a resumed stage 0): already cut, nothing changes.
    before = train.read_bytes(), pool.read_bytes()
    assert split_pool(train, 40.0, pool, truth) == facts and (train.read_bytes(), pool.read_bytes()) == before
    with pytest.raises(UserError, match="nothing left"):
        split_pool(_manifest(tmp_path / "small.jsonl", [5.0]), 40.0, tmp_path / "p2.jsonl", tmp_path / "t2.jsonl")


def test_mix_repeats_the_labelled_lines_with_new_ids_and_refuses_overlap(tmp_path):
    gold = _manifest(tmp_path / "gold.jsonl", [6.0, 6.0])
    pseudo = _manifest(tmp_path / "pl.jsonl", [12.0, 12.0, 12.0], prefix="p")
    facts = mix(gold, pseudo, tmp_path / "mix.jsonl", oversample=3)
    ids = [u.uid for u in read_manifest(tmp_path / "mix.jsonl")]
    assert ids == ["u0", "u1", "u0#copy1", "u1#copy1", "u0#copy2", "u1#copy2", "p0", "p1", "p2"]
    assert facts["labelled_minutes_seen"] == 0.6 and facts["pseudo_minutes"] == 0.6 and facts["labelled_share"] == 0.5
    with pytest.raises(UserError, match="also a labelled id"):
        mix(gold, gold, tmp_path / "bad.jsonl", oversample=1)
