"""Zero-shot + LM: the unadapted source model and its own (English) head, decoded into the target language.

No target audio is used. The English head can only emit English letters, so each word of the target-language LM is
given a spelling in those letters and the lexicon beam search (flashlight, :class:`asr_transfer.decode.BeamDecoder`)
emits the word in its own spelling whenever the English letters are heard::

    über  u b e r          (ü → u: the base letter, as the English normaliser folds it)
    straße  s t r a s s e  (ß → ss)

A letter is spelled by :meth:`asr_transfer.text.normalize.Normalizer.fold` of the *source* language's normaliser —
the same fold that turns a German transcript into English letters — so the lexicon and the English normaliser agree.
A word with a letter that fold cannot spell in letters the source head has (another script, or a source model
without the apostrophe) is left out of the lexicon and counted: the decoder can never produce it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .decode import SPECIAL_RE, WORD_DELIMITER, arpa_unigrams, find_lm_files
from .errors import UserError
from .files import atomic_write_text
from .text import get_normalizer

SOURCE_LANG = "en"  # the source models this tool adapts have English heads (base-960h layout, upper-case letters)
SYSTEM_NAME = "zero-shot + LM"
FOLDER = "zero-shot-lm"  # the system's evaluation folder inside a baseline output


@dataclass(frozen=True)
class SpelledLexicon:
    """Flashlight lexicon lines ``word t o k e n s`` and the words that could not be spelled."""

    lines: tuple[str, ...]
    unspellable: tuple[str, ...]  # words with a letter the source head cannot write (not in the lexicon)
    respelled: int  # words whose spelling differs from the word (über, straße)

    def to_dict(self, examples: int = 10) -> dict:
        return {"words": len(self.lines), "respelled": self.respelled, "unspellable": len(self.unspellable),
                "unspellable_examples": list(self.unspellable[:examples])}


def head_letters(vocab: Sequence[str]) -> frozenset[str]:
    """The lower-cased letters a CTC head can emit: its tokens minus blank/specials (``<pad>``, ``<unk>`` ...) and
    the word delimiter (base-960h spells letters in upper case; the decoder folds case the same way)."""
    return frozenset(t.lower() for t in vocab if t != WORD_DELIMITER and not SPECIAL_RE.match(t) and len(t) == 1)


def spell(word: str, letters: frozenset[str], source_lang: str = SOURCE_LANG) -> str | None:
    """``word`` in ``letters`` (``"über"`` → ``"uber"``, ``"straße"`` → ``"strasse"``), or None if some letter
    has no spelling there. Letters the head has stay; others go through the source normaliser's fold."""
    fold = get_normalizer(source_lang).fold
    out = []
    for c in word:
        mapped = c if c in letters else fold(c)
        if not mapped or not all(m in letters for m in mapped):
            return None
        out.append(mapped)
    return "".join(out)


def spelled_lexicon(words: Iterable[str], letters: frozenset[str], source_lang: str = SOURCE_LANG) -> SpelledLexicon:
    """One lexicon line per spellable word, in the order given (duplicates dropped)."""
    lines, unspellable, respelled, seen = [], [], 0, set()
    for word in words:
        if not word or word in seen or SPECIAL_RE.match(word):
            continue
        seen.add(word)
        spelling = spell(word, letters, source_lang)
        if spelling is None:
            unspellable.append(word)
            continue
        respelled += spelling != word
        lines.append(f"{word} {' '.join(spelling)}")
    return SpelledLexicon(tuple(lines), tuple(unspellable), respelled)


def lm_words(lm_dir: str | Path) -> list[str]:
    """The words of an LM folder: the first column of its ``lexicon.txt``, else the ARPA unigrams."""
    lm_path, lexicon = find_lm_files(lm_dir)
    if lexicon is not None:
        with open(lexicon, encoding="utf-8") as f:
            return [parts[0] for parts in (line.split() for line in f) if parts]
    if lm_path.suffix != ".arpa":
        raise UserError("a binary LM needs a lexicon.txt beside it to list its words", path=lm_path)
    return arpa_unigrams(lm_path)


def write_spelled_lexicon(lm_dir: str | Path, vocab: Sequence[str], path: str | Path,
                          source_lang: str = SOURCE_LANG) -> SpelledLexicon:
    """Spell the words of the LM in ``lm_dir`` with the letters of ``vocab`` (the source head) into ``path``."""
    lexicon = spelled_lexicon(lm_words(lm_dir), head_letters(vocab), source_lang)
    if not lexicon.lines:
        raise UserError("no word of the LM can be spelled with the source model's letters", path=lm_dir)
    atomic_write_text(path, "\n".join(lexicon.lines) + "\n")
    return lexicon
