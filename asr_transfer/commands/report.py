"""``asr-transfer report DIR… --out REPORT_DIR``: report.md + a self-contained report.html.

DIR may be an evaluation folder (summary.json), a folder of evaluations (a ``baseline`` output) or a run folder
(metrics.jsonl, stages.json, evaluations under eval/). See :mod:`asr_transfer.report`.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="DIR", help="evaluation, baseline or run folders")
    parser.add_argument("--out", required=True, help="folder for report.md, report.html and figures/")
    parser.add_argument("--baseline", default=None,
                        help="system the p-values compare against (default: the one named 'raw', else the first)")
    parser.add_argument("--worst", type=int, default=10, metavar="N", help="worst utterances shown per system")


def run(args: argparse.Namespace) -> int:
    from ..report import build_report

    path = build_report(args.inputs, args.out, baseline=args.baseline, worst=args.worst)
    print(f"report: {path} (and {path.with_suffix('.md')})")
    return 0
