"""Retention: what adaptation leaves of the source language, measured on a source-language test manifest.

Fine-tuning a recogniser on a new language is known to make it forget the old one; this module gives every recipe a
number for it. A source-test evaluation is an ordinary :func:`asr_transfer.evaluation.evaluate` folder whose summary
carries ``"test_set": "source"`` and ``"system"`` (the name of the system's target-test evaluation). It is scored with
the model's own head — an adapted model keeps its target letters — and the *source* language's normaliser, so a
letter the head lacks (the apostrophe of "don't" for a German head) is an error like any other.

``retention = source CER of the unadapted source model / source CER of the system``: 1.0 keeps the source as it
was, 0.5 doubles its character errors.

A model trained with two heads (``train.mix.head = own``, :mod:`asr_transfer.model.heads`) is scored twice: with its
target head like any system, and with its kept source head (``heads/<lang>/``), in a folder named
``<source-test folder>-<lang>-head`` whose summary also carries ``"head": "<lang>"``; each is a row of the retention
table, its ``head`` column telling them apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .evaluation import evaluate
from .inference import Recognizer, as_recognizer
from .model.record import kept_head_path
from .zeroshot import SOURCE_LANG

SOURCE_TEST_FOLDER = "source-test"  # a source-test evaluation's folder inside an evaluate/baseline --out
SOURCE_TEST_SET = "source"  # summary["test_set"] of a source-test evaluation
UNADAPTED = "raw"  # summary["system"] of the unadapted source model's source-test evaluation
SYNTH_SOURCE_DIR = ("data", "source")  # under a recipe's out folder: the synthetic source corpus (test.jsonl is used)
# The synthetic source corpus is made for its test split only; prepare_synth also wants train/dev audio.
SYNTH_UNUSED_MINUTES = 0.05  # min of train and of dev audio, spoken but never read


def source_summary_extra(system: str) -> dict:
    """What a source-test evaluation of ``system`` adds to its summary."""
    return {"test_set": SOURCE_TEST_SET, "system": system}


def source_eval_name(system: str, head: str | None = None) -> str:
    return f"{system} [source test]" if head is None else f"{system} [source test, {head} head]"


def kept_head_folder(source_folder, lang: str) -> Path:
    """Where the kept ``lang`` head's source-test evaluation goes, beside the target head's ``source_folder``."""
    source_folder = Path(source_folder)
    return source_folder.with_name(f"{source_folder.name}-{lang}-head")


def score_source_test(model, manifest, system: str, out_dir=None, lang: str = SOURCE_LANG, extra: dict | None = None,
                      **options) -> dict:
    """``model`` with its own head, greedy, on the source-language ``manifest`` (text through ``lang``'s normaliser);
    the summary names ``system`` (the target-test evaluation it belongs to). ``options`` go to :func:`evaluate`."""
    return evaluate(model, manifest, out_dir=out_dir, name=source_eval_name(system), lang=lang,
                    extra={**(extra or {}), **source_summary_extra(system)}, **options)


def score_kept_head(model, manifest, system: str, out_dir=None, lang: str = SOURCE_LANG, extra: dict | None = None,
                    **options) -> dict | None:
    """``model``'s kept ``lang`` head (a two-head model's ``heads/<lang>/``) on the source-language ``manifest``, as
    :func:`score_source_test` scores its target head; None when the model has no such head (or is no folder)."""
    loaded = model.loaded if isinstance(model, Recognizer) else model
    folder = kept_head_path(loaded if isinstance(loaded, (str, Path)) else getattr(loaded, "path", None), lang)
    if folder is None:
        return None
    model = as_recognizer(str(folder), model.options) if isinstance(model, Recognizer) else folder
    return evaluate(model, manifest, out_dir=out_dir, name=source_eval_name(system, lang), lang=lang,
                    extra={**(extra or {}), **source_summary_extra(system), "head": lang}, **options)


def is_source_eval(summary: dict) -> bool:
    return summary.get("test_set") == SOURCE_TEST_SET


@dataclass(frozen=True)
class RetentionRow:
    system: str
    target: dict | None  # the target-test summary (None when that evaluation is not among the inputs)
    source: dict  # the source-test summary
    retention: float | None  # source CER of the unadapted model / this one's; None without the unadapted one

    @property
    def head(self) -> str:
        """Which head read the source test: ``own`` (the model's, the target head of an adapted model) or
        ``kept <lang>`` (a two-head model's kept source head)."""
        kept = self.source.get("head")
        return f"kept {kept}" if kept else "own"

    @property
    def label(self) -> str:
        """The system, with the head when it is a kept one: unique per row (the report's ``data-system``)."""
        return self.system if self.head == "own" else f"{self.system} ({self.head} head)"

    def cells(self) -> dict:
        t = self.target or {}
        return {"system": self.system, "head": self.head, "target_wer": t.get("wer"),
                "target_wer_ci95": t.get("wer_ci95"), "target_cer": t.get("cer"), "target_cer_ci95": t.get("cer_ci95"),
                "source_wer": self.source.get("wer"),
                "source_wer_ci95": self.source.get("wer_ci95"), "source_cer": self.source.get("cer"),
                "source_cer_ci95": self.source.get("cer_ci95"), "retention": self.retention}


def retention(reference_cer, cer) -> float | None:
    """``reference_cer / cer``; None when either is missing or not finite, inf when the system makes no errors."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (reference_cer, cer)):
        return None
    return math.inf if cer == 0 else reference_cer / cer


def retention_rows(summaries: list[dict]) -> list[RetentionRow]:
    """One row per source-test summary, in input order; targets are found by name among the other summaries."""
    sources = [s for s in summaries if is_source_eval(s)]
    targets = {s.get("name"): s for s in summaries if not is_source_eval(s)}
    unadapted = next((s for s in sources if s.get("system") == UNADAPTED), None)
    ref = unadapted.get("cer") if unadapted else None
    return [RetentionRow(str(s.get("system")), targets.get(s.get("system")), s, retention(ref, s.get("cer")))
            for s in sources]


def synth_source_test(out: Path) -> Path:
    """The synthetic source test manifest of a recipe whose out folder is ``out``."""
    return Path(out).joinpath(*SYNTH_SOURCE_DIR, "test.jsonl")
