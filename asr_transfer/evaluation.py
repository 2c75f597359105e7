"""Evaluation: a model over a manifest → ``summary.json`` + ``utterances.jsonl``; source-only baselines; LM tuning.

Scoring happens after the *target* language's normaliser, applied to both the reference and the hypothesis. It is
taken from the model's record (``asr_transfer.json``) unless ``lang`` is given, so an English source model scored on
German data (the ``raw`` baseline) has its output passed through the German normaliser, exactly like an adapted model.

Audio that cannot be read is skipped, counted and listed in the summary (one bad file must not void a test run); if
every file fails, that is a :class:`UserError`. Timing: each chunk of utterances is run through the model together,
so its forward time is shared among its utterances in proportion to their audio seconds; decoder time is per
utterance. RTF = (forward + decode seconds) / audio seconds.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, load_audio
from .decode import DecodeOptions, load_lm_record
from .environment import environment_info
from .errors import AudioError, UserError
from .files import atomic_write_bytes
from .inference import InferenceOptions, as_recognizer
from .manifest import Utterance, fingerprint, read_manifest
from .metrics import Counts, UtteranceScore, bootstrap_ci, corpus_rate, rates_by_speaker, score_pairs
from .model.record import make_processor
from .outdir import check_output_dir
from .provenance import begin_evaluation, record_baseline
from .text import get_normalizer
from .vocab import build_vocab, load_vocab
from .zeroshot import FOLDER as ZERO_SHOT_LM_FOLDER
from .zeroshot import SYSTEM_NAME as ZERO_SHOT_LM
from .zeroshot import write_spelled_lexicon

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
TUNE_SELECT = ("wer", "cer")  # what tune_lm minimises: WER (ties: CER), or CER among points no worse in WER than greedy
DURATION_TOLERANCE_S = 0.1  # s of audio a file may lack against its manifest duration before it counts as truncated


def result_line(summary: dict) -> str:
    """``name: WER 23.40% [21.02, 25.91] CER 8.10% [...] (n=…, skipped …, RTF …)``."""

    def rate(key: str) -> str:
        value, ci = summary.get(key), summary.get(f"{key}_ci95")
        if value is None:
            return f"{key.upper()} n/a"
        text = f"{key.upper()} {100 * value:.2f}%"
        return text + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")

    rtf = summary.get("rtf")
    extra = f"n={summary.get('n_utterances')}, skipped {summary.get('n_skipped', 0)}"
    if rtf is not None:
        extra += f", RTF {rtf:.3f}"
    return f"{summary.get('name')}: {rate('wer')} {rate('cer')} ({extra})"


@dataclass
class LogProbItem:
    """One utterance after the forward pass: ``log_probs`` is ``(frames, vocab)`` float32."""

    utt: Utterance
    log_probs: np.ndarray
    audio_s: float
    forward_s: float  # this utterance's share of its chunk's forward time


def _load(model, device: str, precision: str, batch_s: float | None = None, allow_pickle: bool = False,
          engine: str = "torch"):
    options = InferenceOptions(device=device, precision=precision, engine=engine)
    if batch_s is not None:
        options = dataclasses.replace(options, batch_s=float(batch_s))
    return as_recognizer(model, options, allow_pickle=allow_pickle)


def _chunks(utts: list[Utterance], chunk_s: float):
    chunk: list[Utterance] = []
    total = 0.0
    for u in utts:
        if chunk and total + u.duration > chunk_s:
            yield chunk
            chunk, total = [], 0.0
        chunk.append(u)
        total += u.duration
    if chunk:
        yield chunk


def compute_log_probs(recognizer, utts: list[Utterance]) -> tuple[list[LogProbItem], list[dict]]:
    """Load audio and run the model; returns the items in manifest order and the skipped utterances.

    A skipped utterance is ``{"id", "audio_filepath", "reason"}``. Audio is read one chunk (about ``batch_s`` seconds,
    as configured on the recognizer) at a time, so memory stays bounded on large test sets.
    """
    from tqdm import tqdm

    items: list[LogProbItem] = []
    skipped: list[dict] = []
    chunk_s = float(getattr(getattr(recognizer, "options", None), "batch_s", 160.0))
    with tqdm(total=len(utts), desc="forward", unit="utt", disable=None) as bar:
        for chunk in _chunks(utts, chunk_s):
            ok: list[tuple[Utterance, np.ndarray]] = []
            for u in chunk:
                try:
                    dur = u.duration if u.duration > 0 else None
                    wave = load_audio(u.audio_filepath, offset_s=u.offset, duration_s=dur)
                    if dur is not None and len(wave) < (dur - DURATION_TOLERANCE_S) * SAMPLE_RATE:
                        # A cut-off file decodes what is there; scoring it would count the missing words as deletions.
                        raise AudioError(f"holds {len(wave) / SAMPLE_RATE:.3f}s but the manifest says {dur:.3f}s "
                                         "(truncated file?)", path=u.audio_filepath)
                    ok.append((u, wave))
                except AudioError as exc:
                    skipped.append({"id": u.uid, "audio_filepath": u.audio_filepath, "reason": str(exc)})
            if ok:
                start = time.perf_counter()
                log_probs = recognizer.log_probs([w for _, w in ok])
                elapsed = time.perf_counter() - start
                seconds = [len(w) / SAMPLE_RATE for _, w in ok]
                total = sum(seconds) or 1.0
                for (u, _), lp, s in zip(ok, log_probs, seconds):
                    items.append(LogProbItem(u, lp, s, elapsed * s / total))
            bar.update(len(chunk))
    return items, skipped


def _normalizer_for(recognizer, lang: str | None, utts: list[Utterance] = ()):
    """``lang``'s normaliser, else the model's; warns when the manifest's ``lang`` field or the model's recorded
    normaliser version disagree with the choice (scores would then not mean what they seem to)."""

    loaded = recognizer.loaded
    record = getattr(loaded, "record", None)
    chosen = lang or getattr(record, "lang", None) or getattr(loaded, "lang", None)
    if not chosen:
        raise UserError("the model has no asr_transfer.json record naming its language; pass --lang (e.g. --lang de)")
    normalizer = get_normalizer(chosen)
    manifest_langs = {u.lang for u in utts if u.lang}
    if len(manifest_langs) == 1 and manifest_langs != {normalizer.lang}:
        warnings.warn(
            f"the manifest says lang={manifest_langs.pop()} but scoring uses the {normalizer.name} normaliser; "
            "pass --lang to choose",
            RuntimeWarning,
            stacklevel=3,
        )
    recorded = getattr(loaded, "normalizer_name", None)
    if lang is None and recorded and recorded != normalizer.name:
        warnings.warn(f"the model was trained with normaliser {recorded} but this version has {normalizer.name}",
                      RuntimeWarning, stacklevel=3)
    return normalizer


def decode_options(decoder: str, lm_dir=None, beam_size=None, lm_weight=None, word_score=None, lexicon=None):
    """A :class:`~asr_transfer.decode.DecodeOptions`; ``None`` values keep its defaults."""

    given = {"beam_size": beam_size, "lm_weight": lm_weight, "word_score": word_score,
             "lexicon": str(lexicon) if lexicon is not None else None}
    return DecodeOptions(kind=decoder, lm_dir=str(lm_dir) if lm_dir else None,
                         **{k: v for k, v in given.items() if v is not None})


def _describe_decoder(options) -> dict:
    described = options.to_dict()
    if options.kind == "greedy":  # beam settings do not apply; leaving them out avoids misleading summaries
        described = {"kind": "greedy"}
    elif options.lm_dir:
        described["lm_record"] = load_lm_record(options.lm_dir)
    return described


def decode_items(items: list[LogProbItem], dec) -> tuple[list[str], list[float]]:
    """Decoded text and decoder seconds per item."""
    from tqdm import tqdm

    texts, seconds = [], []
    for item in tqdm(items, desc="decode", unit="utt", disable=None):
        start = time.perf_counter()
        texts.append(dec.decode(item.log_probs).text)
        seconds.append(time.perf_counter() - start)
    return texts, seconds


def rates_with_ci(scores: list[UtteranceScore]) -> dict:
    """Corpus WER/CER with bootstrap 95% intervals and total counts."""
    out: dict = {}
    for unit, get in (("wer", lambda s: s.words), ("cer", lambda s: s.chars)):
        counts: list[Counts] = [get(s) for s in scores]
        out[unit] = corpus_rate(counts)
        lengths = [c.ref_len for c in counts]
        if sum(lengths) > 0:
            low, high = bootstrap_ci([c.errors for c in counts], lengths, n=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
            out[f"{unit}_ci95"] = [low, high]
        else:
            out[f"{unit}_ci95"] = None
        out["words" if unit == "wer" else "chars"] = sum(counts, Counts()).as_dict()
    return out


def _model_facts(recognizer, model) -> dict:
    loaded = recognizer.loaded
    record = getattr(loaded, "record", None)
    if dataclasses.is_dataclass(record):
        record = dataclasses.asdict(record)
    elif record is not None and not isinstance(record, dict):
        record = dict(vars(record))
    path = getattr(loaded, "path", None) or (str(model) if isinstance(model, (str, Path)) else None)
    size_mb = None
    onnx_file = getattr(recognizer, "onnx_file", None)
    if onnx_file is not None:
        size_mb = Path(onnx_file).stat().st_size / 1e6
    elif path and Path(path).is_dir():
        weights = [p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
        size_mb = sum(p.stat().st_size for p in weights) / 1e6 if weights else None
    return {
        "model": str(path) if path else None,
        "model_record": record,
        # An ONNX export has no torch module to count; its file size stands for it.
        "model_params": None if loaded.model is None else int(sum(p.numel() for p in loaded.model.parameters())),
        "model_size_mb": size_mb,
        "engine": "torch" if onnx_file is None else "onnx",
    }


def write_evaluation(out_dir, summary: dict, rows: list[dict]) -> Path:
    """Write ``summary.json`` and ``utterances.jsonl`` into ``out_dir``; returns the folder.

    Both are encoded before either is written, so a string UTF-8 cannot hold fails with nothing written; each file
    then goes to a temp file renamed into place, so neither is ever half-written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"utterances.jsonl": "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
             "summary.json": json.dumps(summary, indent=2, ensure_ascii=False) + "\n"}
    data = {name: text.encode("utf-8") for name, text in texts.items()}
    for name, blob in data.items():
        atomic_write_bytes(out / name, blob)
    return out


def score_rows(
    items: list[LogProbItem], texts: list[str], decode_s: list[float], normalizer
) -> tuple[list[dict], dict]:
    """Per-utterance rows for ``utterances.jsonl`` and the corpus metrics (with CIs) for the summary."""
    refs = [normalizer(it.utt.text) for it in items]
    hyps = [normalizer(t) for t in texts]
    scores = score_pairs(refs, hyps)
    rows = []
    for it, ref, hyp, raw_hyp, s, dec_s in zip(items, refs, hyps, texts, scores, decode_s):
        rows.append(
            {
                "id": it.utt.uid,
                **({"speaker": it.utt.speaker} if it.utt.speaker else {}),
                "ref": ref,
                "hyp": hyp,
                "ref_raw": it.utt.text,
                "hyp_raw": raw_hyp,
                **{k: v for k, v in s.words.as_dict().items() if k != "errors"},
                "char_errors": s.chars.errors,
                "char_ref_len": s.chars.ref_len,
                "alignment": s.alignment,
                "audio_s": round(it.audio_s, 4),
                "decode_s": round(it.forward_s + dec_s, 6),
            }
        )
    if not scores:
        return rows, {}
    return rows, {**rates_with_ci(scores), "by_speaker": rates_by_speaker([it.utt.speaker for it in items], scores)}


def evaluate(
    model,
    manifest,
    decoder: str = "greedy",
    lm_dir=None,
    out_dir=None,
    lang: str | None = None,
    beam_size: int | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
    device: str = "auto",
    precision: str = "fp32",
    max_utts: int | None = None,
    name: str | None = None,
    extra: dict | None = None,
    batch_s: float | None = None,
    allow_pickle: bool = False,
    lexicon=None,
    engine: str = "torch",
) -> dict:
    """Run ``model`` (path, id, loaded model or Recognizer) over ``manifest``, decode, score; return the summary.

    With ``out_dir`` the summary goes to ``out_dir/summary.json`` and per-utterance rows to
    ``out_dir/utterances.jsonl``. ``beam_size``/``lm_weight``/``word_score`` of ``None`` keep the decoder defaults.
    ``extra`` is merged into the summary (e.g. the head-swap report of a zero-shot baseline). ``batch_s`` bounds
    padded audio seconds per forward pass; batching changes no score beyond float rounding (GroupNorm-CNN models such
    as base-960h too: :meth:`asr_transfer.inference.Recognizer._exact_group_norm_batch`). ``allow_pickle`` permits
    pickled ``pytorch_model.bin``
    weights (pickle can run code: trusted files only). Audio that cannot be read, or that holds less than the
    manifest's duration (a truncated copy), is skipped and listed in ``skipped``. ``lexicon``: a flashlight lexicon
    file for the beam decoder instead of ``lm_dir/lexicon.txt`` (the zero-shot + LM system's respelled one).
    ``engine``: ``"torch"`` (default: the reference), or ``"onnx"``/``"auto"`` to score an ONNX export
    (:mod:`asr_transfer.onnx_engine`), e.g. what its int8 model costs.
    """
    utts = read_manifest(manifest)
    if max_utts is not None:
        utts = utts[: max(0, int(max_utts))]
    if not utts:
        raise UserError("manifest holds no utterances", path=manifest)
    if out_dir is not None:
        check_output_dir(out_dir, files=("summary.json", "utterances.jsonl", "run.json"), key="--out")
    if out_dir is not None:  # provenance hook: run.json (options, code, env, manifest fingerprint) at start
        begin_evaluation(out_dir, model, manifest, dict(decoder=decoder, lm_dir=lm_dir, lang=lang, beam_size=beam_size,
                         lm_weight=lm_weight, word_score=word_score, device=device, precision=precision,
                         max_utts=max_utts, name=name, batch_s=batch_s, allow_pickle=allow_pickle, engine=engine,
                         **({"lexicon": str(lexicon)} if lexicon is not None else {})))
    recognizer = _load(model, device, precision, batch_s, allow_pickle, engine)
    normalizer = _normalizer_for(recognizer, lang, utts)
    options = decode_options(decoder, lm_dir, beam_size, lm_weight, word_score, lexicon)
    dec = options.build(recognizer.vocab, blank_id=recognizer.blank_id)
    items, skipped = compute_log_probs(recognizer, utts)
    if not items:
        raise UserError(
            f"none of the {len(utts)} audio files could be read (first: {skipped[0]['reason']})", path=manifest
        )
    texts, decode_s = decode_items(items, dec)
    rows, rates = score_rows(items, texts, decode_s, normalizer)
    audio_s = sum(it.audio_s for it in items)
    total_s = sum(r["decode_s"] for r in rows)
    summary = {
        "name": name or (Path(out_dir).name if out_dir else "eval"),
        **_model_facts(recognizer, model),
        "manifest": str(Path(manifest).resolve()),
        "manifest_fingerprint": fingerprint(manifest),
        "lang": normalizer.lang,
        "normalizer": normalizer.name,
        "model_normalizer": getattr(recognizer.loaded, "normalizer_name", None),
        "decoder": _describe_decoder(options),
        "device": str(recognizer.device),
        "precision": recognizer.precision,
        "batch_s": recognizer.options.batch_s,
        "n_utterances": len(items),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "audio_s": round(audio_s, 3),
        "decode_s": round(total_s, 3),
        "rtf": total_s / audio_s if audio_s > 0 else None,
        **rates,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": 0.95, "unit": "utterance"},
        "environment": environment_info(),
        **(extra or {}),
    }
    if out_dir is not None:
        write_evaluation(out_dir, summary, rows)
        from .provenance import end_evaluation  # provenance hook: wall time + metrics into run.json

        end_evaluation(out_dir, summary)
    return summary


def baseline(
    model,
    manifest,
    target_vocab=None,
    lang: str | None = None,
    out_dir=None,
    device: str = "auto",
    precision: str = "fp32",
    max_utts: int | None = None,
    lm_dir=None,
    beam_size: int | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
) -> dict[str, dict]:
    """Source-only baselines on ``manifest``: ``raw`` (the source head, output through the target normaliser),
    ``zero-shot`` (the head mapped to the target vocabulary with ``swap_head(mode="mapped")``, no training) and, with
    ``lm_dir``, ``zero-shot-lm`` (the source head beam-decoded with the target LM through a lexicon that spells each
    target word in the source letters: :mod:`asr_transfer.zeroshot`). Every summary carries ``"zero_shot": true``.

    ``target_vocab``: a ``vocab.json`` path or ``{token: id}``; ``None`` builds it from the manifest's text (only the
    character inventory of the test text is used, never its audio). Writes ``out_dir/raw/``, ``out_dir/zero-shot/``
    (+ ``out_dir/zero-shot-lm/`` with its ``lexicon.txt``). ``beam_size``/``lm_weight``/``word_score``: the LM
    system's decoder (``None``: the decoder defaults); tune them on dev with :func:`tune_lm` and ``lexicon``.
    """

    if not lang:
        raise UserError("baseline needs the target language: pass --lang (e.g. --lang de)")
    recognizer = _load(model, device, precision)
    out = Path(out_dir) if out_dir is not None else None
    common = dict(lang=lang, device=device, precision=precision, max_utts=max_utts)
    tag = {"zero_shot": True}  # no target audio was used: results.compare picks its reference among these
    results = {"raw": evaluate(recognizer, manifest, out_dir=out / "raw" if out else None, name="raw", extra=tag,
                               **common)}

    if target_vocab is None:
        target_vocab = build_vocab([u.text for u in read_manifest(manifest)], lang)
    target = load_vocab(target_vocab) if isinstance(target_vocab, (str, Path)) else dict(target_vocab)
    from .model.head import swap_head  # torch: here only, so scoring an ONNX export never imports it

    loaded = recognizer.loaded
    swapped = copy.deepcopy(loaded.model).cpu()
    report = swap_head(swapped, {tok: i for i, tok in enumerate(loaded.vocab)}, target, mode="mapped", lang=lang)
    norm = str(getattr(swapped.config, "feat_extract_norm", "group"))
    zero_shot = dataclasses.replace(
        loaded,
        model=swapped.eval(),
        processor=make_processor(target, feat_extract_norm=norm),
        vocab=[tok for tok, _ in sorted(target.items(), key=lambda kv: kv[1])],
        blank_id=int(swapped.config.pad_token_id),
        lang=lang,
        normalizer_name=get_normalizer(lang).name,
    )
    extra = {"head_swap": report.to_dict(), "target_vocab": target, **tag}
    results["zero-shot"] = evaluate(
        zero_shot, manifest, out_dir=out / "zero-shot" if out else None, name="zero-shot", extra=extra, **common
    )
    lm_opts = dict(beam_size=beam_size, lm_weight=lm_weight, word_score=word_score)
    if lm_dir is not None:
        results[ZERO_SHOT_LM_FOLDER] = zero_shot_lm(recognizer, manifest, lm_dir, out_dir=out / ZERO_SHOT_LM_FOLDER
                                                    if out else None, **lm_opts, **common)
    if out is not None:  # provenance hook: one "baseline" run.json for out_dir; its parts point to it
        options = dict(model=model, manifest=manifest, target_vocab=target_vocab, **common)
        if lm_dir is not None:
            options.update(lm_dir=str(lm_dir), **lm_opts)
        record_baseline(out, options, list(results))
    return results


def zero_shot_lm(model, manifest, lm_dir, out_dir=None, lang: str | None = None, **options) -> dict:
    """The ``zero-shot + LM`` system: ``model``'s own head beam-decoded with the LM in ``lm_dir`` through a lexicon
    spelling each LM word in the head's letters (written to ``out_dir/lexicon.txt``, else a temporary file).

    ``options`` go to :func:`evaluate` (``beam_size``, ``lm_weight``, ``word_score``, ``device`` ...). The summary
    records the lexicon's counts (``zero_shot_lexicon``: words, respelled, unspellable).
    """
    recognizer = _load(model, options.get("device", "auto"), options.get("precision", "fp32"))
    with tempfile.TemporaryDirectory(prefix="asr-transfer-zs-") as tmp:
        path = Path(out_dir) / "lexicon.txt" if out_dir is not None else Path(tmp) / "lexicon.txt"
        if out_dir is not None:
            check_output_dir(out_dir, files=("lexicon.txt",), key="--out")
        lexicon = write_spelled_lexicon(lm_dir, recognizer.vocab, path)
        extra = {"zero_shot": True, "zero_shot_lexicon": {"path": str(path) if out_dir else None, **lexicon.to_dict()}}
        return evaluate(recognizer, manifest, decoder="beam", lm_dir=lm_dir, lexicon=path, out_dir=out_dir,
                        name=ZERO_SHOT_LM, lang=lang, extra=extra, **options)


def tune_lm(
    model,
    manifest,
    lm_dir,
    alphas,
    betas,
    out_dir=None,
    lang: str | None = None,
    beam_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    max_utts: int | None = None,
    lexicon=None,
    select: str = "wer",
) -> dict:
    """Grid-search ``lm_weight`` (alpha) × ``word_score`` (beta) by WER on a dev ``manifest``.

    The model runs once; every grid point re-decodes the cached log-probs. Returns (and writes ``out_dir/tune.json``)
    ``{"grid": [{"lm_weight", "word_score", "wer", "cer"}...], "best": {...}, "greedy": {...}}``. ``lexicon``: as
    for :func:`evaluate`. ``select``: ``"wer"`` picks the lowest WER (ties: CER); ``"cer"`` the lowest CER among the
    points whose WER is no worse than greedy decoding's (all points if none is) — for a weak acoustic model, whose
    lowest-WER point can cost letters (zero-shot + LM on de-synth dev: CER above greedy's).
    """
    if select not in TUNE_SELECT:
        raise UserError(f"unknown tune-lm selection {select!r}: use {' or '.join(TUNE_SELECT)}")
    utts = read_manifest(manifest)
    if max_utts is not None:
        utts = utts[: max(0, int(max_utts))]
    alphas, betas = [float(a) for a in alphas], [float(b) for b in betas]
    if not utts or not alphas or not betas:
        raise UserError("tune-lm needs utterances and at least one alpha and one beta", path=manifest)
    if out_dir is not None:  # before the grid search, whose result is written at the end
        check_output_dir(out_dir, files=("tune.json",), key="--out")
    recognizer = _load(model, device, precision)
    normalizer = _normalizer_for(recognizer, lang, utts)
    items, skipped = compute_log_probs(recognizer, utts)
    if not items:
        raise UserError(f"none of the {len(utts)} audio files could be read", path=manifest)

    def score(dec) -> dict:
        texts, _ = decode_items(items, dec)
        scores = score_pairs([normalizer(it.utt.text) for it in items], [normalizer(t) for t in texts])
        return {"wer": corpus_rate(s.words for s in scores), "cer": corpus_rate(s.chars for s in scores)}

    vocab, blank_id = recognizer.vocab, recognizer.blank_id
    greedy = score(decode_options("greedy").build(vocab, blank_id=blank_id))
    grid = []
    for alpha in alphas:
        for beta in betas:
            options = decode_options("beam", lm_dir, beam_size=beam_size, lm_weight=alpha, word_score=beta,
                                     lexicon=lexicon)
            grid.append({"lm_weight": alpha, "word_score": beta, **score(options.build(vocab, blank_id=blank_id))})
    if select == "cer":
        candidates = [g for g in grid if g["wer"] <= greedy["wer"]] or grid
        best = min(candidates, key=lambda g: (g["cer"], g["wer"]))
    else:
        best = min(grid, key=lambda g: (g["wer"], g["cer"]))
    result = {
        "manifest": str(Path(manifest).resolve()),
        "manifest_fingerprint": fingerprint(manifest),
        "lm_dir": str(lm_dir),
        "normalizer": normalizer.name,
        "decoder": _describe_decoder(decode_options("beam", lm_dir, beam_size=beam_size, lexicon=lexicon)),
        "n_utterances": len(items),
        "n_skipped": len(skipped),
        "greedy": greedy,
        "select": select,
        "grid": grid,
        "best": best,
        "environment": environment_info(),
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "tune.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
