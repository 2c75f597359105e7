"""The alignment core: the Viterbi against torchaudio's forced_align, letters folded to base letters, and
windowed alignment on constructed emissions (word boundaries, text that was not read)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from align_fixtures import FRAME_S, as_words, constructed_emissions, in_blocks, random_sentences

from asr_transfer.alignment import AlignOptions, align_emissions, forced_align_ids, label_table, text_words
from asr_transfer.segmentation import make_segments


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


def test_windowed_alignment_finds_every_word_and_sentence_boundary():
    rng = np.random.default_rng(0)
    sentences = random_sentences(rng, 40)
    items = []
    for sent in sentences:
        items += [("word", w) for w in sent] + [("pause", float(rng.uniform(0.2, 1.5)))]
    lp, truth = constructed_emissions(items, rng)
    words = as_words(sentences)
    options = AlignOptions(window_s=12.0, overlap_s=4.0, max_s=15.0)
    assert len(lp) * FRAME_S > 5 * options.window_s  # many windows
    al = align_emissions(in_blocks(lp), words, 0, 4, FRAME_S, options)
    assert al.windows > 5 and al.stalls == 0 and al.num_frames == len(lp)
    got = [(a.start, a.end) for a in al.words]
    assert not any(a.skipped for a in al.words)
    errors = np.abs(np.array(got) - np.array(truth))
    assert errors.max() <= 2  # frames
    segments = make_segments(al, words, options)
    assert len(segments) == len(sentences) and not any(s.flags for s in segments)
    assert [s.text for s in segments] == [" ".join(s) for s in sentences]
    # The same result as one window over everything: windows anchored on confident words lose nothing.
    whole = align_emissions(in_blocks(lp), words, 0, 4, FRAME_S, AlignOptions(window_s=len(lp) * FRAME_S + 1))
    assert [(a.start, a.end) for a in whole.words] == got


def test_text_that_was_not_read_is_skipped_not_forced():
    rng = np.random.default_rng(2)
    sentences = random_sentences(rng, 24)
    unread = set(range(10, 12))  # two sentences in the text that the reader left out
    items = []
    for k, sent in enumerate(sentences):
        if k not in unread:
            items += [("word", w) for w in sent] + [("pause", 0.6)]
    lp, truth = constructed_emissions(items, rng)
    words = as_words(sentences)
    al = align_emissions(in_blocks(lp), words, 0, 4, FRAME_S, AlignOptions(window_s=12.0, overlap_s=4.0))
    skipped = {words[a.index].sentence for a in al.words if a.skipped}
    assert skipped == unread
    placed = [(a.start, a.end) for a in al.words if not a.skipped]
    assert np.abs(np.array(placed) - np.array(truth)).max() <= 2
