"""Benchmarks at micro size: each script runs end to end on a tiny random model and writes its section to a
temporary results file (never bench/RESULTS.md); plus known-answer checks of the helpers they rely on."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import make_corpus, make_source_model

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TINY_CONFIG = ROOT / "tests" / "assets" / "tiny" / "config.json"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    train, dev = make_corpus(d, n_train=10, n_dev=3)
    return {"dir": d, "src": make_source_model(d / "src"), "train": train, "dev": dev}


def _raw_json(section_text: str) -> dict:
    m = re.search(r"```json\n(.*?)\n```", section_text, re.S)
    assert m, "the section carries its raw numbers"
    return json.loads(m.group(1))


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| " + first_cell)]


# ------------------------------------------------------------------------------------------------ helpers
def test_section_records_command_machine_load_git_and_appends(tmp_path):
    import common

    out = tmp_path / "R.md"
    for i in range(2):
        s = common.Section(f"t{i}", argv=[str(BENCH / "x.py"), "--full", "a b"]).start()
        s.add(common.table(["a", "b"], [[1, 0.5], ["x", None]]))
        s.data = {"i": i}
        s.append(out)
    text = out.read_text()
    assert text.startswith("# Benchmark results") and text.count("# Benchmark results") == 1
    assert text.count("## ") == 2
    assert "`.venv/bin/python bench/x.py --full 'a b'`" in text
    assert "load average (1/5/15 min) before:" in text and "git: " in text and "torch " in text
    assert "| 1 | 0.5 |" in text and "| x | – |" in text
    assert _raw_json(text.split("## ")[2]) == {"i": 1}


def test_per_device_batch_and_ctc_collator_pad_like_the_example_script():
    from hf_baseline import DataCollatorCTCWithPadding, per_device_batch

    from asr_transfer.model.record import make_processor
    from asr_transfer.vocab import english_source_vocab

    assert per_device_batch(80.0, 4.0) == 20 and per_device_batch(3.0, 10.0) == 1 and per_device_batch(10, 4) == 2
    collate = DataCollatorCTCWithPadding(make_processor(english_source_vocab()))
    feats = [{"input_values": np.ones(5, np.float32), "labels": [7, 8, 9], "duration_s": 1.5},
             {"input_values": np.ones(3, np.float32), "labels": [4], "duration_s": 0.5}]
    batch = collate(feats)
    assert batch["input_values"].shape == (2, 5) and float(batch["input_values"][1, 3:].abs().sum()) == 0.0
    assert batch["labels"].tolist() == [[7, 8, 9], [4, -100, -100]]
    assert collate.batch_audio_s == [2.0]


def test_manifest_prefix_is_nested_and_long_file_has_the_asked_length(tmp_path, tiny):
    import common
    import soundfile
    from scaling import build_long_file

    from asr_transfer.manifest import read_manifest

    a = read_manifest(common.manifest_prefix(tiny["train"], 0.05, tmp_path / "a.jsonl"))
    b = read_manifest(common.manifest_prefix(tiny["train"], 0.1, tmp_path / "b.jsonl"))
    assert [u.id for u in a] == [u.id for u in b[: len(a)]] and len(a) < len(b)
    assert sum(u.duration for u in a) >= 3.0
    path = build_long_file({"test": tiny["train"]}, 0.25, tmp_path / "long.wav")
    assert soundfile.info(str(path)).frames == 15 * 16000


# ------------------------------------------------------------------------------------------------ scripts
def test_train_speed_micro(tmp_path, tiny):
    import train_speed

    out = tmp_path / "R.md"
    rc = train_speed.main(["--model", str(tiny["src"]), "--train", str(tiny["train"]), "--dev", str(tiny["dev"]),
                           "--max-batch-s", "3", "--epochs", "2", "--steps", "2,2,2", "--hf-cap", "1", "--evals", "2",
                           "--base-config", str(TINY_CONFIG), "--base-minutes", "0.05", "--base-max-batch-s", "2",
                           "--skip", "throughput",
                           "--results", str(out), "--work-dir", str(tmp_path / "w")])
    assert rc == 0
    text = out.read_text()
    rows = _table_rows(text, "tiny (random)")
    assert len(rows) == 3 and all(r[-1] not in ("–", "") for r in rows), rows
    raw = _raw_json(text)
    head = raw["base960"]["head"]
    # The head stage caches everything below the head: the boundary is the head segment, and later epochs hit the cache.
    assert head["ours"]["boundary"] == 5 and head["ours"]["cache"]["hits"] > 0
    assert head["hf"]["steady_audio_s_per_s"] > 0 and head["hf_settings"]["per_device_train_batch_size"] >= 1
    cer = raw["time_to_cer"]
    assert cer["schedule_steps"] == 6 and cer["hf_curve"] and 0 <= cer["target_cer"]
    assert "Time to equal dev CER" in text and "Targets:" in text
    verdict = text.split("Targets: ", 1)[1].split("\n", 1)[0]
    if cer["hf_reached"]:
        assert "time-to-equal-CER ≥ 1.5×: " in verdict and ("— met" in verdict or "— MISSED" in verdict), verdict
    else:  # HF hit its cap: the ratio is only a lower bound
        assert "time-to-equal-CER ≥ 1.5×: ≥ " in verdict and (
            "— met" in verdict or "— undetermined" in verdict
        ), verdict


def test_transcribe_speed_micro(tmp_path, tiny):
    import transcribe_speed

    out = tmp_path / "R.md"
    assert transcribe_speed.main(["--model", str(tiny["src"]), "--files", str(tiny["train"]), "--repeats", "1",
                                  "--precisions", "fp32,int8", "--results", str(out), "--work-dir", str(tmp_path)]) == 0
    text = out.read_text()
    names = [r[1] for r in _table_rows(text, "en")]
    assert names[:3] == ["ours fp32", "pipeline fp32, batch_size default", "pipeline fp32, batch_size=8"]
    assert "ours int8" in names
    raw = _raw_json(text)["langs"]["en"]
    assert raw["files"] == 11 and set(raw["wer"]) >= {"ours fp32", "ours int8"}


def test_scaling_micro_measures_child_peak_rss(tmp_path, tiny):
    import scaling

    out = tmp_path / "R.md"
    assert scaling.main(["--model", str(tiny["src"]), "--clips", str(tiny["train"]), "--minutes-list", "0.1",
                         "--results", str(out), "--work-dir", str(tmp_path)]) == 0
    raw = _raw_json(out.read_text())
    run = raw["runs"][0]
    assert abs(run["duration_s"] - 6.0) < 0.01 and run["s_per_audio_min"] > 0
    # Peak RSS is the child's own (torch alone is > 100 MB), not this test process's.
    assert 100 < raw["load_only"]["peak_rss_mb"] <= run["peak_rss_mb"] + 50


def test_data_efficiency_micro_is_the_library_curve_as_a_section(tmp_path, tiny):
    import data_efficiency
    from test_recipe import LM_TEXT, TINY_SYNTH

    text = tmp_path / "lm.txt"
    text.write_text(LM_TEXT, encoding="utf-8")
    out = tmp_path / "R.md"
    assert data_efficiency.main(["--model", str(tiny["src"]), "--minutes-list", "0.1", "--steps", "2",
                                 "--systems", "transfer,scratch,zero-shot", "--no-lm", *TINY_SYNTH,
                                 "--set", f'lm.text_files=["{text}"]', "--set", "lm.order=2",
                                 "--set", 'train.stages.1.train=["head", "layers.-1:"]',
                                 "--set", "train.data.max_batch_s=20", "--set", "baseline.lm=false",
                                 "--results", str(out), "--work-dir", str(tmp_path / "w")]) == 0
    section = out.read_text()
    raw = _raw_json(section)
    assert [(p["system"], p["minutes"], p["steps"]) for p in raw["points"]] == [("transfer", 0.1, 2),
                                                                               ("scratch", 0.1, 2)]
    assert raw["points"][0]["lm"] is None and raw["zero_shot"]["name"] in ("raw", "zero-shot")
    (png,) = (tmp_path / "figures").glob("data_efficiency-*.png")
    assert png.stat().st_size > 1000
    assert f"![CER and WER vs training minutes](figures/{png.name})" in section
    assert "transfer (mapped head)  greedy" in section and "from scratch" in section


def test_gpu_section_skips_without_cuda_and_runs_its_code_on_cpu_when_asked(tmp_path):
    import gpu
    import torch

    out = tmp_path / "R.md"
    assert gpu.main(["--results", str(out)]) == 0
    if not torch.cuda.is_available():
        assert "Skipped: no CUDA device" in out.read_text()
    out2 = tmp_path / "R2.md"
    assert gpu.main(["--allow-cpu", "--config", str(TINY_CONFIG), "--batch", "2", "--utt-s", "1", "--steps", "1",
                     "--warmup", "1", "--rtf-minutes", "0.2", "--peak-tflops", "1", "--results", str(out2)]) == 0
    raw = _raw_json(out2.read_text())
    for row in raw["finetune"].values():
        assert row["flops_per_step"] > 0 and 0 < row["mfu"] < 1
    # The cached step skips the CNN, so it counts fewer FLOPs than the full forward.
    assert (
        raw["finetune"]["ours, CNN cached"]["flops_per_step"]
        < raw["finetune"]["HF forward (full model)"]["flops_per_step"]
    )
    assert raw["rtf"]["fp32"]["rtf"] > 0


def test_inference_batches_bound_padding_per_item():
    """The fix found by transcribe_speed.py: big batch budgets must not pack 3-s clips with 8-s ones."""
    from asr_transfer.inference import plan_batches

    lengths = [8, 3, 7, 3, 4, 8, 5, 7]
    batches = plan_batches(lengths, max_samples=1000)
    assert batches == [[0, 5, 2, 7], [6, 4], [1, 3]]
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert all(lengths[i] >= 0.8 * longest for i in b)


def test_lm_exclusion_drops_pieces_of_a_test_sentence(tmp_path):
    """Found by data_efficiency.py: the LM text split 23 of 44 test sentences into pieces that were not excluded."""
    from asr_transfer.lm import build_lm
    from asr_transfer.manifest import Utterance, write_manifest

    test = write_manifest(tmp_path / "test.jsonl", [Utterance(str(tmp_path / "a.wav"), 3.0,
                                                               "Der Hund läuft schnell. Nach Hause und schläft.")],
                          relative=False)
    text = tmp_path / "lm.txt"
    text.write_text("Der Hund läuft schnell.\nNach Hause und schläft.\nDer Hund.\nEin Vogel singt heute laut.\n")
    out = build_lm([text], "de", order=3, exclude_manifests=[test], out_dir=tmp_path / "lm", log=lambda *a: None)
    record = json.loads((out / "lm.json").read_text())
    assert record["sentences_excluded_within"] == 2 and record["sentences_used"] == 2
    assert "läuft" not in (out / "unigrams.txt").read_text().split()


@pytest.mark.slow
def test_aligned_train_micro_trains_on_aligned_books_and_compares_on_one_test_split(tmp_path, tiny, monkeypatch):
    """The recipe twice (true train split; the same audio as books, cut by `align` with the shipped English source),
    compared on the same test utterances. A tiny random model trained 2 steps: mechanics, not quality."""
    import aligned_train
    from test_recipe import LM_TEXT, TINY_SYNTH

    from asr_transfer.manifest import read_manifest

    pytest.importorskip("soxr")
    text = tmp_path / "lm.txt"
    text.write_text(LM_TEXT, encoding="utf-8")
    sets = [*TINY_SYNTH, "--set", f"source={tiny['src']}", "--set", f'lm.text_files=["{text}"]',
            "--set", "lm.order=2", "--set", "train.stages.0.steps=2", "--set", "train.stages.1.steps=2",
            "--set", 'train.stages.1.train=["head", "layers.-1:"]', "--set", "train.data.max_batch_s=20",
            "--set", "eval.beam_size=4", "--set", "eval.alphas=[0.5]", "--set", "eval.betas=[0.0]",
            "--set", "data.source_train_minutes=0.1", "--set", "data.source_test_minutes=0.05"]
    # The second pass aligns with the first aligned run's model; the tiny random one here would mark every segment,
    # so it aligns with the shipped source again (the mechanics: a second alignment, a third run, its comparison).
    shipped = ROOT / "models" / "en-synth-small"
    monkeypatch.setattr(aligned_train, "trained_model_dir", lambda run_dir, which: shipped)
    assert aligned_train.main(["--out", str(tmp_path / "w"), "--chapters", "2", "--second-pass", "--lost-control",
                               "--context-s", "0.3", *sets]) == 0
    result = json.loads((tmp_path / "w" / "comparison.json").read_text())
    assert result["books"]["chapters"] == 2 and sorted(p.name for p in (tmp_path / "w" / "books").glob("*.txt")) == [
        "chapter-01.txt", "chapter-02.txt"]
    wide = result["passes"].pop("aligned, 0.3 s context")
    assert wide["same_test_split"] and wide["train"]["train_utterances"] == wide["utterances"]
    widened = read_manifest(wide["manifest"])
    aligned = read_manifest(tmp_path / "w" / "aligned-segments" / "manifest.jsonl")
    for w, a in zip(widened, aligned):  # the same letters, more audio around them
        assert w.offset <= a.offset and w.offset + w.duration >= a.offset + a.duration
        assert w.extra["align_start"] - w.offset <= 0.3 + 1e-3 and w.text == a.text
    assert sum(w.duration for w in widened) > sum(a.duration for a in aligned)
    control = result["passes"].pop("true clips of the kept segments")
    marked = result["passes"]["aligned"]["segments"]["marked"]
    assert control["utterances"] == result["passes"]["aligned"]["segments"]["true_utterances"] - marked
    assert control["same_test_split"] and control["train"]["train_utterances"] == control["utterances"]
    assert list(result["passes"]) == ["aligned", "realigned"]
    assert result["passes"]["realigned"]["model"] == str(shipped)
    for one in result["passes"].values():
        seg = one["segments"]
        assert seg["segments"] == seg["kept"] + seg["marked"] > 0 and seg["true_utterances"] > 0
        assert one["start_accuracy"]["starts"] == seg["true_utterances"]
        assert {k: sum(v.values()) for k, v in one["against_truth"].items()} == {"kept": seg["kept"],
                                                                                "marked": seg["marked"]}
        # The run trained on the aligned segments, minus the marked ones.
        assert one["train"]["skipped"]["by_reason"].get("marked by align", 0) == seg["marked"]
        assert one["same_test_split"]  # stage 0 of both runs: the same test utterances, the same audio bytes
        for decoder in ("greedy", "+ LM"):
            row = one["comparison"][decoder]
            assert row["paired_utterances"] == row["true"]["n_utterances"] == row["aligned"]["n_utterances"]
            assert 0 <= row["p_aligned_better"]["cer"] <= 1 and 0 <= row["p_true_better"]["cer"] <= 1
