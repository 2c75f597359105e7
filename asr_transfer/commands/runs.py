"""``asr-transfer runs [ROOT…]`` lists run folders; ``asr-transfer runs compare RUN… [--report OUT]`` compares them.

Listing: every run (training, evaluation, baseline) found recursively under ROOT (default ``runs/`` and ``exp/``),
one row each: name, date, kind, source, target language, minutes of target data, stages, best dev CER/WER, test WER,
wall time; missing values show as "-". ``--filter`` takes a column, config key (``stages.0.lr``, ``train.seed``),
metric or record key (``code.commit``, ``status``) with ``=`` (numbers compare as numbers), ``~`` (substring),
``<`` or ``>``. Comparing: config keys whose values differ (side by side), provenance differences (commit, library
versions, manifest fingerprints) and every metric per run with its delta against the first run.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("asr-transfer runs [ROOT ...] [--filter KEY=VALUE|KEY~SUB ...] [--sort COLUMN] [--desc] [--json]\n"
                    "       asr-transfer runs compare RUN RUN [RUN ...] [--report OUT] [--json]")
    parser.add_argument("items", nargs="*", metavar="ROOT",
                        help="folders to search (default: runs/ and exp/); or `compare RUN RUN…`")
    parser.add_argument("--filter", dest="filters", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs where KEY=VALUE, KEY~SUBSTRING, KEY<N or KEY>N (repeatable; all must hold)")
    parser.add_argument("--sort", default="date", metavar="COLUMN",
                        help="sort by a column (name date kind source lang minutes stages dev_cer dev_wer test_wer "
                             "wall status) or any config/metric key (default: %(default)s; missing values last)")
    parser.add_argument("--desc", action="store_true", help="sort descending")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--report", default=None, metavar="OUT",
                        help="with compare: also build report.html/report.md for the runs into OUT")


def run(args: argparse.Namespace) -> int:
    from .. import runs
    from ..errors import UserError

    if args.items and args.items[0] == "compare":
        if args.filters or args.sort != "date" or args.desc:
            raise UserError("runs compare takes run folders (and --report/--json), not --filter/--sort/--desc")
        cmp = runs.compare_runs(args.items[1:])
        if args.json:
            print(json.dumps(cmp, indent=2, default=str))
        else:
            print(runs.format_comparison(cmp))
        if args.report:
            from ..report import build_report

            path = build_report(args.items[1:], args.report)
            print(f"report: {path}")
        return 0
    if args.report:
        raise UserError("--report goes with `runs compare RUN RUN…`")
    rows = runs.list_runs(args.items, args.filters, args.sort, args.desc)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif rows:
        print(runs.format_runs(rows))
    else:
        where = " ".join(args.items) or " and ".join(f"{r}/" for r in runs.DEFAULT_ROOTS)
        print(f"no runs found under {where}" + (" matching the filters" if args.filters else ""))
    return 0
