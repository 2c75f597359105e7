"""Training data: manifest utterances → (waveform, label ids), length-bucketed batches by total audio seconds.

Utterances that cannot be trained on are skipped and *counted by reason* (the run summary lists them): unreadable
audio, too short/long, empty text after normalisation, a transcript that needs more CTC frames than the audio gives,
a segment ``asr-transfer align`` marked (``align_flag``) as possibly not matching its text, or a line imported
without a transcript (``untranscribed``: pseudo-label it first).
Batches are formed per epoch from ``(seed, epoch)`` alone, so a resumed run can regenerate the epoch and skip to the
saved batch index: the sampler position is ``(epoch, batch_index)``.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..audio import SAMPLE_RATE, audio_info, frames_for_samples, load_audio, resample
from ..audio import normalize_wave as _normalize
from ..errors import AudioError, UserError
from ..manifest import ALIGN_FLAG, Utterance, is_marked, is_untranscribed, read_manifest
from ..validate import SILENCE_PEAK  # the same threshold `validate` reports as "silent"
from ..vocab import ctc_min_frames, text_to_ids

UNTRANSCRIBED_SKIP = "untranscribed (pseudo-label it first)"
DURATION_TOLERANCE_S = 0.1  # s; manifest duration may exceed the file's by this much (validate's default)


@dataclass(frozen=True)
class Example:
    """One trainable utterance: label ids already mapped through the target vocabulary."""

    uid: str
    utt: Utterance
    labels: tuple[int, ...]
    duration_s: float
    replay: bool = False  # from the source-language replay manifest (train.mix), not the target train manifest

    @property
    def key(self) -> str:
        """Unique across the target and replay manifests (which may both hold an ``utt-0001``): cache and skips."""
        return f"replay:{self.uid}" if self.replay else self.uid


@dataclass
class SkipCounter:
    """Counts documented skips by reason, with a few example ids each (for the run summary)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, uid: str, detail: str = "") -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(f"{uid}: {detail}" if detail else uid)

    def as_dict(self) -> dict:
        return {"total": sum(self.counts.values()), "by_reason": dict(self.counts), "examples": self.examples}


def build_examples(
    manifest: str | Path,
    vocab: dict[str, int],
    normalizer,
    conv_kernel: Sequence[int],
    conv_stride: Sequence[int],
    min_utt_s: float = 0.0,
    max_utt_s: float = math.inf,
    skips: SkipCounter | None = None,
    max_items: int | None = None,
    replay: bool = False,
    oov_texts: list[str] | None = None,
) -> list[Example]:
    """Read, normalise and filter a manifest into :class:`Example` objects (audio is not decoded here).

    ``replay`` marks the examples as replay (:mod:`asr_transfer.training.mix`); the normalised texts skipped for
    characters outside ``vocab`` are appended to ``oov_texts`` when given.
    """

    skips = skips if skips is not None else SkipCounter()
    unk = vocab.get("<unk>")
    out: list[Example] = []
    for utt in read_manifest(manifest):
        uid = utt.uid
        if is_marked(utt):  # `align` found its text and audio may not match
            skips.add("marked by align", uid, str(utt.extra[ALIGN_FLAG]))
            continue
        if is_untranscribed(utt):  # no text to learn from: `asr-transfer pseudo-label` gives it one
            skips.add(UNTRANSCRIBED_SKIP, uid)
            continue
        try:
            info = audio_info(utt.audio_filepath)
        except AudioError as exc:
            skips.add("unreadable audio", uid, str(exc))
            continue
        duration_s = utt.duration or max(0.0, info.duration_s - utt.offset)
        if utt.offset + duration_s > info.duration_s + DURATION_TOLERANCE_S:
            # A cut-off copy (libsndfile reads what is there) would train the full transcript on part of the audio.
            skips.add("audio shorter than manifest", uid, f"file holds {info.duration_s:.3f}s, manifest needs "
                      f"{utt.offset + duration_s:.3f}s")
            continue
        if duration_s < min_utt_s or duration_s * SAMPLE_RATE < 400:
            skips.add("too short", uid, f"{duration_s:.3f}s")
            continue
        if duration_s > max_utt_s:
            skips.add("too long", uid, f"{duration_s:.1f}s > {max_utt_s}s")
            continue
        text = normalizer(utt.text)
        if not text.strip():
            skips.add("empty text", uid)
            continue
        ids = text_to_ids(text, vocab)
        if unk is not None and unk in ids:
            skips.add("characters not in vocabulary", uid, text)
            if oov_texts is not None:
                oov_texts.append(text)
            continue
        frames = frames_for_samples(int(duration_s * SAMPLE_RATE), tuple(conv_kernel), tuple(conv_stride))
        if ctc_min_frames(ids) > frames:
            skips.add("transcript too long for CTC", uid, f"{ctc_min_frames(ids)} labels > {frames} frames")
            continue
        out.append(Example(uid, utt, tuple(ids), duration_s, replay))
        if max_items is not None and len(out) >= max_items:
            break
    return out


EQ_BANDS = 2  # peaking filters per utterance (data.eq_db)
EQ_FREQ_HZ = (150.0, 6000.0)  # centre frequencies, log-uniform: from the first formant to below Nyquist (8 kHz)
EQ_Q = (0.7, 2.0)  # quality factors, uniform: an octave and a half down to about two thirds of an octave wide


def peaking_biquad(
    f0_hz: float, gain_db: float, q: float, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, np.ndarray]:
    """``(b, a)`` of a peaking-EQ biquad (Bristow-Johnson's Audio EQ Cookbook): ``gain_db`` at ``f0_hz``, 0 dB far
    away."""
    amp = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * f0_hz / sample_rate
    alpha = math.sin(w0) / (2 * q)
    b = np.array([1 + alpha * amp, -2 * math.cos(w0), 1 - alpha * amp])
    a = np.array([1 + alpha / amp, -2 * math.cos(w0), 1 - alpha / amp])
    return b / a[0], a / a[0]


def random_eq(wave: np.ndarray, max_db: float, rng: np.random.Generator) -> np.ndarray:
    """``wave`` through :data:`EQ_BANDS` random peaking filters (gains uniform in ±``max_db`` dB); ``(samples,)``
    float32.

    A voice's timbre is largely its formant levels and spectral tilt; espeak-ng's variants differ in exactly those
    (one held-out voice has its third formant at 9 % height), which speed perturbation does not touch.
    """
    from scipy.signal import lfilter

    out = wave.astype(np.float64)
    for _ in range(EQ_BANDS):
        f0 = math.exp(rng.uniform(math.log(EQ_FREQ_HZ[0]), math.log(EQ_FREQ_HZ[1])))
        b, a = peaking_biquad(f0, rng.uniform(-max_db, max_db), rng.uniform(*EQ_Q))
        out = lfilter(b, a, out)
    return out.astype(np.float32)


def load_example_audio(
    ex: Example,
    speed: float = 1.0,
    snr_db: float | None = None,
    rng: np.random.Generator | None = None,
    eq_db: float = 0.0,
) -> np.ndarray:
    """Decode ``ex``'s audio at 16 kHz mono ``(samples,)``, optionally speed-perturbed, equalised and with white noise.

    Raises :class:`AudioError` for audio that decodes but cannot be trained on (NaN/inf samples, digital silence);
    the trainer skips such utterances and counts them (:func:`audio_skip_reason`).
    """
    wave = load_audio(ex.utt.audio_filepath, ex.utt.offset, ex.utt.duration or None)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(f"all silent (peak {peak:.1e})", path=ex.utt.audio_filepath)
    if speed != 1.0:
        # Speed perturbation as in Kaldi: resample and reinterpret at 16 kHz (tempo and pitch change together).
        wave = resample(wave, int(round(SAMPLE_RATE * speed)), SAMPLE_RATE)
    rng = rng or np.random.default_rng(0)
    if eq_db > 0:
        wave = random_eq(wave, eq_db, rng.spawn(1)[0])  # a child stream: the noise draws stay what they were without EQ
    if snr_db is not None:
        power = float(np.mean(wave.astype(np.float64) ** 2)) or 1e-8
        noise = rng.standard_normal(wave.shape[0]).astype(np.float32)
        wave = wave + noise * math.sqrt(power / (10 ** (snr_db / 10)))
    return wave.astype(np.float32, copy=False)


class AudioLoader:
    """Runs a batch's audio jobs (decode + augment one utterance each) in ``threads`` threads, or in the caller's (0).

    On a GPU a small model's step waits on audio decoding and augmentation, not on the model (train.loader_threads).
    Each job owns its seeded RNG, so a batch is the same whatever the thread count.
    """

    def __init__(self, threads: int = 0):
        self.threads = threads
        self._pool = None  # made on first use

    def start(self, jobs: list) -> Iterator:
        """An iterator of result getters, one per job in order: calling one returns that job's wave or raises its
        AudioError, so one bad file still skips only its own utterance."""
        if self.threads and len(jobs) > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="audio")
            return iter([self._pool.submit(job).result for job in jobs])
        return iter(jobs)  # serial: each job runs when its result is asked for


def audio_skip_reason(exc: AudioError) -> str:
    """The skip-counter reason for an utterance whose audio failed to load during training."""
    msg = str(exc)
    if "NaN/inf" in msg:
        return "non-finite samples"
    if "all silent" in msg:
        return "silent audio"
    return "unreadable audio"


def normalize_wave(wave: np.ndarray, do_normalize: bool = True) -> np.ndarray:
    """Zero-mean unit-variance per utterance, as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does."""

    return _normalize(wave) if do_normalize else wave


class BucketSampler:
    """Length-bucketed batches whose padded size (``max duration × count``) stays under ``max_batch_s``.

    Each epoch: shuffle with ``(seed, epoch)``, sort inside pools of ~``pool`` batches by duration (so padding is small
    but order stays random at the pool level), cut batches greedily, then shuffle the batch order.
    """

    def __init__(self, durations_s: Sequence[float], max_batch_s: float, seed: int = 0, pool_batches: int = 50):
        self.durations = np.asarray(durations_s, dtype=np.float64)
        self.max_batch_s = float(max_batch_s)
        self.seed = int(seed)
        self.pool_batches = pool_batches
        if len(self.durations) and self.durations.max() > self.max_batch_s:
            raise UserError(
                f"an utterance ({self.durations.max():.1f}s) exceeds data.max_batch_s ({self.max_batch_s}s)"
            )

    def batches(self, epoch: int, subset: np.ndarray | None = None) -> list[list[int]]:
        """Epoch ``epoch``'s batches of indices into the durations; ``subset`` (indices, repeats allowed) limits them
        to those utterances (the replay sampler's epoch slice); None: all."""
        rng = np.random.default_rng([self.seed, epoch])
        if subset is None:
            order = rng.permutation(len(self.durations))
        else:
            subset = np.asarray(subset, dtype=np.int64)
            order = subset[rng.permutation(len(subset))]
        durations = self.durations[order]
        mean = float(durations.mean()) if len(durations) else 1.0
        pool = max(1, int(self.pool_batches * self.max_batch_s / max(mean, 1e-3)))
        batches: list[list[int]] = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: self.durations[i])
            cur: list[int] = []
            longest = 0.0
            for i in chunk:
                d = self.durations[i]
                if cur and max(longest, d) * (len(cur) + 1) > self.max_batch_s:
                    batches.append(cur)
                    cur, longest = [], 0.0
                cur.append(int(i))
                longest = max(longest, d)
            if cur:
                batches.append(cur)
        perm = rng.permutation(len(batches))
        return [batches[i] for i in perm]

    def num_batches(self, epoch: int = 0) -> int:
        return len(self.batches(epoch))


def augmentation_for(
    seed: int, epoch: int, index: int, speeds: Sequence[float], snr_range: Sequence[float]
) -> tuple[float, float | None, int]:
    """Deterministic per-(epoch, utterance) speed factor, SNR and noise seed, so resume and caching agree."""
    rng = np.random.default_rng([seed, epoch, index, 7])
    speed = float(speeds[rng.integers(len(speeds))]) if speeds else 1.0
    snr = float(rng.uniform(snr_range[0], snr_range[1])) if snr_range else None
    return speed, snr, int(rng.integers(2**31))
