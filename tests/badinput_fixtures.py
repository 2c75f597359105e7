"""Builders of bad (and unusual but valid) inputs: audio files, manifest lines, configs, model folders, pickles.

Every builder writes into a folder it is given and returns the path(s); nothing is random unless a seed is passed.
Used by test_bad_input, test_faults, test_safe_loading and test_audio_fuzz.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np

SR = 16_000


def tone(
    duration_s: float, sample_rate: int = SR, channels: int = 1, freq_hz: float = 300.0, amp: float = 0.3
) -> np.ndarray:
    """A sine ``(samples,)`` or ``(samples, channels)`` float32 (each channel at a slightly different pitch)."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    cols = [amp * np.sin(2 * np.pi * (freq_hz + 25 * c) * t) for c in range(channels)]
    x = np.stack(cols, axis=1) if channels > 1 else cols[0]
    return x.astype(np.float32)


def write_audio(path: Path, x: np.ndarray, sample_rate: int = SR, format: str = "WAV", subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sample_rate, format=format, subtype=subtype)
    return path


class Hung(BaseException):
    """Raised by :func:`deadline`. Not an Exception, so no ``except Exception`` in the code under test can turn a
    hang into an ordinary error line and let the test pass."""


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail with :class:`Hung` instead of blocking forever (a FIFO opened for reading, a loop that never ends).

    SIGALRM interrupts a blocking ``open()`` in the main thread, where pytest (and each xdist worker) runs tests.
    """
    def hung(signum, frame):
        raise Hung(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------------ broken audio
def truncated_wav(path: Path, duration_s: float = 1.0) -> Path:
    """A PCM16 WAV whose data chunk is cut in half (the header still declares the full length)."""
    write_audio(path, tone(duration_s))
    data = path.read_bytes()
    path.write_bytes(data[: 44 + (len(data) - 44) // 2])
    return path


def header_only_wav(path: Path) -> Path:
    """The first 30 bytes of a WAV: RIFF header, no data chunk."""
    write_audio(path, tone(0.5))
    path.write_bytes(path.read_bytes()[:30])
    return path


def zero_byte_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def not_audio_file(path: Path) -> Path:
    """Text with an audio extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a transcript, not audio\n" * 20, encoding="utf-8")
    return path


def silent_wav(path: Path, duration_s: float = 1.0) -> Path:
    return write_audio(path, np.zeros(int(duration_s * SR), np.float32))


def nonfinite_wav(path: Path, value: float = float("nan"), duration_s: float = 1.0) -> Path:
    """A float32 WAV with a few NaN (or inf) samples: only float WAVs can hold them."""
    x = tone(duration_s)
    x[100:110] = value
    return write_audio(path, x, subtype="FLOAT")


def huge_float_wav(path: Path, value: float = 3e38, duration_s: float = 1.0, channels: int = 1,
                   sample_rate: int = SR) -> Path:
    """A float32 WAV of finite samples so large that normalising them overflows (a corrupt float file)."""
    x = tone(duration_s, sample_rate, channels) / 0.3 * value
    return write_audio(path, x.astype(np.float32), sample_rate, subtype="FLOAT")


def fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks until a writer comes, and none ever does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def long_pcm16(path: Path, hours: float = 1.0, sample_rate: int = 8000, block_s: float = 60.0) -> Path:
    """An ``hours``-long PCM16 WAV (zeros with a tone burst each block), written block-wise without big buffers."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    block = np.zeros(int(block_s * sample_rate), np.float32)
    block[: sample_rate] = tone(1.0, sample_rate)
    with sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV") as f:
        for _ in range(int(round(hours * 3600 / block_s))):
            f.write(block)
    return path


# Unusual but valid encodings: (file name, soundfile format, subtype, sample rate, channels).
VALID_FORMATS = {
    "pcm-u8": ("u8.wav", "WAV", "PCM_U8", 16000, 1),
    "pcm-24": ("p24.wav", "WAV", "PCM_24", 16000, 1),
    "float-wav": ("float.wav", "WAV", "FLOAT", 16000, 1),
    "stereo": ("stereo.wav", "WAV", "PCM_16", 16000, 2),
    "6-channel": ("six.wav", "WAV", "PCM_16", 16000, 6),
    "8-kHz": ("r8k.wav", "WAV", "PCM_16", 8000, 1),
    "48-kHz": ("r48k.wav", "WAV", "PCM_16", 48000, 1),
    "mp3": ("clip.mp3", "MP3", "MPEG_LAYER_III", 16000, 1),
    "ogg-vorbis": ("clip.ogg", "OGG", "VORBIS", 16000, 1),
    "opus": ("clip.opus", "OGG", "OPUS", 48000, 1),
    "flac": ("clip.flac", "FLAC", "PCM_16", 16000, 1),
}


def valid_format_file(folder: Path, key: str, duration_s: float = 1.0) -> Path:
    name, fmt, subtype, rate, channels = VALID_FORMATS[key]
    return write_audio(folder / name, tone(duration_s, rate, channels), rate, fmt, subtype)


# ------------------------------------------------------------------------------------------------ manifests
def manifest_line(audio: Path | str, duration: float, text: str, uid: str, **extra) -> bytes:
    return json.dumps({"audio_filepath": str(audio), "duration": duration, "text": text, "id": uid, **extra},
                      ensure_ascii=False).encode("utf-8")


def write_manifest_lines(path: Path, lines: list[bytes]) -> Path:
    """Raw lines (bytes, not validated) joined by newlines: the only way to write a broken manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# ------------------------------------------------------------------------------------------------ model folders
def copy_model(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def model_without_weights(src: Path, dst: Path) -> Path:
    copy_model(src, dst)
    (dst / "model.safetensors").unlink()
    return dst


def model_with_corrupt_weights(src: Path, dst: Path) -> Path:
    """``model.safetensors`` cut to a third: the header promises tensors the file does not hold."""
    copy_model(src, dst)
    weights = dst / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    return dst


def model_with_wrong_vocab(src: Path, dst: Path, extra_tokens: int = 5) -> Path:
    """``vocab.json`` with more tokens than the CTC head has outputs."""
    copy_model(src, dst)
    vocab = json.loads((dst / "vocab.json").read_text(encoding="utf-8"))
    for i in range(extra_tokens):
        vocab[f"x{i}"] = len(vocab)
    (dst / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    return dst


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a harmless stand-in for arbitrary code execution."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def custom_code_model(src: Path, dst: Path, marker: Path, where: str = "config.json",
                      model_type: str = "evilnet") -> Path:
    """A model folder whose ``where`` config has an ``auto_map`` to its own Python file, which creates ``marker``
    when imported: what transformers offers to run, asking "[y/N]" on stdin."""
    copy_model(src, dst)
    (dst / "evilnet.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor\n"
        f"class EvilConfig(Wav2Vec2Config):\n    model_type = {model_type!r}\n"
        "class EvilModel(Wav2Vec2ForCTC):\n    config_class = EvilConfig\n"
        "class EvilProcessor(Wav2Vec2Processor):\n    pass\n", encoding="utf-8")
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    cfg["model_type"] = model_type
    cfg["auto_map"] = {"AutoConfig": "evilnet.EvilConfig", "AutoModelForCTC": "evilnet.EvilModel"}
    (dst / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    for name in ("processor_config.json", "tokenizer_config.json"):
        if name == where or where == "config.json":
            data = json.loads((dst / name).read_text(encoding="utf-8"))
            data["auto_map"] = {"AutoProcessor": "evilnet.EvilProcessor"}
            (dst / name).write_text(json.dumps(data), encoding="utf-8")
    if where != "config.json":  # only the processor's config asks for code: config.json stays plain wav2vec2
        (dst / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "auto_map"} |
                                                    {"model_type": "wav2vec2"}), encoding="utf-8")
    return dst


def model_with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of ``src`` whose ``config.json`` has ``changes`` applied (``None`` removes a key)."""
    copy_model(src, dst)
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return dst


def model_with_nan_weights(src: Path, dst: Path, tensor: str = "lm_head.weight", value: float = float("nan")) -> Path:
    """A copy of ``src`` whose ``tensor`` is all NaN (a diverged run saved as is), or all ``value``."""
    import torch
    from safetensors.torch import load_file, save_file

    copy_model(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    weights[tensor] = torch.full_like(weights[tensor], value)
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def malicious_pickle_model(src: Path, dst: Path, marker: Path) -> Path:
    """A model folder whose only weights are a ``pytorch_model.bin`` that creates ``marker`` when unpickled."""
    copy_model(src, dst)
    for p in dst.glob("*.safetensors"):
        p.unlink()
    with open(dst / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wav2vec2.masked_spec_embed": _CreatesFile(str(marker))}, f)
    return dst
