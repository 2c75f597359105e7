"""Bad-input battery: every case through `validate`, `train`, `evaluate` and `transcribe` (the CLI, in-process).

Each case must end in one of two ways: a one-line ``error:`` naming the file (and manifest line) with exit code 1,
or a documented skip that is counted (train: ``train_summary.json`` "skipped"; evaluate: ``summary.json`` skipped;
transcribe: one error line for the file, the other files still transcribed, exit 1 at the end). Unusual but valid
inputs (8-bit/24-bit/float WAV, 6 channels, 8/48 kHz, mp3/ogg/opus/flac, a relative path) must simply work.
No traceback may reach the user. docs/bad-data.md lists the outcomes this file checks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Import the heavy libraries outside pytest's output capture: their loggers keep the stream they first see.
import transformers  # noqa: F401
from badinput_fixtures import (
    VALID_FORMATS,
    deadline,
    fifo,
    header_only_wav,
    huge_float_wav,
    long_pcm16,
    malicious_pickle_model,
    manifest_line,
    model_with_corrupt_weights,
    model_with_wrong_vocab,
    model_without_weights,
    nonfinite_wav,
    not_audio_file,
    silent_wav,
    tone,
    truncated_wav,
    valid_format_file,
    write_audio,
    write_manifest_lines,
    zero_byte_file,
)
from train_fixtures import TEXTS, make_source_model

import asr_transfer.evaluation  # noqa: F401
import asr_transfer.training.loop  # noqa: F401
from asr_transfer.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOOD_TEXT = "das haus ist groß"


@dataclass(frozen=True)
class Case:
    """One bad input and what each command must do with it.

    Outcomes: ``ok``; ``skip:<reason>`` (train: the skip-counter reason; evaluate/transcribe: skipped and listed);
    ``error:<text>`` (exit 1, one ``error:`` line holding <text> and the file); validate: ``ok`` or ``error:<kind>``
    (exit 1 and a ``manifest:3: <kind>:`` line). ``None``: the command does not apply.
    """

    id: str
    validate: str | None
    train: str | None
    evaluate: str | None
    transcribe: str | None


CASES = [
    # --- broken audio
    Case("truncated-wav", "error:truncated", "skip:audio shorter than manifest", "skip", "ok"),
    Case("header-only-wav", "error:unreadable_audio", "skip:unreadable audio", "skip", "error"),
    Case("zero-bytes", "error:unreadable_audio", "skip:unreadable audio", "skip", "error"),
    Case("not-audio", "error:unreadable_audio", "skip:unreadable audio", "skip", "error"),
    Case("all-silence", "error:silent", "skip:silent audio", "ok", "ok"),
    Case("nan-samples", "error:non_finite", "skip:non-finite samples", "skip", "error"),
    Case("inf-samples", "error:non_finite", "skip:non-finite samples", "skip", "error"),
    # finite samples of 3e38: normalising them overflows to NaN (an empty transcript with exit 0, before issue 20)
    Case("huge-samples", "error:non_finite", "skip:non-finite samples", "skip", "error"),
    Case("huge-samples-1e30-8k", "error:non_finite", "skip:non-finite samples", "skip", "error"),
    # a named pipe: opening it blocks forever (every command hung, before issue 20); _run fails a hang, not waits
    Case("fifo", "error:unreadable_audio", "skip:unreadable audio", "skip", "error"),
    # --- unusual but valid encodings: must load as 16 kHz mono of the right duration
    *[Case(k, "ok", "ok", "ok", "ok") for k in VALID_FORMATS],
    # --- lengths
    Case("one-hour-8k", "ok", "skip:too long", None, None),  # evaluate/transcribe of 1 h: see test_one_hour_*
    Case("clip-20ms", "error:too_short", "skip:too short", "ok", "ok"),
    Case("clip-100ms", "ok", "ok", "ok", "ok"),
    # --- text
    Case("empty-text", "error:empty_text", "skip:empty text", "ok", None),
    Case("whitespace-text", "error:empty_text", "skip:empty text", "ok", None),
    Case("oov-chars", "error:oov_chars", "skip:characters not in vocabulary", "ok", None),
    Case("digits", "ok", "ok", "ok", None),
    Case("too-long-for-ctc", "error:too_long_for_ctc", "skip:transcript too long for CTC", "ok", None),
    # --- manifest lines
    Case("not-json", "error:bad_json", "error::3: not valid JSON", "error::3: not valid JSON", None),
    Case("missing-field", "error:missing_field", "error::3: missing field", "error::3: missing field", None),
    Case(
        "wrong-type", "error:wrong_type", "error::3: 'duration' must be a number", "error::3: 'duration' must be", None
    ),
    Case("duplicate-id", "error:duplicate_id", "error::3: duplicate id", "error::3: duplicate id", None),
    Case("non-utf8", "error:not_utf8", "error::3: not valid UTF-8", "error::3: not valid UTF-8", None),
    Case("missing-file", "error:missing_audio", "skip:unreadable audio", "skip", "error"),
    Case("relative-path", "ok", "ok", "ok", None),
    # --- configs (train only)
    Case("config-unknown-key", None, "error:unknown config key model.bogus", None, None),
    Case("config-wrong-type", None, "error:train.grad_accum must be an integer", None, None),
    Case("config-bad-toml", None, "error:cannot parse config", None, None),
    Case("config-no-such-layer", None, "error:stage 'head'", None, None),
    Case("config-plateau-without-dev", None, "error:until_plateau but there is no dev set", None, None),
    Case("config-utt-longer-than-batch", None, "error:data.max_utt_s (9.0) exceeds data.max_batch_s", None, None),
    # --- model folders
    Case("model-missing-weights", None, "error:no model.safetensors", "error:no model.safetensors", "error"),
    Case(
        "model-corrupt-weights", None, "error:corrupt or truncated safetensors", "error:corrupt or truncated", "error"
    ),
    Case("model-vocab-mismatch", None, "error:CTC head has", "error:CTC head has", "error"),
    Case("model-pickle-only", None, "error:--allow-pickle", "error:--allow-pickle", "error"),
]
CASE_IDS = [c.id for c in CASES]


# ------------------------------------------------------------------------------------------------ materialising
class World:
    """The shared folder: a tiny source model, two good clips, a vocabulary; cases are built on first use."""

    def __init__(self, root: Path):
        from asr_transfer.vocab import build_vocab, save_vocab

        self.root = root
        self.source = make_source_model(root / "src")
        self.good = [write_audio(root / "good" / f"g{i}.wav", tone(0.8, freq_hz=200 + 60 * i)) for i in range(2)]
        self.vocab = root / "vocab.json"
        save_vocab(build_vocab(TEXTS + ["da"], "de"), self.vocab)
        self.built: dict[str, dict] = {}

    def good_lines(self) -> list[bytes]:
        return [
            manifest_line(p, 0.8, GOOD_TEXT if i == 0 else "guten morgen", f"g{i}") for i, p in enumerate(self.good)
        ]

    def case(self, case_id: str) -> dict:
        if case_id not in self.built:
            d = self.root / "cases" / case_id
            d.mkdir(parents=True)
            self.built[case_id] = self._build(case_id, d)
        return self.built[case_id]

    def _build(self, cid: str, d: Path) -> dict:
        """``{"manifest", "audio" (for transcribe), "model", "config" (path), "file" (what the error must name)}``."""
        out: dict = {"model": self.source}
        audio = None
        text, duration = GOOD_TEXT, 1.0
        line = None
        if cid in ("truncated-wav", "header-only-wav", "zero-bytes", "not-audio", "all-silence", "nan-samples",
                   "inf-samples", "huge-samples", "huge-samples-1e30-8k", "fifo"):
            build = {"truncated-wav": truncated_wav, "header-only-wav": header_only_wav, "zero-bytes": zero_byte_file,
                     "not-audio": not_audio_file, "all-silence": silent_wav, "nan-samples": nonfinite_wav,
                     "inf-samples": lambda p: nonfinite_wav(p, float("inf")), "huge-samples": huge_float_wav,
                     "huge-samples-1e30-8k": lambda p: huge_float_wav(p, 1e30, sample_rate=8000),
                     "fifo": fifo}[cid]
            audio = build(d / "bad.wav")
        elif cid in VALID_FORMATS:
            audio = valid_format_file(d, cid)
        elif cid == "one-hour-8k":
            audio, duration = long_pcm16(d / "hour.wav"), 3600.0
        elif cid in ("clip-20ms", "clip-100ms"):
            duration = 0.02 if cid == "clip-20ms" else 0.1
            audio, text = write_audio(d / "short.wav", tone(duration)), "da"
        elif cid in ("empty-text", "whitespace-text", "oov-chars", "digits", "too-long-for-ctc"):
            duration = 0.5 if cid == "too-long-for-ctc" else 1.0
            audio = write_audio(d / "clip.wav", tone(duration))
            text = {"empty-text": "", "whitespace-text": " \t ", "oov-chars": "quiz xylophon", "digits": "3 hunde",
                    "too-long-for-ctc": "das haus ist groß " * 6}[cid]
        elif cid == "relative-path":
            write_audio(d / "wav" / "rel.wav", tone(1.0))
            line = manifest_line("wav/rel.wav", 1.0, GOOD_TEXT, "bad")
        elif cid == "missing-file":
            audio = d / "does-not-exist.wav"
        else:
            audio = write_audio(d / "clip.wav", tone(1.0))
            line = {
                "not-json": b'{"audio_filepath": "clip.wav", "duration": 1.0, "text": "das haus",',
                "missing-field": json.dumps({"audio_filepath": str(audio), "text": GOOD_TEXT, "id": "bad"}).encode(),
                "wrong-type": json.dumps({"audio_filepath": str(audio), "duration": "1.0", "text": GOOD_TEXT}).encode(),
                "duplicate-id": manifest_line(audio, 1.0, GOOD_TEXT, "g0"),
                "non-utf8": b'{"audio_filepath": "clip.wav", "duration": 1.0, "text": "gr\xfc\xdfe"}',
            }.get(cid)
        if line is None:
            line = manifest_line(audio, duration, text, "bad")
        out["manifest"] = write_manifest_lines(d / "train.jsonl", [*self.good_lines(), line])
        out["audio"] = audio
        out["file"] = out["manifest"] if cid in ("not-json", "missing-field", "wrong-type", "duplicate-id",
                                                 "non-utf8") else audio
        config = self.train_config(out["manifest"], d / "run")
        if cid.startswith("config-"):
            out["file"] = d / ("config.toml" if cid == "config-bad-toml" else "config.json")
            if cid == "config-bad-toml":
                out["file"].write_text("[model\nsource = 'x'\n", encoding="utf-8")
                return out
            if cid == "config-unknown-key":
                config["model"]["bogus"] = 1
            elif cid == "config-wrong-type":
                config["train"]["grad_accum"] = "two"
            elif cid == "config-no-such-layer":
                config["stages"][0]["train"] = ["layers.7"]  # the tiny model has 2 layers
            elif cid == "config-plateau-without-dev":
                config["stages"][0] = {"name": "head", "train": ["head"], "lr": 1e-3, "until_plateau": True,
                                       "max_steps": 5}
            elif cid == "config-utt-longer-than-batch":
                config["data"]["max_utt_s"] = 9.0
        if cid.startswith("model-"):
            builder = {
                "model-missing-weights": (model_without_weights, "model.safetensors"),
                "model-corrupt-weights": (model_with_corrupt_weights, "model.safetensors"),
                "model-vocab-mismatch": (model_with_wrong_vocab, "vocab.json"),
                "model-pickle-only": (lambda s, t: malicious_pickle_model(s, t, d / "PWNED"), "pytorch_model.bin"),
            }
            make, name = builder[cid]
            out["model"] = make(self.source, d / "model")
            out["file"] = out["model"] / name
            out["marker"] = d / "PWNED"
            out["audio"] = self.good[0]
            config["model"]["source"] = str(out["model"])
        out["config"] = d / "config.json"
        out["config"].write_text(json.dumps(config), encoding="utf-8")
        return out

    def train_config(self, manifest: Path, run: Path) -> dict:
        return {
            "model": {"source": str(self.source), "lang": "de", "vocab": str(self.vocab)},
            "data": {"train_manifest": str(manifest), "max_batch_s": 4.0, "max_utt_s": 3.0},
            "augment": {"mask_time_prob": 0.0},
            "train": {"output_dir": str(run), "log_every": 1, "eval_every": 100, "save_every": 100},
            "stages": [{"name": "head", "train": ["head"], "lr": 1e-3, "steps": 2}],
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("badinput"))


def _params(command: str):
    return [pytest.param(c, id=c.id) for c in CASES if getattr(c, command) is not None]


# ------------------------------------------------------------------------------------------------ checks
def _run(capfd, argv: list[str]) -> tuple[int, str, str]:
    with deadline(120):  # a command that blocks (on a FIFO, say) fails the case instead of hanging the suite
        rc = main(argv)
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return rc, out, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _check_error(rc: int, err: str, needle: str, file: Path) -> None:
    assert rc == 1, err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    # One line: nothing of the message spills onto the following lines.
    assert err.strip().splitlines()[-1] == lines[0], err
    assert needle in lines[0], lines[0]
    assert str(file) in lines[0], lines[0]


def _check_refused(rc: int, err: str, needle: str, case_id: str, c: dict) -> None:
    """A command refused the case in one error line; a refused pickle never ran (its marker file is absent)."""
    _check_error(rc, err, needle, c["file"])
    if case_id == "model-pickle-only":
        assert not c["marker"].exists(), "the pickle ran"


@pytest.mark.parametrize("case", _params("validate"))
def test_validate(world, capfd, case):
    c = world.case(case.id)
    rc, out, err = _run(capfd, ["validate", str(c["manifest"]), "--lang", "de", "--vocab", str(world.vocab),
                                "--max-problems", "50"])
    if case.validate == "ok":
        assert rc == 0, out
        assert "0 errors" in out
    else:
        kind = case.validate.split(":", 1)[1]
        assert rc == 1, out
        assert f"{c['manifest']}:3: {kind}:" in out, out
        if case.id in ("header-only-wav", "zero-bytes", "not-audio", "nan-samples", "truncated-wav", "huge-samples",
                       "fifo"):
            assert str(c["audio"]) in out  # the message names the audio file too


@pytest.mark.parametrize("case", _params("train"))
def test_train(world, capfd, case):
    c = world.case(case.id)
    cfg = c["file"] if case.id == "config-bad-toml" else c["config"]
    rc, out, err = _run(capfd, ["train", str(cfg), "--no-progress"])
    kind, _, detail = case.train.partition(":")
    if kind == "error":
        _check_refused(rc, err, detail, case.id, c)
        return
    assert rc == 0, err
    summary = json.loads((c["config"].parent / "run" / "train_summary.json").read_text())
    skipped = summary["skipped"]
    if kind == "ok":
        assert skipped["total"] == 0, skipped
        assert summary["train_utterances"] == 3
    else:
        assert skipped["by_reason"].get(detail) == 1, skipped
        assert any(e.startswith("bad") for e in skipped["examples"][detail]), skipped
        assert summary["train_utterances"] + skipped["total"] == 3
    assert summary["steps"] == 2


@pytest.mark.parametrize("case", _params("evaluate"))
def test_evaluate(world, capfd, case):
    c = world.case(case.id)
    out_dir = c["manifest"].parent / "eval"
    rc, out, err = _run(capfd, ["evaluate", "--model", str(c["model"]), "--manifest", str(c["manifest"]), "--lang",
                                "de", "--device", "cpu", "--out", str(out_dir)])
    kind, _, detail = case.evaluate.partition(":")
    if kind == "error":
        _check_refused(rc, err, detail, case.id, c)
        return
    assert rc == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (out_dir / "utterances.jsonl").read_text().splitlines()]
    if kind == "ok":
        assert summary["n_skipped"] == 0 and summary["n_utterances"] == 3
        assert [r["id"] for r in rows] == ["g0", "g1", "bad"]
    else:
        assert [s["id"] for s in summary["skipped"]] == ["bad"] and summary["n_utterances"] == 2
        assert str(c["audio"]) in summary["skipped"][0]["reason"]
        assert [r["id"] for r in rows] == ["g0", "g1"]  # nothing else is lost


@pytest.mark.parametrize("case", _params("transcribe"))
def test_transcribe(world, capfd, case):
    c = world.case(case.id)
    good = world.good[1]
    rc, out, err = _run(
        capfd, ["transcribe", "--model", str(c["model"]), "--device", "cpu", str(good), str(c["audio"])]
    )
    if case.id.startswith("model-"):
        _check_refused(rc, err, case.train.split(":", 1)[1], case.id, c)
        return
    lines = out.strip().splitlines()
    if case.transcribe == "ok":
        assert rc == 0, err
        assert not _error_lines(err)
        assert [line.split("\t")[0] for line in lines] == [str(good), str(c["audio"])]
    else:
        assert rc == 1
        errors = _error_lines(err)
        assert len(errors) == 2, err  # the file's own line, then the "1 of 2 failed" summary
        assert str(c["audio"]) in errors[0] and "failed" in errors[1]
        assert [line.split("\t")[0] for line in lines] == [str(good)]  # the good file is still transcribed


# ------------------------------------------------------------------------------------------------ formats, lengths
@pytest.mark.parametrize("key", list(VALID_FORMATS))
def test_valid_formats_load_as_16k_mono_with_the_right_duration(world, key):
    from asr_transfer.audio import audio_info, load_audio

    c = world.case(key)
    _, _, _, rate, channels = VALID_FORMATS[key]
    info = audio_info(c["audio"])
    assert (info.sample_rate, info.channels) == (rate, channels)
    x = load_audio(c["audio"])
    assert x.dtype == np.float32 and x.ndim == 1 and np.isfinite(x).all()
    assert abs(len(x) / 16000 - 1.0) < 0.01, len(x)
    # The tone survives: energy at ~300 Hz dominates (decoders, resampling and mixing did not garble it).
    spectrum = np.abs(np.fft.rfft(x))
    peak_hz = np.argmax(spectrum) * 16000 / len(x)
    assert 250 < peak_hz < 450, peak_hz


_RSS_SCRIPT = r"""
import sys
from asr_transfer.audio import audio_info, stream_audio

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

path = sys.argv[1]
info = audio_info(path)
base = peak = rss_mb()
samples = blocks = 0
for block in stream_audio(path, block_s=30.0):
    samples += len(block)
    blocks += 1
    peak = max(peak, rss_mb())
print(info.duration_s, info.sample_rate, samples, blocks, peak - base)
"""


def test_one_hour_file_is_streamed_in_bounded_memory(world):
    c = world.case("one-hour-8k")
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(c["audio"])], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    duration_s, rate, samples, blocks, growth_mb = (float(v) for v in res.stdout.split())
    assert duration_s == 3600.0 and rate == 8000
    assert abs(samples - 3600 * 16000) <= 16000  # resampled to 16 kHz, all of it
    assert blocks >= 120
    # The whole file at 16 kHz float32 would be 230 MB; blocks of 30 s are ~2 MB.
    assert growth_mb < 200, growth_mb


def test_twenty_ms_clip_gives_no_frames_and_an_empty_transcript(world):
    from asr_transfer.inference import InferenceOptions, as_recognizer

    rec = as_recognizer(str(world.source), InferenceOptions(device="cpu"))
    from asr_transfer.audio import load_audio

    x = load_audio(world.case("clip-20ms")["audio"])
    assert len(x) == 320 < 400
    assert rec.log_probs([x])[0].shape == (0, len(rec.vocab))


def test_battery_size():
    assert len(CASES) >= 30
    assert len(set(CASE_IDS)) == len(CASE_IDS)
