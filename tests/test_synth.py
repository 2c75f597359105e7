"""Synthetic corpora: voice sets, text sources (roff/fortune/plain), splits, determinism, the synth command."""
from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from asr_transfer.cli import main
from asr_transfer.corpora import synth
from asr_transfer.corpora.textsource import (
    default_text_files,
    extract_sentences,
    fortune_paragraphs,
    read_paragraphs,
    roff_paragraphs,
    shuffled,
    split_sentences,
)
from asr_transfer.errors import UserError
from asr_transfer.manifest import read_manifest
from asr_transfer.text import LANGUAGES, get_normalizer

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

ROFF = r""".\" a comment
.TH TEST 1 "2024" "Test" "Test"
.de XX
this macro body is not text
..
.SH NAME
test \- ein Programm
.SH BESCHREIBUNG
Das Programm \fBtest\fP liest die Eingabe
und schreibt sie wieder aus. Es ist \(lqsehr\(rq nützlich!
.PP
Der zweite Absatz hat
.B fette
Wörter.
.nf
code = 1; /* not text */
.fi
.TP
.BR \-v ", " \-\-verbose
Mehr ausgeben.
"""

FORTUNE = """Ein Mathematiker trägt sein Fahrrad über den Platz.
Ein Bekannter fragt ihn, ob es kaputt sei.
\t\t-- Anekdote
%
Kurz.
%
Das Leben ist schön, sagt der Bär.
%
"""


def test_voice_sets_are_disjoint_and_installed():
    sets = {name: set(voices) for name, voices in synth.VOICE_SETS.items()}
    assert set(sets) == {"source", "target", "held-out"}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b, sets[a] & sets[b])
    assert all(len(v) >= 10 for v in sets.values())
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    installed = synth.available_variants()
    assert set().union(*sets.values()) <= installed


def test_roff_is_stripped_to_running_text():
    paragraphs = list(roff_paragraphs(ROFF))
    text = " ".join(paragraphs)
    assert "Das Programm test liest die Eingabe und schreibt sie wieder aus." in text
    assert '"sehr"' in text and "fette Wörter." in text
    for junk in ("macro body", "code =", "comment", "\\f", ".TH"):
        assert junk not in text


def test_fortunes_split_entries_and_drop_attributions():
    paragraphs = list(fortune_paragraphs(FORTUNE))
    assert paragraphs[0] == ("Ein Mathematiker trägt sein Fahrrad über den Platz. "
                             "Ein Bekannter fragt ihn, ob es kaputt sei.")
    assert not any("Anekdote" in p for p in paragraphs)
    assert split_sentences(paragraphs[0]) == ["Ein Mathematiker trägt sein Fahrrad über den Platz.",
                                             "Ein Bekannter fragt ihn, ob es kaputt sei."]


def test_split_sentences_needs_a_capital_after_the_stop():
    text = 'Er sagte: "Gut." Dann ging er. und blieb.'
    assert split_sentences(text) == ['Er sagte: "Gut."', "Dann ging er. und blieb."]


def test_extract_sentences_filters_dedupes_and_is_deterministic(tmp_path):
    roff = tmp_path / "test.1.gz"
    roff.write_bytes(gzip.compress(ROFF.encode()))
    fortune = tmp_path / "fortune"
    fortune.write_text(FORTUNE + "Das Leben ist SCHÖN, sagt der Bär!\n%\nSiehe /etc/passwd für die Liste.\n%\n"
                       "Москва ist eine große Stadt.\n", encoding="utf-8")
    plain = tmp_path / "plain.txt"
    plain.write_text("Das sind 3 Wörter hier.\nzu kurz\n", encoding="utf-8")
    sentences = extract_sentences("de", [roff, fortune, plain])
    assert sentences == extract_sentences("de", [roff, fortune, plain])
    normalize = get_normalizer("de")
    assert all(normalize(s) == s for s in sentences)
    assert len(sentences) == len(set(sentences))
    assert sentences.count("das leben ist schön sagt der bär") == 1  # duplicate after normalisation
    assert "das sind drei wörter hier" in sentences
    assert "kurz" not in sentences and "zu kurz" not in sentences  # < 3 words
    assert not any("passwd" in s or "stadt" in s for s in sentences)  # path, other script
    assert all(3 <= len(s.split()) <= 20 for s in sentences)
    assert shuffled(sentences, 1) == shuffled(sentences, 1) != shuffled(sentences, 2) or len(sentences) < 3
    assert list(read_paragraphs(plain)) == ["Das sind 3 Wörter hier.", "zu kurz"]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_default_text_files_exist(lang):
    try:
        files = default_text_files(lang)
    except UserError as exc:
        assert "apt-get install" in str(exc)
        pytest.skip(str(exc))
    assert files == sorted(files) and all(p.is_file() for p in files)


def test_add_noise_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    x = np.sin(np.linspace(0, 2000, 48000)).astype(np.float32) * 0.5
    for colour in ("white", "pink"):
        noisy = synth.add_noise(x, 10.0, colour, np.random.default_rng(1))
        noise = noisy - x
        snr = 10 * np.log10(np.mean(x ** 2) / np.mean(noise ** 2))
        assert abs(snr - 10.0) < 0.2, colour
    pink = synth.pink_noise(1 << 14, rng)
    spectrum = np.abs(np.fft.rfft(pink)) ** 2
    assert spectrum[10:100].mean() > 10 * spectrum[-1000:].mean()  # 1/f: low bands carry more power


def _text_file(tmp_path, n=60):
    words = "haus baum katze hund vogel fisch blume stern mond sonne wasser feuer erde luft".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=4 + i % 4)) + f" nummer {i}." for i in range(n)]
    path = tmp_path / "text.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@needs_espeak
def test_prepare_synth_is_deterministic_and_splits_cleanly(tmp_path):
    text = _text_file(tmp_path)
    kwargs = dict(minutes=0.3, seed=3, text_files=[text], dev_minutes=0.05, test_minutes=0.05, snr_db=20.0)
    a = synth.prepare_synth("de", tmp_path / "a", jobs=2, **kwargs)
    b = synth.prepare_synth("de", tmp_path / "b", jobs=1, **kwargs)
    for split in ("train", "dev", "test"):
        assert a[split].read_text() == b[split].read_text()
        for u in read_manifest(a[split]):
            other = tmp_path / "b" / "wavs" / split / f"{u.uid}.wav"
            assert open(u.audio_filepath, "rb").read() == other.read_bytes()
    record = json.loads(a["corpus"].read_text())
    assert record["noise"]["snr_db"] == 20.0 and record["request"]["seed"] == 3
    other_seed = synth.prepare_synth("de", tmp_path / "c", jobs=2, **{**kwargs, "seed": 4})
    assert other_seed["train"].read_text() != a["train"].read_text()


@needs_espeak
def test_train_cycles_when_text_runs_out_but_eval_does_not(tmp_path):
    text = _text_file(tmp_path, n=8)
    out = synth.prepare_synth("de", tmp_path / "cyc", minutes=0.5, text_files=[text], dev_minutes=0.02,
                              test_minutes=0.02)
    record = json.loads(out["corpus"].read_text())
    assert record["splits"]["train"]["passes"] >= 2
    train = read_manifest(out["train"])
    assert len({u.text for u in train}) < len(train)
    with pytest.raises(UserError, match="ran out"):
        synth.prepare_synth("de", tmp_path / "short", minutes=0.1, text_files=[text], test_minutes=5)


@needs_espeak
def test_synth_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "de"
    assert main(["synth", "--lang", "de", "--minutes", "0.5", "--out", str(out), "--seed", "0"]) == 0
    assert "audio minutes per wall minute" in capsys.readouterr().out
    manifests = {split: read_manifest(out / f"{split}.jsonl") for split in ("train", "dev", "test")}
    held_out = set(synth.VOICE_SETS["held-out"])
    for split, utts in manifests.items():
        assert utts, split
        for u in utts:
            info = sf.info(u.audio_filepath)
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert abs(info.duration - u.duration) < 1e-3
            assert u.lang == "de" and u.id.startswith(f"synth-de-{split}-")
            assert (u.speaker in held_out) == (split != "train")
            if split == "train":
                assert u.speaker in synth.VOICE_SETS["target"]
    assert sum(u.duration for u in manifests["train"]) >= 30.0
    train_texts = {u.text for u in manifests["train"]}
    for split in ("dev", "test"):
        sentences = (out / f"{split}_sentences.txt").read_text(encoding="utf-8").splitlines()
        assert sentences == [u.text for u in manifests[split]]
        assert not train_texts & set(sentences)
    assert not {u.text for u in manifests["dev"]} & {u.text for u in manifests["test"]}
    record = json.loads((out / "corpus.json").read_text())
    assert record["splits"]["train"]["utterances"] == len(manifests["train"])
    assert record["voice_sets"] == {"train": "target", "dev": "held-out", "test": "held-out"}
    before = (out / "train.jsonl").read_bytes()
    # Same request: nothing to do. Different request: a clear error, exit 1.
    assert main(["synth", "--lang", "de", "--minutes", "0.5", "--out", str(out), "--seed", "0"]) == 0
    assert "already built" in capsys.readouterr().out and (out / "train.jsonl").read_bytes() == before
    assert main(["synth", "--lang", "de", "--minutes", "0.5", "--out", str(out), "--seed", "1"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_missing_espeak_is_a_user_error(tmp_path, monkeypatch, capsys):
    text = _text_file(tmp_path)
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    code = main(["synth", "--lang", "de", "--minutes", "0.1", "--out", str(tmp_path / "x"), "--text", str(text)])
    assert code == 1 and "apt-get install espeak-ng" in capsys.readouterr().err


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="voice set"):
        synth.prepare_synth("de", tmp_path / "x", minutes=1, voice_set="nobody")
    with pytest.raises(UserError, match="minutes"):
        synth.prepare_synth("de", tmp_path / "x", minutes=0)
    with pytest.raises(UserError, match="unsupported language"):
        synth.prepare_synth("xx", tmp_path / "x", minutes=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        synth.prepare_synth("de", tmp_path / "full", minutes=0.1, text_files=[_text_file(tmp_path)])
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
