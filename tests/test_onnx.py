"""ONNX export and the ONNX Runtime engine: the same log-probabilities and transcripts as torch, found, refused
when stale, and torch-free at transcription time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_inference import build_tiny_model

from asr_transfer.audio import write_wav
from asr_transfer.errors import ModelError, UserError
from asr_transfer.files import _umask
from asr_transfer.inference import InferenceOptions, Recognizer, as_recognizer
from asr_transfer.model.load import load_model
from asr_transfer.onnx_engine import ONNX_META_FILE, OnnxRecognizer, find_export, read_meta
from asr_transfer.onnx_export import _FramewiseCNN, export_onnx

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [399, 400, 1234, 16000, 16000 * 3 + 17, 16000 * 7]  # below, at and above the receptive field


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny group-norm model folder with its export in ``onnx/``."""
    folder = build_tiny_model(tmp_path_factory.mktemp("m") / "model")
    export_onnx(folder)
    return folder


def _waves(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in LENGTHS]


def test_onnx_fp32_gives_torchs_log_probs(exported):
    waves = _waves()
    torch_out = Recognizer(load_model(exported), InferenceOptions(precision="fp32")).log_probs(waves)
    onnx_out = OnnxRecognizer(exported / "onnx", InferenceOptions(precision="fp32")).log_probs(waves)
    for n, a, b in zip(LENGTHS, torch_out, onnx_out):
        assert a.shape == b.shape, n
        np.testing.assert_allclose(b, a, atol=2e-4)
    assert onnx_out[0].shape[0] == 0  # 399 samples: below the receptive field, no frame


def test_layer_norm_models_export_too(tmp_path):
    """Layer-norm models take an attention mask in torch; alone and unpadded they need none."""
    folder = build_tiny_model(tmp_path / "ln", norm="layer", attention_mask=True)
    out = export_onnx(folder, tmp_path / "ln-onnx", int8=False)
    assert read_meta(out)["files"] == {"fp32": "model.onnx"}
    waves = _waves(1)
    ref = Recognizer(load_model(folder), InferenceOptions(precision="fp32")).log_probs(waves)
    got = OnnxRecognizer(out, InferenceOptions(precision="fp32")).log_probs(waves)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, atol=2e-4)
    with pytest.raises(UserError, match="no int8 model"):
        OnnxRecognizer(out, InferenceOptions(precision="int8"))


def test_export_records_what_inference_needs(exported):
    meta = read_meta(exported / "onnx")
    assert set(meta["files"]) == {"fp32", "int8"}
    assert meta["blank_id"] == 0 and len(meta["vocab"]) == 32
    assert meta["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]
    assert meta["check"]["fp32"]["max_abs_log_prob_diff"] < 1e-3
    assert 0.0 <= meta["check"]["int8"]["argmax_agreement"] <= 1.0
    assert meta["source_weights"]["size"] == (exported / "model.safetensors").stat().st_size
    assert oct((exported / "onnx").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_int8_runs_and_differs_from_fp32(exported):
    waves = _waves(2)
    fp32 = OnnxRecognizer(exported / "onnx", InferenceOptions(precision="fp32")).log_probs(waves)
    int8 = OnnxRecognizer(exported / "onnx", InferenceOptions(precision="int8")).log_probs(waves)
    for a, b in zip(fp32, int8):
        assert a.shape == b.shape
    assert any(not np.allclose(a, b, atol=1e-5) for a, b in zip(fp32, int8) if len(a))  # really quantised
    np.testing.assert_allclose(np.exp(int8[-1]).sum(-1), 1.0, atol=1e-4)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_the_framewise_cnn_computes_the_encoders_output(tmp_path, norm):
    """The int8 graph's CNN (convolutions as matrix products over frames, each row scaled) is the model's CNN."""
    import torch

    model = load_model(build_tiny_model(tmp_path / norm, norm=norm)).model
    encoder = model.wav2vec2.feature_extractor
    if norm == "layer":  # cover a convolution bias too (transformers' layer-norm CNNs usually have one)
        with torch.no_grad():
            for layer in encoder.conv_layers:
                layer.conv.bias = torch.nn.Parameter(0.1 * torch.randn(layer.conv.out_channels))
    framewise = _FramewiseCNN(encoder).eval()
    waves = [torch.from_numpy(w)[None] for w in _waves(6)[1:]] + [torch.zeros(1, 5000)]  # silence: no NaN
    with torch.no_grad():
        for x in waves:
            want, got = encoder(x), framewise(x)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    broken = _FramewiseCNN.supports(encoder)
    encoder.conv_layers[2].layer_norm = torch.nn.GroupNorm(4, 32)  # a norm over time: not a per-frame product
    assert broken and not _FramewiseCNN.supports(encoder) and not _FramewiseCNN.supports(None)


def test_the_int8_file_quantises_the_cnn(exported):
    """Only the one-channel first convolution and the positional convolution stay Conv in the int8 graph."""
    import onnx

    def ops(name):
        return [n.op_type for n in onnx.load(str(exported / "onnx" / name)).graph.node]

    assert ops("model.onnx").count("Conv") == 8  # seven CNN layers + the positional convolution
    int8 = ops("model.int8.onnx")
    assert int8.count("Conv") == 2 and int8.count("MatMulInteger") >= 6 + 2 * 6 + 1
    assert read_meta(exported / "onnx")["int8_cnn"] == "framewise matmul"
    assert not (exported / "onnx" / "model.int8-fp32.onnx").exists()


def test_exporting_leaves_the_callers_model_as_it_was(tmp_path):
    loaded = load_model(build_tiny_model(tmp_path / "m"))
    encoder = loaded.model.wav2vec2.feature_extractor
    export_onnx(loaded, tmp_path / "out")
    assert loaded.model.wav2vec2.feature_extractor is encoder


def test_engine_choice(exported, tmp_path):
    assert find_export(exported, "auto") == exported / "onnx"
    assert find_export(exported / "onnx", "onnx") == exported / "onnx"
    assert find_export(exported, "torch") is None
    bare = build_tiny_model(tmp_path / "bare")
    assert find_export(bare, "auto") is None
    with pytest.raises(UserError, match="export-onnx --model"):
        find_export(bare, "onnx")
    assert find_export(exported, "auto", precision="bf16") is None  # the export cannot serve it: torch does
    assert find_export(exported, "auto", device="cuda:0") is None
    auto = as_recognizer(exported, InferenceOptions(engine="auto", device="cpu", precision="auto"))
    assert isinstance(auto, OnnxRecognizer) and auto.precision == "int8"  # auto precision: int8 when exported
    assert isinstance(as_recognizer(exported, InferenceOptions(engine="torch")), Recognizer)
    with pytest.raises(UserError, match="bf16"):
        as_recognizer(exported, InferenceOptions(engine="onnx", precision="bf16"))
    with pytest.raises(UserError, match="runs on the CPU"):
        as_recognizer(exported, InferenceOptions(engine="onnx", device="cuda"))
    with pytest.raises(UserError, match="unknown engine"):
        InferenceOptions(engine="tensorrt")


def test_a_stale_export_is_not_used(tmp_path):
    folder = build_tiny_model(tmp_path / "m")
    export_onnx(folder, int8=False)
    build_tiny_model(folder, seed=1)  # retrained in place: new weights, new mtime
    os.utime(folder / "model.safetensors", ns=(1, 1))
    with pytest.warns(RuntimeWarning, match="re-run `asr-transfer export-onnx"):
        assert find_export(folder, "auto") is None
    with pytest.raises(UserError, match="exported from other weights"):
        find_export(folder, "onnx")


def test_an_export_from_before_the_int8_cnn_asks_to_be_redone(exported, tmp_path, recwarn):
    old = tmp_path / "old"
    old.mkdir()
    meta = read_meta(exported / "onnx")
    for name in meta["files"].values():
        os.link(exported / "onnx" / name, old / name)
    del meta["int8_cnn"]  # what exports made before the framewise CNN wrote
    (old / ONNX_META_FILE).write_text(json.dumps(meta))
    with pytest.warns(RuntimeWarning, match=r"keeps the CNN in fp32 .*re-run `asr-transfer export-onnx --model "):
        OnnxRecognizer(old, InferenceOptions(precision="int8"))
    OnnxRecognizer(old, InferenceOptions(precision="fp32"))  # its fp32 model is as good as a new one's
    OnnxRecognizer(exported / "onnx", InferenceOptions(precision="int8"))
    assert not [w for w in recwarn if "keeps the CNN" in str(w.message)]


def test_broken_exports_are_one_line_errors(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    with pytest.raises(ModelError, match="not an ONNX export"):
        read_meta(folder)
    (folder / ONNX_META_FILE).write_text("{")
    with pytest.raises(ModelError, match="unreadable"):
        read_meta(folder)
    (folder / ONNX_META_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(ModelError, match="re-export"):
        read_meta(folder)


def test_transcripts_match_torch_and_torch_is_not_imported(exported, tmp_path):
    rng = np.random.default_rng(3)
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, seconds in enumerate([1.5, 3.0, 42.0]):  # the last one takes the chunked long-file path
        write_wav(audio / f"c{i}.wav", (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32))
    script = (
        "import json, sys\n"
        "from asr_transfer.transcription import transcribe\n"
        f"out = transcribe([{str(audio)!r}], {str(exported)!r}, engine=sys.argv[1], precision='fp32', "
        "progress=False)\n"
        "print(json.dumps({'texts': [t.text for t in out], 'torch': 'torch' in sys.modules}))\n"
    )
    results = {}
    for engine in ("onnx", "torch"):
        proc = subprocess.run([sys.executable, "-c", script, engine], capture_output=True, text=True, cwd=ROOT,
                              check=True)
        results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["onnx"]["texts"] == results["torch"]["texts"]
    assert any(results["onnx"]["texts"])
    assert results["onnx"]["torch"] is False and results["torch"]["torch"] is True


def test_cli_exports_and_transcribes(tmp_path):
    folder = build_tiny_model(tmp_path / "m")
    wav = tmp_path / "a.wav"
    write_wav(wav, (0.1 * np.random.default_rng(4).standard_normal(32000)).astype(np.float32))
    cli = [sys.executable, "-m", "asr_transfer"]
    proc = subprocess.run(cli + ["export-onnx", "--model", str(folder)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "model.int8.onnx: int8" in proc.stdout and "argmax agreement" in proc.stdout
    proc = subprocess.run(cli + ["transcribe", "--model", str(folder), str(wav), "--engine", "onnx", "--precision",
                                 "int8"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(cli + ["transcribe", "--model", str(folder), str(wav), "--engine", "onnx", "--precision",
                                 "bf16"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "bf16" in proc.stderr


def test_evaluate_scores_an_export(exported, tmp_path):
    from asr_transfer.evaluation import evaluate

    rng = np.random.default_rng(5)
    lines = []
    for i in range(3):
        wav = tmp_path / f"u{i}.wav"
        write_wav(wav, (0.1 * rng.standard_normal(24000)).astype(np.float32))
        lines.append(json.dumps({"audio_filepath": str(wav), "duration": 1.5, "text": "hello world"}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    scores = {e: evaluate(exported, manifest, engine=e, precision="fp32", device="cpu", lang="en")
              for e in ("torch", "onnx")}
    assert scores["onnx"]["engine"] == "onnx" and scores["torch"]["engine"] == "torch"
    assert scores["onnx"]["model_params"] is None
    assert scores["onnx"]["cer"] == scores["torch"]["cer"] and scores["onnx"]["wer"] == scores["torch"]["wer"]


def test_the_export_carries_the_models_record_and_answers_lang(tmp_path):
    from asr_transfer.model.record import RECORD_FILE, ModelRecord
    from asr_transfer.transcription import model_for_lang

    folder = build_tiny_model(tmp_path / "m")
    vocab = json.loads((folder / "vocab.json").read_text())
    record = ModelRecord(lang="en", normalizer="en-v1", source_model="tiny", head_init="random", vocab=vocab)
    (folder / RECORD_FILE).write_text(json.dumps(record.to_dict()))
    out = export_onnx(folder, int8=False)
    assert ModelRecord.read(out / RECORD_FILE).lang == "en"
    recognizer = OnnxRecognizer(out, InferenceOptions(precision="fp32"))
    assert recognizer.loaded.record.source_model == "tiny"
    assert model_for_lang(recognizer, "en") is recognizer
    with pytest.raises(UserError, match="no head for 'de'; it has: en"):
        model_for_lang(recognizer, "de")
