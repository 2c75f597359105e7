"""Text: per-language normalisers, letter sets, base-letter maps and number spelling.

>>> from asr_transfer.text import get_normalizer
>>> get_normalizer("de")("Der Damm wurde 1963 erbaut – 12% mehr!")
'der damm wurde neunzehnhundertdreiundsechzig erbaut zwölf prozent mehr'
"""
from .normalize import APOSTROPHE, BASE_LETTERS, LANGUAGES, LETTERS, Normalizer, get_normalizer
from .numbers import expand_numbers

__all__ = ["APOSTROPHE", "BASE_LETTERS", "LANGUAGES", "LETTERS", "Normalizer", "expand_numbers", "get_normalizer"]
