"""Make and check the lock files: every Python package of the install at an exact version, with hashes.

``python tools/lock.py compile [--upgrade]`` (what ``make lock`` / ``make lock UPGRADE=1`` run) resolves
``pyproject.toml`` with uv, keeping the versions already locked unless ``--upgrade`` or a changed range moves them:

* ``requirements.lock``: the dependencies, the ``test`` extra and the build requirements (setuptools, wheel), for every
  platform and Python the project supports (``--universal``);
* ``requirements-mlflow.lock``: the same set plus the ``mlflow`` extra, constrained to the main lock's versions.

Each lock's first line records a digest of the parts of ``pyproject.toml`` it was made from (requires-python,
dependencies, optional dependencies, build requirements). ``python tools/lock.py check`` recomputes it and, when
``pyproject.toml`` changed without ``make lock``, prints one line and exits 1. Comments and formatting in
``pyproject.toml`` do not count as a change.

Standard library only: the check runs before the virtual environment exists.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
MAIN_LOCK = ROOT / "requirements.lock"
MLFLOW_LOCK = ROOT / "requirements-mlflow.lock"
DIGEST_PREFIX = "# pyproject-digest: "
LOCKED_PYTHON = "3.11"  # the lowest Python pyproject allows; --universal adds markers for newer ones


def _inputs(pyproject: Path, extras: tuple[str, ...]) -> tuple[list[str], str]:
    """(requirement lines, digest of what pyproject says about dependencies)."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project", {})
    optional = project.get("optional-dependencies", {})
    build = data.get("build-system", {}).get("requires", [])
    relevant = {"requires-python": project.get("requires-python"), "dependencies": project.get("dependencies", []),
                "optional-dependencies": optional, "build-requires": build}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        requirements += optional.get(extra, [])
    return requirements + list(build), digest


def _recorded_digest(lock: Path) -> str | None:
    try:
        first = lock.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        return None
    return first[len(DIGEST_PREFIX):].strip() if first.startswith(DIGEST_PREFIX) else None


def check(pyproject: Path = PYPROJECT, locks: tuple[Path, ...] = (MAIN_LOCK, MLFLOW_LOCK)) -> str | None:
    """``None`` when every lock matches ``pyproject``; else the one-line problem."""
    _, digest = _inputs(pyproject, ())
    for lock in locks:
        recorded = _recorded_digest(lock)
        if recorded is None:
            return f"{lock.name} is missing or has no '{DIGEST_PREFIX.strip()}' line: run 'make lock'"
        if recorded != digest:
            return (f"{pyproject.name} changed since {lock.name} was made (dependencies, extras or build requirements):"
                    f" run 'make lock', then 'make test'")
    return None


def _uv() -> str:
    uv = shutil.which(os.environ.get("UV") or "uv")
    if uv is None:
        raise SystemExit("error: uv not found: 'make lock' installs it into the venv (or set UV=/path/to/uv)")
    return str(Path(uv).resolve())


def _compile(extras: tuple[str, ...], out: Path, constraint: Path | None = None, upgrade: bool = False) -> None:
    requirements, digest = _inputs(PYPROJECT, extras)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pyproject-requirements.in"
        source.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        target = Path(tmp) / out.name
        if out.exists() and not upgrade:  # uv keeps the versions an existing output file pins, where they still fit
            shutil.copyfile(out, target)
        cmd = [_uv(), "pip", "compile", str(source), "--universal", "--python-version", LOCKED_PYTHON,
               "--generate-hashes", "--no-header", "--quiet", "-o", str(target)]
        if upgrade:
            cmd.append("--upgrade")
        if constraint is not None:
            cmd += ["-c", str(constraint)]
        subprocess.run(cmd, check=True, cwd=tmp)
        body = target.read_text(encoding="utf-8").replace(str(source), "pyproject.toml")
    header = (f"{DIGEST_PREFIX}{digest}\n"
              f"# Made by 'make lock' (tools/lock.py: uv pip compile --universal --generate-hashes) from pyproject.toml"
              f" with extras: {', '.join(extras) or 'none'}. Do not edit by hand.\n")
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(header + body, encoding="utf-8")
    os.replace(tmp_out, out)
    print(f"wrote {out.relative_to(ROOT)} ({sum(1 for ln in body.splitlines() if ln[:1].isalnum())} packages)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("compile", "check"))
    parser.add_argument("--upgrade", action="store_true",
                        help="take the newest releases pyproject allows (default: keep the locked versions that fit)")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.action == "check":
        problem = check(args.pyproject)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        return 0
    _compile(("test",), MAIN_LOCK, upgrade=args.upgrade)
    _compile(("test", "mlflow"), MLFLOW_LOCK, constraint=MAIN_LOCK, upgrade=args.upgrade)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
