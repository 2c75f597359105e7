"""Replay (``train.mix``): part of each epoch's training audio is source-language speech, so the model keeps it.

Joint training on the target language plus a slice of the source language is the simplest defence against
catastrophic forgetting (rehearsal). The replay set is its own manifest, read with the *source* language's normaliser
and mapped through the one target head: the target head of a recipe built with ``vocab.all_letters`` already holds the
English letters; a replay utterance with a letter the head lacks is skipped and the letters are reported. With
``train.mix.head = own`` the replay text is labelled with the kept source head's vocabulary instead
(:mod:`asr_transfer.training.heads`).

Sampling. Each epoch takes ``share / (1 - share)`` times the epoch's target seconds of replay from an endless stream
of replay utterances: pass ``k`` over the replay set is its permutation by ``(seed, k)``, and epoch ``e`` takes the
utterances whose start in the stream falls in ``[e·S, (e+1)·S)`` seconds, so a large replay set is walked through
instead of its first slice being replayed every epoch. The target utterances and that epoch's replay slice are then
length-bucketed together (:class:`~asr_transfer.training.data.BucketSampler`), so batches keep the padded-size bound
of ``data.max_batch_s``. The share therefore holds per epoch; single batches vary around it (the summary records the
share of seconds actually trained on). Everything is a function of ``(seed, epoch)``: the sampler position
``(epoch, batch)`` in a checkpoint is all an exact resume needs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..config import MixArgs
from ..errors import UserError
from ..text import get_normalizer
from .data import BucketSampler, Example, SkipCounter, build_examples

_REPLAY_STREAM = 23  # a constant in the replay stream's seed, so it never equals the target order's (seed, epoch)


class MixSampler:
    """Batches over ``target + replay`` example indices: replay indices are ``len(target) + j``.

    ``share`` (0 < share < 1) is the share of each epoch's audio seconds that comes from the replay set.
    """

    def __init__(self, target_s: Sequence[float], replay_s: Sequence[float], max_batch_s: float, share: float,
                 seed: int = 0, pool_batches: int = 50):
        if not 0 < share < 1:
            raise ValueError(f"share must be in (0, 1), got {share}")
        self.num_target = len(target_s)
        self.replay_s = np.asarray(replay_s, dtype=np.float64)
        self.share = float(share)
        self.seed = int(seed)
        self.bucket = BucketSampler([*target_s, *self.replay_s], max_batch_s, seed, pool_batches)
        self.epoch_replay_s = float(np.sum(target_s)) * share / (1 - share)  # S: replay seconds per epoch

    def replay_indices(self, epoch: int) -> np.ndarray:
        """Union indices of epoch ``epoch``'s slice of the replay stream (a set shorter than S repeats within it)."""
        pass_s = float(self.replay_s.sum())
        if pass_s <= 0 or self.epoch_replay_s <= 0:
            return np.zeros(0, dtype=np.int64)
        lo, hi = epoch * self.epoch_replay_s, (epoch + 1) * self.epoch_replay_s
        picked = []
        for k in range(int(lo // pass_s), int(hi // pass_s) + 1):
            order = np.random.default_rng([self.seed, k, _REPLAY_STREAM]).permutation(len(self.replay_s))
            starts = k * pass_s + np.concatenate([[0.0], np.cumsum(self.replay_s[order])[:-1]])
            picked.append(order[(starts >= lo) & (starts < hi)])
        return np.concatenate(picked) + self.num_target

    def batches(self, epoch: int) -> list[list[int]]:
        subset = np.concatenate([np.arange(self.num_target), self.replay_indices(epoch)])
        return self.bucket.batches(epoch, subset)

    def num_batches(self, epoch: int = 0) -> int:
        return len(self.batches(epoch))


def letters_outside(texts: Sequence[str], vocab: dict[str, int]) -> Counter:
    """Characters of normalised ``texts`` (spaces aside) that ``vocab`` has in neither case, with their counts."""
    known = {t.lower() for t in vocab} | {t.upper() for t in vocab}
    return Counter(c for text in texts for c in text if not c.isspace() and c not in known)


def describe_outside(outside: Counter, skipped: int, total: int) -> str:
    """One line for the log: which letters the head lacks and how many replay utterances that costs."""
    letters = " ".join(f"{c!r} ({n})" for c, n in outside.most_common())
    return (f"train.mix: {skipped} of {total} replay utterances skipped: characters outside the target head: "
            f"{letters} (the head cannot emit them; a target vocabulary holding them, model.vocab, would keep these "
            "utterances)")


@dataclass
class ReplaySet:
    """The replay manifest's training examples and what was skipped building them (train_summary.json, run.json)."""

    mix: MixArgs
    examples: list[Example]
    skips: SkipCounter
    outside: dict[str, int]  # characters outside the head that labels them → count (skipped utterances' text)

    @classmethod
    def build(cls, mix: MixArgs, vocab: dict[str, int], model_config, min_utt_s: float, max_utt_s: float,
              say: Callable[[str], None]) -> "ReplaySet":
        """Read ``mix.manifest`` through ``mix.lang``'s normaliser, labelled with ``vocab`` (the head they train)."""
        skips, oov = SkipCounter(), []
        examples = build_examples(mix.manifest, vocab, get_normalizer(mix.lang), model_config.conv_kernel,
                                  model_config.conv_stride, min_utt_s, max_utt_s, skips, replay=True, oov_texts=oov)
        outside = letters_outside(oov, vocab)
        if oov:
            say("warning: " + describe_outside(outside, len(oov), len(examples) + sum(skips.counts.values())))
        if not examples:
            raise UserError(f"train.mix: no usable replay utterances (skipped: {dict(skips.counts)})",
                            path=mix.manifest)
        return cls(mix, examples, skips, dict(outside.most_common()))

    def facts(self, share_trained: float) -> dict:
        """What train.mix asked for and what the run trained on (train_summary.json, run.json, model card)."""
        return {"manifest": self.mix.manifest, "lang": self.mix.lang, "head": self.mix.head, "share": self.mix.share,
                "share_trained": share_trained, "replay_utterances": len(self.examples),
                "replay_minutes": round(sum(e.duration_s for e in self.examples) / 60, 3),
                "replay_skipped": self.skips.as_dict(), "letters_outside_head": self.outside}
