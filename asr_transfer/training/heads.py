"""The training loss with two heads (``train.mix.head = own``): one CTC loss per utterance, through its language's head.

Target utterances are labelled with the target vocabulary and scored through the target head (``lm_head``); replay
utterances are labelled with the kept source head's vocabulary and scored through it (:mod:`asr_transfer.model.heads`).
A batch may hold both: the shared encoder runs once over the batch, each head over its rows. Each utterance's loss is
its CTC loss over its label length (:func:`~asr_transfer.model.forward.ctc_loss_per_utt`), as with one head, so the
batch loss (their sum over the global batch size) is normalised the same way whichever head an utterance went through.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..model.forward import ctc_loss_per_utt
from ..model.heads import TARGET
from .data import Example


@dataclass(frozen=True)
class TrainHeads:
    """Which head each training example goes through, and each head's CTC blank id."""

    blank_ids: dict[str, int]  # head name (TARGET or a kept head's language) → its vocabulary's <pad> id
    replay_head: str = TARGET  # the head replay examples train: TARGET (train.mix.head = shared) or the kept one

    @property
    def two(self) -> bool:
        return self.replay_head != TARGET

    def names(self, examples: Sequence[Example]) -> list[str] | None:
        """One head name per example, or None for a one-head model (its forward then returns one logits tensor)."""
        if not self.two:
            return None
        return [self.replay_head if e.replay else TARGET for e in examples]

    def loss(self, outputs, out_lengths: torch.Tensor, labels: Sequence[Sequence[int]]) -> torch.Tensor:
        """Per-utterance CTC losses ``(batch,)`` in batch order.

        ``outputs``: the ``(batch, frames, vocab)`` logits of a one-head model, or head name → ``(rows, logits)`` from
        :func:`asr_transfer.model.heads.logits_by_head`; ``out_lengths`` ``(batch,)`` frames; ``labels`` per utterance.
        """
        if isinstance(outputs, torch.Tensor):
            return ctc_loss_per_utt(outputs, out_lengths, list(labels), self.blank_ids[TARGET])
        parts, order = [], []
        for name, (rows, logits) in outputs.items():
            idx = rows.tolist()
            parts.append(ctc_loss_per_utt(logits, out_lengths.to(rows.device)[rows], [labels[i] for i in idx],
                                          self.blank_ids[name]))
            order.append(rows)
        losses, rows = torch.cat(parts), torch.cat(order)
        return torch.zeros_like(losses).index_copy(0, rows, losses)
