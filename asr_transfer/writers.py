"""Output formats for :class:`~asr_transfer.transcription.Transcript`: txt, json, srt, vtt, tsv.

Subtitle cues (srt/vtt/tsv) group consecutive words into readable captions, following common subtitling rules
(BBC/Netflix style): at most ``max_line_chars`` (42) characters per line, ``max_lines`` (2) lines per cue,
``max_cue_s`` (7 s) per cue, and a new cue after a pause longer than ``pause_s`` (0.5 s). Cues never overlap and
their times come from the word timings (CTC frame offsets), so they are monotonic.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .decode import WordTiming
from .errors import UserError
from .files import atomic_write_text

FORMATS = ("txt", "json", "srt", "vtt", "tsv")


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def _wrap(words: Sequence[str], max_line_chars: int) -> list[str]:
    """Greedy line filling; a single word longer than a line gets a line of its own."""
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 1 + len(w) <= max_line_chars:
            lines[-1] += " " + w
        else:
            lines.append(w)
    return lines


def group_cues(words: Sequence[WordTiming], max_line_chars: int = 42, max_lines: int = 2, max_cue_s: float = 7.0,
               pause_s: float = 0.5) -> list[Cue]:
    """Consecutive words → cues; a cue ends at a pause > ``pause_s``, or before it would break a length limit."""
    cues: list[Cue] = []
    current: list[WordTiming] = []

    def close():
        if current:
            lines = _wrap([w.word for w in current], max_line_chars)
            cues.append(Cue(current[0].start_s, current[-1].end_s, tuple(lines)))
            current.clear()

    for w in words:
        if current:
            pause = w.start_s - current[-1].end_s
            too_long = w.end_s - current[0].start_s > max_cue_s
            too_wide = len(_wrap([x.word for x in current] + [w.word], max_line_chars)) > max_lines
            if pause > pause_s or too_long or too_wide:
                close()
        current.append(w)
    close()
    # Word times are monotonic; guard against equal or rounded times so each cue has a positive, non-overlapping span.
    out: list[Cue] = []
    for i, c in enumerate(cues):
        start = max(c.start_s, out[-1].end_s if out else 0.0)
        end = max(c.end_s, start + 0.001)
        if i + 1 < len(cues):
            end = min(end, max(cues[i + 1].start_s, start))
        out.append(Cue(start, max(end, start), c.lines))
    return out


def format_timestamp(seconds: float, decimal_marker: str = ",", always_hours: bool = True) -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (VTT) from seconds, rounded to milliseconds."""
    ms = max(0, int(round(seconds * 1000)))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _cues(transcript) -> list[Cue]:
    return group_cues(transcript.words)


def to_txt(transcript) -> str:
    return transcript.text + "\n"


def to_json(transcript) -> str:
    return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2) + "\n"


def to_srt(transcript) -> str:
    blocks = []
    for i, c in enumerate(_cues(transcript), start=1):
        times = f"{format_timestamp(c.start_s)} --> {format_timestamp(c.end_s)}"
        blocks.append(f"{i}\n{times}\n" + "\n".join(c.lines) + "\n")
    return "\n".join(blocks)


def to_vtt(transcript) -> str:
    blocks = ["WEBVTT\n"]
    for c in _cues(transcript):
        times = f"{format_timestamp(c.start_s, '.')} --> {format_timestamp(c.end_s, '.')}"
        blocks.append(f"{times}\n" + "\n".join(c.lines) + "\n")
    return "\n".join(blocks)


def to_tsv(transcript) -> str:
    """Whisper's layout: a header, then ``start<TAB>end<TAB>text`` per cue, times in integer milliseconds."""
    rows = ["start\tend\ttext"]
    for c in _cues(transcript):
        rows.append(f"{int(round(c.start_s * 1000))}\t{int(round(c.end_s * 1000))}\t{c.text}")
    return "\n".join(rows) + "\n"


_FORMATTERS = {"txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}


def format_transcript(transcript, fmt: str) -> str:
    """The file content of ``transcript`` in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in _FORMATTERS:
        raise UserError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
    return _FORMATTERS[fmt](transcript)


def write_transcript(transcript, fmt: str, out_dir: str | os.PathLike, name: str | None = None) -> Path:
    """Write ``<out_dir>/<name or input stem>.<fmt>`` atomically (temporary file + rename); returns the path."""
    target = Path(out_dir) / f"{name or Path(transcript.path).stem}.{fmt}"
    # surrogateescape: an input whose file name is not UTF-8 keeps its own bytes in the transcript, as on stdout.
    return atomic_write_text(target, format_transcript(transcript, fmt), errors="surrogateescape")
