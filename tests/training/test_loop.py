"""The staged training loop: stages, caching equivalence, exact resume, NaN skipping, DDP, config errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_corpus, make_source_model, tiny_config

ROOT = Path(__file__).resolve().parents[2]
# One stage training every group, CNN included: the stages TOML of the tests that need the whole model to learn.
ALL_GROUPS_STAGE = ('[{{name = "all", train = ["feature_encoder", "feature_projection", "pos_conv", "layers", "head"], '
                    'lr = 1e-3, steps = {steps}}}]')


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    train, dev = make_corpus(d)
    return make_source_model(d / "src"), train, dev


def _metrics(run: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("split") == split]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_staged_run_writes_run_folder_and_counts_grow(tmp_path, corpus):
    from asr_transfer.training.loop import train

    cfg = tiny_config(tmp_path, *corpus)
    final = train(cfg, progress=False)
    run = tmp_path / "run"
    for name in ("config.resolved.json", "metrics.jsonl", "stages.json", "train_summary.json", "best", "final", "tb"):
        assert (run / name).exists(), name
    stages = json.loads((run / "stages.json").read_text())
    assert [s["name"] for s in stages] == ["head", "top", "all"]
    counts = [s["trainable_params"] for s in stages]
    assert counts[0] < counts[1] < counts[2]
    assert [s["end_step"] - s["start_step"] for s in stages[:2]] == [5, 5]
    assert _metrics(run, "dev"), "dev evaluations are logged"
    record = json.loads((final / "asr_transfer.json").read_text())
    assert record["lang"] == "de" and record["head_init"] == "mapped" and "ü" in record["vocab"]
    from asr_transfer.model.load import load_model

    loaded = load_model(final)
    assert loaded.model.config.vocab_size == len(record["vocab"])


def test_cached_and_uncached_training_give_the_same_losses(tmp_path, corpus):
    from asr_transfer.training.loop import train

    losses = {}
    for cache in (True, False):
        cfg = tiny_config(tmp_path / str(cache), *corpus, **{"train.cache": str(cache).lower()})
        train(cfg, progress=False)
        losses[cache] = [r["loss"] for r in _metrics(tmp_path / str(cache) / "run", "train")]
    assert len(losses[True]) == len(losses[False]) > 10
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-6)


def test_segments_of_one_long_file_train_exactly_like_the_clips(tmp_path, corpus):
    """An `asr-transfer align` manifest: offset/duration slices of one long recording (the clips joined with pauses)
    read the same samples as the clips, so the (cached) run's losses equal the clips' run; a marked segment is
    skipped and counted, and every segment is its own cache entry."""
    from asr_transfer.audio import SAMPLE_RATE, load_audio, write_wav
    from asr_transfer.manifest import Utterance, read_manifest, write_manifest
    from asr_transfer.training.loop import train

    source, clips, dev = corpus
    pieces, segments, position = [], [], 0
    for k, u in enumerate(read_manifest(clips)):
        pause = np.full(SAMPLE_RATE // 2 + 37 * k, 0.001, np.float32)  # not a whole number of CTC frames
        x = load_audio(u.audio_filepath)
        position += len(pause)
        segments.append(Utterance("long.wav", u.duration, u.text, offset=position / SAMPLE_RATE, id=u.id,
                                  speaker=u.speaker, extra={"align_score": -0.5}))
        pieces += [pause, x]
        position += len(x)
    write_wav(tmp_path / "long.wav", np.concatenate(pieces))
    marked = Utterance("long.wav", 0.5, "nicht gesagt", offset=0.0, id="marked", extra={"align_flag": "low_score"})
    manifest = tmp_path / "segments.jsonl"
    manifest.write_text("".join(u.to_json() + "\n" for u in [*segments, marked]), encoding="utf-8")
    losses, summaries = {}, {}
    for name, train_manifest in (("clips", clips), ("segments", manifest)):
        cfg = tiny_config(tmp_path / name, source, train_manifest, dev, **{"train.cache": "true"})
        train(cfg, progress=False)
        losses[name] = [r["loss"] for r in _metrics(tmp_path / name / "run", "train")]
        summaries[name] = json.loads((tmp_path / name / "run" / "train_summary.json").read_text())
    assert len(losses["segments"]) > 10
    assert losses["segments"] == pytest.approx(losses["clips"], rel=1e-6, abs=1e-7)
    assert summaries["segments"]["skipped"]["by_reason"] == {"marked by align": 1}
    assert summaries["segments"]["train_utterances"] == summaries["clips"]["train_utterances"] == len(segments)


def test_loader_threads_give_the_same_batches_and_skip_a_bad_file_alone(tmp_path, corpus):
    """train.loader_threads decodes a batch's audio in parallel: with speed perturbation and added noise (each job
    seeded per utterance) the losses equal the serial loader's, and a file that fails mid-run is skipped by itself."""
    from asr_transfer.training.loop import train

    source, train_manifest, dev = corpus
    rows = [json.loads(line) for line in train_manifest.read_text().splitlines()]
    rows = [{**r, "audio_filepath": str(train_manifest.parent / r["audio_filepath"])} for r in rows]  # moved manifest
    bad = tmp_path / "silent.wav"
    from asr_transfer.audio import write_wav

    write_wav(bad, [0.0] * 16000)  # digital silence: an AudioError when it is loaded
    rows[4] = {**rows[4], "audio_filepath": str(bad)}
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = ALL_GROUPS_STAGE.format(steps=8)
    losses = {}
    for threads in (0, 3):
        cfg = tiny_config(tmp_path / str(threads), source, manifest, dev, stages=one, **{
            "train.loader_threads": threads, "data.speed_perturb": "[0.9, 1.0, 1.1]", "data.noise_snr_db": "[10, 30]"})
        train(cfg, progress=False)
        run = tmp_path / str(threads) / "run"
        losses[threads] = [r["loss"] for r in _metrics(run, "train")]
        skipped = json.loads((run / "train_summary.json").read_text())["skipped"]
        assert skipped["total"] == 1, skipped
    assert len(losses[0]) == 8
    assert losses[3] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("stops", [[3], [5, 4, 2]], ids=["mid-stage", "at-stage-boundary-and-mid-accumulation"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, corpus, stops):
    from asr_transfer.training.loop import train

    over = {"train.grad_accum": "2"}
    ref = tiny_config(tmp_path / "ref", *corpus, **over)
    train(ref, progress=False)
    cfg = tiny_config(tmp_path / "int", *corpus, **over)
    train(cfg, progress=False, stop_after_steps=stops[0])
    for n in stops[1:]:
        train(cfg, resume=True, progress=False, stop_after_steps=n)
    train(cfg, resume=True, progress=False)
    a, b = _weights(tmp_path / "ref" / "run" / "final"), _weights(tmp_path / "int" / "run" / "final")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    steps = [r["step"] for r in _metrics(tmp_path / "int" / "run", "train")]
    assert steps == sorted(set(steps)), "step count is continuous across resumes"


def test_resume_refuses_a_changed_config_unless_allowed(tmp_path, corpus):
    from asr_transfer.errors import UserError
    from asr_transfer.training.loop import train

    train(tiny_config(tmp_path, *corpus), progress=False, stop_after_steps=2)
    changed = tiny_config(tmp_path, *corpus, **{"stages.0.lr": "5e-3"})
    with pytest.raises(UserError, match="allow-inexact-resume"):
        train(changed, resume=True, progress=False)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(tmp_path, *corpus), progress=False)
    train(changed, resume=True, allow_inexact_resume=True, progress=False)


def test_nan_losses_are_skipped_and_counted(tmp_path, corpus, monkeypatch):
    from asr_transfer.training.loop import train

    monkeypatch.setenv("ASR_TRANSFER_INJECT_NAN_EVERY", "3")
    final = train(tiny_config(tmp_path, *corpus), progress=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["nan_skipped"] >= 3
    assert all(torch.isfinite(t).all() for t in _weights(final).values())


def test_prepare_model_maps_the_head_from_english_rows(corpus):
    """The trainer's model step: target rows copy the English rows of the same (or base) letter exactly."""
    from asr_transfer.config import AugmentArgs, ModelArgs
    from asr_transfer.model.transfer import prepare_model

    src_path, train_m, _ = corpus
    src = _weights(src_path)
    en = json.loads((src_path / "vocab.json").read_text())
    prepared = prepare_model(ModelArgs(source=str(src_path), lang="de"), AugmentArgs(), train_m)
    head = prepared.model.lm_head.weight.detach()
    for target, english in (("a", "A"), ("ü", "U"), ("ö", "O"), ("ß", "S"), ("|", "|"), ("<pad>", "<pad>")):
        assert torch.equal(head[prepared.vocab[target]], src["lm_head.weight"][en[english]]), target
    assert prepared.model.config.vocab_size == len(prepared.vocab) == head.shape[0]


@pytest.mark.parametrize("setting,message", [
    ("model.bogus=1", "unknown config key model.bogus"),
    ("train.grad_accum=two", "must be an integer"),
    ("stages.0.steps=0", ""),
])
def test_config_errors_are_one_line_exit_1(tmp_path, corpus, capsys, setting, message):
    from asr_transfer.cli import main

    src, train_m, dev_m = corpus
    rc = main(["train", "--no-progress", "--set", f"model.source={src}", "--set", f"data.train_manifest={train_m}",
               "--set", f"train.output_dir={tmp_path / 'run'}", "--set", setting])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert message in err


def test_ddp_two_processes_match_one_process(tmp_path, corpus):
    """2 CPU processes (gloo) at the same global batch end with the same weights as 1 process."""
    src, train_m, dev_m = corpus
    over = ["--set", "augment.mask_time_prob=0.0", "--set", "augment.dropout=0.0", "--set", "data.max_batch_s=6.0",
            "--set", "stages.2.epochs=1", "--set", f"model.source={src}", "--set", f"data.train_manifest={train_m}",
            "--set", f"data.dev_manifest={dev_m}", "--set", "train.eval_every=100", "--no-progress"]
    cfg = tmp_path / "cfg.json"
    base = tiny_config(tmp_path, src, train_m, dev_m)
    from asr_transfer.config import save_config

    save_config(base, cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = [
        sys.executable,
        "-m",
        "asr_transfer",
        "train",
        str(cfg),
        *over,
        "--set",
        f"train.output_dir={tmp_path / 'one'}",
    ]
    two = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "asr_transfer",
        "train",
        str(cfg),
        *over,
        "--set",
        f"train.output_dir={tmp_path / 'two'}",
    ]
    for cmd in (one, two):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")
    # fp32 all-reduce sums in another order (~1e-6 relative per gradient). Adam divides by sqrt(v), so weights whose
    # gradient is ~0 (attention k_proj in a random model) move by up to ±lr on noise: check the bulk tightly and
    # bound the rest by the learning-rate budget.
    flat_a = torch.cat([a[k].flatten() for k in sorted(a)])
    flat_b = torch.cat([b[k].flatten() for k in sorted(a)])
    diff = (flat_a - flat_b).abs()
    assert float((diff < 1e-4).float().mean()) > 0.95
    assert float(diff.max()) < 5e-3
    la = [r["loss"] for r in _metrics(tmp_path / "one", "train")]
    lb = [r["loss"] for r in _metrics(tmp_path / "two", "train")]
    assert len(la) == len(lb) > 10
    assert la == pytest.approx(lb, rel=1e-4)
    ga = [r["grad_norm"] for r in _metrics(tmp_path / "one", "train")]
    gb = [r["grad_norm"] for r in _metrics(tmp_path / "two", "train")]
    assert ga == pytest.approx(gb, rel=1e-4)


def test_lora_adapter_run_saves_only_adapter_weights_and_reloads(tmp_path, corpus):
    from asr_transfer.model.load import load_model
    from asr_transfer.training.loop import train

    over = {"model.adapter": "lora", "stages.0.train": '["adapters", "head"]', "stages.1.train": '["adapters", "head"]',
            "stages.2.train": '["adapters", "head"]'}
    final = train(tiny_config(tmp_path, *corpus, **over), progress=False)
    files = {p.name for p in final.iterdir()}
    assert "model.safetensors" not in files, files
    adapter_bytes = sum(p.stat().st_size for p in final.glob("*.safetensors"))
    assert 0 < adapter_bytes < (corpus[0] / "model.safetensors").stat().st_size / 2
    loaded = load_model(corpus[0], adapter=final)
    assert loaded.record.lang == "de" and loaded.model.config.vocab_size == len(loaded.vocab)


def test_training_the_cnn_runs_uncached_from_the_wave(tmp_path, corpus):
    """A stage that trains the feature encoder has boundary 0: batches are padded waves, the CNN runs per utterance."""
    from asr_transfer.training.loop import train

    one = ALL_GROUPS_STAGE.format(steps=3)
    train(tiny_config(tmp_path, *corpus, stages=one), progress=False)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert stages[0]["boundary"] == 0 and stages[0]["end_step"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize(
    "stage",
    [
        ALL_GROUPS_STAGE.format(steps=3),
        '[{name = "top", train = ["head", "layers.-1:"], lr = 1e-3, steps = 3}]',
    ],
    ids=["cnn-from-the-wave", "cached-boundary"],
)
def test_training_and_dev_evaluation_run_on_a_gpu(tmp_path, corpus, stage):
    """Batches, lengths, masks and the dev evaluation all on the GPU (found on a lent H200: lengths stayed on the
    CPU)."""
    from asr_transfer.training.loop import train

    train(
        tiny_config(tmp_path, *corpus, stages=stage, **{"train.eval_every": 2, "train.precision": "bf16"}),
        progress=False,
    )
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["environment"]["device"].startswith("cuda")
    assert len(_metrics(run, "dev")) >= 2


def test_time_masks_train_a_source_saved_without_masked_spec_embed(tmp_path, corpus):
    """A source whose config masks nothing (mask_time_prob = mask_feature_prob = 0, as the shipped en-synth-small)
    has no ``masked_spec_embed``; trainer-side time masks in front of the feature projection must still run."""
    from train_fixtures import ASSETS
    from transformers import Wav2Vec2Config

    from asr_transfer.training.loop import train

    cfg = Wav2Vec2Config.from_json_file(str(ASSETS / "tiny" / "config.json"))
    cfg.mask_time_prob, cfg.mask_feature_prob = 0.0, 0.0
    cfg.to_json_file(str(tmp_path / "nomask.json"))
    source = make_source_model(tmp_path / "src", config=tmp_path / "nomask.json")
    assert "wav2vec2.masked_spec_embed" not in load_file(str(source / "model.safetensors"))
    one = '[{name = "proj", train = ["head", "layers", "feature_projection"], lr = 1e-3, steps = 3}]'
    train(tiny_config(tmp_path, source, *corpus[1:], stages=one, **{"augment.mask_time_prob": 0.9}), progress=False)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert stages[0]["boundary"] == 1 and stages[0]["end_step"] == 3


@pytest.mark.parametrize("boundary", [0, 3])
def test_quantised_batch_padding_leaves_real_frames_unchanged(tiny_stable_model, boundary):
    """Batches are padded to a 0.5-s quantum (fewer oneDNN shapes); the masks must make that padding invisible."""
    from asr_transfer.model.forward import (
        PAD_QUANTUM_FRAMES,
        PAD_QUANTUM_SAMPLES,
        MaskOptions,
        Suffix,
        output_lengths,
        pad_features,
        prefix_features,
    )

    model = tiny_stable_model.eval()
    torch.manual_seed(0)
    waves = [torch.randn(n) for n in (12_345, 20_011)]
    with torch.no_grad():
        feats = [prefix_features(model, w, boundary) for w in waves] if boundary else waves
        suffix = Suffix(model, boundary, MaskOptions())
        multiple = PAD_QUANTUM_SAMPLES if boundary == 0 else PAD_QUANTUM_FRAMES
        tight, lengths = pad_features(feats)
        padded, same_lengths = pad_features(feats, multiple)
        assert padded.shape[1] % multiple == 0 and padded.shape[1] > tight.shape[1]
        assert torch.equal(lengths, same_lengths) and torch.equal(padded[:, : tight.shape[1]], tight)
        a = suffix(tight, lengths, training=False)
        b = suffix(padded, lengths, training=False)
    assert b.shape[1] > a.shape[1]
    for i, n in enumerate(output_lengths(model, boundary, lengths).tolist()):
        torch.testing.assert_close(b[i, :n], a[i, :n], atol=1e-5, rtol=1e-5)


def test_group_norm_cnn_batch_equals_per_utterance_runs(tiny_model):
    """The batched CNN of a GroupNorm model (layer 0 per utterance, layers 1-6 batched on quantised zero padding)
    gives every real frame exactly what the unpadded single-utterance CNN gives; the padding after them is junk."""
    from asr_transfer.model.forward import PAD_QUANTUM_SAMPLES, group_norm_cnn, pad_features

    model = tiny_model.eval()
    assert model.config.feat_extract_norm == "group"
    torch.manual_seed(1)
    waves = [torch.randn(n) for n in (9_001, 23_456, 16_000)]
    batch, lengths = pad_features(waves, PAD_QUANTUM_SAMPLES)
    with torch.no_grad():
        h, frames = group_norm_cnn(model, batch, lengths)
        singles = [model.wav2vec2.feature_extractor(w[None])[0].transpose(0, 1) for w in waves]
    assert frames.tolist() == [s.shape[0] for s in singles]
    for i, single in enumerate(singles):
        torch.testing.assert_close(h[i, : single.shape[0]], single, atol=1e-5, rtol=1e-5)
    # Running the whole CNN on the padded batch instead would not be exact: GroupNorm sees the zeros.
    with torch.no_grad():
        naive = model.wav2vec2.feature_extractor(batch).transpose(1, 2)
    assert not torch.allclose(naive[0, : singles[0].shape[0]], singles[0], atol=1e-3)
