"""Per-language transcript normalisers: what every manifest text, LM sentence and hypothesis goes through.

The output of a normaliser is lower-case NFC text made only of the language's letters (:data:`LETTERS`),
single spaces, and — for ``en``, ``fr`` and ``nl`` — apostrophes inside words (``don't``, ``l'homme``, ``auto's``;
Dutch also keeps the clitics ``'s``, ``'t``, ``'n``, ``'k``). Steps, in order:

1. NFC; decimal digits of any script → ASCII digits; typographic apostrophes (’ ‘ ʼ ´ `) → ``'``.
2. Numbers, percentages, currencies, ordinals and years spelled out (:mod:`asr_transfer.text.numbers`); ``&`` → "and".
3. Lower case.
4. Every character outside the letters is folded to a base letter when that is obvious — a fixed table
   (``ß``→``ss`` outside German, ``æ``→``ae``, ``ø``→``o``, ``ł``→``l`` …) or else its NFKD base letter
   (``é``→``e`` in German, ``ñ``→``n`` in French); other letters, combining marks and invisible format characters
   are deleted, and everything else (punctuation, dashes, quotes, symbols, whitespace) becomes a space.
5. Apostrophes that are not inside a word are removed; whitespace is collapsed.

Normalising is idempotent (``n(n(x)) == n(x)``) and never raises. :data:`BASE_LETTERS` maps each non-ASCII letter
of a language to the English letter whose output row initialises it when the CTC head is swapped (``ä``←``a``,
``ß``←``s``).
The ``.name`` (``de-v1``) is recorded with every model and LM: bump it when the rules change.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from ..errors import UserError
from .numbers import expand_numbers

LANGUAGES: tuple[str, ...] = ("de", "en", "nl", "es", "fr")
VERSION = 1
APOSTROPHE = "'"

_ASCII = "abcdefghijklmnopqrstuvwxyz"
_EXTRA_LETTERS = {
    "de": "äöüß",
    "en": "",
    "nl": "áäéèêëíïóöúü",
    "es": "áéíñóúü",
    "fr": "àâæçéèêëîïôœùûüÿ",
}
_USES_APOSTROPHE = frozenset({"en", "fr", "nl"})

LETTERS: dict[str, frozenset[str]] = {
    lang: frozenset(_ASCII + extra + (APOSTROPHE if lang in _USES_APOSTROPHE else ""))
    for lang, extra in _EXTRA_LETTERS.items()
}

# Letters whose NFKD decomposition has no base letter, or whose usual spelling differs from it.
_FOLD_TABLE = {
    "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ð": "d", "þ": "th", "ł": "l", "ı": "i",
    "ĳ": "ij", "ŋ": "n", "ſ": "s", "ȷ": "j",
}
# One English letter per non-ASCII letter: the row of an English CTC head that initialises it.
_BASE_OVERRIDES = {"ß": "s", "æ": "a", "œ": "o"}


def _strip_marks(c: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", c) if not unicodedata.combining(ch))


BASE_LETTERS: dict[str, dict[str, str]] = {
    lang: {c: _BASE_OVERRIDES.get(c) or _strip_marks(c) for c in extra} for lang, extra in _EXTRA_LETTERS.items()
}

_AND_WORD = {"de": "und", "en": "and", "nl": "en", "es": "y", "fr": "et"}
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'", "\u2032": "'"})
_SPACES = re.compile(r"\s+")
_APOSTROPHE_RUNS = re.compile(r"'+")
_NL_CLITIC = re.compile(r"(?<!\S)'(?=[stnk](?:\s|$))")  # Dutch 's avonds, 't is, 'n, 'k


@dataclass(frozen=True)
class Normalizer:
    """Callable ``str -> str`` for one language; see the module docstring for the rules."""

    lang: str
    letters: frozenset[str]
    version: int = VERSION
    _fold_cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def name(self) -> str:
        return f"{self.lang}-v{self.version}"

    @property
    def uses_apostrophe(self) -> bool:
        return APOSTROPHE in self.letters

    def fold(self, c: str) -> str | None:
        """What one lower-case character becomes: itself, a transliteration, ``" "``, ``""`` (deleted).

        Returns ``None`` for a letter that has no obvious base letter in this language (it is deleted); text
        sources use that to skip sentences in another script.
        """
        cached = self._fold_cache.get(c, False)
        if cached is not False:
            return cached
        result = self._fold_uncached(c)
        self._fold_cache[c] = result
        return result

    def _fold_uncached(self, c: str) -> str | None:
        if c in self.letters or c == APOSTROPHE:
            return c
        if c.isspace():
            return " "
        category = unicodedata.category(c)
        if category[0] == "L":
            for candidate in (_FOLD_TABLE.get(c), _strip_marks(c).lower()):
                if candidate and all(ch in self.letters and ch != APOSTROPHE for ch in candidate):
                    return candidate
            return None
        if category[0] == "M" or category == "Cf":  # combining marks, soft hyphen, zero-width joiners
            return ""
        return " "

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text).translate(_APOSTROPHES)
        text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() and not "0" <= c <= "9" else c for c in text)
        text = expand_numbers(text, self.lang)
        text = text.replace("&", f" {_AND_WORD[self.lang]} ")
        text = "".join(self.fold(c) or "" for c in text.lower())
        text = _APOSTROPHE_RUNS.sub("'", text)
        if APOSTROPHE in text:
            text = self._apostrophes(text)
        return _SPACES.sub(" ", text).strip()

    def _apostrophes(self, text: str) -> str:
        if not self.uses_apostrophe:
            return text.replace(APOSTROPHE, "")
        keep = set()
        for i, c in enumerate(text):
            if c != APOSTROPHE:
                continue
            inside = 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha()
            if inside:
                keep.add(i)
        if self.lang == "nl":
            keep.update(m.start() for m in _NL_CLITIC.finditer(text))
        return "".join(c for i, c in enumerate(text) if c != APOSTROPHE or i in keep)

    def is_normalized(self, text: str) -> bool:
        """True when ``text`` is already in this normaliser's output form."""
        return self(text) == text


_CACHE: dict[str, Normalizer] = {}


def get_normalizer(lang: str) -> Normalizer:
    """The normaliser for ``lang`` (one of :data:`LANGUAGES`); raises :class:`UserError` for any other code."""
    key = (lang or "").strip().lower()
    if key not in LETTERS:
        raise UserError(f"unsupported language '{lang}': choose one of {', '.join(LANGUAGES)}")
    if key not in _CACHE:
        _CACHE[key] = Normalizer(lang=key, letters=LETTERS[key])
    return _CACHE[key]
