"""The install check, ``asr-transfer doctor``, the lock's consistency check and the environment facts runs record."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr_transfer import environment

ROOT = Path(__file__).resolve().parent.parent
LOCK_TOOL = ROOT / "tools" / "lock.py"
BROKEN_PAIR = ("error: torchaudio 2.11.1 does not load beside torch {torch}: run 'make install' again, "
               "or see README \"Dependencies\"")


def _fake_broken_torchaudio(root: Path) -> Path:
    """A site folder that shadows torchaudio with 2.11.1 whose extension fails in the loader, as on a fresh clone
    that resolved the unpinned patch release."""
    site = root / "site"
    package = site / "torchaudio"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_extension.py").write_text(
        "raise OSError('/venv/torchaudio/lib/libtorchaudio.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace')\n")
    dist = site / "torchaudio-2.11.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\n")
    return site


def _run(args: list[str], env_extra: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("command", [["-m", "asr_transfer.environment", "--install-check"],
                                     ["-m", "asr_transfer", "doctor"]])
def test_a_broken_torch_torchaudio_pair_is_one_line_naming_both_versions(tmp_path, command):
    site = _fake_broken_torchaudio(tmp_path)
    result = _run(command, {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == BROKEN_PAIR.format(torch=environment.distribution_version("torch"))
    assert "Traceback" not in result.stdout + result.stderr


def test_other_import_failures_name_the_package_version_and_the_fix(monkeypatch):
    def missing():
        raise ImportError("No module named 'kenlm'")

    monkeypatch.setattr(environment, "distribution_version", lambda name: None if name == "kenlm" else "1.0")
    problem = environment.install_problem((("kenlm", "kenlm", missing),))
    assert problem == ("kenlm (kenlm not installed) does not import (ImportError: No module named 'kenlm'): "
                       "run 'make install' again, or see README \"Dependencies\"")
    assert environment.install_problem((("numpy", "numpy", lambda: None),)) is None


def test_the_real_install_passes_the_check():
    assert environment.install_problem() is None


@pytest.mark.slow
def test_doctor_prints_versions_hardware_and_the_shipped_model():
    result = _run(["-m", "asr_transfer", "doctor"], {})
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert fields["torch"] == environment.distribution_version("torch")
    assert fields["torchaudio"] == environment.distribution_version("torchaudio")
    assert fields["libsndfile"][:1].isdigit()
    assert "bf16" in fields["cpu"] and fields["cuda"]
    assert fields["models/en-synth-small"].startswith("loads (5.")
    if environment.debian_packages(("espeak-ng",)).get("espeak-ng"):
        assert fields["debian espeak-ng"] not in ("", "not installed")


def test_environment_info_records_debian_packages_and_library_versions():
    info = environment.environment_info()
    assert info["versions"]["torch"] == environment.distribution_version("torch")
    assert "espeak-ng" in info["debian"] and "libsndfile1" in info["debian"]
    assert set(info["git"]) == {"commit", "dirty"}


# -------------------------------------------------------------------------------------------------------- the lock
def _lock_check(pyproject: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCK_TOOL), "check", "--pyproject", str(pyproject)],
                          capture_output=True, text=True, timeout=60)


def test_the_committed_locks_match_pyproject():
    result = _lock_check(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("edit", [
    ('"jiwer>=3.0"', '"jiwer>=3.1"'),                               # a range changed
    ('"tqdm>=4.66",', '"tqdm>=4.66",\n  "rich>=13",'),             # a dependency added
    ('"pytest>=8"', '"pytest>=8.1"'),                               # a test extra changed
    ('requires = ["setuptools>=68", "wheel"]', 'requires = ["setuptools>=69", "wheel"]'),  # build requirements
])
def test_editing_dependencies_without_make_lock_fails_in_one_line(tmp_path, edit):
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert edit[0] in text
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace(edit[0], edit[1]), encoding="utf-8")
    result = _lock_check(changed)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run 'make lock'" in lines[0], result.stderr


def test_comments_and_formatting_are_not_a_dependency_change(tmp_path):
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    changed = tmp_path / "pyproject.toml"
    changed.write_text("# a comment\n" + text.replace('description = "', 'description  =  "'), encoding="utf-8")
    assert _lock_check(changed).returncode == 0


def test_every_locked_requirement_is_pinned_exactly_with_hashes():
    lines = (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
    requirements = [ln for ln in lines if ln[:1].isalnum()]
    assert requirements, "empty lock"
    for line in requirements:
        spec = line.split(";")[0].split("\\")[0].strip()
        assert "==" in spec and not any(op in spec for op in (">", "<", "~", "*")), line
    pins = {ln.split("==")[0]: ln.split("==")[1].split()[0] for ln in requirements}
    assert pins["torch"] == "2.11.0" and pins["torchaudio"] == "2.11.0"
    assert sum(ln.strip().startswith("--hash=sha256:") for ln in lines) >= len(requirements)
