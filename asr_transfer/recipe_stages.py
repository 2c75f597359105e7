"""The numbered stages of a recipe (see :mod:`asr_transfer.recipe`); each is ``fn(runner, resume) -> result dict``.

Every stage reads only files written by the stages it names as dependencies and writes only into the folders it
owns under ``<out>``::

    data/      0  train/dev/test.jsonl (+ wavs/ for synthetic speech)
    validate/  1  <split>.json per split (ValidationReport.to_dict)
    lang/      2  vocab.json            lm/  2  lm.arpa, lexicon.txt, lm.json
    baseline/  3  raw/, zero-shot/ (+ zero-shot-lm/, zero-shot-lm-tune/ with the LM) evaluations
    train/     4  the transfer run folder   control/  4  the from-scratch control's run folder
    eval/      5  adapted-greedy/, adapted-lm/, control-greedy/, control-lm/ (+ adapted-tune/ with eval.tune_lm)
    selftrain/ 6  round-N/{labels/, train.jsonl, run/}, eval/self-trained-greedy/, -lm/ (stage off by default)
    report/    7  report.html, report.md, figures/

With ``selftrain.enabled`` a synthetic stage 0 also writes ``untranscribed.jsonl`` (train voices, text withheld) and
``untranscribed-truth.jsonl`` (its text, read only to score the pseudo-labels). Stage 6 came last of all; the report
moved from 6 to 7 (see :mod:`asr_transfer.recipe` for old output folders).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .corpora.commonvoice import prepare_commonvoice
from .corpora.synth import DEFAULT_EVAL_FRACTION, DEFAULT_EVAL_MAX_MINUTES, prepare_synth
from .corpora.textsource import default_text_files, extract_sentences
from .errors import UserError
from .evaluation import baseline, evaluate, result_line, tune_lm
from .files import read_json_or
from .inference import InferenceOptions, as_recognizer
from .lm import build_lm
from .manifest import is_marked, read_manifest, write_manifest
from .provenance import update_record
from .pseudolabel import LabelFilter, format_summary, label_accuracy, pseudo_label
from .report import build_report
from .selftrain import mix, split_pool
from .retention import (
    SOURCE_TEST_FOLDER,
    SYNTH_SOURCE_DIR,
    SYNTH_UNUSED_MINUTES,
    UNADAPTED,
    is_source_eval,
    kept_head_folder,
    retention_rows,
    score_kept_head,
    score_source_test,
    source_eval_name,
    synth_source_test,
)
from .text import get_normalizer
from .validate import validate_manifest
from .vocab import build_vocab, save_vocab
from .zeroshot import FOLDER as ZERO_SHOT_LM_FOLDER
from .zeroshot import SOURCE_LANG, write_spelled_lexicon

SPLITS = ("train", "dev", "test")
CORPUS_TRAIN = "train-corpus"  # data/train-corpus.jsonl: the corpus's own train split when data.train_manifest is set
UNTRANSCRIBED = "untranscribed"  # data/untranscribed.jsonl: the synthetic self-training pool, text withheld
TRUTH = "untranscribed-truth"  # its true text: scores the pseudo-labels, never trains
SELF_TRAINED = "self-trained"
EXPORTED = "adapted-onnx-int8"  # eval/<this>-greedy, -lm, -beam: the adapted model's ONNX export, int8 (export.onnx)
EXPORTED_NAME = "adapted, ONNX int8"


@dataclass(frozen=True)
class StageSpec:
    number: int
    name: str
    deps: tuple[int, ...]
    keys: tuple[str, ...]  # config keys (dotted) the stage's outputs depend on
    outputs: tuple[str, ...]  # folders under <out> the stage owns (cleared before it reruns)
    fn: Callable
    enabled: Callable = field(default=lambda cfg: True)
    needs_source: bool = False  # loads the source model (checked before any stage runs)
    keys_when: Callable = field(default=lambda cfg: ())  # more config keys, depending on the config (cfg -> tuple)


# ------------------------------------------------------------------------------------------------- 0 data
def stage_data(r, resume: bool = False) -> dict:
    cfg, d = r.config, r.config.data
    out = r.path("data")
    source_test = source_test_manifest(r)
    if d.source_test and not source_test.is_file():  # before minutes of synthesis or import
        raise UserError("data.source_test: manifest not found", path=source_test)
    if d.source_train and not Path(d.source_train).expanduser().is_file():
        raise UserError("data.source_train: manifest not found", path=d.source_train)
    if d.train_manifest:
        given_train = read_manifest(Path(d.train_manifest).expanduser())  # bad lines fail before minutes of synthesis
    if d.kind == "synth":
        pool_minutes = cfg.selftrain.untranscribed_minutes if cfg.selftrain.enabled else 0.0
        # dev/test as a corpus of d.minutes would hold them (their default is a share of the train minutes).
        eval_default = round(min(d.minutes * DEFAULT_EVAL_FRACTION, DEFAULT_EVAL_MAX_MINUTES), 4)
        prepare_synth(cfg.lang, out, d.minutes + pool_minutes, seed=d.seed, text_files=list(d.text_files) or None,
                      voice_set=d.voice_set, snr_db=d.snr_db, jobs=d.jobs,
                      dev_minutes=eval_default if d.dev_minutes is None else d.dev_minutes,
                      test_minutes=eval_default if d.test_minutes is None else d.test_minutes)
        if pool_minutes:
            parts = split_pool(r.manifest("train"), d.minutes * 60, r.manifest(UNTRANSCRIBED), r.manifest(TRUTH))
            r.log(f"self-training pool: {parts['untranscribed']['minutes']:.1f} min of train-voice audio, text "
                  f"withheld ({r.manifest(UNTRANSCRIBED)}); labelled train {parts['labelled']['minutes']:.1f} min")
        synth_test = d.source_test is None and d.source_test_minutes
        synth_train = d.source_train is None and d.source_train_minutes
        if synth_test or synth_train:
            # English by the held-out voices (test, for retention) and by the source model's training voices (train,
            # the replay set of train.mix). Test sentences are dealt out first from the shuffled default text, train
            # sentences after dev's, so the two never share a sentence, and the test set is the same whatever the
            # train minutes. With the shipped source's text and seed (0) the test sentences should fall among its own
            # held-out test sentences (not checked here: the source's corpus is not shipped).
            prepare_synth(SOURCE_LANG, r.path(*SYNTH_SOURCE_DIR), d.source_train_minutes or SYNTH_UNUSED_MINUTES,
                          seed=d.seed, voice_set="source", snr_db=d.snr_db, dev_minutes=SYNTH_UNUSED_MINUTES,
                          test_minutes=d.source_test_minutes or SYNTH_UNUSED_MINUTES, jobs=d.jobs)
    else:
        cv_root = r.stage_inputs(0)["config"]["cv_root"]  # --cv-root, or the folder of the last import
        missing = [s for s in SPLITS if s not in d.cv_splits]
        if missing:
            raise UserError(f"data.cv_splits must include {', '.join(missing)} (the recipe trains, tunes and tests)")
        summary = prepare_commonvoice(cv_root, out, cfg.lang, splits=d.cv_splits, min_duration_s=d.min_duration_s,
                                      max_duration_s=d.max_duration_s)
        r.log(summary.format())
        if d.train_minutes is not None:
            _subset_train(r.manifest("train"), d.train_minutes * 60, d.seed, r.log)
    if d.train_manifest:
        r.manifest("train").replace(r.manifest(CORPUS_TRAIN))
        write_manifest(r.manifest("train"), given_train, relative=False)
    facts = {split: _split_facts(r.manifest(split)) for split in SPLITS}
    if d.train_manifest:
        facts["train"]["from"] = str(Path(d.train_manifest).expanduser().resolve())
        facts[CORPUS_TRAIN] = _split_facts(r.manifest(CORPUS_TRAIN))
        t = facts["train"]
        r.log(f"train: {t['utterances']} lines, {t['minutes']:.1f} min from data.train_manifest "
              f"({t.get('marked', 0)} marked by align, {t.get('marked_minutes', 0):.1f} min: training skips them); "
              f"the corpus's own train split ({facts[CORPUS_TRAIN]['minutes']:.1f} min) is kept as "
              f"{r.manifest(CORPUS_TRAIN)}, not trained on")
    if r.manifest(UNTRANSCRIBED).is_file():
        facts[UNTRANSCRIBED] = _split_facts(r.manifest(UNTRANSCRIBED))
    if source_test is not None:
        facts["source_test"] = _split_facts(source_test)
    source_train = source_train_manifest(r)
    if source_train is not None:
        facts["source_train"] = _split_facts(source_train)
    return facts


def replay_changes(r) -> dict:
    """The ``train.mix.manifest`` change every training run of the recipe gets when it replays source speech."""
    return {"train.mix.manifest": str(source_train_manifest(r))} if r.config.replays else {}


def from_scratch_changes(source, stage: dict) -> dict:
    """The changes that make a recipe's train table a from-scratch run of one ``stage`` (the control, curve points).

    Such a run has no source weights for L2-SP to pull toward, nor a source head to keep (``train.mix.head``):
    replay goes through its one head.
    """
    return {"model.source": source, "model.from_scratch": True, "stages": [stage], "train.l2sp.alpha": 0.0,
            "train.mix.head": "shared"}


def source_train_manifest(r) -> Path | None:
    """The source-language replay manifest: data.source_train, else stage 0's synthetic one, else None."""
    d = r.config.data
    if d.source_train:
        return Path(d.source_train).expanduser().resolve()
    if d.kind == "synth" and d.source_train_minutes:
        return r.path(*SYNTH_SOURCE_DIR, "train.jsonl")
    return None


def source_test_manifest(r) -> Path | None:
    """The source-language test manifest: data.source_test, else the synthetic one of stage 0, else None."""
    d = r.config.data
    if d.source_test:
        return Path(d.source_test).expanduser().resolve()
    if d.kind == "synth" and d.source_test_minutes:
        return synth_source_test(r.out)
    return None


def _score_source_test(r, model, system: str, out_dir: Path) -> dict | None:
    """``model`` (its own head) on the source test, English text through the source normaliser; None without one."""
    from .evaluation import result_line

    manifest = source_test_manifest(r)
    if manifest is None:
        return None
    e = r.config.eval
    s = score_source_test(model, manifest, system, out_dir, max_utts=e.max_utts, device=e.device,
                          precision=e.precision, extra={"recipe": r.name})
    r.log(result_line(s))
    return {"wer": s["wer"], "cer": s["cer"]}


def _score_kept_head(r, model, system: str, source_dir: Path) -> dict | None:
    """A two-head ``model``'s kept source head on the source test, beside the ``source_dir`` evaluation; None
    without a source test or a kept head."""
    from .evaluation import result_line

    manifest = source_test_manifest(r)
    if manifest is None:
        return None
    e = r.config.eval
    s = score_kept_head(model, manifest, system, kept_head_folder(source_dir, SOURCE_LANG), max_utts=e.max_utts,
                        device=e.device, precision=e.precision, extra={"recipe": r.name})
    if s is None:
        return None
    r.log(result_line(s))
    return {"wer": s["wer"], "cer": s["cer"]}


def _split_facts(path: Path) -> dict:
    """Utterances, minutes and speakers of a split; with segments ``align`` marked, those too (training skips them)."""
    utts = read_manifest(path)
    facts = {"utterances": len(utts), "minutes": round(sum(u.duration for u in utts) / 60, 3),
             "speakers": len({u.speaker for u in utts if u.speaker})}
    marked = [u for u in utts if is_marked(u)]
    if marked:
        facts.update(marked=len(marked), marked_minutes=round(sum(u.duration for u in marked) / 60, 3))
    return facts


def _subset_train(path: Path, budget_s: float, seed: int, log) -> None:
    """Keep a seeded random subset of whole utterances about ``budget_s`` long; the full list stays in
    train_full.jsonl."""
    import numpy as np

    utts = read_manifest(path)
    path.replace(path.with_name("train_full.jsonl"))
    order = np.random.default_rng(seed).permutation(len(utts))
    keep, total = set(), 0.0
    for i in order:
        if total >= budget_s:
            break
        keep.add(int(i))
        total += utts[i].duration
    write_manifest(path, [u for i, u in enumerate(utts) if i in keep])
    log(f"train subset: {len(keep)} of {len(utts)} utterances, {total / 60:.1f} of "
        f"{sum(u.duration for u in utts) / 60:.1f} minutes (data.train_minutes, seed {seed})")


# ------------------------------------------------------------------------------------------------- 1 validate
def stage_validate(r, resume: bool = False) -> dict:
    source = Path(r.source)
    # The source's config.json gives the CTC frame rate; its English vocab.json must not be used for the OOV check.
    model_config = source / "config.json" if (source / "config.json").is_file() else None
    result, failed = {}, []
    for split in SPLITS:
        report = validate_manifest(r.manifest(split), lang=r.config.lang, model_config=model_config)
        r.log(f"{split}:\n{report.format(max_problems=10)}")
        out = r.path("validate", f"{split}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        result[split] = {
            "utterances": report.utterances,
            "errors": len(report.errors),
            "warnings": len(report.warnings),
        }
        if report.errors:
            failed.append(f"{split}: {len(report.errors)} errors ({', '.join(report.by_kind())})")
    if failed:
        raise UserError(f"validation failed: {'; '.join(failed)}; details in {r.path('validate')}; fix the data "
                        "(or the data settings) and rerun from --stage 0")
    return result


# ------------------------------------------------------------------------------------------------- 2 vocab + LM
def stage_lang(r, resume: bool = False) -> dict:
    cfg = r.config
    vocab = build_vocab([u.text for u in read_manifest(r.manifest("train"))], cfg.lang,
                        min_count=cfg.vocab.min_count, all_letters=cfg.vocab.all_letters)
    vocab_path = save_vocab(vocab, r.path("lang", "vocab.json"))
    letters = "".join(t for t in vocab if len(t) == 1 and t != "|")
    r.log(f"vocab: {len(vocab)} tokens ({letters}) -> {vocab_path}"
          + (f"; left out (rare): {''.join(vocab.rare)}" if vocab.rare else "")
          + (f"; unseen in train: {''.join(vocab.unseen)}" if vocab.unseen else ""))
    result = {"vocab_size": len(vocab), "letters": letters, "unseen": "".join(vocab.unseen)}
    if cfg.lm.enabled:
        files = [Path(p) for p in cfg.lm.text_files] or default_text_files(cfg.lang)
        held_out = [r.manifest("dev"), r.manifest("test")]
        min_words = max(cfg.lm.order, 4)
        text, dropped = _text_without_pieces_of(files, held_out, cfg.lang, min_words, r.path("lm", "text.txt"))
        r.log(f"LM text: dropped {dropped} sentence(s) that are pieces (>= {min_words} words) of a dev/test transcript")
        if cfg.lm.include_train_text:
            text.append(r.manifest("train"))
        # build_lm drops sentences equal to or containing a dev/test transcript; the pieces went above. A synthetic
        # corpus speaks sentences of this very text, so without both the LM would know the test sentences.
        build_lm(text, cfg.lang, order=cfg.lm.order, exclude_manifests=held_out, out_dir=r.path("lm"),
                 vocab=vocab_path, prune=cfg.lm.prune, log=r.log)
        record = json.loads(r.path("lm", "lm.json").read_text(encoding="utf-8"))
        result["lm"] = {k: record[k] for k in ("sentences_used", "sentences_excluded", "unique_words", "ngram_counts")}
        result["lm"]["sentences_dropped_as_pieces"] = dropped
    return result


def _text_without_pieces_of(files, manifests, lang: str, min_words: int, out: Path) -> tuple[list[Path], int]:
    """The sentences of ``files`` (one per line, normalised) minus runs of >= ``min_words`` words of a transcript.

    Sentences come from :func:`corpora.textsource.extract_sentences` (paragraph-aware: fortunes and man pages wrap
    sentences over lines), the same splitting the synthetic corpus uses, so a dev/test sentence reappears here as
    itself and ``build_lm`` excludes it. Sentences that are only a piece of a transcript (a test utterance spoken
    from two short sentences) are dropped here by lookup in the set of all word runs of the dev/test transcripts
    (about n²/2 per n-word transcript). ``.jsonl`` files pass through. Returns ``(files for build_lm, dropped)``.
    """

    normalize = get_normalizer(lang)
    runs: set[str] = set()
    for manifest in manifests:
        for utt in read_manifest(manifest):
            words = normalize(utt.text).split()
            runs.update(" ".join(words[i:j]) for i in range(len(words)) for j in range(i + min_words, len(words) + 1))
    text = [Path(p) for p in files if Path(p).suffix != ".jsonl"]
    sentences = extract_sentences(lang, text, min_words=1, max_words=10**6, max_chars=10**9) if text else []
    kept = [s for s in sentences if s not in runs]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(s + "\n" for s in kept), encoding="utf-8")
    return [out, *(Path(p) for p in files if Path(p).suffix == ".jsonl")], len(sentences) - len(kept)


# ------------------------------------------------------------------------------------------------- 3 baseline
def _zero_shot_lm_on(cfg) -> bool:
    return cfg.lm.enabled and cfg.baseline.lm


def stage_baseline(r, resume: bool = False) -> dict:
    cfg, e, b = r.config, r.config.eval, r.config.baseline
    lm = {}
    if _zero_shot_lm_on(cfg):
        # LM weight and word bonus for the English head are chosen on dev, never on test (the test decode then
        # builds the same lexicon again in baseline/zero-shot-lm/).
        rec = as_recognizer(r.source, InferenceOptions(device=e.device, precision=e.precision))
        tune_dir = r.path("baseline", f"{ZERO_SHOT_LM_FOLDER}-tune")
        lexicon = write_spelled_lexicon(r.path("lm"), rec.vocab, tune_dir / "lexicon.txt")
        tuned = tune_lm(rec, r.manifest("dev"), r.path("lm"), b.alphas, b.betas, out_dir=tune_dir, lang=cfg.lang,
                        beam_size=e.beam_size, lexicon=tune_dir / "lexicon.txt", select="cer")
        best = tuned["best"]
        r.log(f"zero-shot + LM: lexicon of {len(lexicon.lines)} words ({lexicon.respelled} respelled, "
              f"{len(lexicon.unspellable)} unspellable); tuned on dev: lm_weight {best['lm_weight']:g}, word_score "
              f"{best['word_score']:g} (dev CER {100 * best['cer']:.1f}%, WER {100 * best['wer']:.1f}%)")
        lm = dict(lm_dir=r.path("lm"), beam_size=e.beam_size, lm_weight=best["lm_weight"],
                  word_score=best["word_score"])
    # The source as a path (not the recognizer above) keeps the baseline's run.json reproducible.
    results = baseline(r.source, r.manifest("test"), target_vocab=r.path("lang", "vocab.json"), lang=cfg.lang,
                       out_dir=r.path("baseline"), device=e.device, precision=e.precision, max_utts=e.max_utts, **lm)
    for summary in results.values():
        r.log(result_line(summary))
    out = {s["name"]: {"wer": s["wer"], "cer": s["cer"]} for s in results.values()}
    source = _score_source_test(r, r.source, UNADAPTED, r.path("baseline", SOURCE_TEST_FOLDER))
    if source is not None:
        out[source_eval_name(UNADAPTED)] = source
    return out


# ------------------------------------------------------------------------------------------------- 4 train
def train_once(r, label: str, config, inputs: dict) -> dict:
    """Train ``config`` unless its run folder already finished with the same inputs; resume an interrupted one.

    Stage 4 holds two runs; each keeps its own ``recipe-run.json`` so that changing only the control's settings
    does not retrain the transfer run (and vice versa).
    """

    run_dir = Path(config.train.output_dir)
    digest = r.digest(inputs)
    same = not r.force and read_json_or(run_dir / "recipe-run.json", {}).get("hash") == digest
    if same and (run_dir / "train_summary.json").is_file():
        r.log(f"{label}: finished earlier with the same inputs; reusing {run_dir}")
    else:
        resume = same and any((run_dir / "checkpoints").glob("step-*"))
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            (run_dir / "recipe-run.json").write_text(json.dumps({"hash": digest, "inputs": inputs}, default=str) + "\n",
                                                     encoding="utf-8")
        from .training.loop import train  # torch, ~1 s: imported by the stages that train, not by `recipe --help`

        train(config, resume=resume, progress=r.progress)
    summary = read_json_or(run_dir / "train_summary.json", {})
    wall, cpu = summary.get("wall_s") or 0, summary.get("cpu_s")
    busy = f" (CPU {cpu:.0f} s: {cpu / wall:.2f} cores busy)" if cpu and wall else ""
    r.log(f"{label}: {summary.get('steps')} steps in {wall:.0f} s{busy}; final dev {_dev_line(summary)}")
    return summary


def stage_train(r, resume: bool = False) -> dict:
    cfg = r.config
    common = (r.manifest("train"), r.manifest("dev"), r.path("lang", "vocab.json"))
    source = r.source
    upstream = r.stage_inputs(4)["deps"]
    replay = replay_changes(r)
    config = cfg.train_config(*common, r.path("train"), **{"model.source": source, **replay})
    if replay:
        r.log(f"replay: {config.train.mix.share:.0%} of the training audio seconds from {config.train.mix.manifest}")
    inputs = {"train": cfg.train_inputs(), "lang": cfg.lang, "source": cfg.source,
              "source_weights": r.source_digest(), "deps": upstream}
    summary = train_once(r, "transfer", config, inputs)
    result = {"transfer": _run_facts(summary)}
    if cfg.control.enabled:
        c = cfg.control
        steps = c.steps or max(1, int(summary["steps"]))
        stage = {"name": "scratch", "train": list(c.groups), "lr": c.lr, "steps": steps, "warmup_ratio": c.warmup_ratio}
        changes = {**from_scratch_changes(source, stage), **replay}  # replay it keeps: the same data
        control = cfg.train_config(*common, r.path("control"), **changes)
        r.log(f"control: from scratch (same architecture, random weights, same data), {steps} steps, lr {c.lr:g}, "
              f"training {', '.join(c.groups)}")
        inputs = {**inputs, "train": cfg.train_inputs(**{**changes, "model.source": ""})}
        result["control"] = _run_facts(train_once(r, "control", control, inputs))
    return result


def _run_facts(summary: dict) -> dict:
    keys = ("steps", "wall_s", "cpu_s", "train_minutes", "train_utterances", "final_dev", "device", "processes")
    return {k: summary.get(k) for k in keys}


def _dev_line(summary: dict) -> str:
    dev = summary.get("final_dev") or {}
    if "cer" not in dev:
        return "n/a"
    return f"CER {100 * dev['cer']:.1f}% WER {100 * dev['wer']:.1f}%"


# ------------------------------------------------------------------------------------------------- 5 evaluate
def trained_model_dir(run_dir: Path, which: str) -> Path:
    """The model a later stage scores: ``best/`` when ``which`` is "best" and the run saved one, else ``final/``."""
    best = run_dir / "best"
    return best if which == "best" and (best / "config.json").is_file() else run_dir / "final"


def stage_evaluate(r, resume: bool = False) -> dict:
    systems = [("adapted", r.path("train"))]
    if r.config.control.enabled:
        systems.append(("control", r.path("control")))
    result = {}
    for label, run_dir in systems:
        result.update(_evaluate_system(r, label, trained_model_dir(run_dir, r.config.eval.model)))
    if r.config.export.onnx:
        result.update(_evaluate_export(r, trained_model_dir(r.path("train"), r.config.eval.model), result))
    return result


def _evaluate_export(r, model_dir: Path, scored: dict) -> dict:
    """Export ``model_dir`` to ``model_dir/onnx`` and score its int8 model on test like ``model_dir``: greedy, and beam
    + LM at the weights ``model_dir`` was decoded with (tuned on dev for it), as a deployment would reuse them."""
    from .onnx_export import export_onnx  # torch, and ONNX's exporter: only when the recipe asks for an export

    e = r.config.eval
    folder = export_onnx(model_dir)
    r.log(f"ONNX export: {folder} (transcribe --model {model_dir} now runs it on a CPU)")
    rec = as_recognizer(str(folder), InferenceOptions(device="cpu", precision="int8", engine="onnx"))
    tuned = scored.get("adapted + LM") or {}
    weights = (tuned.get("lm_weight", e.lm_weight), tuned.get("word_score", e.word_score))
    return _evaluate_system(r, EXPORTED, rec, name=EXPORTED_NAME, lm_weights=weights, retention=False)


def _evaluate_system(r, label: str, model, folder: tuple[str, ...] = ("eval",), name: str | None = None,
                     lm_weights: tuple[float, float] | None = None, retention: bool = True) -> dict:
    """``model`` (a folder or a recognizer) on test, greedy then beam + LM, into ``<out>/<folder>/<label>-greedy``
    etc., its rows named ``name`` (default ``label``). The LM's weight and word bonus are ``lm_weights`` when given,
    else tuned on dev (``eval.tune_lm``) or the configured ones; ``retention`` also scores the source-language test."""
    cfg, e = r.config, r.config.eval
    name = name or label
    rec = as_recognizer(model, InferenceOptions(device=e.device, precision=e.precision))
    common = dict(lang=cfg.lang, max_utts=e.max_utts, extra={"recipe": r.name, "system": name})
    out = {}
    s = evaluate(rec, r.manifest("test"), out_dir=r.path(*folder, f"{label}-greedy"), name=f"{name} (greedy)",
                 **common)
    r.log(result_line(s))
    out[s["name"]] = {"wer": s["wer"], "cer": s["cer"]}
    if retention:  # a property of the acoustic model and its head: scored greedy (the target LM knows no English)
        source_dir = r.path(*folder, f"{label}-{SOURCE_TEST_FOLDER}")
        source = _score_source_test(r, rec, s["name"], source_dir)
        if source is not None:
            out[source_eval_name(s["name"])] = source
        kept = _score_kept_head(r, rec, s["name"], source_dir)
        if kept is not None:  # a two-head model (train.mix.head = own): its kept source head on the source test too
            out[source_eval_name(s["name"], SOURCE_LANG)] = kept
    if not e.beam:
        return out
    lm_dir = r.path("lm") if cfg.lm.enabled else None
    alpha, beta = lm_weights or (e.lm_weight, e.word_score)
    if lm_weights is None and e.tune_lm and lm_dir is not None:
        tuned = tune_lm(rec, r.manifest("dev"), lm_dir, e.alphas, e.betas, out_dir=r.path(*folder, f"{label}-tune"),
                        lang=cfg.lang, beam_size=e.beam_size)
        alpha, beta = tuned["best"]["lm_weight"], tuned["best"]["word_score"]
        r.log(
            f"{label}: tuned on dev: lm_weight {alpha:g}, word_score {beta:g} (dev WER "
            f"{100 * tuned['best']['wer']:.1f}%)"
        )
    beam_name = f"{name} + LM" if lm_dir is not None else f"{name} (beam)"
    s = evaluate(
        rec,
        r.manifest("test"),
        decoder="beam",
        lm_dir=lm_dir,
        beam_size=e.beam_size,
        lm_weight=alpha,
        word_score=beta,
        out_dir=r.path(*folder, f"{label}-lm" if lm_dir else f"{label}-beam"),
        name=beam_name,
        **common,
    )
    r.log(result_line(s))
    out[beam_name] = {"wer": s["wer"], "cer": s["cer"], "lm_weight": alpha, "word_score": beta}
    return out


# ------------------------------------------------------------------------------------------------- 6 self-train
def untranscribed_manifest(r) -> Path:
    """The audio stage 6 labels: selftrain.untranscribed_manifest, else stage 0's synthetic pool."""
    given = r.config.selftrain.untranscribed_manifest
    return Path(given).expanduser().resolve() if given else r.manifest(UNTRANSCRIBED)


def _tuned_lm(r) -> dict | None:
    """Beam + LM settings for labelling: stage 5's (tuned on dev) for the adapted model; None for greedy labels."""
    cfg = r.config
    if not (cfg.selftrain.lm and cfg.lm.enabled):
        return None
    adapted = ((r.marker(5) or {}).get("result") or {}).get("adapted + LM") or {}
    return {"lm_dir": r.path("lm"), "beam_size": cfg.eval.beam_size,
            "lm_weight": adapted.get("lm_weight", cfg.eval.lm_weight),
            "word_score": adapted.get("word_score", cfg.eval.word_score)}


def stage_selftrain(r, resume: bool = False) -> dict:
    """Label the untranscribed audio with the current model (+ LM), keep the confident share, continue training
    from that model on the labelled lines (``oversample`` times) plus the kept ones; ``rounds`` times. The last
    round's model is scored on test like stage 5; earlier rounds only on dev (their training runs)."""
    cfg, st, e = r.config, r.config.selftrain, r.config.eval
    pool = untranscribed_manifest(r)
    if not pool.is_file():
        raise UserError("selftrain: untranscribed manifest not found (set selftrain.untranscribed_manifest, or "
                        "rerun stage 0 of a synthetic recipe with selftrain.enabled)", path=pool)
    lm = _tuned_lm(r)
    label_filter = LabelFilter(min_confidence=st.min_confidence,
                               top_share=None if st.min_confidence is not None else st.top_share)
    model = trained_model_dir(r.path("train"), e.model)
    result: dict = {"rounds": []}
    for k in range(1, st.rounds + 1):
        folder = r.path("selftrain", f"round-{k}")
        labels = pseudo_label(model, pool, folder / "labels", label_filter=label_filter, confidence=st.confidence,
                              device=e.device, precision=e.precision, progress=r.progress, **(lm or {}))
        r.log(f"self-train round {k}:\n{format_summary(labels)}")
        facts = {"labels": {k2: labels[k2] for k2 in ("kept", "dropped", "kept_minutes", "dropped_minutes",
                                                       "confidence_quantiles", "manifest", "manifest_sha256")}}
        if r.manifest(TRUTH).is_file() and not cfg.selftrain.untranscribed_manifest:
            accuracy = label_accuracy(folder / "labels" / "all.jsonl", r.manifest(TRUTH), get_normalizer(cfg.lang))
            facts["label_accuracy"] = accuracy
            r.log("pseudo-label CER against the withheld text: " + ", ".join(
                f"{name} {100 * a['cer']:.1f}% ({a['utterances']})" for name, a in accuracy.items() if a["cer"]
                is not None))
        facts["mix"] = mix(r.manifest("train"), labels["manifest"], folder / "train.jsonl", st.oversample)
        r.log(f"self-train round {k}: {facts['mix']['labelled_minutes']:.1f} labelled min x {st.oversample} + "
              f"{facts['mix']['pseudo_minutes']:.1f} pseudo-labelled min, from {model}")
        config = cfg.train_config(folder / "train.jsonl", r.manifest("dev"), r.path("lang", "vocab.json"),
                                  folder / "run", **{"model.source": str(model), "model.head_init": "keep",
                                                     **replay_changes(r)})
        used = {"manifest": labels["manifest"], "sha256": labels["manifest_sha256"], "round": k,
                "labelled_by": labels["model"], "labelled_by_sha256": labels["model_sha256"], "lm": labels["lm"],
                "confidence": labels["confidence"], "filter": labels["filter"], "oversample": st.oversample}
        inputs = {"train": cfg.train_inputs(), "lang": cfg.lang, "pseudo_labels": used,
                  "deps": r.stage_inputs(6)["deps"]}
        summary = train_once(r, f"self-train round {k}", config, inputs)
        update_record(folder / "run", pseudo_labels=used)
        facts["train"] = _run_facts(summary)
        result["rounds"].append(facts)
        model = trained_model_dir(folder / "run", e.model)
    result.update(_evaluate_system(r, SELF_TRAINED, model, folder=("selftrain", "eval")))
    return result


def selftrain_runs(r) -> list[Path]:
    return sorted(r.path("selftrain").glob("round-*/run"), key=lambda p: int(p.parent.name.split("-")[1]))


# ------------------------------------------------------------------------------------------------- 7 report
def report_inputs(r) -> list[Path]:
    """Evaluation folders in table order, then the training run folders."""
    labels = ("adapted", "control") if r.config.control.enabled else ("adapted",)
    # The mapped zero-shot head is left out: untrained, it decodes like the English head (1 of 44 de-synth test
    # hypotheses differ), so its row repeated raw's. It stays on disk as the fine-tuning's starting point.
    evals = [r.path("baseline", n) for n in ("raw", ZERO_SHOT_LM_FOLDER)] if r.config.baseline.enabled else []
    for label in labels:
        evals += [r.path("eval", f"{label}-{kind}") for kind in ("greedy", "lm", "beam")]
        if label == "adapted" and r.config.export.onnx:
            evals += [r.path("eval", f"{EXPORTED}-{kind}") for kind in ("greedy", "lm", "beam")]
    # Source-test evaluations (retention) go last; the report shows them in their own table, not among the systems.
    evals += [r.path("baseline", "source-test")] if r.config.baseline.enabled else []
    evals += [r.path("eval", f"{label}-source-test") for label in labels]
    evals += [kept_head_folder(r.path("eval", f"{label}-source-test"), SOURCE_LANG) for label in labels]
    runs = [r.path("train"), r.path("control")][: len(labels)]
    if r.config.selftrain.enabled:
        kinds = ("greedy", "lm", "beam", SOURCE_TEST_FOLDER, kept_head_folder(SOURCE_TEST_FOLDER, SOURCE_LANG).name)
        # After adapted/control's rows, before the source tests: the report's system table keeps this order.
        first_source = next((i for i, p in enumerate(evals) if p.name.endswith(SOURCE_TEST_FOLDER)), len(evals))
        mine = [r.path("selftrain", "eval", f"{SELF_TRAINED}-{kind}") for kind in kinds]
        evals = evals[:first_source] + mine[:3] + evals[first_source:] + mine[3:]
        runs += selftrain_runs(r)
    return [p for p in evals if (p / "summary.json").is_file()] + [p for p in runs if (p / "metrics.jsonl").is_file()]


def stage_report(r, resume: bool = False) -> dict:
    inputs = report_inputs(r)
    names = [read_json_or(p / "summary.json", {}).get("name") for p in inputs if (p / "summary.json").is_file()]
    base = r.config.report.baseline if r.config.report.baseline in names else None
    pairs = [("adapted (greedy)", f"{SELF_TRAINED} (greedy)"), ("adapted + LM", f"{SELF_TRAINED} + LM"),
             ("adapted (beam)", f"{SELF_TRAINED} (beam)"), ("adapted (greedy)", f"{EXPORTED_NAME} (greedy)"),
             ("adapted + LM", f"{EXPORTED_NAME} + LM"), ("adapted (beam)", f"{EXPORTED_NAME} (beam)")]
    html = build_report(inputs, r.path("report"), baseline=base, worst=r.config.report.worst, pairs=pairs)
    return {"html": str(html), "systems": names}


def results_table(r) -> str:
    """system | WER % [95% CI] | CER % [95% CI] for every evaluation of the recipe, in report order."""

    def cell(s: dict, key: str) -> str:
        value, ci = s.get(key), s.get(f"{key}_ci95")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return f"{100 * value:6.2f} " + (f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")

    def text_table(header: tuple, rows: list[tuple]) -> list[str]:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return lines

    summaries = [s for p in report_inputs(r) if (s := read_json_or(p / "summary.json", {}))]
    rows = [(s.get("name", "?"), cell(s, "wer"), cell(s, "cer"), str(s.get("n_utterances", "")))
            for s in summaries if not is_source_eval(s)]
    lines = text_table(("system", "WER % [95% CI]", "CER % [95% CI]", "utts"), rows)
    kept = retention_rows(summaries)
    if kept:
        rows = [(row.system, row.head, cell(row.source, "wer"), cell(row.source, "cer"),
                 "n/a" if row.retention is None else f"{row.retention:.2f}") for row in kept]
        lines += ["", f"source language ({SOURCE_LANG}) test, greedy, each model's own head (and a two-head model's "
                  "kept source head); retention = source CER of the unadapted source / the system's"]
        lines += text_table(("system", "head", "source WER % [95% CI]", "source CER % [95% CI]", "retention"), rows)
    return "\n".join(lines)


STAGES = (
    StageSpec(0, "data", (), ("lang", "data"), ("data",), stage_data,
              # The synthetic self-training pool is made here; the keys count only when it is (old markers hold).
              keys_when=lambda cfg: ("selftrain.enabled", "selftrain.untranscribed_minutes")
              if cfg.selftrain.enabled and cfg.data.kind == "synth" else ()),
    StageSpec(1, "validate", (0,), ("lang", "source"), ("validate",), stage_validate),
    StageSpec(2, "vocab + LM", (1,), ("lang", "vocab", "lm"), ("lang", "lm"), stage_lang),
    StageSpec(3, "baseline", (2,), ("lang", "source", "eval.device", "eval.precision", "eval.max_utts"), ("baseline",),
              stage_baseline, enabled=lambda cfg: cfg.baseline.enabled, needs_source=True,
              keys_when=lambda cfg: ("lm.enabled", "baseline.lm", "baseline.alphas", "baseline.betas",
                                     "eval.beam_size") if _zero_shot_lm_on(cfg) else ()),
    StageSpec(4, "train", (2,), ("lang", "source", "train", "control"), (), stage_train, needs_source=True),
    StageSpec(5, "evaluate", (2, 4), ("lang", "eval"), ("eval",), stage_evaluate,
              # Counted only when on, so the markers of folders made before the key existed still hold.
              keys_when=lambda cfg: ("export.onnx",) if cfg.export.onnx else ()),
    StageSpec(6, "self-train", (2, 5), ("lang", "selftrain", "train", "eval", "lm.enabled"), ("selftrain",),
              stage_selftrain, enabled=lambda cfg: cfg.selftrain.enabled),
    StageSpec(7, "report", (3, 5, 6), ("report",), ("report",), stage_report),
)
