"""Normalisers: known-answer tables per language, real transcripts, and properties (idempotent, alphabet, no raise)."""
from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr_transfer.errors import UserError
from asr_transfer.text import APOSTROPHE, BASE_LETTERS, LANGUAGES, LETTERS, expand_numbers, get_normalizer

REALSPEECH = Path(__file__).resolve().parents[2] / "shared" / "realspeech"

CASES = [
    # German: numbers, years, percent, ordinals, decimals, punctuation, foreign letters
    ("de", "Meine Lieblingszahl ist 268.", "meine lieblingszahl ist zweihundertachtundsechzig"),
    ("de", "nachdem der damm 1963 erbaut", "nachdem der damm neunzehnhundertdreiundsechzig erbaut"),
    ("de", "Das gibt uns eine 12% Chance.", "das gibt uns eine zwölf prozent chance"),
    ("de", "12,5 % mehr", "zwölf komma fünf prozent mehr"),
    ("de", "Am 3. Oktober kamen 1.000 Leute.", "am dritten oktober kamen eintausend leute"),
    ("de", "Der 1. Platz", "der erste platz"),
    ("de", "3. Oktober", "dritte oktober"),
    ("de", "Er ist 30. Dann ging er.", "er ist dreißig dann ging er"),
    ("de", "Pi ist etwa 3,14.", "pi ist etwa drei komma eins vier"),
    ("de", "3,10 Euro", "drei komma eins null euro"),
    ("de", "Im Jahr 2002 kostete es 5 €.", "im jahr zweitausendzwei kostete es fünf euro"),
    ("de", "„Größe“ – Straße, Café & naïve Fußgänger!", "größe straße cafe und naive fußgänger"),
    ("de", "Eure Schoko-Bonbons sind sagenhaft lecker.", "eure schoko bonbons sind sagenhaft lecker"),
    ("de", "Wie geht’s?", "wie gehts"),
    ("de", "GROSSE ÄRA", "grosse ära"),
    ("de", "Tokyo 東京 und Москва", "tokyo und"),
    ("de", "Die Nummer 007", "die nummer null null sieben"),
    ("de", "MP3-Player", "mp drei player"),
    ("de", "  viel   \t Platz\n", "viel platz"),
    ("de", "deutet.x", "deutet x"),
    # English
    ("en", "The expression goes 6 × 10 = 60 that gives us a 12% chance.",
     "the expression goes six ten sixty that gives us a twelve percent chance"),
    ("en", "by 25 to 30 year", "by twenty five to thirty year"),
    ("en", "In 1963 it cost $5.", "in nineteen sixty three it cost five dollars"),
    ("en", "the 1st and 22nd of May", "the first and twenty second of may"),
    ("en", "1,000,000 people", "one million people"),
    ("en", "3.5 kg", "three point five kg"),
    ("en", "Don’t say 'hello' to the students' teacher", "don't say hello to the students teacher"),
    ("en", "rock 'n' roll", "rock n roll"),
    ("en", "Müller's café in São Paulo", "muller's cafe in sao paulo"),
    ("en", "Straße", "strasse"),
    ("en", "ratio is 3:2", "ratio is three two"),
    ("en", "whole-number ratio — done", "whole number ratio done"),
    # French
    ("fr", "L’homme a 21 ans.", "l'homme a vingt et un ans"),
    ("fr", "le 1er mai, 3,5 %", "le premier mai trois virgule cinq pour cent"),
    ("fr", "« Où est l'œuvre de Noël ? »", "où est l'œuvre de noël"),
    ("fr", "aujourd'hui, Ñandú", "aujourd'hui nandu"),
    ("fr", "1\u00a0000 euros", "mille euros"),
    # Spanish
    ("es", "El 1º de mayo de 1963, ¿qué?", "el primero de mayo de mil novecientos sesenta y tres qué"),
    ("es", "Un 12% más, niño.", "un doce por ciento más niño"),
    ("es", "l'àpat", "lapat"),
    # Dutch
    ("nl", "'s Avonds de 1e keer", "'s avonds de eerste keer"),
    ("nl", "auto's in 1963", "auto's in negentien honderd drieënzestig"),
    ("nl", "Zeeën, ruïne, café.", "zeeën ruïne café"),
    ("nl", "ĳs", "ijs"),
]


@pytest.mark.parametrize("lang,text,expected", CASES)
def test_known_answers(lang, text, expected):
    assert get_normalizer(lang)(text) == expected


def test_normalizer_metadata():
    de = get_normalizer("de")
    assert de.name == "de-v1" and de.lang == "de"
    assert set("äöüß") <= de.letters and APOSTROPHE not in de.letters
    assert APOSTROPHE in get_normalizer("en").letters and len(get_normalizer("en").letters) == 27
    assert get_normalizer("DE") is de
    assert LANGUAGES == ("de", "en", "nl", "es", "fr")
    for lang in LANGUAGES:
        assert set(string.ascii_lowercase) <= LETTERS[lang]


def test_unknown_language_lists_supported():
    with pytest.raises(UserError, match="de, en, nl, es, fr"):
        get_normalizer("xx")


def test_base_letters_map_every_extra_letter_to_an_english_letter():
    assert BASE_LETTERS["de"] == {"ä": "a", "ö": "o", "ü": "u", "ß": "s"}
    assert BASE_LETTERS["fr"]["œ"] == "o" and BASE_LETTERS["fr"]["ç"] == "c" and BASE_LETTERS["es"]["ñ"] == "n"
    assert BASE_LETTERS["en"] == {}
    for lang in LANGUAGES:
        extra = LETTERS[lang] - set(string.ascii_lowercase) - {APOSTROPHE}
        assert set(BASE_LETTERS[lang]) == extra
        assert all(len(v) == 1 and v in string.ascii_lowercase for v in BASE_LETTERS[lang].values())


def test_numbers_module_edge_cases():
    assert expand_numbers("no digits", "de") == "no digits"
    assert "komma" in expand_numbers("1.234,5", "de").lower()
    long = expand_numbers("1" * 40, "en")
    assert long.split().count("one") == 40  # too long for a name: read digit by digit
    assert expand_numbers("1.2.3", "en").split() == ["one", "two", "three"]


@pytest.mark.parametrize("lang", ["de", "en"])
def test_realspeech_transcripts_normalise_to_letters(lang):
    path = REALSPEECH / f"{lang}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not available")
    normalize = get_normalizer(lang)
    allowed = normalize.letters | {" "}
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert texts
    for text in texts:
        out = normalize(text)
        assert out and set(out) <= allowed, (text, out)
        assert not any(c.isdigit() for c in out)
        assert normalize(out) == out


_PIECES = st.sampled_from(
    list("0123456789.,%€$£&'’‘-–— \u00a0\u202f\u0301\u0308ßẞİıÄäÉéñœæº")
    + ["1st", "am 3. Mai", "1er", "2de", "1.000,5", "1,000.5", "1963", "'s ", "l'", "٣"]
)
_WEIRD = st.lists(st.one_of(st.characters(codec="utf-8"), _PIECES), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_WEIRD, lang=st.sampled_from(LANGUAGES))
def test_properties(text, lang):
    normalize = get_normalizer(lang)
    out = normalize(text)  # never raises
    assert normalize(out) == out  # idempotent
    assert set(out) <= normalize.letters | {" "}
    assert "  " not in out and out == out.strip()
    if APOSTROPHE not in normalize.letters:
        assert APOSTROPHE not in out


@settings(max_examples=80, deadline=None)
@given(n=st.integers(min_value=0, max_value=10**18), lang=st.sampled_from(LANGUAGES))
def test_any_integer_is_spelled_out(n, lang):
    out = get_normalizer(lang)(f"x {n} %")
    assert out.startswith("x ") and len(out.split()) >= 3 and not any(c.isdigit() for c in out)
