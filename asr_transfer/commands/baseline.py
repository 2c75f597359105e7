"""``asr-transfer baseline --model M --manifest test.jsonl --lang de --out DIR``: source-only baselines.

``DIR/raw/``: the source model with its own (English) head, output through the target normaliser.
``DIR/zero-shot/``: the head mapped to the target vocabulary (``swap_head(mode="mapped")``), no training.
"""
from __future__ import annotations

import argparse

from ..inference import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the source model folder (HF form) or hub id")
    parser.add_argument("--manifest", required=True, help="JSONL test manifest in the target language")
    parser.add_argument("--lang", required=True, help="target language (normaliser and base-letter map), e.g. de")
    parser.add_argument("--vocab", default=None,
                        help="target vocab.json for the zero-shot head (default: built from the manifest text)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="(default: %(default)s)")
    parser.add_argument("--max-utts", type=int, default=None, metavar="N", help="score only the first N utterances")
    parser.add_argument("--out", required=True, help="folder for raw/ and zero-shot/ evaluations")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import baseline, result_line

    results = baseline(args.model, args.manifest, target_vocab=args.vocab, lang=args.lang, out_dir=args.out,
                       device=args.device, precision=args.precision, max_utts=args.max_utts)
    for name, summary in results.items():
        print(f"{result_line(summary)} -> {args.out}/{name}")
    return 0
