"""``asr-transfer validate MANIFEST...``: check every line and print a summary table; exit 1 on any error.

Warnings (sample-rate or channel outliers, a line in another language) are printed but do not fail.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSONL manifest(s) to check")
    parser.add_argument("--vocab", default=None, help="vocab.json: report characters it lacks")
    parser.add_argument("--lang", default=None, help="normalise text with this language's normaliser before checking")
    parser.add_argument("--model", default=None, metavar="DIR_OR_CONFIG_JSON",
                        help="model folder or config.json: CTC frame counts from its conv stack (and its vocab.json)")
    parser.add_argument("--max-problems", type=int, default=20, metavar="N", help="problems to list (default: 20)")
    parser.add_argument("--tolerance", type=float, default=0.1, metavar="S",
                        help="allowed manifest-vs-file duration difference in seconds (default: 0.1)")
    parser.add_argument("--no-audio", action="store_true", help="skip opening audio files (line and text checks only)")
    parser.add_argument("--include-marked", action="store_true",
                        help="also check segments `align` marked (align_flag); by default they are skipped and counted")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the full report(s) as JSON")


def run(args: argparse.Namespace) -> int:
    from ..validate import validate_manifest

    reports = []
    for i, manifest in enumerate(args.manifests):
        report = validate_manifest(manifest, vocab=args.vocab, lang=args.lang, model_config=args.model,
                                   check_audio=not args.no_audio, duration_tolerance_s=args.tolerance,
                                   include_marked=args.include_marked)
        reports.append(report)
        if i:
            print()
        print(report.format(max_problems=args.max_problems))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.to_dict() for r in reports], indent=2, ensure_ascii=False) + "\n",
                       encoding="utf-8")
    return 1 if any(r.errors for r in reports) else 0
