"""Alignment accuracy of ``asr-transfer align`` on a synthetic German "book" with known utterance boundaries.

The book: the held-out-voice test split of a synthetic German corpus (``corpora/synth.py``: voices never heard in
any training), its utterances joined in order with random pauses of 0.2-1.5 s (uniform; with -70 dB white noise so
the pauses are not digital silence), the text as one file with the sentences joined by ". " and no line breaks.
Truth per utterance: where its speech starts and ends in the book (the clip's position plus its first/last sample
above 1 % of the clip's peak: espeak pads clips with a few ms of silence).

Measured: the share of true utterance boundaries (starts and ends) within ``--tolerance-s`` of an aligned segment
boundary (one sentence is one segment; a sentence longer than ``--max-s`` would be cut further, so the nearest
segment edge counts). ``--delete`` removes that share of the text from the middle and reports whether the audio
whose text is gone is flagged (covered by marked segments or reported as unaligned audio).

    python bench/align_accuracy.py --minutes 20            # the issue's accuracy check
    python bench/align_accuracy.py --minutes 20 --delete 0.1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from books import write_book  # noqa: E402

from asr_transfer.manifest import read_manifest  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "en-synth-small"


def build_book(out_dir: Path, minutes: float, seed: int = 0, delete: float = 0.0, jobs: int = 2) -> dict:
    """Synthesise (or reuse) the corpus and write ``book.wav``, ``book.txt`` and ``truth.json`` in ``out_dir``.

    ``delete``: share of the utterances (from the middle) whose text is left out of ``book.txt``; their audio stays.
    Returns the truth: per utterance ``start``/``end`` (s, speech edges in the book), ``text``, ``deleted``.
    """
    from asr_transfer.corpora.synth import prepare_synth

    corpus = out_dir.parent / f"corpus-{minutes:g}min-seed{seed}"
    paths = prepare_synth("de", corpus, minutes=0.05, seed=seed, dev_minutes=0.05, test_minutes=minutes, jobs=jobs)
    utts = read_manifest(paths["test"])
    n = len(utts)
    lo = int(round(n * (0.5 - delete / 2)))
    hi = lo + int(round(n * delete))
    record = write_book(utts, out_dir / "book.wav", np.random.default_rng(seed), text_left_out=range(lo, hi))
    record["deleted"] = [lo, hi]
    (out_dir / "truth.json").write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    return record


def boundary_accuracy(truth: list[dict], rows: list[dict], tolerance_s: float) -> dict:
    """Share of true starts/ends (of utterances whose text is in the book) within ``tolerance_s`` of a segment edge.

    A segment's edges are its first and last letters (``offset`` + the context pad is removed again by taking the
    manifest's ``align_start``/``align_end`` when present, else offset and offset + duration).
    """
    starts = np.array(sorted(r.get("align_start", r.get("offset", 0.0)) for r in rows))
    ends = np.array(sorted(r.get("align_end", r.get("offset", 0.0) + r["duration"]) for r in rows))
    errors = []
    for t in truth:
        if t["deleted"]:
            continue
        errors.append(np.abs(starts - t["start"]).min() if len(starts) else np.inf)
        errors.append(np.abs(ends - t["end"]).min() if len(ends) else np.inf)
    errors = np.array(errors)
    return {"boundaries": len(errors), "within": int((errors <= tolerance_s).sum()),
            "share": round(float((errors <= tolerance_s).mean()), 4),
            "median_error_s": round(float(np.median(errors)), 3),
            "p95_error_s": round(float(np.percentile(errors, 95)), 3)}


def deletion_flagged(truth: list[dict], rows: list[dict], summary: dict) -> dict:
    """How much of the audio whose text was deleted is flagged: inside marked segments or unaligned regions.

    Also how much of it lies inside *kept* (unmarked) segments: that would be silent misalignment.
    """
    gone = [(t["start"], t["end"]) for t in truth if t["deleted"]]
    if not gone:
        return {}
    lo, hi = gone[0][0], gone[-1][1]
    marked = [(r.get("offset", 0.0), r.get("offset", 0.0) + r["duration"]) for r in rows if r.get("align_flag")]
    kept = [(r.get("offset", 0.0), r.get("offset", 0.0) + r["duration"]) for r in rows if not r.get("align_flag")]
    unaligned = [(u["start_s"], u["end_s"]) for u in summary["unaligned_audio"]]

    def covered(spans):
        return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in spans)

    speech = sum(b - a for a, b in gone)
    return {"deleted_region_s": round(hi - lo, 2), "deleted_speech_s": round(speech, 2),
            "flagged_s": round(covered(marked) + covered(unaligned), 2),
            "in_kept_segments_s": round(covered(kept), 2)}


def run(out_dir: Path, minutes: float, delete: float, model: Path, tolerance_s: float, max_s: float,
        seed: int = 0) -> dict:
    """Build the book, run ``asr-transfer align`` on it in-process, and measure."""
    from asr_transfer.cli import main

    book = out_dir / f"book-{minutes:g}min-del{delete:g}"
    truth = build_book(book, minutes, seed, delete)
    (book / "aligned").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    rc = main(["align", str(book), "--model", str(model), "--lang", "de", "--out", str(book / "aligned"),
               "--max-s", str(max_s), "--overwrite"])
    wall = time.perf_counter() - t0
    if rc:
        raise SystemExit(rc)
    rows = [json.loads(line) for line in (book / "aligned" / "manifest.jsonl").read_text().splitlines()]
    summary = json.loads((book / "aligned" / "summary.json").read_text())
    result = {"minutes": truth["minutes"], "utterances": truth["utterances"], "delete": delete,
              "tolerance_s": tolerance_s, "wall_s": round(wall, 1),
              "accuracy": boundary_accuracy(truth["utterances_truth"], rows, tolerance_s),
              "segments": len(rows), "marked": sum(1 for r in rows if r.get("align_flag")),
              "deletion": deletion_flagged(truth["utterances_truth"], rows, summary)}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="minutes of book audio (default 20)")
    p.add_argument("--delete", type=float, default=0.0, help="share of the text deleted from the middle")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--tolerance-s", type=float, default=0.2)
    p.add_argument("--max-s", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "data" / "bench" / "align")
    args = p.parse_args(argv)
    result = run(args.out, args.minutes, args.delete, args.model, args.tolerance_s, args.max_s, args.seed)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
