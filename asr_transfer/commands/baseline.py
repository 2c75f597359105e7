"""``asr-transfer baseline --model M --manifest test.jsonl --lang de --out DIR``: source-only baselines.

``DIR/raw/``: the source model with its own (English) head, output through the target normaliser.
``DIR/zero-shot/``: the head mapped to the target vocabulary (``swap_head(mode="mapped")``), no training.
``DIR/zero-shot-lm/`` (with ``--lm``): the source head beam-decoded with the target LM, each LM word spelled in the
source letters (über → u b e r) and emitted in its own spelling; its ``lexicon.txt`` is written beside the summary.
"""
from __future__ import annotations

import argparse

from ..precision import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the source model folder (HF form) or hub id")
    parser.add_argument("--manifest", required=True, help="JSONL test manifest in the target language")
    parser.add_argument("--lang", required=True, help="target language (normaliser and base-letter map), e.g. de")
    parser.add_argument("--vocab", default=None,
                        help="target vocab.json for the zero-shot head (default: built from the manifest text)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="(default: %(default)s)")
    parser.add_argument("--max-utts", type=int, default=None, metavar="N", help="score only the first N utterances")
    parser.add_argument("--lm", default=None, metavar="DIR",
                        help="target LM folder (asr-transfer lm): adds the zero-shot + LM system in DIR/zero-shot-lm")
    parser.add_argument("--beam-size", type=int, default=None, help="beam width of the LM system (default: 50)")
    parser.add_argument("--lm-weight", type=float, default=None, help="LM weight alpha (default: 2.0); tune on dev")
    parser.add_argument("--word-score", type=float, default=None, help="word bonus beta (default: 0.0); tune on dev")
    parser.add_argument("--out", required=True, help="folder for raw/, zero-shot/ (and zero-shot-lm/) evaluations")
    parser.add_argument("--source-test", default=None, metavar="MANIFEST",
                        help="also score the source (its own head, greedy) on this source-language test manifest, "
                             "into OUT/source-test: the reference of retention (evaluate --source-test)")
    parser.add_argument("--source-lang", default="en", help="the source test's language (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import baseline, result_line

    results = baseline(args.model, args.manifest, target_vocab=args.vocab, lang=args.lang, out_dir=args.out,
                       device=args.device, precision=args.precision, max_utts=args.max_utts, lm_dir=args.lm,
                       beam_size=args.beam_size, lm_weight=args.lm_weight, word_score=args.word_score)
    for name, summary in results.items():
        print(f"{result_line(summary)} -> {args.out}/{name}")
    if args.source_test:
        from pathlib import Path

        from ..retention import SOURCE_TEST_FOLDER, UNADAPTED, score_source_test

        out = Path(args.out) / SOURCE_TEST_FOLDER
        source = score_source_test(args.model, args.source_test, UNADAPTED, out, lang=args.source_lang,
                                   device=args.device, precision=args.precision, max_utts=args.max_utts)
        print(f"{result_line(source)} -> {out}")
    return 0
