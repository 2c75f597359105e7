"""Manifests: NeMo-compatible JSONL, one :class:`Utterance` per line.

Required keys: ``audio_filepath``, ``duration`` (s), ``text``. Optional: ``offset`` (s), ``lang``, ``speaker``, ``id``.
Audio without a transcript is a line with ``"text": ""`` and ``"untranscribed": true`` (:func:`is_untranscribed`).
Relative ``audio_filepath`` values resolve against the manifest's folder. Unknown extra keys are kept (NeMo
manifests often carry some) but ignored. Reading is strict: a bad line raises :class:`ManifestError` naming the file
and line; :func:`scan_manifest` instead reports problems line by line for ``validate``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from .errors import PARSE_ERRORS, ManifestError
from .files import atomic_write_text

REQUIRED = ("audio_filepath", "duration", "text")
OPTIONAL = ("offset", "lang", "speaker", "id")
ALIGN_FLAG = "align_flag"  # set by `asr-transfer align` on segments whose alignment is suspect
ALIGN_SCORE = "align_score"  # on every `align` segment: a slice of a long file, even at offset 0
# Set (true, with text "") on audio imported without a transcript (`prepare folder --no-text`, the synthetic
# self-training pool): pseudo-label takes such lines; validate and train skip and count them.
UNTRANSCRIBED = "untranscribed"


def is_marked(utt: "Utterance") -> bool:
    """True for a segment ``align`` marked (``align_flag`` present and non-empty): train and validate skip it."""
    return bool(utt.extra.get(ALIGN_FLAG))


def is_untranscribed(utt: "Utterance") -> bool:
    """True for a line imported without a transcript (``untranscribed`` true): nothing to train or score on."""
    return utt.extra.get(UNTRANSCRIBED) is True


@dataclass(frozen=True)
class Utterance:
    """One line of a manifest. ``audio_filepath`` is absolute once read through :func:`read_manifest`."""

    audio_filepath: str
    duration: float  # s
    text: str
    offset: float = 0.0  # s into the file
    lang: str | None = None
    speaker: str | None = None
    id: str | None = None
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def uid(self) -> str:
        """A stable id: the ``id`` field, else the file stem (plus offset for slices)."""
        if self.id:
            return self.id
        stem = Path(self.audio_filepath).stem
        return f"{stem}@{self.offset:.2f}" if self.offset else stem

    def to_json(self, relative_to: Path | None = None) -> str:
        d = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        if not self.offset:
            d.pop("offset", None)
        if relative_to is not None:
            try:
                d["audio_filepath"] = os.path.relpath(self.audio_filepath, relative_to)
            except ValueError:  # different drive (Windows); keep absolute
                pass
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return json.dumps(d, ensure_ascii=False)


def _number(value, key: str, path, line: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(f"'{key}' must be a number, got {type(value).__name__}", path=path, line=line)
    if not math.isfinite(value) or value < 0:
        raise ManifestError(f"'{key}' must be a finite number >= 0, got {value}", path=path, line=line)
    return float(value)


def _optional_str(value, key: str, path, line: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("id", "speaker"):
        return str(value)
    if not isinstance(value, str):
        raise ManifestError(f"'{key}' must be a string, got {type(value).__name__}", path=path, line=line)
    return value


def _check_encodable(obj: dict, path, line: int) -> None:
    """Refuse strings UTF-8 cannot hold: JSON's ``"\\ud800"`` escape decodes to a lone surrogate, which parses but
    fails only later, when a transcript, checkpoint or summary is written (half-written by then)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        bad = next((k for k, v in obj.items() if not json.dumps([k, v], ensure_ascii=False).isascii()
                    and _unencodable(json.dumps([k, v], ensure_ascii=False))), "?")
        name = bad.encode("utf-8", "backslashreplace").decode("utf-8")
        raise ManifestError(f"'{name}' holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape), which is not "
                            "text; fix that escape", path=path, line=line) from None


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_line(raw: bytes | str, line: int, path: str | Path, base_dir: Path | None = None) -> Utterance:
    """Parse one manifest line into an :class:`Utterance`; raise :class:`ManifestError` naming ``path:line``."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"not valid UTF-8 (byte {exc.start})", path=path, line=line) from None
    raw = raw.strip()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"not valid JSON ({exc.msg} at column {exc.colno})", path=path, line=line) from None
    except PARSE_ERRORS as exc:  # a 5,000-digit number, nesting 100,000 deep
        reason = str(exc).split(":")[0][:100]
        raise ManifestError(f"not valid JSON ({reason})", path=path, line=line) from None
    if not isinstance(obj, dict):
        raise ManifestError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    _check_encodable(obj, path, line)
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise ManifestError(f"missing field(s) {', '.join(missing)}", path=path, line=line)
    audio = obj["audio_filepath"]
    if not isinstance(audio, str) or not audio.strip():
        raise ManifestError("'audio_filepath' must be a non-empty string", path=path, line=line)
    if "\0" in audio:
        raise ManifestError("'audio_filepath' holds a NUL character (\\u0000); no file can have that name", path=path,
                            line=line)
    if not isinstance(obj["text"], str):
        raise ManifestError(f"'text' must be a string, got {type(obj['text']).__name__}", path=path, line=line)
    try:
        audio_path = Path(audio).expanduser()
    except RuntimeError:  # "~name/..." for a user this machine does not know: keep the path as written
        audio_path = Path(audio)
    if not audio_path.is_absolute() and base_dir is not None:
        audio_path = base_dir / audio_path
    extra = {k: v for k, v in obj.items() if k not in REQUIRED and k not in OPTIONAL}
    return Utterance(
        audio_filepath=str(audio_path),
        duration=_number(obj["duration"], "duration", path, line),
        text=obj["text"],
        # null means "not given"; false, "" and [] are wrong types, not 0 (bool is an int to Python; _number knows).
        offset=0.0 if obj.get("offset") is None else _number(obj["offset"], "offset", path, line),
        lang=_optional_str(obj.get("lang"), "lang", path, line),
        speaker=_optional_str(obj.get("speaker"), "speaker", path, line),
        id=_optional_str(obj.get("id"), "id", path, line),
        extra=extra,
    )


def scan_manifest(path: str | Path) -> Iterator[tuple[int, Utterance | ManifestError]]:
    """Yield ``(line_number, utterance_or_error)`` for every non-blank line; never raises for bad lines."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError("manifest not found" if not path.exists() else "manifest is not a file", path=path)
    base_dir = path.resolve().parent
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield line_no, parse_line(raw, line_no, path, base_dir)
            except ManifestError as exc:
                yield line_no, exc


def read_manifest(path: str | Path) -> list[Utterance]:
    """All utterances of ``path``; the first bad line raises :class:`ManifestError` with its line number.

    Duplicate ids are an error too: training, evaluation and resume all key on them.
    """
    out: list[Utterance] = []
    seen: dict[str, int] = {}
    for line_no, item in scan_manifest(path):
        if isinstance(item, ManifestError):
            raise item
        if item.uid in seen:
            raise ManifestError(f"duplicate id '{item.uid}' (first on line {seen[item.uid]})", path=path, line=line_no)
        seen[item.uid] = line_no
        out.append(item)
    return out


def write_manifest(path: str | Path, utterances: Iterable[Utterance], relative: bool = True) -> Path:
    """Validate and write ``utterances`` as JSONL, atomically (temp file + rename).

    With ``relative=True`` audio paths are stored relative to the manifest folder, so a corpus folder can move.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent if relative else None
    seen: set[str] = set()
    lines = []
    for i, u in enumerate(utterances, start=1):
        if not u.audio_filepath or not isinstance(u.text, str):
            raise ManifestError("utterance without audio_filepath or text", path=path, line=i)
        if not (math.isfinite(u.duration) and u.duration >= 0):
            raise ManifestError(f"bad duration {u.duration}", path=path, line=i)
        if u.uid in seen:
            raise ManifestError(f"duplicate id '{u.uid}'", path=path, line=i)
        seen.add(u.uid)
        lines.append(u.to_json(relative_to=base))
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def fingerprint(path: str | Path, hash_audio: bool = False) -> str:
    """Content hash of a manifest: its bytes plus each audio file's size and mtime (or content with ``hash_audio``).

    Changing one line, or touching/replacing one audio file, changes the fingerprint.
    """
    h = hashlib.sha256()
    path = Path(path)
    h.update(path.read_bytes())
    for _, item in scan_manifest(path):
        if isinstance(item, ManifestError):
            continue
        p = Path(item.audio_filepath)
        try:
            st = p.stat()
            # Only regular files are read: opening a FIFO would block until something writes to it.
            if hash_audio and stat.S_ISREG(st.st_mode):
                h.update(hashlib.sha256(p.read_bytes()).digest())
            else:
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{p}|missing".encode())
    return h.hexdigest()[:16]


def with_text(u: Utterance, text: str) -> Utterance:
    return replace(u, text=text)
