"""files.py: atomic writes leave the old file or the new one, never half; lenient reads; known sha256 values."""
from __future__ import annotations

import json

import pytest

from asr_transfer.files import (
    atomic_folder_write,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json_or,
    sha256_file,
    sha256_files,
)

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2, "abc"


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writes_create_folders_and_replace_old_files(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    atomic_write_json(target, {"ü": 1})
    assert target.read_text(encoding="utf-8") == '{\n  "ü": 1\n}\n'
    atomic_write_text(target, "new\n")
    assert target.read_text(encoding="utf-8") == "new\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _leftovers(target.parent) == []


def test_a_failed_stream_keeps_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "lm.arpa"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert _leftovers(tmp_path) == []


def test_text_utf8_cannot_hold_fails_before_anything_is_written(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "lone surrogate \ud800")
    assert target.read_text(encoding="utf-8") == "old\n" and _leftovers(tmp_path) == []
    atomic_write_text(target, "name \udcff", errors="surrogateescape")  # a non-UTF-8 file name keeps its byte
    assert target.read_bytes() == b"name \xff"


def test_atomic_open_refuses_appending(tmp_path):
    with pytest.raises(ValueError, match="whole files"):
        with atomic_open(tmp_path / "x", "a"):
            pass


@pytest.mark.parametrize("content", [None, b"\xff\xfe not json", b"[" * 100_000, b"1" * 5000])
def test_read_json_or_falls_back_on_what_python_cannot_read(tmp_path, content):
    path = tmp_path / "marker.json"
    if content is not None:
        path.write_bytes(content)
    assert read_json_or(path, {}) == {}
    assert read_json_or(path) is None


def test_read_json_or_reads_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"hash": "abc"}), encoding="utf-8")
    assert read_json_or(path, {}) == {"hash": "abc"}


def test_sha256_of_known_values(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "bc").write_bytes(b"bc")
    assert sha256_file(tmp_path / "abc") == ABC_SHA256
    assert sha256_files([tmp_path / "a", tmp_path / "bc"]).hexdigest() == ABC_SHA256  # files hash as one stream


def test_folder_write_replaces_a_folder_whole(tmp_path):
    out = tmp_path / "final"

    def write(version):
        def inner(tmp):
            (tmp / "model.safetensors").write_text(version)
        return inner

    atomic_folder_write(out, write("v1"))
    atomic_folder_write(out, write("v2"))
    assert (out / "model.safetensors").read_text() == "v2"
    with pytest.raises(OSError):
        atomic_folder_write(out, lambda tmp: (_ for _ in ()).throw(OSError("disk full")))
    assert (out / "model.safetensors").read_text() == "v2"
    assert _leftovers(tmp_path) == []
