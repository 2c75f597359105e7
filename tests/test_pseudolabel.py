"""pseudo-label: CTC confidence against hand-computed values, filters, files and provenance, with tiny random models."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from asr_transfer.cli import main
from asr_transfer.errors import UserError
from asr_transfer.manifest import read_manifest
from asr_transfer.pseudolabel import LabelFilter, ctc_confidence, label_accuracy, pseudo_label
from asr_transfer.text import get_normalizer
from asr_transfer.training.data import SkipCounter, build_examples
from asr_transfer.vocab import build_vocab

from test_evaluation import TEXTS, _write_arpa, de_model  # noqa: F401 (de_model: a fixture)


@pytest.fixture(scope="module")
def untranscribed(tmp_path_factory):
    """Eight sine clips as untranscribed lines, plus the 'true' transcripts in truth.jsonl."""
    from asr_transfer.audio import write_wav

    folder = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    lines, truth = [], []
    for i in range(8):
        n = int(16000 * (0.5 + 0.1 * i))
        t = np.arange(n) / 16000
        write_wav(folder / f"u{i}.wav", 0.3 * np.sin(2 * np.pi * (150 + 70 * i) * t) + 0.05 * rng.standard_normal(n))
        row = {"audio_filepath": f"u{i}.wav", "duration": n / 16000, "text": "", "id": f"u{i}", "lang": "de"}
        lines.append({**row, "untranscribed": True})
        truth.append({**row, "text": TEXTS[i % len(TEXTS)]})
    for name, rows in (("pool.jsonl", lines), ("truth.jsonl", truth)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder / "pool.jsonl"


def _log(p: list[list[float]]) -> np.ndarray:
    return np.log(np.asarray(p, dtype=np.float32))


def test_ctc_confidence_matches_hand_computed_path_sums():
    # vocab: 0 blank, 1 a, 2 b. One frame, label "a": P = p(a).
    assert ctc_confidence(_log([[0.3, 0.6, 0.1]]), [1], blank_id=0) == pytest.approx(0.6, rel=1e-5)
    # Two frames, label "a": paths aa, a-, -a.
    p = [[0.2, 0.7, 0.1], [0.5, 0.4, 0.1]]
    want = 0.7 * 0.4 + 0.7 * 0.5 + 0.2 * 0.4
    assert ctc_confidence(_log(p), [1], blank_id=0) == pytest.approx(want, rel=1e-5)
    # Three frames, "ab": a-b... every path; per-label normalisation takes the square root.
    p = [[0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]]
    paths = [(1, 1, 2), (1, 2, 2), (1, 0, 2), (0, 1, 2), (1, 2, 0)]
    total = sum(math.prod(p[t][k] for t, k in enumerate(path)) for path in paths)
    assert ctc_confidence(_log(p), [1, 2], blank_id=0) == pytest.approx(math.sqrt(total), rel=1e-5)
    # "aa" needs a blank between: impossible in two frames.
    assert ctc_confidence(_log([[0.1, 0.8, 0.1]] * 2), [1, 1], blank_id=0) == 0.0
    assert ctc_confidence(_log([[0.1, 0.8, 0.1]]), [], blank_id=0) == 0.0


def test_filters_keep_by_threshold_or_top_share_and_refuse_bad_values():
    conf, ids = [0.9, 0.2, 0.5, 0.5, 0.7], ["a", "b", "c", "d", "e"]
    assert LabelFilter(min_confidence=0.5).keep(conf, ids) == [True, False, True, True, True]
    assert LabelFilter(top_share=0.4).keep(conf, ids) == [True, False, False, False, True]
    assert LabelFilter(top_share=0.6).keep(conf, ids) == [True, False, True, False, True]  # tie: by id
    assert LabelFilter().keep(conf, ids) == [True] * 5
    assert LabelFilter(top_share=0.01).keep(conf, ids) == [True, False, False, False, False]  # at least one
    for bad in (dict(min_confidence=0.5, top_share=0.5), dict(top_share=0.0), dict(top_share=1.5),
                dict(min_confidence=float("nan"))):
        with pytest.raises(UserError):
            LabelFilter(**bad)


def test_pseudo_label_writes_kept_lines_for_training_with_provenance(de_model, untranscribed, tmp_path):
    out = tmp_path / "pl"
    s = pseudo_label(de_model, untranscribed, out, label_filter=LabelFilter(top_share=0.5), device="cpu",
                     progress=False)
    everything = read_manifest(out / "all.jsonl")
    empty = s["skipped"].get("empty hypothesis", 0)
    assert s["labelled"] == len(everything) == 8 - empty and s["input_untranscribed"] == 8
    assert s["kept"] == round(0.5 * s["labelled"]) and s["kept"] + s["dropped"] == s["labelled"]
    confidences = {u.uid: u.extra["pl_confidence"] for u in everything}
    assert all(0 < c <= 1 for c in confidences.values())
    kept = read_manifest(out / "manifest.jsonl")
    assert min(confidences[u.uid] for u in kept) >= max(c for k, c in confidences.items()
                                                        if k not in {u.uid for u in kept})
    assert all(u.text and u.extra["pseudo_label"] is True and "untranscribed" not in u.extra for u in kept)
    assert s["kept_minutes"] == pytest.approx(sum(u.duration for u in kept) / 60, abs=1e-3)
    assert s["model"] == str(Path(de_model).resolve()) and len(s["model_sha256"]) == 64
    assert s["filter"] == {"kind": "top_share", "value": 0.5} and s["decoder"] == "greedy" and s["lm"] is None
    import hashlib

    assert s["manifest_sha256"] == hashlib.sha256((out / "manifest.jsonl").read_bytes()).hexdigest()
    assert json.loads((out / "summary.json").read_text())["manifest_sha256"] == s["manifest_sha256"]
    # Training reads the kept lines like any transcribed line.
    vocab = dict(build_vocab(TEXTS, "de"))
    skips = SkipCounter()
    examples = build_examples(out / "manifest.jsonl", vocab, get_normalizer("de"), (10, 3, 3, 3, 3, 2, 2),
                              (5, 2, 2, 2, 2, 2, 2), skips=skips)
    assert len(examples) + skips.as_dict()["total"] == len(kept) and "untranscribed" not in str(skips.counts)
    # Against the withheld truth: kept + dropped = all.
    acc = label_accuracy(out / "all.jsonl", untranscribed.with_name("truth.jsonl"), get_normalizer("de"))
    assert acc["all"]["utterances"] == s["labelled"] and acc["kept"]["utterances"] == s["kept"]
    assert acc["all"]["cer"] > 0  # a random model does not know the text


def test_pseudo_label_with_an_lm_records_it_and_thresholds(de_model, untranscribed, tmp_path, capsys):
    lm = _write_arpa(tmp_path / "lm", sorted({w for t in TEXTS for w in t.split()}))
    s = pseudo_label(de_model, untranscribed, tmp_path / "a", lm_dir=lm, beam_size=8, lm_weight=1.0, word_score=2.0,
                     label_filter=LabelFilter(min_confidence=0.0), device="cpu", progress=False)
    assert s["decoder"] == "beam" and s["lm"]["lm_weight"] == 1.0 and len(s["lm"]["sha256"]) == 64
    rows = read_manifest(tmp_path / "a" / "all.jsonl")
    assert rows and all(u.text for u in rows)
    assert s["kept"] == s["labelled"]  # every ctc confidence is >= 0
    d = pseudo_label(de_model, untranscribed, tmp_path / "b", lm_dir=lm, beam_size=8, lm_weight=1.0, word_score=2.0,
                     confidence="decoder", label_filter=LabelFilter(min_confidence=1e9), device="cpu", progress=False)
    assert d["kept"] == 0 and d["confidence"] == "decoder"
    assert [u.text for u in read_manifest(tmp_path / "b" / "all.jsonl")] == [u.text for u in rows]

    rc = main(["pseudo-label", "--model", str(de_model), "--manifest", str(untranscribed), "--out",
               str(tmp_path / "c"), "--top-share", "0.25", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "filter top_share 0.25: kept" in out and "quantiles" in out
    # argparse: the two filters exclude each other (usage error, 2)
    assert main(["pseudo-label", "--model", str(de_model), "--manifest", str(untranscribed), "--out",
                 str(tmp_path / "d"), "--top-share", "0.25", "--min-confidence", "0.5"]) == 2
