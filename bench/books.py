"""Synthetic "books": utterances of a manifest joined into one long recording with its text as one line.

Shared by ``align_accuracy.py`` (a book of held-out-voice test speech, boundaries measured) and ``aligned_train.py``
(books of a recipe's train split, aligned and trained on). Utterances are joined in manifest order with random
pauses of 0.2-1.5 s (uniform) under -70 dB white noise, so the pauses are not digital silence; the text is the
sentences joined by ". " with no line breaks. Truth per utterance: where its speech starts and ends in the book (the
clip's position plus its first/last sample above 1 % of the clip's peak: espeak pads clips with a few ms of silence).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from asr_transfer.audio import SAMPLE_RATE, load_audio, write_wav
from asr_transfer.manifest import Utterance

PAUSE_S = (0.2, 1.5)  # s, uniform, between utterances
NOISE_DB = -70.0  # dBFS white noise under the whole book
ONSET_FRACTION = 0.01  # a clip's speech starts at its first sample above this share of its peak


def speech_edges(x: np.ndarray) -> tuple[int, int]:
    """First and last sample above :data:`ONSET_FRACTION` of the peak of a ``(samples,)`` clip."""
    loud = np.flatnonzero(np.abs(x) > ONSET_FRACTION * np.abs(x).max())
    return int(loud[0]), int(loud[-1])


def write_book(utts: Sequence[Utterance], wav: Path, rng: np.random.Generator,
               text_left_out: range = range(0)) -> dict:
    """Join ``utts`` into ``wav`` (16 kHz) and their text into ``wav.with_suffix('.txt')`` (one line).

    ``text_left_out``: indices of utterances whose text is not written (their audio stays).
    Returns ``{"minutes", "utterances", "utterances_truth"}``; each truth row has ``start``/``end`` (s, the speech
    edges in the book), ``text``, ``deleted`` and the utterance's ``id``.
    """
    pieces, truth, sentences = [], [], []
    position = 0
    for k, u in enumerate(utts):
        pause = np.zeros(int(rng.uniform(*PAUSE_S) * SAMPLE_RATE), np.float32) if k else np.zeros(0, np.float32)
        # A clip whole (its manifest duration is rounded), a slice of a longer file as the manifest says.
        x = load_audio(u.audio_filepath, u.offset, u.duration if u.offset else None)
        a, b = speech_edges(x)
        position += len(pause)
        deleted = k in text_left_out
        truth.append({"id": u.uid, "start": (position + a) / SAMPLE_RATE, "end": (position + b + 1) / SAMPLE_RATE,
                      "text": u.text, "deleted": deleted})
        pieces += [pause, x]
        position += len(x)
        if not deleted:
            sentences.append(u.text)
    wave = np.concatenate(pieces)
    wave += (10 ** (NOISE_DB / 20) * rng.standard_normal(len(wave))).astype(np.float32)
    wav.parent.mkdir(parents=True, exist_ok=True)
    write_wav(wav, wave)
    wav.with_suffix(".txt").write_text(". ".join(sentences) + ".", encoding="utf-8")
    return {"minutes": round(len(wave) / SAMPLE_RATE / 60, 3), "utterances": len(utts), "utterances_truth": truth}


def write_chapters(utts: Sequence[Utterance], out_dir: Path, chapters: int, seed: int = 0) -> dict:
    """``utts`` in manifest order, cut into ``chapters`` books of about equal audio length: ``chapter-NN.wav/.txt``
    in ``out_dir`` (a folder ``asr-transfer align`` takes) and ``truth.json``. Returns the truth record."""
    total = sum(u.duration for u in utts)
    bounds = np.searchsorted(np.cumsum([u.duration for u in utts]), total * np.arange(1, chapters) / chapters)
    rng = np.random.default_rng(seed)
    books = [write_book(part, out_dir / f"chapter-{i + 1:02d}.wav", rng)
             for i, part in enumerate(np.split(np.array(utts, dtype=object), bounds)) if len(part)]
    record = {"chapters": len(books), "minutes": round(sum(b["minutes"] for b in books), 3),
              "speech_minutes": round(total / 60, 3), "utterances": len(utts),
              "books": [{"name": f"chapter-{i + 1:02d}", **b} for i, b in enumerate(books)]}
    (out_dir / "truth.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record
