"""Shared benchmark plumbing: machine/package/git facts, load average, markdown tables, the bench corpora, and
appending a dated section to ``bench/RESULTS.md``.

Every benchmark reports *ratios measured side by side in the same process*, because absolute times on a shared
2-core machine move with whatever else runs; the section records the load average before and after so a reader can
judge how quiet the machine was.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "RESULTS.md"
WORK = ROOT / "data" / "bench"
DEFAULT_MODEL = ROOT / "models" / "en-synth-small"
BASE960_CONFIG = ROOT / "tests" / "assets" / "wav2vec2-base-960h" / "config.json"
_PACKAGES = (
    "torch",
    "torchaudio",
    "transformers",
    "accelerate",
    "numpy",
    "jiwer",
    "soundfile",
    "kenlm",
    "flashlight-text",
)


# ------------------------------------------------------------------------------------------------ machine facts
def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, torch threads, RAM, GPU(s) and whether the CPU has native bf16."""
    import torch

    from asr_transfer.environment import cpu_model, cpu_supports_bf16, usable_cores

    cores = usable_cores()
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {"cpu": cpu_model(), "cores": cores, "torch_threads": torch.get_num_threads(), "mem_gb": mem_gb,
            "gpus": gpus, "cpu_bf16": cpu_supports_bf16(), "python": platform.python_version(),
            "platform": platform.platform()}


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("asr-transfer", *_PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> str:
    """``<commit>`` or ``<commit>+dirty`` (tracked files changed) of the checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def loadavg() -> tuple[float, float, float] | None:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:  # pragma: no cover
        return None


def other_heavy_processes(min_cpu_pct: float = 50.0) -> list[str]:
    """Other processes using a lot of CPU right now (``ps``), to note in the results when the machine is not quiet."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=5).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    me = os.getpid()
    busy = []
    for line in out[:10]:
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[0]) != me and float(parts[1]) >= min_cpu_pct:
            busy.append(f"{parts[1]}% {parts[2][:80]}")
    return busy


# ------------------------------------------------------------------------------------------------ reporting
def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(1, digits - 1)}f}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are rounded for reading (the JSON block keeps exact values)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass
class Section:
    """One dated results section; ``start()`` snapshots the machine, ``append()`` writes it."""

    title: str
    argv: Sequence[str] = field(default_factory=lambda: list(sys.argv))
    load_before: tuple | None = None
    busy_before: list[str] = field(default_factory=list)
    t0: float = 0.0
    parts: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    model: str | Path | None = None  # a model folder: its weights' sha256 prefix goes into the header

    def start(self) -> "Section":
        self.load_before = loadavg()
        self.busy_before = other_heavy_processes()
        self.t0 = time.time()
        return self

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")

    def render(self) -> str:
        info = machine_info()
        versions = package_versions()
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        script = Path(self.argv[0]) if self.argv else Path("?")
        try:
            script = script.resolve().relative_to(ROOT)
        except ValueError:
            pass
        command = " ".join([".venv/bin/python", str(script), *map(shlex.quote, self.argv[1:])])
        gpu = ", ".join(info["gpus"]) or "none"
        lines = [
            f"## {now} — {self.title}",
            "",
            f"- command: `{command}`",
            f"- machine: {info['cpu']}, {info['cores']} cores usable, torch threads {info['torch_threads']}, "
            f"{info['mem_gb']} GB RAM, GPU: {gpu}, native CPU bf16: {'yes' if info['cpu_bf16'] else 'no'}",
            f"- load average (1/5/15 min) before: {self.load_before}, after: {loadavg()}; wall "
            f"{time.time() - self.t0:.0f} s",
        ]
        if self.model is not None:
            weights = Path(self.model) / "model.safetensors"
            digest = short_hash(weights) if weights.is_file() else "no model.safetensors"
            lines.append(f"- model: `{self.model}` (model.safetensors sha256 {digest})")
        if self.busy_before:
            lines.append(f"- other busy processes at start: {'; '.join(self.busy_before)}")
        lines += [
            f"- git: {git_state()}; python {info['python']}; "
            + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
            "",
        ]
        body = "\n".join(self.parts)
        raw = ""
        if self.data:
            raw = "\n<details><summary>raw numbers (JSON)</summary>\n\n```json\n" + json.dumps(
                self.data, indent=1, default=str, ensure_ascii=False) + "\n```\n</details>\n"
        return "\n".join(lines) + "\n" + body + raw + "\n"

    def append(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.render()
        if not path.exists():
            text = ("# Benchmark results\n\nAppended by the scripts in `bench/` (see bench/README.md); newest last. "
                    "Ratios are measured side by side in one process; absolute times depend on the machine and its "
                    "load (recorded per section).\n\n") + text
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        print(f"appended to {path}")
        return path


# ------------------------------------------------------------------------------------------------ arguments
def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--full", action="store_true", help="the full sizes (long; see bench/README.md)")
    p.add_argument("--results", default=str(RESULTS), help="markdown file the dated section is appended to")
    p.add_argument("--work-dir", default=str(WORK), help="cache folder for corpora, long files and run folders")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def require_model(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: no model at {path} (config.json missing); pass --model DIR "
                         "(the shipped model is built by `asr-transfer pretrain-source`)")
    return path


# ------------------------------------------------------------------------------------------------ data
def synth_corpus(work_dir: str | Path, lang: str, minutes: float, dev_minutes: float, test_minutes: float,
                 snr_db: float | None = None, seed: int = 0) -> dict[str, Path]:
    """A cached espeak-ng corpus under ``work_dir/synth/`` (built once; same dev/test for any ``minutes``)."""
    from asr_transfer.corpora.synth import prepare_synth

    snr = snr_db if snr_db is not None else "none"
    name = f"{lang}-{minutes:g}m-dev{dev_minutes:g}-test{test_minutes:g}-snr{snr}-s{seed}"
    return prepare_synth(lang, Path(work_dir) / "synth" / name, minutes, seed=seed, snr_db=snr_db,
                         dev_minutes=dev_minutes, test_minutes=test_minutes, jobs=2)


def manifest_prefix(manifest: Path, minutes: float, out: Path) -> Path:
    """The first utterances of ``manifest`` adding up to ``minutes`` of audio (nested subsets for sweeps)."""
    from asr_transfer.manifest import read_manifest, write_manifest

    utts, total = [], 0.0
    for u in read_manifest(manifest):
        if total >= minutes * 60:
            break
        utts.append(u)
        total += u.duration
    return write_manifest(out, utts, relative=False)


def base_size_model(work_dir: str | Path, config: str | Path = BASE960_CONFIG, seed: int = 0) -> Path:
    """A model folder with base-960h's architecture (94.4M parameters) and random weights, built once under
    ``work_dir/models/``: what a user brings, for speed rows (its transcripts are noise, its WER means nothing).

    It has base-960h's vocabulary and processor, so both our loader and ``transformers.pipeline`` read it as is.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from asr_transfer.model.load import save_model
    from asr_transfer.model.record import ModelRecord, make_processor
    from asr_transfer.vocab import english_source_vocab

    out = Path(work_dir) / "models" / f"base960h-random-s{seed}"
    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(Wav2Vec2Config.from_json_file(str(config))).eval()
    vocab = english_source_vocab()
    record = ModelRecord(lang="en", normalizer="en-v1", source_model="random (base-960h config)", head_init="random",
                         vocab=vocab)
    save_model(out, model, make_processor(vocab, model.config.feat_extract_norm), record,
               card={"note": "random weights in base-960h's architecture, for speed benchmarks only"})
    return out


def short_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def manifest_minutes(manifest: Path) -> float:
    from asr_transfer.manifest import read_manifest

    return sum(u.duration for u in read_manifest(manifest)) / 60


class Stopwatch:
    """Accumulating wall-clock timer that can be paused (evaluation time is kept out of training time)."""

    def __init__(self):
        self.total = 0.0
        self._t: float | None = None

    def start(self) -> "Stopwatch":
        if self._t is None:
            self._t = time.perf_counter()
        return self

    def stop(self) -> float:
        if self._t is not None:
            self.total += time.perf_counter() - self._t
            self._t = None
        return self.total

    @property
    def elapsed(self) -> float:
        return self.total + (time.perf_counter() - self._t if self._t is not None else 0.0)
