"""``asr-transfer tune-lm --model M --manifest dev.jsonl --lm DIR --alphas … --betas … --out DIR``.

Runs the model once over the dev manifest, then beam-decodes the cached log-probabilities for every
(alpha = LM weight, beta = word score) pair. Writes ``DIR/tune.json`` and prints the WER grid and the best pair.
Tune on dev, never on the test set you report.
"""
from __future__ import annotations

import argparse

from ..errors import UserError
from .evaluate import add_decoder_arguments


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_decoder_arguments(parser)
    parser.add_argument("--lm", required=True, metavar="DIR", help="LM folder from `asr-transfer lm`")
    parser.add_argument(
        "--alphas", type=_floats, default=[0.0, 0.5, 1.0, 1.5, 2.0], help="LM weights (default: 0,0.5,1,1.5,2)"
    )
    parser.add_argument("--betas", type=_floats, default=[-1.0, 0.0, 1.0, 2.0],
                        help="word scores (default: -1,0,1,2)")
    parser.add_argument("--beam-size", type=int, default=None, help="beam width (default: the decoder's, 50)")
    parser.add_argument("--zero-shot", action="store_true",
                        help="tune zero-shot + LM: the model's own (source) head, the LM's words spelled in its "
                             "letters (OUT/lexicon.txt); picks the lowest CER among points no worse in WER than "
                             "greedy (docs/decoding.md); then pass the pair to `baseline --lm`")
    parser.add_argument("--out", required=True, help="folder for tune.json")


def format_grid(result: dict) -> str:
    """WER (%) table: one row per alpha, one column per beta; the best cell is starred."""
    alphas = sorted({g["lm_weight"] for g in result["grid"]})
    betas = sorted({g["word_score"] for g in result["grid"]})
    cell = {(g["lm_weight"], g["word_score"]): g["wer"] for g in result["grid"]}
    best = (result["best"]["lm_weight"], result["best"]["word_score"])
    lines = ["alpha\\beta " + "".join(f"{b:>9g}" for b in betas)]
    for a in alphas:
        row = f"{a:>10g} "
        for b in betas:
            mark = "*" if (a, b) == best else " "
            row += f"{100 * cell[(a, b)]:>8.2f}{mark}"
        lines.append(row)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluation import tune_lm
    from ..inference import InferenceOptions, as_recognizer
    from ..outdir import check_output_dir
    from ..zeroshot import write_spelled_lexicon

    if args.beam_size is not None and args.beam_size < 1:
        raise UserError(f"--beam-size must be >= 1, got {args.beam_size}")
    model, zero_shot = args.model, {}
    if args.zero_shot:
        model = as_recognizer(args.model, InferenceOptions(device=args.device, precision=args.precision))
        lexicon = Path(check_output_dir(args.out, files=("lexicon.txt",), key="--out")) / "lexicon.txt"
        write_spelled_lexicon(args.lm, model.vocab, lexicon)
        zero_shot = {"lexicon": lexicon, "select": "cer"}
    result = tune_lm(model, args.manifest, args.lm, args.alphas, args.betas, out_dir=args.out, lang=args.lang,
                     beam_size=args.beam_size, device=args.device, precision=args.precision, max_utts=args.max_utts,
                     **zero_shot)
    print(f"WER (%) on {result['n_utterances']} utterances; greedy (no LM): {100 * result['greedy']['wer']:.2f}%")
    print(format_grid(result))
    best = result["best"]
    chosen = "chosen by CER; " if result["select"] == "cer" else ""
    print(f"{chosen}best: --lm-weight {best['lm_weight']:g} --word-score {best['word_score']:g} "
          f"(WER {100 * best['wer']:.2f}%, CER {100 * best['cer']:.2f}%) -> {args.out}/tune.json")
    return 0
