"""Data-parallel training in several local processes: ``train.processes = N`` runs ``asr-transfer train`` under
``torch.distributed.run --standalone`` (DDP through Accelerate; gloo on CPU), so a recipe or a plain ``train`` call
uses every core of a small machine without the user typing ``torchrun``.

Why processes and not threads: the demo's steps are too small for torch's intra-op threads to keep two cores busy,
and two threads on two cores that are busy with other work stall at every parallel region. Each process here gets
``train.num_threads`` threads (default: this process's torch threads divided among them), and DDP all-reduces the
gradients of the trainable part, so the global batch and the schedule stay those of one process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ..config import save_config
from ..errors import UserError
from ..provenance import read_record

CONFIG_FILE = "launch-config.json"  # the run's config as the worker processes read it


def is_worker() -> bool:
    """True inside a process started by a distributed launcher (it sets WORLD_SIZE); such a process trains."""
    return "WORLD_SIZE" in os.environ


def threads_per_process(config) -> int:
    """``train.num_threads``, else this process's torch threads shared among the workers (at least 1)."""
    return config.train.num_threads or max(1, torch.get_num_threads() // config.train.processes)


def launch(config, resume: bool = False, allow_inexact_resume: bool = False, progress: bool = True,
           stop_after_steps: int | None = None, time_budget_s: float | None = None) -> Path:
    """Run ``config`` in ``config.train.processes`` local worker processes; returns what :func:`train` returns.

    The workers' messages (rank 0's progress bar, errors) go to this process's terminal as they happen.
    """
    run_dir = Path(config.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = save_config(config, run_dir / CONFIG_FILE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={config.train.processes}", "-m", "asr_transfer", "train", str(config_path)]
    cmd += ["--resume"] if resume else []
    cmd += ["--allow-inexact-resume"] if allow_inexact_resume else []
    cmd += [] if progress else ["--no-progress"]
    cmd += ["--stop-after-steps", str(stop_after_steps)] if stop_after_steps else []
    cmd += ["--time-budget-min", repr(time_budget_s / 60)] if time_budget_s else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(config))}
    # DDP's reducer warns from every rank that find_unused_parameters (needed when LayerDrop skips a layer) found
    # none; that C++ warning is all this level hides.
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)  # stdout: the worker's "final model:" line
    if done.returncode != 0:
        raise UserError(f"{config.train.processes} training processes failed (exit {done.returncode}); the first "
                        "error above names the cause. Resume with the same command once it is fixed", path=run_dir)
    record = read_record(run_dir) or {}
    return run_dir / ("checkpoints" if record.get("status") == "paused" else "final")
