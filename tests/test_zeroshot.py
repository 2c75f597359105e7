"""zero-shot + LM: German words spelled in English letters, decoded by the English head into German spellings."""
from __future__ import annotations

import json

import pytest
from test_decode import EN_UPPER_VOCAB, one_hot
from test_evaluation import en_model, sine_manifest  # noqa: F401  (fixtures: a tiny English model, 4 utterances)

from asr_transfer.cli import main
from asr_transfer.decode import BeamDecoder
from asr_transfer.errors import UserError
from asr_transfer.evaluation import baseline
from asr_transfer.lm import build_lm
from asr_transfer.zeroshot import head_letters, spell, spelled_lexicon, write_spelled_lexicon

EN_LETTERS = head_letters(EN_UPPER_VOCAB)


def test_head_letters_are_the_lower_cased_letters_only():
    assert EN_LETTERS == frozenset("abcdefghijklmnopqrstuvwxyz'")


def test_lexicon_lines_spell_german_words_in_english_letters():
    lexicon = spelled_lexicon(["über", "straße", "haus", "über", "жук", "<unk>", "café"], EN_LETTERS)
    assert lexicon.lines == ("über u b e r", "straße s t r a s s e", "haus h a u s", "café c a f e")
    assert lexicon.unspellable == ("жук",)  # Cyrillic: no English spelling, left out and counted
    assert lexicon.respelled == 3
    assert lexicon.to_dict()["unspellable"] == 1


def test_a_letter_the_head_lacks_makes_the_word_unspellable():
    no_apostrophe = EN_LETTERS - {"'"}
    assert spell("geht's", no_apostrophe) is None
    assert spell("geht's", EN_LETTERS) == "geht's"
    assert spell("äöüß", EN_LETTERS) == "aouss"


def test_english_head_emits_the_german_spelling(tmp_path):
    """Frames that spell U-B-E-R (the English head hearing "über") decode to the lexicon word "über"."""
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("über u b e r\nhaus h a u s\n", encoding="utf-8")
    lp = one_hot(["U", "_", "B", "E", "R", "|", "H", "A", "U", "S"], vocab=EN_UPPER_VOCAB)
    hyp = BeamDecoder(EN_UPPER_VOCAB, lexicon=lexicon, beam_size=10).decode(lp)
    assert hyp.text == "über haus"
    assert [w.word for w in hyp.words] == ["über", "haus"]
    assert hyp.words[0].start_s == 0.0 and hyp.words[0].end_s == pytest.approx(5 * 0.02)


def test_a_lexicon_line_spelled_in_letters_the_model_lacks_is_dropped(tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("über ü b e r\n", encoding="utf-8")  # the English head has no ü
    with pytest.raises(UserError, match="no lexicon word"):
        BeamDecoder(EN_UPPER_VOCAB, lexicon=lexicon)


@pytest.fixture(scope="module")
def ueber_lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("zs")
    text = d / "text.txt"
    text.write_text("Über die Straße.\n" * 20 + "Uber die Strasse.\n" + "Das Haus.\n" * 5, encoding="utf-8")
    return build_lm([text], "de", order=3, out_dir=d / "lm", log=lambda *_: None)


def test_lm_prefers_the_german_word_among_same_spellings(ueber_lm, tmp_path):
    """"über" and "uber" share the spelling u b e r; the LM, which has seen "über" 20 times, picks it."""
    lexicon = write_spelled_lexicon(ueber_lm, EN_UPPER_VOCAB, tmp_path / "lexicon.txt")
    assert "über u b e r" in lexicon.lines and "uber u b e r" in lexicon.lines
    lp = one_hot(list("UBER|DIE|STRAS_SE"), vocab=EN_UPPER_VOCAB)  # a blank between the two S (CTC repeats)
    dec = BeamDecoder(EN_UPPER_VOCAB, lm_dir=ueber_lm, lexicon=tmp_path / "lexicon.txt", beam_size=20)
    assert dec.decode(lp).text == "über die straße"


def test_baseline_with_lm_writes_zero_shot_lm(en_model, sine_manifest, ueber_lm, tmp_path):
    out = tmp_path / "bl"
    results = baseline(en_model, sine_manifest, lang="de", out_dir=out, device="cpu", lm_dir=ueber_lm, beam_size=5,
                       lm_weight=1.5, word_score=-0.5)
    assert list(results) == ["raw", "zero-shot", "zero-shot-lm"]
    s = json.loads((out / "zero-shot-lm" / "summary.json").read_text())
    assert s["name"] == "zero-shot + LM" and s["zero_shot"] is True and s["n_utterances"] == 4
    assert s["decoder"]["kind"] == "beam" and s["decoder"]["lm_weight"] == 1.5 and s["decoder"]["word_score"] == -0.5
    assert s["decoder"]["lexicon"] == str(out / "zero-shot-lm" / "lexicon.txt")
    assert s["zero_shot_lexicon"]["respelled"] >= 2  # über, straße
    assert "straße s t r a s s e" in (out / "zero-shot-lm" / "lexicon.txt").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in (out / "zero-shot-lm" / "utterances.jsonl").read_text().splitlines()]
    vocab = {"über", "uber", "die", "straße", "strasse", "das", "haus"}
    # Closed vocabulary: only LM words, but for the last one, which flashlight may leave unfinished when the random
    # model's utterance ends inside a word (its letters are then the word; not seen with trained models).
    assert all(set(r["hyp_raw"].split()[:-1]) <= vocab for r in rows)
    record = json.loads((out / "run.json").read_text())
    assert record["parts"] == ["raw", "zero-shot", "zero-shot-lm"] and record["options"]["lm_weight"] == 1.5
    assert json.loads((out / "raw" / "summary.json").read_text())["zero_shot"] is True


def test_cli_baseline_lm_option(en_model, sine_manifest, ueber_lm, tmp_path, capsys):
    rc = main(["baseline", "--model", str(en_model), "--manifest", str(sine_manifest), "--lang", "de",
               "--device", "cpu", "--lm", str(ueber_lm), "--beam-size", "4", "--out", str(tmp_path / "b")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "zero-shot + LM: WER" in out and str(tmp_path / "b" / "zero-shot-lm") in out
    assert (tmp_path / "b" / "zero-shot-lm" / "lexicon.txt").is_file()


def test_spelled_lexicon_needs_a_spellable_word(tmp_path):
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "lm.arpa").write_text("\n\\data\\\nngram 1=1\n\n\\1-grams:\n-1\tжук\n\n\\end\\\n", encoding="utf-8")
    with pytest.raises(UserError, match="no word of the LM"):
        write_spelled_lexicon(lm, EN_UPPER_VOCAB, tmp_path / "lexicon.txt")
    assert not (tmp_path / "lexicon.txt").exists()


def test_cli_tune_lm_zero_shot_uses_the_respelled_lexicon(en_model, sine_manifest, ueber_lm, tmp_path, capsys):
    rc = main(["tune-lm", "--model", str(en_model), "--manifest", str(sine_manifest), "--lang", "de", "--device", "cpu",
               "--lm", str(ueber_lm), "--alphas", "1,2", "--betas", "0", "--beam-size", "4", "--zero-shot",
               "--out", str(tmp_path / "t")])
    assert rc == 0 and "chosen by CER; best: --lm-weight" in capsys.readouterr().out
    result = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert result["select"] == "cer" and result["decoder"]["lexicon"] == str(tmp_path / "t" / "lexicon.txt")
    assert "über u b e r" in (tmp_path / "t" / "lexicon.txt").read_text(encoding="utf-8").splitlines()
