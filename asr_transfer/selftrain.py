"""Self-training data: an untranscribed pool cut from a synthetic train set, and the labelled + pseudo-labelled mix.

Self-training (Kahn et al., 2020; Xu et al., 2020, "Iterative pseudo-labeling") labels untranscribed audio with the
supervised model (+ LM), keeps the confident share (:mod:`asr_transfer.pseudolabel`) and continues training on the
labelled and the kept pseudo-labelled audio together. The recipe's stage 6 runs it; these are its data steps.

* :func:`split_pool`: a synthetic train manifest built for ``labelled + untranscribed`` minutes is cut into its
  first ``labelled`` minutes (exactly the train set a corpus of that size holds: synthetic train sets of different
  sizes are prefixes of each other) and the rest, whose text is withheld: written as untranscribed lines, with the
  true text kept apart in a truth manifest that only scores the pseudo-labels, never trains.
* :func:`mix`: the labelled lines ``oversample`` times (copies get ids ``<id>#copy<k>``) plus the pseudo-labelled
  ones, as one training manifest. The labelled part is small and right; repeating it keeps the pseudo-labels'
  errors from dominating the gradient.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .errors import UserError
from .manifest import UNTRANSCRIBED, read_manifest, write_manifest

COPY_SUFFIX = "#copy"


def split_pool(train_manifest: str | Path, labelled_s: float, untranscribed_out: str | Path,
               truth_out: str | Path) -> dict:
    """Keep the first ``labelled_s`` seconds of ``train_manifest`` (in place) and move the rest into an untranscribed
    manifest (``untranscribed_out``; true text in ``truth_out``). Returns minutes and line counts of both parts.

    The cut follows the synthesiser's own rule: lines are taken until they hold ``>= labelled_s`` (at least one).
    Resumable: the pool is written before the train manifest is cut, and a train manifest that shares no line with
    an existing truth manifest is taken as cut already.
    """
    utts = read_manifest(train_manifest)
    if Path(truth_out).is_file() and Path(untranscribed_out).is_file():
        truth = read_manifest(truth_out)
        if not {u.uid for u in truth} & {u.uid for u in utts}:
            return _facts(utts, truth)
    total_s, cut = 0.0, 0
    while cut < len(utts) and (total_s < labelled_s or cut == 0):
        total_s += utts[cut].duration
        cut += 1
    labelled, rest = utts[:cut], utts[cut:]
    if not rest:
        raise UserError(f"nothing left after the first {labelled_s / 60:.2f} labelled minutes to withhold",
                        path=train_manifest)
    write_manifest(truth_out, rest)
    write_manifest(untranscribed_out, [replace(u, text="", extra={**u.extra, UNTRANSCRIBED: True}) for u in rest])
    write_manifest(train_manifest, labelled)
    return _facts(labelled, rest)


def _facts(labelled, rest) -> dict:
    return {name: {"utterances": len(part), "minutes": round(sum(u.duration for u in part) / 60, 3)}
            for name, part in (("labelled", labelled), ("untranscribed", rest))}


def mix(labelled: str | Path, pseudo: str | Path, out: str | Path, oversample: int) -> dict:
    """Write ``oversample`` copies of ``labelled`` plus ``pseudo`` into ``out``; returns the minutes of each part."""
    if oversample < 1:
        raise UserError(f"oversample must be >= 1, got {oversample}")
    gold = read_manifest(labelled)
    kept = read_manifest(pseudo)
    copies = [u if k == 0 else replace(u, id=f"{u.uid}{COPY_SUFFIX}{k}") for k in range(oversample) for u in gold]
    ids = {u.uid for u in copies}
    clash = next((u.uid for u in kept if u.uid in ids), None)
    if clash is not None:
        raise UserError(f"pseudo-labelled id '{clash}' is also a labelled id; the two sets must not overlap",
                        path=pseudo)
    write_manifest(out, copies + kept)
    gold_min = sum(u.duration for u in gold) / 60
    pseudo_min = sum(u.duration for u in kept) / 60
    return {"labelled_minutes": round(gold_min, 3), "oversample": oversample,
            "labelled_minutes_seen": round(gold_min * oversample, 3), "pseudo_minutes": round(pseudo_min, 3),
            "pseudo_utterances": len(kept), "labelled_share": round(gold_min * oversample /
                                                                    max(gold_min * oversample + pseudo_min, 1e-9), 3)}
