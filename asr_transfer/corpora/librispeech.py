"""LibriSpeech (and corpora in its layout, e.g. Multilingual LibriSpeech's flac release) into manifests.

Layout::

    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   # "<utt-id> TRANSCRIPT" per line
    LibriSpeech/<subset>/<speaker>/<chapter>/<utt-id>.flac

``root`` is the folder holding the subsets, or one subset folder. Each subset is written as ``<subset>.jsonl``; the
official roles (``train-*`` → train, ``dev-*`` → dev, ``test-*`` → test) are also merged into ``train.jsonl``,
``dev.jsonl`` and ``test.jsonl``. Subsets whose names give no role (a custom corpus in this layout) are pooled and
split speaker-disjointly with :func:`~asr_transfer.corpora.splits.split_utterances`. Transcripts are kept as
published (upper case); normalisation happens at training/eval time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..errors import UserError
from ..manifest import Utterance, write_manifest
from .splits import (
    DEFAULT_FRACTIONS,
    MIN_DURATION_S,
    ImportSummary,
    speaker_overlaps,
    split_utterances,
    usable_audio,
    write_splits,
)

ROLES = ("train", "dev", "test")
AUDIO_EXTS = (".flac", ".wav", ".opus")


def subset_role(name: str) -> str | None:
    """``train-clean-100`` → ``train``, ``dev-other`` → ``dev``; ``None`` for names without a role."""
    head = name.split("-", 1)[0].lower()
    return head if head in ROLES else None


def find_subsets(root: Path, subsets: Sequence[str] | None) -> dict[str, Path]:
    """Subset name → folder; ``root`` itself counts as a subset when it holds ``<speaker>/<chapter>/*.trans.txt``."""
    if not root.is_dir():
        raise UserError("LibriSpeech folder not found", path=root)
    if any(root.glob("*/*/*.trans.txt")):
        found = {root.name: root}
    else:
        found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and any(p.glob("*/*/*.trans.txt"))}
    if not found:
        raise UserError("no LibriSpeech subsets here (expected <subset>/<speaker>/<chapter>/*.trans.txt)", path=root)
    if subsets:
        missing = [s for s in subsets if s not in found]
        if missing:
            raise UserError(f"no subset(s) {', '.join(missing)}; found: {', '.join(found)}", path=root)
        found = {s: found[s] for s in subsets}
    return found


def read_subset(subset_dir: Path, summary: ImportSummary, lang: str, min_duration_s: float,
                max_duration_s: float | None, num_workers: int | None) -> list[Utterance]:
    """All utterances of one subset, in sorted transcript-file order."""
    entries: list[tuple[str, Path, str, str]] = []  # (where, audio, text, speaker)
    for trans in sorted(subset_dir.glob("*/*/*.trans.txt")):
        speaker = trans.parent.parent.name
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            summary.skip("transcript file not UTF-8", str(trans))
            continue
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            where = f"{trans.name}:{line_no}"
            text = " ".join(text.split())
            if not text:
                summary.skip("empty transcript", where)
                continue
            audio = next((trans.parent / (uid + ext) for ext in AUDIO_EXTS if (trans.parent / (uid + ext)).is_file()),
                         trans.parent / (uid + AUDIO_EXTS[0]))
            entries.append((where, audio, text, speaker))
    out = []
    usable = usable_audio(entries, lambda e: e[1], lambda e: f"{e[0]} {e[1].name}", summary, min_duration_s,
                          max_duration_s, num_workers)
    for (where, audio, text, speaker), info in usable:
        out.append(Utterance(str(audio.resolve()), round(info.duration_s, 4), text, lang=lang, speaker=speaker,
                             id=audio.stem))
    return out


def prepare_librispeech(
    root: str | Path,
    out_dir: str | Path,
    subsets: Sequence[str] | None = None,
    lang: str = "en",
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    min_duration_s: float = MIN_DURATION_S,
    max_duration_s: float | None = None,
    num_workers: int | None = None,
) -> ImportSummary:
    """Import ``subsets`` (default: all found) under ``root`` into per-subset and per-role manifests in ``out_dir``.

    Returns an :class:`ImportSummary` whose ``manifests`` maps ``train``/``dev``/``test`` and each subset name to the
    file written. Missing/unreadable audio and transcripts are skipped and counted by reason.
    """
    root = Path(root)
    found = find_subsets(root, subsets)
    summary = ImportSummary(corpus=f"librispeech ({root})", out_dir=Path(out_dir))
    by_subset = {name: read_subset(path, summary, lang, min_duration_s, max_duration_s, num_workers)
                 for name, path in found.items()}

    roles: dict[str, list[Utterance]] = {}
    pooled: list[Utterance] = []
    for name, utts in by_subset.items():
        role = subset_role(name)
        if role:
            roles.setdefault(role, []).extend(utts)
        else:
            pooled.extend(utts)
    if pooled:
        for role, utts in split_utterances(pooled, fractions, seed).items():
            roles.setdefault(role, []).extend(utts)
    for (a, b), shared in speaker_overlaps(roles).items():
        summary.warnings.append(f"{a} and {b} share {len(shared)} speaker(s): {', '.join(sorted(shared)[:5])}")

    parts: dict[str, list[Utterance]] = {r: roles[r] for r in ROLES if r in roles}
    write_splits(summary, parts)
    # Per-subset manifests too (dev-clean and dev-other are reported separately in papers); not counted twice.
    for name, utts in by_subset.items():
        if utts and subset_role(name) and name not in ROLES:
            summary.manifests[name] = write_manifest(Path(out_dir) / f"{name}.jsonl", utts)
    return summary
