"""evaluate / baseline / tune-lm end to end with tiny random models, sine audio and the real German clips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_transfer.audio import write_wav
from asr_transfer.cli import main
from asr_transfer.errors import UserError
from asr_transfer.evaluation import baseline, evaluate, tune_lm
from asr_transfer.metrics import error_rates
from asr_transfer.model.load import load_model, save_model
from asr_transfer.model.record import ModelRecord, make_processor
from asr_transfer.vocab import build_vocab, english_source_vocab

REALSPEECH_DE = Path(__file__).resolve().parents[2] / "shared" / "realspeech" / "de.jsonl"
TEXTS = ["hallo welt", "das ist ein haus", "grüße aus köln", "die straße ist groß"]


def _tiny(out_dir: Path, vocab: dict[str, int], lang: str, seed: int = 0) -> Path:
    """A random hidden-32, 2-layer Wav2Vec2ForCTC saved with a record naming ``lang``."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, pad_token_id=vocab["<pad>"],
        feat_extract_norm="group", hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0,
    )
    model = Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # sharp random posteriors, so the output is not all blank
    from asr_transfer.text import get_normalizer

    record = ModelRecord(lang=lang, normalizer=get_normalizer(lang).name, source_model="random", head_init="random",
                         vocab=dict(vocab))
    return save_model(out_dir, model, make_processor(dict(vocab)), record)


@pytest.fixture(scope="module")
def en_model(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("en") / "model", english_source_vocab(), "en")


@pytest.fixture(scope="module")
def de_model(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("de") / "model", dict(build_vocab(TEXTS, "de")), "de", seed=1)


@pytest.fixture(scope="module")
def sine_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sine")
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(TEXTS):
        n = int(16000 * (0.5 + 0.15 * i))
        t = np.arange(n) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t) + 0.02 * rng.standard_normal(n)
        write_wav(folder / f"u{i}.wav", wave)
        lines.append(
            {"audio_filepath": f"u{i}.wav", "duration": n / 16000, "text": text.capitalize() + "!", "id": f"u{i}"}
        )
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "utterances.jsonl").read_text(encoding="utf-8").splitlines()]


def _greedy_reference(model_dir: Path, wav: Path, normalizer) -> str:
    """Independent greedy decode: HF processor + argmax, collapse repeats, drop blanks, '|' -> space."""
    import soundfile as sf

    loaded = load_model(model_dir)
    wave, _ = sf.read(str(wav), dtype="float32")
    inputs = loaded.processor(wave, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        ids = loaded.model(inputs.input_values).logits[0].argmax(-1).tolist()
    out, prev = [], None
    for i in ids:
        if i != prev and i != loaded.blank_id:
            out.append(loaded.vocab[i])
        prev = i
    text = "".join(" " if t == "|" else t for t in out if not (t.startswith("<") and t.endswith(">")))
    return normalizer(text)


def test_evaluate_end_to_end_with_a_skipped_file(de_model, sine_manifest, tmp_path):
    from asr_transfer.text import get_normalizer

    manifest = tmp_path / "with_bad.jsonl"
    bad = json.dumps({"audio_filepath": str(tmp_path / "missing.wav"), "duration": 1.0, "text": "weg", "id": "bad"})
    lines = [
        json.dumps({**json.loads(x), "audio_filepath": str(sine_manifest.parent / json.loads(x)["audio_filepath"])})
        for x in sine_manifest.read_text().splitlines()
    ]
    manifest.write_text("\n".join(lines + [bad]) + "\n")
    out = tmp_path / "eval"
    # normaliser from the model's record; batch_s=0.1 runs one utterance per forward pass, so no zero padding
    # (this group-norm model has no attention mask) and the output must equal a plain one-utterance forward
    summary = evaluate(de_model, manifest, out_dir=out, device="cpu", batch_s=0.1)
    assert summary["lang"] == "de" and summary["normalizer"] == "de-v1"
    assert summary["n_utterances"] == 4 and summary["n_skipped"] == 1
    assert summary["skipped"][0]["id"] == "bad" and "not found" in summary["skipped"][0]["reason"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["wer"] == summary["wer"] and on_disk["manifest_fingerprint"]
    assert on_disk["environment"]["versions"]["jiwer"] and "commit" in on_disk["environment"]["git"]
    assert on_disk["model_record"]["lang"] == "de" and on_disk["model_params"] > 0 and on_disk["model_size_mb"] > 0
    assert on_disk["decoder"] == {"kind": "greedy"}
    assert on_disk["rtf"] > 0 and on_disk["audio_s"] == pytest.approx(0.5 + 0.65 + 0.8 + 0.95, abs=0.01)
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["u0", "u1", "u2", "u3"]
    assert rows[2]["ref"] == "grüße aus köln" and rows[2]["ref_raw"] == "Grüße aus köln!"
    # corpus numbers agree with an independent re-scoring of the stored pairs, and with an independent greedy decode
    again = error_rates([r["ref"] for r in rows], [r["hyp"] for r in rows])
    assert summary["wer"] == pytest.approx(again["wer"]) and summary["cer"] == pytest.approx(again["cer"])
    assert summary["wer_ci95"][0] <= summary["wer"] <= summary["wer_ci95"][1]
    norm = get_normalizer("de")
    for r in rows:
        assert r["hyp"] == _greedy_reference(de_model, sine_manifest.parent / f"{r['id']}.wav", norm)
        assert r["substitutions"] + r["deletions"] + r["hits"] == len(r["ref"].split())
        assert r["alignment"].startswith("REF: ")


def test_rates_by_speaker_add_up_and_put_the_worst_voice_first(de_model, sine_manifest, tmp_path):
    lines = [json.loads(x) for x in sine_manifest.read_text().splitlines()]
    manifest = tmp_path / "voices.jsonl"
    manifest.write_text("".join(json.dumps({**x, "audio_filepath": str(sine_manifest.parent / x["audio_filepath"]),
                                            "speaker": "ab"[i % 2]}) + "\n" for i, x in enumerate(lines)))
    summary = evaluate(de_model, manifest, out_dir=tmp_path / "eval", device="cpu", batch_s=0.1)
    rows = _rows(tmp_path / "eval")
    assert [r["speaker"] for r in rows] == ["a", "b", "a", "b"]
    by = summary["by_speaker"]
    assert set(by) == {"a", "b"} and by[next(iter(by))]["cer"] == max(v["cer"] for v in by.values())
    for spk, v in by.items():  # each voice's CER is its own rows' character errors over their reference length
        mine = [r for r in rows if r["speaker"] == spk]
        assert v["n_utterances"] == len(mine) == 2
        assert v["cer"] == pytest.approx(sum(r["char_errors"] for r in mine) / sum(r["char_ref_len"] for r in mine))
    assert sum(v["char_errors"] for v in by.values()) == pytest.approx(
        summary["cer"] * sum(v["chars"] for v in by.values())
    )
    assert evaluate(de_model, sine_manifest, device="cpu")["by_speaker"] == {}  # no speakers named: no breakdown


def test_all_audio_unreadable_is_a_user_error(de_model, tmp_path):
    manifest = tmp_path / "m.jsonl"
    (tmp_path / "empty.wav").write_bytes(b"")
    manifest.write_text(json.dumps({"audio_filepath": "empty.wav", "duration": 1.0, "text": "x"}) + "\n")
    with pytest.raises(UserError, match="none of the 1 audio files"):
        evaluate(de_model, manifest, device="cpu")


def test_greedy_with_an_lm_is_refused(de_model, sine_manifest, tmp_path):
    with pytest.raises(UserError, match="beam"):
        evaluate(de_model, sine_manifest, decoder="greedy", lm_dir=tmp_path, device="cpu")


def test_real_german_clips_are_normalised(en_model, tmp_path):
    if not REALSPEECH_DE.is_file():
        pytest.skip("../shared/realspeech not present")
    out = tmp_path / "real"
    summary = evaluate(en_model, REALSPEECH_DE, lang="de", out_dir=out, device="cpu", name="raw-real")
    rows = _rows(out)
    assert summary["n_utterances"] + summary["n_skipped"] == 25 and summary["n_utterances"] >= 20
    assert summary["normalizer"] == "de-v1" and summary["model_record"]["lang"] == "en"
    assert any(any(c.isdigit() or c.isupper() for c in r["ref_raw"]) for r in rows)  # the raw text needs normalising
    for r in rows:
        assert not any(c.isdigit() or c.isupper() or c in ".,;!?" for c in r["ref"] + r["hyp"]), r["id"]
    assert any("neunzehnhundertdreiundsechzig" in r["ref"] for r in rows)
    assert 0 < summary["cer"] and summary["wer"] >= 0.9  # a random English model knows no German


def test_baseline_writes_raw_and_zero_shot(en_model, sine_manifest, tmp_path):
    results = baseline(en_model, sine_manifest, lang="de", out_dir=tmp_path / "bl", device="cpu")
    assert set(results) == {"raw", "zero-shot"}
    for name in results:
        s = json.loads((tmp_path / "bl" / name / "summary.json").read_text())
        assert s["name"] == name and s["normalizer"] == "de-v1" and s["n_utterances"] == 4
    zs = json.loads((tmp_path / "bl" / "zero-shot" / "summary.json").read_text())
    assert {"ü", "ö", "ß"} <= set(zs["target_vocab"])
    assert dict(zs["head_swap"]["seeded"]).get("ü") == "u"
    # the raw baseline's English model cannot write ß; hyps there hold only English letters
    for r in _rows(tmp_path / "bl" / "raw"):
        assert not set(r["hyp"]) & set("äöüß")


def test_cli_evaluate_prints_one_line(en_model, sine_manifest, tmp_path, capsys):
    rc = main(["evaluate", "--model", str(en_model), "--manifest", str(sine_manifest), "--lang", "de",
               "--device", "cpu", "--out", str(tmp_path / "e"), "--name", "sys"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.startswith("sys: WER ") and "CER" in line and "[" in line
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--manifest", str(sine_manifest),
                 "--out", str(tmp_path / "x")]) == 1


def _write_arpa(folder: Path, words: list[str]) -> Path:
    """A uniform bigram ARPA over ``words`` (KenLM refuses unigram-only models)."""
    folder.mkdir(parents=True, exist_ok=True)
    uni = ["-99\t<s>\t-0.5", "-1.0\t</s>", "-2.0\t<unk>"] + [f"-1.0\t{w}\t-0.3" for w in words]
    bi = [f"-0.7\t<s> {w}" for w in words] + [f"-0.5\t{w} </s>" for w in words]
    lines = ["\\data\\", f"ngram 1={len(uni)}", f"ngram 2={len(bi)}", "", "\\1-grams:", *uni, "", "\\2-grams:", *bi]
    (folder / "lm.arpa").write_text("\n".join(lines + ["", "\\end\\", ""]), encoding="utf-8")
    return folder


def test_tune_lm_grid(de_model, sine_manifest, tmp_path, capsys):
    lm = _write_arpa(tmp_path / "lm", sorted({w for t in TEXTS for w in t.split()}))
    result = tune_lm(de_model, sine_manifest, lm, [0.0, 1.0], [-1.0, 0.0, 2.0], out_dir=tmp_path / "t",
                     beam_size=8, device="cpu")
    assert len(result["grid"]) == 6
    assert result["best"]["wer"] == min(g["wer"] for g in result["grid"])
    on_disk = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert on_disk["grid"] == result["grid"]
    # a grid cell equals a full evaluate() with the same settings (the cached log-probs change nothing)
    cell = next(g for g in result["grid"] if g["lm_weight"] == 1.0 and g["word_score"] == 2.0)
    full = evaluate(de_model, sine_manifest, decoder="beam", lm_dir=lm, beam_size=8, lm_weight=1.0, word_score=2.0,
                    device="cpu", out_dir=tmp_path / "beam")
    assert full["wer"] == pytest.approx(cell["wer"]) and full["cer"] == pytest.approx(cell["cer"])
    assert (
        full["decoder"]["kind"] == "beam" and full["decoder"]["lm_weight"] == 1.0 and full["decoder"]["beam_size"] == 8
    )
    assert full["decoder"]["lm_dir"] == str(lm) and len(_rows(tmp_path / "beam")) == 4
    rc = main(["tune-lm", "--model", str(de_model), "--manifest", str(sine_manifest), "--lm", str(lm),
               "--alphas", "0,1", "--betas", "0", "--beam-size", "4", "--device", "cpu", "--out", str(tmp_path / "t2")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "best: --lm-weight" in out and "alpha\\beta" in out


def test_language_mismatch_with_the_manifest_warns(en_model, sine_manifest, tmp_path):
    manifest = tmp_path / "de.jsonl"
    lines = [
        {**json.loads(x), "lang": "de", "audio_filepath": str(sine_manifest.parent / json.loads(x)["audio_filepath"])}
        for x in sine_manifest.read_text().splitlines()
    ]
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    with pytest.warns(RuntimeWarning, match="manifest says lang=de"):
        summary = evaluate(en_model, manifest, device="cpu", max_utts=1)
    assert summary["normalizer"] == "en-v1" and summary["n_utterances"] == 1
