"""Long recordings in: audio + text pairs, each aligned and cut into segments, manifest rows and a summary.

The per-recording pipeline of ``asr-transfer align`` (:mod:`asr_transfer.commands.align`): :func:`find_recordings`
pairs ``name.<audio>`` with ``name.txt`` (or reads a TSV), :func:`align_recording` streams the audio through the
model in overlapping windows (:func:`asr_transfer.transcription.iter_chunked_log_probs`, as ``transcribe``),
aligns the text (:mod:`asr_transfer.alignment`) and cuts segments (:mod:`asr_transfer.segmentation`);
:func:`segment_rows` gives the NeMo-style manifest rows, :func:`summarize` and :func:`format_summary` what was
kept, marked and not covered. Memory is flat in a recording's length: its audio is read block-wise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .alignment import AlignOptions, align_emissions, text_words
from .audio import audio_info, stream_audio, wave_stats
from .errors import UserError
from .segmentation import AUTO_SCORE_MARGIN, Segment, SkippedText, make_segments, skipped_text, unaligned_regions
from .transcription import AUDIO_EXTENSIONS, iter_chunked_log_probs

CHUNK_S = 30.0  # s per inference window (as transcribe)
STRIDE_S = 5.0  # s of context on each side of a window's kept centre
WORST_SHOWN = 10  # segments listed in the summary's "worst"


@dataclass(frozen=True)
class Recording:
    """One long recording and its text file."""

    audio: str
    text: str

    @property
    def name(self) -> str:
        return Path(self.audio).stem


def read_text_file(path: str | Path) -> str:
    """The text of a transcript file (UTF-8, BOM tolerated) with line breaks kept (blank lines end sentences)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("text file not found" if not path.exists() else "text path is not a file", path=path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError("text file is not UTF-8; convert it (iconv -t utf-8)", path=path) from None
    if not text.strip():
        raise UserError("text file is empty", path=path)
    return text


def find_recordings(source: str | Path) -> list[Recording]:
    """``name.<audio>`` + ``name.txt`` pairs in a folder, or a TSV's rows ``audio<TAB>text`` (paths relative to it).

    Audio without a ``.txt`` beside it (and a ``.txt`` without audio) is an error naming the file: aligning half a
    folder silently would look like success.
    """
    source = Path(source)
    if source.is_dir():
        audio = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS)
        texts = {p.stem: p for p in source.iterdir() if p.is_file() and p.suffix.lower() == ".txt"}
        if not audio:
            raise UserError("no audio files in this folder (name.wav + name.txt pairs expected)", path=source)
        out = []
        for a in audio:
            if a.stem not in texts:
                raise UserError(f"audio without text: expected {a.stem}.txt beside it", path=a)
            out.append(Recording(str(a), str(texts.pop(a.stem))))
        if texts:
            orphan = sorted(texts.values())[0]
            raise UserError("text without audio: no audio file with this name", path=orphan)
        return out
    if not source.is_file():
        raise UserError("not found: give a folder of name.wav + name.txt pairs or a TSV of audio and text paths",
                        path=source)
    out = []
    base = source.resolve().parent
    try:
        lines = source.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError("TSV is not UTF-8", path=source) from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise UserError(f"expected 2 tab-separated columns (audio, text), got {len(cells)}", path=source, line=n)
        if n == 1 and cells[0].strip().lower() in ("audio", "audio_filepath", "path"):
            continue  # a header row
        a, t = (Path(c.strip()) for c in cells)
        out.append(Recording(str(a if a.is_absolute() else base / a), str(t if t.is_absolute() else base / t)))
    if not out:
        raise UserError("TSV lists no recordings", path=source)
    seen: dict[str, str] = {}
    for r in out:  # segment ids are <name>-<index>: two recordings with one name would give the same ids
        if r.name in seen:
            raise UserError(f"two recordings are named {r.name!r} ({seen[r.name]} and {r.audio}); segment ids would "
                            "clash: rename one", path=source)
        seen[r.name] = r.audio
    return out


@dataclass
class RecordingResult:
    """Segments of one recording plus what did not align."""

    recording: Recording
    duration_s: float
    segments: list[Segment]
    unaligned: list[tuple[float, float]]
    skipped: list[SkippedText]
    dropped_chars: int
    windows: int
    stalls: int


def align_recording(recording: Recording, recognizer, lang: str, options: AlignOptions = AlignOptions(),
                    bar=None) -> RecordingResult:
    """Align one recording with a :class:`~asr_transfer.inference.Recognizer`; memory is flat in its length.

    The audio is read twice, block-wise: once for the file's mean/deviation (inference normalises every window with
    them, as ``transcribe`` does), once through the model. ``bar``: a tqdm bar advanced in seconds of audio.
    """
    text = read_text_file(recording.text)
    info = audio_info(recording.audio)
    vocab = recognizer.vocab
    words, dropped = text_words(text, lang, vocab)
    if not words:
        raise UserError(f"no {lang} words the model can spell after normalising", path=recording.text)
    delim = vocab.index("|") if "|" in vocab else None
    stats = wave_stats(stream_audio(recording.audio)) if recognizer.do_normalize else None
    blocks = iter_chunked_log_probs(recognizer, stream_audio(recording.audio), CHUNK_S, STRIDE_S, file_stats=stats)
    frame_s = recognizer.frame_stride_s
    progress = (lambda frames: bar.update(round(frames * frame_s, 2))) if bar is not None else None
    alignment = align_emissions(blocks, words, recognizer.blank_id, delim, frame_s, options, progress)
    return RecordingResult(recording, info.duration_s, make_segments(alignment, words, options),
                           unaligned_regions(alignment), skipped_text(alignment, words), dropped,
                           alignment.windows, alignment.stalls)


def segment_rows(result: RecordingResult, lang: str) -> list[dict]:
    """NeMo-style manifest rows of one recording (absolute audio path; the writer makes it relative)."""
    rows = []
    for k, s in enumerate(result.segments):
        row = {"audio_filepath": str(Path(result.recording.audio).resolve()), "offset": s.offset,
               "duration": s.duration, "text": s.text, "lang": lang, "id": f"{result.recording.name}-{k:05d}",
               "align_score": s.score, "align_start": s.speech_start, "align_end": s.speech_end}
        if s.star_s:
            row["align_unaligned_s"] = s.star_s
        if s.flags:
            row["align_flag"] = ",".join(s.flags)
        rows.append(row)
    return rows


def summarize(results: Sequence[RecordingResult], options: AlignOptions) -> dict:
    """Minutes kept / marked / not covered, the worst segments and the text and audio that did not align."""
    kept = [s for r in results for s in r.segments if not s.flags]
    marked = [(r, s) for r in results for s in r.segments if s.flags]
    total_s = sum(r.duration_s for r in results)
    worst = sorted(((r, s) for r in results for s in r.segments), key=lambda rs: rs[1].score)[:WORST_SHOWN]
    flags: dict[str, int] = {}
    for _, s in marked:
        for f in s.flags:
            flags[f] = flags.get(f, 0) + 1
    return {
        "recordings": len(results),
        "audio_minutes": round(total_s / 60, 2),
        "segments": sum(len(r.segments) for r in results),
        "kept_segments": len(kept),
        "kept_minutes": round(sum(s.duration for s in kept) / 60, 2),
        "marked_segments": len(marked),
        "marked_minutes": round(sum(s.duration for _, s in marked) / 60, 2),
        "marked_by_flag": flags,
        "uncovered_minutes": round((total_s - sum(s.duration for r in results for s in r.segments)) / 60, 2),
        "min_score": options.min_score if options.min_score is not None else "auto (median - %.1f)" % AUTO_SCORE_MARGIN,
        "max_s": options.max_s,
        "worst": [{"recording": r.recording.name, "offset": s.offset, "duration": s.duration, "score": s.score,
                   "flag": ",".join(s.flags) or None, "text": s.text[:80]} for r, s in worst],
        "unaligned_audio": [{"recording": r.recording.name, "start_s": a, "end_s": b}
                            for r in results for a, b in r.unaligned],
        "skipped_text": [{"recording": r.recording.name, "near_s": k.near_s, "words": k.words, "text": k.text}
                         for r in results for k in r.skipped],
        "dropped_characters": sum(r.dropped_chars for r in results),
        "windows": sum(r.windows for r in results),
        "stalled_windows": sum(r.stalls for r in results),
    }


def format_summary(summary: dict) -> str:
    """The summary as a few lines for the terminal."""
    lines = [f"{summary['recordings']} recording(s), {summary['audio_minutes']:.1f} min of audio: "
             f"{summary['kept_segments']} segments kept ({summary['kept_minutes']:.1f} min), "
             f"{summary['marked_segments']} marked ({summary['marked_minutes']:.1f} min"
             + (", " + ", ".join(f"{k} {v}" for k, v in summary["marked_by_flag"].items())
                if summary["marked_by_flag"] else "")
             + f"), {summary['uncovered_minutes']:.1f} min between segments"]
    if summary["unaligned_audio"]:
        total = sum(u["end_s"] - u["start_s"] for u in summary["unaligned_audio"])
        lines.append(f"audio with no text: {len(summary['unaligned_audio'])} region(s), {total:.1f} s")
    if summary["skipped_text"]:
        lines.append(f"text not found in the audio: {sum(k['words'] for k in summary['skipped_text'])} words in "
                     f"{len(summary['skipped_text'])} run(s)")
    lines.append("worst segments (score = nats/frame below the model's best path; 0 is perfect):")
    for w in summary["worst"][:5]:
        lines.append(f"  {w['recording']} {w['offset']:9.2f}s {w['duration']:5.2f}s  {w['score']:7.3f}  "
                     f"{w['flag'] or 'kept':<16} {w['text'][:50]}")
    return "\n".join(lines)
