"""Word n-gram language models for beam search: normalised text → ARPA (+ lexicon, unigrams, record).

Text is normalised with the same ``get_normalizer(lang)`` as training transcripts, so LM words and model output
agree. Sentences found in dev/test manifests are dropped (else the LM would have memorised the answers and WER would
be optimistic), and sentences with characters the acoustic model cannot emit are dropped and reported.

The estimator is interpolated **modified Kneser-Ney** (Chen & Goodman 1998, as in KenLM's ``lmplz``):

* highest order uses raw counts; lower orders use continuation counts (number of distinct left neighbours), except
  n-grams starting with ``<s>``, which keep raw counts since nothing can precede ``<s>``;
* three discounts per order, ``D1, D2, D3+``, from the count-of-counts ``t1..t4`` of that order
  (``Y = t1 / (t1 + 2 t2)``, ``Dk = k - (k + 1) Y t(k+1) / tk``); when the data are too small for a valid estimate
  (some ``tk`` is 0 or a ``Dk`` falls outside ``(0, k)``) the order uses ``lmplz --discount_fallback``'s 0.5/1/1.5;
* unigrams interpolate with the uniform distribution over the vocabulary (``</s>`` and ``<unk>`` included, ``<s>``
  not predicted), so ``<unk>`` gets the leftover mass;
* pruning (``prune=(0, 0, 1)`` as in lmplz) drops n-grams of order >= 2 whose adjusted count is at or below the
  threshold, keeps the prefixes and suffixes of kept n-grams, and renormalises backoff weights.

Why not ``arpabo``: its 0.3 "kneser_ney" uses one discount, does not interpolate higher orders, writes every backoff
weight as 0 (so the distributions do not sum to 1), adds a header line and space separators KenLM rejects, and has
no ``<unk>``. Every distribution written here sums to 1 (tests check it through ``kenlm.Model``).
"""
from __future__ import annotations

import gzip
import json
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .decode import lexicon_lines
from .errors import UserError
from .files import atomic_open, sha256_file
from .manifest import read_manifest
from .text import get_normalizer
from .vocab import SPECIALS, WORD_DELIMITER, load_vocab

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz --discount_fallback defaults
ALPHABET_DROP_LIMIT = 0.5  # more than this share of sentences dropped for foreign characters = wrong --vocab/--lang

# Split after . ! ? … when followed by space and an upper-case letter, digit or opening quote. Not after a single
# letter or a capitalised 1-2 letter word ("z. B.", "Dr. Müller", "Nr. 5"), the usual abbreviations.
_SPLIT_RE = re.compile(r"([.!?…][\"'»«”“]?)\s+(?=[\"'„“«»(]?[A-ZÀ-ÖØ-Þ0-9])")
_ABBREV_RE = re.compile(r"(?:^|\s)(?:\w|[A-ZÀ-ÖØ-Þ]\w?)\.$")


def split_sentences(line: str) -> list[str]:
    """Split one line of running text into sentences (plain heuristics; a line is never merged with the next)."""
    pieces, start = [], 0
    for m in _SPLIT_RE.finditer(line):
        head = line[start : m.end(1)].rstrip("\"'»«”“")
        if _ABBREV_RE.search(head):
            continue
        pieces.append(line[start : m.end(1)])
        start = m.end()
    pieces.append(line[start:])
    return [p.strip() for p in pieces if p.strip()]


def _open_text(path: Path):
    if not path.is_file():
        raise UserError("text file not found" if not path.exists() else "not a file", path=path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_raw_sentences(path: str | Path) -> Iterator[str]:
    """Sentences of a text file (``.txt``/``.gz``: running text, split per line) or a manifest (``.jsonl``: texts)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        for u in read_manifest(path):
            yield u.text
        return
    with _open_text(path) as f:
        line_no = 0
        try:
            for line_no, line in enumerate(f, start=1):
                yield from split_sentences(line.strip())
        except UnicodeDecodeError:
            raise UserError("not valid UTF-8 text; convert it with iconv", path=path, line=line_no + 1) from None


# ---------------------------------------------------------------------------------------------------------------
# Modified Kneser-Ney estimation
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class NGramModel:
    """An estimated back-off model: ``probs[n][ngram]`` = log10 p, ``backoffs[n][ngram]`` = log10 backoff weight.

    ``n`` is the order minus 1; n-grams are tuples of words. ``discounts[n]`` = (D1, D2, D3+) used at that order.
    """

    order: int
    probs: list[dict[tuple[str, ...], float]]
    backoffs: list[dict[tuple[str, ...], float]]
    discounts: list[tuple[float, float, float]]

    def write_arpa(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_open(path) as f:
            f.write("\n\\data\\\n")
            for n in range(self.order):
                f.write(f"ngram {n + 1}={len(self.probs[n])}\n")
            for n in range(self.order):
                f.write(f"\n\\{n + 1}-grams:\n")
                bo = self.backoffs[n]
                for gram in sorted(self.probs[n]):
                    words = " ".join(gram)
                    if n < self.order - 1 and gram in bo:
                        f.write(f"{self.probs[n][gram]:.7g}\t{words}\t{bo[gram]:.7g}\n")
                    else:
                        f.write(f"{self.probs[n][gram]:.7g}\t{words}\n")
            f.write("\n\\end\\\n")
        return path


def _discounts(adjusted: dict, order_index: int) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from count-of-counts; second value tells whether the fallback was used."""
    t = Counter(c for c in adjusted.values() if c <= 4)
    t1, t2, t3, t4 = (t.get(k, 0) for k in (1, 2, 3, 4))
    if min(t1, t2, t3, t4) == 0:
        return FALLBACK_DISCOUNTS, True
    y = t1 / (t1 + 2 * t2)
    d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if not all(0 < dk < k for k, dk in zip((1, 2, 3), d)):
        return FALLBACK_DISCOUNTS, True
    return d, False


def _prune(adjusted: list[dict], thresholds: Sequence[int]) -> list[set]:
    """The n-grams kept at each order, highest order first, so lower orders keep every prefix/suffix they serve."""
    order = len(adjusted)
    keep: list[set] = [set(adjusted[0])] + [set() for _ in range(order - 1)]
    needed: set = set()
    for n in range(order - 1, 0, -1):
        limit = thresholds[min(n, len(thresholds) - 1)]
        kept = {g for g, c in adjusted[n].items() if c > limit} | (needed & adjusted[n].keys())
        keep[n] = kept
        needed = {g[:-1] for g in kept} | {g[1:] for g in kept}
    return keep


def estimate_kneser_ney(
    sentences: Iterable[Sequence[str]], order: int = 4, prune: Sequence[int] = ()
) -> tuple[NGramModel, dict[str, int]]:
    """Interpolated modified Kneser-Ney over ``sentences`` (lists of words, without ``<s>``/``</s>``).

    Returns the model and the unigram word counts (``<s>``/``</s>`` excluded). ``prune[n]`` is the adjusted-count
    threshold for order ``n + 1`` (the last value repeats; unigrams are never pruned).
    """
    if order < 1:
        raise UserError(f"LM order must be >= 1, got {order}")
    raw: list[Counter] = [Counter() for _ in range(order)]
    for words in sentences:
        seq = (BOS, *words, EOS)
        for n in range(order):
            raw[n].update(zip(*(seq[i:] for i in range(n + 1))))  # the sentence's (n+1)-grams, counted in C
    del raw[0][(BOS,)]  # <s> is context only, never predicted
    if not raw[0]:
        raise UserError("no sentences left to build an LM from")
    word_counts = {g[0]: c for g, c in raw[0].items() if g[0] != EOS}

    # Adjusted counts: continuation counts below the highest order, raw counts for <s>-initial n-grams.
    adjusted: list[dict] = [dict() for _ in range(order)]
    adjusted[order - 1] = dict(raw[order - 1])
    for n in range(order - 2, -1, -1):
        cont: Counter = Counter(g[1:] for g in raw[n + 1] if g[1:] in raw[n])
        adjusted[n] = {g: (c if g[0] == BOS else cont[g]) for g, c in raw[n].items()}
    del raw

    thresholds = list(prune) or [0]
    if any(t < 0 for t in thresholds):
        raise UserError(f"prune thresholds must be >= 0, got {thresholds}")
    pruning = any(thresholds[min(n, len(thresholds) - 1)] > 0 for n in range(1, order))
    keep = _prune(adjusted, thresholds) if pruning else None

    vocab_size = len(adjusted[0]) + (0 if (UNK,) in adjusted[0] else 1)  # predicted types: words, </s>, <unk>
    probs: list[dict] = [dict() for _ in range(order)]  # linear probabilities while estimating
    gammas: list[dict] = [dict() for _ in range(order)]  # per context (order n-1 n-gram)
    discounts = []
    for n in range(order):
        d, _ = _discounts(adjusted[n], n)
        discounts.append(d)
        totals: dict = defaultdict(int)
        mass: dict = defaultdict(float)
        for g, c in adjusted[n].items():
            ctx = g[:-1]
            totals[ctx] += c
            mass[ctx] += d[min(c, 3) - 1]
        for ctx, total in totals.items():
            gammas[n][ctx] = mass[ctx] / total
        lower = probs[n - 1] if n else None
        for g, c in adjusted[n].items():
            ctx = g[:-1]
            p_lower = lower[g[1:]] if n else 1.0 / vocab_size
            probs[n][g] = (c - d[min(c, 3) - 1]) / totals[ctx] + gammas[n][ctx] * p_lower
    if (UNK,) not in probs[0]:
        probs[0][(UNK,)] = gammas[0][()] / vocab_size

    if keep is not None:
        for n in range(1, order):
            probs[n] = {g: p for g, p in probs[n].items() if g in keep[n]}

    log_probs: list[dict] = []
    log_backoffs: list[dict] = [dict() for _ in range(order)]
    for n in range(order):
        log_probs.append({g: math.log10(p) for g, p in probs[n].items()})
    log_probs[0][(BOS,)] = -99.0  # ARPA convention: <s> is listed but never predicted
    for n in range(1, order):
        children: dict = defaultdict(list)
        for g in probs[n]:
            children[g[:-1]].append(g)
        for ctx, grams in children.items():
            if keep is None:
                bo = gammas[n][ctx]
            else:  # renormalise: the pruned n-grams' mass moves to the backoff
                num = 1.0 - sum(probs[n][g] for g in grams)
                den = 1.0 - sum(probs[n - 1][g[1:]] for g in grams)
                bo = max(num, 1e-12) / max(den, 1e-12)
            log_backoffs[n - 1][ctx] = math.log10(bo)
    for n in range(order - 1):  # every n-gram below the top order carries a backoff (0 = weight 1)
        for g in log_probs[n]:
            log_backoffs[n].setdefault(g, 0.0)
    return NGramModel(order, log_probs, log_backoffs, discounts), word_counts


# ---------------------------------------------------------------------------------------------------------------
# From text files to an LM folder
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Exclusions:
    """Normalised dev/test sentences; LM sentences equal to one, containing one of >= ``min_words`` words, or lying
    inside one with >= ``min_words`` words ("within": the LM text split a test sentence into pieces that the corpus
    did not split, e.g. at a full stop inside a quotation) go."""

    exact: set[str]
    by_head: dict[tuple[str, ...], list[tuple[str, ...]]]
    min_words: int
    spans: dict[tuple[str, ...], list[tuple[tuple[str, ...], int]]] = field(default_factory=dict)

    @classmethod
    def from_manifests(cls, manifests: Sequence[str | Path], normalize, min_words: int) -> "_Exclusions":
        exact: set[str] = set()
        for m in manifests:
            for u in read_manifest(m):
                text = normalize(u.text)
                if text:
                    exact.add(text)
        by_head: dict = defaultdict(list)
        spans: dict = defaultdict(list)
        for text in exact:
            words = tuple(text.split())
            if len(words) >= min_words:
                by_head[words[:min_words]].append(words)
                for i in range(len(words) - min_words + 1):
                    spans[words[i : i + min_words]].append((words, i))
        return cls(exact, dict(by_head), min_words, dict(spans))

    def hit(self, sentence: str, words: Sequence[str]) -> str | None:
        """"exact", "contained", "within" or None."""
        if sentence in self.exact:
            return "exact"
        k = self.min_words
        if self.by_head and len(words) > k:
            for i in range(len(words) - k + 1):
                for cand in self.by_head.get(tuple(words[i : i + k]), ()):
                    if tuple(words[i : i + len(cand)]) == cand:
                        return "contained"
        if len(words) >= k:
            for cand, i in self.spans.get(tuple(words[:k]), ()):
                if cand[i : i + len(words)] == tuple(words):
                    return "within"
        return None


def _vocab_letters(vocab_path: str | Path) -> set[str]:
    tokens = load_vocab(vocab_path)
    return {t.lower() for t in tokens if t not in SPECIALS and t != WORD_DELIMITER and len(t) == 1}


def build_lm(
    text_files: Sequence[str | Path],
    lang: str,
    order: int = 4,
    exclude_manifests: Sequence[str | Path] = (),
    out_dir: str | Path | None = None,
    vocab: str | Path | None = None,
    prune: Sequence[int] = (),
    log=print,
) -> Path:
    """Build ``out_dir/lm.arpa`` (+ ``lexicon.txt``, ``unigrams.txt``, ``lm.json``) from ``text_files``; returns
    out_dir.

    Every sentence is normalised with ``get_normalizer(lang)``. Sentences equal to a normalised dev/test transcript
    of ``exclude_manifests`` (or containing one of at least ``order`` words) are dropped. With ``vocab`` (a model's
    ``vocab.json``), sentences with characters the model cannot emit are dropped; the characters are listed in a
    warning. ``log`` receives the progress/summary lines.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    if not text_files:
        raise UserError("no text files given (--text FILE ...)")
    if out_dir is None:
        raise UserError("no output folder given (--out DIR)")
    normalize = get_normalizer(lang)
    letters = _vocab_letters(vocab) if vocab is not None else None
    exclusions = _Exclusions.from_manifests(exclude_manifests, normalize, min_words=max(order, 4))
    stats = Counter()
    foreign: Counter = Counter()
    kept: list[list[str]] = []
    for path in text_files:
        for raw in tqdm(read_raw_sentences(path), desc=f"read {Path(path).name}", unit=" sent", disable=None):
            stats["read"] += 1
            sentence = normalize(raw)
            if not sentence:
                stats["empty"] += 1
                continue
            words = sentence.split()
            why = exclusions.hit(sentence, words)
            if why:
                stats[f"excluded_{why}"] += 1
                continue
            if letters is not None:
                bad = [c for c in sentence if c != " " and c not in letters]
                if bad:
                    foreign.update(bad)
                    stats["dropped_alphabet"] += 1
                    continue
            kept.append(words)
    if foreign:
        listing = ", ".join(f"{c!r} x{n}" for c, n in foreign.most_common(20))
        log(f"warning: {stats['dropped_alphabet']} sentence(s) dropped for characters the model vocabulary cannot "
            f"emit: {listing}")
        usable = stats["read"] - stats["empty"]
        if usable and stats["dropped_alphabet"] > ALPHABET_DROP_LIMIT * usable:
            raise UserError(f"{stats['dropped_alphabet']} of {usable} sentences use characters outside the vocabulary "
                            f"({listing}); is --lang {lang} right for this vocabulary?", path=vocab)
    if not kept:
        raise UserError("no sentences left after normalisation and exclusions", path=text_files[0])

    model, word_counts = estimate_kneser_ney(kept, order=order, prune=prune)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.write_arpa(out / "lm.arpa")
    ranked = sorted(word_counts, key=lambda w: (-word_counts[w], w))
    (out / "unigrams.txt").write_text("\n".join(ranked) + "\n", encoding="utf-8")

    lines, _ = lexicon_lines(sorted(word_counts), set("".join(word_counts)))  # spelling checked again at decode
    (out / "lexicon.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    excluded = stats["excluded_exact"] + stats["excluded_contained"] + stats["excluded_within"]
    record = {
        "lang": normalize.lang,
        "normalizer": normalize.name,
        "order": order,
        "estimator": "interpolated modified Kneser-Ney (asr_transfer.lm)",
        "prune": list(prune),
        "discounts": [[round(d, 6) for d in ds] for ds in model.discounts],
        "ngram_counts": [len(p) for p in model.probs],
        "sentences_read": stats["read"],
        "sentences_used": len(kept),
        "sentences_empty": stats["empty"],
        "sentences_excluded": excluded,
        "sentences_excluded_exact": stats["excluded_exact"],
        "sentences_excluded_contained": stats["excluded_contained"],
        "sentences_excluded_within": stats["excluded_within"],
        "sentences_dropped_alphabet": stats["dropped_alphabet"],
        "foreign_characters": dict(foreign.most_common()),
        "words": sum(word_counts.values()),
        "unique_words": len(word_counts),
        "sources": [{"path": str(p), "sha256": sha256_file(p)} for p in text_files],
        "excluded_manifests": [{"path": str(p), "sha256": sha256_file(p)} for p in exclude_manifests],
        "vocab": None if vocab is None else {"path": str(vocab), "sha256": sha256_file(
            Path(vocab) / "vocab.json" if Path(vocab).is_dir() else vocab)},
        "build_s": round(time.perf_counter() - started, 3),
    }
    (out / "lm.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"LM: {len(kept)} sentences ({stats['read']} read, {excluded} dev/test sentences excluded, "
        f"{stats['dropped_alphabet']} dropped for the alphabet), {len(word_counts)} words, "
        f"n-grams {record['ngram_counts']}, {record['build_s']:.1f} s -> {out}")
    return out
