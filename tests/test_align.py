"""``asr-transfer align``: the Viterbi against torchaudio's forced_align, windowed alignment on constructed
emissions (boundaries, audio without text, text without audio), and end to end on a short synthetic German book
with the shipped English source model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_transfer.alignment import (
    AlignOptions,
    Word,
    align_emissions,
    forced_align_ids,
    label_table,
    text_words,
)
from asr_transfer.cli import main
from asr_transfer.errors import UserError
from asr_transfer.recordings import find_recordings
from asr_transfer.segmentation import (
    FLAG_UNALIGNED_AUDIO,
    make_segments,
    unaligned_regions,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE_MODEL = ROOT / "models" / "en-synth-small"
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz"]
FRAME_S = 0.02
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))


# ------------------------------------------------------------------------------------------------ viterbi


@pytest.mark.parametrize("seed", range(12))
def test_viterbi_matches_torchaudio_forced_align(seed):
    import torchaudio.functional as F

    rng = np.random.default_rng(seed)
    frames, vocab = int(rng.integers(30, 300)), int(rng.integers(4, 40))
    ids = rng.integers(1, vocab, int(rng.integers(1, frames // 3)))
    if seed % 3 == 0:  # repeated letters need a blank between them
        ids[1::2] = ids[0::2][: len(ids[1::2])]
    lp = torch.randn(frames, vocab).mul(3).log_softmax(-1)
    ref_path, ref_scores = F.forced_align(lp[None], torch.from_numpy(ids)[None].int(), blank=0)
    path, score = forced_align_ids(lp.numpy(), ids, blank_id=0)
    assert score == pytest.approx(float(ref_scores[0].sum()), abs=1e-3)
    assert (path == ref_path[0].numpy()).all()


def test_letters_the_model_lacks_fold_to_base_letters():
    table = label_table(["<pad>", "|", "A", "S", "U", "E"])  # upper case, as base-960h
    assert table["a"] == (2,) and table["ä"] == (2,)
    assert table["ß"] == (3, 3)  # ß -> s s
    assert table["ü"] == (4,)
    assert table["x"] is None  # no base letter in this vocabulary: dropped, and counted
    words, dropped = text_words("Äußerst! Süße Sau. Axe", "de", ["<pad>", "|", "A", "S", "U", "E", "R", "T"])
    assert [w.text for w in words][:2] == ["äußerst", "süße"]
    assert words[0].ids == (2, 4, 3, 3, 5, 6, 3, 7)
    assert [w.sentence for w in words] == [0, 1, 1, 2]
    assert dropped == 1  # the x of "axe"


# ----------------------------------------------------------------------------------- constructed emissions


def _emissions(items, rng, letter_frames=(2, 4)) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Log-probs for a sequence of ``("word", text)`` / ``("pause", seconds)`` / ``("babble", seconds)``.

    A word's letters each peak for 2-4 frames (blank frames between), then a delimiter frame; a pause is blank;
    babble is speech with no text (random letters every few frames). Returns ``(T, V)`` log-probs and each word's
    true ``(first, last)`` letter frame.
    """
    frames: list[int] = []
    truth = []
    for kind, value in items:
        if kind == "word":
            start = len(frames)
            for c in value:
                frames += [VOCAB.index(c)] * int(rng.integers(*letter_frames)) + [0] * int(rng.integers(0, 3))
            while frames[-1] == 0:
                frames.pop()
            truth.append((start, len(frames) - 1))
            frames += [4]
        elif kind == "pause":
            frames += [0] * int(value / FRAME_S)
        else:
            for _ in range(int(value / FRAME_S / 3)):
                frames += [int(rng.integers(5, len(VOCAB))), 0, 0]
    lp = np.full((len(frames), len(VOCAB)), -9.0, np.float32) + rng.normal(0, 0.5, (len(frames), len(VOCAB)))
    lp[np.arange(len(frames)), frames] = -0.05
    lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
    return lp.astype(np.float32), truth


def _sentences(rng, n):
    """``n`` sentences of 3-8 random words of 2-8 letters (random, so no stretch of text repeats another)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [["".join(rng.choice(letters, int(rng.integers(2, 9)))) for _ in range(int(rng.integers(3, 9)))]
            for _ in range(n)]


def _stream(lp, block=700):
    return (lp[i:i + block] for i in range(0, len(lp), block))


def _words(sentences):
    return [Word(w, tuple(VOCAB.index(c) for c in w), s) for s, sent in enumerate(sentences) for w in sent]


def test_windowed_alignment_finds_every_word_and_sentence_boundary():
    rng = np.random.default_rng(0)
    sentences = _sentences(rng, 40)
    items = []
    for sent in sentences:
        items += [("word", w) for w in sent] + [("pause", float(rng.uniform(0.2, 1.5)))]
    lp, truth = _emissions(items, rng)
    words = _words(sentences)
    options = AlignOptions(window_s=12.0, overlap_s=4.0, max_s=15.0)
    assert len(lp) * FRAME_S > 5 * options.window_s  # many windows
    al = align_emissions(_stream(lp), words, 0, 4, FRAME_S, options)
    assert al.windows > 5 and al.stalls == 0 and al.num_frames == len(lp)
    got = [(a.start, a.end) for a in al.words]
    assert not any(a.skipped for a in al.words)
    errors = np.abs(np.array(got) - np.array(truth))
    assert errors.max() <= 2  # frames
    segments = make_segments(al, words, options)
    assert len(segments) == len(sentences) and not any(s.flags for s in segments)
    assert [s.text for s in segments] == [" ".join(s) for s in sentences]
    # The same result as one window over everything: windows anchored on confident words lose nothing.
    whole = align_emissions(_stream(lp), words, 0, 4, FRAME_S, AlignOptions(window_s=len(lp) * FRAME_S + 1))
    assert [(a.start, a.end) for a in whole.words] == got


def test_audio_without_text_is_found_and_flagged():
    rng = np.random.default_rng(1)
    sentences = _sentences(rng, 30)
    items = []
    for k, sent in enumerate(sentences):
        items += [("word", w) for w in sent] + [("pause", 0.5)]
        if k == 14:  # a passage the text lacks (as when a paragraph is deleted from the text)
            items += [("babble", 20.0), ("pause", 0.5)]
    lp, truth = _emissions([("babble", 8.0), ("pause", 0.4)] + items, rng)  # an introduction not in the text
    words = _words(sentences)
    options = AlignOptions()  # 30-s windows: the text of a window must fit in what is left after the babble
    al = align_emissions(_stream(lp), words, 0, 4, FRAME_S, options)
    assert not any(a.skipped for a in al.words)
    regions = unaligned_regions(al)
    babble_start = truth[sum(len(s) for s in sentences[:15]) - 1][1] * FRAME_S
    assert len(regions) == 2
    assert regions[0][0] < 0.5 and regions[0][1] > 7.5
    assert regions[1][0] == pytest.approx(babble_start + 0.5, abs=0.6)
    assert regions[1][1] - regions[1][0] > 18
    segments = make_segments(al, words, options)
    flagged = {s.text for s in segments if FLAG_UNALIGNED_AUDIO in s.flags}
    # The sentences next to the babble are marked: a short word at their edge can match babble letters (here the
    # 2-letter first word of sentence 15 did), which is why neighbours of unaligned audio are never trusted.
    assert {words[a.index].sentence for a in al.words if any(words[a.index].text in t.split() for t in flagged)} \
        >= {0, 14, 15}
    assert len(flagged) <= 4
    kept = {w for s in segments if not s.flags for w in s.text.split()}
    for a, (start, end) in zip(al.words, truth):
        if words[a.index].text in kept:
            assert abs(a.start - start) <= 2 and abs(a.end - end) <= 2


def test_text_that_was_not_read_is_skipped_not_forced():
    rng = np.random.default_rng(2)
    sentences = _sentences(rng, 24)
    unread = set(range(10, 12))  # two sentences in the text that the reader left out
    items = []
    for k, sent in enumerate(sentences):
        if k not in unread:
            items += [("word", w) for w in sent] + [("pause", 0.6)]
    lp, truth = _emissions(items, rng)
    words = _words(sentences)
    al = align_emissions(_stream(lp), words, 0, 4, FRAME_S, AlignOptions(window_s=12.0, overlap_s=4.0))
    skipped = {words[a.index].sentence for a in al.words if a.skipped}
    assert skipped == unread
    placed = [(a.start, a.end) for a in al.words if not a.skipped]
    assert np.abs(np.array(placed) - np.array(truth)).max() <= 2


def test_long_sentence_is_cut_at_its_longest_pause():
    rng = np.random.default_rng(3)
    sentence = ["haus", "baum", "sonne"] * 6  # repeats: the cut must still fall at the one long pause
    items = []
    for k, w in enumerate(sentence):
        items += [("word", w), ("pause", 1.0 if k == 8 else 0.1)]
    lp, _ = _emissions(items, rng)
    words = _words([sentence])
    options = AlignOptions(max_s=len(lp) * FRAME_S * 0.7)
    segments = make_segments(align_emissions(_stream(lp), words, 0, 4, FRAME_S, options), words, options)
    assert [s.words for s in segments] == [9, 9]
    assert all(s.duration <= options.max_s for s in segments)


# ------------------------------------------------------------------------------------- inputs and errors


def test_inputs_pairs_tsv_and_one_line_errors(tmp_path):
    from asr_transfer.audio import write_wav

    folder = tmp_path / "rec"
    write_wav(folder / "a.wav", np.zeros(16000, np.float32))
    (folder / "a.txt").write_text("Hallo Welt.", encoding="utf-8")
    assert [r.name for r in find_recordings(folder)] == ["a"]
    write_wav(folder / "b.wav", np.zeros(16000, np.float32))
    with pytest.raises(UserError, match=r"b\.wav: audio without text: expected b\.txt"):
        find_recordings(folder)
    (folder / "b.wav").unlink()
    (folder / "c.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match=r"c\.txt: text without audio"):
        find_recordings(folder)
    tsv = tmp_path / "list.tsv"
    tsv.write_text("audio\ttext\nrec/a.wav\trec/missing.txt\n", encoding="utf-8")
    assert find_recordings(tsv)[0].text == str(tmp_path / "rec" / "missing.txt")
    tsv.write_text("rec/a.wav\trec/a.txt\nother/a.wav\tother/a.txt\n", encoding="utf-8")
    with pytest.raises(UserError, match="two recordings are named 'a'"):
        find_recordings(tsv)
    tsv.write_text("rec/a.wav\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"list\.tsv:1: expected 2 tab-separated columns"):
        find_recordings(tsv)
    tsv.write_text("audio\ttext\nrec/a.wav\trec/missing.txt\n", encoding="utf-8")
    rc_out = tmp_path / "out"
    assert main(["align", str(tsv), "--model", str(SOURCE_MODEL), "--lang", "de", "--out", str(rc_out)]) == 1


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
