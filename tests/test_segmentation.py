"""Alignment → segments on constructed emissions: audio without text found and its neighbours flagged, a long
sentence cut at its longest pause."""
from __future__ import annotations

import numpy as np
import pytest
from align_fixtures import FRAME_S, as_words, constructed_emissions, in_blocks, random_sentences

from asr_transfer.alignment import AlignOptions, align_emissions
from asr_transfer.segmentation import FLAG_UNALIGNED_AUDIO, make_segments, unaligned_regions


def test_audio_without_text_is_found_and_flagged():
    rng = np.random.default_rng(1)
    sentences = random_sentences(rng, 30)
    items = []
    for k, sent in enumerate(sentences):
        items += [("word", w) for w in sent] + [("pause", 0.5)]
        if k == 14:  # a passage the text lacks (as when a paragraph is deleted from the text)
            items += [("babble", 20.0), ("pause", 0.5)]
    lp, truth = constructed_emissions([("babble", 8.0), ("pause", 0.4)] + items, rng)  # an introduction not in the text
    words = as_words(sentences)
    options = AlignOptions()  # 30-s windows: the text of a window must fit in what is left after the babble
    al = align_emissions(in_blocks(lp), words, 0, 4, FRAME_S, options)
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


def test_long_sentence_is_cut_at_its_longest_pause():
    rng = np.random.default_rng(3)
    sentence = ["haus", "baum", "sonne"] * 6  # repeats: the cut must still fall at the one long pause
    items = []
    for k, w in enumerate(sentence):
        items += [("word", w), ("pause", 1.0 if k == 8 else 0.1)]
    lp, _ = constructed_emissions(items, rng)
    words = as_words([sentence])
    options = AlignOptions(max_s=len(lp) * FRAME_S * 0.7)
    segments = make_segments(align_emissions(in_blocks(lp), words, 0, 4, FRAME_S, options), words, options)
    assert [s.words for s in segments] == [9, 9]
    assert all(s.duration <= options.max_s for s in segments)
