"""Error rates: WER/CER with jiwer, per-utterance alignments, bootstrap intervals, per-character errors, per-speaker
rates.

All functions here take text that is already normalised (see :func:`asr_transfer.text.get_normalizer`), except
:func:`error_rates`, which applies a normaliser itself when given one. Corpus rates are always *total errors over total
reference units* (words or characters, spaces included for CER), never the mean of per-utterance rates: a mean would
let a two-word utterance weigh as much as a forty-word one.

Bootstrap resampling draws whole utterances with replacement (errors inside an utterance are correlated, so words
are not independent samples). Resample ``k`` uses ``rng.integers(0, m, size=m)`` from
``numpy.random.default_rng(seed)``, drawn in order; results are reproducible for a given seed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

# Rows of the (resamples, utterances) index matrix drawn at once: bounds memory to ~8 MB per 1000 utterances.
_BOOTSTRAP_CHUNK_ROWS = 128


@dataclass(frozen=True)
class Counts:
    """Edit operations between a reference and a hypothesis, in words or characters."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_len(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def rate(self) -> float:
        """errors / ref_len; ``inf`` when the reference is empty but the hypothesis is not, 0 when both are."""
        if self.ref_len == 0:
            return float("inf") if self.errors else 0.0
        return self.errors / self.ref_len

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
        )

    def as_dict(self) -> dict:
        return {
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "ref_len": self.ref_len,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class UtteranceScore:
    """Word and character counts of one (ref, hyp) pair, and the word alignment as three printable lines."""

    words: Counts
    chars: Counts
    alignment: str  # "REF: ...\nHYP: ...\nOPS: ..." with '*' filling gaps, ops S/D/I under the words


def _counts_from_chunks(chunks) -> Counts:
    s = d = i = h = 0
    for c in chunks:
        ref_n = c.ref_end_idx - c.ref_start_idx
        hyp_n = c.hyp_end_idx - c.hyp_start_idx
        if c.type == "equal":
            h += ref_n
        elif c.type == "substitute":
            s += ref_n
        elif c.type == "delete":
            d += ref_n
        elif c.type == "insert":
            i += hyp_n
        else:  # pragma: no cover - jiwer only emits the four types above
            raise ValueError(f"unknown alignment chunk type {c.type!r}")
    return Counts(s, d, i, h)


def format_alignment(ref_words: Sequence[str], hyp_words: Sequence[str], chunks) -> str:
    """Three aligned lines ``REF:``/``HYP:``/``OPS:``; a gap is ``*`` as wide as the word it faces.

    >>> # "das ist ein haus" vs "das ist haus"  ->  REF: das ist ein haus / HYP: das ist *** haus / OPS:         D
    """
    ref_cols: list[str] = []
    hyp_cols: list[str] = []
    ops: list[str] = []
    for c in chunks:
        r = list(ref_words[c.ref_start_idx : c.ref_end_idx])
        h = list(hyp_words[c.hyp_start_idx : c.hyp_end_idx])
        if c.type == "delete":
            h = ["*" * len(w) for w in r]
        elif c.type == "insert":
            r = ["*" * len(w) for w in h]
        op = {"equal": " ", "substitute": "S", "delete": "D", "insert": "I"}[c.type]
        for rw, hw in zip(r, h):
            width = max(len(rw), len(hw), 1)
            ref_cols.append(rw.ljust(width))
            hyp_cols.append(hw.ljust(width))
            ops.append(op.ljust(width))
    return "\n".join(
        [
            ("REF: " + " ".join(ref_cols)).rstrip(),
            ("HYP: " + " ".join(hyp_cols)).rstrip(),
            ("OPS: " + " ".join(ops)).rstrip(),
        ]
    )


def wrap_alignment(alignment: str, width: int = 100) -> str:
    """Re-wrap a :func:`format_alignment` block into REF/HYP/OPS blocks of at most ``width`` characters.

    Columns are never split: separators are the offsets where both REF and HYP have a space (inside a column at
    least one of them has a letter, since the shorter word is padded to the longer one). A single column wider than
    ``width`` gets a block of its own.
    """
    lines = alignment.split("\n")
    if len(lines) != 3:
        return alignment
    prefix = 5  # "REF: "
    bodies = [line[prefix:] for line in lines]
    n = max(len(b) for b in bodies)
    bodies = [b.ljust(n) for b in bodies]
    cuts = [i for i in range(n) if bodies[0][i] == " " and bodies[1][i] == " "]
    bounds = [0, *[c + 1 for c in cuts], n + 1]
    spans = [(bounds[k], bounds[k + 1] - 1) for k in range(len(bounds) - 1) if bounds[k + 1] - 1 > bounds[k]]
    blocks, start, end = [], None, None
    for a, b in spans:
        if start is not None and b - start > width - prefix:
            blocks.append((start, end))
            start = None
        if start is None:
            start = a
        end = b
    if start is not None:
        blocks.append((start, end))
    if len(blocks) <= 1:
        return alignment
    out = []
    for a, b in blocks:
        out.append("\n".join((line[:prefix] + body[a:b]).rstrip() for line, body in zip(lines, bodies)))
    return "\n\n".join(out)


def _clean(text: str) -> str:
    # jiwer's character transform keeps every space; normalisers already collapse them, but raw text may not.
    return " ".join(text.split())


def score_pairs(refs: Sequence[str], hyps: Sequence[str]) -> list[UtteranceScore]:
    """Per-utterance word and character counts plus word alignments for normalised ``refs``/``hyps``.

    Empty references are allowed (every hypothesis word is then an insertion).
    """
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return []
    refs = [_clean(r) for r in refs]
    hyps = [_clean(h) for h in hyps]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    out = []
    for k in range(len(refs)):
        out.append(
            UtteranceScore(
                words=_counts_from_chunks(words.alignments[k]),
                chars=_counts_from_chunks(chars.alignments[k]),
                alignment=format_alignment(words.references[k], words.hypotheses[k], words.alignments[k]),
            )
        )
    return out


def corpus_rate(counts: Iterable[Counts]) -> float:
    """Total errors / total reference units; ``nan`` when there are no reference units at all."""
    total = sum(counts, Counts())
    return total.errors / total.ref_len if total.ref_len else float("nan")


def error_rates(
    refs: Sequence[str], hyps: Sequence[str], normalizer: Callable[[str], str] | None = None
) -> dict:
    """Corpus WER and CER (fractions, not percent) with their edit counts; ``normalizer`` is applied to both sides.

    Returns ``{"wer", "cer", "words": Counts.as_dict(), "chars": Counts.as_dict(), "n"}``.
    """
    if normalizer is not None:
        refs = [normalizer(r) for r in refs]
        hyps = [normalizer(h) for h in hyps]
    scores = score_pairs(refs, hyps)
    w = sum((s.words for s in scores), Counts())
    c = sum((s.chars for s in scores), Counts())
    return {
        "wer": corpus_rate([w]),
        "cer": corpus_rate([c]),
        "words": w.as_dict(),
        "chars": c.as_dict(),
        "n": len(scores),
    }


def _resample_sums(values: Sequence[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """Sums of each array in ``values`` over ``n`` bootstrap resamples of the same utterance indices: ``(n,)`` each."""
    m = len(values[0])
    rng = np.random.default_rng(seed)
    sums = [np.empty(n, dtype=np.float64) for _ in values]
    for start in range(0, n, _BOOTSTRAP_CHUNK_ROWS):
        rows = min(_BOOTSTRAP_CHUNK_ROWS, n - start)
        # One (rows, m) draw gives the same stream as `rows` successive draws of size m (checked in the tests).
        idx = rng.integers(0, m, size=(rows, m))
        for out, v in zip(sums, values):
            out[start : start + rows] = v[idx].sum(axis=1)
    return sums


def _as_arrays(*arrays, names) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    m = len(out[0])
    for a, name in zip(out, names):
        if a.ndim != 1 or len(a) != m:
            raise ValueError(f"{name} must be 1-D with one value per utterance ({m}), got shape {a.shape}")
    if m == 0:
        raise ValueError("no utterances to resample")
    if out[-1].sum() <= 0:
        raise ValueError("total reference length is 0: error rate undefined")
    return out


def _rates(errors: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    # A resample can draw only empty references (tiny sets); its rate is undefined, so it is left out (nan).
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lengths > 0, errors / np.where(lengths > 0, lengths, 1), np.nan)


def bootstrap_ci(
    errors: Sequence[float],
    ref_lengths: Sequence[float],
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the corpus rate ``sum(errors) / sum(ref_lengths)``.

    ``errors``/``ref_lengths``: ``(utterances,)`` per-utterance error counts and reference lengths. Quantiles use
    numpy's default linear interpolation at ``(1 - level) / 2`` and ``(1 + level) / 2``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    e, l = _as_arrays(errors, ref_lengths, names=("errors", "ref_lengths"))
    se, sl = _resample_sums([e, l], n, seed)
    rates = _rates(se, sl)
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(rates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_bootstrap(
    errors_a: Sequence[float],
    errors_b: Sequence[float],
    ref_lengths: Sequence[float],
    n: int = 1000,
    seed: int = 0,
) -> float:
    """One-sided paired bootstrap p-value for "system B has a lower error rate than system A" (Koehn, 2004).

    Both systems are scored on the same utterances (same order). Each resample draws utterance indices once and
    applies them to both systems; the p-value is the fraction of resamples in which B is *not better* than A, i.e.
    ``rate_B >= rate_A`` (ties count against B). Small p (e.g. < 0.05) means B's improvement is unlikely to be luck of
    the test set; p near 1 means B is worse.
    """
    a, b, l = _as_arrays(errors_a, errors_b, ref_lengths, names=("errors_a", "errors_b", "ref_lengths"))
    sa, sb, sl = _resample_sums([a, b, l], n, seed)
    valid = sl > 0
    return float(np.mean(sb[valid] >= sa[valid]))


@dataclass
class CharErrors:
    """Errors of one character: how often it was in the references and what happened to it."""

    char: str
    ref_count: int = 0  # occurrences in the references
    hits: int = 0
    substitutions: int = 0  # replaced by another character
    deletions: int = 0  # dropped
    insertions: int = 0  # appeared in a hypothesis where the reference had nothing
    confusions: Counter = field(default_factory=Counter)  # hyp char -> times this ref char became it

    @property
    def error_rate(self) -> float:
        """(substitutions + deletions) / ref_count; insertions are not part of it (they have no reference char)."""
        return (self.substitutions + self.deletions) / self.ref_count if self.ref_count else float("nan")

    def as_dict(self) -> dict:
        return {
            "char": self.char,
            "ref_count": self.ref_count,
            "hits": self.hits,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "error_rate": self.error_rate,
            "confusions": dict(self.confusions.most_common()),
        }


def char_errors(pairs: Iterable[tuple[str, str]]) -> dict[str, CharErrors]:
    """Per-character errors from character alignments of normalised ``(ref, hyp)`` pairs.

    Each reference character is a hit, a substitution (recorded in ``confusions`` with the hyp character) or a
    deletion; each inserted hypothesis character counts as an insertion of that character. The space is a character
    too (word-boundary errors). Returns ``{char: CharErrors}``.
    """
    import jiwer

    pairs = [(_clean(r), _clean(h)) for r, h in pairs]
    stats: dict[str, CharErrors] = {}

    def get(ch: str) -> CharErrors:
        if ch not in stats:
            stats[ch] = CharErrors(ch)
        return stats[ch]

    if not pairs:
        return stats
    out = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs])
    for ref, hyp, chunks in zip(out.references, out.hypotheses, out.alignments):
        for c in chunks:
            r = ref[c.ref_start_idx : c.ref_end_idx]
            h = hyp[c.hyp_start_idx : c.hyp_end_idx]
            for ch in r:
                get(ch).ref_count += 1
            if c.type == "equal":
                for ch in r:
                    get(ch).hits += 1
            elif c.type == "substitute":
                for rc, hc in zip(r, h):
                    get(rc).substitutions += 1
                    get(rc).confusions[hc] += 1
            elif c.type == "delete":
                for ch in r:
                    get(ch).deletions += 1
            elif c.type == "insert":
                for ch in h:
                    get(ch).insertions += 1
    return stats


def rates_by_speaker(speakers: list[str | None], scores: list[UtteranceScore]) -> dict:
    """Corpus WER/CER per manifest ``speaker`` (a voice, for synthetic sets), worst CER first.

    A corpus rate hides where the errors are: one unusual voice can hold a third of them. ``{}`` when the manifest
    names fewer than two speakers.
    """
    groups: dict[str, list[UtteranceScore]] = {}
    for speaker, score in zip(speakers, scores):
        if speaker:
            groups.setdefault(speaker, []).append(score)
    if len(groups) < 2:
        return {}
    out = {}
    for spk, ss in groups.items():
        chars = sum((s.chars for s in ss), Counts())
        out[spk] = {"n_utterances": len(ss), "wer": corpus_rate(s.words for s in ss), "cer": corpus_rate([chars]),
                    "char_errors": chars.errors, "chars": chars.ref_len}
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["cer"], kv[0])))
