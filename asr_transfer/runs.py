"""Listing, comparing and reproducing run folders (training, evaluation and baseline runs).

A run folder is any folder holding ``run.json`` (:mod:`asr_transfer.provenance`), ``config.resolved.json`` (a
training run from before run records existed) or ``summary.json`` (an evaluation). Metrics are always read fresh from
the folder's files, so an evaluation added to ``RUN/eval/test`` later shows up as the run's test WER.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from . import provenance
from .errors import PARSE_ERRORS, UserError
from .files import read_json_or
from .retention import SOURCE_TEST_FOLDER, UNADAPTED, retention

DEFAULT_ROOTS = ("runs", "exp")
COLUMNS = ("name", "date", "kind", "source", "lang", "minutes", "stages", "dev_cer", "dev_wer", "test_wer", "wall",
           "status")
_PRUNE = {"checkpoints", "tb", "best", "final", "cache", "figures", "mlruns", "wav", "wavs", "audio", "__pycache__"}
# Keys that name the run rather than describe it: never reported as a "difference" between runs.
_IDENTITY_KEYS = {"train.output_dir", "name"}


@dataclass
class RunInfo:
    """One run folder: ``path`` as found, its record (``{}`` for older folders), settings and fresh metrics."""

    path: Path
    kind: str
    record: dict
    settings: dict  # the resolved training config, or the evaluation/baseline options
    metrics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.path)


# ---------------------------------------------------------------------------------------------------------- loading
def is_run_folder(folder: Path) -> bool:
    return any((folder / n).is_file() for n in (provenance.RECORD, "config.resolved.json", "summary.json"))


def load_run(folder: str | Path) -> RunInfo:
    """A :class:`RunInfo` for ``folder``; :class:`UserError` when it is not a run folder."""
    folder = Path(folder)
    if not folder.is_dir() or not is_run_folder(folder):
        raise UserError("not a run folder (no run.json, config.resolved.json or summary.json)", path=folder)
    record = provenance.read_record(folder) or {}
    kind = record.get("kind") or ("train" if (folder / "config.resolved.json").is_file() else "evaluate")
    if kind == "train":
        settings = read_json_or(folder / "config.resolved.json") or record.get("config") or {}
    else:
        settings = record.get("options") or {}
    metrics = {**(record.get("metrics") or {}), **provenance.collect_metrics(folder, kind)}
    return RunInfo(folder, kind, record, settings, metrics)


def find_runs(roots: Sequence[str | Path] = ()) -> list[RunInfo]:
    """Run folders under ``roots`` (recursively; default ``runs/`` and ``exp/``, skipped when absent).

    Checkpoint, model and TensorBoard folders are not searched. A baseline folder is listed through its parts
    (``raw``, ``zero-shot``), which carry the numbers.
    """
    given = bool(roots)
    found: list[RunInfo] = []
    for root in (roots or DEFAULT_ROOTS):
        root = Path(root)
        if not root.is_dir():
            if given:
                raise UserError("no such folder", path=root)
            continue
        for dirpath, dirnames, _ in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE and not d.startswith("."))
            folder = Path(dirpath)
            if is_run_folder(folder):
                info = load_run(folder)
                if not info.record.get("parts"):
                    found.append(info)
    return found


# ---------------------------------------------------------------------------------------------------------- rows
def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` → ``{"a.b.0": 1, "a.b.1": 2}`` (lists by index, as ``--set`` addresses them)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, (list, tuple)) and data and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = list(data) if isinstance(data, tuple) else data
    return out


def _started(info: RunInfo) -> str | None:
    if info.record.get("started"):
        return info.record["started"]
    for name in ("config.resolved.json", "summary.json"):
        p = info.path / name
        if p.is_file():
            return datetime.fromtimestamp(p.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    return None


def row(info: RunInfo) -> dict:
    """The listing's values for one run (raw values; :func:`format_table` renders them)."""
    r, s, m = info.record, info.settings, info.metrics
    source = (r.get("source") or {}).get("id")
    if info.kind == "train":
        source = source or (s.get("model") or {}).get("init_config") or (s.get("model") or {}).get("source")
        lang = r.get("lang") or (s.get("model") or {}).get("lang")
        stages = r.get("stages") or [st.get("name") for st in s.get("stages", [])]
        minutes = m.get("train_minutes", (r.get("data") or {}).get("train_minutes"))
        wall = r.get("wall_s") or (read_json_or(info.path / "train_summary.json") or {}).get("wall_s")
    else:
        summary = read_json_or(info.path / "summary.json") or {}
        source = source or s.get("model") or summary.get("model")
        lang = r.get("lang") or summary.get("lang")
        stages, minutes, wall = None, None, r.get("wall_s")
    return {"name": info.name, "date": _started(info), "kind": info.kind, "source": source, "lang": lang,
            "minutes": minutes, "stages": ",".join(x for x in stages if x) if stages else None,
            "dev_cer": m.get("best_dev_cer"), "dev_wer": m.get("best_dev_wer"), "test_wer": m.get("test_wer"),
            "wall": wall, "status": _status(r), "test_cer": m.get("test_cer")}


def _status(record: dict) -> str | None:
    """The recorded status; a "running" run whose process is gone on this host shows as "died"."""
    status = record.get("status")
    inv = (record.get("invocations") or [{}])[-1]
    if status == "running" and inv.get("host") == socket.gethostname() and inv.get("pid"):
        try:
            os.kill(int(inv["pid"]), 0)
        except ProcessLookupError:
            return "died"
        except (PermissionError, OSError, ValueError):
            pass
    return status


def _field(info: RunInfo, values: dict, key: str) -> Any:
    if key in values:
        return values[key]
    for data in (info.settings, info.metrics, info.record):
        flat = flatten(data)
        if key in flat:
            return flat[key]
    return None


_FILTER = re.compile(r"^([^=~<>]+)(=|~|<|>)(.*)$")


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v))
    except ValueError:
        return None


def parse_filter(text: str) -> tuple[str, str, str]:
    """``key=value`` (equal; numbers compare as numbers), ``key~sub`` (substring), ``key<x`` / ``key>x``."""
    m = _FILTER.match(text.strip())
    if not m or not m.group(1).strip():
        raise UserError(f"--filter expects key=value, key~substring, key<number or key>number; got {text!r}")
    return m.group(1).strip(), m.group(2), m.group(3).strip()


def matches(info: RunInfo, values: dict, flt: tuple[str, str, str]) -> bool:
    key, op, want = flt
    have = _field(info, values, key)
    if have is None:
        return False
    if op == "~":
        return want.lower() in str(have).lower()
    a, b = _number(have), _number(want)
    if op == "=":
        return a == b if a is not None and b is not None else str(have).lower() == want.lower()
    if a is None or b is None:
        return False
    return a < b if op == "<" else a > b


def list_runs(roots: Sequence[str | Path] = (), filters: Sequence[str] = (), sort: str = "date",
              desc: bool = False) -> list[dict]:
    """Rows of :func:`row` for the runs under ``roots`` that pass every filter, sorted (missing values last)."""
    parsed = [parse_filter(f) for f in filters]
    rows = []
    for info in find_runs(roots):
        values = row(info)
        if all(matches(info, values, f) for f in parsed):
            rows.append((info, values))
    if rows and sort not in rows[0][1] and all(_field(i, v, sort) is None for i, v in rows):
        raise UserError(f"--sort: unknown column {sort!r} (columns: {', '.join(COLUMNS)}, or any config/metric key)")

    def key(item):
        v = _field(item[0], item[1], sort)
        n = _number(v)
        return (v is None, n if n is not None else math.inf, "" if v is None else str(v))

    present = sorted((r for r in rows if _field(r[0], r[1], sort) is not None), key=key, reverse=desc)
    return [v for _, v in present + [r for r in rows if _field(r[0], r[1], sort) is None]]


# ---------------------------------------------------------------------------------------------------------- rendering
def _fmt(key: str, v: Any) -> str:
    if v is None or v == "":
        return "-"
    if key in ("dev_cer", "dev_wer", "test_wer", "test_cer"):
        return f"{100 * v:.2f}%"
    if key == "wall":
        return format_duration(v)
    if key == "minutes":
        return f"{v:.1f}"
    if key == "date":
        return str(v)[:16].replace("T", " ")
    if key == "source" and Path(str(v)).exists():  # a local folder: short, but still a path one can paste
        try:
            return str(Path(str(v)).resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain, aligned text table (grep- and diff-friendly)."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def format_runs(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> str:
    return format_table(list(columns), [[_fmt(c, r.get(c)) for c in columns] for r in rows])


# ---------------------------------------------------------------------------------------------------------- compare
def _provenance_view(info: RunInfo) -> dict:
    r = info.record
    env = r.get("environment") or {}
    versions = env.get("versions") or {}
    view = {"code": r.get("code"), "versions": {k: versions.get(k) for k in ("python", "torch", "transformers")},
            "device": env.get("device"), "source.sha256": (r.get("source") or {}).get("sha256"),
            "manifests": {k: (v or {}).get("fingerprint") for k, v in (r.get("manifests") or {}).items()}}
    return flatten(view)


def _differing(flats: list[dict]) -> list[tuple[str, list]]:
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    return [(k, [f.get(k) for f in flats]) for k in keys
            if k not in _IDENTITY_KEYS and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def compare_runs(folders: Sequence[str | Path]) -> dict:
    """Config, provenance and metric differences of runs, the first being the reference for deltas.

    Returns ``{"runs": [names], "config": [(key, [value per run])], "provenance": [...], "metrics": [(key, [value per
    run], [delta vs first per run])]}``; config and provenance list only the keys whose values differ.
    """
    infos = [load_run(f) for f in folders]
    if len(infos) < 2:
        raise UserError("runs compare needs at least two run folders")
    metric_keys: list[str] = []
    for i in infos:
        metric_keys += [k for k, v in i.metrics.items() if k not in metric_keys and _number(v) is not None]
    extra = _retention_metrics(infos)
    metric_keys += [k for k in extra if k not in metric_keys]
    metrics = []
    for k in metric_keys:
        values = [i.metrics.get(k, extra.get(k, {}).get(n)) for n, i in enumerate(infos)]
        ref = _number(values[0]) if values[0] is not None else None
        deltas = [(_number(v) - ref) if (v is not None and ref is not None) else None for v in values]
        metrics.append((k, values, deltas))
    return {"runs": [i.name for i in infos], "kinds": [i.kind for i in infos],
            "config": _differing([flatten(i.settings) for i in infos]),
            "provenance": _differing([_provenance_view(i) for i in infos]), "metrics": metrics}


def _retention_metrics(infos) -> dict[str, dict[int, float]]:
    """``source_wer``/``source_cer`` per run from its ``source-test/`` evaluation (``evaluate``/``baseline``
    ``--source-test``, recipe folders) and ``retention`` = the unadapted source's source CER / the run's, when one of
    the runs holds the unadapted source's score (a baseline's). A two-head model's kept source head
    (``source-test-<lang>-head/``) adds the same three as ``kept_<lang>_source_wer`` … ``kept_<lang>_retention``.
    Keys map run index -> value."""
    scores: dict[str, dict[int, dict]] = {}  # metric prefix → run index → source-test summary
    for n, info in enumerate(infos):
        folders = [Path(info.path) / SOURCE_TEST_FOLDER, *sorted(Path(info.path).glob(f"{SOURCE_TEST_FOLDER}-*-head"))]
        for folder in folders:
            try:
                s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            except (OSError, *PARSE_ERRORS):
                continue
            if isinstance(s, dict):
                prefix = f"kept_{s['head']}_" if isinstance(s.get("head"), str) else ""
                scores.setdefault(prefix, {})[n] = s
    out: dict[str, dict[int, float]] = {}
    ref = next((s.get("cer") for s in scores.get("", {}).values() if s.get("system") == UNADAPTED), None)
    for prefix, runs in scores.items():
        for key in ("wer", "cer"):
            values = {n: s[key] for n, s in runs.items() if _number(s.get(key)) is not None}
            if values:
                out[f"{prefix}source_{key}"] = values
        kept = {n: r for n, s in runs.items() if (r := retention(ref, s.get("cer"))) is not None}
        if kept:
            out[f"{prefix}retention"] = kept
    return out


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return v if isinstance(v, str) else json.dumps(v)


def format_comparison(cmp: dict) -> str:
    names = cmp["runs"]
    parts = []
    for section in ("config", "provenance"):
        if cmp[section]:
            rows = [[k, *map(_value, vs)] for k, vs in cmp[section]]
            parts.append(f"{section} differences\n" + format_table(["key", *names], rows))
        elif section == "config":
            parts.append("config differences: none")
    if cmp["metrics"]:
        headers = ["metric", names[0]] + [h for n in names[1:] for h in (n, "delta")]
        rows = []
        for k, values, deltas in cmp["metrics"]:
            cells = [k, _value(values[0])]
            for v, d in zip(values[1:], deltas[1:]):
                cells += [_value(v), "-" if d is None else f"{d:+.6g}"]
            rows.append(cells)
        parts.append("metrics (delta vs " + names[0] + ")\n" + format_table(headers, rows))
    else:
        parts.append("metrics: none recorded yet")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------------- reproduce
def _rebase(value: str | None, cwd: str | None) -> str | None:
    """A relative path recorded under another working directory, made absolute when it only exists there."""
    if not value or not cwd or Path(value).is_absolute() or Path(value).exists():
        return value
    there = Path(cwd) / value
    return str(there) if there.exists() else value


def _default_out(run: Path) -> Path:
    return run.parent / f"{run.resolve().name}-repro"


@dataclass
class Reproduction:
    run: Path
    out: Path
    kind: str
    warnings: list[str]
    old: dict
    new: dict
    ran: bool


def reproduce(run: str | Path, out: str | Path | None = None, overrides: Sequence[str] = (), check_only: bool = False,
              hash_audio: bool = False, progress: bool = True,
              warn: Callable[[str], None] | None = None) -> Reproduction:
    """Re-run ``run`` from its record into ``out`` (default ``RUN-repro``), warning about provenance differences.

    Training runs: ``config.resolved.json`` through :func:`~asr_transfer.config.load_config` with
    ``train.output_dir=OUT`` and the ``overrides``. Evaluations re-run :func:`~asr_transfer.evaluation.evaluate` and
    baselines :func:`~asr_transfer.evaluation.baseline` with the recorded options (``overrides`` set options, e.g.
    ``device=cpu``). ``check_only`` only checks and warns. ``warn`` receives each warning line.
    """
    run = Path(run)
    info = load_run(run)
    if info.record.get("parent"):  # a baseline's part: reproduce the whole baseline
        run = (run / info.record["parent"]).resolve()
        info = load_run(run)
    out = Path(out) if out is not None else _default_out(run)
    if not check_only and out.exists() and any(out.iterdir()):
        raise UserError("output folder exists and is not empty; choose another --out or remove it", path=out)
    if info.record.get("reproducible") is False:
        raise UserError("this evaluation was run from Python with an in-memory model; re-run that code", path=run)
    cwd = (info.record.get("invocations") or [{}])[0].get("cwd") or info.record.get("cwd")
    if info.kind == "train":
        runner, manifests, source = _train_runner(info, out, overrides, cwd, progress)
    else:
        runner, manifests, source = _eval_runner(info, out, overrides, cwd)
    warnings = (provenance.check_against(info.record, manifests, source, hash_audio) if info.record else
                [f"{run} has no run.json: code version and data fingerprints cannot be checked"])
    for w in warnings:
        (warn or (lambda s: None))(w)
    old = info.metrics
    if check_only:
        return Reproduction(run, out, info.kind, warnings, old, {}, False)
    previous = os.environ.get(provenance.HASH_AUDIO_ENV)
    if hash_audio:  # the new run records audio content hashes too
        os.environ[provenance.HASH_AUDIO_ENV] = "1"
    try:
        runner()
    finally:
        if previous is None:
            os.environ.pop(provenance.HASH_AUDIO_ENV, None)
        else:
            os.environ[provenance.HASH_AUDIO_ENV] = previous
    provenance.update_record(out, reproduces={"run": str(run.resolve()), "warnings": warnings})
    new = load_run(out).metrics
    return Reproduction(run, out, info.kind, warnings, old, new, True)


def _train_runner(info: RunInfo, out: Path, overrides: Sequence[str], cwd: str | None, progress: bool):
    # Imported here, not at the top: listing and comparing runs stays torch-free (0.3 s instead of 3.5 s to start);
    # only reproducing a run needs the trainer.
    from .config import TrainConfig, load_config
    from .training.loop import train

    config_path = info.path / "config.resolved.json"
    if not config_path.is_file():
        raise UserError("training run without config.resolved.json: nothing to reproduce from", path=info.path)
    model, data = info.settings.get("model", {}), info.settings.get("data", {})
    paths = (("model", model, ("source", "vocab", "init_config")), ("data", data, ("train_manifest", "dev_manifest")))
    rebased = [f"{sec}.{key}={json.dumps(new)}" for sec, d, keys in paths for key in keys
               if (new := _rebase(d.get(key), cwd)) != d.get(key)]
    config = load_config(TrainConfig, config_path, [*rebased, f"train.output_dir={json.dumps(str(out))}", *overrides])
    manifests = {"train": config.data.train_manifest, "dev": config.data.dev_manifest}
    source = provenance.source_identity(config.model.source, config.model.init_config)

    def runner():
        train(config, progress=progress)

    return runner, manifests, source


def _eval_runner(info: RunInfo, out: Path, overrides: Sequence[str], cwd: str | None):
    from . import evaluation as ev  # here for the reason _train_runner gives
    from .config import parse_value

    options = dict(info.settings)
    if not options.get("model") or not options.get("manifest"):
        raise UserError("the record holds no evaluation options (older folder?): re-run `asr-transfer evaluate`",
                        path=info.path)
    fn = ev.baseline if info.kind == "baseline" else ev.evaluate
    params = inspect.signature(fn).parameters
    for assignment in overrides:
        key, eq, raw = assignment.partition("=")
        if not eq or key.strip() not in params or key.strip() == "out_dir":
            valid = ", ".join(k for k in params if k != "out_dir")
            raise UserError(f"--set {assignment!r}: {fn.__name__} options are {valid}")
        options[key.strip()] = parse_value(raw)
    for key in ("model", "manifest", "lm_dir", "target_vocab"):
        if isinstance(options.get(key), str):
            options[key] = _rebase(options[key], cwd)
    kwargs = {k: v for k, v in options.items() if k in params and k != "out_dir"}
    source = provenance.source_identity(str(options["model"]))

    def runner():
        fn(out_dir=out, **kwargs)

    return runner, {"test": options["manifest"]}, source


def not_rerun(result: Reproduction) -> list[str]:
    """Recorded metrics the reproduction did not produce (evaluations added to the run folder afterwards)."""
    return [k for k in result.old if k not in result.new and _number(result.old[k]) is not None]


def format_reproduction(result: Reproduction) -> str:
    keys = [k for k in result.old if _number(result.old[k]) is not None]
    keys += [k for k in result.new if k not in keys and _number(result.new[k]) is not None]
    rows = []
    for k in keys:
        a, b = result.old.get(k), result.new.get(k)
        delta = f"{_number(b) - _number(a):+.6g}" if a is not None and b is not None else "-"
        rows.append([k, _value(a), _value(b), delta])
    return format_table(["metric", "recorded", "reproduced", "delta"], rows)
