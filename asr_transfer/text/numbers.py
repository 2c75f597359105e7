"""Spelling out numbers the way a speaker reads them, per language, with num2words.

Handled forms (``de`` shown; the other languages follow their own conventions):

- cardinals ``268`` → ``zweihundertachtundsechzig``; grouped thousands ``1.000.000`` (``1,000,000`` in ``en``,
  ``1 000`` with a no-break space in ``fr``);
- years: a bare 4-digit number in 1100–2099 is read as a year in ``de``/``en``/``nl`` (``1963`` →
  ``neunzehnhundertdreiundsechzig``, ``nineteen sixty-three``); ``es``/``fr`` read years as cardinals anyway;
- decimals ``3,5`` → ``drei komma fünf`` (digits after the separator are read one by one, so ``3,10`` keeps its
  zero); the other separator is accepted as a decimal mark when it cannot be a thousands separator (``3.5`` in German);
- percentages ``12%`` / ``12 %`` → ``zwölf prozent``; currency ``5 €``/``€5`` → ``fünf euro``;
- ordinals: ``en`` ``1st``; ``fr`` ``1er``/``2e``; ``es`` ``1º``/``2ª``; ``nl`` ``1e``/``2de``/``3ste``; ``de`` ``3.``
  only where a German ordinal is plausible — after an article or preposition (``am 3.``, ``der 1.``) or before a
  month name (``3. Oktober``) — because a number before a full stop usually just ends a sentence. After a dative or
  genitive article the ending is inflected (``am 3. Oktober`` → ``am dritten oktober``).

Numbers with a leading zero or more than 15 digits are read digit by digit; anything num2words refuses falls back to
digit by digit too, so this step never raises. The output may still hold upper case and hyphens from num2words
(``Komma``, ``sixty-three``); the normaliser deals with those afterwards.
"""
from __future__ import annotations

import re

from num2words import num2words

DECIMAL_WORD = {"de": "komma", "en": "point", "nl": "komma", "es": "coma", "fr": "virgule"}
PERCENT_WORD = {"de": "prozent", "en": "percent", "nl": "procent", "es": "por ciento", "fr": "pour cent"}
DECIMAL_SEP = {"de": ",", "en": ".", "nl": ",", "es": ",", "fr": ","}
# Thousands separators: the other mark, plus the no-break spaces typographers use (never a plain space: "2 3" is a
# list of two numbers).
THOUSANDS_SEP = {"de": ".\u00a0\u202f", "en": ",\u00a0\u202f", "nl": ".\u00a0\u202f", "es": ".\u00a0\u202f",
                 "fr": ".\u00a0\u202f"}
CURRENCY_WORD = {
    "€": {"de": "euro", "en": "euros", "nl": "euro", "es": "euros", "fr": "euros"},
    "$": {"de": "dollar", "en": "dollars", "nl": "dollar", "es": "dólares", "fr": "dollars"},
    "£": {"de": "pfund", "en": "pounds", "nl": "pond", "es": "libras", "fr": "livres"},
}
YEAR_LANGS = frozenset({"de", "en", "nl"})
MAX_DIGITS = 15  # beyond this num2words names get absurd (and eventually overflow); read digit by digit

ORDINAL_SUFFIX = {
    "en": r"(?:st|nd|rd|th)\b",
    "fr": r"(?:er|re|ère|ere|ème|eme|e|è)\b",
    "es": r"(?:[ºª]|\.[ºª]|(?:er|ro|ra|do|da|to|ta|vo|va|mo|ma|no|na)\b)",
    "nl": r"(?:ste|de|e)\b",
    "de": r"\.(?=\s+\w)",
}
# German words after which "3." is an ordinal ("am 3.", "der 1."); the second set takes the inflected "-n" ending.
_DE_ORDINAL_BEFORE = frozenset(
    "der die das den dem des am im zum zur vom beim ab bis seit ein eine einem einen einer jeder jede jedes "
    "dieser diese dieses diesem diesen jedem jeden sein seine seinem seinen ihr ihre ihrem ihren".split()
)
_DE_INFLECTED_AFTER = frozenset(
    "den dem des am im zum zur vom beim einem einen einer dieses diesem diesen jedem jeden seinem seinen ihrem ihren"
    .split()
)
_DE_MONTHS = frozenset(
    "januar jänner februar märz april mai juni juli august september oktober november dezember".split()
)

_NUMBER = re.compile(
    r"(?P<cur_pre>[€$£]\s?)?"
    r"(?P<num>[0-9]+(?:[.,\u00a0\u202f][0-9]+)*)"
)


def _digits(s: str, lang: str) -> str:
    return " ".join(_cardinal(int(d), lang) for d in s)


def _cardinal(n: int, lang: str) -> str:
    try:
        return num2words(n, lang=lang)
    except Exception:  # num2words raises OverflowError/NotImplementedError on edge cases; never fail on text
        return " ".join(num2words(int(d), lang=lang) for d in str(n))


def _integer(digits: str, lang: str, as_year: bool = True) -> str:
    if len(digits) > MAX_DIGITS or (len(digits) > 1 and digits.startswith("0")):
        return _digits(digits, lang)
    n = int(digits)
    if as_year and lang in YEAR_LANGS and len(digits) == 4 and 1100 <= n <= 2099:
        try:
            return num2words(n, lang=lang, to="year")
        except Exception:
            pass
    return _cardinal(n, lang)


def _ordinal(digits: str, lang: str) -> str:
    if len(digits) > MAX_DIGITS:
        return _digits(digits, lang)
    try:
        return num2words(int(digits), lang=lang, to="ordinal")
    except Exception:
        return _integer(digits, lang)


def _decimal(int_part: str, frac_part: str, lang: str) -> str:
    return f"{_integer(int_part, lang, as_year=False)} {DECIMAL_WORD[lang]} {_digits(frac_part, lang)}"


def read_number(token: str, lang: str) -> tuple[str, bool]:
    """Spell one digit token (digits with ``.``/``,``/no-break-space separators); return ``(words, is_plain_int)``.

    ``is_plain_int`` says the token was a bare integer, so an ordinal suffix after it may apply.
    """
    if token.isdigit():
        return _integer(token, lang), True
    dec, thousands = DECIMAL_SEP[lang], THOUSANDS_SEP[lang]
    parts = re.split(r"([.,\u00a0\u202f])", token)
    groups, seps = parts[0::2], parts[1::2]
    # Grouped thousands, optionally followed by one decimal separator: "1.234.567" or "1.234,5" (de).
    int_end = len(groups)
    if seps and seps[-1] == dec:
        int_end = len(groups) - 1
    head_seps = seps[: int_end - 1]
    grouped = (
        len(groups[0]) <= 3
        and all(s in thousands and s != dec for s in head_seps)
        and all(len(g) == 3 for g in groups[1:int_end])
        and len(set(head_seps)) <= 1
    )
    if grouped and int_end == len(groups):
        return _integer("".join(groups), lang, as_year=False), False
    if grouped and int_end == len(groups) - 1:
        return _decimal("".join(groups[:int_end]), groups[-1], lang), False
    if len(groups) == 2:  # one separator that cannot be grouping: "3.5" in German, "3,5" in English
        return _decimal(groups[0], groups[1], lang), False
    # Version numbers, dates like 1.2.3: read each group on its own.
    return " ".join(_integer(g, lang, as_year=False) for g in groups), False


def _previous_word(text: str, end: int) -> str:
    m = re.search(r"(\w+)\W*$", text[:end])
    return m.group(1).lower() if m else ""


def _next_word(text: str, start: int) -> str:
    m = re.match(r"\W*(\w+)", text[start:])
    return m.group(1).lower() if m else ""


def expand_numbers(text: str, lang: str) -> str:
    """Replace every ASCII digit run in ``text`` by words in ``lang`` (see module docstring); never raises."""
    if not any("0" <= c <= "9" for c in text):
        return text
    ordinal = re.compile(ORDINAL_SUFFIX[lang], re.IGNORECASE)
    percent = re.compile(r"\s?%")
    currency_post = re.compile(r"\s?([€$£])")
    out: list[str] = []
    pos = 0
    for m in _NUMBER.finditer(text):
        if m.start() < pos:
            continue
        token = m.group("num")
        words, plain = read_number(token, lang)
        end = m.end()
        o = ordinal.match(text, end) if plain else None
        if o is not None and lang == "de":
            prev = _previous_word(text, m.start())
            if prev in _DE_ORDINAL_BEFORE or _next_word(text, o.end()) in _DE_MONTHS:
                words = _ordinal(token, lang) + ("n" if prev in _DE_INFLECTED_AFTER else "")
                end = o.end()
        elif o is not None:
            words = _ordinal(token, lang)
            end = o.end()
        if (p := percent.match(text, end)) is not None:
            words += " " + PERCENT_WORD[lang]
            end = p.end()
        currency = (m.group("cur_pre") or "").strip()
        if not currency and (c := currency_post.match(text, end)) is not None:
            currency, end = c.group(1), c.end()
        if currency:
            words += " " + CURRENCY_WORD[currency][lang]
        out.append(text[pos : m.start()])
        out.append(f" {words} ")
        pos = end
    out.append(text[pos:])
    return "".join(out)
