"""Recognizer: batching, padding/normalisation, trimming, order, precisions."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_transfer import precision
from asr_transfer.audio import wave_stats
from asr_transfer.errors import UserError
from asr_transfer.inference import InferenceOptions, Recognizer, normalize_wave, plan_batches
from asr_transfer.model.load import load_model

# facebook/wav2vec2-base-960h's vocabulary: <pad> (= CTC blank) is 0, "|" is the word delimiter.
BASE960H_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]


def build_tiny_model(out_dir: Path, *, norm: str = "group", attention_mask: bool = False, do_normalize: bool = True,
                     local: bool = False, seed: int = 0) -> Path:
    """Save a random tiny ``Wav2Vec2ForCTC`` + processor (hidden 32, 2 layers, conv 32x7) to ``out_dir``.

    ``local=True`` zeroes the attention output projections, so each output frame depends only on a window of input
    (CNN receptive field + positional conv): chunked inference must then reproduce unchunked inference.
    """
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        vocab_size=len(BASE960H_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm=norm, do_stable_layer_norm=(norm == "layer"), pad_token_id=0, ctc_loss_reduction="mean",
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0,
    )
    model = Wav2Vec2ForCTC(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # sharper random posteriors: argmax varies from frame to frame
        if local:
            for layer in model.wav2vec2.encoder.layers:
                layer.attention.out_proj.weight.zero_()
                layer.attention.out_proj.bias.zero_()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(BASE960H_VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(out_dir / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=do_normalize, return_attention_mask=attention_mask)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def load_tiny(path: Path):
    return load_model(path, device="cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny(build_tiny_model(tmp_path_factory.mktemp("tiny")))


def _waves(seed=0, lengths=(16000, 3200, 8000, 399, 24000, 401)):
    rng = np.random.default_rng(seed)
    t = [np.arange(n) / 16000 for n in lengths]
    return [(0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * x) + 0.05 * rng.standard_normal(len(x)))
            .astype(np.float32) for x in t]


def _reference(loaded, wave):
    """One utterance through the HF processor and model, no batching: the ground truth for batch size 1."""
    inputs = loaded.processor(wave, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        logits = loaded.model(inputs.input_values).logits[0]
    return torch.log_softmax(logits, -1).numpy()


def test_single_wave_matches_processor_and_model(tiny):
    rec = Recognizer(tiny, InferenceOptions(device="cpu"))
    wave = _waves()[0]
    (lp,) = rec.log_probs([wave])
    ref = _reference(tiny, wave)
    assert lp.dtype == np.float32 and lp.shape == ref.shape == (rec.frames_for(len(wave)), len(BASE960H_VOCAB))
    np.testing.assert_allclose(lp, ref, atol=1e-4)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-4)  # a log-softmax


def test_batches_keep_input_order_and_trim_to_real_frames(tiny):
    waves = _waves()
    # A small batch_s forces several batches; the order of outputs must still follow the input.
    rec = Recognizer(tiny, InferenceOptions(device="cpu", batch_s=2.0))
    out = rec.log_probs(waves)
    for w, lp in zip(waves, out):
        assert lp.shape == (rec.frames_for(len(w)), len(rec.vocab))
    assert out[3].shape[0] == 0  # 399 samples: below the 400-sample receptive field
    assert out[5].shape[0] == 1
    # Waves that ran alone in their batch equal the unbatched reference; the batch of one for the longest wave too.
    one_by_one = Recognizer(tiny, InferenceOptions(device="cpu", batch_s=0.01))
    for w, lp in zip(waves, one_by_one.log_probs(waves)):
        if len(w) >= 400:
            np.testing.assert_allclose(lp, _reference(tiny, w), atol=1e-4)
    np.testing.assert_allclose(out[4], _reference(tiny, waves[4]), atol=1e-4)


def test_group_norm_batches_equal_each_clip_run_alone(tiny):
    """Zero padding through a GroupNorm CNN would change shorter clips; the exact batched path must not."""
    from asr_transfer.inference import plan_batches

    waves = _waves(seed=3, lengths=(16000, 15100, 13300, 12900))
    rec = Recognizer(tiny, InferenceOptions(device="cpu", batch_s=10.0))
    assert rec.group_norm and plan_batches([len(w) for w in waves], 160000) == [[0, 1, 2, 3]]  # one padded batch
    for w, lp in zip(waves, rec.log_probs(waves)):
        np.testing.assert_allclose(lp, _reference(tiny, w), atol=1e-4)
    # The HF forward on the same zero-padded batch differs for the shorter clips: the test can fail.
    longest = len(waves[0])
    batch = np.zeros((len(waves), longest), dtype=np.float32)
    for row, w in enumerate(waves):
        batch[row, : len(w)] = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
    with torch.inference_mode():
        naive = torch.log_softmax(tiny.model(torch.from_numpy(batch)).logits, -1).numpy()
    short = waves[-1]
    assert not np.allclose(naive[-1, : rec.frames_for(len(short))], _reference(tiny, short), atol=1e-3)


def test_group_norm_rows_normalise_each_row_over_its_real_frames_only():
    from asr_transfer.model.forward import _group_norm_rows

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 4)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    h = torch.randn(3, 4, 50) * 3 + 1
    with torch.no_grad():
        out = _group_norm_rows(norm, h, [50, 31, 7])
        for b, n in enumerate([50, 31, 7]):
            torch.testing.assert_close(out[b, :, :n], norm(h[b : b + 1, :, :n])[0])
            assert not out[b, :, n:].any()  # padding is zeros, not statistics of the padding
        torch.testing.assert_close(_group_norm_rows(norm, h, [50] * 3), norm(h))  # nothing padded: one call
        half = _group_norm_rows(norm, h.bfloat16(), [50, 31, 7])
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), out, atol=0.05, rtol=0.02)


def test_group_norm_model_gets_no_attention_mask_but_layer_norm_model_does(tiny, tmp_path, monkeypatch):
    seen = []

    def spy(model):
        original = model.forward

        def forward(*args, **kwargs):
            seen.append("attention_mask" in kwargs)
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "forward", forward)

    rec = Recognizer(tiny, InferenceOptions(device="cpu"))
    spy(rec.model)
    out = rec.log_probs(_waves()[:3])
    assert not any(seen)  # group-norm models run the exact padded path, never HF's forward with a mask
    for w, lp in zip(_waves()[:3], out):  # padded to the longest, each equals the clip run alone
        np.testing.assert_allclose(lp, _reference(tiny, w), atol=1e-4)

    layer = load_tiny(build_tiny_model(tmp_path / "layer", norm="layer", attention_mask=True))
    rec = Recognizer(layer, InferenceOptions(device="cpu"))
    seen.clear()
    spy(rec.model)
    waves = _waves()[:3]
    out = rec.log_probs(waves)
    assert seen and all(seen)
    # With a mask, padding does not change a short utterance's output (up to float error).
    for w, lp in zip(waves, out):
        np.testing.assert_allclose(lp, _reference(layer, w), atol=2e-4)


def test_normalisation_uses_real_samples_only():
    w = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    n = normalize_wave(w)
    assert abs(n.mean()) < 1e-6 and abs(n.std() - 1.0) < 1e-3


def test_wave_stats_over_blocks_equal_whole_signal_statistics():
    """Known values first (1..4: mean 2.5, variance 1.25), then a long offset signal cut into uneven blocks."""
    s = wave_stats([np.array([1.0, 2.0]), np.zeros(0), np.array([3.0, 4.0])])
    assert s.mean == pytest.approx(2.5) and s.std == pytest.approx(np.sqrt(1.25 + 1e-7))
    rng = np.random.default_rng(0)
    x = (100.0 + 0.01 * rng.standard_normal(1_000_003)).astype(np.float32)  # large mean, small spread
    s = wave_stats(np.array_split(x, [7, 5000, 5001, 640_000]))
    assert s.mean == pytest.approx(float(x.astype(np.float64).mean()), rel=1e-12)
    assert s.std == pytest.approx(float(np.sqrt(x.astype(np.float64).var() + 1e-7)), rel=1e-9)
    x64 = x.astype(np.float64)  # float32 normalize_wave itself loses ~0.1 here (mean 100, spread 0.01)
    np.testing.assert_allclose(s.apply(x), (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-7), atol=2e-3)
    y = rng.standard_normal(50_000).astype(np.float32)
    np.testing.assert_allclose(wave_stats([y[:123], y[123:]]).apply(y), normalize_wave(y), atol=1e-5)


def test_plan_batches_bounds_padded_samples():
    lengths = [100, 50, 400, 300, 10, 399]
    batches = plan_batches(lengths, max_samples=800)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 800
    assert plan_batches([1000], max_samples=10) == [[0]]  # one long item still runs


def test_frames_for_matches_model_formula(tiny):
    rec = Recognizer(tiny, InferenceOptions(device="cpu"))
    for n in (0, 399, 400, 719, 720, 16000, 480_000):
        expected = int(tiny.model._get_feat_extract_output_lengths(torch.tensor(n)).item()) if n >= 400 else 0
        assert rec.frames_for(n) == expected
    assert rec.samples_per_frame == 320 and rec.frame_stride_s == pytest.approx(0.02)


def test_int8_runs_and_stays_close_to_fp32(tiny):
    waves = _waves()[:3]
    fp32 = Recognizer(tiny, InferenceOptions(device="cpu")).log_probs(waves)
    rec = Recognizer(tiny, InferenceOptions(device="cpu", precision="int8"))
    assert rec.precision == "int8"
    qlinear = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, qlinear) for m in rec.model.modules())
    assert not any(isinstance(m, qlinear) for m in tiny.model.modules())  # the loaded model is untouched
    for a, b in zip(fp32, rec.log_probs(waves)):
        assert a.shape == b.shape
        assert np.mean(a.argmax(-1) == b.argmax(-1)) > 0.8


def test_int8_on_cuda_is_a_user_error():
    with pytest.raises(UserError, match="CPU only"):
        precision.check_precision("int8", "cuda")


def test_bf16_falls_back_to_fp32_with_one_warning_without_cpu_support(tiny, monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(precision, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="bf16"):
        rec = Recognizer(tiny, InferenceOptions(device="cpu", precision="bf16"))
    assert rec.precision == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time is silent
        Recognizer(tiny, InferenceOptions(device="cpu", precision="bf16"))
    wave = _waves()[0]
    np.testing.assert_allclose(rec.log_probs([wave])[0], _reference(tiny, wave), atol=1e-4)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_it(tiny, monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native)
    monkeypatch.setattr(precision, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns: falling back is its job
        rec = Recognizer(tiny, InferenceOptions(device="cpu", precision="auto"))
    assert rec.precision == ("bf16" if native else "fp32")
    assert precision.check_precision("auto", "mps") == "fp32"


def test_transcription_defaults_to_auto_precision_and_evaluation_to_fp32():
    import inspect

    from asr_transfer import evaluation, transcription

    assert inspect.signature(transcription.transcribe).parameters["precision"].default == "auto"
    assert inspect.signature(evaluation.evaluate).parameters["precision"].default == "fp32"


@pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="CPU without native bf16")
def test_bf16_runs_on_capable_cpu(tiny):
    rec = Recognizer(tiny, InferenceOptions(device="cpu", precision="bf16"))
    assert rec.precision == "bf16"
    wave = _waves()[0]
    (lp,) = rec.log_probs([wave])
    ref = _reference(tiny, wave)
    assert lp.dtype == np.float32 and lp.shape == ref.shape and np.isfinite(lp).all()
    assert not np.array_equal(lp, ref)  # really ran in bf16
    # A random tiny model has flat posteriors, so bf16 rounding flips many argmaxes; far above chance (1/32) still.
    assert np.mean(lp.argmax(-1) == ref.argmax(-1)) > 0.3


def test_options_are_validated():
    with pytest.raises(UserError, match="precision"):
        InferenceOptions(precision="fp16")
    with pytest.raises(UserError, match="batch_s"):
        InferenceOptions(batch_s=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_is_a_user_error(tiny):
    with pytest.raises(UserError, match="CUDA"):
        Recognizer(tiny, InferenceOptions(device="cuda"))


def test_non_mono_input_is_a_user_error(tiny):
    rec = Recognizer(tiny, InferenceOptions(device="cpu"))
    with pytest.raises(UserError, match="mono"):
        rec.log_probs([np.zeros((1600, 2), dtype=np.float32)])
