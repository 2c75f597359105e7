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

``--whole-process``: what a user waits for. Each system is a fresh process over a folder of clips: ours is the CLI
(``asr-transfer transcribe --model M DIR --format txt --precision P --out O``), the pipeline is
``bench/pipeline_transcribe.py`` (soundfile + ``pipeline(...)``, batch 1, fp32). Start-up, imports, model loading,
reading the audio and writing the transcripts all count. One untimed warm-up round (page cache), then ``--pairs``
rounds; a round runs the pipeline and each of our precisions once, in an order that rotates by round, and each of
ours gets the ratio pipeline wall ÷ ours wall of its round; the median of those ratios is reported. ``--model base``
is a random model with base-960h's architecture (94.4M parameters; speed only, its transcripts are noise). The
``ours onnx P`` rows run ``transcribe --engine onnx --precision P`` on the model's ONNX export, made once beforehand
with ``asr-transfer export-onnx`` (its time is reported apart: a one-off, like downloading a model). A last row times
one 3-s file alone (latency: start-up dominates).
"""

from __future__ import annotations

import os
import statistics
import subprocess
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


# ------------------------------------------------------------------------------------------------ whole processes
PIPELINE_SCRIPT = Path(__file__).resolve().parent / "pipeline_transcribe.py"


def clip_folder(work_dir: Path, lang: str, minutes: float, seed: int) -> Path:
    """A flat folder of links to held-out synthetic clips (1-10 s), at least ``minutes`` of audio and 40 clips."""
    import soundfile

    corpus = common.synth_corpus(work_dir, lang, 0.2, dev_minutes=0.1, test_minutes=max(minutes * 1.2, 3.0),
                                 seed=seed)
    out = Path(work_dir) / "transcribe_speed" / f"clips-{lang}-{minutes:g}m-s{seed}"
    if out.is_dir() and any(out.iterdir()):
        return out
    out.mkdir(parents=True, exist_ok=True)
    total, count = 0.0, 0
    for path, _ in make_files(corpus, out.with_name(out.name + "-joined")):
        if total >= minutes * 60 and count >= 40:
            break
        os.symlink(path.resolve(), out / f"{count:04d}{path.suffix}")
        total += soundfile.info(str(path)).duration
        count += 1
    return out


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one child process; it must exit 0."""
    before = os.times()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def onnx_export(model: Path, work_dir: Path) -> tuple[Path, float | None]:
    """The model's ONNX export under ``work_dir/onnx/`` (made once per weights and exporter source, by the CLI,
    timed), and its wall seconds; None when an earlier run made it."""
    import asr_transfer.onnx_export

    exporter = common.short_hash(Path(asr_transfer.onnx_export.__file__))
    out = work_dir / "onnx" / f"{model.name}-{common.short_hash(model / 'model.safetensors')}-{exporter}"
    if (out / "onnx.json").is_file():
        return out, None
    cli = str(Path(sys.executable).with_name("asr-transfer"))
    wall, _ = timed([cli, "export-onnx", "--model", str(model), "--out", str(out)])
    return out, wall


def read_texts(out: Path, names: list[str]) -> list[str]:
    return [(out / f"{Path(n).stem}.txt").read_text(encoding="utf-8").strip() for n in names]


def whole_process(args, model: Path, section: Section) -> dict:
    """Paired whole-process runs of the CLI against the pipeline script (see the module docstring)."""
    import soundfile

    from asr_transfer.precision import check_precision

    clips = clip_folder(Path(args.work_dir), args.lang or "en", args.minutes or 5.0, args.seed)
    names = sorted(p.name for p in clips.iterdir())
    audio_s = sum(soundfile.info(str(clips / n)).duration for n in names)
    outs = Path(args.work_dir) / "transcribe_speed" / "outputs"
    cli = str(Path(sys.executable).with_name("asr-transfer"))
    systems = {"pipeline fp32": [sys.executable, str(PIPELINE_SCRIPT), "--model", str(model), str(clips), "--out",
                                 str(outs / "pipeline")]}
    for prec in [x for x in args.precisions.split(",") if x]:
        if check_precision(prec, "cpu") != prec and prec != "auto":
            section.add(f"- ours {prec}: not available on this CPU, skipped\n")
            continue
        systems[f"ours {prec}"] = [cli, "transcribe", "--model", str(model), str(clips), "--format", "txt",
                                   "--precision", prec, "--device", "cpu", "--engine", "torch", "--out",
                                   str(outs / prec)]
    onnx_precisions = [x for x in args.onnx_precisions.split(",") if x]
    if onnx_precisions:
        export, export_wall = onnx_export(model, Path(args.work_dir))
        section.add(f"- ONNX export (`asr-transfer export-onnx --model {model} --out {export}`, one process): "
                    + (f"{export_wall:.1f} s wall\n" if export_wall is not None else "reused from an earlier run\n"))
        for prec in onnx_precisions:
            systems[f"ours onnx {prec}"] = [cli, "transcribe", "--model", str(export), str(clips), "--format", "txt",
                                            "--engine", "onnx", "--precision", prec, "--out",
                                            str(outs / f"onnx-{prec}")]
    names_order = list(systems)
    walls: dict[str, list[float]] = {n: [] for n in names_order}
    cpus: dict[str, list[float]] = {n: [] for n in names_order}
    for name in names_order:  # warm-up: page cache, lazily compiled kernels on disk
        timed(systems[name])
    for r in range(args.pairs):
        order = names_order[r % len(names_order):] + names_order[: r % len(names_order)]
        for name in order:
            wall, cpu = timed(systems[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(f"round {r + 1}: {name}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    pipe = walls["pipeline fp32"]
    ref_texts = read_texts(outs / "pipeline", names)
    rows, data = [], {"clips": len(names), "audio_s": audio_s, "walls": walls, "cpu": cpus}
    for name in names_order:
        ratios = [p / w for p, w in zip(pipe, walls[name])]
        same = None
        if name != "pipeline fp32":
            texts = read_texts(Path(systems[name][systems[name].index("--out") + 1]), names)
            same = sum(a == b for a, b in zip(texts, ref_texts)) / len(names)
        rows.append([name, statistics.median(walls[name]), min(walls[name]), max(walls[name]),
                     statistics.median(cpus[name]), audio_s / statistics.median(walls[name]),
                     statistics.median(ratios), same])
        data[name] = {"median_ratio_vs_pipeline": statistics.median(ratios), "same_text_share": same}
    section.add(f"Whole processes, `{model}`: {len(names)} clips, {audio_s / 60:.2f} min of audio, "
                f"{args.pairs} paired rounds after one warm-up round.\n")
    section.add(table(["system", "median wall s", "min s", "max s", "median CPU s", "audio-s/s",
                       "median paired × vs pipeline fp32", "transcripts equal to pipeline's"], rows) + "\n")
    one = clips / names[0]
    latency = {}
    for name in names_order:
        cmd = [str(one) if part == str(clips) else part for part in systems[name]]
        if name == "pipeline fp32":  # the script takes a folder
            single = Path(args.work_dir) / "transcribe_speed" / "one-clip"
            single.mkdir(parents=True, exist_ok=True)
            if not (single / one.name).exists():
                os.symlink(one.resolve(), single / one.name)
            cmd = [str(single) if part == str(one) else part for part in cmd]
        latency[name] = statistics.median(timed(cmd)[0] for _ in range(3))
    section.add("One file alone (" + f"{soundfile.info(str(one)).duration:.1f} s of audio), median of 3 wall s: "
                + ", ".join(f"{k} {v:.2f}" for k, v in latency.items()) + ".\n")
    data["one_file_wall_s"] = latency
    return data


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
    p.add_argument("--whole-process", action="store_true",
                   help="time whole CLI processes against a pipeline script (default 5 min of clips, 5 pairs)")
    p.add_argument("--pairs", type=int, default=5, help="--whole-process: timed rounds")
    p.add_argument("--onnx-precisions", default="fp32,int8",
                   help="--whole-process: also time `transcribe --engine onnx` at these precisions on the model's "
                        "ONNX export (made once under WORK_DIR/onnx/; empty: none)")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    if args.whole_process:
        model = common.base_size_model(args.work_dir) if args.model == "base" else common.require_model(args.model)
        section = Section("transcribe_speed --whole-process: asr-transfer transcribe vs a pipeline script").start()
        section.model = model
        section.data = whole_process(args, model, section)
        section.append(args.results)
        return 0
    import torch

    from asr_transfer.precision import check_precision
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
