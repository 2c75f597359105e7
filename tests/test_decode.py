"""CTC decoders: greedy known answers, hypothesis properties, beam search with lexicon and KenLM LM."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_transfer.decode import (
    BeamDecoder,
    DecodeOptions,
    GreedyDecoder,
    Hypothesis,
    WordTiming,
    arpa_unigrams,
    make_decoder,
)
from asr_transfer.errors import UserError

DE_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz", "ä", "ö", "ü", "ß"]
EN_UPPER_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]  # base-960h layout


def one_hot(path: str | list[str], vocab=DE_VOCAB, p: float = 0.9) -> np.ndarray:
    """Log-probs whose argmax per frame spells ``path``; "_" is the blank (``<pad>``)."""
    symbols = list(path) if isinstance(path, str) else path
    ix = {t: i for i, t in enumerate(vocab)}
    x = np.full((len(symbols), len(vocab)), (1 - p) / (len(vocab) - 1), dtype=np.float32)
    for t, s in enumerate(symbols):
        x[t, ix["<pad>" if s == "_" else s]] = p
    return np.log(x)


def soft(spec: list[dict[str, float]], vocab=DE_VOCAB) -> np.ndarray:
    """Log-probs from per-frame {token: prob}; the rest of the mass goes to the blank."""
    ix = {t: i for i, t in enumerate(vocab)}
    x = np.full((len(spec), len(vocab)), 1e-4, dtype=np.float32)
    for t, frame in enumerate(spec):
        for tok, p in frame.items():
            x[t, ix[tok]] = p
        x[t, 0] += max(0.0, 1.0 - x[t].sum())
    return np.log(x / x.sum(axis=1, keepdims=True))


greedy = GreedyDecoder(DE_VOCAB)


@pytest.mark.parametrize(
    "path, text",
    [
        ("hhaa_llo", "halo"),  # repeats collapse
        ("hal_lo", "hallo"),  # a blank between equal letters keeps both
        ("hallo", "halo"),  # ... and without one they merge
        ("das|haus", "das haus"),
        ("|das|haus|", "das haus"),  # leading / trailing delimiters
        ("das||_|haus", "das haus"),  # repeated delimiters, with blanks in between
        ("das_|_|__haus", "das haus"),
        ("||", ""),
        ("______", ""),  # all blank
        ("", ""),  # no frames
    ],
)
def test_greedy_known_answers(path, text):
    hyp = greedy.decode(one_hot(path))
    assert hyp.text == text
    assert [w.word for w in hyp.words] == (text.split() if text else [])


def test_greedy_specials_are_dropped_but_separate_repeats():
    # "<unk>" is never in the text; like a blank it keeps the letters around it apart (HF tokenizer behaviour).
    hyp = greedy.decode(one_hot(["a", "<unk>", "a", "|", "<s>", "b", "</s>"]))
    assert hyp.text == "aa b"


def test_upper_case_vocabulary_decodes_lower_case():
    path = list("HELLO|WORLD".replace("LL", "L_L"))
    lp = one_hot(path, vocab=EN_UPPER_VOCAB)
    assert GreedyDecoder(EN_UPPER_VOCAB).decode(lp).text == "hello world"
    assert BeamDecoder(EN_UPPER_VOCAB, beam_size=8).decode(lp).text == "hello world"


def test_greedy_timings_and_confidence_known_values():
    # frames: d a a s _ | _ h a u s  -> "das" frames 0-3, "haus" frames 7-10
    lp = one_hot("daas_|_haus", p=0.8)
    hyp = greedy.decode(lp, frame_offset_s=1.0)
    assert hyp.words == (
        WordTiming("das", 1.0, 1.08, pytest.approx(0.8, abs=1e-6)),
        WordTiming("haus", 1.14, 1.22, pytest.approx(0.8, abs=1e-6)),
    )
    assert hyp.tokens == tuple(DE_VOCAB.index(c) for c in "das|haus")
    assert hyp.score == pytest.approx(11 * math.log(0.8), rel=1e-5)


def test_greedy_accepts_torch_and_batches():
    lp = one_hot("ja|nein")
    assert greedy.decode(torch.from_numpy(lp)).text == "ja nein"
    out = greedy.decode_batch([lp, one_hot("ok")], [0.0, 2.0])
    assert [h.text for h in out] == ["ja nein", "ok"]
    assert out[1].words[0].start_s == 2.0


def test_wrong_width_is_an_error():
    with pytest.raises(ValueError, match="columns"):
        greedy.decode(np.zeros((3, 5), np.float32))


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(st.sampled_from(["_", "|", "a", "b", "ä", "<unk>"]), max_size=40),
    offset=st.floats(min_value=0, max_value=1e4, allow_nan=False),
    noise_seed=st.integers(0, 2**16),
)
def test_hypothesis_properties(frames, offset, noise_seed):
    lp = one_hot(frames) + np.random.default_rng(noise_seed).normal(0, 0.05, (len(frames), len(DE_VOCAB))).astype(
        np.float32)
    hyp = greedy.decode(lp, frame_offset_s=offset)
    check_hypothesis(hyp, offset, len(frames))


def check_hypothesis(hyp: Hypothesis, offset: float, num_frames: int) -> None:
    assert "  " not in hyp.text
    assert hyp.text == hyp.text.strip()
    assert " ".join(w.word for w in hyp.words) == hyp.text
    end = offset + num_frames * 0.02
    last = offset
    for w in hyp.words:
        assert w.word and " " not in w.word
        assert last - 1e-6 <= w.start_s < w.end_s <= end + 1e-6
        assert 0.0 <= w.confidence <= 1.0
        last = w.end_s


# ------------------------------------------------------------------------------------------------------------
# Beam search
# ------------------------------------------------------------------------------------------------------------

# "das h?us": the second vowel frame says "o" (0.5) a bit more than "a" (0.4). Greedy reads "das hous".
AMBIGUOUS = [{"d": .9}, {"a": .9}, {"s": .9}, {"|": .9}, {"h": .9}, {"o": .5, "a": .4}, {"u": .9}, {"s": .9}, {}]


@pytest.fixture(scope="module")
def haus_lm(tmp_path_factory):
    """A trigram LM that has seen "das haus" 30 times and "hous" (so it is in the lexicon) once."""
    from asr_transfer.lm import build_lm

    d = tmp_path_factory.mktemp("lm")
    text = d / "text.txt"
    text.write_text("Das Haus ist groß.\n" * 30 + "Ein hous.\n" + "Das Auto ist rot.\n" * 5, encoding="utf-8")
    return build_lm([text], "de", order=3, out_dir=d / "lm", log=lambda *_: None)


def test_lm_beam_fixes_what_greedy_gets_wrong(haus_lm):
    lp = soft(AMBIGUOUS)
    assert greedy.decode(lp).text == "das hous"
    assert "hous" in (haus_lm / "lexicon.txt").read_text()
    # Same lexicon, LM switched off: the acoustics win.
    assert BeamDecoder(DE_VOCAB, lm_dir=haus_lm, lm_weight=0.0, beam_size=20).decode(lp).text == "das hous"
    hyp = BeamDecoder(DE_VOCAB, lm_dir=haus_lm, lm_weight=2.0, beam_size=20).decode(lp, frame_offset_s=0.5)
    assert hyp.text == "das haus"
    assert [(w.word, w.start_s, w.end_s) for w in hyp.words] == [("das", 0.5, 0.56), ("haus", 0.58, 0.66)]
    # The chosen path's probabilities: h .9, a .4, u .9, s .9
    assert hyp.words[1].confidence == pytest.approx((0.9 + 0.4 + 0.9 + 0.9) / 4, abs=1e-3)
    check_hypothesis(hyp, 0.5, len(AMBIGUOUS))


def test_lexicon_constrains_output_without_lm(tmp_path):
    lp = soft(AMBIGUOUS)
    assert BeamDecoder(DE_VOCAB, beam_size=20).decode(lp).text == "das hous"  # lexicon-free, no LM
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("das d a s\nhaus h a u s\n", encoding="utf-8")
    assert BeamDecoder(DE_VOCAB, lexicon=lexicon, beam_size=20).decode(lp).text == "das haus"


def test_lexicon_words_split_without_delimiter(tmp_path):
    # Lexicon search ends words at their last letter even when the model emitted no "|" between them.
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("ja j a\nnein n e i n\n", encoding="utf-8")
    hyp = BeamDecoder(DE_VOCAB, lexicon=lexicon, beam_size=10).decode(one_hot("jja_nein"))
    assert hyp.text == "ja nein"
    assert [(w.start_s, w.end_s) for w in hyp.words] == [(0.0, 0.06), (0.08, 0.16)]


def test_lexicon_derived_from_arpa_unigrams(haus_lm, tmp_path):
    # No lexicon.txt: the decoder spells the ARPA's unigrams itself.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "lm.arpa").write_bytes((haus_lm / "lm.arpa").read_bytes())
    assert set(arpa_unigrams(bare / "lm.arpa")) == {"das", "haus", "ist", "groß", "ein", "hous", "auto", "rot"}
    hyp = BeamDecoder(DE_VOCAB, lm_dir=bare, lm_weight=2.0, beam_size=20).decode(soft(AMBIGUOUS))
    assert hyp.text == "das haus"


def test_beam_without_lm_matches_greedy_on_clear_input():
    beam = BeamDecoder(DE_VOCAB, beam_size=5)
    for path in ["hal_lo|welt", "|a||b|", "____", "xy"]:
        lp = one_hot(path)
        g, b = greedy.decode(lp), beam.decode(lp)
        assert b.text == g.text
        assert b.words == g.words
        check_hypothesis(b, 0.0, len(path))


def test_beam_never_emits_specials():
    # A frame where <unk> dominates: greedy drops it; the beam must route around it, never print it.
    lp = soft([{"o": .2, "<unk>": .7}, {"k": .9}])
    assert BeamDecoder(DE_VOCAB, beam_size=5).decode(lp).text == "ok"


def test_beam_errors_are_user_errors(haus_lm, tmp_path):
    with pytest.raises(UserError, match="lexicon-free"):
        BeamDecoder(DE_VOCAB, lm_dir=haus_lm, lexicon="none")
    with pytest.raises(UserError, match="neither lm.bin nor lm.arpa"):
        BeamDecoder(DE_VOCAB, lm_dir=tmp_path)
    with pytest.raises(UserError, match="not found"):
        BeamDecoder(DE_VOCAB, lm_dir=tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "lm.arpa").write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\tdas\n\\end\\\n")
    (broken / "lexicon.txt").write_text("das d a s\n")
    with pytest.raises(UserError, match="cannot build the beam decoder"):
        BeamDecoder(DE_VOCAB, lm_dir=broken)
    with pytest.raises(UserError, match="unknown decoder"):
        make_decoder("viterbi", DE_VOCAB)


def test_decode_options_build_and_record(haus_lm):
    opts = DecodeOptions(kind="beam", lm_dir=str(haus_lm), beam_size=20, lm_weight=2.0)
    dec = opts.build(DE_VOCAB)
    assert isinstance(dec, BeamDecoder)
    assert dec.decode_batch([soft(AMBIGUOUS)])[0].text == "das haus"
    record = opts.to_dict()
    assert record["unk_score"] is None and record["lm_weight"] == 2.0  # JSON-safe (no -inf)
    assert isinstance(DecodeOptions().build(DE_VOCAB), GreedyDecoder)


@pytest.mark.parametrize("make", [
    lambda: DecodeOptions(kind="greedy", lm_dir="lm"),
    lambda: make_decoder("greedy", DE_VOCAB, lm_dir="lm"),
])
def test_greedy_with_an_lm_is_one_rule_with_one_message(make):
    with pytest.raises(UserError) as err:
        make()
    assert str(err.value) == "a language model needs the beam decoder: add --decoder beam (or drop --lm)"


def test_decode_options_refuse_unknown_decoders_and_empty_beams():
    with pytest.raises(UserError, match="unknown decoder 'viterbi': use greedy or beam"):
        DecodeOptions(kind="viterbi")
    with pytest.raises(UserError, match="beam size"):
        DecodeOptions(kind="beam", beam_size=0)
