"""``asr-transfer align``: a missing text file is one line, and end to end on a short synthetic German book with
the shipped English source model (boundaries, a deleted passage flagged, the manifest through validate and train).

The steps have their own tests: test_alignment, test_segmentation, test_recordings.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from asr_transfer.cli import main
from asr_transfer.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SOURCE_MODEL = ROOT / "models" / "en-synth-small"
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))


def test_cli_missing_text_is_one_line(tmp_path, capsys):
    tsv = tmp_path / "list.tsv"
    from asr_transfer.audio import write_wav

    write_wav(tmp_path / "a.wav", np.zeros(16000, np.float32))
    tsv.write_text("a.wav\tnope.txt\n", encoding="utf-8")
    assert main(["align", str(tsv), "--model", str(SOURCE_MODEL), "--lang", "de", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.txt: text file not found" in err[0]


# ----------------------------------------------------------------------------- end to end, real model


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    pytest.importorskip("soxr")
    from align_accuracy import build_book

    from asr_transfer.corpora.synth import check_espeak

    try:
        check_espeak("de", ["held-out"])
    except UserError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("book")
    return root, build_book(root / "plain", minutes=2.0, seed=0), build_book(root / "deleted", 2.0, 0, delete=0.1)


def _align(book_dir: Path, out: Path) -> tuple[list[dict], dict]:
    assert main(["align", str(book_dir), "--model", str(SOURCE_MODEL), "--lang", "de", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def test_short_book_boundaries_with_the_english_source_model(book, tmp_path):
    from align_accuracy import boundary_accuracy

    root, truth, _ = book
    rows, summary = _align(root / "plain", tmp_path / "out")
    accuracy = boundary_accuracy(truth["utterances_truth"], rows, tolerance_s=0.2)
    # Measured 57 of 58 (98.3 %; the miss: a sentence ending in "ca", which espeak reads "zirka"). The 20-minute
    # book (bench/align_accuracy.py) measured 97.3 %; 0.93 leaves room for two more misses here.
    assert accuracy["share"] >= 0.93, accuracy
    assert accuracy["median_error_s"] < 0.06
    assert summary["skipped_text"] == [] and summary["kept_minutes"] > 1.2
    assert all(r["duration"] <= 15.0 for r in rows)


def test_deleted_text_region_is_flagged(book, tmp_path):
    from align_accuracy import deletion_flagged

    root, _, truth = book
    rows, summary = _align(root / "deleted", tmp_path / "out")
    found = deletion_flagged(truth["utterances_truth"], rows, summary)
    assert found["flagged_s"] >= 0.8 * found["deleted_speech_s"], found
    assert found["in_kept_segments_s"] <= 0.5, found  # nothing silently misaligned over the deleted audio


def test_manifest_passes_validate_and_marked_segments_are_skipped_and_counted(book, tmp_path, capsys):
    from asr_transfer.manifest import read_manifest
    from asr_transfer.training.data import SkipCounter, build_examples
    from asr_transfer.validate import validate_manifest
    from asr_transfer.vocab import load_vocab

    root, _, _ = book
    rows, summary = _align(root / "deleted", tmp_path / "out")
    manifest = tmp_path / "out" / "manifest.jsonl"
    marked = sum(1 for r in rows if r.get("align_flag"))
    assert marked == summary["marked_segments"] > 0
    report = validate_manifest(manifest, lang="de", model_config=SOURCE_MODEL, vocab={
        **load_vocab(SOURCE_MODEL / "vocab.json"), **{c: 40 + i for i, c in enumerate("äöüß")}})
    assert report.ok, report.format()
    assert report.marked == marked and report.utterances == len(rows) - marked
    assert validate_manifest(manifest, lang="de", check_audio=False, include_marked=True).utterances == len(rows)
    assert main(["validate", str(manifest), "--lang", "de", "--no-audio"]) == 0
    assert f"{marked} segments" in capsys.readouterr().out
    from asr_transfer.text import get_normalizer

    skips = SkipCounter()
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyzäöüß"])}
    examples = build_examples(manifest, vocab, get_normalizer("de"), (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2),
                              skips=skips)
    assert skips.counts["marked by align"] == marked
    assert len(examples) == len(read_manifest(manifest)) - marked
