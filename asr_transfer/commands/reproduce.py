"""``asr-transfer reproduce RUN [--out NEW] [--set key=value …]``: re-run a recorded run and compare the metrics.

A training run is re-trained from its ``config.resolved.json`` (``train.output_dir`` = NEW, default ``RUN-repro``);
an evaluation or baseline re-runs with its recorded options (``--set device=cpu`` changes one). Before running, one
warning line each (stderr) where the code commit differs from the record or the tree is dirty, library versions
differ, a manifest's fingerprint or the source model's weights changed. At the end a table compares the recorded
metrics with the new ones (with deltas). Data is used where it lies; nothing is copied.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="the run folder to reproduce (training, evaluation or baseline)")
    parser.add_argument("--out", default=None, metavar="NEW", help="folder for the new run (default: RUN-repro)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a config key (training: e.g. train.num_threads=2) or an evaluation option "
                             "(e.g. device=cpu); repeatable")
    parser.add_argument("--check", action="store_true",
                        help="only check code, versions, manifests and source model against the record; run nothing")
    parser.add_argument("--hash-audio", action="store_true",
                        help="fingerprint manifests by audio content (not size/mtime) where the record has content "
                             "hashes, and record content hashes for the new run (slower; survives copying the data)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..runs import format_reproduction, not_rerun, reproduce

    def warn(line: str) -> None:
        print(f"warning: {line}", file=sys.stderr)

    result = reproduce(args.run, args.out, args.overrides, check_only=args.check, hash_audio=args.hash_audio,
                       progress=not args.no_progress, warn=warn)
    if not result.ran:
        print(f"{result.run}: {len(result.warnings)} warning(s); nothing was run (--check)")
        return 0
    print(f"reproduced {result.run} ({result.kind}) -> {result.out}")
    print(format_reproduction(result))
    missing = not_rerun(result)
    if missing and result.kind == "train":
        print(f"not re-run: {', '.join(missing)} (evaluations inside the run folder are runs of their own: "
              f"reproduce RUN/eval/NAME --set model={result.out}/final --out ...)")
    return 0
