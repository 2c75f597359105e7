"""Output folders: checked before any work is done, so a bad ``--out`` costs a second, not a run.

``evaluate --out``, ``tune-lm --out``, ``transcribe --out`` and ``train.output_dir`` write their results at the end
(or as they go). A path that is a file, a folder that cannot be created or written, or a folder standing where a
result file must go would otherwise surface as an ``OSError`` after the work, and lose it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import UserError


def check_output_dir(path: str | os.PathLike, files: Iterable[str] = (), folders: Iterable[str] = (),
                     key: str = "output folder") -> Path:
    """Create ``path`` if needed and prove it takes new files; ``files``/``folders`` inside it must not be the other
    kind. Raises :class:`UserError` naming the path and ``key`` (the option or config key that chose it)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"is a file, but {key} must be a folder; choose another path", path=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A probe file answers "can I write here?" for every reason at once (permissions, read-only mount, quota).
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write {key} here ({exc.strerror or exc}); choose another path", path=out) from None
    for name in files:
        if (out / name).is_dir():
            raise UserError(f"is a folder, but {key} needs a file there; move it away", path=out / name)
    for name in folders:
        if (out / name).exists() and not (out / name).is_dir():
            raise UserError(f"is a file, but {key} needs a folder there; move it away", path=out / name)
    return out
