"""Vocabularies: base-960h layout, load errors, case-insensitive lookup, CTC frame bound, HF tokenizer, CLI."""
from __future__ import annotations

import json

import pytest

from asr_transfer.cli import main
from asr_transfer.errors import UserError
from asr_transfer.manifest import Utterance, write_manifest
from asr_transfer.vocab import (
    SPECIALS,
    WORD_DELIMITER,
    build_vocab,
    ctc_min_frames,
    english_source_vocab,
    ids_to_text,
    load_vocab,
    save_vocab,
    text_to_ids,
)

BASE_960H = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8, "N": 9, "I": 10,
             "H": 11, "S": 12, "R": 13, "D": 14, "L": 15, "U": 16, "M": 17, "W": 18, "C": 19, "F": 20, "G": 21,
             "Y": 22, "P": 23, "B": 24, "V": 25, "K": 26, "'": 27, "X": 28, "J": 29, "Q": 30, "Z": 31}


def test_english_source_vocab_is_base_960h():
    assert english_source_vocab() == BASE_960H
    assert list(english_source_vocab()) == list(BASE_960H)


def test_build_vocab_layout_and_normalisation():
    v = build_vocab(["Größe 1963!", "Ähre"], "de")
    tokens = list(v)
    assert tokens[:5] == [*SPECIALS, WORD_DELIMITER]
    assert [v[t] for t in tokens] == list(range(len(tokens)))
    letters = tokens[5:]
    assert letters == sorted(letters)
    # "1963" became "neunzehnhundertdreiundsechzig": its letters are in, digits and "!" are not
    assert set("neuzhdtris") <= set(letters) and "1" not in letters and "!" not in letters
    assert {"ä", "ö", "ß"} <= set(letters) and "ü" not in letters
    assert v.lang == "de" and v.normalizer == "de-v1"
    assert "ü" in v.unseen and "q" in v.unseen


def test_apostrophe_kept_only_where_the_language_uses_it():
    assert "'" in build_vocab(["don't"], "en") and list(build_vocab(["don't"], "en"))[5] == "'"
    assert "'" not in build_vocab(["geht's"], "de")


def test_min_count_leaves_out_and_reports_rare_letters():
    v = build_vocab(["aaa bbb c"], "de", min_count=2)
    assert "c" not in v and v.rare == ("c",) and v.counts["c"] == 1
    assert list(v)[5:] == ["a", "b"]
    everything = build_vocab(["aaa bbb c"], "de", min_count=2, all_letters=True)
    assert len(everything) == 5 + 30 and "ß" in everything and "c" in everything
    with pytest.raises(UserError):
        build_vocab(["x"], "de", min_count=0)


def test_upper_vocab_keeps_single_characters():
    v = build_vocab(["straße öl"], "de", upper=True)
    assert {"S", "T", "R", "A", "E", "Ö", "L", "ß"} <= set(v)
    assert all(len(t) == 1 for t in v.letters)
    assert text_to_ids("straße", v) == [v["S"], v["T"], v["R"], v["A"], v["ß"], v["E"]]


def test_text_to_ids_is_case_insensitive_with_unk_and_delimiters():
    e = english_source_vocab()
    assert text_to_ids("don't  stop", e) == [14, 8, 9, 27, 6, 4, 12, 6, 8, 23]
    assert text_to_ids("ä b", e) == [3, 4, 24]  # no Ä in base-960h → <unk>
    assert text_to_ids(" ", e) == []
    lower = build_vocab(["ab"], "de")
    assert text_to_ids("AB", lower) == text_to_ids("ab", lower) == [5, 6]
    assert ids_to_text(text_to_ids("don't stop", e), e) == "don't stop"


@pytest.mark.parametrize("ids,frames", [([], 0), ([5], 1), ([5, 6], 2), ([5, 5], 3), ([5, 5, 5], 5),
                                        ([5, 6, 5], 3), ([5, 5, 6, 6], 6)])
def test_ctc_min_frames(ids, frames):
    assert ctc_min_frames(ids) == frames


def test_save_load_round_trip(tmp_path):
    v = build_vocab(["größe über"], "de")
    path = save_vocab(v, tmp_path / "vocab.json")
    loaded = load_vocab(path)
    assert loaded == dict(v) and list(loaded) == list(v)
    assert "ß" in path.read_text(encoding="utf-8")  # stored as UTF-8, not \u escapes
    assert load_vocab(tmp_path) == loaded  # a model folder works too


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"<pad>": 0, "<s>": 1, "</s>": 2, "|": 3, "a": 4}), "<unk>"),
        (json.dumps({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "a": 4}), "duplicate id 4"),
        (json.dumps({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "a": 6}), "without gaps"),
        (json.dumps({"<pad>": 1, "<s>": 0, "</s>": 2, "<unk>": 3, "|": 4}), "CTC blank"),
        (json.dumps({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "a": "5"}), "integer"),
    ],
)
def test_load_vocab_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad_vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as info:
        load_vocab(path)
    assert "bad_vocab.json" in str(info.value)


def test_load_vocab_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_vocab(tmp_path / "nope.json")


def test_hf_tokenizer_loads_and_round_trips(tmp_path):
    from transformers import Wav2Vec2CTCTokenizer

    v = build_vocab(["Größe über alles, sagt der Bär."], "de")
    tokenizer = Wav2Vec2CTCTokenizer(str(save_vocab(v, tmp_path / "vocab.json")))
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 3
    text = "größe über alles"
    ids = tokenizer(text).input_ids
    assert ids == text_to_ids(text, v)
    assert tokenizer.decode(ids, group_tokens=False) == text


def _manifest(tmp_path, texts):
    utts = [Utterance(str(tmp_path / f"{i}.wav"), 1.0, t, id=f"u{i}") for i, t in enumerate(texts)]
    return write_manifest(tmp_path / "m.jsonl", utts)


def test_vocab_command(tmp_path, capsys):
    manifest = _manifest(tmp_path, ["Größe über 12%", "aber"])
    out = tmp_path / "vocab.json"
    assert main(["vocab", str(manifest), "--lang", "de", "--out", str(out), "--min-count", "2"]) == 0
    printed = capsys.readouterr().out
    vocab = load_vocab(out)
    assert "ß" not in vocab and "'ß'×1" in printed and "never seen" in printed
    assert main(["vocab", str(manifest), "--lang", "de", "--out", str(out), "--all-letters", "--upper"]) == 0
    assert "ß" in load_vocab(out) and "Ü" in load_vocab(out) and "q" not in load_vocab(out)


def test_vocab_command_bad_manifest_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio_filepath": "a.wav"}\n', encoding="utf-8")
    assert main(["vocab", str(bad), "--lang", "de", "--out", str(tmp_path / "v.json")]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err
