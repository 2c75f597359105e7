"""What a run records: ``run.json`` in every training, evaluation and baseline folder.

``run.json`` is written atomically when the run starts and updated when it ends (or pauses). It holds what is needed
to list, compare and reproduce the run without reading anything else (schema: ``docs/experiments.md``):

* ``kind`` (train / evaluate / baseline), ``status`` (running / paused / finished, or failed / interrupted with the
  ``error`` line when a command ended with an exception), the command line, cwd, host, pid;
* the code: package version, git commit + dirty flag of the checkout holding this package (``null`` without git);
* the environment: Python, torch, transformers (and more) versions, the platform and the device;
* the inputs: the resolved config (training) or options (evaluation), each manifest's path and
  :func:`~asr_transfer.manifest.fingerprint` (lines + audio sizes/mtimes; with ``ASR_TRANSFER_HASH_AUDIO=1`` also a
  full audio-content hash, which survives copying the data to another machine), the source model's id plus the
  sha256 of its weights (local folder) or its resolved hub commit;
* the outcome: wall time per invocation and in total, and the metrics (:func:`collect_metrics`).

Data is never copied: manifests stay where the user keeps them, the record only points at them.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .environment import environment_info, git_commit
from .errors import UserError
from .files import atomic_write_json, read_json_or, sha256_file
from .manifest import fingerprint as fp
from .training.runlog import read_metrics

SCHEMA = 1
RECORD = "run.json"
HASH_AUDIO_ENV = "ASR_TRANSFER_HASH_AUDIO"
_WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin")
ERROR_CHARS = 300  # of an exception's first line kept in a failed run's record

_open_records: set[Path] = set()  # run folders whose record this process began and has not finished


# ---------------------------------------------------------------------------------------------------------- files
def read_record(run_dir: str | Path) -> dict | None:
    """The folder's ``run.json``, or ``None`` when absent or unreadable (a record never makes a folder unusable)."""
    data = read_json_or(Path(run_dir) / RECORD)
    return data if isinstance(data, dict) else None


def write_record(run_dir: str | Path, record: dict) -> Path:
    """Atomically write ``run.json`` (temp file, fsync, rename): a crash leaves the old or the new file, never half."""
    return atomic_write_json(Path(run_dir) / RECORD, record, default=str)


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------- facts
def code_state() -> dict:
    """``{"package_version", "commit", "dirty"}``: ``git -C <this package>``; ``None`` values outside a checkout."""

    return {"package_version": __version__, **git_commit(Path(__file__).resolve().parent)}


def environment(device: str | None = None) -> dict:
    """Library versions (python, torch, transformers, …), platform and the device the run used."""

    info = environment_info()
    env = {"versions": info["versions"], "debian": info["debian"], "platform": info["platform"], "device": device,
           "processes": int(os.environ.get("WORLD_SIZE", "1"))}  # >1 under `accelerate launch` / torchrun
    if device and device.startswith("cuda"):  # the card decides timings (and bf16/TF32 numerics)
        try:
            import torch

            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        except Exception:
            env["gpu"] = None
    return env


def hash_audio_default() -> bool:
    return os.environ.get(HASH_AUDIO_ENV, "").strip().lower() in ("1", "true", "yes")


def manifest_entry(path: str | Path, fingerprint: str | None = None, hash_audio: bool | None = None) -> dict:
    """``{"path", "fingerprint", "audio_content"}`` of one manifest; a missing manifest records ``None``s."""

    hash_audio = hash_audio_default() if hash_audio is None else hash_audio
    entry = {"path": str(Path(path).resolve()), "fingerprint": fingerprint, "audio_content": None}
    try:
        entry["fingerprint"] = fingerprint or fp(path)
        if hash_audio:
            entry["audio_content"] = fp(path, hash_audio=True)
    except (UserError, OSError):
        pass
    return entry


def source_identity(source: str | None, init_config: str | None = None) -> dict | None:
    """Identify a model: a local folder by the sha256 of its weights, a hub id by its cached resolved commit.

    ``init_config`` (a randomly initialised model built from a config JSON) is identified by that file's sha256.
    """
    if init_config:
        p = Path(init_config)
        return {"id": str(init_config), "kind": "config", "sha256": sha256_file(p) if p.is_file() else None}
    if not source:
        return None
    p = Path(source)
    if p.is_dir():
        weights = next((p / n for n in _WEIGHT_FILES if (p / n).is_file()), None)
        model_record = read_json_or(p / "asr_transfer.json") or {}
        return {"id": str(source), "kind": "local", "path": str(p.resolve()),
                "weights": weights.name if weights else None, "sha256": sha256_file(weights) if weights else None,
                "source_model": model_record.get("source_model") if isinstance(model_record, dict) else None}
    return {"id": str(source), "kind": "hub", "revision": _hub_revision(str(source))}


def _hub_revision(model_id: str, ref: str = "main") -> str | None:
    """The commit ``ref`` resolved to when the model was last downloaded (from the local hub cache), if known."""
    if "@" in model_id:
        model_id, ref = model_id.split("@", 1)
    try:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
    except Exception:
        cache = Path.home() / ".cache" / "huggingface" / "hub"
    refs = cache / f"models--{model_id.replace('/', '--')}" / "refs" / ref
    try:
        return refs.read_text().strip() or None
    except OSError:
        return None


def check_against(rec: dict, manifests: dict[str, str | None], source: dict | None,
                  hash_audio: bool = False) -> list[str]:
    """One-line warnings where the code, libraries, manifests (``{role: path}``) or the source model (a
    :func:`source_identity`) now differ from the record ``rec``; ``hash_audio`` compares audio content hashes
    where the record has them."""
    warnings: list[str] = []
    was, now = rec.get("code") or {}, code_state()
    if now.get("commit") and was.get("commit") and now["commit"] != was["commit"]:
        warnings.append(f"code differs: the run used commit {was['commit'][:12]}, "
                        f"this checkout is {now['commit'][:12]}")
    elif now.get("commit") is None or was.get("commit") is None:
        warnings.append("code version unknown (no git checkout at record time or now): cannot check it matches")
    if was.get("dirty"):
        warnings.append("the run was made from a working tree with uncommitted changes: its code is not exactly "
                        "recoverable")
    if now.get("dirty"):
        warnings.append(f"this working tree has uncommitted changes (commit {str(now.get('commit'))[:12]}): "
                        "results may differ")
    old_v = ((rec.get("environment") or {}).get("versions")) or {}
    new_v = environment()["versions"]
    changed = [f"{k} {old_v[k]} -> {new_v.get(k)}" for k in ("torch", "transformers", "python", "asr_transfer")
               if old_v.get(k) and old_v.get(k) != new_v.get(k)]
    if changed:
        warnings.append("library versions differ: " + ", ".join(changed))
    for role, old in (rec.get("manifests") or {}).items():
        path = manifests.get(role)
        if not path:
            continue
        if not Path(path).is_file():
            warnings.append(f"{role} manifest {path} is missing")
            continue
        entry = manifest_entry(path, hash_audio=hash_audio and bool(old.get("audio_content")))
        if old.get("path") and entry["path"] != old["path"]:
            warnings.append(f"{role} manifest is now {entry['path']} (the run used {old['path']})")
        # Content hashes (when both sides have them) survive copying the data; the stat fingerprint does not.
        key = "audio_content" if old.get("audio_content") and entry.get("audio_content") else "fingerprint"
        if entry[key] != old.get(key):
            what = "audio content hash" if key == "audio_content" else "fingerprint"
            warnings.append(f"{role} manifest {path} changed since the run ({what} {old.get(key)} -> {entry[key]})")
    old_src = rec.get("source") or {}
    if source and old_src.get("sha256") and source.get("sha256") and source["sha256"] != old_src["sha256"]:
        warnings.append(f"source model {source.get('id')} changed (weights sha256 {old_src['sha256'][:12]} -> "
                        f"{source['sha256'][:12]})")
    if source and old_src.get("revision") and source.get("revision") and source["revision"] != old_src["revision"]:
        warnings.append(f"source model {source.get('id')} resolves to revision {source['revision']}, "
                        f"the run used {old_src['revision']}")
    return warnings


# ---------------------------------------------------------------------------------------------------------- metrics
def _best_dev(run_dir: Path) -> dict:
    try:
        rows = [r for r in read_metrics(run_dir) if r.get("split") == "dev"]
    except (OSError, ValueError):
        return {}
    out = {}
    for key in ("cer", "wer", "loss"):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[f"best_dev_{key}"] = min(values)
    return out


def evaluations_below(run_dir: Path, max_depth: int = 3) -> list[Path]:
    """Evaluation folders (``summary.json``) inside a run folder, e.g. ``eval/test/``; checkpoints are skipped."""
    skip = {"checkpoints", "tb", "best", "final", "cache", "figures"}
    found = []
    for path in sorted(run_dir.rglob("summary.json")):
        rel = path.parent.relative_to(run_dir)
        if 0 < len(rel.parts) <= max_depth and not skip & set(rel.parts):
            found.append(path.parent)
    return found


def collect_metrics(run_dir: str | Path, kind: str) -> dict:
    """Flat metrics of a run, read from its files (so a later ``evaluate`` into ``RUN/eval/test`` shows up).

    train: ``best_dev_cer/wer/loss`` (minimum over dev evaluations), ``final_dev_cer/wer/loss``, ``steps``,
    ``train_minutes``, and per evaluation below it ``eval.NAME.wer/cer``; ``test_wer/test_cer`` come from the
    evaluation named ``test*`` (or the only one). evaluate: ``test_wer``, ``test_cer``, ``rtf``, ``n_utterances``.
    baseline: ``NAME.wer/cer`` per part.
    """
    run_dir = Path(run_dir)
    m: dict[str, Any] = {}
    if kind == "evaluate" or (run_dir / "summary.json").is_file():  # also a baseline's part (raw/, zero-shot/)
        s = read_json_or(run_dir / "summary.json") or {}
        for key, name in (("wer", "test_wer"), ("cer", "test_cer"), ("rtf", "rtf"), ("n_utterances", "n_utterances")):
            if s.get(key) is not None:
                m[name] = s[key]
        return m
    if kind == "baseline":
        for sub in evaluations_below(run_dir, max_depth=1):
            s = read_json_or(sub / "summary.json") or {}
            for key in ("wer", "cer"):
                if s.get(key) is not None:
                    m[f"{sub.name}.{key}"] = s[key]
        return m
    summary = read_json_or(run_dir / "train_summary.json") or {}
    m.update(_best_dev(run_dir))
    for key in ("cer", "wer", "loss"):
        value = (summary.get("final_dev") or {}).get(key)
        if value is not None:
            m[f"final_dev_{key}"] = value
    for key in ("steps", "train_minutes"):
        if summary.get(key) is not None:
            m[key] = summary[key]
    evals = evaluations_below(run_dir)
    for sub in evals:
        s = read_json_or(sub / "summary.json") or {}
        name = sub.relative_to(run_dir).as_posix().removeprefix("eval/")
        for key in ("wer", "cer"):
            if s.get(key) is not None:
                m[f"eval.{name}.{key}"] = s[key]
    tests = [e for e in evals if e.name.startswith("test")] or (evals if len(evals) == 1 else [])
    if tests:
        s = read_json_or(tests[0] / "summary.json") or {}
        m.update({f"test_{k}": s[k] for k in ("wer", "cer") if s.get(k) is not None})
    return m


# ---------------------------------------------------------------------------------------------------------- lifecycle
def _invocation() -> dict:
    return {"started": _now(), "started_unix": time.time(), "finished": None, "wall_s": None, "status": "running",
            "argv": list(sys.argv), "cwd": os.getcwd(), "host": socket.gethostname(), "pid": os.getpid()}


def begin(run_dir: str | Path, kind: str, *, config: dict | None = None, options: dict | None = None,
          manifests: dict[str, dict] | None = None, source: dict | None = None, lang: str | None = None,
          device: str | None = None, extra: dict | None = None, resume: bool = False) -> dict:
    """Write ``run.json`` at the start of a run (``resume``: extend the existing record); returns the record."""
    run_dir = Path(run_dir)
    old = read_record(run_dir) if resume else None
    resumed = bool(old and old.get("kind") == kind and old.get("invocations"))
    record = old if resumed else {"schema": SCHEMA, "kind": kind, "name": run_dir.resolve().name, "started": _now(),
                                  "argv": list(sys.argv), "cwd": os.getcwd(), "invocations": []}
    code = code_state()
    record.update({"status": "running", "finished": None, "code": code, "environment": environment(device),
                   "lang": lang, "source": source, "manifests": manifests or {}, **(extra or {})})
    if config is not None:
        record["config"] = config
    if options is not None:
        record["options"] = options
    record.setdefault("metrics", {})
    record["invocations"].append({**_invocation(), "commit": code.get("commit"), "dirty": code.get("dirty")})
    record.pop("error", None)  # a resumed run that had failed: this invocation has not
    write_record(run_dir, record)
    _open_records.add(run_dir.resolve())
    return record


def finish(run_dir: str | Path, status: str = "finished", device: str | None = None, **fields) -> dict | None:
    """Close the current invocation: wall time, status and freshly collected metrics (no-op without a record)."""
    run_dir = Path(run_dir)
    _open_records.discard(run_dir.resolve())
    record = read_record(run_dir)
    if record is None:
        return None
    inv = record["invocations"][-1] if record.get("invocations") else {}
    if inv:
        wall_s = round(time.time() - inv.get("started_unix", time.time()), 3)
        inv.update({"finished": _now(), "wall_s": wall_s, "status": status})
    record["status"] = status
    record["finished"] = _now() if status == "finished" else None
    record["wall_s"] = round(sum(i.get("wall_s") or 0.0 for i in record.get("invocations", [])), 3)
    if device:
        record.setdefault("environment", {})["device"] = device
    record["metrics"] = {**(record.get("metrics") or {}), **collect_metrics(run_dir, record.get("kind", "train"))}
    record.update(fields)
    write_record(run_dir, record)
    return record


def update_record(run_dir: str | Path, **fields) -> dict | None:
    """Set top-level fields of an existing record (e.g. ``reproduces``); no-op without a record."""
    record = read_record(run_dir)
    if record is not None:
        record.update(fields)
        write_record(run_dir, record)
    return record


def refresh_metrics(run_dir: str | Path) -> None:
    """Re-read the metrics of a finished record (called when an evaluation is written below a training run)."""
    record = read_record(run_dir)
    if record is not None:
        record["metrics"] = {**(record.get("metrics") or {}), **collect_metrics(run_dir, record.get("kind", "train"))}
        write_record(run_dir, record)


def record_failure(exc: BaseException) -> list[Path]:
    """Close every record this process began and left open as ``failed`` (``interrupted`` for Ctrl-C), with the
    exception's first line as ``error``; returns their folders.

    The CLI calls it when a command ends with an exception, so that ``run.json`` says how the run ended instead of
    "running" (which ``runs`` can only show as "died" once the process is gone, and only on the same host). It never
    raises: recording a failure must not hide it. A ``SystemExit`` with status 0 is not a failure.
    """
    if isinstance(exc, SystemExit) and not exc.code:
        return []
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    line = (str(exc).strip().splitlines() or [""])[0][:ERROR_CHARS]
    closed = []
    for run_dir in sorted(_open_records):
        try:
            record = read_record(run_dir) or {}
            inv = (record.get("invocations") or [{}])[-1]
            if record.get("status") == "running" and inv.get("pid") == os.getpid():
                finish(run_dir, status=status, error=f"{type(exc).__name__}: {line}" if line else type(exc).__name__)
                closed.append(run_dir)
        except Exception:  # noqa: BLE001 - see the docstring
            pass
        _open_records.discard(run_dir)
    return closed


# ---------------------------------------------------------------------------------------------------------- hooks
def begin_training(run_dir, config: dict, device: str, fingerprints: dict[str, str], train_minutes: float,
                   train_utterances: int, resume: bool = False) -> dict:
    """Hook for :class:`asr_transfer.training.loop.Trainer` once the run folder exists (main process only)."""
    data, model = config.get("data", {}), config.get("model", {})
    manifests = {role: manifest_entry(data[f"{role}_manifest"], fingerprints.get(role))
                 for role in ("train", "dev") if data.get(f"{role}_manifest")}
    return begin(run_dir, "train", config=config, manifests=manifests, lang=model.get("lang"), device=device,
                 source=source_identity(model.get("source"), model.get("init_config")),
                 extra={"config_file": "config.resolved.json",
                        "stages": [s.get("name") for s in config.get("stages", [])],
                        "data": {"train_minutes": round(train_minutes, 3), "train_utterances": train_utterances}},
                 resume=resume)


def begin_evaluation(out_dir, model, manifest, options: dict) -> dict:
    """Hook for :func:`asr_transfer.evaluation.evaluate` when it writes ``out_dir``.

    ``options`` are evaluate's keyword arguments; a model passed as an object (not a path or id) cannot be re-run
    from the record, so the record says so (``reproducible: false``) and keeps the folder it was loaded from.
    """
    reproducible = isinstance(model, (str, Path))
    model_id = str(model) if reproducible else getattr(getattr(model, "loaded", model), "path", None)
    opts = {"model": str(model_id) if model_id else None, "manifest": str(Path(manifest).resolve()), **options}
    if opts.get("lm_dir") is not None:
        opts["lm_dir"] = str(opts["lm_dir"])
    return begin(out_dir, "evaluate", options=opts, manifests={"test": manifest_entry(manifest)},
                 source=source_identity(str(model_id)) if model_id else None, lang=options.get("lang"),
                 extra={"reproducible": reproducible})


def end_evaluation(out_dir, summary: dict) -> None:
    """Hook after ``summary.json`` is written: close the record; refresh a training run it sits in."""
    finish(out_dir, device=summary.get("device"), lang=summary.get("lang"))
    for parent in list(Path(out_dir).resolve().parents)[:3]:
        record = read_record(parent)
        if record and record.get("kind") == "train":
            refresh_metrics(parent)
            break


def record_baseline(out_dir, options: dict, part_names) -> None:
    """Hook at the end of :func:`asr_transfer.evaluation.baseline`: one ``baseline`` record for the folder, and its
    parts (``raw/``, ``zero-shot/``) marked as parts of it (reproduce them through the parent)."""
    out_dir = Path(out_dir)
    opts = {**options, "manifest": str(Path(options["manifest"]).resolve())}
    if opts.get("target_vocab") is not None and not isinstance(opts["target_vocab"], (str, Path)):
        opts["target_vocab"] = None  # an in-memory vocab: rebuilt from the manifest on reproduce, as by default
    parts = [read_record(out_dir / name) or {} for name in part_names]
    starts = [(p.get("invocations") or [{}])[0].get("started_unix") for p in parts]
    started = min((t for t in starts if t), default=time.time())
    record = begin(out_dir, "baseline", options={k: str(v) if isinstance(v, Path) else v for k, v in opts.items()},
                   manifests={"test": manifest_entry(options["manifest"])}, lang=options.get("lang"),
                   source=source_identity(str(options["model"])) if isinstance(options["model"], (str, Path)) else None,
                   extra={"parts": list(part_names), "reproducible": isinstance(options["model"], (str, Path))})
    record["invocations"][-1]["started_unix"] = started
    record["started"] = datetime.fromtimestamp(started, timezone.utc).astimezone().isoformat(timespec="seconds")
    write_record(out_dir, record)
    finish(out_dir, device=(parts[0].get("environment") or {}).get("device") if parts else None)
    for name in part_names:
        part = read_record(out_dir / name)
        if part is not None:
            part.update({"kind": "baseline", "parent": "..", "part": name})
            write_record(out_dir / name, part)
