"""The baseline training loop: ``transformers.Trainer`` the way ``run_speech_recognition_ctc.py`` runs it.

What is kept from the example script (transformers/examples/pytorch/speech-recognition):

- the data are vectorised once up front (audio decoded, ``processor.feature_extractor`` normalisation, label ids),
  like the script's ``datasets.map``; that time is measured and reported apart from the training loop;
- ``DataCollatorCTCWithPadding``: ``processor.pad`` for the inputs and for the labels, label padding as ``-100``;
- ``model.freeze_feature_encoder()``; SpecAugment, LayerDrop and the CTC loss through the model config
  (``ctc_loss_reduction="mean"``, ``mask_time_prob``/``mask_time_length``/``mask_feature_prob`` from our config);
- ``TrainingArguments`` with random (not length-grouped) sampling — ``group_by_length=False``, called
  ``train_sampling_strategy="random"`` since transformers 5 — a fixed per-device batch size, no eval or checkpoints.

What is made equal to our trainer, so only the loop differs: the same initial model (``prepare_model``: same source,
head swap and seed), the same examples (``build_examples``: same normaliser, vocabulary, length filters), the same
frozen parts per stage (``apply_stage`` sets ``requires_grad``), the same optimiser groups, peak rates, warm-up and
decay (``optimizer_param_groups`` + ``make_scheduler`` passed as ``optimizers=``), the same gradient clip, fp32 and
``ctc_zero_infinity=True`` (our loss zeroes infinite losses too). The per-device batch size is our padded-seconds
budget divided by the mean utterance duration, so both loops see about the same audio per optimiser step.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import common  # noqa: F401  (puts the checkout on sys.path)
import numpy as np
import torch


@dataclass
class VectorizedData:
    """The up-front ``datasets.map`` step of the example script: normalised waves and label ids."""

    items: list[dict]
    duration_s: list[float]
    prepare_s: float

    @property
    def mean_duration_s(self) -> float:
        return float(np.mean(self.duration_s))

    @property
    def total_s(self) -> float:
        return float(np.sum(self.duration_s))


def vectorize(examples, processor) -> VectorizedData:
    """Decode every training utterance and normalise it with the processor's feature extractor (timed)."""
    from asr_transfer.training.data import load_example_audio

    t0 = time.perf_counter()
    items, durs = [], []
    for ex in examples:
        wave = load_example_audio(ex)
        values = processor.feature_extractor(wave, sampling_rate=16000).input_values[0]
        items.append({"input_values": np.asarray(values, dtype=np.float32), "labels": list(ex.labels),
                      "duration_s": len(wave) / 16000})
        durs.append(len(wave) / 16000)
    return VectorizedData(items, durs, time.perf_counter() - t0)


class DataCollatorCTCWithPadding:
    """As in ``run_speech_recognition_ctc.py``; also records each batch's audio seconds (for throughput)."""

    def __init__(self, processor):
        self.processor = processor
        self.batch_audio_s: list[float] = []

    def __call__(self, features: list[dict]) -> dict:
        self.batch_audio_s.append(float(sum(f["duration_s"] for f in features)))
        input_features = [{"input_values": f["input_values"]} for f in features]
        label_features = [{"input_ids": f["labels"]} for f in features]
        batch = self.processor.pad(input_features, padding=True, return_tensors="pt")
        labels_batch = self.processor.pad(labels=label_features, padding=True, return_tensors="pt")
        batch["labels"] = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        return batch


def per_device_batch(max_batch_s: float, mean_duration_s: float) -> int:
    """Our padded-seconds budget as a fixed per-device batch count (at least 1)."""
    return max(1, int(round(max_batch_s / mean_duration_s)))


def configure_like_example_script(model, config) -> None:
    """Model-config settings the example script passes through ``config.update`` (SpecAugment, CTC loss)."""
    aug = config.augment
    model.config.mask_time_prob = aug.mask_time_prob
    model.config.mask_time_length = aug.mask_time_length
    model.config.mask_feature_prob = aug.mask_feature_prob
    model.config.mask_feature_length = aug.mask_feature_length
    model.config.layerdrop = aug.layerdrop
    model.config.apply_spec_augment = True
    model.config.ctc_loss_reduction = "mean"
    model.config.ctc_zero_infinity = True


class HFLoop:
    """Runs stages of a :class:`~asr_transfer.config.TrainConfig` schedule with ``transformers.Trainer``."""

    def __init__(self, config, out_dir: str | Path | None = None):
        from asr_transfer.model.transfer import prepare_model
        from asr_transfer.text import get_normalizer
        from asr_transfer.training.data import SkipCounter, build_examples

        self.config = config
        torch.manual_seed(config.train.seed)
        self.prepared = prepare_model(config.model, config.augment, config.data.train_manifest, seed=config.train.seed)
        self.model = self.prepared.model
        configure_like_example_script(self.model, config)
        self.processor = self.prepared.processor
        self.normalizer = get_normalizer(config.model.lang)
        mc = self.model.config
        self.examples = build_examples(config.data.train_manifest, self.prepared.vocab, self.normalizer, mc.conv_kernel,
                                       mc.conv_stride, config.data.min_utt_s, config.data.max_utt_s, SkipCounter())
        self.data = vectorize(self.examples, self.processor)
        self.batch_size = per_device_batch(config.data.max_batch_s, self.data.mean_duration_s)
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="hf-baseline-"))
        self.collator = DataCollatorCTCWithPadding(self.processor)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.items) / self.batch_size)

    def settings(self) -> dict:
        return {"per_device_train_batch_size": self.batch_size, "mean_duration_s": round(self.data.mean_duration_s, 3),
                "max_batch_s (ours)": self.config.data.max_batch_s, "train_sampling_strategy": "random",
                "freeze_feature_encoder": True, "fp32": True, "eval/save": "no", "dataloader_num_workers": 0,
                "ctc_loss_reduction": "mean", "ctc_zero_infinity": True, "optimizer": "AdamW, our param groups",
                "vectorize_s": round(self.data.prepare_s, 2)}

    def run_stage(self, stage, max_steps: int, callbacks: Sequence = ()) -> dict:
        """Train ``stage`` for ``max_steps`` optimiser steps (the schedule's length is ``stage``'s own)."""
        from transformers import Trainer, TrainingArguments

        from asr_transfer.training.schedule import apply_stage, make_scheduler, optimizer_param_groups

        apply_stage(self.model, stage)
        self.model.freeze_feature_encoder()
        total = stage.steps or max_steps
        optimizer = torch.optim.AdamW(optimizer_param_groups(self.model, stage), lr=stage.lr,
                                      weight_decay=stage.weight_decay)
        scheduler = make_scheduler(optimizer, stage, total)
        args = TrainingArguments(
            output_dir=str(self.out_dir), per_device_train_batch_size=self.batch_size, max_steps=max_steps,
            learning_rate=stage.lr, max_grad_norm=self.config.train.clip_norm or 1e9, logging_steps=10**9,
            save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, seed=self.config.train.seed,
            dataloader_num_workers=0, remove_unused_columns=False, train_sampling_strategy="random",
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = Trainer(model=self.model, args=args, data_collator=self.collator, train_dataset=self.data.items,
                          optimizers=(optimizer, scheduler), callbacks=list(callbacks))
        self.collator.batch_audio_s.clear()
        t0 = time.perf_counter()
        trainer.train()
        return {"wall_s": time.perf_counter() - t0, "batch_audio_s": list(self.collator.batch_audio_s)}


def step_clock():
    """A ``TrainerCallback`` recording ``time.perf_counter()`` at every optimiser-step end (``.times``)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.begin: float | None = None

        def on_train_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

    return StepClock()


# ------------------------------------------------------------------------------------------------ evaluation
class DevSet:
    """Dev audio decoded once; greedy CER/WER of a model in memory, one unpadded utterance at a time.

    Both loops are scored by this same function, so "equal dev CER" means the same thing for both.
    """

    def __init__(self, manifest: str | Path, lang: str, max_utts: int | None = None):
        from asr_transfer.audio import load_audio
        from asr_transfer.manifest import read_manifest
        from asr_transfer.text import get_normalizer

        self.normalizer = get_normalizer(lang)
        utts = read_manifest(manifest)[:max_utts]
        self.waves = [load_audio(u.audio_filepath, u.offset, u.duration or None) for u in utts]
        self.refs = [self.normalizer(u.text) for u in utts]
        self.audio_s = sum(len(w) for w in self.waves) / 16000

    @torch.no_grad()
    def score(self, model, vocab: dict[str, int] | list[str], do_normalize: bool = True) -> dict:
        from asr_transfer.decode import GreedyDecoder
        from asr_transfer.metrics import error_rates
        from asr_transfer.training.data import normalize_wave

        id2tok = vocab if isinstance(vocab, list) else [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        decoder = GreedyDecoder(id2tok, blank_id=int(model.config.pad_token_id))
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        hyps = []
        for wave in self.waves:
            x = torch.from_numpy(normalize_wave(wave, do_normalize))[None].to(device)
            logits = model(input_values=x).logits[0].float()
            hyps.append(self.normalizer(decoder.decode(torch.log_softmax(logits, -1).cpu().numpy()).text))
        model.train(was_training)
        rates = error_rates(self.refs, hyps)
        return {"cer": rates["cer"], "wer": rates["wer"]}
