"""Transcription throughput: ``asr_transfer.transcription`` against
``transformers.pipeline("automatic-speech-recognition")``.

Same model object, same files, same threads, greedy CTC decoding on both sides. The files are synthetic clips
(held-out espeak-ng voices, 1–10 s) plus a few 15–30 s clips made by joining consecutive ones, so lengths vary.
The pipeline is fed the way its documentation shows: a list of decoded arrays (``{"raw", "sampling_rate"}``) with
the default ``batch_size`` (1); a second row gives it ``batch_size=8``. Audio decoding counts for both (ours reads
the files itself; for the pipeline, reading them with soundfile is inside the timer). Model loading counts for
neither. Each system runs once untimed to warm up, then ``--repeats`` times interleaved; the fastest run counts.

Both WERs are computed with jiwer after the language's normaliser; at fp32 they must agree within 0.5 points
(batching with zero padding can move a group-norm model's output slightly). bf16 (autocast; only on CPUs with
native bf16, else it would fall back to fp32 and is marked so) and int8 (dynamic quantisation of the Linear layers)
are reported apart, with their speed-ups over our fp32 and their WER deltas.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import common
import numpy as np
from common import DEFAULT_MODEL, Section, fmt, ratio, table

WER_TOLERANCE = 0.005  # 0.5 absolute percentage points


def make_files(corpus: dict, out_dir: Path, join: int = 4, every: int = 6) -> list[tuple[Path, str]]:
    """Test clips + joined clips (``join`` consecutive utterances with 0.3 s pauses, one group per ``every``)."""
    from asr_transfer.audio import load_audio, write_wav
    from asr_transfer.manifest import read_manifest

    utts = read_manifest(corpus["test"])
    files = [(Path(u.audio_filepath), u.text) for u in utts]
    out_dir.mkdir(parents=True, exist_ok=True)
    pause = np.zeros(int(0.3 * 16000), dtype=np.float32)
    for g, start in enumerate(range(0, len(utts) - join + 1, join * every)):
        group = utts[start : start + join]
        path = out_dir / f"joined-{g:03d}.wav"
        if not path.is_file():
            parts = []
            for u in group:
                parts += [load_audio(u.audio_filepath), pause]
            write_wav(path, np.concatenate(parts[:-1]))
        files.append((path, " ".join(u.text for u in group)))
    return files


def wer(refs: list[str], hyps: list[str], normalizer, cer: bool = False) -> float:
    """Corpus WER (or CER) with jiwer after ``normalizer`` on both sides."""
    import jiwer

    score = jiwer.cer if cer else jiwer.wer
    return float(score([normalizer(r) for r in refs], [normalizer(h) or "" for h in hyps]))


def run_ours(paths, loaded, precision: str) -> tuple[float, list[str]]:
    from asr_transfer.transcription import transcribe

    t0 = time.perf_counter()
    out = transcribe([str(p) for p in paths], loaded, decoder="greedy", device="cpu", precision=precision,
                     progress=False)
    elapsed = time.perf_counter() - t0
    bad = [t.error for t in out if t.error]
    if bad:
        raise SystemExit(f"error: transcribe failed on {len(bad)} files: {bad[0]}")
    return elapsed, [t.text for t in out]


def make_pipeline(model, processor):
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                    feature_extractor=processor.feature_extractor, device="cpu")


def run_pipeline(paths, pipe, batch_size: int | None) -> tuple[float, list[str]]:
    from asr_transfer.audio import load_audio

    t0 = time.perf_counter()
    inputs = [{"raw": load_audio(p), "sampling_rate": 16000} for p in paths]
    kw = {} if batch_size is None else {"batch_size": batch_size}
    out = pipe(inputs, **kw)
    elapsed = time.perf_counter() - t0
    return elapsed, [o["text"] for o in out]


def main(argv=None) -> int:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument(
        "--lang", default=None, help="language of the synthetic clips (default: the model's; --full adds de)"
    )
    p.add_argument("--minutes", type=float, default=None, help="minutes of test clips (default 3; --full 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precisions", default="fp32,bf16,int8")
    p.add_argument("--files", default=None, help="a manifest to use instead of synthetic clips (audio + text)")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    import torch

    from asr_transfer.inference import check_precision
    from asr_transfer.model.load import load_model
    from asr_transfer.text import get_normalizer

    loaded = load_model(common.require_model(args.model))
    langs = [args.lang or loaded.lang]
    if args.full and "de" not in langs:
        langs.append("de")
    minutes = args.minutes or (8.0 if args.full else 3.0)
    precisions = [x for x in args.precisions.split(",") if x]
    section = Section(
        "transcribe_speed: asr_transfer.transcription vs transformers pipeline" + (" (--full)" if args.full else "")
    ).start()
    section.model = args.model
    rows, data = [], {"model": str(args.model), "langs": {}}
    for lang in langs:
        if args.files:
            corpus = {"test": Path(args.files)}
        else:
            corpus = common.synth_corpus(
                args.work_dir, lang, 0.2, dev_minutes=0.1, test_minutes=minutes, seed=args.seed
            )
        files = make_files(corpus, Path(args.work_dir) / "transcribe_speed" / f"joined-{lang}-{minutes:g}")
        paths = [f for f, _ in files]
        refs = [t for _, t in files]
        import soundfile

        audio_s = sum(soundfile.info(str(f)).duration for f in paths)
        normalizer = get_normalizer(lang)
        systems = {"ours fp32": lambda: run_ours(paths, loaded, "fp32")}
        pipe = make_pipeline(loaded.model, loaded.processor)
        systems["pipeline fp32, batch_size default"] = lambda: run_pipeline(paths, pipe, None)
        systems["pipeline fp32, batch_size=8"] = lambda: run_pipeline(paths, pipe, 8)
        notes = {}
        for prec in precisions:
            if prec == "fp32":
                continue
            real = check_precision(prec, "cpu")
            notes[prec] = real
            if real != prec:
                continue  # would silently run fp32; reported as not available
            systems[f"ours {prec}"] = (lambda pr: (lambda: run_ours(paths, loaded, pr)))(prec)
        best: dict[str, float] = {}
        texts: dict[str, list[str]] = {}
        for name, fn in systems.items():  # warm-up (lazy init, quantisation kernels, allocator)
            fn()
        for _ in range(args.repeats):
            for name, fn in systems.items():
                elapsed, hyps = fn()
                best[name] = min(best.get(name, float("inf")), elapsed)
                texts[name] = hyps
                print(f"[{lang}] {name}: {elapsed:.2f}s for {audio_s:.0f}s audio", flush=True)
        wers = {name: wer(refs, hyps, normalizer) for name, hyps in texts.items()}
        cers = {name: wer(refs, hyps, normalizer, cer=True) for name, hyps in texts.items()}
        base_t, base_w = best["ours fp32"], wers["ours fp32"]
        pipe_t = best["pipeline fp32, batch_size default"]
        for name in systems:
            rows.append([lang, name, best[name], audio_s / best[name], ratio(pipe_t, best[name]),
                         ratio(base_t, best[name]), wers[name], wers[name] - base_w, cers[name]])
        for prec, real in notes.items():
            if real != prec:
                rows.append([lang, f"ours {prec}", None, None, None, None, None,
                             f"not available on this CPU (would run {real})", None])
        pipe_name = "pipeline fp32, batch_size default"
        equal = (abs(wers["ours fp32"] - wers[pipe_name]) <= WER_TOLERANCE
                 and abs(cers["ours fp32"] - cers[pipe_name]) <= WER_TOLERANCE)
        data["langs"][lang] = {"files": len(paths), "audio_s": audio_s, "best_s": best, "wer": wers, "cer": cers,
                               "wer_equal_fp32": equal, "threads": torch.get_num_threads()}
        section.add(
            f"{lang}: {len(paths)} files, {audio_s / 60:.1f} min of audio (synthetic, held-out voices; "
            f"{sum(1 for f in paths if f.name.startswith('joined'))} joined clips of 15–30 s), greedy. "
            f"fp32 WER ours {base_w:.4f} vs pipeline {wers[pipe_name]:.4f}, CER {cers['ours fp32']:.4f} vs "
            f"{cers[pipe_name]:.4f}: "
            f"{'equal within 0.5 points' if equal else 'NOT EQUAL (speed comparison suspect)'}.\n"
        )
    section.add(table(["lang", "system", "best s", "audio-s/s", "× vs pipeline fp32 (default)", "× vs ours fp32",
                       "WER", "ΔWER vs ours fp32", "CER"], rows) + "\n")
    fp32_speedups = [r[4] for r in rows if r[1] == "ours fp32"]
    section.add("Target ≥ 2× at fp32 over the pipeline as fed by default: "
                + ", ".join(f"{fmt(x)} — {'met' if x >= 2 else 'MISSED'}" for x in fp32_speedups) + ".\n")
    section.data = data
    section.append(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
