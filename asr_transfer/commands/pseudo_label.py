"""``asr-transfer pseudo-label --model M --manifest untranscribed.jsonl [--lm DIR] --out DIR``: self-training labels.

Thin wrapper over :func:`asr_transfer.pseudolabel.pseudo_label`: writes ``DIR/manifest.jsonl`` (the kept lines, for
``train``), ``DIR/all.jsonl`` and ``DIR/summary.json``, and prints what was kept.
"""
from __future__ import annotations

import argparse

from ..precision import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model that labels: an adapted model folder (HF form)")
    parser.add_argument("--manifest", required=True,
                        help="lines to label, usually from `prepare folder --no-text` (any text there is replaced)")
    parser.add_argument("--out", required=True, help="folder for manifest.jsonl, all.jsonl and summary.json")
    parser.add_argument("--lm", default=None, metavar="DIR",
                        help="decode with beam search and this LM folder (from `asr-transfer lm`); default greedy")
    parser.add_argument("--beam-size", type=int, default=None, help="beam width (default: the decoder's, 50)")
    parser.add_argument("--lm-weight", type=float, default=None, help="alpha (tune it on dev with tune-lm)")
    parser.add_argument("--word-score", type=float, default=None, help="beta (tune it on dev with tune-lm)")
    parser.add_argument("--confidence", choices=("ctc", "decoder"), default="ctc",
                        help="ctc: the hypothesis's CTC likelihood per label under the acoustic model, in (0, 1]; "
                             "decoder: the decoder's score per label (with --lm: acoustic + weighted LM + word "
                             "bonuses) (default: %(default)s)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--min-confidence", type=float, default=None, metavar="X", help="keep lines scoring >= X")
    keep.add_argument("--top-share", type=float, default=None, metavar="Y",
                      help="keep the most confident share Y (0-1] of the labelled lines (default: keep all)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="(default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ..pseudolabel import LabelFilter, format_summary, pseudo_label

    summary = pseudo_label(args.model, args.manifest, args.out, lm_dir=args.lm,
                           label_filter=LabelFilter(args.min_confidence, args.top_share), confidence=args.confidence,
                           beam_size=args.beam_size, lm_weight=args.lm_weight, word_score=args.word_score,
                           device=args.device, precision=args.precision)
    print(format_summary(summary))
    return 0
