"""``asr-transfer lm --text FILE… --lang de --order 4 --exclude dev.jsonl test.jsonl --out DIR``: a KenLM n-gram LM.

Writes ``DIR/lm.arpa`` (modified Kneser-Ney), ``lexicon.txt``, ``unigrams.txt`` and ``lm.json``. Text files are
running text (``.txt``, ``.txt.gz``; split into sentences per line) or manifests (``.jsonl``: their transcripts).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..text import LANGUAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", nargs="+", required=True, type=Path, metavar="FILE",
                        help="text corpora (.txt, .txt.gz) or manifests (.jsonl) to estimate the LM from")
    parser.add_argument("--lang", required=True, choices=LANGUAGES, help="language (selects the normaliser)")
    parser.add_argument("--order", type=int, default=4, help="n-gram order (default 4)")
    parser.add_argument("--exclude", nargs="*", default=[], type=Path, metavar="MANIFEST",
                        help="dev/test manifests whose transcripts must not be in the LM (strongly recommended)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--vocab", type=Path, default=None,
                        help="the acoustic model's vocab.json (or model folder): drop sentences it cannot spell")
    parser.add_argument("--prune", nargs="+", type=int, default=[], metavar="N",
                        help="per-order adjusted-count thresholds as in lmplz, e.g. 0 0 1 (last repeats; "
                             "unigrams are never pruned); default: no pruning")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..lm import build_lm

    if args.order < 1 or args.order > 9:
        raise UserError(f"--order must be in 1..9, got {args.order}")
    if not args.exclude:
        print("warning: no --exclude manifests: dev/test transcripts in the text would inflate LM results",
              file=sys.stderr)
    build_lm(args.text, args.lang, order=args.order, exclude_manifests=args.exclude, out_dir=args.out,
             vocab=args.vocab, prune=args.prune, log=lambda msg: print(msg, file=sys.stderr if
                                                                        msg.startswith("warning") else sys.stdout))
    return 0
