"""Sentences to synthesise: default text per language from installed Debian packages, roff/fortune/plain readers.

Default sources (``apt-get install fortune-mod fortunes fortunes-de fortunes-es manpages-fr manpages-nl``):

======  =====================================================================
``de``  ``fortunes-de``: ``/usr/share/games/fortunes/de/*``
``en``  ``fortunes``: ``/usr/share/games/fortunes/*`` (not the art/multilingual files, not ``off/``)
``es``  ``fortunes-es``: ``/usr/share/games/fortunes/es/*``
``fr``  ``manpages-fr``: ``/usr/share/man/fr/man*/*.gz`` (roff)
``nl``  ``manpages-nl``: ``/usr/share/man/nl/man*/*.gz`` (roff)
======  =====================================================================

Readers: fortune files (entries split by ``%`` lines, hard-wrapped lines joined, ``-- attribution`` lines dropped),
roff man pages (macros, comments, no-fill blocks, tables and escapes removed; text of font macros such as ``.B`` kept),
and plain text (one sentence or paragraph per line), gzipped or not. Paragraphs are cut into sentences at ``.!?…``
followed by a capital; sentences that look like code, options, paths or URLs, or hold letters of another script, are
skipped. The rest go through the language normaliser, a word/char length filter, and de-duplication after
normalisation, in file order (files sorted by path) — so the result is a pure function of the files.
"""
from __future__ import annotations

import gzip
import random
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import UserError
from ..text import get_normalizer

FORTUNES = Path("/usr/share/games/fortunes")
MANPAGES = Path("/usr/share/man")
_EN_FORTUNE_SKIP = frozenset({"art", "ascii-art", "translate-me"})  # pictures, and quotes in other languages
_DE_FORTUNE_SKIP = frozenset({"asciiart"})
PACKAGES = {"de": "fortunes-de", "en": "fortunes", "es": "fortunes-es", "fr": "manpages-fr", "nl": "manpages-nl"}

MIN_WORDS = 3
MAX_WORDS = 20
MAX_CHARS = 200  # normalised characters; ~15 s of speech at espeak's default rate


def _fortune_files(folder: Path, skip: frozenset[str] = frozenset()) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8") and p.name not in skip
        and not p.name.endswith("-pre")
    )


def _man_files(lang: str) -> list[Path]:
    folder = MANPAGES / lang
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("man*/*") if p.is_file() and not p.is_symlink())


def default_text_files(lang: str) -> list[Path]:
    """The installed text files used for ``lang`` when no ``--text`` is given (see the module table)."""
    get_normalizer(lang)  # validates lang
    if lang == "en":
        files = _fortune_files(FORTUNES, _EN_FORTUNE_SKIP)
    elif lang in ("de", "es"):
        files = _fortune_files(FORTUNES / lang, _DE_FORTUNE_SKIP)
    else:
        files = _man_files(lang)
    if not files:
        raise UserError(f"no default text for '{lang}': install the Debian package {PACKAGES[lang]} "
                        f"(apt-get install {PACKAGES[lang]}) or pass --text FILE")
    return files


# ---------------------------------------------------------------------------------------------------------- readers
def _read_text(path: Path) -> str:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise UserError("text file not found", path=path) from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read text file ({exc.__class__.__name__}: {exc})", path=path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # old fortune and man files; latin-1 never fails


_ROFF_NAMED = {"aq": "'", "cq": "'", "oq": "'", "lq": '"', "rq": '"', "Bq": '"', "Fo": '"', "Fc": '"', "em": " - ",
               "en": " - ", "hy": "-", "co": "(c)", "bu": " ", "dq": '"'}
_ROFF_ESCAPE = re.compile(
    r"\\(?:f(?:\[[^\]]*\]|\(..|.)"  # font changes
    r"|\((?P<named2>..)|\[(?P<named>[^\]]*)\]"  # named characters
    r"|\*(?:\[(?P<str>[^\]]*)\]|\((?P<str2>..)|(?P<str1>.))"  # strings
    r"|s[+-]?\d+|s\(\d\d|n(?:\(..|\[[^\]]*\]|.)|[kh]'[^']*'|[vwuoxXlLbDRZ]'[^']*'"
    r"|(?P<char>.))"
)
_FONT_MACROS = frozenset("B I BI BR IB IR RB RI SM SB".split())
_NOFILL_START = {"nf": "fi", "EX": "EE", "Vb": "Ve", "TS": "TE", "de": "..", "ig": "..", "am": ".."}


def _roff_inline(text: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group("named") or m.group("named2")
        if name is not None:
            return _ROFF_NAMED.get(name, " ")
        string = m.group("str") or m.group("str2") or m.group("str1")
        if string is not None:
            return {"--": " - ", 'L"': '"', 'R"': '"', "Aq": "'"}.get(string, "")
        char = m.group("char")
        if char is not None:
            return {"-": "-", "e": "\\", " ": " ", "~": " ", "0": " "}.get(char, "")
        return ""

    return _ROFF_ESCAPE.sub(sub, text)


def roff_paragraphs(source: str) -> Iterator[str]:
    """Running text of a roff (man) page, one paragraph at a time."""
    lines: list[str] = []
    end_of_block: str | None = None
    for raw in source.splitlines():
        if end_of_block is not None:
            if raw.strip().lstrip(".'").split()[:1] == [end_of_block] or raw.strip() == end_of_block:
                end_of_block = None
            continue
        if raw.startswith((".", "'")):
            parts = raw[1:].strip().split(None, 1)
            macro = parts[0] if parts else ""
            if macro in _NOFILL_START:
                end_of_block = _NOFILL_START[macro]
                continue
            if macro in _FONT_MACROS and len(parts) > 1:
                lines.append(_roff_inline(parts[1].replace('"', "")))
                continue
            if lines:  # any other request breaks the paragraph (.PP .TP .SH .br .sp .IP ...)
                yield " ".join(lines)
                lines = []
            continue
        if raw.strip():
            lines.append(_roff_inline(raw))
        elif lines:
            yield " ".join(lines)
            lines = []
    if lines:
        yield " ".join(lines)


def fortune_paragraphs(source: str) -> Iterator[str]:
    """Entries of a fortune file (``%`` lines between entries), with attributions dropped."""
    for entry in re.split(r"^%\s*$", source, flags=re.MULTILINE):
        lines: list[str] = []
        for raw in entry.splitlines():
            stripped = raw.strip()
            if not stripped or stripped.startswith(("--", "—", "[")):
                if lines:
                    yield " ".join(lines)
                    lines = []
                continue
            lines.append(stripped)
        if lines:
            yield " ".join(lines)


def read_paragraphs(path: str | Path) -> Iterator[str]:
    """Paragraphs of running text in ``path``: roff, fortune or plain text (one sentence/paragraph per line)."""
    path = Path(path)
    source = _read_text(path)
    head = source[:4000]
    if re.search(r"^\.(TH|SH|Dd|\\\")", head, flags=re.MULTILINE):
        yield from roff_paragraphs(source)
    elif re.search(r"^%\s*$", source, flags=re.MULTILINE):
        yield from fortune_paragraphs(source)
    else:
        for line in source.splitlines():
            if line.strip():
                yield line.strip()


_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'»“”)\]]*\s+")
# Code, paths, URLs, command-line options, file names, man references, version numbers, letters glued to digits.
_CODE_LIKE = re.compile(
    r"[/\\_=<>{}\[\]@#|~*^$]|https?:|www\.|(?:^|\s)--?\w|[a-z]\.[a-z]{1,5}\b|\w\(\d\w*\)|\(\)"
    r"|[^\W\d]\d|\d\.\d+\.\d"
)


def split_sentences(paragraph: str) -> list[str]:
    """Cut running text at sentence ends (``.!?…``, closing quotes allowed) followed by a capital or a digit."""
    text = re.sub(r"\s+", " ", paragraph).strip()
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        nxt = text[m.end(): m.end() + 3].lstrip("\"'„“«(¿¡")
        if nxt[:1].isupper() or nxt[:1].isdigit():
            out.append(text[start: m.end()].strip())
            start = m.end()
    if start < len(text):
        out.append(text[start:].strip())
    return [s for s in out if s]


def extract_sentences(
    lang: str,
    files: Iterable[str | Path],
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
    max_chars: int = MAX_CHARS,
) -> list[str]:
    """Normalised, de-duplicated sentences of ``files`` with ``min_words..max_words`` words and ``<= max_chars``.

    Order: files as given (sorted by :func:`default_text_files`), then order of appearance — deterministic.
    """
    normalize = get_normalizer(lang)
    seen: set[str] = set()
    out: list[str] = []
    for path in files:
        for paragraph in read_paragraphs(path):
            for raw in split_sentences(paragraph):
                if _CODE_LIKE.search(raw):
                    continue
                if any(c.isalpha() and normalize.fold(c) is None for c in raw.lower()):
                    continue  # another script: deleting its letters would leave a sentence that does not match
                text = normalize(raw)
                n_words = text.count(" ") + 1 if text else 0
                if not (min_words <= n_words <= max_words) or len(text) > max_chars or text in seen:
                    continue
                seen.add(text)
                out.append(text)
    return out


def shuffled(sentences: Sequence[str], seed: int) -> list[str]:
    """A seeded permutation of ``sentences`` (independent of Python's hash seed)."""
    order = list(sentences)
    random.Random(f"asr-transfer-sentences-{seed}").shuffle(order)
    return order
