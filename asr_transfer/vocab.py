"""Character vocabularies for CTC heads, in the layout of ``facebook/wav2vec2-base-960h``'s ``vocab.json``.

Layout: ``<pad>`` = 0 (also the CTC blank), ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, ``|`` = 4 (word delimiter),
then the letters in code-point order (the apostrophe, when present, sorts first). Files load with
``transformers.Wav2Vec2CTCTokenizer(vocab_file)``. Lookups (:func:`text_to_ids`) ignore case, so a vocabulary with
upper-case letters such as base-960h's maps normalised lower-case text to the right ids.
"""
from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import PARSE_ERRORS, UserError
from .files import atomic_write_json
from .text import get_normalizer

SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = SPECIALS
WORD_DELIMITER = "|"
BLANK_ID = 0  # <pad> doubles as the CTC blank, as in base-960h

_ENGLISH_960H_LETTERS = "ETAONIHSRDLUMWCFGYPBVK'XJQZ"


def english_source_vocab() -> dict[str, int]:
    """``facebook/wav2vec2-base-960h``'s exact vocabulary (upper-case letters in frequency order)."""
    tokens = [*SPECIALS, WORD_DELIMITER, *_ENGLISH_960H_LETTERS]
    return {t: i for i, t in enumerate(tokens)}


def _upper(c: str) -> str:
    # "ß".upper() is "SS": a token must stay one character, so letters without a single upper form keep theirs.
    u = c.upper()
    return u if len(u) == 1 else c


class Vocab(dict):
    """A built vocabulary: a plain ``token -> id`` dict (JSON-serialisable, ``isinstance(v, dict)``) plus build facts.

    ``counts`` holds each normalised character's frequency (``" "`` included), ``rare`` the letters seen fewer than
    ``min_count`` times (left out unless ``all_letters``), ``unseen`` the language's letters never seen.
    """

    def __init__(self, tokens: Mapping[str, int], *, lang: str, normalizer: str, counts: Mapping[str, int] = (),
                 rare: tuple[str, ...] = (), unseen: tuple[str, ...] = ()):
        super().__init__(tokens)
        self.lang = lang
        self.normalizer = normalizer
        self.counts = dict(counts)
        self.rare = tuple(rare)
        self.unseen = tuple(unseen)

    @property
    def letters(self) -> list[str]:
        """The non-special tokens in id order."""
        return [t for t in self if t not in SPECIALS and t != WORD_DELIMITER]


def build_vocab(
    texts: Iterable[str],
    lang: str,
    min_count: int = 1,
    *,
    upper: bool = False,
    all_letters: bool = False,
) -> Vocab:
    """Build a vocabulary from raw ``texts`` (each goes through the ``lang`` normaliser first).

    Letters seen at least ``min_count`` times are included; ``all_letters`` adds the whole language alphabet (apostrophe
    included where the language uses one). ``upper`` stores letters upper-case, like base-960h.
    """
    if min_count < 1:
        raise UserError(f"--min-count must be >= 1, got {min_count}")
    normalize = get_normalizer(lang)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(normalize(text))
    seen = {c for c, n in counts.items() if c != " " and n >= min_count}
    rare = tuple(sorted(c for c, n in counts.items() if c != " " and n < min_count))
    unseen = tuple(sorted(c for c in normalize.letters if counts.get(c, 0) == 0))
    letters = set(normalize.letters) if all_letters else seen
    tokens = [*SPECIALS, WORD_DELIMITER, *sorted(_upper(c) if upper else c for c in letters)]
    return Vocab(
        {t: i for i, t in enumerate(tokens)},
        lang=normalize.lang,
        normalizer=normalize.name,
        counts=dict(sorted(counts.items())),
        rare=rare,
        unseen=unseen,
    )


def save_vocab(vocab: Mapping[str, int], path: str | Path) -> Path:
    """Write ``vocab`` as ``vocab.json`` (tokens in id order, UTF-8), atomically; returns the path."""
    path = Path(path)
    tokens = dict(sorted(dict(vocab).items(), key=lambda kv: kv[1]))
    _check(tokens, path)
    return atomic_write_json(path, tokens, indent=None)


def _check(tokens: Mapping, path: str | Path) -> None:
    for token, idx in tokens.items():
        if not isinstance(token, str) or not token:
            raise UserError(f"vocabulary token {token!r} is not a non-empty string", path=path)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise UserError(f"vocabulary id of {token!r} must be an integer, got {idx!r}", path=path)
    missing = [t for t in (*SPECIALS, WORD_DELIMITER) if t not in tokens]
    if missing:
        raise UserError(f"vocabulary lacks the special token(s) {' '.join(missing)}: rebuild it with "
                        "'asr-transfer vocab'", path=path)
    by_id: dict[int, str] = {}
    for token, idx in tokens.items():
        if idx in by_id:
            raise UserError(f"duplicate id {idx} for {by_id[idx]!r} and {token!r}", path=path)
        by_id[idx] = token
    if sorted(by_id) != list(range(len(by_id))):
        gaps = sorted(set(range(max(by_id) + 1)) - set(by_id))[:5]
        raise UserError(f"vocabulary ids must be 0..{len(by_id) - 1} without gaps (missing {gaps})", path=path)
    if tokens[PAD] != BLANK_ID:
        raise UserError(f"'<pad>' must have id {BLANK_ID} (it is the CTC blank), got {tokens[PAD]}", path=path)


def load_vocab(path: str | Path) -> dict[str, int]:
    """Read and check a ``vocab.json``; returns ``token -> id`` in id order.

    Raises :class:`UserError` naming the file for unreadable JSON, missing specials, duplicate or non-contiguous ids.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "vocab.json"
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise UserError("not a regular file; give the vocab.json file (or its folder)", path=path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("vocabulary file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read vocabulary ({exc.__class__.__name__})", path=path) from None
    try:
        tokens = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    except PARSE_ERRORS as exc:  # a number past 4,300 digits, nesting past the recursion limit
        raise UserError(f"not valid JSON ({str(exc).split(':')[0][:100]})", path=path) from None
    if not isinstance(tokens, dict):
        raise UserError(f"expected a JSON object token -> id, got {type(tokens).__name__}", path=path)
    _check(tokens, path)
    return dict(sorted(tokens.items(), key=lambda kv: kv[1]))


@lru_cache(maxsize=32)
def _lookup(items: tuple[tuple[str, int], ...]) -> tuple[dict[str, int], int, int]:
    vocab = dict(items)
    table: dict[str, int] = {}
    for token, idx in vocab.items():
        if token in SPECIALS or token == WORD_DELIMITER:
            continue
        table[token] = idx
    # Case-insensitive: an exact match wins, then the other case ("a" -> "A" in base-960h).
    for token, idx in list(table.items()):
        for variant in (token.lower(), _upper(token)):
            table.setdefault(variant, idx)
    return table, vocab[WORD_DELIMITER], vocab[UNK]


def text_to_ids(text: str, vocab: Mapping[str, int]) -> list[int]:
    """Label ids of normalised ``text``: a space run → ``|``, a character → its id (either case), else ``<unk>``.

    The text is not normalised here; pass it through the language's normaliser first.
    """
    table, delimiter, unk = _lookup(tuple(vocab.items()))
    ids: list[int] = []
    for word in text.split():
        if ids:
            ids.append(delimiter)
        ids.extend(table.get(c, unk) for c in word)
    return ids


def ids_to_text(ids: Sequence[int], vocab: Mapping[str, int]) -> str:
    """Inverse of :func:`text_to_ids` for label sequences (no CTC collapsing): ``|`` → space, lower case."""
    inverse = {i: t for t, i in vocab.items()}
    out = []
    for i in ids:
        token = inverse.get(int(i), UNK)
        if token == WORD_DELIMITER:
            out.append(" ")
        elif token not in SPECIALS:
            out.append(token.lower())
    return "".join(out).strip()


def ctc_min_frames(ids: Sequence[int]) -> int:
    """Fewest output frames CTC needs for the label ``ids``: one per label plus a blank between equal neighbours."""
    ids = list(ids)
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)
