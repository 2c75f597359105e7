"""The machine a run happens on: git commit, library and Debian package versions, hardware, and the install check.

Every run record (``run.json``), every evaluation summary and ``asr-transfer doctor`` take their facts from here.
The install check (``python -m asr_transfer.environment --install-check``, run by ``make install`` after every
install, and the first part of ``asr-transfer doctor``) imports what the tool needs, in the order it needs it, and
turns the first failure into one line that names the versions involved and the fix: a traceback from the dynamic
loader is not something a user can act on.

This module imports nothing heavy at the top: ``doctor`` must work when torch itself is what is broken.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_SOURCE = PACKAGE_DIR.parent / "models" / "en-synth-small"
FIX = "run 'make install' again, or see README \"Dependencies\""
# Versions that decide results, recorded in every run.json and summary.json.
VERSIONED = ("torch", "torchaudio", "transformers", "accelerate", "jiwer", "numpy", "flashlight-text", "kenlm",
             "soundfile", "onnxruntime")
# The Makefile writes the Debian package names it installed here (one per line); without it (a pip install) the two
# packages whose versions change results are asked for.
SYSTEM_DEPS_STAMP = Path(sys.prefix) / ".system-deps"
DEFAULT_DEBIAN = ("espeak-ng", "libsndfile1")
SUBPROCESS_TIMEOUT_S = 5


# ------------------------------------------------------------------------------------------------- code and versions
def git_commit(path: Path | None = None) -> dict:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: this package); ``None`` outside one."""
    where = str(path or PACKAGE_DIR)
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=SUBPROCESS_TIMEOUT_S, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name`` without importing it (``None`` when not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def libsndfile_version() -> str | None:
    try:
        import soundfile

        return soundfile.__libsndfile_version__
    except Exception:  # a broken install is reported, not raised
        return None


def debian_packages(names: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """``{package: version or None}`` from dpkg for the Debian packages the install put there (``{}`` without dpkg)."""
    if names is None:
        try:
            names = tuple(n for n in SYSTEM_DEPS_STAMP.read_text(encoding="utf-8").split() if n)
        except OSError:
            names = ()
        names = tuple(dict.fromkeys(names + DEFAULT_DEBIAN))
    if not shutil.which("dpkg-query"):
        return {}
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n", *names],
                             capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        package, status, version = (line.split("\t") + ["", ""])[:3]
        found[package.split(":")[0]] = version if status.startswith("ii") else None
    return {name: found.get(name) for name in names}


def environment_info() -> dict:
    """Versions that decide results (package, libraries, libsndfile, python, Debian) plus the git commit."""

    versions = {"asr_transfer": __version__, "python": platform.python_version()}
    versions.update({name: distribution_version(name) for name in VERSIONED})
    versions["libsndfile"] = libsndfile_version()
    return {"versions": versions, "debian": debian_packages(), "git": git_commit(), "platform": platform.platform()}


# ---------------------------------------------------------------------------------------------------------- hardware
def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (``None`` without one, e.g. on macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(field):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """E.g. ``Intel(R) Xeon(R) Processor``; the architecture where the model name is unknown."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX); emulated bf16 is slower than
    fp32."""
    flags = cpu_flags()
    if flags:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:  # no /proc/cpuinfo (macOS, containers): ask oneDNN
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def hardware() -> str:
    """CPU model and the cores this process may use, e.g. ``Intel(R) Xeon(R) Processor, 2 cores``."""
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu_model()}, {usable_cores()} cores{gpu}"


# ------------------------------------------------------------------------------------------------------ install check
def _import_torchaudio_extension() -> None:
    # Importing the extension module loads libtorchaudio, where a torch/torchaudio mismatch shows (undefined symbol).
    extension = importlib.import_module("torchaudio._extension")
    if not getattr(extension, "_IS_TORCHAUDIO_EXT_AVAILABLE", False):
        raise ImportError("torchaudio was built without its C++ extension")


def _import_ctc_decoder() -> None:
    from torchaudio.models.decoder import ctc_decoder  # noqa: F401  (needs flashlight-text)


# (what the user sees, the distribution that provides it, how to check it), in the order the tool needs them: torch
# first, since torchaudio is built against one torch release and fails in the dynamic loader beside any other.
CHECKS: tuple[tuple[str, str, Callable[[], object]], ...] = (
    ("torch", "torch", lambda: importlib.import_module("torch")),
    ("torchaudio", "torchaudio", _import_torchaudio_extension),
    ("torchaudio's CTC decoder", "flashlight-text", _import_ctc_decoder),
    ("transformers", "transformers", lambda: importlib.import_module("transformers")),
    ("soundfile", "soundfile", lambda: importlib.import_module("soundfile")),
    ("kenlm", "kenlm", lambda: importlib.import_module("kenlm")),
    ("ONNX Runtime", "onnxruntime", lambda: importlib.import_module("onnxruntime")),
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def install_problem(checks: tuple[tuple[str, str, Callable[[], object]], ...] | None = None) -> str | None:
    """``None`` when everything imports; else one line naming what failed, the versions involved and the fix."""
    for label, distribution, check in CHECKS if checks is None else checks:
        try:
            check()
        except Exception as exc:  # ImportError, OSError from the loader, RuntimeError from a version guard
            torch_v, audio_v = distribution_version("torch"), distribution_version("torchaudio")
            if label == "torchaudio" and torch_v and audio_v:
                return f"torchaudio {audio_v} does not load beside torch {torch_v}: {FIX}"
            version = distribution_version(distribution)
            what = f"{label} ({distribution} {version})" if version else f"{label} ({distribution} not installed)"
            return f"{what} does not import ({_first_line(exc)}): {FIX}"
    return None


def _shipped_model_state() -> str:
    if not SHIPPED_SOURCE.is_dir():
        return "not in this install (a pip install without the repository)"
    try:
        from .model.load import load_model

        loaded = load_model(SHIPPED_SOURCE)
        parameters = sum(p.numel() for p in loaded.model.parameters())
        return f"loads ({parameters / 1e6:.1f}M parameters)"
    except Exception as exc:  # doctor reports, it does not fail on the model
        return f"does not load ({_first_line(exc)})"


def doctor_lines() -> list[str]:
    """What ``asr-transfer doctor`` prints: one ``name: value`` line each, for pasting into bug reports."""

    lines = [f"asr-transfer: {__version__} ({git_commit().get('commit') or 'no git checkout'})",
             f"python: {platform.python_version()} ({sys.executable})",
             f"platform: {platform.platform()}"]
    lines += [f"{name}: {distribution_version(name) or 'not installed'}" for name in VERSIONED]
    lines.append(f"libsndfile: {libsndfile_version() or 'unavailable'}")
    espeak = shutil.which("espeak-ng")
    lines.append(f"espeak-ng: {espeak or 'not on PATH'}")
    for package, version in debian_packages().items():
        lines.append(f"debian {package}: {version or 'not installed'}")
    native = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    bf16 = f"native ({', '.join(native) or 'oneDNN'})" if cpu_supports_bf16() else "emulated (fp32 is faster)"
    lines.append(f"cpu: {cpu_model()}, {usable_cores()} usable cores, bf16 {bf16}")
    try:
        import torch

        lines.append(f"torch threads: {torch.get_num_threads()}")
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            lines.append(f"cuda: {torch.version.cuda}, {len(names)} GPU(s): {', '.join(names)}")
        else:
            lines.append(f"cuda: not available (torch built for CUDA {torch.version.cuda or 'none'}); runs on the CPU")
    except Exception as exc:
        lines.append(f"cuda: unknown ({_first_line(exc)})")
    lines.append(f"models/en-synth-small: {_shipped_model_state()}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check that the install works (one line when it does not).")
    parser.add_argument("--install-check", action="store_true", help="import check only (what make install runs)")
    args = parser.parse_args(argv)
    problem = install_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.install_check:
        print(f"install check: ok (torch {distribution_version('torch')}, torchaudio "
              f"{distribution_version('torchaudio')}, transformers {distribution_version('transformers')}, "
              f"libsndfile {libsndfile_version()})")
        return 0
    print("\n".join(doctor_lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
