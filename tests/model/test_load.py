"""model.py + adapters.py: loading, errors, record, saving, head swap, parameter groups, adapters."""
from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import TINY_STABLE_CONFIG, build_model

from asr_transfer.errors import ConfigError, ModelError, UserError
from asr_transfer.model.adapters import add_adapters, merge_adapters, save_adapter
from asr_transfer.model.groups import parameter_groups
from asr_transfer.model.head import swap_head
from asr_transfer.model.load import load_model, resolve_device, save_model
from asr_transfer.model.record import RECORD_FILE, ModelRecord, make_processor


def _logits(model, wave) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.as_tensor(wave)[None]).logits[0]


def _record(vocab, lang="en", **kw) -> ModelRecord:
    kw = {"head_init": "random", "source_model": "tests/tiny", **kw}
    return ModelRecord(lang=lang, normalizer=f"{lang}-v1", vocab=dict(vocab), **kw)


@pytest.fixture
def saved_tiny(tmp_path, tiny_model, en_vocab):
    out = tmp_path / "tiny"
    save_model(out, tiny_model, make_processor(en_vocab), _record(en_vocab), card={"data": "none"})
    return out


# ---------------------------------------------------------------- processor / device


def test_make_processor_follows_vocab_case_and_feature_norm(en_vocab, de_vocab):
    en = make_processor(en_vocab)
    assert en.tokenizer("hello world").input_ids == [en_vocab[c] for c in "HELLO|WORLD"]
    assert en.feature_extractor.return_attention_mask is False and en.feature_extractor.do_normalize
    assert en.feature_extractor.sampling_rate == 16000
    de = make_processor(de_vocab, feat_extract_norm="layer")
    assert de.feature_extractor.return_attention_mask is True
    assert de.tokenizer("für").input_ids == [de_vocab["f"], de_vocab["ü"], de_vocab["r"]]
    with pytest.raises(ConfigError, match="'<pad>'"):
        make_processor({"a": 0, "|": 1, "<unk>": 2})


def test_base960h_assets_match_english_source_vocab(en_vocab):
    from conftest import ASSETS

    for folder in ("wav2vec2-base-960h", "tiny"):
        assert json.loads((ASSETS / folder / "vocab.json").read_text()) == en_vocab
        assert json.loads((ASSETS / folder / "config.json").read_text())["vocab_size"] == len(en_vocab)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------- save / load


def test_save_load_roundtrip_keeps_logits_record_and_card(saved_tiny, tiny_model, en_vocab, sine_wave):
    files = {p.name for p in saved_tiny.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", RECORD_FILE, "README.md"} <= files
    assert not any(p.name.startswith(".") for p in saved_tiny.parent.iterdir())  # no temp folders left behind
    loaded = load_model(saved_tiny)
    assert torch.equal(_logits(loaded.model, sine_wave), _logits(tiny_model, sine_wave))
    assert not loaded.model.training
    assert loaded.vocab == sorted(en_vocab, key=en_vocab.get)
    assert loaded.blank_id == 0 and loaded.lang == "en" and loaded.normalizer_name == "en-v1"
    assert loaded.record.to_dict() == {**_record(en_vocab).to_dict(), "created": loaded.record.created}
    assert loaded.record.vocab == en_vocab and loaded.record.source_model == "tests/tiny"
    assert loaded.model.config._attn_implementation == "sdpa"
    card = (saved_tiny / "README.md").read_text()
    assert card.startswith("---\nlanguage: en") and "## Data" in card and "en-v1" in card


def test_save_replaces_existing_folder_atomically(saved_tiny, tiny_model, en_vocab):
    (saved_tiny / "stale.txt").write_text("old")
    save_model(saved_tiny, tiny_model, make_processor(en_vocab), _record(en_vocab, lang="de"))
    assert not (saved_tiny / "stale.txt").exists()
    assert json.loads((saved_tiny / RECORD_FILE).read_text())["lang"] == "de"
    assert sorted(p.name for p in saved_tiny.parent.iterdir()) == ["tiny"]


def test_folder_without_record_is_english_with_english_normalizer(saved_tiny):
    from asr_transfer.text import get_normalizer

    (saved_tiny / RECORD_FILE).unlink()
    loaded = load_model(saved_tiny)
    assert loaded.record is None and loaded.lang == "en" and loaded.normalizer_name == get_normalizer("en").name


def test_saved_folder_works_with_transformers_pipeline(saved_tiny, sine_wave):
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(saved_tiny), device="cpu")
    text = asr(sine_wave)["text"]
    # the CTC pipeline keeps special tokens (skip_special_tokens=False); an untrained model may emit them
    for special in ("<s>", "</s>", "<unk>"):
        text = text.replace(special, "")
    assert text and set(text) <= set("abcdefghijklmnopqrstuvwxyz' ")


def test_missing_config_is_one_line_error(saved_tiny):
    (saved_tiny / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json") as err:
        load_model(saved_tiny)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_damaged_safetensors_is_one_line_error_naming_file(saved_tiny, damage):
    weights = saved_tiny / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00garbage" * 64)
    else:
        weights.unlink()
    with pytest.raises(ModelError, match="model.safetensors") as err:
        load_model(saved_tiny)
    assert "\n" not in str(err.value)


def test_pickle_weights_refused_unless_allowed(saved_tiny, tiny_model, sine_wave):
    from safetensors.torch import load_file

    state = load_file(str(saved_tiny / "model.safetensors"))
    torch.save(state, saved_tiny / "pytorch_model.bin")
    (saved_tiny / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="pytorch_model.bin.*pickle.*--allow-pickle"):
        load_model(saved_tiny)
    loaded = load_model(saved_tiny, allow_pickle=True)
    assert torch.equal(_logits(loaded.model, sine_wave), _logits(tiny_model, sine_wave))


def test_vocab_size_mismatch_names_vocab_json(saved_tiny):
    vocab = json.loads((saved_tiny / "vocab.json").read_text())
    vocab["Ä"] = len(vocab)
    (saved_tiny / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelError, match=r"vocab\.json.*33 tokens.*32 outputs"):
        load_model(saved_tiny)


def test_missing_vocab_json_and_file_path_are_errors(saved_tiny):
    with pytest.raises(ModelError, match="expected a model folder"):
        load_model(saved_tiny / "config.json")
    (saved_tiny / "vocab.json").unlink()
    with pytest.raises(ModelError, match="vocab.json"):
        load_model(saved_tiny)


def test_corrupt_record_is_error(saved_tiny):
    (saved_tiny / RECORD_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=RECORD_FILE):
        load_model(saved_tiny)


def test_unknown_hub_id_offline_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read by load_model at call time
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        load_model("no-such-org/made-up-wav2vec2-xyz")
    assert time.monotonic() - start < 5  # no network wait
    line = str(err.value)
    assert "\n" not in line and line.startswith("no-such-org/made-up-wav2vec2-xyz: ")
    for phrase in ("not a local folder", "not in the HF cache", "no network", "models/en-synth-small", "HF_HOME",
                   "HF_HUB_OFFLINE=1"):
        assert phrase in line


def test_missing_path_that_is_not_a_hub_id(tmp_path):
    with pytest.raises(ModelError, match="not a local folder"):
        load_model(str(tmp_path / "nope" / "model"))


# ---------------------------------------------------------------- head swap


def test_mapped_head_copies_shared_rows_exactly_and_seeds_base_letters(tiny_model, en_vocab, de_vocab):
    old = tiny_model.lm_head
    report = swap_head(tiny_model, en_vocab, de_vocab, mode="mapped", lang="de", seed=3)
    new = tiny_model.lm_head
    assert new.weight.shape == (len(de_vocab), tiny_model.config.hidden_size)
    for token, i in de_vocab.items():
        src = token.upper() if token not in ("<pad>", "<s>", "</s>", "<unk>") else token
        if src in en_vocab:
            assert torch.equal(new.weight[i], old.weight[en_vocab[src]]), token
            assert torch.equal(new.bias[i], old.bias[en_vocab[src]]), token
    for umlaut, base in (("ä", "A"), ("ö", "O"), ("ü", "U"), ("ß", "S")):
        assert torch.equal(new.weight[de_vocab[umlaut]], old.weight[en_vocab[base]])
        assert torch.equal(new.bias[de_vocab[umlaut]], old.bias[en_vocab[base]])
    assert set(report.copied) == set(de_vocab) - {"ä", "ö", "ü", "ß"}
    assert dict(report.seeded) == {"ß": "s", "ä": "a", "ö": "o", "ü": "u"} and report.random == ()
    cfg = tiny_model.config
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (36, 0, 1, 2)
    assert "4 seeded" in report.summary() and report.to_dict()["seeded"]["ä"] == "a"


def test_mapped_head_random_rows_follow_seed_and_hf_init(en_vocab):
    target = {"<pad>": 0, "|": 1, "<unk>": 2, "a": 3, "ж": 4, "щ": 5}
    heads = []
    for seed in (0, 0, 1):
        model = build_model()
        report = swap_head(model, en_vocab, target, lang="ru", base_letters={}, seed=seed)
        heads.append(model.lm_head)
    assert report.random == ("ж", "щ") and report.seeded == ()
    assert torch.equal(heads[0].weight, heads[1].weight)
    assert not torch.equal(heads[0].weight[4], heads[2].weight[4])
    assert torch.equal(heads[0].bias[4:], torch.zeros(2))
    # normal(0, initializer_range=0.02): 2×32 draws stay well inside 6 sigma
    assert 0 < heads[0].weight[4:].abs().max() < 0.12


def test_multi_letter_base_averages_rows(tiny_model, en_vocab):
    old = tiny_model.lm_head.weight.detach().clone()
    target = {"<pad>": 0, "|": 1, "<unk>": 2, "æ": 3}
    report = swap_head(tiny_model, en_vocab, target, base_letters={"æ": "ae"})
    assert report.seeded == (("æ", "ae"),)
    expected = (old[en_vocab["A"]] + old[en_vocab["E"]]) / 2
    assert torch.allclose(tiny_model.lm_head.weight[3], expected)


def test_random_and_keep_modes(tiny_model, en_vocab, de_vocab):
    before = tiny_model.lm_head
    lower = {t.lower(): i for t, i in en_vocab.items()}
    report = swap_head(tiny_model, en_vocab, lower, mode="keep")
    assert tiny_model.lm_head is before and len(report.copied) == 32
    with pytest.raises(ConfigError, match="keep"):
        swap_head(tiny_model, en_vocab, de_vocab, mode="keep")
    with pytest.raises(ConfigError, match="unknown head init"):
        swap_head(tiny_model, en_vocab, de_vocab, mode="magic")
    report = swap_head(tiny_model, en_vocab, de_vocab, mode="random", seed=0)
    assert len(report.random) == len(de_vocab) and report.copied == ()
    assert torch.equal(tiny_model.lm_head.bias, torch.zeros(len(de_vocab)))


def test_swapped_head_reloads_with_identical_logits(tmp_path, tiny_model, en_vocab, de_vocab, sine_wave):
    swap_head(tiny_model, en_vocab, de_vocab, lang="de")
    expected = _logits(tiny_model, sine_wave)
    save_model(tmp_path / "de", tiny_model, make_processor(de_vocab), _record(de_vocab, lang="de"))
    loaded = load_model(tmp_path / "de")
    assert torch.equal(_logits(loaded.model, sine_wave), expected)
    assert loaded.vocab == sorted(de_vocab, key=de_vocab.get) and loaded.lang == "de" and loaded.blank_id == 0
    assert loaded.model.config.vocab_size == 36


# ---------------------------------------------------------------- parameter groups


def _assert_partition(model) -> dict[str, list]:
    groups = parameter_groups(model)
    names = [n for params in groups.values() for n, _ in params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    return groups


@pytest.mark.parametrize("which", ["tiny", "stable", "base960h"])
def test_every_parameter_in_exactly_one_group(which, base960h_model):
    model = {"tiny": build_model, "stable": lambda: build_model(TINY_STABLE_CONFIG)}.get(
        which, lambda: base960h_model
    )()
    groups = _assert_partition(model)
    L = model.config.num_hidden_layers
    assert list(groups) == ["feature_encoder", "feature_projection", "pos_conv", "encoder_norm",
                            *(f"layers.{i}" for i in range(L)), "head", "adapters"]
    assert "wav2vec2.masked_spec_embed" in [n for n, _ in groups["feature_projection"]]
    assert groups["adapters"] == []


def test_adapter_parameters_form_their_own_group(tiny_model, tiny_stable_model):
    add_adapters(tiny_model, "lora", r=4, alpha=8)
    groups = _assert_partition(tiny_model)
    H, r, L = 32, 4, 2
    assert sum(p.numel() for _, p in groups["adapters"]) == L * 2 * (2 * r * H)  # q and v: A (r×H) + B (H×r)
    assert all(".lora_" in n for n, _ in groups["adapters"])
    add_adapters(tiny_stable_model, "mms", attn_dim=8)
    groups = _assert_partition(tiny_stable_model)
    assert sum(p.numel() for _, p in groups["adapters"]) == L * (2 * H + H * 8 + 8 + 8 * H + H)


# ---------------------------------------------------------------- adapters


def _perturb_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in parameter_groups(model)["adapters"] + parameter_groups(model)["head"]:
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_lora_starts_as_identity_and_roundtrips_through_adapter_folder(tmp_path, en_vocab, de_vocab, sine_wave):
    model = build_model()
    before = _logits(model, sine_wave)
    save_model(tmp_path / "base", model, make_processor(en_vocab), _record(en_vocab))
    add_adapters(model, "lora", r=8, alpha=16)
    assert torch.allclose(_logits(model, sine_wave), before, atol=1e-6)
    swap_head(model, en_vocab, de_vocab, lang="de")
    _perturb_adapters(model)
    expected = _logits(model, sine_wave)
    out = save_adapter(tmp_path / "adapter", model, _record(de_vocab, lang="de", head_init="mapped"))
    loaded = load_model(tmp_path / "base", adapter=out)
    assert torch.allclose(_logits(loaded.model, sine_wave), expected, atol=1e-6)
    assert loaded.lang == "de" and loaded.record.adapter == "lora" and len(loaded.vocab) == len(de_vocab)
    adapter_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert adapter_bytes * 4 < (tmp_path / "base" / "model.safetensors").stat().st_size
    # an adapter folder on its own loads onto the base named in its record
    out = save_adapter(tmp_path / "adapter2", model, _record(de_vocab, lang="de", source_model=str(tmp_path / "base")))
    assert torch.allclose(_logits(load_model(out).model, sine_wave), expected, atol=1e-6)


def test_lora_merge_then_full_save(tmp_path, tiny_model, en_vocab, sine_wave):
    add_adapters(tiny_model, "lora")
    _perturb_adapters(tiny_model)
    expected = _logits(tiny_model, sine_wave)
    with pytest.raises(ModelError, match="merge"):
        save_model(tmp_path / "m", tiny_model, make_processor(en_vocab), _record(en_vocab))
    merge_adapters(tiny_model)
    assert parameter_groups(tiny_model)["adapters"] == []
    save_model(tmp_path / "m", tiny_model, make_processor(en_vocab), _record(en_vocab))
    assert torch.allclose(_logits(load_model(tmp_path / "m").model, sine_wave), expected, atol=1e-5)


def test_mms_adapter_needs_stable_layer_norm(tiny_model):
    with pytest.raises(ConfigError, match="lora"):
        add_adapters(tiny_model, "mms")


def test_mms_adapter_roundtrip(tmp_path, tiny_stable_model, en_vocab, de_vocab, sine_wave):
    before = _logits(tiny_stable_model, sine_wave)
    save_model(tmp_path / "base", tiny_stable_model, make_processor(en_vocab, "layer"), _record(en_vocab))
    add_adapters(tiny_stable_model, "mms", attn_dim=8)
    assert torch.equal(_logits(tiny_stable_model, sine_wave), before)
    swap_head(tiny_stable_model, en_vocab, de_vocab, lang="de")
    _perturb_adapters(tiny_stable_model)
    expected = _logits(tiny_stable_model, sine_wave)
    out = save_adapter(tmp_path / "mms", tiny_stable_model, _record(de_vocab, lang="de"))
    assert (out / "adapter.de.safetensors").is_file()
    loaded = load_model(tmp_path / "base", adapter=out)
    assert torch.allclose(_logits(loaded.model, sine_wave), expected, atol=1e-6)
    # a full save keeps the adapter layers (config.adapter_attn_dim) and reloads with plain transformers
    save_model(tmp_path / "full", tiny_stable_model, make_processor(de_vocab, "layer"), _record(de_vocab, lang="de"))
    assert torch.allclose(_logits(load_model(tmp_path / "full").model, sine_wave), expected, atol=1e-6)


def test_adapter_on_wrong_base_is_error(tmp_path, tiny_model, tiny_config, en_vocab):
    from transformers import Wav2Vec2ForCTC

    add_adapters(tiny_model, "lora")
    out = save_adapter(tmp_path / "a", tiny_model, _record(en_vocab))
    tiny_config.hidden_size = 48
    save_model(tmp_path / "other", Wav2Vec2ForCTC(tiny_config), make_processor(en_vocab), _record(en_vocab))
    with pytest.raises(ModelError, match="hidden_size=32"):
        load_model(tmp_path / "other", adapter=out)


def test_model_fingerprint_covers_kept_heads_but_not_exports_or_cards(tmp_path):
    """The resume check's source hash: a retrained kept head is a different source, an ONNX export is not."""
    from asr_transfer.model.load import model_fingerprint

    folder = tmp_path / "m"
    (folder / "heads" / "en").mkdir(parents=True)
    (folder / "onnx").mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "heads" / "en" / "model.safetensors").write_bytes(b"kept head")
    first = model_fingerprint(folder)
    (folder / "onnx" / "model.onnx").write_bytes(b"export")
    (folder / "README.md").write_text("a card")
    (folder / "heads" / "en" / "README.md").write_text("its card")
    assert model_fingerprint(folder) == first
    (folder / "heads" / "en" / "model.safetensors").write_bytes(b"kept head, retrained")
    assert model_fingerprint(folder) != first
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"weights")
    (plain / "config.json").write_text("{}")
    assert model_fingerprint(plain) == "3087d13013f37267"  # without kept heads: the hash of before (resume)
