"""``asr-transfer align``: long recordings + their text → a NeMo-style manifest of utterance segments.

Writes ``manifest.jsonl`` (``offset``/``duration`` on the long files, ``align_score``, ``align_flag`` on marked
segments) and ``summary.json`` into ``--out``, and prints the summary. The pipeline is
:mod:`asr_transfer.recordings` (over :mod:`asr_transfer.alignment` and :mod:`asr_transfer.segmentation`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="FOLDER|TSV",
                        help="a folder of name.wav + name.txt pairs, or a TSV of audio<TAB>text paths")
    parser.add_argument("--model", required=True, help="CTC model folder (the English source works: letters it "
                        "lacks align through their base letters)")
    parser.add_argument("--lang", required=True, help="language of the text (its normaliser): de, en, nl, es, fr")
    parser.add_argument("--out", type=Path, required=True, help="folder for manifest.jsonl and summary.json")
    parser.add_argument("--max-s", type=float, default=15.0, help="longest segment, s (default 15)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="mark segments whose score (nats/frame below the model's best path) is below this "
                             "(default: the recording's median score minus 0.8)")
    parser.add_argument("--window-s", type=float, default=30.0, help="alignment window, s (default 30)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest.jsonl in --out")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading pickled pytorch_model.bin weights (can run code: trusted models only)")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..alignment import AlignOptions
    from ..audio import audio_info
    from ..errors import UserError
    from ..files import atomic_write_json
    from ..inference import InferenceOptions, as_recognizer
    from ..manifest import Utterance, write_manifest
    from ..outdir import check_output_dir
    from ..recordings import align_recording, find_recordings, format_summary, read_text_file, segment_rows, summarize
    from ..text import get_normalizer

    lang = get_normalizer(args.lang).lang
    options = AlignOptions(window_s=args.window_s, overlap_s=min(10.0, args.window_s / 3), max_s=args.max_s,
                           **({} if args.min_score is None else {"min_score": args.min_score}))
    recordings = find_recordings(args.source)
    durations = []
    for r in recordings:  # every input is checked before the model loads: a bad file costs a second
        durations.append(audio_info(r.audio).duration_s)
        read_text_file(r.text)
    out = check_output_dir(args.out, files=[MANIFEST, SUMMARY], key="--out")
    if (out / MANIFEST).exists() and not args.overwrite:
        raise UserError("already holds a manifest.jsonl: choose another --out or pass --overwrite", path=out)
    recognizer = as_recognizer(args.model, InferenceOptions(device=args.device), allow_pickle=args.allow_pickle)
    results, rows = [], []
    with tqdm(total=round(sum(durations), 1), unit="s", desc="aligning", disable=None,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]") as bar:
        for r in recordings:
            result = align_recording(r, recognizer, lang, options, bar)
            results.append(result)
            rows.extend(segment_rows(result, lang))
    utterances = []
    for row in rows:
        extra = {k: v for k, v in row.items() if k.startswith("align_")}
        utterances.append(Utterance(row["audio_filepath"], row["duration"], row["text"], offset=row["offset"],
                                    lang=lang, id=row["id"], extra=extra))
    write_manifest(out / MANIFEST, utterances)
    summary = summarize(results, options)
    summary.update(model=str(args.model), lang=lang, manifest=str(out / MANIFEST))
    atomic_write_json(out / SUMMARY, summary, indent=1)
    print(format_summary(summary))
    print(f"wrote {out / MANIFEST} ({len(rows)} segments) and {out / SUMMARY}", file=sys.stderr)
    return 0
