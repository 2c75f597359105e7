"""``asr-transfer prepare commonvoice|folder|tabular|librispeech SOURCE --out DIR``: import a corpus as manifests.

Thin wrappers over the ``prepare_*`` functions in :mod:`asr_transfer.corpora`; prints the import summary
(utterances, hours, speakers per split, skipped items by reason, warnings, files written).
"""
from __future__ import annotations

import argparse

from ..errors import UserError


def _common(p: argparse.ArgumentParser, lang_required: bool = True) -> None:
    p.add_argument("--out", required=True, help="folder for the manifests (<split>.jsonl)")
    if lang_required:
        p.add_argument("--lang", required=True, help="language code stored on every line (e.g. de)")
    p.add_argument("--min-duration", type=float, default=None, metavar="S",
                   help="skip clips shorter than S seconds (default: the CNN's receptive field, 0.025 s)")
    p.add_argument("--max-duration", type=float, default=None, metavar="S", help="skip clips longer than S seconds")
    p.add_argument("--workers", type=int, default=None, help="threads for reading audio headers (default: up to 4)")


def _split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fractions", default="train=0.8,dev=0.1,test=0.1",
                   help="split by duration, speaker-disjoint when speakers are known (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default: %(default)s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus", metavar="CORPUS", required=True)

    p = sub.add_parser("commonvoice", help="a Common Voice language folder (clips/ + train/dev/test.tsv)")
    p.add_argument("root", help="the language folder (e.g. cv-corpus-17.0/de) or the release folder")
    p.add_argument("--splits", nargs="+", default=["train", "dev", "test"], help="TSV names to import")
    _common(p)

    p = sub.add_parser("folder", help="audio files with sibling transcripts of the same stem (.txt/.lab)")
    p.add_argument("root", help="folder searched recursively for audio")
    p.add_argument("--transcript-ext", nargs="+", default=[".txt", ".lab"], help="transcript extensions, in order")
    p.add_argument("--split", default=None, help="put everything in this one split (e.g. test) instead of splitting")
    p.add_argument("--speaker-from", choices=("none", "parent"), default="none",
                   help="'parent': the audio file's folder name is the speaker")
    p.add_argument("--no-text", action="store_true",
                   help="audio without transcripts: every file becomes an untranscribed line (empty text, "
                        "\"untranscribed\": true) in untranscribed.jsonl (or --split's name), for pseudo-label; "
                        "validate and train skip such lines")
    _common(p)
    _split_options(p)

    p = sub.add_parser("tabular", help="a CSV/TSV table with audio path and text columns")
    p.add_argument("table", help="the table; relative audio paths resolve against its folder")
    p.add_argument("--path-column", default="path")
    p.add_argument("--text-column", default="text")
    p.add_argument("--speaker-column", default=None)
    p.add_argument("--split-column", default=None, help="column holding train/dev/test (else the rows are split)")
    p.add_argument("--id-column", default=None)
    p.add_argument("--delimiter", default=None, help="field separator (default: by extension, .csv/.tsv, or sniffed)")
    _common(p)
    _split_options(p)

    p = sub.add_parser("librispeech", help="LibriSpeech layout: <subset>/<speaker>/<chapter>/*.trans.txt + .flac")
    p.add_argument("root", help="folder holding the subsets, or one subset folder")
    p.add_argument("--subsets", nargs="+", default=None, help="subset names (default: all found)")
    p.add_argument("--lang", default="en", help="language code (default: %(default)s)")
    _common(p, lang_required=False)
    _split_options(p)


def run(args: argparse.Namespace) -> int:
    from ..corpora.splits import MIN_DURATION_S, parse_fractions

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    limits = {"min_duration_s": MIN_DURATION_S if args.min_duration is None else args.min_duration,
              "num_workers": args.workers}
    if args.max_duration is not None:
        limits["max_duration_s"] = args.max_duration
    if args.corpus == "commonvoice":
        from ..corpora.commonvoice import prepare_commonvoice

        summary = prepare_commonvoice(args.root, args.out, args.lang, splits=tuple(args.splits), **limits)
    elif args.corpus == "folder":
        from ..corpora.folder import prepare_folder

        summary = prepare_folder(args.root, args.out, args.lang, transcript_exts=tuple(args.transcript_ext),
                                 split=args.split, fractions=parse_fractions(args.fractions), seed=args.seed,
                                 speaker_from=args.speaker_from, no_text=args.no_text, **limits)
    elif args.corpus == "tabular":
        from ..corpora.tabular import prepare_tabular

        summary = prepare_tabular(args.table, args.out, args.lang, path_column=args.path_column,
                                  text_column=args.text_column, speaker_column=args.speaker_column,
                                  split_column=args.split_column, id_column=args.id_column, delimiter=args.delimiter,
                                  fractions=parse_fractions(args.fractions), seed=args.seed, **limits)
    else:
        from ..corpora.librispeech import prepare_librispeech

        summary = prepare_librispeech(args.root, args.out, subsets=args.subsets, lang=args.lang,
                                      fractions=parse_fractions(args.fractions), seed=args.seed, **limits)
    print(summary.format())
    return 0
