"""Constructed CTC emissions for the alignment and segmentation tests: words whose letters peak on known
frames, pauses, and babble (speech with no text), at 20 ms a frame.

Used by test_alignment and test_segmentation.
"""
from __future__ import annotations

import numpy as np

from asr_transfer.alignment import Word

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz"]
FRAME_S = 0.02


def constructed_emissions(items, rng, letter_frames=(2, 4)) -> tuple[np.ndarray, list[tuple[int, int]]]:
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


def random_sentences(rng, n):
    """``n`` sentences of 3-8 random words of 2-8 letters (random, so no stretch of text repeats another)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [["".join(rng.choice(letters, int(rng.integers(2, 9)))) for _ in range(int(rng.integers(3, 9)))]
            for _ in range(n)]


def in_blocks(lp, block=700):
    return (lp[i:i + block] for i in range(0, len(lp), block))


def as_words(sentences):
    return [Word(w, tuple(VOCAB.index(c) for c in w), s) for s, sent in enumerate(sentences) for w in sent]
