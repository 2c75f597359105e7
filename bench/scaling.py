"""Scaling and memory: transcribe one long file of 1, 10 and 60 minutes in a fresh
subprocess each, recording wall time and the child's peak RSS (``os.wait4`` rusage, i.e. what ``/usr/bin/time -v``
calls "Maximum resident set size"; it includes Python, torch and the model).

The long files are built once by joining synthetic English clips (held-out voices, 0.3 s pauses, cycling through the
clips) and cached under ``<work-dir>/long/``. The long-file path streams the audio in blocks and runs the model on
overlapping windows (``chunk_s``/``stride_s``), so time should grow linearly with audio length and memory should
stay flat: the checks are seconds per audio minute (the largest size within 1.5× of the smallest) and peak RSS
below 1.5 GB. A "load only" child (imports + model, no audio) gives the fixed part of the memory.

The shipped model transcribes an audio minute in about 2 s on one busy core, so 1/10/60 is the default and fits in
a few minutes on 2 cores (``--full`` is the same); on a slower machine or a bigger model pass ``--minutes-list 1,5,10``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np
from common import DEFAULT_MODEL, Section, fmt, table

RSS_LIMIT_MB = 1536.0
LINEAR_TOLERANCE = 1.5


def build_long_file(corpus: dict, minutes: float, out: Path) -> Path:
    """Join clips (cycling) with 0.3 s pauses until ``minutes`` of audio; written once as 16 kHz PCM16 WAV."""
    import soundfile

    from asr_transfer.audio import load_audio
    from asr_transfer.manifest import read_manifest

    if out.is_file():
        return out
    clips = [load_audio(u.audio_filepath) for u in read_manifest(corpus["test"])]
    pause = np.zeros(int(0.3 * 16000), dtype=np.float32)
    target = int(minutes * 60 * 16000)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.wav")
    written, i = 0, 0
    with soundfile.SoundFile(str(tmp), "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        while written < target:
            piece = np.concatenate([clips[i % len(clips)], pause])[: target - written]
            f.write(piece)
            written += len(piece)
            i += 1
    os.replace(tmp, out)
    return out


def child(args) -> int:
    """Runs in the subprocess: load the model, transcribe one file, print one JSON line."""
    t0 = time.perf_counter()
    from asr_transfer.model.load import load_model
    from asr_transfer.transcription import transcribe

    common.setup_threads(args.threads)
    loaded = load_model(args.model)
    load_s = time.perf_counter() - t0
    result = {"load_s": load_s}
    import torch

    with torch.inference_mode():  # first-call initialisation (kernels, allocator) out of the timed part
        loaded.model(torch.zeros(1, 16000))
    if args.child != "-":
        t1 = time.perf_counter()
        (t,) = transcribe(
            [args.child], loaded, decoder="greedy", device="cpu", precision=args.precision, progress=False
        )
        result.update(transcribe_s=time.perf_counter() - t1, duration_s=t.duration_s, words=len(t.text.split()),
                      error=t.error, infer_s=t.timings.infer_s, decode_s=t.timings.decode_s)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_child(script: Path, file: str, model: str, precision: str, threads: int | None) -> dict:
    cmd = [sys.executable, str(script), "--child", file, "--model", model, "--precision", precision]
    if threads:
        cmd += ["--threads", str(threads)]
    import tempfile

    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True)
        # wait4 reaps this child and returns its own rusage (RUSAGE_CHILDREN would be the max over all children).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None or proc.returncode != 0:
        raise SystemExit(f"error: child failed on {file} (exit {proc.returncode}):\n{err[-2000:]}")
    res = json.loads(line[len("RESULT "):])
    res["wall_s"] = wall
    res["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return res


def main(argv=None) -> int:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--minutes-list", default=None, help="file lengths in minutes (default and --full: 1,10,60)")
    p.add_argument("--precision", default="fp32")
    p.add_argument(
        "--clips", default=None, help="manifest whose clips are joined (default: synthetic English test clips)"
    )
    p.add_argument("--child", default=None, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.child is not None:
        return child(args)
    common.setup_threads(args.threads)  # the section header reports this process's threads: make them the children's
    model = str(common.require_model(args.model))
    sizes = [float(x) for x in (args.minutes_list or "1,10,60").split(",")]
    section = Section(
        "scaling: long-file transcription time and peak memory" + (" (--full)" if args.full else "")
    ).start()
    section.model = model
    if args.clips:
        corpus = {"test": Path(args.clips)}
    else:
        corpus = common.synth_corpus(args.work_dir, "en", 0.2, dev_minutes=0.1, test_minutes=3.0, seed=args.seed)
    tag = "en" if not args.clips else "clips-" + common.short_hash(Path(args.clips))
    script = Path(__file__).resolve()
    rows, data = [], {"model": model, "precision": args.precision, "runs": []}
    base = _popen_child(script, "-", model, args)
    rows.append(["load only (imports + model)", None, base["wall_s"], None, base["peak_rss_mb"], None])
    data["load_only"] = base
    for minutes in sizes:
        path = build_long_file(corpus, minutes, Path(args.work_dir) / "long" / f"{tag}-{minutes:g}min.wav")
        res = _popen_child(script, str(path), model, args)
        if res.get("error"):
            raise SystemExit(f"error: {path}: {res['error']}")
        per_min = res["transcribe_s"] / (res["duration_s"] / 60)
        res.update(minutes=minutes, s_per_audio_min=per_min)
        data["runs"].append(res)
        rows.append([f"{minutes:g} min", res["duration_s"] / 60, res["wall_s"], per_min, res["peak_rss_mb"],
                     res["peak_rss_mb"] - base["peak_rss_mb"]])
        print(f"{minutes:g} min: transcribe {res['transcribe_s']:.1f}s ({per_min:.2f} s per audio minute), "
              f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    per = [r["s_per_audio_min"] for r in data["runs"]]
    linear = max(per) / min(per) if per else None
    peak = max(r["peak_rss_mb"] for r in data["runs"]) if data["runs"] else None
    data.update(linearity=linear, peak_rss_mb=peak)
    section.add(f"One file per size, transcribed in a fresh subprocess (`transcribe(..., decoder='greedy', "
                f"precision='{args.precision}')`, chunk 30 s / stride 5 s). 'child wall' includes Python start-up "
                "and model load; 's per audio minute' is the transcribe call alone.\n")
    section.add(table(["file", "audio min", "child wall s", "s per audio minute", "peak RSS MB", "MB over load only"],
                      rows) + "\n")
    section.add(
        f"Linearity: slowest / fastest s-per-audio-minute = {fmt(linear)} "
        f"({'~linear' if linear is not None and linear <= LINEAR_TOLERANCE else 'NOT linear'}, tolerance "
        f"{LINEAR_TOLERANCE}×); peak RSS {fmt(peak)} MB ({'<' if peak is not None and peak < RSS_LIMIT_MB else '≥'} "
        f"{RSS_LIMIT_MB:.0f} MB target: {'met' if peak is not None and peak < RSS_LIMIT_MB else 'MISSED'}).\n"
    )
    section.data = data
    section.append(args.results)
    return 0


def _popen_child(script: Path, file: str, model: str, args) -> dict:
    return run_child(script, file, model, args.precision, args.threads)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
