"""Pseudo-labels: a model's hypotheses for untranscribed audio, each with a confidence, filtered (self-training).

:func:`pseudo_label` runs a model (greedy, or beam + KenLM with ``lm_dir``) over a manifest, usually the
untranscribed lines of ``prepare folder --no-text``, and writes into ``out_dir``:

* ``manifest.jsonl`` — the kept lines, ready for ``train``: ``text`` is the hypothesis; ``pseudo_label: true`` and
  ``pl_confidence`` mark them (the ``untranscribed`` mark is gone: they have text now);
* ``all.jsonl`` — every labelled line with its confidence and ``pl_kept`` (to look at what was dropped, or to
  filter again without decoding again);
* ``summary.json`` — which model (path and weights sha256) and LM (path, sha256, record, decoder settings) made the
  labels, the confidence measure, the filter, kept/dropped counts and minutes, confidence quantiles, the sha256 of
  both manifests, and the lines skipped (unreadable audio, empty hypotheses: never kept).

Confidence (``confidence``):

* ``ctc`` (default): ``exp(log P_ctc(y | x) / |y|)``, the hypothesis's CTC log-likelihood under the acoustic model
  (summed over every alignment, by ``torch.nn.functional.ctc_loss``), per label of ``y`` (letters and word
  delimiters, exactly the labels training will use), as a probability in (0, 1]. It scores the label that will be
  trained on, not one decoder path; dividing by the label count keeps long utterances comparable with short ones
  (blank frames cost almost nothing, so a per-frame mean would mostly measure pauses). With an LM it says how well
  the acoustics support the text the LM chose: a word the LM forced in against the audio lowers it.
* ``decoder``: the decoder's own score per label: greedy, the best path's log-probability; beam + LM, flashlight's
  total (acoustic + ``lm_weight`` × LM + ``word_score`` × words), as Kahn et al. (2020, "Self-training for
  end-to-end speech recognition") filter on. Not a probability; thresholds depend on the LM settings.

Filter: ``min_confidence`` (keep lines at or above it) or ``top_share`` (the most confident share of the labelled
lines, by count; ties by id), or neither (keep every non-empty hypothesis).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .decode import find_lm_files, load_lm_record
from .errors import UserError
from .evaluation import compute_log_probs, decode_options
from .files import atomic_write_json, sha256_file, sha256_files
from .inference import InferenceOptions, as_recognizer
from .manifest import UNTRANSCRIBED, Utterance, is_untranscribed, read_manifest, write_manifest
from .metrics import corpus_rate, score_pairs
from .outdir import check_output_dir
from .vocab import text_to_ids

CONFIDENCES = ("ctc", "decoder")
MANIFEST = "manifest.jsonl"
ALL = "all.jsonl"
SUMMARY = "summary.json"
PSEUDO_LABEL = "pseudo_label"  # manifest key: true on a line whose text a model wrote
CONFIDENCE_KEY = "pl_confidence"
KEPT_KEY = "pl_kept"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class LabelFilter:
    """Which labelled lines to keep: ``min_confidence`` or ``top_share`` (of the labelled lines), or all."""

    min_confidence: float | None = None
    top_share: float | None = None

    def __post_init__(self):
        if self.min_confidence is not None and self.top_share is not None:
            raise UserError("give --min-confidence or --top-share, not both")
        if self.min_confidence is not None and not math.isfinite(self.min_confidence):
            raise UserError(f"--min-confidence must be a finite number, got {self.min_confidence}")
        if self.top_share is not None and not 0 < self.top_share <= 1:
            raise UserError(f"--top-share must be in (0, 1], got {self.top_share}")

    def describe(self) -> dict:
        if self.min_confidence is not None:
            return {"kind": "min_confidence", "value": self.min_confidence}
        if self.top_share is not None:
            return {"kind": "top_share", "value": self.top_share}
        return {"kind": "none"}

    def keep(self, confidences: list[float], ids: list[str]) -> list[bool]:
        """One flag per line; ``confidences`` and ``ids`` are ``(lines,)``."""
        if self.min_confidence is not None:
            return [c >= self.min_confidence for c in confidences]
        if self.top_share is None:
            return [True] * len(confidences)
        n_keep = max(1, round(self.top_share * len(confidences))) if confidences else 0
        order = sorted(range(len(confidences)), key=lambda i: (-confidences[i], ids[i]))
        chosen = set(order[:n_keep])
        return [i in chosen for i in range(len(confidences))]


def ctc_confidence(log_probs: np.ndarray, labels: list[int], blank_id: int) -> float:
    """``exp(log P_ctc(labels | x) / len(labels))``: per-label CTC likelihood in (0, 1]; 0.0 when impossible.

    ``log_probs``: ``(frames, vocab)`` log-softmax; ``labels``: label ids (no blanks).
    """
    import torch

    if not labels or log_probs.shape[0] == 0:
        return 0.0
    lp = torch.from_numpy(np.ascontiguousarray(log_probs, dtype=np.float32)).unsqueeze(1)  # (frames, 1, vocab)
    nll = torch.nn.functional.ctc_loss(lp, torch.tensor([labels]), torch.tensor([lp.shape[0]]),
                                       torch.tensor([len(labels)]), blank=blank_id, reduction="sum")
    value = -float(nll) / len(labels)
    return float(math.exp(value)) if math.isfinite(value) else 0.0


def _weights_sha256(model_dir: str | Path) -> str | None:
    folder = Path(model_dir)
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "config.json"]
    files = [f for f in files if f.is_file()]
    return sha256_files(files).hexdigest() if files else None


def _lm_facts(lm_dir, options) -> dict | None:
    if lm_dir is None:
        return None
    lm_file, lexicon = find_lm_files(lm_dir)
    return {"dir": str(Path(lm_dir).resolve()), "file": lm_file.name, "sha256": sha256_file(lm_file),
            "lexicon_sha256": sha256_file(lexicon) if lexicon else None, "record": load_lm_record(lm_dir),
            "beam_size": options.beam_size, "lm_weight": options.lm_weight, "word_score": options.word_score}


def pseudo_label(
    model,
    manifest,
    out_dir,
    lm_dir=None,
    label_filter: LabelFilter = LabelFilter(),
    confidence: str = "ctc",
    beam_size: int | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> dict:
    """Label every line of ``manifest`` with ``model``'s hypothesis and confidence, filter, write; return the summary.

    ``model``: a model folder, hub id, loaded model or Recognizer. ``lm_dir``: beam search with that KenLM LM
    (``beam_size``/``lm_weight``/``word_score`` of ``None`` keep the decoder's defaults); else greedy. See the module
    docstring for the files written into ``out_dir``, the confidences and the filter.
    """
    from tqdm import tqdm

    if confidence not in CONFIDENCES:
        raise UserError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {confidence!r}")
    utts = read_manifest(manifest)
    if not utts:
        raise UserError("manifest holds no lines to label", path=manifest)
    out = check_output_dir(out_dir, files=(MANIFEST, ALL, SUMMARY), key="--out")
    recognizer = as_recognizer(model, InferenceOptions(device=device, precision=precision))
    options = decode_options("beam" if lm_dir else "greedy", lm_dir, beam_size, lm_weight, word_score)
    decoder = options.build(recognizer.vocab, blank_id=recognizer.blank_id)
    vocab = {tok: i for i, tok in enumerate(recognizer.vocab)}
    items, skipped = compute_log_probs(recognizer, utts)
    labelled: list[tuple[Utterance, str, float]] = []
    for item in tqdm(items, desc="pseudo-label", unit="utt", disable=None if progress else True):
        hyp = decoder.decode(item.log_probs)
        if not hyp.text:
            skipped.append({"id": item.utt.uid, "audio_filepath": item.utt.audio_filepath,
                            "reason": "empty hypothesis"})
            continue
        labels = text_to_ids(hyp.text, vocab)
        if confidence == "ctc":
            score = ctc_confidence(item.log_probs, labels, recognizer.blank_id)
        else:
            score = hyp.score / len(labels)
        labelled.append((item.utt, hyp.text, score))
    keep = label_filter.keep([c for _, _, c in labelled], [u.uid for u, _, _ in labelled])
    rows = []
    for (utt, text, score), kept in zip(labelled, keep):
        extra = {k: v for k, v in utt.extra.items() if k != UNTRANSCRIBED}
        extra.update({PSEUDO_LABEL: True, CONFIDENCE_KEY: round(score, 6)})
        rows.append((replace(utt, text=text, extra=extra), kept))
    all_path = write_manifest(out / ALL, [replace(u, extra={**u.extra, KEPT_KEY: k}) for u, k in rows])
    kept_path = write_manifest(out / MANIFEST, [u for u, k in rows if k])
    summary = _summary(model, recognizer, manifest, utts, rows, skipped, lm_dir, options, confidence, label_filter,
                       kept_path, all_path)
    atomic_write_json(out / SUMMARY, summary)
    return summary


def _summary(model, recognizer, manifest, utts, rows, skipped, lm_dir, options, confidence, label_filter,
             kept_path: Path, all_path: Path) -> dict:
    model_dir = getattr(recognizer.loaded, "path", None) or (str(model) if isinstance(model, (str, Path)) else None)
    scores = np.array([u.extra[CONFIDENCE_KEY] for u, _ in rows], dtype=np.float64)
    kept_s = sum(u.duration for u, k in rows if k)
    dropped_s = sum(u.duration for u, k in rows if not k)
    reasons: dict[str, int] = {}
    for s in skipped:
        key = "empty hypothesis" if s["reason"] == "empty hypothesis" else "unreadable audio"
        reasons[key] = reasons.get(key, 0) + 1
    return {
        "input_manifest": str(Path(manifest).resolve()),
        "input_sha256": sha256_file(manifest),
        "input_lines": len(utts),
        "input_untranscribed": sum(1 for u in utts if is_untranscribed(u)),
        "model": str(Path(model_dir).resolve()) if model_dir and Path(model_dir).is_dir() else model_dir,
        "model_sha256": _weights_sha256(model_dir) if model_dir else None,
        "decoder": "beam" if lm_dir else "greedy",
        "lm": _lm_facts(lm_dir, options),
        "confidence": confidence,
        "filter": label_filter.describe(),
        "labelled": len(rows),
        "kept": sum(1 for _, k in rows if k),
        "dropped": sum(1 for _, k in rows if not k),
        "kept_minutes": round(kept_s / 60, 3),
        "dropped_minutes": round(dropped_s / 60, 3),
        "skipped": reasons,
        "skipped_examples": skipped[:10],
        "confidence_quantiles": ({str(q): float(np.quantile(scores, q)) for q in QUANTILES} if len(scores) else {}),
        "manifest": str(kept_path.resolve()),
        "manifest_sha256": sha256_file(kept_path),
        "all": str(all_path.resolve()),
    }


def format_summary(summary: dict) -> str:
    """A few lines for the CLI."""
    f = summary["filter"]
    rule = "keep all" if f["kind"] == "none" else f"{f['kind']} {f['value']:g}"
    lm = summary["lm"]
    source = f"beam + LM {lm['dir']} (weight {lm['lm_weight']:g}, word score {lm['word_score']:g})" if lm else "greedy"
    q = summary["confidence_quantiles"]
    spread = ", ".join(f"{float(k):.0%} {v:.3f}" for k, v in q.items())
    lines = [f"labelled {summary['labelled']} of {summary['input_lines']} lines with {summary['model']} ({source})",
             f"confidence ({summary['confidence']}) quantiles: {spread or 'n/a'}",
             f"filter {rule}: kept {summary['kept']} ({summary['kept_minutes']:.2f} min), dropped "
             f"{summary['dropped']} ({summary['dropped_minutes']:.2f} min)"]
    if summary["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()))
    lines.append(f"wrote {summary['manifest']} (sha256 {summary['manifest_sha256'][:16]}…)")
    return "\n".join(lines)


def label_accuracy(all_manifest, truth_manifest, normalizer) -> dict:
    """CER/WER of pseudo-labels against the true transcripts (by id), for kept, dropped and all lines.

    Only where the truth is known: a synthetic corpus whose transcripts were withheld (never read by training).
    """
    truth = {u.uid: u.text for u in read_manifest(truth_manifest)}
    groups: dict[str, list[tuple[str, str]]] = {"kept": [], "dropped": [], "all": []}
    for u in read_manifest(all_manifest):
        if u.uid not in truth:
            continue
        pair = (normalizer(truth[u.uid]), normalizer(u.text))
        groups["kept" if u.extra.get(KEPT_KEY) else "dropped"].append(pair)
        groups["all"].append(pair)
    out = {}
    for name, pairs in groups.items():
        scores = score_pairs([r for r, _ in pairs], [h for _, h in pairs])
        out[name] = {"utterances": len(pairs), "cer": corpus_rate(s.chars for s in scores) if scores else None,
                     "wer": corpus_rate(s.words for s in scores) if scores else None}
    return out
