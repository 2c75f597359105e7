"""Files that survive a kill: atomic writes of text, JSON and whole folders, lenient JSON reads, content hashes.

Every write goes to a temporary name in the target's folder, is flushed and fsynced, then renamed over the target,
so a reader (or a resumed run) sees the old file or the new one, never half of either. A folder is written the same
way (:func:`atomic_folder_write`), and :func:`recover_folder_write` cleans up after one that was killed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from .errors import PARSE_ERRORS

HASH_BLOCK_BYTES = 1 << 20  # read size when hashing: large files never sit in memory whole


# ------------------------------------------------------------------------------------------------------------ files
@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", errors: str = "strict") -> Iterator[IO]:
    """A file to stream into (``mode`` "w": UTF-8 text, "wb": bytes) that replaces ``path`` only when the ``with``
    block ends without an error; until then readers see the old file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    text = {"encoding": "utf-8", "errors": errors, "newline": "\n"} if mode == "w" else {}
    try:
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder (fsync, rename); returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, errors: str = "strict") -> Path:
    """UTF-8 ``text`` to ``path`` atomically. The text is encoded before anything is written, so text UTF-8 cannot
    hold (``errors="strict"``) fails without touching the old file."""
    return atomic_write_bytes(path, text.encode("utf-8", errors=errors))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2, default=None) -> Path:
    """``data`` as JSON (non-ASCII kept, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False, default=default) + "\n")


def read_json_or(path: str | os.PathLike, fallback: Any = None) -> Any:
    """The JSON in ``path``, or ``fallback`` when it is missing, unreadable or not JSON Python can take.

    For files the tool wrote itself and can do without (markers, records, earlier results): a damaged one is treated
    as absent, not as a reason to stop.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS):
        return fallback


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    return sha256_files([path]).hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike], digest=None):
    """A ``hashlib`` sha256 object updated with each file's bytes in order (pass ``digest`` to continue one)."""
    digest = digest or hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while block := fh.read(HASH_BLOCK_BYTES):
                digest.update(block)
    return digest


# ---------------------------------------------------------------------------------------------------------- folders
def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_folder_write(out_dir: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then move the finished folder into place, replacing ``out_dir`` if it exists.

    Readers never see a half-written model: the rename is atomic on one filesystem.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); the finished folder gets a folder's usual mode
    try:
        write(tmp)
        _fsync_tree(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def recover_folder_write(out_dir: str | os.PathLike) -> None:
    """Clean up after an :func:`atomic_folder_write` to ``out_dir`` that was killed; call it when none is running.

    A kill while writing leaves ``.NAME.tmp-*`` (incomplete: deleted). A kill between setting the old folder aside
    and moving the new one in leaves no ``out_dir`` but a complete ``.NAME.old-*/NAME``: that one is put back, so a
    killed re-save never loses the model that was there. Leftover ``.old-*`` folders are deleted.
    """
    out = Path(out_dir)
    if not out.parent.is_dir():
        return
    olds = sorted(out.parent.glob(f".{out.name}.old-*"))
    if not out.exists():
        for old in olds:
            if (old / out.name).is_dir():
                os.replace(old / out.name, out)
                break
    for p in [*out.parent.glob(f".{out.name}.tmp-*"), *olds]:
        shutil.rmtree(p, ignore_errors=True)
