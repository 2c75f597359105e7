"""An alignment → utterance segments: sentences cut to fit ``max_s``, scored, and flagged when suspect.

Input: an :class:`~asr_transfer.alignment.Alignment` (words on frames, per-frame ``gap`` and ``star``) from
:func:`asr_transfer.alignment.align_emissions` and its word list; :mod:`asr_transfer.recordings` runs both for
each recording. ``max_s`` and ``min_score`` are fields of :class:`~asr_transfer.alignment.AlignOptions`.

**Segments.** Sentences (split at ``. ! ? …`` in the raw text) are the units; a sentence longer than ``max_s``
is cut at its longest pauses until every piece fits. A segment's ``align_score`` is the mean over its frames of
(aligned path log-prob − best log-prob), in nats per frame: 0 means the text is exactly what the model hears.
Segments scoring below ``min_score`` (default: the recording's median minus :data:`AUTO_SCORE_MARGIN`), touching
audio the text does not cover (letters heard between aligned words: an unread passage in the text, a deleted
paragraph) or holding skipped text are marked with ``align_flag``; ``train`` and ``validate`` skip them.

Audio the text does not cover is the garbage state's letter frames (:func:`unaligned_regions`; see the
design in :mod:`asr_transfer.alignment`), and text the path skipped is :func:`skipped_text`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .alignment import AlignedWord, Alignment, AlignOptions, Word

AUTO_SCORE_MARGIN = 0.8  # nats/frame: by default a segment is low_score this far below the recording's median
# (English source on German: good segments -0.7 to -1.7, median -1.06; text that was not said scores lower)
UNALIGNED_MERGE_S = 1.0  # s: letters the model hears between aligned words, this close, form one region ...
UNALIGNED_MIN_LETTERS = 8  # ... which is audio with no text when it holds at least this many letter frames
UNALIGNED_NEAR_S = 0.5  # s: a segment this close to such a region is marked (its edge text may belong there)
PAD_S = 0.1  # s of context added before and after a segment's first/last letter, at most half the pause

FLAG_LOW_SCORE = "low_score"
FLAG_UNALIGNED_AUDIO = "unaligned_audio"
FLAG_SKIPPED_TEXT = "skipped_text"
FLAG_TOO_LONG = "too_long"


@dataclass(frozen=True)
class Segment:
    """One utterance on the long recording. Times in seconds; ``score`` in nats per frame (<= 0)."""

    offset: float
    duration: float
    text: str
    score: float
    star_s: float
    flags: tuple[str, ...] = ()
    words: int = 0
    speech_start: float = 0.0  # s; the first letter's first frame (offset is up to PAD_S earlier)
    speech_end: float = 0.0  # s; the end of the last letter's last frame

    @property
    def flag(self) -> str | None:
        return self.flags[0] if self.flags else None


def _split_long(run: list[AlignedWord], max_frames: int) -> list[list[AlignedWord]]:
    """Cut a run of placed words at its longest pauses until every piece spans at most ``max_frames``."""
    if len(run) < 2 or run[-1].end - run[0].start + 1 <= max_frames:
        return [run]
    pauses = [run[k + 1].start - run[k].end for k in range(len(run) - 1)]
    # The longest pause wins; among near-equal pauses (within 2 frames) the one nearest the middle.
    middle = (run[0].start + run[-1].end) / 2
    longest = max(pauses)
    cut = min((k for k, p in enumerate(pauses) if p >= longest - 2), key=lambda k: abs(run[k].end - middle))
    return _split_long(run[:cut + 1], max_frames) + _split_long(run[cut + 1:], max_frames)


def make_segments(alignment: Alignment, words: Sequence[Word], options: AlignOptions) -> list[Segment]:
    """Sentences (split further at pauses when longer than ``max_s``) → :class:`Segment` objects, in time order."""
    frame_s = alignment.frame_s
    max_frames = int(options.max_s / frame_s) - 2 * int(PAD_S / frame_s)
    pad = int(round(PAD_S / frame_s))
    runs: list[tuple[list[AlignedWord], bool]] = []  # (placed words, sentence had skipped text)
    sentence_words: dict[int, list[AlignedWord]] = {}
    for a in alignment.words:
        sentence_words.setdefault(words[a.index].sentence, []).append(a)
    for s in sorted(sentence_words):
        group = sentence_words[s]
        placed = [a for a in group if not a.skipped and a.start >= 0]
        skipped = len(placed) < len(group)
        for piece in _split_long(placed, max_frames):
            if piece:
                runs.append((piece, skipped))
    runs.sort(key=lambda r: r[0][0].start)
    segments: list[Segment] = []
    total = alignment.num_frames
    regions = unaligned_regions(alignment)
    near = UNALIGNED_NEAR_S
    scores = []
    for k, (run, skipped) in enumerate(runs):
        prev_end = runs[k - 1][0][-1].end if k else -2 * pad
        next_start = runs[k + 1][0][0].start if k + 1 < len(runs) else total + 2 * pad
        start = max(0, run[0].start - min(pad, (run[0].start - prev_end) // 2))
        end = min(total - 1, run[-1].end + min(pad, (next_start - run[-1].end) // 2))
        span = slice(start, end + 1)
        score = float(alignment.gap[span].mean()) if end >= start else -math.inf
        star_s = float(alignment.star[span].sum()) * frame_s
        flags = []
        t0, t1 = start * frame_s, (end + 1) * frame_s
        if any(a - near <= t1 and t0 <= b + near for a, b in regions):
            flags.append(FLAG_UNALIGNED_AUDIO)
        if skipped:
            flags.append(FLAG_SKIPPED_TEXT)
        if (end - start + 1) * frame_s > options.max_s + 1e-6:
            flags.append(FLAG_TOO_LONG)
        text = " ".join(words[a.index].text for a in run)
        scores.append(score)
        segments.append(Segment(round(start * frame_s, 3), round((end - start + 1) * frame_s, 3), text,
                                round(score, 4), round(star_s, 2), tuple(flags), len(run),
                                round(run[0].start * frame_s, 3), round((run[-1].end + 1) * frame_s, 3)))
    threshold = score_threshold(scores, options)
    return [s if s.score >= threshold else replace(s, flags=(FLAG_LOW_SCORE, *s.flags)) for s in segments]


def score_threshold(scores: Sequence[float], options: AlignOptions) -> float:
    """``options.min_score``, or by default the median segment score minus :data:`AUTO_SCORE_MARGIN`.

    Relative by default: how far a model's path sits below its best path depends on the model (the English source
    on German text: about -1 nats/frame for text that is right; an adapted model much nearer 0), while text that
    was not said scores lower than the rest of the same recording with any model.
    """
    if options.min_score is not None:
        return options.min_score
    finite = [x for x in scores if math.isfinite(x)]
    return float(np.median(finite)) - AUTO_SCORE_MARGIN if finite else -math.inf


def unaligned_regions(alignment: Alignment) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of speech the text does not cover: letter frames heard between aligned words, merged
    when less than :data:`UNALIGNED_MERGE_S` apart, kept when a region holds :data:`UNALIGNED_MIN_LETTERS`."""
    f = alignment.frame_s
    frames = np.flatnonzero(alignment.star)
    if not len(frames):
        return []
    cuts = np.flatnonzero(np.diff(frames) * f > UNALIGNED_MERGE_S) + 1
    out = []
    for run in np.split(frames, cuts):
        if len(run) >= UNALIGNED_MIN_LETTERS:
            out.append((round(run[0] * f, 2), round((run[-1] + 1) * f, 2)))
    return out


@dataclass(frozen=True)
class SkippedText:
    """A run of text words the aligner found no audio for, with the time near which it should have been."""

    near_s: float
    words: int
    text: str = field(default="")


def skipped_text(alignment: Alignment, words: Sequence[Word], max_chars: int = 80) -> list[SkippedText]:
    """Runs of skipped words, each with the time of the last placed word before it."""
    out: list[SkippedText] = []
    last_end = 0
    run: list[int] = []
    for a in alignment.words + [AlignedWord(-1, 0, 0)]:
        if a.index >= 0 and a.skipped:
            run.append(a.index)
            continue
        if run:
            text = " ".join(words[i].text for i in run)
            out.append(SkippedText(round(last_end * alignment.frame_s, 2), len(run),
                                   text if len(text) <= max_chars else text[:max_chars - 1] + "…"))
            run = []
        if a.index >= 0 and a.end >= 0:
            last_end = a.end
    return out
