"""A CSV/TSV table of ``path, text[, speaker, split, id]`` rows into manifests.

The delimiter follows the extension (``.tsv``/``.tab`` → tab, ``.csv`` → comma, else sniffed from the first
lines). A header row is required; the column names are options. Audio paths may be absolute or relative to the
table's folder. Tab-separated tables are read without quote handling (transcripts contain bare ``"``), as Common
Voice and most TSV exports need. A table with a split column (values such as ``train``/``dev``/``test``) keeps its
split; otherwise the rows are split by :func:`~asr_transfer.corpora.splits.split_utterances`.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Mapping

from ..errors import UserError
from ..manifest import Utterance
from .splits import (
    DEFAULT_FRACTIONS,
    FIELD_COUNT_SKIP,
    MIN_DURATION_S,
    ImportSummary,
    speaker_overlaps,
    split_utterances,
    usable_audio,
    write_splits,
)

DELIMITERS = {".tsv": "\t", ".tab": "\t", ".csv": ","}


def _delimiter_for(table: Path, text: str, delimiter: str | None) -> str:
    if delimiter:
        sep = "\t" if delimiter in ("\\t", "tab") else delimiter
        # The csv module takes one character, and not one that ends a line or quotes a field.
        if len(sep) != 1 or sep in "\r\n\"":
            raise UserError(f"--delimiter must be one character other than a quote or line break (or tab), got "
                            f"{delimiter!r}", path=table)
        return sep
    if table.suffix.lower() in DELIMITERS:
        return DELIMITERS[table.suffix.lower()]
    try:
        return csv.Sniffer().sniff(text[:8192], delimiters=",\t;|").delimiter
    except csv.Error:
        raise UserError("cannot tell the delimiter: name the file .csv or .tsv, or pass --delimiter", path=table)


def read_table(table: Path, delimiter: str | None = None) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """``(columns, [(line_number, row), ...])`` of a delimited text table with a header."""
    if not table.is_file():
        raise UserError("table not found", path=table)
    try:
        text = table.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"not valid UTF-8 (byte {exc.start}); re-save the table as UTF-8", path=table) from None
    sep = _delimiter_for(table, text, delimiter)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text.splitlines(), delimiter=sep, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError("table is empty", path=table) from None
    columns = [c.strip() for c in header]
    rows = []
    for line, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        row = dict(zip(columns, values))
        if len(values) != len(columns):
            # Like csv.DictReader: the None key marks a row whose fields do not line up with the header (a tab
            # inside a transcript of a quote-less TSV); zip alone would cut the transcript there without a word.
            row[None] = values[len(columns):]
        rows.append((line, row))
    return columns, rows


def prepare_tabular(
    table: str | Path,
    out_dir: str | Path,
    lang: str,
    path_column: str = "path",
    text_column: str = "text",
    speaker_column: str | None = None,
    split_column: str | None = None,
    id_column: str | None = None,
    delimiter: str | None = None,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    min_duration_s: float = MIN_DURATION_S,
    max_duration_s: float | None = None,
    num_workers: int | None = None,
) -> ImportSummary:
    """Import the rows of ``table`` into ``out_dir/<split>.jsonl`` manifests.

    A named column that the header lacks is a :class:`UserError` naming the table and the columns it has. Rows with
    an empty path or text, unreadable audio, or audio outside the duration limits are skipped and counted by reason.
    The id is ``id_column`` if given, else the audio path relative to the table folder without extension.
    """
    table = Path(table)
    columns, rows = read_table(table, delimiter)
    wanted = {"path": path_column, "text": text_column, "speaker": speaker_column, "split": split_column,
              "id": id_column}
    missing = [f"{name} column '{col}'" for name, col in wanted.items() if col and col not in columns]
    if missing:
        raise UserError(
            f"no {', '.join(missing)}; the header has: {', '.join(columns)} (choose with --path-column/--text-column)",
            path=table,
        )
    summary = ImportSummary(corpus=f"tabular ({table})", out_dir=Path(out_dir))
    base = table.resolve().parent

    kept = []
    for line, row in rows:
        where = f"{table.name}:{line}"
        if None in row:
            summary.skip(FIELD_COUNT_SKIP, f"{where} ({len(row) - 1 + len(row[None])} fields, header {len(columns)})")
            continue
        raw_path = (row.get(path_column) or "").strip()
        text = " ".join((row.get(text_column) or "").split())
        if not raw_path:
            summary.skip("empty path", where)
            continue
        if not text:
            summary.skip("empty text", where)
            continue
        audio = Path(raw_path).expanduser()
        audio = audio if audio.is_absolute() else base / audio
        kept.append((where, audio, text, row))

    by_split: dict[str, list[Utterance]] = {}
    seen: dict[str, str] = {}
    usable = usable_audio(kept, lambda k: k[1], lambda k: k[0], summary, min_duration_s, max_duration_s, num_workers)
    for (where, audio, text, row), info in usable:
        if id_column:
            uid = row[id_column].strip()
        else:
            try:
                uid = audio.relative_to(base).with_suffix("").as_posix()
            except ValueError:  # absolute path outside the table folder
                uid = audio.stem
        if not uid or uid in seen:
            summary.skip("duplicate or empty id", f"{where} ({uid or 'empty'}; first at {seen.get(uid, '-')})")
            continue
        seen[uid] = where
        speaker = ((row.get(speaker_column) or "").strip() or None) if speaker_column else None
        split = (row.get(split_column) or "").strip() if split_column else ""
        if split_column and not split:
            summary.skip("empty split", where)
            continue
        by_split.setdefault(split, []).append(
            Utterance(str(audio), round(info.duration_s, 4), text, lang=lang, speaker=speaker, id=uid)
        )
    if split_column:
        for (a, b), shared in speaker_overlaps(by_split).items():
            summary.warnings.append(f"splits {a} and {b} in the table share {len(shared)} speaker(s)")
        return write_splits(summary, by_split)
    return write_splits(summary, split_utterances(by_split.get("", []), fractions, seed))
