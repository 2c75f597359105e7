"""A tiny German-looking corpus (tones + noise, real German transcripts) and a tiny English source model on disk.

Shared by the training, fault and benchmark-smoke tests. Everything is deterministic and builds in about a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).parent / "assets"
TEXTS = [
    "über den fluss",
    "das haus ist groß",
    "schöne grüße",
    "ein kleiner hund",
    "die straße ist lang",
    "guten morgen",
]


def make_source_model(out: Path, config: Path = ASSETS / "tiny" / "config.json", seed: int = 0) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from asr_transfer.model.load import save_model
    from asr_transfer.model.record import ModelRecord, make_processor
    from asr_transfer.vocab import english_source_vocab

    cfg = Wav2Vec2Config.from_json_file(str(config))
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(cfg)
    vocab = english_source_vocab()
    record = ModelRecord(lang="en", normalizer="en-v1", source_model="random-tiny", head_init="random", vocab=vocab)
    return save_model(out, model, make_processor(vocab, cfg.feat_extract_norm), record)


def make_corpus(out: Path, n_train: int = 18, n_dev: int = 6, seed: int = 0) -> tuple[Path, Path]:
    from asr_transfer.audio import write_wav
    from asr_transfer.manifest import Utterance, write_manifest

    rng = np.random.default_rng(seed)
    utts = []
    for i in range(n_train + n_dev):
        d = 0.6 + 0.1 * (i % 5)
        t = np.arange(int(d * 16000)) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t) + 0.01 * rng.standard_normal(t.size)
        path = out / "wav" / f"u{i}.wav"
        write_wav(path, x)
        utts.append(Utterance(str(path), d, TEXTS[i % len(TEXTS)], id=f"u{i}", speaker=f"s{i % 3}"))
    return write_manifest(out / "train.jsonl", utts[:n_train]), write_manifest(out / "dev.jsonl", utts[n_train:])


# English replay text in letters the tiny German head has (built from TEXTS), and "it's cool", whose apostrophe the
# German head lacks and an English head has.
ENGLISH = ["the sun is hot", "a red dog", "the lion is on the hill", "it's cool"]


def make_replay_corpus(out: Path) -> tuple[Path, Path, Path, Path]:
    """(source model, German train, German dev, English replay manifest) for the replay and two-head tests.

    The replay manifest reuses the target's ids (u0, u1, ...): cache keys and skips must keep them apart.
    """
    from dataclasses import replace

    from asr_transfer.manifest import read_manifest, write_manifest

    train, dev = make_corpus(out)
    eng, _ = make_corpus(out / "en", n_train=12, n_dev=1, seed=1)
    utts = [replace(u, text=ENGLISH[i % len(ENGLISH)], lang="en") for i, u in enumerate(read_manifest(eng))]
    write_manifest(eng, utts)
    return make_source_model(out / "src"), train, dev, eng


def tiny_config(tmp: Path, source: Path, train: Path, dev: Path, **overrides):
    """A 3-stage TrainConfig over the tiny corpus; ``overrides`` are ``--set`` style ``key=value`` pairs."""
    from asr_transfer.config import TrainConfig, load_config

    base = {
        "model": {"source": str(source), "lang": "de"},
        "data": {"train_manifest": str(train), "dev_manifest": str(dev), "max_batch_s": 4.0, "max_utt_s": 2.0},
        "augment": {"mask_time_prob": 0.2, "mask_time_length": 2},
        "train": {"output_dir": str(tmp / "run"), "eval_every": 4, "save_every": 3, "log_every": 1, "keep_last": 2},
        "stages": [
            {"name": "head", "train": ["head"], "lr": 1e-3, "steps": 5},
            {"name": "top", "train": ["head", "layers.-1:"], "lr": 1e-3, "steps": 5},
            {
                "name": "all",
                "train": ["head", "layers", "feature_projection"],
                "lr": 3e-4,
                "layer_decay": 0.9,
                "epochs": 1,
            },
        ],
    }
    return load_config(TrainConfig, None, [f"{k}={v}" for k, v in overrides.items()], base=base)


def make_two_head_model(out: Path, source: Path, seed: int = 0) -> Path:
    """A German model with the source's English head kept beside its own (train.mix.head = own), saved untrained."""
    from asr_transfer.config import AugmentArgs, ModelArgs
    from asr_transfer.config import TrainConfig
    from asr_transfer.model.record import ModelRecord
    from asr_transfer.model.transfer import prepare_model, save_trained
    from asr_transfer.vocab import build_vocab, save_vocab

    vocab = save_vocab(dict(build_vocab(TEXTS, "de")), out.parent / f"{out.name}-vocab.json")
    prepared = prepare_model(ModelArgs(source=str(source), lang="de", vocab=str(vocab)), AugmentArgs(), "", seed=seed,
                             keep_head="en")
    record = ModelRecord(lang="de", normalizer="de-v1", source_model=str(source), head_init="mapped",
                         vocab=prepared.vocab)
    return save_trained(out, prepared.model, prepared.processor, record, {}, TrainConfig(), prepared.kept_vocabs)
