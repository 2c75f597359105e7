"""Atomic, checksummed, pickle-free training checkpoints.

A checkpoint is a folder ``checkpoints/step-N/``::

    model.safetensors      every model weight (safetensors: loading runs no code)
    optimizer.safetensors  AdamW moments per *parameter name* (``<name>::exp_avg`` …), so groups can be rebuilt
    optimizer.json         param-group hyper-parameters (lr, betas, names, …)
    scheduler.json         LR-scheduler state
    rng.safetensors        torch CPU/CUDA RNG states
    rng.json               numpy/python RNG states
    trainer.json           stage, steps, epoch, sampler position, best metric, counters, fingerprints
    checksums.json         sha256 of every file above — written last

Writes go to a hidden temp folder; every file is fsynced, then the folder is renamed into place and the parent
folder fsynced. A folder without a matching ``checksums.json`` is partial and is never loaded.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import PARSE_ERRORS, UserError
from ..files import sha256_file

CHECKSUMS = "checksums.json"
# Test hooks: make a save fail after N files (disk-full simulation) or slow it down (to SIGKILL inside a save).
_FAIL_AFTER_ENV = "ASR_TRANSFER_FAIL_CHECKPOINT_AFTER"
_DELAY_ENV = "ASR_TRANSFER_CHECKPOINT_DELAY_S"


class CheckpointError(UserError):
    """A checkpoint that cannot be written or loaded."""


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(np_rng: np.random.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    legacy = np.random.get_state()
    meta = {
        "numpy_legacy": [legacy[0], legacy[1].tolist(), int(legacy[2]), int(legacy[3]), float(legacy[4])],
        "python": json.loads(json.dumps(random.getstate(), default=list)),
        "generator": np_rng.bit_generator.state if np_rng is not None else None,
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict, np_rng: np.random.Generator | None = None) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if states:
            torch.cuda.set_rng_state_all(states)
    name, keys, pos, has_gauss, cached = meta["numpy_legacy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if np_rng is not None and meta.get("generator") is not None:
        np_rng.bit_generator.state = meta["generator"]


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state keyed by parameter *name* (``param_groups`` must carry ``names``)."""
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        names = group.get("names")
        if names is None:
            raise RuntimeError("optimizer param groups need 'names' to be checkpointed by name")
        for name, p in zip(names, group["params"]):
            for k, v in optimizer.state.get(p, {}).items():
                tensors[f"{name}::{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
        groups.append({k: v for k, v in group.items() if k != "params"})
    return tensors, {"param_groups": groups}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    saved = {tuple(g["names"]): g for g in meta["param_groups"]}
    for group in optimizer.param_groups:
        key = tuple(group["names"])
        if key not in saved:
            raise CheckpointError("optimizer groups differ from the checkpoint (changed stage config?)")
        for k, v in saved[key].items():
            if k != "names":
                group[k] = tuple(v) if isinstance(v, list) and k == "betas" else v
        for name, p in zip(group["names"], group["params"]):
            state = {k.split("::", 1)[1]: v.to(p.device) for k, v in tensors.items() if k.split("::", 1)[0] == name}
            if state:
                optimizer.state[p] = state


def save_checkpoint(root: str | Path, step: int, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer_state: dict, np_rng: np.random.Generator | None = None) -> Path:
    """Write ``root/step-<step>`` atomically; returns its path. On failure the previous checkpoints are untouched."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    fail_after = int(os.environ.get(_FAIL_AFTER_ENV, "-1"))
    delay_s = float(os.environ.get(_DELAY_ENV, "0"))
    written: list[Path] = []

    def emit(name: str, write) -> None:
        if 0 <= fail_after <= len(written):
            raise OSError(28, f"No space left on device (injected after {len(written)} files)")
        path = tmp / name
        write(path)
        _fsync_file(path)
        written.append(path)
        if delay_s:
            time.sleep(delay_s)

    try:
        opt_tensors, opt_meta = optimizer_state(optimizer)
        rng_tensors, rng_meta = rng_state(np_rng)
        state = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        emit("model.safetensors", lambda p: save_file(state, str(p)))
        emit("optimizer.safetensors", lambda p: save_file(opt_tensors or {"_empty": torch.zeros(0)}, str(p)))
        emit("optimizer.json", lambda p: p.write_text(json.dumps(opt_meta)))
        # LambdaLR stores None for function lambdas (rebuilt from the stage config on resume), so this is plain JSON.
        sched = scheduler.state_dict() if scheduler is not None else {}
        emit("scheduler.json", lambda p: p.write_text(json.dumps(sched)))
        emit("rng.safetensors", lambda p: save_file(rng_tensors, str(p)))
        emit("rng.json", lambda p: p.write_text(json.dumps(rng_meta)))
        emit("trainer.json", lambda p: p.write_text(json.dumps(trainer_state, indent=1)))
        sums = {p.name: sha256_file(p) for p in written}
        emit(CHECKSUMS, lambda p: p.write_text(json.dumps(sums, indent=1)))
        _fsync_dir(tmp)
        if final.exists():  # re-save of the same step after a resume: replace it atomically enough
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify(path: str | Path) -> bool:
    """True when every file listed in ``checksums.json`` exists and matches."""
    path = Path(path)
    try:
        sums = json.loads((path / CHECKSUMS).read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS):  # garbage bytes are a UnicodeDecodeError, not a JSONDecodeError
        return False
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        return False
    expected = {"model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng.safetensors",
                "rng.json", "trainer.json"}
    if set(sums) != expected:
        return False
    return all((path / name).is_file() and sha256_file(path / name) == digest for name, digest in sums.items())


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders (by name; not yet verified), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
            steps.append((int(p.name[5:]), p))
    return [p for _, p in sorted(steps)]


def latest_valid(root: str | Path, log=print) -> Path | None:
    """Newest checkpoint whose checksums verify; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(root)):
        if verify(path):
            return path
        log(f"warning: {path}: checksum mismatch or incomplete checkpoint; skipping it")
    return None


def load_checkpoint(path: str | Path) -> dict:
    """All parts of a verified checkpoint; :class:`CheckpointError` if it does not verify."""
    path = Path(path)
    if not verify(path):
        raise CheckpointError("checkpoint is incomplete or its checksums do not match", path=path)
    return {
        "model": load_file(str(path / "model.safetensors")),
        "optimizer": (
            load_file(str(path / "optimizer.safetensors")),
            json.loads((path / "optimizer.json").read_text()),
        ),
        "scheduler": json.loads((path / "scheduler.json").read_text()),
        "rng": (load_file(str(path / "rng.safetensors")), json.loads((path / "rng.json").read_text())),
        "trainer": json.loads((path / "trainer.json").read_text()),
    }


def prune(root: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (and stale temp folders)."""
    root = Path(root)
    for p in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    remove_temp_folders(root)


def remove_temp_folders(root: str | Path) -> None:
    """Delete the temp folders of saves that were killed (never loaded; only the process that made one writes it)."""
    root = Path(root)
    for p in root.glob(".step-*.tmp-*") if root.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)
