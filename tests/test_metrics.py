"""Known-answer tests for WER/CER, alignments, bootstrap intervals and per-character errors."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from asr_transfer.metrics import (
    Counts,
    bootstrap_ci,
    char_errors,
    corpus_rate,
    error_rates,
    paired_bootstrap,
    score_pairs,
    wrap_alignment,
)


def test_one_deletion_in_four_words():
    r = error_rates(["das ist ein haus"], ["das ist haus"])
    assert r["wer"] == pytest.approx(0.25)
    assert r["words"] == {"substitutions": 0, "deletions": 1, "insertions": 0, "hits": 3, "ref_len": 4, "errors": 1}
    # "das ist ein haus" has 16 characters; "ein " (4) is deleted
    assert r["cer"] == pytest.approx(4 / 16)


def test_substitution_insertion_and_umlaut_cer():
    # ref "über" hyp "uber": one character substitution out of 4; one word substitution out of 1
    r = error_rates(["über"], ["uber"])
    assert r["wer"] == 1.0
    assert r["cer"] == pytest.approx(0.25)
    assert r["chars"]["substitutions"] == 1
    r = error_rates(["ein haus"], ["ein großes haus"])
    assert r["words"]["insertions"] == 1 and r["words"]["hits"] == 2
    assert r["wer"] == pytest.approx(0.5)


def test_corpus_rate_is_total_over_total_not_mean():
    # utt1: 1 error / 1 word, utt2: 0 errors / 9 words -> corpus 1/10, mean of rates would be 0.5
    refs = ["a", "b c d e f g h i j"]
    hyps = ["x", "b c d e f g h i j"]
    r = error_rates(refs, hyps)
    assert r["wer"] == pytest.approx(0.1)


def test_normalizer_is_applied_to_both_sides():
    r = error_rates(["Das Haus."], ["das haus"], normalizer=lambda s: s.lower().replace(".", ""))
    assert r["wer"] == 0.0 and r["cer"] == 0.0


def test_per_utterance_counts_and_alignment_string():
    scores = score_pairs(["das ist ein haus", "a b", "", "x y"], ["das ist haus", "a c d", "hallo", ""])
    s0, s1, s2, s3 = scores
    assert s0.words == Counts(substitutions=0, deletions=1, insertions=0, hits=3)
    assert s0.alignment.splitlines() == ["REF: das ist ein haus", "HYP: das ist *** haus", "OPS:         D"]
    assert s1.words == Counts(substitutions=1, deletions=0, insertions=1, hits=1)
    assert s1.alignment.splitlines()[:2] == ["REF: a * b", "HYP: a c d"]
    # empty reference: everything is an insertion; empty hypothesis: everything a deletion
    assert s2.words == Counts(insertions=1) and s2.words.rate == math.inf
    assert s3.words == Counts(deletions=2) and s3.chars.deletions == 3
    assert corpus_rate(s.words for s in scores) == pytest.approx((1 + 2 + 1 + 2) / (4 + 2 + 0 + 2))


def test_substitution_alignment_pads_to_the_longer_word():
    (s,) = score_pairs(["ein haus"], ["ein hausboot"])
    ref, hyp, ops = s.alignment.splitlines()
    assert ref == "REF: ein haus"
    assert hyp == "HYP: ein hausboot"
    assert ops == "OPS:     S"


def _reference_bootstrap(errors, lengths, n, seed, level):
    """Independent computation with plain loops: same draws, own sums, own linear-interpolated percentiles."""
    rng = np.random.default_rng(seed)
    m = len(errors)
    rates = []
    for _ in range(n):
        idx = rng.integers(0, m, size=m)
        e = 0.0
        total = 0.0
        for i in idx:
            e += errors[i]
            total += lengths[i]
        rates.append(e / total)
    rates.sort()

    def pct(q):
        pos = q * (len(rates) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(rates) - 1)
        return rates[lo] + (rates[hi] - rates[lo]) * (pos - lo)

    a = (1 - level) / 2
    return pct(a), pct(1 - a)


def test_bootstrap_ci_matches_independent_loop_computation():
    errors = [0, 3, 1, 5, 2, 0, 0, 7, 1, 2]
    lengths = [4, 10, 6, 12, 8, 3, 5, 9, 7, 6]
    for n, seed, level in [(1000, 0, 0.95), (333, 7, 0.9)]:  # 333 rows also crosses the draw-chunk boundary
        got = bootstrap_ci(errors, lengths, n=n, seed=seed, level=level)
        want = _reference_bootstrap(errors, lengths, n, seed, level)
        assert got == pytest.approx(want, abs=1e-12)
    low, high = bootstrap_ci(errors, lengths)
    assert low < sum(errors) / sum(lengths) < high


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError):
        bootstrap_ci([1, 2], [3])
    with pytest.raises(ValueError):
        bootstrap_ci([0, 0], [0, 0])
    with pytest.raises(ValueError):
        bootstrap_ci([1], [2], level=1.5)


def test_bootstrap_ci_coverage_simulation():
    """95% intervals cover the true per-word error rate in roughly 95% of simulated test sets."""
    start = time.perf_counter()
    true_rate = 0.2
    rng = np.random.default_rng(1234)
    covered = 0
    repeats = 500  # binomial sd of the coverage estimate ~0.01, so the 0.90-0.99 band is ~4 sd wide each side
    for r in range(repeats):
        lengths = rng.integers(3, 25, size=100)
        errors = rng.binomial(lengths, true_rate)
        low, high = bootstrap_ci(errors, lengths, n=1000, seed=r)
        covered += low <= true_rate <= high
    coverage = covered / repeats
    assert 0.90 <= coverage <= 0.99, coverage
    assert time.perf_counter() - start < 10


def _reference_paired(a, b, lengths, n, seed):
    rng = np.random.default_rng(seed)
    m = len(a)
    not_better = 0
    for _ in range(n):
        idx = rng.integers(0, m, size=m)
        ea = sum(a[i] for i in idx)
        eb = sum(b[i] for i in idx)
        total = sum(lengths[i] for i in idx)
        not_better += eb / total >= ea / total
    return not_better / n


def test_paired_bootstrap_known_answers():
    lengths = [1, 1]
    # B always better -> p = 0; identical systems -> ties count against B -> p = 1
    assert paired_bootstrap([1, 1], [0, 0], lengths, n=200, seed=0) == 0.0
    assert paired_bootstrap([1, 0], [1, 0], lengths, n=200, seed=0) == 1.0
    # a=[1,0], b=[0,1]: B better only when index 0 is drawn twice (prob 1/4) -> p ~ 3/4
    p = paired_bootstrap([1, 0], [0, 1], lengths, n=1000, seed=3)
    assert p == _reference_paired([1, 0], [0, 1], lengths, 1000, 3)
    assert abs(p - 0.75) < 0.05


def test_paired_bootstrap_detects_a_real_improvement():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 20, size=100)
    a = rng.binomial(lengths, 0.30)
    b = rng.binomial(lengths, 0.15)
    assert paired_bootstrap(a, b, lengths, n=500, seed=0) < 0.01
    assert paired_bootstrap(b, a, lengths, n=500, seed=0) > 0.99


def test_char_errors_counts_umlauts():
    stats = char_errors([("für dich", "fur dich"), ("groß", "gros"), ("ä", "")])
    assert stats["ü"].ref_count == 1 and stats["ü"].substitutions == 1
    assert stats["ü"].confusions == {"u": 1}
    assert stats["ß"].error_rate == 1.0 and stats["ß"].confusions == {"s": 1}
    assert stats["ä"].deletions == 1
    assert stats["d"].hits == 1 and stats["d"].error_rate == 0.0
    assert stats[" "].ref_count == 1
    ins = char_errors([("ab", "abx")])
    assert ins["x"].insertions == 1 and ins["x"].ref_count == 0 and math.isnan(ins["x"].error_rate)
    assert char_errors([]) == {}


def test_wrap_alignment_keeps_columns_together():
    (s,) = score_pairs(["eins zwei drei vier fünf sechs"], ["eins zwo drei fünf sechs sieben"])
    wrapped = wrap_alignment(s.alignment, width=20)
    blocks = [b.splitlines() for b in wrapped.split("\n\n")]
    assert len(blocks) > 1 and all(len(b) == 3 and max(len(x) for x in b) <= 20 for b in blocks)
    assert all(b[0].startswith("REF: ") and b[1].startswith("HYP: ") and b[2].startswith("OPS:") for b in blocks)
    # joining the blocks back gives the same words and ops in order
    ref = " ".join(b[0][5:] for b in blocks).split()
    hyp = " ".join(b[1][5:] for b in blocks).split()
    assert ref == s.alignment.splitlines()[0][5:].split() and hyp == s.alignment.splitlines()[1][5:].split()
    assert "".join(b[2][5:].replace(" ", "") for b in blocks) == s.alignment.splitlines()[2][5:].replace(" ", "")
    assert wrap_alignment(s.alignment, width=1000) == s.alignment
