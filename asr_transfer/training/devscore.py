"""Dev-set scoring during training: greedy CER/WER and the blank-collapse watchdog's signals.

Per evaluation it accumulates, over batches of ``(batch, frames, vocab)`` log-probabilities: the CTC loss, greedy
hypotheses against normalised references (jiwer, via :mod:`asr_transfer.metrics`), the share of frames whose argmax is
the blank, and the mean per-frame entropy (nats). A model that has collapsed onto the blank shows a blank share near
1 and low entropy; that is what :func:`blank_collapse` checks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..decode import GreedyDecoder
from ..metrics import error_rates
from ..model.heads import kept_heads
from ..model.record import HEADS_DIR


class DevScore:
    def __init__(self, vocab: dict[str, int], blank_id: int):
        id2tok = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        self.decoder = GreedyDecoder(id2tok, blank_id=blank_id)
        self.blank_id = blank_id
        self.refs: list[str] = []
        self.hyps: list[str] = []
        self.losses: list[float] = []
        self.blank_frames = 0
        self.frames = 0
        self.entropy = 0.0

    def add(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, refs: list[str], losses: torch.Tensor) -> None:
        """``log_probs``: ``(batch, frames, vocab)``; ``out_lengths``: real frames per row; ``refs``: normalised
        text."""
        self.losses.extend(losses.tolist())
        for b, ref in enumerate(refs):
            row = log_probs[b, : int(out_lengths[b])]
            self.hyps.append(self.decoder.decode(row.cpu().numpy()).text)
            self.refs.append(ref)
            self.blank_frames += int((row.argmax(-1) == self.blank_id).sum())
            self.frames += row.shape[0]
            self.entropy += float(-(row.exp() * row).sum())

    def result(self) -> dict:
        rates = error_rates(self.refs, self.hyps)
        return {"loss": float(np.mean(self.losses)) if self.losses else float("nan"), "cer": rates["cer"],
                "wer": rates["wer"], "blank_share": self.blank_frames / max(1, self.frames),
                "entropy": self.entropy / max(1, self.frames), "n": len(self.refs)}


def blank_collapse(evaluated: dict, blank_share_threshold: float) -> bool:
    """True when the model emits (almost) only blanks on dev."""
    return evaluated.get("blank_share", 0.0) >= blank_share_threshold


def watchdog_action(action: str, optimizer, scheduler, model, best_dir) -> str:
    """Act on a blank collapse as configured (``train.watchdog``); returns what was done, for the warning line."""

    if action == "lower-lr":
        scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
        for g in optimizer.param_groups:
            g["lr"] *= 0.5
        return "halving the learning rate"
    if action == "rollback" and (Path(best_dir) / "model.safetensors").is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(best_dir) / "model.safetensors")), strict=False)
        for lang, head in kept_heads(model).items():  # two heads: the kept head's weights are in heads/<lang>/
            saved = load_file(str(Path(best_dir) / HEADS_DIR / lang / "model.safetensors"))
            head.load_state_dict({"weight": saved["lm_head.weight"], "bias": saved["lm_head.bias"]})
        return "rolled back to best/"
    return "check the learning rate and warm-up (train.watchdog = lower-lr or rollback acts on it)"
