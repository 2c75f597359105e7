"""Mozilla Common Voice: a release's language folder into train/dev/test manifests.

Layout (one language of a release, e.g. ``cv-corpus-17.0-2024-03-15/de``)::

    de/validated.tsv  train.tsv  dev.tsv  test.tsv  (other.tsv invalidated.tsv ...)
    de/clips/common_voice_de_12345.mp3

The TSVs are tab-separated with a header (``client_id``, ``path``, ``sentence``, optionally ``up_votes``,
``down_votes``, ``age``, ``gender``, ``accents``, ``locale`` ...). Sentences contain bare quote characters, so they are
read without CSV quoting. The official splits are used as they are (they are meant to be speaker-disjoint; this is
checked and any shared speakers are reported as a warning). Manifests point at the original mp3 clips (nothing is
copied or converted: soundfile decodes mp3), keep the sentence as published (normalisation happens at training/eval
time), and carry ``speaker`` = ``client_id``, ``id`` = clip stem and ``lang``. Clips that are missing, unreadable,
empty, or outside the duration limits are skipped and counted by reason in the returned summary, and so are rows
whose fields do not line up with the header (a tab inside a sentence would otherwise cut it there).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..manifest import Utterance
from .splits import (
    FIELD_COUNT_SKIP,
    MIN_DURATION_S,
    ImportSummary,
    speaker_overlaps,
    usable_audio,
    write_splits,
)

REQUIRED_COLUMNS = ("client_id", "path", "sentence")
KEPT_COLUMNS = ("gender", "age", "accents", "variant")  # demographic columns kept as extra keys, for per-group WER
DEFAULT_SPLITS = ("train", "dev", "test")
DEFAULT_MAX_DURATION_S = 30.0  # s; Common Voice clips are ≤ 10 s by design, longer ones are recording accidents


def find_language_dir(root: str | Path, lang: str) -> Path:
    """``root`` itself if it holds ``clips/`` and TSVs, else ``root/<lang>`` (a whole release was given)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError("Common Voice folder not found", path=root)
    for candidate in (root, root / lang):
        if (candidate / "clips").is_dir() and any(candidate.glob("*.tsv")):
            return candidate
    raise UserError(
        f"not a Common Voice language folder: expected clips/ and train.tsv/dev.tsv/test.tsv here or in {lang}/",
        path=root,
    )


def read_tsv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line_number, row)`` for each data row of a Common Voice TSV; a missing column is a :class:`UserError`."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise UserError(
                    f"missing column(s) {', '.join(missing)}; the header has: {', '.join(columns) or '(nothing)'}",
                    path=path,
                )
            return [(i, row) for i, row in enumerate(reader, start=2)]
    except UnicodeDecodeError as exc:
        raise UserError(f"not valid UTF-8 (byte {exc.start}); Common Voice TSVs are UTF-8", path=path) from None


def _rows_to_utterances(
    tsv: Path,
    clips_dir: Path,
    lang: str,
    summary: ImportSummary,
    seen: set[str],
    locales: set[str],
    min_duration_s: float,
    max_duration_s: float | None,
    num_workers: int | None,
) -> list[Utterance]:
    rows = []
    for line, row in read_tsv(tsv):
        clip = (row.get("path") or "").strip()
        text = (row.get("sentence") or "").strip()
        where = f"{tsv.name}:{line}"
        if None in row or None in row.values():  # csv.DictReader's marks of extra / missing fields
            summary.skip(FIELD_COUNT_SKIP, where)
        elif not clip:
            summary.skip("row without path", where)
        elif not text:
            summary.skip("empty sentence", where)
        elif clip in seen:
            summary.skip("clip already in another split or row", f"{where} {clip}")
        else:
            seen.add(clip)
            if (row.get("locale") or "").strip():
                locales.add(row["locale"].strip())
            rows.append((where, clip, text, row))
    out = []
    usable = usable_audio(rows, lambda r: clips_dir / r[1], lambda r: f"{r[0]} {r[1]}", summary, min_duration_s,
                          max_duration_s, num_workers)
    for (where, clip, text, row), info in usable:
        extra = {k: row[k] for k in KEPT_COLUMNS if (row.get(k) or "").strip()}
        out.append(
            Utterance(
                audio_filepath=str(clips_dir / clip),
                duration=round(info.duration_s, 4),
                text=text,
                lang=lang,
                speaker=(row.get("client_id") or "").strip() or None,
                id=Path(clip).stem,
                extra=extra,
            )
        )
    return out


def prepare_commonvoice(
    root: str | Path,
    out_dir: str | Path,
    lang: str,
    splits: Sequence[str] = DEFAULT_SPLITS,
    min_duration_s: float = MIN_DURATION_S,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    num_workers: int | None = None,
) -> ImportSummary:
    """Import the official ``splits`` of a Common Voice language folder into ``out_dir/<split>.jsonl``.

    ``root`` is the language folder (or the release folder holding ``<lang>/``). Returns an :class:`ImportSummary`
    (utterances, hours, speakers per split; skipped clips by reason; a warning if the splits share speakers).
    A clip listed in two split files is kept only in the first one.
    """
    lang_dir = find_language_dir(root, lang).resolve()
    present = sorted(p.stem for p in lang_dir.glob("*.tsv"))
    missing = [s for s in splits if not (lang_dir / f"{s}.tsv").is_file()]
    if missing:
        raise UserError(
            f"no {', '.join(s + '.tsv' for s in missing)}; this folder has: {', '.join(p + '.tsv' for p in present)}",
            path=lang_dir,
        )
    summary = ImportSummary(corpus=f"commonvoice ({lang_dir})", out_dir=Path(out_dir))
    seen: set[str] = set()
    locales: set[str] = set()
    parts = {
        split: _rows_to_utterances(
            lang_dir / f"{split}.tsv",
            lang_dir / "clips",
            lang,
            summary,
            seen,
            locales,
            min_duration_s,
            max_duration_s,
            num_workers,
        )
        for split in splits
    }
    for (a, b), shared in speaker_overlaps(parts).items():
        summary.warnings.append(
            f"official splits {a} and {b} share {len(shared)} speaker(s) (e.g. {sorted(shared)[0][:16]}…); "
            "results on them are not speaker-independent"
        )
    if locales and locales != {lang}:
        summary.warnings.append(f"TSV locale column says {sorted(locales)}, but --lang is {lang}")
    return write_splits(summary, parts)
