"""Evaluation and training-run folders read back, and systems compared: what reports and curves are built from.

An evaluation folder (``summary.json`` + ``utterances.jsonl``, from ``evaluate``/``baseline``) becomes an
:class:`Evaluation`; a run folder (``metrics.jsonl``, ``stages.json``, optional ``config.resolved.json``, and
evaluations below ``eval/``) a :class:`Run`. :func:`collect` finds both in the folders a user names; every value the
report computes with is type-checked on reading, so a hand-edited file fails in one line naming it.
:func:`compare` gives each system its WER/CER with intervals and paired-bootstrap p-values against the baseline
(utterances paired by id; p = fraction of resamples where the system is *not* better than the baseline).
:mod:`asr_transfer.report` renders them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PARSE_ERRORS, UserError
from .metrics import paired_bootstrap
from .retention import SOURCE_TEST_FOLDER

PAIRED_RESAMPLES = 1000
PAIRED_SEED = 0
_SKIP_DIRS = {"checkpoints", "tb", "best", "final", "figures"}


@dataclass
class Evaluation:
    name: str
    folder: Path
    summary: dict
    rows: list[dict]


@dataclass
class Run:
    name: str
    folder: Path
    metrics: list[dict]
    stages: list[dict]
    config: dict | None
    skipped_lines: int = 0
    evaluations: list[str] = field(default_factory=list)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS) as exc:
        raise UserError(f"cannot read JSON ({exc}); re-run the step that wrote it", path=path) from None


def _read_jsonl(path: Path, strict: bool) -> tuple[list[dict], int]:
    """Rows of a JSONL file; with ``strict=False`` bad lines (a run killed mid-write) are counted, not fatal."""
    rows, bad = [], 0
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            rows.append(row)
        except PARSE_ERRORS as exc:
            if strict:
                raise UserError(f"bad JSON line ({exc})", path=path, line=line_no) from None
            bad += 1
    return rows, bad


_ROW_KEYS = ("id", "ref", "hyp", "substitutions", "deletions", "insertions", "hits", "ref_len", "char_errors",
             "char_ref_len", "alignment")


# What the report computes with, by type: a summary.json edited by hand ("wer": "0.25") fails here in one line.
_SUMMARY_NUMBERS = ("wer", "cer", "n_utterances", "n_skipped", "rtf", "audio_s", "decode_s")
_SUMMARY_INTERVALS = ("wer_ci95", "cer_ci95")
_SUMMARY_TEXTS = ("name", "lang", "manifest_fingerprint")
_ROW_NUMBERS = ("substitutions", "deletions", "insertions", "hits", "ref_len", "char_errors", "char_ref_len")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_summary(summary: dict, path: Path) -> None:
    fix = "re-run `asr-transfer evaluate` to write it again"
    for key in _SUMMARY_NUMBERS:
        if summary.get(key) is not None and not _is_number(summary[key]):
            raise UserError(f"'{key}' must be a number, got {summary[key]!r}; {fix}", path=path)
    for key in _SUMMARY_INTERVALS:
        value = summary.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))):
            raise UserError(f"'{key}' must be [low, high] numbers, got {value!r}; {fix}", path=path)
    for key in _SUMMARY_TEXTS:
        if summary.get(key) is not None and not isinstance(summary[key], str):
            raise UserError(f"'{key}' must be a string, got {summary[key]!r}; {fix}", path=path)


def load_evaluation(folder: Path, name: str | None = None) -> Evaluation:
    summary = _read_json(folder / "summary.json")
    if not isinstance(summary, dict):
        raise UserError("summary.json must be a JSON object", path=folder / "summary.json")
    _check_summary(summary, folder / "summary.json")
    rows_path = folder / "utterances.jsonl"
    rows = _read_jsonl(rows_path, strict=True)[0] if rows_path.is_file() else []
    for i, row in enumerate(rows, start=1):
        missing = [k for k in _ROW_KEYS if k not in row]
        if missing:
            raise UserError(f"row {i} lacks {', '.join(missing)}; re-run `asr-transfer evaluate`", path=rows_path)
        if not isinstance(row["id"], str):  # rows are paired by id across systems: it must be hashable text
            raise UserError(f"'id' must be a string, got {row['id']!r}; re-run `asr-transfer evaluate`",
                            path=rows_path, line=i)
        wrong = [k for k in _ROW_NUMBERS if not _is_number(row[k])]
        if wrong:
            raise UserError(f"'{wrong[0]}' must be a number, got {row[wrong[0]]!r}; re-run `asr-transfer evaluate`",
                            path=rows_path, line=i)
    return Evaluation(name or str(summary.get("name") or folder.name), folder, summary, rows)


def load_run(folder: Path) -> Run:
    metrics, bad = ([], 0)
    if (folder / "metrics.jsonl").is_file():
        metrics, bad = _read_jsonl(folder / "metrics.jsonl", strict=False)
    metrics = [r for r in metrics if isinstance(r.get("step"), (int, float))]
    stages = _read_json(folder / "stages.json") if (folder / "stages.json").is_file() else _infer_stages(metrics)
    if not isinstance(stages, list):
        raise UserError("stages.json must be a list of {name, start_step, end_step, trainable_params}",
                        path=folder / "stages.json")
    config_path = folder / "config.resolved.json"
    config = _read_json(config_path) if config_path.is_file() else None
    return Run(folder.resolve().name, folder, metrics, stages, config, bad)


def _infer_stages(metrics: list[dict]) -> list[dict]:
    """Stage spans from the ``stage`` field of metrics rows, for runs without ``stages.json``."""
    stages: list[dict] = []
    for row in sorted(metrics, key=lambda r: r["step"]):
        name = row.get("stage")
        if name is None:
            continue
        if not stages or stages[-1]["name"] != name:
            stages.append({"name": name, "start_step": row["step"], "end_step": row["step"],
                           "trainable_params": row.get("trainable_params")})
        stages[-1]["end_step"] = row["step"]
    return stages


def _summaries_below(folder: Path, max_depth: int = 3) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("summary.json")):
        rel = path.parent.relative_to(folder)
        if len(rel.parts) <= max_depth and not _SKIP_DIRS & set(rel.parts):
            found.append(path.parent)
    return found


def collect(inputs) -> tuple[list[Evaluation], list[Run]]:
    """Evaluations and runs found in ``inputs`` (see the module docstring); names are made unique."""
    evaluations: list[Evaluation] = []
    runs: list[Run] = []
    for item in inputs:
        folder = Path(item)
        if not folder.is_dir():
            raise UserError("not a folder (expected an evaluation, baseline or run folder)", path=folder)
        if (folder / "summary.json").is_file():
            evaluations.append(load_evaluation(folder))
            if (folder / SOURCE_TEST_FOLDER / "summary.json").is_file():  # evaluate --source-test: its retention
                evaluations.append(load_evaluation(folder / SOURCE_TEST_FOLDER))
            for kept in sorted(folder.glob(f"{SOURCE_TEST_FOLDER}-*-head")):  # a two-head model's kept source head
                if (kept / "summary.json").is_file():
                    evaluations.append(load_evaluation(kept))
            continue
        is_run = (folder / "metrics.jsonl").is_file() or (folder / "stages.json").is_file()
        below = _summaries_below(folder)
        if is_run:
            run = load_run(folder)
            runs.append(run)
            for sub in below:
                ev = load_evaluation(sub)
                ev.name = f"{run.name}/{ev.name}"
                run.evaluations.append(ev.name)
                evaluations.append(ev)
        elif below:
            evaluations.extend(load_evaluation(sub) for sub in below)
        else:
            raise UserError("no summary.json, metrics.jsonl or stages.json here or below", path=folder)
    seen: dict[str, int] = {}
    for ev in evaluations:
        if ev.name in seen:
            seen[ev.name] += 1
            ev.name = f"{ev.name} ({seen[ev.name]})"
        else:
            seen[ev.name] = 1
    if not evaluations and not runs:
        raise UserError("nothing to report: give evaluation or run folders")
    return evaluations, runs


def _errors(row: dict, unit: str) -> tuple[float, float]:
    if unit == "wer":
        return row["substitutions"] + row["deletions"] + row["insertions"], row["ref_len"]
    return row["char_errors"], row["char_ref_len"]


def best_zero_shot(evaluations: list[Evaluation]) -> str | None:
    """The name of the zero-shot system (summary ``"zero_shot": true``: no target audio used, written by
    ``baseline``) with the lowest WER, ties broken by CER; None when there is none. A trained system has to beat the
    best that needs no target audio, not the weakest."""
    scored = [e for e in evaluations if e.summary.get("zero_shot") is True and _is_number(e.summary.get("wer"))]
    if not scored:
        return None
    cer = [e.summary["cer"] if _is_number(e.summary.get("cer")) else float("inf") for e in scored]
    return min(zip(scored, cer), key=lambda ec: (ec[0].summary["wer"], ec[1]))[0].name


def compare(evaluations: list[Evaluation], baseline: str | None = None) -> tuple[str | None, list[dict]]:
    """One row per system with WER/CER, CIs and paired-bootstrap p-values against the baseline.

    Baseline: ``baseline`` if given, else the best zero-shot system (:func:`best_zero_shot`), else the system named
    ``raw``, else the first. Only utterances present in both systems (by id) are paired; ``n_paired`` says how many.
    """
    names = [e.name for e in evaluations]
    if baseline is not None and baseline not in names:
        raise UserError(f"--baseline {baseline!r} is not one of the systems: {', '.join(names)}")
    base_name = baseline or best_zero_shot(evaluations) or ("raw" if "raw" in names else (names[0] if names else None))
    base = next((e for e in evaluations if e.name == base_name), None)
    rows = []
    for ev in evaluations:
        s = ev.summary
        row = {"name": ev.name, "n": s.get("n_utterances"), "skipped": s.get("n_skipped", 0),
               "wer": s.get("wer"), "wer_ci95": s.get("wer_ci95"), "cer": s.get("cer"), "cer_ci95": s.get("cer_ci95"),
               "p_wer": None, "p_cer": None, "n_paired": None, "same_manifest": None}
        if base is not None and ev is not base and ev.rows and base.rows:
            by_id = {r["id"]: r for r in base.rows}
            pairs = [(by_id[r["id"]], r) for r in ev.rows if r["id"] in by_id]
            row["n_paired"] = len(pairs)
            row["same_manifest"] = s.get("manifest_fingerprint") == base.summary.get("manifest_fingerprint")
            for unit in ("wer", "cer"):
                a = [_errors(b, unit) for b, _ in pairs]
                b = [_errors(x, unit) for _, x in pairs]
                lengths = [x[1] for x in a]
                if pairs and sum(lengths) > 0:
                    row[f"p_{unit}"] = paired_bootstrap([x[0] for x in a], [x[0] for x in b], lengths,
                                                        n=PAIRED_RESAMPLES, seed=PAIRED_SEED)
        rows.append(row)
    return base_name, rows


def worst_utterances(ev: Evaluation, n: int) -> list[dict]:
    """The ``n`` utterances with the most word errors (ties: higher per-utterance WER first)."""

    def key(r):
        errors = r["substitutions"] + r["deletions"] + r["insertions"]
        return (-errors, -(errors / r["ref_len"]) if r["ref_len"] else 0.0, r["id"])

    return sorted(ev.rows, key=key)[: max(0, n)]
