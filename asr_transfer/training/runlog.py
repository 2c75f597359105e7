"""Run-folder logging: ``metrics.jsonl`` (one JSON object per event), TensorBoard, optional MLflow, ``stages.json``."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..errors import PARSE_ERRORS
from ..files import atomic_write_json


class RunLog:
    """Appends metrics to ``metrics.jsonl`` and mirrors scalars to TensorBoard (and MLflow when asked)."""

    def __init__(
        self, run_dir: str | Path, enabled: bool = True, tracking: str = "tensorboard", config: dict | None = None
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._mlflow = None
        self.t0 = time.time()
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        except Exception:  # pragma: no cover - tensorboard missing; metrics.jsonl still has everything
            self._tb = None
        if tracking == "mlflow":
            try:
                import mlflow
            except ImportError:
                from ..errors import UserError

                raise UserError("train.tracking = mlflow needs the mlflow package: pip install 'asr-transfer[mlflow]'")
            mlflow.set_tracking_uri(f"file:{(self.run_dir.parent / 'mlruns').resolve()}")
            mlflow.set_experiment("asr-transfer")
            self._mlflow = mlflow.start_run(run_name=self.run_dir.name)
            if config:
                mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config).items()})

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time_s": round(time.time() - self.t0, 3), **record}
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        step = int(record.get("step", 0))
        split = record.get("split", "train")
        for k, v in record.items():
            if (
                k in ("step", "time_s")
                or not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not math.isfinite(v)
            ):
                continue
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{k}", v, step)
            if self._mlflow is not None:
                import mlflow

                mlflow.log_metric(f"{split}.{k}", v, step=step)

    def write_json(self, name: str, data: Any) -> None:
        if self.enabled:
            atomic_write_json(self.run_dir / name, data)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            import mlflow

            mlflow.end_run()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a line that a kill cut short is left out."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except PARSE_ERRORS:  # the last line of a run killed mid-write
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
