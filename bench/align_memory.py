"""Peak memory and time of ``asr-transfer align`` against recording length: the synthetic German book of
``align_accuracy.py`` repeated (and cut) to 15, 30 and 60 minutes, each aligned in a fresh process under
``/usr/bin/time -v`` (peak RSS of the whole process: model, audio blocks, emissions, trellis).

    python bench/align_accuracy.py --minutes 20          # builds data/bench/align/book-20min-del0
    python bench/align_memory.py --book data/bench/align/book-20min-del0 --minutes 15 30 60
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asr_transfer.audio import SAMPLE_RATE, load_audio, write_wav  # noqa: E402


def make_long(book: Path, minutes: float, out: Path) -> Path:
    """``book.wav`` repeated to ``minutes`` (cut at an utterance end) with its text repeated to match."""
    truth = json.loads((book / "truth.json").read_text())["utterances_truth"]
    wave = load_audio(book / "book.wav")
    book_s = len(wave) / SAMPLE_RATE
    texts, pieces, total = [], [], 0.0
    while total < minutes * 60:
        for t in truth:
            if total + t["end"] > minutes * 60:
                break
            texts.append(t["text"])
        cut = minutes * 60 - total
        if cut >= book_s:
            pieces.append(wave)
            total += book_s
        else:
            end = max([t["end"] for t in truth if t["end"] <= cut], default=0.0)
            pieces.append(wave[: int((end + 0.3) * SAMPLE_RATE)])
            total += end + 0.3
            break
    folder = out / f"long-{minutes:g}min"
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / "book.wav", np.concatenate(pieces))
    (folder / "book.txt").write_text(". ".join(texts) + ".", encoding="utf-8")
    return folder


def measure(folder: Path, model: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "asr_transfer", "align", str(folder), "--model", str(model),
           "--lang", "de", "--out", str(folder / "aligned"), "--overwrite"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    wall_s = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    # CPU seconds (user + system) move less than wall time when other jobs share the machine.
    cpu_s = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for k in ("User", "System"))
    summary = json.loads((folder / "aligned" / "summary.json").read_text())
    return {"audio_minutes": summary["audio_minutes"], "peak_rss_mb": round(rss_kb / 1024), "wall_s": wall_s,
            "cpu_s": round(cpu_s, 1),
            "kept_minutes": summary["kept_minutes"], "marked_segments": summary["marked_segments"],
            "skipped_words": sum(k["words"] for k in summary["skipped_text"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--book", type=Path, required=True, help="a book folder from align_accuracy.py")
    p.add_argument("--minutes", type=float, nargs="+", default=[15, 30, 60])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "en-synth-small")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "bench" / "align-memory")
    args = p.parse_args(argv)
    rows = []
    for minutes in args.minutes:
        row = measure(make_long(args.book, minutes, args.out), args.model)
        row["cpu_s_per_audio_minute"] = round(row["cpu_s"] / row["audio_minutes"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
