"""n-gram LM building: sentence splitting, modified Kneser-Ney known values, normalisation, exclusions, alphabet."""
from __future__ import annotations

import json
import random
from fractions import Fraction as F
from pathlib import Path

import kenlm
import pytest

from asr_transfer.cli import main
from asr_transfer.errors import UserError
from asr_transfer.lm import _discounts, build_lm, estimate_kneser_ney, split_sentences
from asr_transfer.manifest import Utterance, write_manifest


def quiet(*_):
    pass


def p(model: kenlm.Model, context: list[str], word: str, bos: bool = True) -> float:
    """P(word | context) from KenLM (linear)."""
    state = kenlm.State()
    (model.BeginSentenceWrite if bos else model.NullContextWrite)(state)
    for w in context:
        out = kenlm.State()
        model.BaseScore(state, w, out)
        state = out
    return 10 ** model.BaseScore(state, word, kenlm.State())


@pytest.mark.parametrize(
    "line, sentences",
    [
        ("Das ist gut. Er kommt morgen!", ["Das ist gut.", "Er kommt morgen!"]),
        ("Wir sehen z. B. das Haus. Dann gehen wir.", ["Wir sehen z. B. das Haus.", "Dann gehen wir."]),
        ("Dr. Müller kommt. Nr. 5 auch.", ["Dr. Müller kommt.", "Nr. 5 auch."]),
        ("Warum? „Darum.“ Ende", ["Warum?", "„Darum.“", "Ende"]),
        ("ohne punkt am ende", ["ohne punkt am ende"]),
        ("   ", []),
    ],
)
def test_split_sentences(line, sentences):
    assert split_sentences(line) == sentences


def test_discounts_follow_chen_goodman():
    # count-of-counts t1=4, t2=2, t3=1, t4=1: Y = 4/(4+2*2) = 0.5,
    # D1 = 1 - 2Y t2/t1 = 0.5, D2 = 2 - 3Y t3/t2 = 1.25, D3+ = 3 - 4Y t4/t3 = 1.0
    counts = {("a", str(i)): c for i, c in enumerate([1, 1, 1, 1, 2, 2, 3, 4, 7])}
    d, fallback = _discounts(counts, 1)
    assert not fallback
    assert d == pytest.approx((0.5, 1.25, 1.0))
    assert _discounts({("a",): 1, ("b",): 2}, 0) == ((0.5, 1.0, 1.5), True)  # too little data: lmplz fallback


def test_kneser_ney_known_values(tmp_path):
    """Bigram modified KN on "a b", "a b", "b a", worked by hand (Chen & Goodman 1998, eq. 17 + 19).

    Bigram counts: <s> a 2, a b 2, b </s> 2, <s> b 1, b a 1, a </s> 1. Count-of-counts lack t3/t4 → fallback
    discounts D1=.5, D2=1. Unigram continuation counts: a {<s>, b} = 2, b {a, <s>} = 2, </s> {b, a} = 2.
    Unigrams: (2 - 1)/6 + gamma0/|V|, gamma0 = 3*1/6 = 1/2, |V| = 4 (a, b, </s>, <unk>) → 1/6 + 1/8 = 7/24;
    <unk> = 1/8. Context "a": b 2, </s> 1, total 3, gamma = (D2 + D1)/3 = 1/2:
    p(b|a) = (2-1)/3 + 1/2 * 7/24 = 23/48, p(</s>|a) = (1-.5)/3 + 7/48 = 15/48, unseen p(a|a) = 1/2 * 7/24 = 7/48.
    """
    model, counts = estimate_kneser_ney([["a", "b"], ["a", "b"], ["b", "a"]], order=2)
    assert counts == {"a": 3, "b": 3}
    model.write_arpa(tmp_path / "lm.arpa")
    lm = kenlm.Model(str(tmp_path / "lm.arpa"))
    expected = {
        ((), "a"): F(7, 24), ((), "</s>"): F(7, 24), ((), "<unk>"): F(1, 8),
        (("a",), "b"): F(23, 48), (("a",), "</s>"): F(15, 48), (("a",), "a"): F(7, 48), (("a",), "<unk>"): F(3, 48),
        (("<s>",), "a"): F(23, 48), (("<s>",), "b"): F(15, 48),
        (("b",), "</s>"): F(23, 48), (("b",), "a"): F(15, 48), (("b",), "b"): F(7, 48),
    }
    for (ctx, word), value in expected.items():
        if ctx == ():
            got = p(lm, [], word, bos=False)
        elif ctx == ("<s>",):
            got = p(lm, [], word, bos=True)
        else:
            got = p(lm, list(ctx), word, bos=False)
        assert got == pytest.approx(float(value), rel=1e-5), (ctx, word)


@pytest.mark.parametrize("prune", [(), (0, 0, 1), (0, 1, 1, 2)])
def test_every_distribution_sums_to_one(tmp_path, prune):
    rng = random.Random(0)
    vocab = "das haus ist groß klein der hund rot auto baum die katze".split()
    sentences = [[rng.choice(vocab) for _ in range(rng.randint(1, 8))] for _ in range(400)]
    model, _ = estimate_kneser_ney(sentences, order=4, prune=prune)
    model.write_arpa(tmp_path / "lm.arpa")
    lm = kenlm.Model(str(tmp_path / "lm.arpa"))
    assert lm.order == 4
    contexts = [[], ["das"], ["das", "haus"], ["der", "hund", "ist"], ["katze"] * 3, ["unbekannt"], ["rot", "die"]]
    for ctx in contexts:
        for bos in (True, False):
            total = sum(p(lm, ctx, w, bos) for w in [*vocab, "</s>", "<unk>"])
            assert total == pytest.approx(1.0, abs=1e-5), (ctx, bos, prune)
    if prune:
        full, _ = estimate_kneser_ney(sentences, order=4)
        assert len(model.probs[3]) < len(full.probs[3])


def _manifest(path: Path, texts: list[str]) -> Path:
    utts = [Utterance(audio_filepath=str(path.parent / f"u{i}.wav"), duration=1.0, text=t, id=f"u{i}")
            for i, t in enumerate(texts)]
    return write_manifest(path, utts)


CORPUS = [
    "Das Haus ist groß.", "Der Hund schläft im Garten.", "Die Katze sitzt auf dem Dach.",
    "Wir fahren morgen nach Berlin.", "Das Wetter ist heute schön.", "Ich trinke gern Kaffee.",
    "Er liest ein Buch über Bäume.", "Sie hat 3 Äpfel gekauft.",
]
TEST_SENTENCE = "Der grüne Zug fährt pünktlich um acht Uhr ab."


def test_build_lm_excludes_test_sentences(tmp_path):
    text = tmp_path / "corpus.txt"
    # The test sentence sits inside a line of running text, once alone and once inside a longer sentence.
    text.write_text("\n".join(CORPUS * 3) + f"\nHallo. {TEST_SENTENCE} Tschüss.\n"
                    f"Gestern sagte er, der grüne Zug fährt pünktlich um acht Uhr ab, nicht später.\n",
                    encoding="utf-8")
    test = _manifest(tmp_path / "test.jsonl", [TEST_SENTENCE.upper(), "ganz anders"])
    out = build_lm([text], "de", order=4, exclude_manifests=[test], out_dir=tmp_path / "lm", log=quiet)

    record = json.loads((out / "lm.json").read_text())
    assert record["sentences_excluded_exact"] == 1
    assert record["sentences_excluded_contained"] == 1
    assert record["sentences_excluded"] == 2
    assert record["sentences_used"] == len(CORPUS) * 3 + 2  # + "hallo", "tschüss"
    arpa = (out / "lm.arpa").read_text(encoding="utf-8")
    assert "pünktlich um acht" not in arpa and "grüne zug" not in arpa  # its n-grams are gone
    assert "sie hat drei äpfel" in arpa  # normalised like transcripts (numbers spelled out)
    lm = kenlm.Model(str(out / "lm.arpa"))
    assert lm.order == 4
    assert record["lang"] == "de" and record["normalizer"] == "de-v1" and record["order"] == 4
    assert record["sources"][0]["sha256"] and record["excluded_manifests"][0]["sha256"]


def test_build_lm_outputs(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS), encoding="utf-8")
    out = build_lm([text, _manifest(tmp_path / "train.jsonl", ["Das Haus ist klein"])], "de", order=3,
                   out_dir=tmp_path / "lm", log=quiet)
    unigrams = (out / "unigrams.txt").read_text(encoding="utf-8").split()
    assert unigrams[:3] == ["das", "ist", "haus"]  # by frequency (4, 3, 2)
    assert "klein" in unigrams and "<s>" not in unigrams and "</s>" not in unigrams
    lexicon = dict(line.split(" ", 1) for line in (out / "lexicon.txt").read_text(encoding="utf-8").splitlines())
    assert lexicon["schläft"] == "s c h l ä f t"
    assert set(lexicon) == set(unigrams)
    record = json.loads((out / "lm.json").read_text())
    assert record["sentences_read"] == len(CORPUS) + 1 and record["unique_words"] == len(unigrams)


def test_alphabet_check_drops_sentences_and_warns(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS * 2), encoding="utf-8")
    letters = "abcdefghijklmnopqrstuvwxyzä"  # no ö, ü, ß
    vocab = tmp_path / "vocab.json"
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *letters.upper()]  # upper-case: matched case-insensitively
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    messages = []
    out = build_lm([text], "de", order=3, out_dir=tmp_path / "lm", vocab=vocab, log=messages.append)
    record = json.loads((out / "lm.json").read_text())
    # "groß" (x2), "schläft"? (ä is fine), "über"/"bäume" (ü), "schön" (ö)
    assert record["foreign_characters"] == {"ß": 2, "ü": 2, "ö": 2}
    assert record["sentences_dropped_alphabet"] == 6
    assert any(m.startswith("warning") and "'ß' x2" in m for m in messages)
    assert "groß" not in (out / "unigrams.txt").read_text(encoding="utf-8")

    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", "a"])}))
    with pytest.raises(UserError, match="outside the vocabulary"):
        build_lm([text], "de", order=3, out_dir=tmp_path / "lm2", vocab=tiny, log=quiet)


def test_cli(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS), encoding="utf-8")
    test = _manifest(tmp_path / "test.jsonl", [CORPUS[0]])
    rc = main(["lm", "--text", str(text), "--lang", "de", "--order", "3", "--exclude", str(test),
               "--out", str(tmp_path / "lm"), "--prune", "0", "0", "1"])
    assert rc == 0
    assert "1 dev/test sentences excluded" in capsys.readouterr().out
    assert json.loads((tmp_path / "lm" / "lm.json").read_text())["prune"] == [0, 0, 1]
    assert main(["lm", "--text", str(tmp_path / "missing.txt"), "--lang", "de", "--out", str(tmp_path / "x")]) == 1
    assert "missing.txt: text file not found" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Das Haus ist gro\xdf\n".encode("latin-1"))
    assert main(["lm", "--text", str(bad), "--lang", "de", "--out", str(tmp_path / "y")]) == 1
    assert "not valid UTF-8" in capsys.readouterr().err
