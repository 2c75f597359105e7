"""Two heads (train.mix.head = own): per-utterance CTC through each language's head, the kept head's training,
exact resume, and the saved folders (the target one as before, heads/en/ a standard Wav2Vec2ForCTC folder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_replay_corpus, tiny_config

from asr_transfer.model.forward import ctc_loss_per_utt
from asr_transfer.model.heads import TARGET, logits_by_head
from asr_transfer.model.record import head_folder
from asr_transfer.training.heads import TrainHeads

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_replay_corpus(tmp_path_factory.mktemp("corpus"))


def _cfg(tmp: Path, corpus, **over):
    source, train, dev, eng = corpus
    return tiny_config(tmp, source, train, dev, **{"train.mix.manifest": str(eng), "train.mix.share": "0.4",
                                                   "train.mix.head": "own", **over})


@pytest.fixture(scope="module")
def two_head_run(tmp_path_factory, corpus):
    from asr_transfer.training.loop import train

    tmp = tmp_path_factory.mktemp("two")
    train(_cfg(tmp, corpus), progress=False)
    return tmp / "run"


def test_each_utterance_is_scored_through_its_own_head():
    torch.manual_seed(0)
    base = torch.nn.Module()
    base.lm_head = torch.nn.Linear(4, 6)
    base.kept_heads = torch.nn.ModuleDict({"en": torch.nn.Linear(4, 9)})
    h = torch.randn(3, 7, 4)
    names = ["en", TARGET, "en"]
    out = logits_by_head(base, h, names)
    assert out["en"][0].tolist() == [0, 2] and out[TARGET][0].tolist() == [1]
    torch.testing.assert_close(out["en"][1], base.kept_heads["en"](h[[0, 2]]))
    torch.testing.assert_close(out[TARGET][1], base.lm_head(h[[1]]))
    labels = [(1, 2, 3), (4, 5), (8, 7)]
    lengths = torch.tensor([7, 6, 5])
    got = TrainHeads({TARGET: 0, "en": 0}, "en").loss(out, lengths, labels)
    # By hand: each utterance's CTC through its head, in batch order.
    want = [ctc_loss_per_utt(base.kept_heads["en"](h[[0]]), lengths[[0]], [labels[0]], 0),
            ctc_loss_per_utt(base.lm_head(h[[1]]), lengths[[1]], [labels[1]], 0),
            ctc_loss_per_utt(base.kept_heads["en"](h[[2]]), lengths[[2]], [labels[2]], 0)]
    torch.testing.assert_close(got, torch.cat(want))
    got.sum().backward()  # gradients reach both heads
    assert base.lm_head.weight.grad.abs().sum() > 0 and base.kept_heads["en"].weight.grad.abs().sum() > 0


def test_one_head_loss_is_the_plain_ctc():
    logits, lengths = torch.randn(2, 6, 5), torch.tensor([6, 4])
    heads = TrainHeads({TARGET: 0})
    assert heads.names([]) is None and not heads.two
    torch.testing.assert_close(heads.loss(logits, lengths, [(1, 2), (3,)]),
                               ctc_loss_per_utt(logits, lengths, [(1, 2), (3,)], 0))


def test_two_head_run_keeps_the_english_head_and_replays_the_apostrophe(two_head_run, corpus):
    run = two_head_run
    summary = json.loads((run / "train_summary.json").read_text())
    mix = summary["mix"]
    assert mix["head"] == "own"
    assert mix["replay_utterances"] == 12 and mix["replay_skipped"]["total"] == 0  # "it's cool" fits the English head
    assert mix["letters_outside_head"] == {}
    assert json.loads((run / "run.json").read_text())["mix"]["head"] == "own"
    final = run / "final"
    target = load_file(str(final / "model.safetensors"))
    assert not [k for k in target if "kept_heads" in k]  # the target folder is a plain Wav2Vec2ForCTC
    record = json.loads((final / "asr_transfer.json").read_text())
    assert record["lang"] == "de" and record["extra"]["heads"] == {"en": "heads/en"}
    en = load_file(str(final / "heads" / "en" / "model.safetensors"))
    assert set(en) == set(target)
    for k in target:  # the same encoder; only the head differs
        if not k.startswith("lm_head."):
            torch.testing.assert_close(en[k], target[k], msg=k)
    source = load_file(str(corpus[0] / "model.safetensors"))
    assert en["lm_head.weight"].shape == source["lm_head.weight"].shape
    assert not torch.equal(en["lm_head.weight"], source["lm_head.weight"])  # the kept head trained on replay
    en_record = json.loads((final / "heads" / "en" / "asr_transfer.json").read_text())
    assert en_record["lang"] == "en" and en_record["vocab"] == json.loads((corpus[0] / "vocab.json").read_text())
    assert "kept beside the de head" in (final / "heads" / "en" / "README.md").read_text()


def test_the_english_folder_loads_in_transformers_pipeline_and_our_loader(two_head_run):
    from transformers import pipeline

    from asr_transfer import load_model

    folder = two_head_run / "final" / "heads" / "en"
    wave = (0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    asr = pipeline("automatic-speech-recognition", model=str(folder), device="cpu", torch_dtype=torch.float32)
    assert isinstance(asr({"raw": wave, "sampling_rate": 16000})["text"], str)
    loaded = load_model(folder)
    assert loaded.lang == "en" and len(loaded.vocab) == 32 and loaded.model.lm_head.out_features == 32
    assert "'" in loaded.vocab
    assert load_model(two_head_run / "final").lang == "de"


def test_head_folder_picks_the_head_or_names_the_ones_there_are(two_head_run):
    from asr_transfer.errors import UserError

    final = two_head_run / "final"
    assert head_folder(final, None) == final and head_folder(final, "de") == final
    assert head_folder(final, "en") == final / "heads" / "en"
    with pytest.raises(UserError, match="no head for 'fr'; it has: de, en"):
        head_folder(final, "fr")


def test_interrupted_two_head_run_resumes_to_the_same_weights(tmp_path, corpus, two_head_run):
    from asr_transfer.training.loop import train

    cfg = _cfg(tmp_path / "int", corpus)
    train(cfg, progress=False, stop_after_steps=3)  # mid-stage (stage 0 has 5 steps), mid-epoch
    train(cfg, resume=True, progress=False, stop_after_steps=4)  # into stage 1
    train(cfg, resume=True, progress=False)
    for sub in ("", "heads/en"):
        a = load_file(str(two_head_run / "final" / sub / "model.safetensors"))
        b = load_file(str(tmp_path / "int" / "run" / "final" / sub / "model.safetensors"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{sub}:{k}")


def test_resume_refuses_a_changed_head_option(tmp_path, corpus):
    from asr_transfer.errors import UserError
    from asr_transfer.training.loop import train

    train(_cfg(tmp_path, corpus), progress=False, stop_after_steps=2)
    with pytest.raises(UserError, match="resume would not be exact"):
        train(_cfg(tmp_path, corpus, **{"train.mix.head": "shared"}), resume=True, progress=False)


@pytest.mark.parametrize("setting, message", [
    ({"train.mix.head": "both"}, "train.mix.head must be one of"),
    ({"train.mix.share": "0", "train.mix.manifest": ""}, "needs train.mix.share > 0"),
    ({"model.from_scratch": "true"}, "has none; set train.mix.head = shared"),
    ({"model.adapter": "lora"}, "not supported with model.adapter"),
    ({"train.mix.lang": "de"}, "a second head needs a second language"),
])
def test_bad_head_settings_are_config_errors(tmp_path, corpus, setting, message):
    from asr_transfer.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, corpus, **setting)


def test_watchdog_rollback_restores_the_kept_head_too(two_head_run, corpus):
    from asr_transfer.config import AugmentArgs, ModelArgs
    from asr_transfer.model.transfer import prepare_model
    from asr_transfer.training.devscore import watchdog_action

    source, train, _, _ = corpus
    model = prepare_model(ModelArgs(source=str(source), lang="de"), AugmentArgs(), train, keep_head="en").model
    best = two_head_run / "best"
    assert watchdog_action("rollback", None, None, model, best) == "rolled back to best/"
    target, en = (load_file(str(best / sub / "model.safetensors")) for sub in ("", "heads/en"))
    torch.testing.assert_close(model.lm_head.weight.detach(), target["lm_head.weight"])
    torch.testing.assert_close(model.kept_heads["en"].weight.detach(), en["lm_head.weight"])
    torch.testing.assert_close(model.kept_heads["en"].bias.detach(), en["lm_head.bias"])


def test_a_two_head_source_passes_on_its_kept_head_and_a_german_one_without_is_refused(two_head_run, corpus):
    """Self-training continues from the adapted (German) model: its kept English head is the one to keep."""
    from asr_transfer.config import AugmentArgs, ModelArgs
    from asr_transfer.errors import UserError
    from asr_transfer.model.transfer import prepare_model

    train = corpus[1]
    final = two_head_run / "final"
    prepared = prepare_model(ModelArgs(source=str(final), lang="de", head_init="keep"), AugmentArgs(), train,
                             keep_head="en")
    en = load_file(str(final / "heads" / "en" / "model.safetensors"))
    torch.testing.assert_close(prepared.model.kept_heads["en"].weight.detach(), en["lm_head.weight"])
    assert prepared.kept_vocabs["en"] == json.loads((final / "heads" / "en" / "vocab.json").read_text())
    plain = two_head_run.parent / "plain-de"
    if not plain.exists():
        import shutil

        shutil.copytree(final, plain, ignore=shutil.ignore_patterns("heads"))
    with pytest.raises(UserError, match="keeps the source model's en head, but this de model has none"):
        prepare_model(ModelArgs(source=str(plain), lang="de", head_init="keep"), AugmentArgs(), train, keep_head="en")
