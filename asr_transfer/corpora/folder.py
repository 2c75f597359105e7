"""A folder tree of audio files with sibling transcripts (``a/b/utt1.wav`` + ``a/b/utt1.txt``) into manifests.

Common for in-house recordings and for Montreal-Forced-Aligner style corpora (``.lab`` transcripts). Every audio
file that libsndfile reads (wav, flac, ogg/opus, mp3, aiff) is looked up with the first existing transcript extension
of ``transcript_exts``; multi-line transcripts are joined with spaces. The id is the path relative to ``root`` without
extension (so equal stems in different folders stay distinct). The speaker is the parent folder's name with
``speaker_from="parent"`` (the usual ``<speaker>/<utt>.wav`` layout), else unknown. Without an official split the
utterances are split by :func:`~asr_transfer.corpora.splits.split_utterances` (speaker-disjoint when speakers are
known); ``split="test"`` puts everything into one manifest instead.

With ``no_text=True`` transcripts are neither needed nor read: every audio file becomes a line with empty text marked
``untranscribed`` (material for ``asr-transfer pseudo-label``), all in one manifest, ``untranscribed.jsonl`` unless
``split`` names another. Audio without text is never split into train/dev/test: it cannot be scored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..errors import UserError
from ..manifest import UNTRANSCRIBED, Utterance
from .splits import (
    DEFAULT_FRACTIONS,
    MIN_DURATION_S,
    ImportSummary,
    split_utterances,
    usable_audio,
    write_splits,
)

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
SPEAKER_FROM = ("none", "parent")
NO_TEXT_SPLIT = "untranscribed"  # the one manifest --no-text writes (unless --split names another)


def read_transcript(path: Path) -> str:
    """The transcript in ``path`` as one line (UTF-8, BOM tolerated, lines joined by single spaces)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"transcript is not valid UTF-8 (byte {exc.start}); re-save it as UTF-8", path=path) from None
    return " ".join(text.split())


def find_audio(root: Path) -> list[Path]:
    """Every audio file under ``root`` (by extension, :data:`AUDIO_EXTS`), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())


def find_pairs(root: Path, transcript_exts: Sequence[str], summary: ImportSummary) -> list[tuple[Path, Path]]:
    """``(audio, transcript)`` for each audio file under ``root`` (sorted); audio without a transcript is skipped."""
    pairs = []
    for audio in find_audio(root):
        transcript = next((audio.with_suffix(ext) for ext in transcript_exts if audio.with_suffix(ext).is_file()), None)
        if transcript is None:
            summary.skip("no transcript", str(audio.relative_to(root)))
        else:
            pairs.append((audio, transcript))
    return pairs


def prepare_folder(
    root: str | Path,
    out_dir: str | Path,
    lang: str,
    transcript_exts: Sequence[str] = (".txt", ".lab"),
    split: str | None = None,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    speaker_from: str = "none",
    min_duration_s: float = MIN_DURATION_S,
    max_duration_s: float | None = None,
    num_workers: int | None = None,
    no_text: bool = False,
) -> ImportSummary:
    """Import audio + sibling transcripts under ``root`` into ``out_dir/<split>.jsonl`` manifests.

    ``split`` names the single manifest to write (e.g. ``"test"``); when ``None`` the utterances are split by
    ``fractions`` with ``seed``. Unreadable audio, missing/empty/non-UTF-8 transcripts and clips outside the
    duration limits are skipped and counted by reason in the returned :class:`ImportSummary`. ``no_text``: import
    the audio alone, as untranscribed lines (see the module docstring).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError("audio folder not found", path=root)
    if speaker_from not in SPEAKER_FROM:
        raise UserError(f"speaker_from must be one of {', '.join(SPEAKER_FROM)}, got '{speaker_from}'")
    exts = tuple(e if e.startswith(".") else "." + e for e in transcript_exts)
    if not exts:
        raise UserError("give at least one transcript extension (e.g. .txt)")
    summary = ImportSummary(corpus=f"folder ({root})", out_dir=Path(out_dir))
    if no_text:
        return _prepare_untranscribed(root, summary, lang, split or NO_TEXT_SPLIT, speaker_from, min_duration_s,
                                      max_duration_s, num_workers)
    pairs = find_pairs(root, exts, summary)
    if not pairs and not summary.skipped:
        raise UserError(f"no audio files ({', '.join(AUDIO_EXTS)}) found", path=root)

    texts: list[tuple[Path, Path, str]] = []
    for audio, transcript in pairs:
        rel = audio.relative_to(root).as_posix()
        try:
            text = read_transcript(transcript)
        except UserError:
            summary.skip("transcript not UTF-8", rel)
            continue
        if not text:
            summary.skip("empty transcript", rel)
            continue
        texts.append((audio, transcript, text))

    utts = _utterances(root, texts, lambda t: t[0], lambda t: t[2], {}, summary, lang, speaker_from,
                       min_duration_s, max_duration_s, num_workers)
    parts = {split: utts} if split else split_utterances(utts, fractions, seed)
    return write_splits(summary, parts)


def _prepare_untranscribed(root: Path, summary: ImportSummary, lang: str, split: str, speaker_from: str,
                           min_duration_s: float, max_duration_s: float | None,
                           num_workers: int | None) -> ImportSummary:
    """Every usable audio file under ``root`` as an untranscribed line, into ``<split>.jsonl``."""
    audio = find_audio(root)
    if not audio:
        raise UserError(f"no audio files ({', '.join(AUDIO_EXTS)}) found", path=root)
    utts = _utterances(root, audio, lambda a: a, lambda a: "", {UNTRANSCRIBED: True}, summary, lang, speaker_from,
                       min_duration_s, max_duration_s, num_workers)
    return write_splits(summary, {split: utts})


def _utterances(root, items, audio_of, text_of, extra: dict, summary: ImportSummary, lang: str, speaker_from: str,
                min_duration_s: float, max_duration_s: float | None, num_workers: int | None) -> list[Utterance]:
    """One :class:`Utterance` per item whose audio is usable (the shared probe-and-skip loop), ids from paths."""
    utts = []
    seen_ids: set[str] = set()
    usable = usable_audio(items, audio_of, lambda t: audio_of(t).relative_to(root).as_posix(), summary,
                          min_duration_s, max_duration_s, num_workers)
    for item, info in usable:
        audio = audio_of(item)
        rel = audio.relative_to(root)
        if rel.with_suffix("").as_posix() in seen_ids:  # utt.wav beside utt.flac: one transcript, two files
            summary.skip("same stem as another audio file", rel.as_posix())
            continue
        seen_ids.add(rel.with_suffix("").as_posix())
        speaker = rel.parent.name if speaker_from == "parent" and rel.parent != Path(".") else None
        utts.append(Utterance(audio_filepath=str(audio.resolve()), duration=round(info.duration_s, 4),
                              text=text_of(item), lang=lang, speaker=speaker, id=rel.with_suffix("").as_posix(),
                              extra=dict(extra)))
    return utts
