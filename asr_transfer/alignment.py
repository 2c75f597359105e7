"""A long recording's emissions + its text → words on frames: windowed CTC forced alignment, garbage state.

The problem. An audiobook chapter is an hour of audio (180,000 frames of 20 ms) and ~50,000 characters of text. A
plain CTC forced alignment (``torchaudio.functional.forced_align``) builds a frames × (2·labels+1) trellis: for an
hour that is ~2·10^10 back-pointers, and it assumes the text is exactly what was said. Real texts are not: an
introduction that was not read, a paragraph the reader skipped, a reading that goes on past the text.

The design, in the spirit of ctc-segmentation (Kürzinger et al. 2020: confidence = aligned path against the model's
best path, per frame) and MMS's aligner (a ``<star>`` token that may swallow any audio):

1. **Emissions are streamed.** Audio is read block-wise and run through the model in overlapping windows
   (:func:`asr_transfer.transcription.iter_chunked_log_probs`, the same windows ``transcribe`` uses); the kept
   ``(frames, vocab)`` log-probs arrive in order (:func:`asr_transfer.recordings.align_recording` feeds them
   to :func:`align_emissions`) and only an alignment window's worth is buffered.
2. **Alignment runs in windows anchored on confident words.** A window is ``window_s`` of emissions from the
   anchor frame and the text from the anchor word that fills :data:`TEXT_FILL` of it at the reading rate measured
   so far (:data:`INITIAL_CHARS_PER_S` at first). Its Viterbi trellis is window-sized (1,500 frames × some
   hundreds to a few thousand states), whatever the recording's length. The path may *start* at any word of the
   text window (skipped letters cost :data:`SKIP_NATS_PER_CHAR` each: text that was not read); except in the last
   window it may stop after any word (letters left to the next window cost :data:`LEAVE_NATS_PER_CHAR` each), and
   the audio after its text goes to a tail state (the next window's). Of the path, words that end before the last
   ``overlap_s`` of the window are committed, up to the last *confident* word (letter confidence, see
   :func:`align_window`, above ``-anchor_gap``),
   leaving the window text's last :data:`HOLD_WORDS` for the next window; the next window starts right after it.
   A window with no confident word is retried as a search: twice the text (up to :data:`MAX_TEXT_GROWTH` ×),
   a fixed price (:data:`SEARCH_JUMP_NATS`) for starting at any word, no price for text left after the find, the
   full star price for speech without text; a find counts only if it looks like the text aligned so far
   (:func:`_trusted`). If nothing is found, the hop is audio the text does not cover, and the search moves on.
3. **A garbage state between words.** The state between two words emits the best of blank, the word delimiter,
   and "star": any frame at the model's best log-prob minus :data:`STAR_PENALTY_NATS`. Audio with no text
   (an unread introduction in the audio, a deleted passage, a reading past the end) is absorbed there at a bounded
   cost instead of dragging neighbouring words over it. Frames in that state where the model hears a letter are
   speech the text does not cover (:func:`asr_transfer.segmentation.unaligned_regions`).
4. **Letters the model lacks** map through the base-letter fold of the English normaliser (``ä`` → ``a``,
   ``ß`` → ``ss``, ``é`` → ``e``), so the English source model aligns German text before any target training.

Memory is O(window) for the trellis and emissions plus per-frame score and star arrays (5 bytes per 20-ms frame:
0.9 MB an hour). Time is linear in length: each window costs the same. Frame times are ``frame * 0.02`` s on the file.

The steps after this one: :mod:`asr_transfer.segmentation` cuts an :class:`Alignment` into utterance segments
(scores and flags); :mod:`asr_transfer.recordings` finds audio + text pairs and runs the model, this alignment
and the segmentation over each recording (``asr-transfer align``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import UserError
from .text import get_normalizer

INITIAL_CHARS_PER_S = 12.0  # letters per second of audio assumed until MIN_RATE_S is committed (synth: 12-20)
MIN_RATE_S = 20.0  # s of committed audio before the measured reading rate replaces the initial one
TEXT_FILL = 0.5  # a window's text should fill this share of it at the reading rate; the rest is free audio
FINAL_TEXT_CAP = 3.0  # the last window takes the remaining text up to this many times its reading-rate share
MAX_TEXT_GROWTH = 8  # after windows that anchor nothing, the text window grows up to this many times ...
SEARCH_JUMP_NATS = 20.0  # ... and skipping text costs this once, whatever its length: the reader may have left a
# passage out (see align_window's search)
INNER_BLANK_NATS = 0.2  # per blank frame inside a word: a pause belongs between words, not inside the first one
# (without it, a first letter the model half-hears in the noise of the pause before pulls the word's start back
# through the pause: 14 of 279 sentence starts in the 20-min book were > 0.2 s early; 3 with it)
LONG_LETTER_FRAMES = 10  # frames (0.2 s): a word's first/last letter held longer is cut back to its spike
SEARCH_MIN_WORDS = 8  # a search's find needs this many words in a row ...
SEARCH_CONFIDENCE_MARGIN = 1.0  # ... with a mean letter confidence no more than this below the recording's median
HOLD_WORDS = 2  # the last words of a window's text are never anchors (they may be squeezed)
STAR_PENALTY_NATS = 4.0  # star frame score = best log-prob minus this: the price of calling audio "not in the text"
SKIP_NATS_PER_CHAR = 10.0  # price per letter of text the path skips (text that was not read): above a letter's
# cost when it is there (the English model on German text: ~3.5 nats per letter)
FREE_TAIL_NATS = 1.0  # price per letter frame of the speech after a window's text (the next window's)
LEAVE_NATS_PER_CHAR = 6.0  # price per letter of a window's text left for the next window (see align_window)
ANCHOR_GAP_NATS = 6.0  # a word anchors the next window if its letter confidence (see align_window) is above -this
# (English source on German text: median -2.9, 5th percentile -6.2; a letter forced onto other speech: about -9)
SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'»«“”)\]]*\s+|\n\s*\n")  # a sentence end, or a blank line
_NEG = np.float32(-1e30)


@dataclass(frozen=True)
class AlignOptions:
    """Knobs of :func:`align_emissions`; times in seconds, scores in nats per 20 ms frame."""

    window_s: float = 30.0  # s of emissions per alignment window
    overlap_s: float = 10.0  # s at a window's end whose words wait for the next window
    max_s: float = 15.0  # s; longest segment
    min_score: float | None = None  # nats/frame; segments below are marked low_score (None: median - margin)
    star_penalty: float = STAR_PENALTY_NATS
    skip_per_char: float = SKIP_NATS_PER_CHAR
    anchor_gap: float = ANCHOR_GAP_NATS

    def __post_init__(self):
        if not (self.window_s > 0 and 0 <= self.overlap_s < self.window_s):
            raise UserError(f"need window_s > overlap_s >= 0 (got {self.window_s}, {self.overlap_s})")
        if not self.max_s > 0:
            raise UserError(f"--max-s must be > 0 seconds (got {self.max_s})")


# ------------------------------------------------------------------------------------------------------------- text
@dataclass(frozen=True)
class Word:
    """One normalised word of the text: its model label ids (base letters folded) and its sentence."""

    text: str
    ids: tuple[int, ...]
    sentence: int


def label_table(vocab: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Lower-case character → label ids of a model vocabulary (id order), folding letters it lacks to base letters.

    ``ä`` → ``a``, ``ß`` → ``s s`` through the English normaliser's fold: the same base-letter map the zero-shot
    head uses. Characters with no base letter in the vocabulary are absent (the caller drops them).
    """
    direct: dict[str, int] = {}
    for i, token in enumerate(vocab):
        if len(token) == 1 and token != "|":
            direct.setdefault(token.lower(), i)
    fold = get_normalizer("en").fold
    table = {c: (i,) for c, i in direct.items()}

    class _Folding(dict):
        def __missing__(self, c: str):
            base = fold(c)
            ids = tuple(direct[b] for b in base) if base and all(b in direct for b in base) else None
            self[c] = ids
            return ids

    return _Folding(table)


def text_words(text: str, lang: str, vocab: Sequence[str]) -> tuple[list[Word], int]:
    """The normalised words of a raw ``text`` with their sentence index, and the count of characters dropped.

    Sentences are split on the raw text (its punctuation is gone after normalising). A character the model cannot
    spell even through base letters is dropped from its word (counted); a word left empty is dropped.
    """
    normalize = get_normalizer(lang)
    table = label_table(vocab)
    words: list[Word] = []
    dropped = 0
    for s, sentence in enumerate(SENTENCE_END.split(text)):
        for w in normalize(sentence).split():
            ids: list[int] = []
            for c in w:
                got = table[c]
                if got is None:
                    dropped += 1
                else:
                    ids.extend(got)
            if ids:
                words.append(Word(w, tuple(ids), s))
    return words, dropped


# ---------------------------------------------------------------------------------------------------------- viterbi
def ctc_viterbi(emit: np.ndarray, labels: np.ndarray, skip_ok: np.ndarray, init: np.ndarray,
                final: np.ndarray, exits: np.ndarray | None = None,
                exit_cost: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Best path through a CTC-style state chain; returns ``(states (T,) int, score)``.

    ``emit``: ``(T, S)`` float32 log-score of being in state ``s`` at frame ``t``. ``labels`` is unused except for
    shape checks by callers. Transitions: stay, ``s-1 → s``, and ``s-2 → s`` where ``skip_ok[s]`` (a blank between
    two different letters may be skipped). ``init``/``final``: ``(S,)`` log-scores for starting/ending in a state
    (``-inf``-like where not allowed). Back-pointers are ``(T, S)`` uint8: the trellis a window needs, no more.
    ``exits``/``exit_cost``: states from which the last state (a tail) may also be entered, at that cost
    (leaving the rest of the text for later); the tail's extra back-pointer is one int per frame.
    """
    num_frames, num_states = emit.shape
    if num_frames == 0 or num_states == 0:
        raise ValueError("empty trellis")
    back = np.zeros((num_frames, num_states), dtype=np.uint8)
    score = init.astype(np.float32) + emit[0]
    skip_ok = skip_ok.astype(bool)
    neg = np.full(2, _NEG, dtype=np.float32)
    tail = num_states - 1
    tail_from = np.full(num_frames, -1, dtype=np.int64)
    for t in range(1, num_frames):
        prev1 = np.concatenate([neg[:1], score[:-1]])
        prev2 = np.concatenate([neg, score[:-2]])
        prev2 = np.where(skip_ok, prev2, _NEG)
        best = score.copy()
        choice = np.zeros(num_states, dtype=np.uint8)
        better = prev1 > best
        best[better] = prev1[better]
        choice[better] = 1
        better = prev2 > best
        best[better] = prev2[better]
        choice[better] = 2
        if exits is not None:
            cand = score[exits] + exit_cost
            j = int(np.argmax(cand))
            if cand[j] > best[tail]:
                best[tail] = cand[j]
                tail_from[t] = exits[j]
        back[t] = choice
        score = best + emit[t]
    total = score + final
    state = int(np.argmax(total))
    best_score = float(total[state])
    path = np.empty(num_frames, dtype=np.int64)
    for t in range(num_frames - 1, -1, -1):
        path[t] = state
        if state == tail and tail_from[t] >= 0:
            state = int(tail_from[t])
        else:
            state -= int(back[t, state])
    return path, best_score


def forced_align_ids(log_probs: np.ndarray, ids: Sequence[int], blank_id: int) -> tuple[np.ndarray, float]:
    """Plain CTC forced alignment of ``ids`` to ``(T, V)`` log-probs with :func:`ctc_viterbi`.

    Returns the per-frame label (blank where the path is on a blank), as ``torchaudio.functional.forced_align``
    does, and the path's total log-prob. Used to test :func:`ctc_viterbi` against torchaudio.
    """
    ids = np.asarray(ids, dtype=np.int64)
    num_states = 2 * len(ids) + 1
    labels = np.full(num_states, blank_id, dtype=np.int64)
    labels[1::2] = ids
    skip_ok = np.zeros(num_states, dtype=bool)
    skip_ok[3::2] = ids[1:] != ids[:-1]
    init = np.full(num_states, _NEG, dtype=np.float32)
    init[:2] = 0
    final = np.full(num_states, _NEG, dtype=np.float32)
    final[-2:] = 0
    path, score = ctc_viterbi(log_probs[:, labels].astype(np.float32), labels, skip_ok, init, final)
    return labels[path], score


# -------------------------------------------------------------------------------------------------------- alignment
@dataclass
class AlignedWord:
    """A word placed on the recording: frames ``[start, end]`` inclusive (of its letters), or skipped."""

    index: int  # into the word list
    start: int = -1
    end: int = -1
    skipped: bool = False


@dataclass
class Alignment:
    """Result of aligning one recording: words on frames, and per-frame scores.

    ``gap``: ``(frames,)`` float32, aligned-path log-prob minus the best log-prob of that frame (<= 0, nats).
    ``star``: ``(frames,)`` bool, frames the garbage state took.
    """

    words: list[AlignedWord]
    gap: np.ndarray
    star: np.ndarray
    frame_s: float
    windows: int = 0
    stalls: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.gap)


@dataclass
class _Window:
    """The state chain of one alignment window's text: ``S`` states, per-state label / kind / owning word."""

    labels: np.ndarray  # (S,) emission column per state (blank for blanks and gaps)
    is_gap: np.ndarray  # (S,) bool: between-word state (blank | delimiter | star)
    word: np.ndarray  # (S,) int: local word index of a letter state, -1 otherwise
    skip_ok: np.ndarray  # (S,) bool
    word_start: np.ndarray  # (n_words,) state index of each word's leading gap
    word_end: np.ndarray  # (n_words,) state index of each word's last letter
    chars_before: np.ndarray  # (n_words + 1,) letters before each word (and in all)
    free_end: bool = False  # a last state for the audio after the window's text (the next window's)


def _build_window(words: Sequence[Word], blank_id: int, free_end: bool = False) -> _Window:
    labels: list[int] = []
    is_gap: list[bool] = []
    owner: list[int] = []
    skip_ok: list[bool] = []
    starts, ends, before = [], [], [0]
    prev_label = None
    for k, w in enumerate(words):
        starts.append(len(labels))
        labels.append(blank_id)
        is_gap.append(True)
        owner.append(-1)
        skip_ok.append(False)
        for j, c in enumerate(w.ids):
            if j:
                labels.append(blank_id)
                is_gap.append(False)
                owner.append(-1)
                skip_ok.append(False)
            labels.append(c)
            is_gap.append(False)
            owner.append(k)
            skip_ok.append(prev_label is not None and prev_label != c)
            prev_label = c
        ends.append(len(labels) - 1)
        before.append(before[-1] + len(w.ids))
    labels.append(blank_id)
    is_gap.append(True)
    owner.append(-1)
    skip_ok.append(False)
    if free_end:  # after the text: audio that belongs to the next window (see _emissions)
        labels.append(blank_id)
        is_gap.append(False)
        owner.append(-1)
        skip_ok.append(True)
    return _Window(np.asarray(labels), np.asarray(is_gap), np.asarray(owner), np.asarray(skip_ok),
                   np.asarray(starts), np.asarray(ends), np.asarray(before), free_end)


def _emissions(lp: np.ndarray, win: _Window, blank_id: int, delim_id: int | None,
               star_penalty: float, search: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(T, S)`` state scores and ``(T,)`` star scores of a window; gap states take max(blank, delimiter, star)."""
    best = lp.max(axis=1)
    star = best - np.float32(star_penalty)
    gap_score = lp[:, blank_id] if delim_id is None else np.maximum(lp[:, blank_id], lp[:, delim_id])
    gap_score = np.maximum(gap_score, star)
    emit = lp[:, win.labels]
    emit[:, win.is_gap] = gap_score[:, None]
    inner_blank = (win.labels == blank_id) & ~win.is_gap
    emit[:, inner_blank] -= np.float32(INNER_BLANK_NATS)
    if win.free_end:
        emit[:, -1] = gap_score if search else np.maximum(gap_score, best - np.float32(FREE_TAIL_NATS))
    return emit.astype(np.float32, copy=False), star


def _heard(lp: np.ndarray, frames: np.ndarray, label: int, first: bool) -> int:
    """Where a word really starts (``first``) or ends on its first/last letter's path ``frames``.

    A letter normally holds its state for a frame or three. When it holds it much longer
    (> :data:`LONG_LETTER_FRAMES`), the path has parked it on audio the model hears as that letter but is not the
    word: a pause whose noise sounds like ``f`` or ``s``. The letter then starts (ends) one frame before (after) its
    most likely frame, its spike.
    """
    if len(frames) <= LONG_LETTER_FRAMES:
        return int(frames[0] if first else frames[-1])
    spike = int(frames[int(np.argmax(lp[frames, label]))])
    return max(int(frames[0]), spike - 1) if first else min(int(frames[-1]), spike + 1)


def align_window(lp: np.ndarray, words: Sequence[Word], blank_id: int, delim_id: int | None, options: AlignOptions,
                 final: bool, search: bool = False
                 ) -> tuple[list[tuple[int, int, int, float]], int, np.ndarray, np.ndarray]:
    """Align ``words`` (a text window) to ``(T, V)`` log-probs ``lp``.

    Returns ``(placed, first_word, gap, star)``: ``placed`` = ``(local word, start frame, end frame, confidence)``
    of the words on the path in order (confidence: the mean over the word's letters of the best per-frame gap
    while on that letter, nats; a letter the model hears somewhere in its span scores near 0, a letter forced onto
    audio that does not hold it scores far below, however long the word is stretched), ``first_word`` = the
    local index the path starts at (earlier ones were skipped),
    ``search``: find where in a long text the audio is: starting at any word costs a fixed
    :data:`SEARCH_JUMP_NATS`, leaving text after the find costs nothing, and speech after it costs the full star
    price (else placing no text at all would be the cheapest path).
    ``gap`` ``(T,)`` = path log-prob minus best log-prob per frame, ``star`` ``(T,)`` bool = a frame between
    words where the model hears a letter: speech the text does not cover. (Counting frames the star won would miss
    most of it: CTC puts blank on most frames even in speech, and the between-word state takes blank too.)
    """
    win = _build_window(words, blank_id, free_end=not final)
    emit, _ = _emissions(lp, win, blank_id, delim_id, options.star_penalty, search)
    num_states = len(win.labels)
    init = np.full(num_states, _NEG, dtype=np.float32)
    if search:
        skip_cost = np.full(len(win.word_start), -SEARCH_JUMP_NATS, dtype=np.float32)
        skip_cost[0] = 0
    else:
        skip_cost = -options.skip_per_char * win.chars_before[:-1].astype(np.float32)
    init[win.word_start] = skip_cost  # start in word k's leading gap ...
    init[win.word_start + 1] = skip_cost  # ... or on its first letter
    end_cost = np.full(num_states, _NEG, dtype=np.float32)
    if final:  # the recording ends: the text must end too, or pay for what was not read
        remaining = (win.chars_before[-1] - win.chars_before[1:]).astype(np.float32)
        end_cost[win.word_end] = -options.skip_per_char * remaining
        end_cost[win.word_end + 1] = np.maximum(end_cost[win.word_end + 1], -options.skip_per_char * remaining)
    else:
        # The audio after the window's text goes to a tail state that takes speech at FREE_TAIL_NATS per letter
        # frame: it belongs to the next window's text (the star's full price would push the path to stretch this
        # window's text over it). The tail may also be entered after any word, paying LEAVE_NATS_PER_CHAR for each
        # letter left to the next window: cheaper than cramming text into audio that does not hold it (speech
        # without text fills the window, or the reading rate was overestimated), dearer than placing a letter
        # that is there.
        end_cost[-1] = 0
        exits = win.word_start  # in word k's leading gap: words k, k+1, ... are left
        leave = 0.0 if search else LEAVE_NATS_PER_CHAR
        exit_cost = (-leave * (win.chars_before[-1] - win.chars_before[:-1])).astype(np.float32)
    exits_args = () if final else (exits, exit_cost)
    path, _ = ctc_viterbi(emit, win.labels, win.skip_ok, init, end_cost, *exits_args)
    frames = np.arange(len(path))
    on = emit[frames, path]
    gap = on - lp.max(axis=1)
    heard = lp.argmax(axis=1)
    letter = (heard != blank_id) & (heard != (delim_id if delim_id is not None else blank_id))
    star = win.is_gap[path] & letter
    owner = win.word[path]
    placed: list[tuple[int, int, int, float]] = []
    letters = np.flatnonzero(owner >= 0)
    if len(letters):
        w = owner[letters]
        cuts = np.flatnonzero(np.diff(w)) + 1
        for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(w)]])):
            frames_on = letters[a:b]
            states = path[frames_on]
            per_letter = [float(gap[frames_on[states == st]].max()) for st in np.unique(states)]
            first = _heard(lp, frames_on[states == states[0]], win.labels[states[0]], first=True)
            last = _heard(lp, frames_on[states == states[-1]], win.labels[states[-1]], first=False)
            placed.append((int(w[a]), first, last, float(np.mean(per_letter))))
    first_state = int(path[0])
    first_word = int(np.searchsorted(win.word_start, first_state, side="right") - 1)
    return placed, max(0, first_word), gap.astype(np.float32), star


def _trusted(found: Sequence[tuple[int, int, int, float]], confidences: Sequence[float]) -> bool:
    """Whether the words a search window placed (with cheap skipping and a lot of text) are a real find.

    Cheap skipping over 8x the text can fit short words onto speech the text does not cover; a real find is a run
    of at least :data:`SEARCH_MIN_WORDS` words as confident as the recording's committed words (median minus
    :data:`SEARCH_CONFIDENCE_MARGIN`).
    """
    if len(found) < SEARCH_MIN_WORDS:
        return False
    typical = float(np.median(confidences[-500:])) if confidences else -ANCHOR_GAP_NATS / 2
    return float(np.mean([c for *_, c in found])) >= typical - SEARCH_CONFIDENCE_MARGIN


def align_emissions(blocks: Iterable[np.ndarray], words: Sequence[Word], blank_id: int, delim_id: int | None,
                    frame_s: float, options: AlignOptions = AlignOptions(), progress=None) -> Alignment:
    """Align ``words`` to a stream of ``(frames, vocab)`` log-prob blocks (the file's frames in order).

    ``progress``: called with the number of frames done after each window (for a progress bar).
    See the module docstring for the windowing.
    """
    window = max(8, int(round(options.window_s / frame_s)))
    overlap = int(round(options.overlap_s / frame_s))
    hop = max(1, window - overlap)
    aligned = [AlignedWord(i) for i in range(len(words))]
    gaps: list[np.ndarray] = []
    stars: list[np.ndarray] = []
    buffer = np.zeros((0, 0), dtype=np.float32)
    offset = 0  # file frame of buffer[0]
    next_word = 0
    committed_chars, committed_frames = 0, 0  # for the reading rate
    growth = 1  # text window multiplier: doubles with each window that anchors nothing (searching for the text)
    confidences: list[float] = []  # of the committed words, for judging what a search finds
    result = Alignment(aligned, np.zeros(0, np.float32), np.zeros(0, bool), frame_s)
    stream = iter(blocks)
    exhausted = False

    def record(gap: np.ndarray, star: np.ndarray) -> None:
        gaps.append(gap.astype(np.float32))
        stars.append(star.astype(bool))

    while True:
        while not exhausted and len(buffer) < window + 1:  # one frame more: the window is then known not to be last
            try:
                block = next(stream)
            except StopIteration:
                exhausted = True
                break
            buffer = block.astype(np.float32) if buffer.size == 0 else np.concatenate([buffer, block])
        if len(buffer) == 0:
            break
        final = exhausted and len(buffer) <= window
        lp = buffer if final else buffer[:window]
        result.windows += 1
        if next_word >= len(words):  # text used up: the rest of the audio has no text
            heard = lp.argmax(axis=1)
            record(np.full(len(lp), -options.star_penalty, np.float32),
                   (heard != blank_id) & (heard != (delim_id if delim_id is not None else blank_id)))
            take, commit, end_word, placed = len(lp), 0, next_word, []
        else:
            # Text for the window: the reading rate so far (chars per second of committed audio) times the part
            # of the window it should fill; all the rest of the text in the last window (up to a cap).
            rate = committed_chars / (committed_frames * frame_s) if committed_frames * frame_s >= MIN_RATE_S \
                else INITIAL_CHARS_PER_S
            budget = rate * len(lp) * frame_s * (FINAL_TEXT_CAP if final else TEXT_FILL) * growth
            end_word, chars = next_word, 0
            while end_word < len(words) and (chars < budget or end_word == next_word):
                chars += len(words[end_word].ids)
                end_word += 1
            placed, first, gap, star = align_window(
                lp, words[next_word:end_word], blank_id, delim_id, options, final=final,
                search=growth > 1)
            if final:
                take, commit = len(lp), len(placed)
            else:
                # Anchor on the last confident word that ends before the overlap and is not one of the last few
                # of the window's text (those may be squeezed when the text ran past the audio).
                limit = len(lp) - overlap
                last_anchor = end_word - next_word - HOLD_WORDS
                commit = 0
                for k, (w, s0, e, confidence) in enumerate(placed):
                    if e >= limit or w >= last_anchor:
                        break
                    if confidence > -options.anchor_gap:
                        commit = k + 1
                if commit and growth > 1 and not _trusted(placed[:commit], confidences):
                    commit = 0  # a search's find must look like the text aligned so far, not a lucky match
                take = placed[commit - 1][2] + 1 if commit else hop
            for w, s0, e, confidence in placed[:commit]:
                confidences.append(confidence)
                aligned[next_word + w].start = offset + s0
                aligned[next_word + w].end = offset + e
                committed_chars += len(words[next_word + w].ids)
            if commit:
                committed_frames += take
                done = next_word + placed[commit - 1][0] + 1
                for k in range(next_word, done):
                    if aligned[k].start < 0:  # the path started after it, or skipped it
                        aligned[k].skipped = True
                record(gap[:take], star[:take])
                growth = 1
            elif growth < MAX_TEXT_GROWTH and not final:
                # Nothing anchored: search before giving up on this audio. The same window again, with twice the
                # text and cheap skipping, finds the place when the reader left a passage of the text out.
                done, take = next_word, 0
                growth *= 2
                result.stalls += 1
            else:
                # Still nothing at the largest text window: audio the text does not cover (an introduction, a
                # passage missing from the text, music). Move on by a hop, still searching.
                done = next_word
                record(gap[:take], np.ones(take, dtype=bool))
                result.stalls += 1
            if final:
                done = end_word  # what the last path did not place was not heard
            next_word = done
        offset += take
        buffer = buffer[take:]
        if progress is not None:
            progress(take)
        if final:
            break
    for k in range(next_word, len(words)):
        if aligned[k].start < 0:
            aligned[k].skipped = True
    result.gap = np.concatenate(gaps) if gaps else np.zeros(0, np.float32)
    result.star = np.concatenate(stars) if stars else np.zeros(0, bool)
    return result
