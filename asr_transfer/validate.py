"""Check every line of a manifest before it costs a training run: format, audio, text, and CTC feasibility.

:func:`validate_manifest` never stops at the first problem; it returns a :class:`ValidationReport` listing each
:class:`Problem` with its manifest line, utterance id, kind and severity. Errors are lines that would break or
poison training/evaluation; warnings are oddities worth a look (a 44.1 kHz stereo file among 16 kHz mono ones).

Kinds (severity):

- line format (error): ``not_utf8``, ``bad_json``, ``missing_field``, ``wrong_type``, ``bad_value``, ``duplicate_id``
- audio (error): ``missing_audio``, ``unreadable_audio``, ``truncated`` (WAV data chunk cut short), ``zero_length``,
  ``non_finite`` (NaN/inf samples), ``silent`` (peak below :data:`SILENCE_PEAK`), ``duration_mismatch`` (manifest
  vs header, beyond the tolerance), ``past_end`` (offset + duration beyond the file), ``too_short`` (fewer samples
  than the CNN's receptive field: no output frame at all)
- audio (warning): ``sample_rate_outlier``, ``channels_outlier`` (differ from the manifest's majority)
- text (error): ``empty_text`` (after the normaliser when a language is given), ``oov_chars`` (characters the
  vocabulary lacks, after the normaliser), ``too_long_for_ctc`` (the transcript needs more CTC frames than the
  model produces for that audio: one per label plus one blank between repeated letters)
- text (warning): ``lang_mismatch`` (the line's ``lang`` differs from the one validated against)

Segments that ``asr-transfer align`` marked (``align_flag``) are not checked but counted (``marked``), as training
skips them too; ``include_marked=True`` checks them like any line.

Frames are counted with the model's own conv length formula (:func:`asr_transfer.audio.frames_for_samples`) from the
model config's ``conv_kernel``/``conv_stride`` when given, else wav2vec2-base's (≈ 49 frames/s).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio import RECEPTIVE_FIELD_SAMPLES, SAMPLE_RATE, AudioInfo, audio_info, frames_for_samples, load_audio
from .errors import PARSE_ERRORS, AudioError, ConfigError, ManifestError, UserError
from .manifest import ALIGN_SCORE, Utterance, is_marked, is_untranscribed, scan_manifest
from .vocab import UNK, WORD_DELIMITER, ctc_min_frames, text_to_ids

SILENCE_PEAK = 1e-4  # |x| peak below this (≈ -80 dBFS) is digital silence, not a quiet recording
DEFAULT_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)  # wav2vec2-base
DEFAULT_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)

KINDS: dict[str, str] = {
    "not_utf8": "error",
    "bad_json": "error",
    "missing_field": "error",
    "wrong_type": "error",
    "bad_value": "error",
    "bad_line": "error",
    "duplicate_id": "error",
    "missing_audio": "error",
    "unreadable_audio": "error",
    "truncated": "error",
    "zero_length": "error",
    "non_finite": "error",
    "silent": "error",
    "duration_mismatch": "error",
    "past_end": "error",
    "too_short": "error",
    "sample_rate_outlier": "warning",
    "channels_outlier": "warning",
    "empty_text": "error",
    "oov_chars": "error",
    "too_long_for_ctc": "error",
    "lang_mismatch": "warning",
}


@dataclass(frozen=True)
class Problem:
    """One finding: manifest ``line`` (1-based), utterance id (``None`` if the line did not parse), kind, message."""

    line: int
    uid: str | None
    kind: str
    message: str
    severity: str  # "error" | "warning"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`validate_manifest`; ``problems`` are sorted by line."""

    manifest: str
    lines: int  # non-blank lines
    utterances: int  # lines that parsed
    total_hours: float  # sum of the parsed lines' manifest durations
    problems: tuple[Problem, ...]
    checked_audio: bool
    normalizer: str | None = None
    vocab_size: int | None = None
    conv_kernel: tuple[int, ...] = DEFAULT_CONV_KERNEL
    conv_stride: tuple[int, ...] = DEFAULT_CONV_STRIDE
    marked: int = 0  # lines with an align_flag, skipped (not checked)
    marked_hours: float = 0.0
    untranscribed: int = 0  # lines marked untranscribed: audio checked, text not (train skips them)
    untranscribed_hours: float = 0.0

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors

    def by_kind(self) -> dict[str, int]:
        """Problem counts per kind, most frequent first."""
        return dict(Counter(p.kind for p in self.problems).most_common())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["by_kind"] = self.by_kind()
        return d

    def format(self, max_problems: int = 20) -> str:
        """The summary table and the first ``max_problems`` problems as ``path:line: kind: message``."""
        hop_samples = int(np.prod(self.conv_stride))
        per_s = frames_for_samples(SAMPLE_RATE, self.conv_kernel, self.conv_stride)
        rows = [
            ("manifest", self.manifest),
            ("utterances", f"{self.utterances} of {self.lines} lines"),
            ("hours", f"{self.total_hours:.3f}"),
            ("audio", "checked (headers and samples)" if self.checked_audio else "not checked"),
            ("normaliser", self.normalizer or "none (raw text)"),
            ("vocabulary", f"{self.vocab_size} tokens" if self.vocab_size else "none (no OOV check)"),
            ("CTC frames", f"{per_s} per second of audio (hop {hop_samples} samples)"),
            ("problems", f"{len(self.errors)} errors, {len(self.warnings)} warnings"),
        ]
        if self.marked:
            rows.insert(3, ("marked", f"{self.marked} segments ({self.marked_hours:.3f} h) marked by align "
                                      "(align_flag): skipped, as train skips them"))
        if self.untranscribed:
            rows.insert(3, ("no text", f"{self.untranscribed} lines ({self.untranscribed_hours:.3f} h) marked "
                                       "untranscribed: audio checked, no text; train skips them (pseudo-label them)"))
        out = [f"{k:<12}{v}" for k, v in rows]
        if self.problems:
            out.append(f"  {'kind':<22}{'severity':<10}{'count':>6}")
            for kind, n in self.by_kind().items():
                out.append(f"  {kind:<22}{KINDS.get(kind, 'error'):<10}{n:>6}")
            shown = self.problems[: max(0, max_problems)]
            if shown:
                out.append(f"first {len(shown)} of {len(self.problems)} problems:" if len(shown) < len(self.problems)
                           else "problems:")
                out.extend(f"{self.manifest}:{p.line}: {p.kind}: {p.message}" for p in shown)
        return "\n".join(out)


def _classify(exc: ManifestError) -> str:
    msg = str(exc)
    for needle, kind in (("not valid UTF-8", "not_utf8"), ("not valid JSON", "bad_json"),
                         ("expected a JSON object", "bad_json"), ("missing field", "missing_field"),
                         ("finite number", "bad_value"), ("surrogate", "bad_value"), ("NUL character", "bad_value"),
                         ("must be", "wrong_type")):
        if needle in msg:
            return kind
    return "bad_line"


def _strip_where(exc: UserError) -> str:
    """The message without the ``path:line: `` prefix that :class:`UserError` adds (the report adds its own)."""
    msg = str(exc)
    if exc.path is not None:
        prefix = f"{exc.path}:{exc.line}: " if exc.line is not None else f"{exc.path}: "
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is cut short (its data chunk declares more bytes than the file has), else ``None``.

    libsndfile silently reads what is there, so a cut-off copy looks like a shorter, valid file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos = 12
            for _ in range(64):  # a WAV has a handful of chunks; stop early on garbage
                f.seek(pos)
                hdr = f.read(8)
                if len(hdr) < 8:
                    return None
                n = int.from_bytes(hdr[4:8], "little")
                if hdr[:4] == b"data":
                    if n in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                        return None
                    have = size - pos - 8
                    return f"data chunk declares {n} bytes but the file holds {have}" if have < n else None
                pos += 8 + n + (n & 1)
    except OSError:
        return None
    return None


def _model_settings(model_config) -> tuple[tuple[int, ...], tuple[int, ...], Path | None, str | None]:
    """``(conv_kernel, conv_stride, vocab_path, record_lang)`` from a model folder, a config.json, or a dict."""
    if model_config is None:
        return DEFAULT_CONV_KERNEL, DEFAULT_CONV_STRIDE, None, None
    vocab_path = record_lang = None
    if isinstance(model_config, dict):
        cfg = model_config
    else:
        path = Path(model_config)
        folder = path if path.is_dir() else path.parent
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():
            raise ConfigError("no model config.json here; give a model folder or its config.json", path=cfg_path)
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except PARSE_ERRORS as exc:
            raise ConfigError(f"not a JSON model config ({str(exc)[:200]})", path=cfg_path) from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"not a JSON model config (a {type(cfg).__name__}, not an object)", path=cfg_path)
        if path.is_dir() and (folder / "vocab.json").is_file():
            vocab_path = folder / "vocab.json"
        record = folder / "asr_transfer.json"
        if path.is_dir() and record.is_file():
            try:
                record_lang = json.loads(record.read_text(encoding="utf-8")).get("lang")
            except (*PARSE_ERRORS, AttributeError):
                record_lang = None
    kernel = tuple(int(k) for k in cfg.get("conv_kernel", DEFAULT_CONV_KERNEL))
    stride = tuple(int(s) for s in cfg.get("conv_stride", DEFAULT_CONV_STRIDE))
    if len(kernel) != len(stride) or not kernel:
        raise ConfigError(f"conv_kernel {list(kernel)} and conv_stride {list(stride)} differ in length")
    return kernel, stride, vocab_path, record_lang


def _label_ids(text: str, vocab: dict[str, int] | None) -> list[int]:
    """CTC label ids of normalised ``text``; without a vocabulary each character is its own label."""

    if vocab is not None:
        return text_to_ids(text, vocab)
    return [ord(c) for c in WORD_DELIMITER.join(text.split())]


def _oov_chars(text: str, vocab: dict[str, int]) -> list[str]:
    """Characters of ``text`` (besides whitespace, which becomes the word delimiter) that ``vocab`` maps to <unk>.

    Uses :func:`asr_transfer.vocab.text_to_ids` itself, so "in the vocabulary" means exactly what training sees
    (case-insensitive lookup included).
    """

    unk = vocab.get(UNK)
    return [c for c in dict.fromkeys(text) if not c.isspace() and text_to_ids(c, vocab) == [unk]]


class _Checker:
    """Per-line checks; holds the settings and the state across lines (ids seen, header facts)."""

    def __init__(self, vocab, normalizer, lang, kernel, stride, check_audio, tolerance_s):
        self.vocab, self.normalizer, self.lang = vocab, normalizer, lang
        self.kernel, self.stride = kernel, stride
        self.check_audio, self.tolerance_s = check_audio, tolerance_s
        self.problems: list[Problem] = []
        self.seen_ids: dict[str, int] = {}
        self.formats: list[tuple[int, str, int, int]] = []  # (line, uid, sample_rate, channels)

    def add(self, line: int, uid: str | None, kind: str, message: str) -> None:
        self.problems.append(Problem(line, uid, kind, message, KINDS[kind]))

    def check(self, line: int, u: Utterance) -> None:
        uid = u.uid
        if uid in self.seen_ids:
            self.add(line, uid, "duplicate_id", f"duplicate id '{uid}' (first on line {self.seen_ids[uid]})")
        else:
            self.seen_ids[uid] = line
        if self.lang and u.lang and u.lang != self.lang:
            self.add(line, uid, "lang_mismatch", f"line says lang '{u.lang}', validating as '{self.lang}'")
        usable_s = self.check_audio_file(line, u) if self.check_audio else u.duration
        if not is_untranscribed(u):
            self.check_text(line, u, usable_s)

    def check_audio_file(self, line: int, u: Utterance) -> float | None:
        """Header and sample checks; returns the seconds of audio the model will see (``None`` if unusable)."""
        path = Path(u.audio_filepath)
        try:
            info: AudioInfo = audio_info(path)
        except AudioError as exc:
            self.add(line, u.uid, "missing_audio" if not path.exists() else "unreadable_audio", str(exc))
            return None
        self.formats.append((line, u.uid, info.sample_rate, info.channels))
        if info.frames == 0:
            self.add(line, u.uid, "zero_length", f"{path}: header holds 0 samples")
            return None
        file_s = info.duration_s
        truncated = wav_truncation(path) if info.format == "WAV" else None
        if truncated:
            self.add(line, u.uid, "truncated", f"{path}: {truncated}; only {file_s:.3f}s readable (copy it again)")
        if u.offset >= file_s:
            self.add(line, u.uid, "past_end", f"offset {u.offset:.3f}s is past the end of {path} ({file_s:.3f}s)")
            return None
        if u.offset > 0 and u.offset + u.duration > file_s + self.tolerance_s:
            self.add(line, u.uid, "past_end",
                     f"offset {u.offset:.3f}s + duration {u.duration:.3f}s runs past the end of {path} ({file_s:.3f}s)")
        elif u.offset == 0 and abs(u.duration - file_s) > self.tolerance_s and not truncated \
                and ALIGN_SCORE not in u.extra:  # an aligned segment at the start of a long file is a slice
            self.add(line, u.uid, "duration_mismatch",
                     f"manifest says {u.duration:.3f}s, {path} holds {file_s:.3f}s (re-run prepare or fix 'duration')")
        usable_s = min(u.duration, file_s - u.offset)
        try:
            x = load_audio(path, u.offset, u.duration or None, sample_rate=info.sample_rate)
        except AudioError as exc:
            kind = "non_finite" if "NaN/inf" in str(exc) else "unreadable_audio"
            self.add(line, u.uid, kind, str(exc))
            return None
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak < SILENCE_PEAK:
            self.add(line, u.uid, "silent", f"{path}: all silent (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
        return usable_s

    def check_text(self, line: int, u: Utterance, usable_s: float | None) -> None:
        text = self.normalizer(u.text) if self.normalizer else u.text
        if not text.strip():
            after = f" after the {self.normalizer.name} normaliser" if self.normalizer and u.text.strip() else ""
            self.add(line, u.uid, "empty_text", f"text {u.text!r} is empty{after}")
            return
        if self.vocab is not None:
            oov = _oov_chars(text, self.vocab)
            if oov:
                self.add(line, u.uid, "oov_chars", f"characters not in the vocabulary: {' '.join(map(repr, oov))}")
                return
        if usable_s is None:
            return
        samples = int(round(usable_s * SAMPLE_RATE))
        if samples < RECEPTIVE_FIELD_SAMPLES:
            self.add(line, u.uid, "too_short",
                     f"{usable_s * 1000:.1f} ms of audio is shorter than the CNN's receptive field "
                     f"({RECEPTIVE_FIELD_SAMPLES} samples = {RECEPTIVE_FIELD_SAMPLES / SAMPLE_RATE * 1000:.0f} ms)")
            return

        ids = _label_ids(text, self.vocab)
        needed = ctc_min_frames(ids)
        frames = frames_for_samples(samples, self.kernel, self.stride)
        if needed > frames:
            self.add(line, u.uid, "too_long_for_ctc",
                     f"transcript needs >= {needed} CTC frames ({len(ids)} labels + {needed - len(ids)} repeats) "
                     f"but {usable_s:.3f}s of audio gives {frames}")

    def format_outliers(self) -> None:
        """Warn about sample rates / channel counts that differ from the manifest's majority."""
        if not self.formats:
            return
        for index, kind, unit in ((2, "sample_rate_outlier", " Hz"), (3, "channels_outlier", " channel(s)")):
            counts = Counter(f[index] for f in self.formats)
            if len(counts) < 2:
                continue
            majority, n = counts.most_common(1)[0]
            for f in self.formats:
                if f[index] != majority:
                    self.add(f[0], f[1], kind,
                             f"{f[index]}{unit}, while {n} of {len(self.formats)} files have {majority}{unit}")


def validate_manifest(
    path: str | Path,
    vocab: str | Path | dict[str, int] | None = None,
    lang: str | None = None,
    model_config: str | Path | dict | None = None,
    check_audio: bool = True,
    duration_tolerance_s: float = 0.1,
    include_marked: bool = False,
) -> ValidationReport:
    """Check every line of ``path``; see the module docstring for the kinds of problems found.

    ``vocab`` is a vocab.json path or a token→id dict (with a model folder that has a ``vocab.json`` it is taken
    from there); ``lang`` picks the text normaliser applied before the text checks (a model folder's record
    supplies it when not given); ``model_config`` is a model folder, its ``config.json`` or the config dict, for
    the CTC frame count. ``check_audio=False`` skips all file access (text and line checks only).
    """
    from tqdm import tqdm

    kernel, stride, model_vocab, record_lang = _model_settings(model_config)
    lang = lang or record_lang
    vocab_path = vocab if vocab is not None else model_vocab
    if isinstance(vocab_path, dict) or vocab_path is None:
        vocab_map = vocab_path
    else:
        from .vocab import load_vocab

        vocab_map = load_vocab(vocab_path)
    normalizer = None
    if lang:
        from .text import get_normalizer

        normalizer = get_normalizer(lang)
    checker = _Checker(vocab_map, normalizer, lang, kernel, stride, check_audio, duration_tolerance_s)

    lines = utterances = marked = untranscribed = 0
    total_s = marked_s = untranscribed_s = 0.0
    for line, item in tqdm(scan_manifest(path), desc=f"validating {Path(path).name}", unit="line", disable=None,
                           leave=False):
        lines += 1
        if isinstance(item, ManifestError):
            checker.add(line, None, _classify(item), _strip_where(item))
            continue
        if not include_marked and is_marked(item):
            marked += 1
            marked_s += item.duration
            continue
        utterances += 1
        total_s += item.duration
        if is_untranscribed(item):
            untranscribed += 1
            untranscribed_s += item.duration
        checker.check(line, item)
    checker.format_outliers()
    problems = tuple(sorted(checker.problems, key=lambda p: p.line))
    return ValidationReport(
        manifest=str(path),
        lines=lines,
        utterances=utterances,
        total_hours=total_s / 3600.0,
        problems=problems,
        checked_audio=check_audio,
        normalizer=getattr(normalizer, "name", None),
        vocab_size=len(vocab_map) if vocab_map is not None else None,
        conv_kernel=kernel,
        conv_stride=stride,
        marked=marked,
        marked_hours=marked_s / 3600.0,
        untranscribed=untranscribed,
        untranscribed_hours=untranscribed_s / 3600.0,
    )
