"""Recordings in: name.wav + name.txt pairs, a TSV of paths, and their one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr_transfer.cli import main
from asr_transfer.errors import UserError
from asr_transfer.recordings import find_recordings

SOURCE_MODEL = Path(__file__).resolve().parents[1] / "models" / "en-synth-small"


def test_inputs_pairs_tsv_and_one_line_errors(tmp_path):
    from asr_transfer.audio import write_wav

    folder = tmp_path / "rec"
    write_wav(folder / "a.wav", np.zeros(16000, np.float32))
    (folder / "a.txt").write_text("Hallo Welt.", encoding="utf-8")
    assert [r.name for r in find_recordings(folder)] == ["a"]
    write_wav(folder / "b.wav", np.zeros(16000, np.float32))
    with pytest.raises(UserError, match=r"b\.wav: audio without text: expected b\.txt"):
        find_recordings(folder)
    (folder / "b.wav").unlink()
    (folder / "c.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match=r"c\.txt: text without audio"):
        find_recordings(folder)
    tsv = tmp_path / "list.tsv"
    tsv.write_text("audio\ttext\nrec/a.wav\trec/missing.txt\n", encoding="utf-8")
    assert find_recordings(tsv)[0].text == str(tmp_path / "rec" / "missing.txt")
    tsv.write_text("rec/a.wav\trec/a.txt\nother/a.wav\tother/a.txt\n", encoding="utf-8")
    with pytest.raises(UserError, match="two recordings are named 'a'"):
        find_recordings(tsv)
    tsv.write_text("rec/a.wav\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"list\.tsv:1: expected 2 tab-separated columns"):
        find_recordings(tsv)
    tsv.write_text("audio\ttext\nrec/a.wav\trec/missing.txt\n", encoding="utf-8")
    rc_out = tmp_path / "out"
    assert main(["align", str(tsv), "--model", str(SOURCE_MODEL), "--lang", "de", "--out", str(rc_out)]) == 1
