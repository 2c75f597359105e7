"""The staged transfer-training loop (Hugging Face Accelerate: one CPU, one GPU, or DDP via ``accelerate launch``).

Per stage: set which parameter groups train (:mod:`asr_transfer.training.schedule`), find the frozen-prefix boundary
(:mod:`asr_transfer.model.forward`), build a fresh AdamW + warm-up/decay schedule, and iterate length-bucketed batches.
The frozen prefix's output is cached across epochs (:mod:`asr_transfer.training.cache`). Every ``eval_every`` steps the
dev set
is decoded greedily; one selection metric drives best checkpoint, plateau-gated stage ends and early stopping.
Checkpoints (:mod:`asr_transfer.training.checkpoint`) are written only at optimiser-step boundaries and hold everything
needed
for an exact resume: weights, optimiser moments by parameter name, scheduler, RNGs and the sampler position.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig, save_config, to_dict
from ..errors import AudioError, ConfigError, UserError
from ..files import recover_folder_write
from ..manifest import fingerprint
from ..model.forward import (
    PAD_QUANTUM_FRAMES,
    PAD_QUANTUM_SAMPLES,
    MaskOptions,
    Suffix,
    ctc_loss_per_utt,
    num_segments,
    output_lengths,
    pad_features,
    prefix_features,
    trainable_boundary,
    unwrap,
)
from ..model.heads import TARGET
from ..model.load import model_fingerprint
from ..model.transfer import prepare_model, save_trained, trained_record
from ..outdir import check_output_dir
from ..provenance import finish
from ..text import get_normalizer
from . import checkpoint as ckpt
from .cache import FeatureCache
from .data import (
    UNTRANSCRIBED_SKIP,
    AudioLoader,
    BucketSampler,
    Example,
    SkipCounter,
    audio_skip_reason,
    augmentation_for,
    build_examples,
    load_example_audio,
    normalize_wave,
)
from .devscore import DevScore, blank_collapse, watchdog_action
from .heads import TrainHeads
from .l2sp import L2SP
from .launch import is_worker, launch
from .mix import MixSampler, ReplaySet
from .runlog import RunLog
from .schedule import apply_stage, make_scheduler, optimizer_param_groups, validate_schedule
from .state import Accum, State, config_hash, end_stage, record_evaluation, resume_problems, stage_total_steps

_NAN_ENV = "ASR_TRANSFER_INJECT_NAN_EVERY"  # test hook: make every k-th micro-batch loss NaN
# Skipped optimiser steps in a row after which the run stops: a skipped step does not advance the step counter, so a
# run whose every loss is NaN would otherwise loop forever, logging each skip. An odd NaN batch never gets near this.
MAX_CONSECUTIVE_NAN_STEPS = 20
# What a run folder holds; a folder where one of these files goes (or a file where a folder goes) is refused up front.
RUN_FILES = ("run.json", "config.resolved.json", "head_init.json", "stages.json", "metrics.jsonl", "train_summary.json")
RUN_FOLDERS = ("checkpoints", "final", "best", "cache", "tb")


@dataclass
class StageRun:
    """What one stage trains with, built when it begins (:meth:`Trainer._begin_stage`)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    suffix: torch.nn.Module  # the trainable part of the forward pass, from the frozen-prefix boundary on
    boundary: int  # the segment where training starts: segments before it are frozen (and cached)
    total_steps: int  # the stage's optimiser-step budget (a cap when it ends on a plateau)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        resume: bool = False,
        allow_inexact_resume: bool = False,
        progress: bool = True,
        stop_after_steps: int | None = None,
        time_budget_s: float | None = None,
    ):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-file shard bars drown the training bar
        self.stop_after_steps = stop_after_steps
        self.time_budget_s = time_budget_s
        self.paused = False
        self.micro = 0  # micro-batches run in this invocation (the NaN-injection test hook counts them)
        self.nan_streak = 0  # optimiser steps skipped in a row for a NaN/inf loss or gradient
        self.nan_every = int(os.environ.get(_NAN_ENV, "0"))

        self.config = config
        self.run_dir = Path(config.train.output_dir)
        precision = config.train.precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
        if mp == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.precision = fp16 needs a GPU; use bf16 or fp32 on CPU")
        # cpu=True when there is no GPU: only then does Accelerate set up gloo for torchrun on CPU.
        # find_unused_parameters: LayerDrop skips layers and masked_spec_embed is unused when masking is off.
        self.acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available(),
                               kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)
        self.main = self.acc.is_main_process
        self.progress = progress and self.main
        self.resume = resume
        self.allow_inexact = allow_inexact_resume
        self.scaler = torch.amp.GradScaler("cuda") if mp == "fp16" else None
        self.loader = AudioLoader(config.train.loader_threads)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.config
        if not cfg.data.train_manifest:
            raise ConfigError("data.train_manifest is required")
        if self.main:
            check_output_dir(self.run_dir, files=RUN_FILES, folders=RUN_FOLDERS, key="train.output_dir")
            # A kill inside a save leaves its temp folder (and, mid-swap, the previous final/ or best/ set aside).
            ckpt.remove_temp_folders(self.run_dir / "checkpoints")
            for name in ("final", "best"):
                recover_folder_write(self.run_dir / name)
        existing = ckpt.list_checkpoints(self.run_dir / "checkpoints")
        if existing and not self.resume:
            raise UserError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue it or choose another "
                f"train.output_dir"
            )
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        mix = cfg.train.mix
        own_head = mix.lang if mix.head == "own" else None  # keep the source head for the replay utterances
        self.prepared = prepare_model(cfg.model, cfg.augment, cfg.data.train_manifest, seed=cfg.train.seed,
                                      keep_head=own_head)
        self.model = self.prepared.model.to(self.acc.device)
        # L2-SP's anchor: the source weights as loaded, before a resume overwrites them; one copy on the device.
        l2 = cfg.train.l2sp
        self.l2sp = L2SP(unwrap(self.model), l2.alpha, l2.beta) if l2.enabled else None
        self.l2sp_value = None
        self.vocab = self.prepared.vocab
        self.blank_id = self.vocab["<pad>"]
        blanks = {TARGET: self.blank_id, **{lang: v["<pad>"] for lang, v in self.prepared.kept_vocabs.items()}}
        self.heads = TrainHeads(blanks, own_head or TARGET)
        validate_schedule(cfg.stages, self.model.config.num_hidden_layers, has_eval=bool(cfg.data.dev_manifest),
                          stable_layer_norm=bool(self.model.config.do_stable_layer_norm))
        self.normalizer = get_normalizer(cfg.model.lang)
        mc = unwrap(self.model).config
        self.skips = SkipCounter()
        self.train_examples = build_examples(
            cfg.data.train_manifest,
            self.vocab,
            self.normalizer,
            mc.conv_kernel,
            mc.conv_stride,
            cfg.data.min_utt_s,
            cfg.data.max_utt_s,
            self.skips,
        )
        if not self.train_examples:
            hint = (": the manifest holds audio without text; run `asr-transfer pseudo-label` on it first"
                    if set(self.skips.counts) == {UNTRANSCRIBED_SKIP} else "")
            raise UserError(f"no usable training utterances (skipped: {dict(self.skips.counts)}){hint}",
                            path=cfg.data.train_manifest)
        self.num_target = len(self.train_examples)  # replay examples (train.mix) follow the target ones
        self.replay: ReplaySet | None = None
        if mix.share > 0:  # labelled for the head they train: the target one, or the kept one (train.mix.head)
            replay_vocab = self.prepared.kept_vocabs.get(self.heads.replay_head, self.vocab)
            self.replay = ReplaySet.build(mix, replay_vocab, mc, cfg.data.min_utt_s, cfg.data.max_utt_s, self._say)
            self.train_examples += self.replay.examples
        self.bad_audio: set[str] = set()  # uids whose audio failed to decode during the run (skipped from then on)
        self.dev_skips = SkipCounter()
        self.dev_examples: list[Example] = []
        if cfg.data.dev_manifest:
            self.dev_examples = build_examples(
                cfg.data.dev_manifest,
                self.vocab,
                self.normalizer,
                mc.conv_kernel,
                mc.conv_stride,
                0.0,
                math.inf,
                self.dev_skips,
                cfg.data.max_dev_utts,
            )
        durations = [e.duration_s for e in self.train_examples]
        if cfg.train.mix.share > 0:
            self.sampler = MixSampler(durations[: self.num_target], durations[self.num_target:], cfg.data.max_batch_s,
                                      cfg.train.mix.share, cfg.train.seed)
        else:
            self.sampler = BucketSampler(durations, cfg.data.max_batch_s, cfg.train.seed)
        self.rng = np.random.default_rng([cfg.train.seed, 11])
        self.cache = FeatureCache(
            self.run_dir / "cache" / f"rank{self.acc.process_index}", cfg.train.cache_max_mem_mb << 20
        )
        self.dev_cache = FeatureCache(
            self.run_dir / "cache" / f"dev{self.acc.process_index}", cfg.train.cache_max_mem_mb << 20
        )
        self.use_cache = cfg.train.cache and not cfg.data.noise_snr_db and not cfg.data.eq_db  # random per epoch
        self.state = State(config_hash=config_hash(cfg))
        self.state.fingerprints = {"train": fingerprint(cfg.data.train_manifest)}
        if cfg.data.dev_manifest:
            self.state.fingerprints["dev"] = fingerprint(cfg.data.dev_manifest)
        if cfg.train.mix.share > 0:
            self.state.fingerprints["replay"] = fingerprint(cfg.train.mix.manifest)
        # Neither is in the config hash: vocab.json's contents and the source's weights can change under the same path.
        self.state.fingerprints["vocab"] = hashlib.sha256(
            json.dumps(self.vocab, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
        self.state.fingerprints["source"] = model_fingerprint(cfg.model.init_config or cfg.model.source)
        self.log = RunLog(self.run_dir, enabled=self.main, tracking=cfg.train.tracking, config=to_dict(cfg))
        if self.main:
            save_config(cfg, self.run_dir / "config.resolved.json")
            self.log.write_json("head_init.json", self.prepared.head_report)
            from ..provenance import begin_training  # provenance hook: run.json (code, env, data, source) at start

            target = self.train_examples[: self.num_target]
            begin_training(self.run_dir, to_dict(cfg), str(self.acc.device), self.state.fingerprints,
                           sum(e.duration_s for e in target) / 60, len(target), self.resume)
        self.stage_run: StageRun | None = None
        self.resume_parts = None
        if self.resume:
            self._load_resume()

    def _load_resume(self) -> None:
        path = ckpt.latest_valid(self.run_dir / "checkpoints", log=self._say)
        if path is None:
            if ckpt.list_checkpoints(self.run_dir / "checkpoints"):
                raise UserError(f"{self.run_dir}/checkpoints: no checkpoint verifies; cannot resume")
            self._say("no checkpoint found; starting from scratch")
            return
        parts = ckpt.load_checkpoint(path)
        saved = parts["trainer"]
        problems = resume_problems(parts, self.state)
        if problems and not self.allow_inexact:
            raise UserError(
                f"{path}: resume would not be exact: {'; '.join(problems)}. Pass --allow-inexact-resume to continue "
                f"anyway"
            )
        unwrap(self.model).load_state_dict(parts["model"])
        fp, ch = self.state.fingerprints, self.state.config_hash
        self.state = State.from_saved(saved)
        self.state.fingerprints, self.state.config_hash = fp, ch
        self.resume_parts = parts
        self._say(
            f"resuming from {path.name}: stage {self.state.stage}, step {self.state.step}, epoch {self.state.epoch}, "
            f"batch {self.state.batch}"
        )

    def _say(self, msg: str) -> None:
        if self.main:
            from tqdm import tqdm

            tqdm.write(msg)

    # ------------------------------------------------------------------ stage
    def _begin_stage(self, index: int) -> None:
        stage = self.config.stages[index]
        trainable = apply_stage(unwrap(self.model), stage)
        boundary = trainable_boundary(self.model)
        self.cache.clear()
        self.dev_cache.clear()
        cfg = self.config
        masks = MaskOptions(cfg.augment.mask_time_prob, cfg.augment.mask_time_length, cfg.augment.mask_feature_prob,
                            cfg.augment.mask_feature_length, cfg.augment.layerdrop)
        suffix = Suffix(self.model, boundary, masks)
        groups = optimizer_param_groups(unwrap(self.model), stage)
        optimizer = torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay)
        per_epoch = len([b for b in self.sampler.batches(0) if len(b) >= self.acc.num_processes])
        total = stage_total_steps(stage, max(1, per_epoch), cfg.train.grad_accum)
        scheduler = make_scheduler(optimizer, stage, total)
        if self.acc.num_processes > 1:
            suffix = self.acc.prepare_model(suffix)
        self.stage_run = StageRun(optimizer, scheduler, suffix, boundary, total)
        resumed_mid_stage = self.resume_parts is not None and self.resume_parts["trainer"].get("opt_stage") == index
        if self.resume_parts is not None:
            if resumed_mid_stage:
                ckpt.restore_optimizer(optimizer, *self.resume_parts["optimizer"])
                scheduler.load_state_dict(self.resume_parts["scheduler"])
            ckpt.restore_rng(*self.resume_parts["rng"], np_rng=self.rng)
            self.resume_parts = None
        self.state.opt_stage = index
        if not resumed_mid_stage:
            self.state.stage_best, self.state.bad_evals = None, 0
            self.state.stages.append({"name": stage.name, "start_step": self.state.step, "end_step": None,
                                      "trainable_params": int(trainable), "boundary": boundary,
                                      "cached_segments": boundary if self.use_cache else 0, "total_steps": total})
        self.log.write_json("stages.json", self.state.stages)
        self._say(
            f"stage {stage.name}: {trainable:,} trainable parameters, boundary segment "
            f"{boundary}/{num_segments(self.model)},"
            f" lr {stage.lr:g}, {total} steps{' (cap; ends on plateau)' if stage.until_plateau else ''}"
        )

    # ------------------------------------------------------------------ data → features
    def _features(self, examples: list[tuple[int, Example]], epoch: int, boundary: int, dev: bool = False):
        """Boundary features for ``(index, example)`` pairs: cache hits, else decode audio and run the frozen prefix."""
        cfg = self.config
        cache = self.dev_cache if dev else self.cache
        feats = []
        do_norm = getattr(self.prepared.processor.feature_extractor, "do_normalize", True)
        plan, jobs = [], []  # (example, cache key, cached features or None); an audio job per uncached example
        for index, ex in examples:
            speed, snr, noise_seed = (1.0, None, 0) if dev else augmentation_for(
                cfg.train.seed, epoch, index, cfg.data.speed_perturb, cfg.data.noise_snr_db)
            key = f"{ex.key}|{speed:g}"
            cached = cache.get(key) if (self.use_cache or dev) and boundary > 0 else None
            if ex.key in self.bad_audio:
                continue
            if cached is None:
                jobs.append(
                    partial(
                        load_example_audio,
                        ex,
                        speed,
                        snr,
                        np.random.default_rng(noise_seed),
                        0.0 if dev else cfg.data.eq_db,
                    )
                )
            plan.append((ex, key, cached))
        results = self.loader.start(jobs)
        for ex, key, cached in plan:
            if cached is None:
                try:
                    wave = next(results)()
                except AudioError as exc:
                    # Decodes badly (NaN/inf, silence, corrupt past the header): skip it from now on, count it once.
                    self.bad_audio.add(ex.key)
                    (self.dev_skips if dev else self.skips).add(audio_skip_reason(exc), ex.uid, str(exc))
                    self._say(f"warning: skipping {ex.uid}: {exc}")
                    continue
                x = torch.from_numpy(normalize_wave(wave, do_norm)).to(self.acc.device)
                with self.acc.autocast():
                    cached = prefix_features(self.model, x, boundary).float()
                if (self.use_cache or dev) and boundary > 0:
                    cache.put(key, cached)
            feats.append(cached.to(self.acc.device))
        if not feats:
            return None, None
        return pad_features(feats, PAD_QUANTUM_SAMPLES if boundary == 0 else PAD_QUANTUM_FRAMES)

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Greedy dev CER/WER, loss, blank share and entropy (see :mod:`asr_transfer.training.devscore`); {} without
        dev."""

        if not self.dev_examples:
            return {}
        if self.stage_run is None:
            # Resumed after the last stage had finished (killed before final/ was written): nothing trains any more.
            boundary = trainable_boundary(self.model)
            suffix = Suffix(self.model, boundary, MaskOptions())
        else:
            suffix, boundary = self.stage_run.suffix, self.stage_run.boundary
        inner = suffix.module if hasattr(suffix, "module") else suffix  # no DDP hooks outside training
        score = DevScore(self.vocab, self.blank_id)
        for start in range(0, len(self.dev_examples), 8):
            chunk = list(enumerate(self.dev_examples[start : start + 8], start))
            feats, lengths = self._features(chunk, 0, boundary, dev=True)
            chunk = [c for c in chunk if c[1].key not in self.bad_audio]
            if not chunk:
                continue
            with torch.no_grad(), self.acc.autocast():
                logits = inner(feats, lengths, None, training=False).float()
            out_len = output_lengths(self.model, boundary, lengths)
            losses = ctc_loss_per_utt(logits, out_len, [e.labels for _, e in chunk], self.blank_id)
            score.add(torch.log_softmax(logits, -1), out_len, [self.normalizer(e.utt.text) for _, e in chunk], losses)
        return score.result()

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        optimizer, scheduler = self.stage_run.optimizer, self.stage_run.scheduler
        if self.main:
            try:
                ckpt.save_checkpoint(
                    self.run_dir / "checkpoints",
                    self.state.step,
                    unwrap(self.model).state_dict(),
                    optimizer,
                    scheduler,
                    self.state.__dict__,
                    np_rng=self.rng,
                )
                ckpt.prune(self.run_dir / "checkpoints", self.config.train.keep_last)
            except OSError as exc:
                # The previous checkpoints are intact (writes are atomic); report and keep training.
                self._say(
                    f"warning: checkpoint at step {self.state.step} failed ({exc}); previous checkpoints are intact"
                )
                self.log.log({"step": self.state.step, "split": "event", "checkpoint_failed": 1})
        self.acc.wait_for_everyone()

    def save_model(self, name: str, metrics: dict | None = None) -> Path | None:
        if not self.main:
            return None

        record = trained_record(self.config, self.prepared.source, self.normalizer.name, self.vocab, self.state.step)
        return save_trained(self.run_dir / name, unwrap(self.model), self.prepared.processor, record,
                            self._card(metrics), self.config, self.prepared.kept_vocabs)

    def _card(self, metrics: dict | None) -> dict:
        """The model card's sections: the data trained on, the stages run and the dev metrics."""
        data = {"train_manifest": self.config.data.train_manifest, "dev_manifest": self.config.data.dev_manifest,
                "train_minutes": round(sum(e.duration_s for e in self.train_examples) / 60, 2),
                "utterances": self.num_target, "skipped": self.skips.as_dict()}
        if self.config.train.mix.share > 0:
            data["replay"] = self.replay.facts(self.state.replay_share())
        return {"data": data, "stages": self.state.stages, "metrics": metrics or {}}

    # ------------------------------------------------------------------ loop
    def run(self) -> Path:
        self._setup()
        self.t_start = time.time()
        self.cpu_start = time.process_time()
        self.start_step = self.state.step
        while not self.state.done and self.state.stage < len(self.config.stages):
            self._run_stage(self.config.stages[self.state.stage])
            if self.paused:
                self.log.close()
                if self.main:  # provenance hook: close this invocation of run.json as paused
                    finish(self.run_dir, status="paused")
                return self.run_dir / "checkpoints"
        return self._finish()

    def _run_stage(self, stage) -> None:
        """Iterate epochs of length-bucketed batches until the stage ends (or this invocation pauses)."""
        from tqdm import tqdm

        world = self.acc.num_processes
        self._begin_stage(self.state.stage)
        total = self.stage_run.total_steps
        if self.state.step == 0 and self.dev_examples:
            # Step 0: the untrained (zero-shot) point of every learning curve.
            self.log.log({"step": 0, "stage": stage.name, "split": "dev", **self.evaluate()})
        bar = tqdm(
            total=total,
            initial=self.state.stage_step,
            desc=f"stage {stage.name}",
            disable=not self.progress or None,
            unit="step",
            dynamic_ncols=True,
        )
        accum = Accum()
        stage_over = False
        while not stage_over:
            # DDP needs every rank to run every step: drop global batches too small to give each rank an item.
            batches = [b for b in self.sampler.batches(self.state.epoch) if len(b) >= world]
            while self.state.batch < len(batches) and not stage_over:
                self._micro_batch(batches[self.state.batch], accum)
                self.state.batch += 1
                accum.count += 1
                if accum.count < self.config.train.grad_accum:
                    continue
                if self._optimizer_step(accum, stage, bar):
                    stage_over = self._after_step(stage, total, bar)
                accum.reset()
            if not stage_over:
                self.state.epoch += 1
                self.state.batch = 0
        bar.close()

    def _micro_batch(self, batch: list[int], accum: Accum) -> None:
        """Forward + backward of this rank's share of one global batch; gradients accumulate until the step."""

        cfg = self.config
        world, rank = self.acc.num_processes, self.acc.process_index
        suffix, boundary = self.stage_run.suffix, self.stage_run.boundary
        mine = [(i, self.train_examples[i]) for i in batch[rank::world]]
        feats, lengths = self._features(mine, self.state.epoch, boundary)
        mine = [m for m in mine if m[1].key not in self.bad_audio]  # unusable audio: skipped, counted
        weight = 1.0
        if not mine and world > 1:
            # DDP needs every rank in every forward/backward: borrow a usable utterance at weight 0.
            good = [(i, self.train_examples[i]) for i in batch if self.train_examples[i].key not in self.bad_audio]
            if good:
                feats, lengths = self._features(good[:1], self.state.epoch, boundary)
                mine = [m for m in good[:1] if m[1].key not in self.bad_audio]
                weight = 0.0
        for i in batch:  # the seconds trained on, by source (the same count on every rank: the global batch)
            ex = self.train_examples[i]
            if ex.key not in self.bad_audio:
                self.state.seconds["replay" if ex.replay else "target"] += ex.duration_s
        last_micro = accum.count + 1 == cfg.train.grad_accum
        with self.acc.no_sync(suffix) if (world > 1 and not last_micro) else nullcontext():
            loss = None
            if mine:  # empty when every utterance of this micro-batch had unusable audio
                heads = self.heads.names([e for _, e in mine])  # per-row heads with train.mix.head = own
                with self.acc.autocast():
                    outputs = suffix(feats, lengths, self.rng, training=True, heads=heads)
                per_utt = self.heads.loss(outputs, output_lengths(self.model, boundary, lengths),
                                          [e.labels for _, e in mine])
                # Mean over the GLOBAL batch: each rank divides by the global count; DDP averages over ranks.
                loss = weight * per_utt.sum() / len(batch) * world / cfg.train.grad_accum
                self.micro += 1
                if self.nan_every and self.micro % self.nan_every == 0:
                    loss = loss * float("nan")
            # Every rank joins this vote, so one rank's NaN (or empty batch) never desynchronises DDP.
            finite = torch.tensor([float(loss is None or bool(torch.isfinite(loss)))], device=self.acc.device)
            if world > 1:
                finite = self.acc.reduce(finite, "min")
            if finite.item() < 1:
                accum.bad = True
            elif loss is not None:
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                if weight:
                    accum.loss_sum += float(per_utt.detach().sum())
                    accum.n += len(mine)

    def _optimizer_step(self, accum: Accum, stage, bar) -> bool:
        """Clip and apply the accumulated gradients; False (step skipped and counted) on a NaN/inf loss or gradient."""
        cfg = self.config
        optimizer, scheduler = self.stage_run.optimizer, self.stage_run.scheduler
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if self.l2sp is not None and not accum.bad:  # the penalty's gradient, as if it were in the loss
            self.l2sp_value = self.l2sp.add_gradients(unwrap(self.model).named_parameters())
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_norm if cfg.train.clip_norm > 0 else float("inf"))
        if accum.bad or not torch.isfinite(norm):
            # Skip the whole step: a NaN/inf loss or gradient must never reach the weights.
            self.state.nan_skipped += 1
            self.nan_streak += 1
            optimizer.zero_grad(set_to_none=True)
            self.log.log({"step": self.state.step, "split": "event", "nan_skipped": self.state.nan_skipped})
            if self.nan_streak >= MAX_CONSECUTIVE_NAN_STEPS:
                self.log.close()
                raise UserError(
                    f"{self.nan_streak} optimiser steps in a row had a NaN/inf loss or gradient (step "
                    f"{self.state.step}, stage {stage.name}); likely causes: audio with non-finite or huge samples "
                    "(run asr-transfer validate), a source model whose outputs overflow (NaN or huge weights), or a "
                    "learning rate so high the weights overflowed", path=self.run_dir)
            return False
        self.nan_streak = 0
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.stage_step += 1
        bar.update(1)
        if self.state.step % cfg.train.log_every == 0 or self.state.stage_step == 1:
            totals = torch.tensor([accum.loss_sum, float(accum.n)], device=self.acc.device)
            if self.acc.num_processes > 1:  # log the global mean, not rank 0's share
                totals = self.acc.reduce(totals, "sum")
            train_loss = float(totals[0] / totals[1].clamp(min=1))
            bar.set_postfix(loss=f"{train_loss:.3f}")
            entry = {"step": self.state.step, "stage": stage.name, "split": "train", "loss": train_loss,
                     "lr": scheduler.get_last_lr()[-1], "grad_norm": float(norm), "epoch": self.state.epoch}
            if self.config.train.mix.share > 0:
                entry["replay_share"] = self.state.replay_share()  # of the seconds trained on so far
            if self.l2sp_value is not None:
                entry["l2sp_penalty"] = float(self.l2sp_value)
            self.log.log(entry)
        return True

    def _finish(self) -> Path:
        """Final dev evaluation, ``final/`` model, ``train_summary.json`` and the provenance record."""
        cfg = self.config
        self.log.write_json("stages.json", self.state.stages)
        final_metrics = self.evaluate() if self.dev_examples else {}
        out = self.save_model("final", {"dev": final_metrics} if final_metrics else None)
        if self.main:
            for name in ("final", "best"):
                recover_folder_write(self.run_dir / name)
        # CPU seconds of every process of this invocation: cpu_s / wall_s is how many cores the run kept busy.
        cpu = torch.tensor([time.process_time() - self.cpu_start], dtype=torch.float64, device=self.acc.device)
        if self.acc.num_processes > 1:
            cpu = self.acc.reduce(cpu, "sum")
        summary = {
            "steps": self.state.step,
            "wall_s": round(time.time() - self.t_start, 1),
            "cpu_s": round(float(cpu.item()), 1),
            "skipped": self.skips.as_dict(),
            "dev_skipped": self.dev_skips.as_dict(),
            "nan_skipped": self.state.nan_skipped,
            "watchdog_events": self.state.watchdog_events,
            "best_" + cfg.train.selection_metric: self.state.best,
            "final_dev": final_metrics,
            "cache": self.cache.stats(),
            "train_utterances": sum(e.key not in self.bad_audio for e in self.train_examples[: self.num_target]),
            "train_minutes": round(sum(e.duration_s for e in self.train_examples[: self.num_target]) / 60, 3),
            "trained_minutes": {k: round(v / 60, 3) for k, v in self.state.seconds.items()},
            "device": str(self.acc.device),
            "processes": self.acc.num_processes,
        }
        if cfg.train.mix.share > 0:
            summary["mix"] = self.replay.facts(self.state.replay_share())
        if self.l2sp is not None:
            summary["l2sp"] = {"alpha": self.l2sp.alpha, "beta": self.l2sp.beta,
                               "anchored_tensors": len(self.l2sp.anchors),
                               "final_penalty": None if self.l2sp_value is None else float(self.l2sp_value)}
        self.log.write_json("train_summary.json", summary)
        self.log.close()
        if self.main:  # provenance hook: wall time, status and metrics into run.json
            finish(self.run_dir, status="finished", **({"mix": summary["mix"]} if "mix" in summary else {}))
        return out or self.run_dir / "final"

    def _after_step(self, stage, total: int, bar) -> bool:
        """Eval, watchdog, checkpoint and stage-end decisions after an optimiser step. Returns True at stage end."""
        cfg = self.config
        s = self.state
        ended = s.stage_step >= total
        evaluated = None
        if self.dev_examples and (s.step % cfg.train.eval_every == 0 or ended):
            evaluated = self.evaluate()
            metric = evaluated[cfg.train.selection_metric]
            self.log.log({"step": s.step, "stage": stage.name, "split": "dev", **evaluated})
            bar.set_postfix(dev_cer=f"{evaluated['cer']:.3f}")
            verdict = record_evaluation(s, metric, stage, cfg.train.early_stop_patience)
            if verdict.new_best:
                self.save_model("best", {"dev": evaluated, "step": s.step})
            if verdict.plateaued:
                self._say(
                    f"stage {stage.name}: dev {cfg.train.selection_metric} plateaued after {s.bad_evals} evaluations"
                )
                ended = True
            if verdict.stop_run:
                self._say(f"early stopping: no improvement in {s.run_bad_evals} evaluations")
                ended, s.done = True, True
            self._watchdog(evaluated, stage)
        if ended:
            end_stage(s, len(cfg.stages))
        pause = (self.stop_after_steps is not None and s.step - self.start_step >= self.stop_after_steps) or (
            self.time_budget_s is not None and time.time() - self.t_start >= self.time_budget_s)
        if ended or pause or s.step % cfg.train.save_every == 0:
            self.save()
        if pause and not s.done:
            # A time-boxed invocation: checkpoint written, continue later with --resume.
            self.paused = True
            self._say(f"pausing at step {s.step} (checkpoint saved); continue with --resume")
            return True
        return ended

    def _watchdog(self, evaluated: dict, stage) -> None:
        """Blank collapse: the model emits (almost) only blanks on dev after warm-up."""
        cfg = self.config

        warm = stage.warmup_steps
        if warm is None:
            warm = int(stage.warmup_ratio * self.stage_run.total_steps)
        if self.state.stage_step <= warm or not blank_collapse(evaluated, cfg.train.watchdog_blank_share):
            return
        self.state.watchdog_events += 1
        msg = (f"watchdog: the model emits only blanks on dev ({evaluated['blank_share']:.1%} blank frames, entropy "
               f"{evaluated['entropy']:.2f}) at step {self.state.step}")
        optimizer, scheduler = self.stage_run.optimizer, self.stage_run.scheduler
        msg += "; " + watchdog_action(
            cfg.train.watchdog, optimizer, scheduler, unwrap(self.model), self.run_dir / "best"
        )
        self._say(msg)
        self.log.log(
            {"step": self.state.step, "split": "event", "watchdog": 1, "blank_share": evaluated["blank_share"]}
        )


def train(config: TrainConfig, resume: bool = False, allow_inexact_resume: bool = False, progress: bool = True,
          stop_after_steps: int | None = None, time_budget_s: float | None = None) -> Path:
    """Run staged transfer training; returns the ``final/`` model folder (or ``checkpoints/`` when paused early).

    ``stop_after_steps`` / ``time_budget_s`` pause this invocation after a checkpoint; ``resume=True`` continues
    exactly.
    """
    if config.train.processes > 1 and not is_worker():
        return launch(config, resume, allow_inexact_resume, progress, stop_after_steps, time_budget_s)
    return Trainer(config, resume, allow_inexact_resume, progress, stop_after_steps, time_budget_s).run()
