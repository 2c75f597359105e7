"""Audio: the constants the model expects, and loading any file into them.

Everything downstream sees 16 kHz mono float32 in [-1, 1]. Reading is done by soundfile (libsndfile: wav, flac,
ogg/vorbis, ogg/opus, mp3, any bit depth), resampling by soxr. Long files are read block-wise
(:func:`stream_audio`), so memory does not grow with file length.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import AudioError

SAMPLE_RATE = 16_000  # Hz; what wav2vec2 checkpoints are trained on
FRAME_STRIDE_S = 0.02  # s; the wav2vec2 CNN's hop (320 samples at 16 kHz)
RECEPTIVE_FIELD_SAMPLES = 400  # samples; shortest input the wav2vec2 CNN turns into one frame
STREAM_BLOCK_S = 30.0  # s; block size for streaming reads of long files
NORM_EPS = 1e-7  # what Wav2Vec2FeatureExtractor adds to the variance


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, before any decoding."""

    path: str
    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel
    format: str  # e.g. "WAV", "OGG", "MP3"
    subtype: str  # e.g. "PCM_16", "OPUS", "FLOAT"

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


# libsndfile is given the path as the OS's bytes (os.fsencode): soundfile encodes a str as strict UTF-8, which a file
# name that is not UTF-8 (Python holds its bytes as surrogate escapes) cannot take.


def require_regular_file(path: Path) -> None:
    """Raise :class:`AudioError` unless ``path`` is a regular file (or a link to one).

    Opening a FIFO blocks until something writes to it, so ``validate``, ``train`` and friends would hang forever;
    devices and sockets are not audio either. ``stat`` answers without opening anything.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError("audio file not found", path=path) from None
    except ValueError:  # a NUL byte in the name: no file can have it
        raise AudioError("the path holds a NUL byte; no file can have that name", path=repr(str(path))) from None
    except OSError as exc:
        raise AudioError(f"cannot open ({exc.strerror or exc})", path=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError("is a folder, not an audio file", path=path)
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise AudioError(f"is {kind}, not a regular file; audio must be a file", path=path)


def _open_error(path: Path, exc: Exception) -> AudioError:
    if not path.exists():
        return AudioError("audio file not found", path=path)
    if path.is_dir():
        return AudioError("is a folder, not an audio file", path=path)
    if path.stat().st_size == 0:
        return AudioError("audio file is empty (0 bytes)", path=path)
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return AudioError(f"cannot decode audio ({reason})", path=path)


def audio_info(path: str | Path) -> AudioInfo:
    """Header facts of ``path``; raises :class:`AudioError` with a one-line reason when unreadable."""
    import soundfile as sf

    path = Path(path)
    require_regular_file(path)
    try:
        info = sf.info(os.fsencode(path))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/OSError/TypeError by format
        raise _open_error(path, exc) from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(f"invalid header (rate {info.samplerate}, channels {info.channels})", path=path)
    return AudioInfo(str(path), int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)


def to_mono(x: np.ndarray) -> np.ndarray:
    """``(samples, channels)`` or ``(samples,)`` → ``(samples,)`` float32, by averaging channels."""
    if x.ndim == 2:
        # Huge samples overflow to inf here; check_finite reports that in one line, without numpy's warning too.
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return np.ascontiguousarray(x, dtype=np.float32)


def resample(x: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono ``(samples,)`` signal with soxr (high quality); a no-op when the rates match."""
    if sample_rate == target_rate or x.size == 0:
        return x.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(x, sample_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def check_finite(x: np.ndarray, path: str | Path) -> np.ndarray:
    """Raise :class:`AudioError` if ``x`` holds NaN or inf (float WAVs can), or samples so huge that normalising
    them (:func:`normalize_wave`, float32 like the feature extractor) overflows to NaN/inf."""
    if x.size and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(f"{bad} NaN/inf samples", path=path)
    # Finite but huge (3e38 in a corrupt float WAV): the variance overflows, every normalised sample is NaN, the
    # loss is NaN and the transcript empty. Checking the statistics normalize_wave uses catches exactly that.
    with np.errstate(over="ignore", invalid="ignore"):
        stats_finite = not x.size or (np.isfinite(x.mean()) and np.isfinite(x.var()))
    if not stats_finite:
        peak = float(np.abs(x).max())
        raise AudioError(f"samples so large (peak {peak:.1e}) that normalising them overflows to NaN/inf; float audio "
                         "should lie within [-1, 1]", path=path)
    return x


def load_audio(
    path: str | Path,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Read ``path`` (or the slice ``[offset_s, offset_s + duration_s)``) as mono float32 ``(samples,)`` at
    ``sample_rate``.

    Raises :class:`AudioError` (one line naming the file) for missing, empty, corrupt, truncated or non-finite audio.
    """
    import soundfile as sf

    path = Path(path)
    info = audio_info(path)
    if not (offset_s >= 0 and (duration_s is None or duration_s >= 0)):  # negative or NaN
        raise AudioError(f"negative offset/duration ({offset_s}, {duration_s})", path=path)
    # In float first: 1e308 s times the rate is inf, which int() cannot take; nothing is read past the end anyway.
    start_f = offset_s * info.sample_rate
    if info.frames and start_f >= info.frames:
        raise AudioError(f"offset {offset_s:.6g}s is past the end ({info.duration_s:.3f}s)", path=path)
    start = int(round(start_f))
    stop = None
    if duration_s is not None and start_f + duration_s * info.sample_rate < (info.frames or math.inf):
        stop = start + int(round(duration_s * info.sample_rate))
    try:
        x, _ = sf.read(os.fsencode(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as exc:
        raise _open_error(path, exc) from None
    if x.shape[0] == 0:
        raise AudioError("audio holds no samples", path=path)
    x = check_finite(to_mono(x), path)
    # Again after mixing and resampling: finite but huge samples (a corrupt float WAV) overflow to inf there.
    return check_finite(resample(x, info.sample_rate, sample_rate), path)


def stream_audio(
    path: str | Path,
    block_s: float = STREAM_BLOCK_S,
    sample_rate: int = SAMPLE_RATE,
) -> Iterator[np.ndarray]:
    """Yield consecutive mono float32 blocks of about ``block_s`` seconds at ``sample_rate``.

    Memory stays bounded by the block size whatever the file length; the resampler is streaming (soxr keeps the
    filter state across blocks), so the concatenation equals a whole-file resample up to filter edge effects.
    """
    import soundfile as sf
    import soxr

    path = Path(path)
    info = audio_info(path)
    block_frames = max(1, int(block_s * info.sample_rate))
    stream = None
    if info.sample_rate != sample_rate:
        stream = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    try:
        with sf.SoundFile(os.fsencode(path)) as f:
            while True:
                x = f.read(block_frames, dtype="float32", always_2d=True)
                last = x.shape[0] < block_frames
                x = check_finite(to_mono(x), path)
                if stream is not None:
                    x = check_finite(stream.resample_chunk(x, last=last), path)
                if x.size:
                    yield x
                if last:
                    break
    except AudioError:
        raise
    except Exception as exc:
        raise _open_error(path, exc) from None


def normalize_wave(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over one ``(samples,)`` wave, as ``Wav2Vec2FeatureExtractor(do_normalize=True)``.

    Training and inference both call this, so a model sees the same input scaling in both.
    """
    wave = wave.astype(np.float32, copy=False)
    return ((wave - wave.mean()) / np.sqrt(wave.var() + NORM_EPS)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class WaveStats:
    """Mean and standard deviation of a whole signal, as :func:`normalize_wave` would compute them over it."""

    mean: float
    std: float  # sqrt(variance + NORM_EPS)

    def apply(self, wave: np.ndarray) -> np.ndarray:
        """``(wave - mean) / std`` as float32: a piece of the signal normalised with the whole signal's statistics."""
        return ((wave.astype(np.float32, copy=False) - np.float32(self.mean)) / np.float32(self.std)).astype(
            np.float32, copy=False)


def wave_stats(blocks: Iterable[np.ndarray]) -> WaveStats:
    """:class:`WaveStats` over a stream of ``(samples,)`` blocks, in O(1) memory.

    Long-file transcription normalises every window with the statistics of the whole file, so chunked inference
    sees the same input scaling as a single pass (per-window statistics shift with each window's speech/silence mix).
    Sums are float64 per block and merged with Chan's parallel formula, so an hour of audio loses no precision.
    """
    n, mean, m2 = 0, 0.0, 0.0
    for block in blocks:
        b = np.asarray(block, dtype=np.float64)
        if not b.size:
            continue
        nb, mb = b.size, float(b.mean())
        m2b = float(((b - mb) ** 2).sum())
        delta = mb - mean
        total = n + nb
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
    var = m2 / n if n else 0.0
    return WaveStats(mean, float(np.sqrt(var + NORM_EPS)))


def write_wav(path: str | Path, x: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> None:
    """Write mono ``(samples,)`` float audio as WAV (used by synth and tests)."""
    import soundfile as sf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(x, -1.0, 1.0), sample_rate, subtype=subtype)


def frames_for_samples(num_samples: int, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2)) -> int:
    """Output frames of the wav2vec2 CNN for ``num_samples`` input samples (the model's own length formula).

    Matches ``Wav2Vec2Model._get_feat_extract_output_lengths``: ``L = floor((L - k) / s) + 1`` per conv layer.
    """
    length = num_samples
    for k, s in zip(conv_kernel, conv_stride):
        length = (length - k) // s + 1
        if length <= 0:
            return 0
    return length


class FrameGeometry:
    """How a recognizer's CNN maps input samples to output frames; needs ``conv_kernel``, ``conv_stride`` and
    ``sample_rate`` attributes (both inference engines have them)."""

    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    sample_rate: int

    @property
    def samples_per_frame(self) -> int:
        """Input samples per output frame (320 for wav2vec2: 20 ms at 16 kHz)."""
        return int(np.prod(self.conv_stride))

    @property
    def frame_stride_s(self) -> float:
        return self.samples_per_frame / self.sample_rate

    def frames_for(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` input samples (the conv length formula; 0 below the receptive field)."""
        return frames_for_samples(int(num_samples), self.conv_kernel, self.conv_stride)
