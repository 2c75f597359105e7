"""``asr-transfer vocab MANIFEST… --lang de --out vocab.json``: a character vocabulary from manifest transcripts."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..text import LANGUAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST", help="JSONL manifests to read text from")
    parser.add_argument("--lang", required=True, choices=LANGUAGES, help="language (selects the normaliser)")
    parser.add_argument("--out", required=True, type=Path, help="vocab.json to write")
    parser.add_argument("--min-count", type=int, default=1,
                        help="leave out letters seen fewer than N times (they are listed); default 1")
    parser.add_argument("--all-letters", action="store_true",
                        help="include the whole language alphabet, seen or not")
    parser.add_argument("--upper", action="store_true",
                        help="store letters upper-case, like facebook/wav2vec2-base-960h")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..manifest import read_manifest
    from ..vocab import build_vocab, save_vocab

    texts: list[str] = []
    for path in args.manifests:
        texts.extend(u.text for u in read_manifest(path))
    if not texts:
        raise UserError("the manifests hold no utterances", path=args.manifests[0])
    vocab = build_vocab(texts, args.lang, args.min_count, upper=args.upper, all_letters=args.all_letters)
    save_vocab(vocab, args.out)
    letters = "".join(vocab.letters)
    print(f"wrote {args.out}: {len(vocab)} tokens ({len(vocab.letters)} letters: {letters}) "
          f"from {len(texts)} transcripts, normaliser {vocab.normalizer}")
    if vocab.rare:
        listing = ", ".join(f"{c!r}×{vocab.counts[c]}" for c in vocab.rare)
        action = "included (--all-letters)" if args.all_letters else "left out (they map to <unk>)"
        print(f"rare letters (< {args.min_count}), {action}: {listing}")
    if vocab.unseen:
        action = "included" if args.all_letters else "not in the vocabulary; use --all-letters to include them"
        print(f"letters of '{args.lang}' never seen: {' '.join(vocab.unseen)} ({action})")
    return 0
