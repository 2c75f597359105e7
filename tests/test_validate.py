"""validate: a manifest seeded with one problem per line → each found with its line and kind; CLI exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_transfer.audio import frames_for_samples
from asr_transfer.cli import main
from asr_transfer.validate import KINDS, validate_manifest
from asr_transfer.vocab import SPECIALS, WORD_DELIMITER, save_vocab

SR = 16_000
REALSPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "realspeech"


def tone(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def line(audio: str, duration: float, text: str = "hallo welt", **extra) -> str:
    return json.dumps({"audio_filepath": audio, "duration": duration, "text": text, **extra}, ensure_ascii=False)


@pytest.fixture()
def bad_manifest(tmp_path: Path) -> tuple[Path, dict[int, set[str]]]:
    """A manifest whose line N carries the problems in ``expected[N]`` (an empty set: a valid line)."""
    a = tmp_path / "audio"
    a.mkdir()
    for name in ("good1", "good2", "good3"):
        sf.write(a / f"{name}.wav", tone(1.0), SR)
    (a / "zero_bytes.wav").write_bytes(b"")
    (a / "text.wav").write_text("this is not audio\n")
    sf.write(a / "full.wav", tone(1.0), SR)
    data = (a / "full.wav").read_bytes()
    (a / "truncated.wav").write_bytes(data[: len(data) // 2])
    sf.write(a / "zeros.wav", np.zeros(SR, np.float32), SR)
    nan = tone(1.0)
    nan[100:110] = np.nan
    sf.write(a / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(a / "rate8k.wav", tone(1.0, sr=8000), 8000)
    sf.write(a / "stereo.wav", tone(1.0, channels=2), SR)
    sf.write(a / "short.wav", tone(0.3), SR)
    sf.write(a / "clip20ms.wav", tone(0.02), SR)
    sf.write(a / "empty.wav", np.zeros(0, np.float32), SR)

    vocab = {t: i for i, t in enumerate([*SPECIALS, WORD_DELIMITER, *"abcdefghijklmnopqrstuvwxyzäüß"])}  # no "ö"
    save_vocab(vocab, tmp_path / "vocab.json")

    good = str(a / "good1.wav")
    lines: list[tuple[str | bytes, set[str]]] = [
        (line("audio/good1.wav", 1.0, id="g1"), set()),  # relative to the manifest folder: valid
        (line(str(a / "zero_bytes.wav"), 1.0), {"unreadable_audio"}),
        (line(str(a / "text.wav"), 1.0), {"unreadable_audio"}),
        (line(str(a / "truncated.wav"), 1.0), {"truncated"}),
        (line(str(a / "zeros.wav"), 1.0), {"silent"}),
        (line(str(a / "nan.wav"), 1.0), {"non_finite"}),
        (line(str(a / "good2.wav"), 2.5), {"duration_mismatch"}),
        (line(str(a / "rate8k.wav"), 1.0), {"sample_rate_outlier"}),
        (line(str(a / "stereo.wav"), 1.0), {"channels_outlier"}),
        (line(str(a / "good3.wav"), 1.0, text=" !?. "), {"empty_text"}),
        (line(good, 1.0, text="schön", id="oov"), {"oov_chars"}),
        (line(str(a / "short.wav"), 0.3, text="hallo welt wie geht es dir heute abend"), {"too_long_for_ctc"}),
        (line(str(a / "clip20ms.wav"), 0.02, text="a"), {"too_short"}),
        (line(good, 1.0, id="g1"), {"duplicate_id"}),
        ('{"audio_filepath": "x.wav", "duration": 1.0, "text": "a"', {"bad_json"}),
        (json.dumps({"audio_filepath": good, "duration": 1.0}), {"missing_field"}),
        (json.dumps({"audio_filepath": good, "duration": "1.0", "text": "a"}), {"wrong_type"}),
        (b'{"audio_filepath": "x.wav", "duration": 1.0, "text": "caf\xe9"}', {"not_utf8"}),
        (line(str(a / "missing.wav"), 1.0), {"missing_audio"}),
        (line(str(a / "empty.wav"), 0.0), {"zero_length"}),
        (line(good, 0.5, text="ja", offset=0.8, id="slice"), {"past_end"}),
        (line(good, 0.5, offset=0.4, id="slice_ok"), set()),
        (line(good, 1.0, id="english", lang="en"), {"lang_mismatch"}),
    ]
    manifest = tmp_path / "m.jsonl"
    with open(manifest, "wb") as f:
        for raw, _ in lines:
            f.write((raw if isinstance(raw, bytes) else raw.encode("utf-8")) + b"\n")
    return manifest, {i: kinds for i, (_, kinds) in enumerate(lines, start=1)}


def test_every_seeded_problem_is_found_on_its_line(bad_manifest, tmp_path, monkeypatch):
    manifest, expected = bad_manifest
    monkeypatch.chdir(tmp_path.parent)  # relative audio paths must resolve against the manifest, not the cwd
    report = validate_manifest(manifest, vocab=tmp_path / "vocab.json", lang="de")
    found: dict[int, set[str]] = {i: set() for i in expected}
    for p in report.problems:
        found[p.line].add(p.kind)
        assert p.severity == KINDS[p.kind]
    assert found == expected
    assert report.lines == len(expected)
    assert report.utterances == len(expected) - 4  # four lines do not parse
    assert {p.kind for p in report.warnings} == {"sample_rate_outlier", "channels_outlier", "lang_mismatch"}
    by_line = {p.line: p for p in report.problems}
    assert "first on line 1" in by_line[14].message
    assert "'ö'" in by_line[11].message
    assert report.by_kind()["unreadable_audio"] == 2
    assert not report.ok


def test_clean_manifest_passes_and_cli_exit_codes(bad_manifest, tmp_path, capsys):
    manifest, _ = bad_manifest
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(line(f"audio/good{i}.wav", 1.0, text="Hallo Welt!") for i in (1, 2, 3)) + "\n")
    assert main(["validate", str(clean), "--lang", "de", "--vocab", str(tmp_path / "vocab.json")]) == 0
    out = capsys.readouterr().out
    assert "0 errors, 0 warnings" in out and "de-v1" in out

    rc = main(["validate", str(manifest), "--lang", "de", "--vocab", str(tmp_path / "vocab.json"),
               "--max-problems", "3", "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"{manifest}:2: unreadable_audio:" in out
    assert f"{manifest}:5: silent" not in out  # only the first 3 problems are listed
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved[0]["by_kind"]["duplicate_id"] == 1

    # Warnings alone (an 8 kHz file among 16 kHz ones) do not fail.
    warn = tmp_path / "warn.jsonl"
    warn.write_text(line("audio/good1.wav", 1.0) + "\n" + line("audio/good2.wav", 1.0) + "\n"
                    + line("audio/rate8k.wav", 1.0) + "\n")
    assert main(["validate", str(warn)]) == 0
    assert "sample_rate_outlier" in capsys.readouterr().out

    assert main(["validate", str(tmp_path / "nope.jsonl")]) == 1
    assert "manifest not found" in capsys.readouterr().err


def test_ctc_length_check_at_the_boundary(tmp_path):
    """1.0 s → 49 frames (wav2vec2-base stack); "a" * n needs n labels + (n - 1) blanks between repeats."""
    sf.write(tmp_path / "one.wav", tone(1.0), SR)
    assert frames_for_samples(SR) == 49
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join([line("one.wav", 1.0, "a" * 25, id="fits"),  # 25 + 24 = 49 frames: fits exactly
                            line("one.wav", 1.0, "a" * 26, id="over"),  # 26 + 25 = 51
                            line("one.wav", 1.0, "ab" * 25, id="alt"),  # 50 labels, no repeats: 50 > 49
                            line("one.wav", 1.0, "ab" * 24 + "a", id="alt_fits")]) + "\n")  # 49 labels
    report = validate_manifest(m)
    assert [(p.uid, p.kind) for p in report.problems] == [("over", "too_long_for_ctc"), ("alt", "too_long_for_ctc")]
    assert "(26 labels + 25 repeats)" in report.problems[0].message

    # A model whose conv stack has one more stride-2 layer gives 24 frames per second: the model config decides.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(
        {"conv_kernel": [10, 3, 3, 3, 3, 2, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2, 2]}))
    m2 = tmp_path / "m2.jsonl"
    m2.write_text(
        line("one.wav", 1.0, "ab" * 12, id="24") + "\n" + line("one.wav", 1.0, "ab" * 12 + "a", id="25") + "\n"
    )
    report = validate_manifest(m2, model_config=model_dir)
    assert [(p.uid, p.kind) for p in report.problems] == [("25", "too_long_for_ctc")]
    assert report.conv_stride[-1] == 2 and len(report.conv_stride) == 8


def test_no_audio_mode_skips_files(bad_manifest):
    manifest, expected = bad_manifest
    report = validate_manifest(manifest, lang="de", check_audio=False)
    kinds = {p.kind for p in report.problems}
    assert not kinds & {"missing_audio", "unreadable_audio", "silent", "truncated", "sample_rate_outlier"}
    assert {"bad_json", "duplicate_id", "empty_text", "too_long_for_ctc"} <= kinds


@pytest.mark.parametrize("lang", ["de", "en"])
def test_real_speech_manifests(lang, capsys):
    manifest = REALSPEECH / f"{lang}.jsonl"
    if not manifest.is_file():
        pytest.skip("shared/realspeech not present")
    rc = main(["validate", str(manifest), "--lang", lang, "--max-problems", "100"])
    out = capsys.readouterr().out
    print(out)  # shown with -s: what the real data looks like
    report = validate_manifest(manifest, lang=lang)
    # The clips are real, readable and transcribed: no errors; mixed sample rates/channels are warnings only.
    assert rc == 0 and report.ok, [p for p in report.errors]
    assert report.utterances == len(manifest.read_text().splitlines())
    assert "sample_rate_outlier" in report.by_kind()
