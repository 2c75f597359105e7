"""The shipped English source model (models/en-synth-small) and the pretrain-source pipeline that builds it."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import BASE960H_CONFIG, TINY_STABLE_CONFIG

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "en-synth-small"
REQUIRED = ("config.json", "model.safetensors", "vocab.json", "preprocessor_config.json", "tokenizer_config.json",
            "asr_transfer.json", "README.md")

needs_model = pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(),
                                 reason="models/en-synth-small not built yet (asr-transfer pretrain-source)")


@pytest.fixture(scope="module")
def espeak_clip(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    raw = tmp_path_factory.mktemp("clip") / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en", "-w", str(raw), "the quick brown fox jumps over the lazy dog"], check=True)
    from asr_transfer.audio import SAMPLE_RATE, load_audio, write_wav

    out = raw.with_name("clip16k.wav")
    write_wav(out, load_audio(str(raw)), SAMPLE_RATE)  # espeak writes 22.05 kHz; the pipeline gets 16 kHz audio
    return out


# ---------------------------------------------------------------------------------------------- the shipped model
@needs_model
def test_folder_has_required_files_and_fits_25mb():
    missing = [n for n in REQUIRED if not (MODEL_DIR / n).is_file()]
    assert not missing
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 25_000_000, f"{size / 1e6:.1f} MB"


@needs_model
def test_loads_with_transformers_and_has_base960h_vocab_layout():
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    from asr_transfer.vocab import english_source_vocab

    model = Wav2Vec2ForCTC.from_pretrained(str(MODEL_DIR))
    processor = Wav2Vec2Processor.from_pretrained(str(MODEL_DIR))
    assert json.loads((MODEL_DIR / "vocab.json").read_text()) == english_source_vocab()
    assert model.lm_head.out_features == len(english_source_vocab()) == model.config.vocab_size
    assert model.config.pad_token_id == 0
    assert sum(p.numel() for p in model.parameters()) <= 6_250_000
    assert processor.feature_extractor.sampling_rate == 16000
    record = json.loads((MODEL_DIR / "asr_transfer.json").read_text())
    assert record["lang"] == "en" and record["head_init"] == "scratch"


@needs_model
def test_pipeline_text_equals_asr_transfer_greedy(espeak_clip):
    from transformers import pipeline

    from asr_transfer.audio import load_audio
    from asr_transfer.transcription import transcribe

    asr = pipeline("automatic-speech-recognition", model=str(MODEL_DIR), device=-1)
    wave = load_audio(str(espeak_clip))
    piped = asr({"raw": wave, "sampling_rate": 16000})["text"]
    ours = transcribe([str(espeak_clip)], str(MODEL_DIR), decoder="greedy", device="cpu")[0].text
    assert piped.strip().lower() == ours.strip().lower()
    assert piped.strip(), "the model should recognise something in a clear espeak-ng sentence"


@needs_model
def test_card_documents_training():
    card = (MODEL_DIR / "README.md").read_text(encoding="utf-8")
    for needle in (
        "wall time",
        "cores",
        "parameters",
        "synthetic test",
        "real English",
        "asr-transfer pretrain-source",
    ):
        assert needle in card, needle


def test_dev_trend_compares_the_best_before_and_after_the_final_runs_last_quarter():
    from asr_transfer.training.source_card import dev_trend, dev_trend_text

    def run(cers, every=500):
        return {"dev_curve": [(i * every, c, 1.0, 1.0, 0.5) for i, c in enumerate(cers)]}

    # the shipped model's final run, every 2,000 steps: noisy at the end (12.2, 12.7, 12.5) yet still falling
    shipped = run([0.989, 0.468, 0.231, 0.196, 0.168, 0.155, 0.141, 0.137, 0.129, 0.122, 0.125], every=2000)
    assert dev_trend([run([0.9, 0.8]), shipped]) == (True, 0.137, 0.122, 15000)
    assert "still falling" in dev_trend_text([shipped]) and "13.7 %" in dev_trend_text([shipped])
    flat = run([0.9, 0.5, 0.40, 0.41, 0.40, 0.42, 0.41, 0.41])  # the best is behind the last quarter
    assert dev_trend([flat])[0] is False and "flattened" in dev_trend_text([flat])
    assert dev_trend([run([0.9, 0.6, 0.5, 0.4, 0.398])])[0] is False  # a 0.2-point fall is noise, not a trend
    assert dev_trend([run([0.9, 0.8, 0.7]), run([0.5, 0.5])]) is None  # only the final run counts
    assert "too few" in dev_trend_text([run([0.5, 0.5])])


# ---------------------------------------------------------------------------------------------- the pipeline
def _tiny_setup(tmp_path: Path) -> Path:
    config = json.loads(TINY_STABLE_CONFIG.read_text())
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(config))
    toml = tmp_path / "pretrain.toml"
    toml.write_text(f"""
[model]
init_config = "{arch}"
lang = "en"
head_init = "keep"
[data]
max_batch_s = 8.0
max_utt_s = 8.0
[train]
eval_every = 2
save_every = 2
num_threads = 1
[[stages]]
name = "short"
train = ["feature_encoder", "feature_projection", "pos_conv", "layers", "head"]
lr = 1e-3
steps = 2
warmup_steps = 1
schedule = "constant"
[[stages]]
name = "full"
train = ["feature_encoder", "feature_projection", "pos_conv", "layers", "head"]
lr = 1e-3
steps = 3
warmup_steps = 1
""")
    return toml


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_pretrain_smoke_builds_exports_and_resumes(tmp_path):
    from transformers import Wav2Vec2ForCTC

    from asr_transfer.training.pretrain import PretrainOptions, pretrain_source
    from asr_transfer.vocab import english_source_vocab

    options = PretrainOptions(
        config=str(_tiny_setup(tmp_path)),
        out=str(tmp_path / "model"),
        corpus_dir=str(tmp_path / "corpus"),
        runs_dir=str(tmp_path / "runs"),
        minutes=0.3,
        dev_minutes=0.05,
        test_minutes=0.05,
        snr_db=20.0,
        jobs=2,
        curriculum_max_utt_s=4.0,
        realspeech=None,
        command="asr-transfer pretrain-source --smoke",
    )
    result = pretrain_source(options, progress=False)
    assert result.out == tmp_path / "model"
    assert all((result.out / n).is_file() for n in REQUIRED)
    assert json.loads((result.out / "vocab.json").read_text()) == english_source_vocab()
    short = json.loads((tmp_path / "runs" / "short" / "config.resolved.json").read_text())
    full = json.loads((tmp_path / "runs" / "full" / "config.resolved.json").read_text())
    # the curriculum run: random init, short utterances only; the main run continues from it with the head kept
    assert (
        short["model"]["init_config"]
        and short["data"]["max_utt_s"] == 4.0
        and [s["name"] for s in short["stages"]] == ["short"]
    )
    assert full["model"]["init_config"] is None and full["model"]["source"].endswith("short/final")
    assert full["data"]["max_utt_s"] == 8.0 and [s["name"] for s in full["stages"]] == ["full"]
    assert json.loads((tmp_path / "runs" / "short" / "train_summary.json").read_text())["steps"] == 2
    assert json.loads((tmp_path / "runs" / "full" / "train_summary.json").read_text())["steps"] == 3
    assert json.loads((result.out / "asr_transfer.json").read_text())["extra"]["pretrain"]["steps"] == 5
    assert set(result.evaluations) == {"synth_dev", "synth_test"}
    model = Wav2Vec2ForCTC.from_pretrained(str(result.out))
    assert model.config.do_stable_layer_norm and model.lm_head.out_features == 32
    card = (result.out / "README.md").read_text()
    assert "wall time" in card and "asr-transfer pretrain-source --smoke" in card
    assert "in 2 runs" in card and "| short | " in card and "| full | " in card and "wall min" in card
    from asr_transfer.environment import hardware

    run_row = next(line for line in card.splitlines() if line.startswith("| short | "))
    assert run_row.endswith(f"| {hardware()} |")  # each run's machine, from the wall log (runs may train elsewhere)
    assert "## What each run bought" in card and "| precision |" in card
    assert "Per held-out voice" in card and "| share of all character errors |" in card  # the test set's voices
    assert "a layer-normalised CNN" in card  # the plateau notes follow the model's config (TINY_STABLE: layer norm)
    # The CNN trained: its weights differ from the seed's random init.
    from transformers import Wav2Vec2Config

    torch.manual_seed(0)
    init = Wav2Vec2ForCTC(Wav2Vec2Config(**json.loads(TINY_STABLE_CONFIG.read_text())))
    w0 = init.wav2vec2.feature_extractor.conv_layers[0].conv.weight
    assert not torch.allclose(w0, model.wav2vec2.feature_extractor.conv_layers[0].conv.weight)
    # resume on finished runs: nothing is retrained, the export is rebuilt from the same best checkpoint
    before = (tmp_path / "runs" / "full" / "metrics.jsonl").read_text()
    again = pretrain_source(options, resume=True, progress=False)
    assert (tmp_path / "runs" / "full" / "metrics.jsonl").read_text() == before
    assert again.evaluations["synth_test"]["cer"] == result.evaluations["synth_test"]["cer"]


def test_card_augmentation_text_names_what_is_on_and_says_none_otherwise():
    from asr_transfer.training.source_card import augmentation_text

    off = {"data": {"speed_perturb": [], "noise_snr_db": []}, "augment": {"mask_time_prob": 0.0, "mask_time_length": 5}}
    assert augmentation_text(off).startswith("none")
    on = {
        "data": {"speed_perturb": [0.9, 1.1], "noise_snr_db": [20, 50]},
        "augment": {"mask_time_prob": 0.05, "mask_time_length": 5},
    }
    assert augmentation_text(on) == ("speed perturbation [0.9, 1.1], extra white noise at SNR uniform [20, 50] dB, "
                                     "SpecAugment time masks p=0.05 length 5")


def test_blank_plateau_notes_read_the_runs_configs():
    from types import SimpleNamespace

    from asr_transfer.training.source_card import blank_plateau_notes

    cfg = SimpleNamespace(feat_extract_norm="group", do_stable_layer_norm=True)

    def run(name, lr, max_utt_s, max_batch_s):
        return {
            "run": name,
            "config": {"stages": [{"lr": lr}], "data": {"max_utt_s": max_utt_s, "max_batch_s": max_batch_s}},
        }

    two = blank_plateau_notes(cfg, [run("short", 2e-3, 3.5, 30.0), run("full", 2.5e-3, 16.0, 30.0)])
    assert "AdamW, 0.0025)" in two and "at most 3.5 s" in two and "small batches (30 s of audio" in two
    assert "GroupNorm" in two
    assert "curriculum" not in blank_plateau_notes(cfg, [run("full", 1e-3, 16.0, 20.0)])  # no short run, no claim


def test_init_config_needs_vocab_and_keep(tmp_path):
    from asr_transfer.config import AugmentArgs, ModelArgs
    from asr_transfer.errors import UserError
    from asr_transfer.model.transfer import prepare_model
    from asr_transfer.vocab import english_source_vocab, save_vocab

    vocab = save_vocab(english_source_vocab(), tmp_path / "vocab.json")
    args = ModelArgs(init_config=str(TINY_STABLE_CONFIG), lang="en", head_init="keep", vocab=str(vocab))
    prepared = prepare_model(args, AugmentArgs(), tmp_path / "unused.jsonl", seed=3)
    again = prepare_model(args, AugmentArgs(), tmp_path / "unused.jsonl", seed=3)
    assert prepared.vocab == english_source_vocab() and prepared.model.lm_head.out_features == 32
    assert all(
        torch.equal(a, b) for a, b in zip(prepared.model.state_dict().values(), again.model.state_dict().values())
    )
    assert prepared.processor.feature_extractor.return_attention_mask  # layer-norm CNN: masks, as the config says
    with pytest.raises(UserError, match="head_init = keep"):
        prepare_model(ModelArgs(init_config=str(TINY_STABLE_CONFIG), lang="en", head_init="mapped", vocab=str(vocab)),
                      AugmentArgs(), tmp_path / "unused.jsonl")
    with pytest.raises(UserError, match="Wav2Vec2Config"):
        prepare_model(ModelArgs(init_config=str(tmp_path / "missing.json"), head_init="keep", vocab=str(vocab)),
                      AugmentArgs(), tmp_path / "unused.jsonl")


def test_base960h_random_model_head_swap_and_unfreezing():
    """base-960h's real architecture (random weights): mapped head swap to German, then a 'top' stage."""
    from conftest import build_model

    from asr_transfer.model.head import swap_head
    from asr_transfer.training.schedule import Stage, apply_stage
    from asr_transfer.vocab import build_vocab, english_source_vocab

    model = build_model(BASE960H_CONFIG)
    de = dict(build_vocab(["über größe straße äpfel öl", "the quick brown fox"], "de"))
    old = model.lm_head.weight.detach().clone()
    report = swap_head(model, english_source_vocab(), de, mode="mapped", lang="de")
    assert model.lm_head.out_features == len(de)
    assert torch.equal(model.lm_head.weight[de["a"]], old[english_source_vocab()["A"]])
    assert ("ä", "a") in report.seeded
    trainable = apply_stage(model, Stage(name="top", train=("head", "layers.-2:"), lr=1e-4, steps=1))
    hidden = model.config.hidden_size
    per_layer = sum(p.numel() for p in model.wav2vec2.encoder.layers[0].parameters())
    assert trainable == 2 * per_layer + hidden * len(de) + len(de)
    assert not any(p.requires_grad for p in model.wav2vec2.feature_extractor.parameters())
