"""``asr-transfer evaluate --model M --manifest test.jsonl --out DIR``: WER/CER of a model on a manifest.

Writes ``DIR/summary.json`` and ``DIR/utterances.jsonl`` (see :func:`asr_transfer.evaluation.evaluate`) and prints one
line: WER and CER with their bootstrap 95% intervals.
"""
from __future__ import annotations

import argparse

from ..onnx_engine import ENGINES
from ..precision import PRECISIONS


def add_decoder_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``tune-lm``: device, precision, language, utterance cap."""
    p.add_argument("--model", required=True, help="model folder (HF form) or hub id")
    p.add_argument("--manifest", required=True, help="JSONL manifest to score")
    p.add_argument("--lang", default=None,
                   help="target language: picks the normaliser (default: the model's record, asr_transfer.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="(default: %(default)s)")
    p.add_argument("--max-utts", type=int, default=None, metavar="N", help="score only the first N utterances")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_decoder_arguments(parser)
    parser.add_argument("--decoder", choices=("greedy", "beam"), default=None,
                        help="default: beam when --lm is given, else greedy")
    parser.add_argument("--lm", default=None, metavar="DIR", help="LM folder from `asr-transfer lm` (needs beam)")
    parser.add_argument("--beam-size", type=int, default=None, help="beam width (default: the decoder's, 50)")
    parser.add_argument("--lm-weight", type=float, default=None, help="alpha: LM weight (tune with tune-lm)")
    parser.add_argument("--word-score", type=float, default=None, help="beta: bonus per word (tune with tune-lm)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickled pytorch_model.bin / .pt weights; unpickling can run arbitrary code, so "
                             "only for models from a source you trust (convert them to safetensors instead)")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="torch (default, the reference); onnx: score the model's ONNX export (export-onnx), "
                             "e.g. its --precision int8")
    parser.add_argument("--name", default=None, help="system name in reports (default: the --out folder name)")
    parser.add_argument("--out", required=True, help="output folder for summary.json and utterances.jsonl")
    parser.add_argument("--source-test", default=None, metavar="MANIFEST",
                        help="also score the model (its own head, greedy) on this source-language test manifest, "
                             "into OUT/source-test: the report's retention table (docs/recipes.md)")
    parser.add_argument("--source-lang", default="en", help="the source test's language (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate, result_line

    decoder = args.decoder or ("beam" if args.lm else "greedy")
    summary = evaluate(
        args.model, args.manifest, decoder=decoder, lm_dir=args.lm, out_dir=args.out, lang=args.lang,
        beam_size=args.beam_size, lm_weight=args.lm_weight, word_score=args.word_score, device=args.device,
        precision=args.precision, max_utts=args.max_utts, name=args.name, allow_pickle=args.allow_pickle,
        engine=args.engine,
    )
    print(f"{result_line(summary)} -> {args.out}")
    for item in summary.get("skipped", [])[:5]:
        print(f"  skipped {item['id']}: {item['reason']}")
    if args.source_test:
        from pathlib import Path

        from ..retention import SOURCE_TEST_FOLDER, kept_head_folder, score_kept_head, score_source_test

        out = Path(args.out) / SOURCE_TEST_FOLDER
        options = dict(lang=args.source_lang, device=args.device, precision=args.precision, max_utts=args.max_utts,
                       allow_pickle=args.allow_pickle)
        source = score_source_test(args.model, args.source_test, summary["name"], out, **options)
        print(f"{result_line(source)} -> {out}")
        # A two-head model (train.mix.head = own) is scored with its kept source head too.
        kept_out = kept_head_folder(out, args.source_lang)
        kept = score_kept_head(args.model, args.source_test, summary["name"], kept_out, **options)
        if kept is not None:
            print(f"{result_line(kept)} -> {kept_out}")
    return 0
