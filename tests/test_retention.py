"""Retention: source-language test scores per system, and retention = unadapted source CER / system source CER."""
from __future__ import annotations

import json
import math

import pytest
from test_evaluation import de_model, en_model, sine_manifest  # noqa: F401  (fixtures)
from test_report import REFS, _write_eval
from train_fixtures import make_source_model, make_two_head_model

from asr_transfer.report import build_report
from asr_transfer.retention import retention, retention_rows, source_eval_name, source_summary_extra

EN_REFS = ["the house is big", "don't stop", "hello world", "a quiet street"]


def test_retention_is_the_unadapted_cer_over_the_systems():
    assert retention(0.15, 0.30) == pytest.approx(0.5)
    assert retention(0.15, 0.15) == 1.0
    assert retention(0.15, 0.0) == math.inf
    assert retention(None, 0.2) is None and retention(0.1, float("nan")) is None


def test_rows_pair_each_source_score_with_its_target_score():
    summaries = [{"name": "raw", "wer": 1.1, "cer": 0.53}, {"name": "adapted (greedy)", "wer": 0.7, "cer": 0.2},
                 {"name": source_eval_name("raw"), "cer": 0.15, "wer": 0.45, **source_summary_extra("raw")},
                 {"name": source_eval_name("adapted (greedy)"), "cer": 0.6, "wer": 1.0,
                  **source_summary_extra("adapted (greedy)")}]
    rows = retention_rows(summaries)
    assert [r.system for r in rows] == ["raw", "adapted (greedy)"]
    assert rows[0].retention == 1.0 and rows[1].retention == pytest.approx(0.25)
    assert rows[1].target["cer"] == 0.2 and rows[1].cells()["source_cer"] == 0.6
    # Without the unadapted model's source score there is no reference: no retention, the scores still shown.
    alone = retention_rows(summaries[:2] + summaries[3:])
    assert alone[0].retention is None and alone[0].source["cer"] == 0.6


def test_report_shows_retention_and_keeps_source_scores_out_of_the_systems_table(tmp_path):
    de_hyps = [r.replace("ü", "u") for r in REFS]
    _write_eval(tmp_path / "raw", "raw", REFS, de_hyps)
    _write_eval(tmp_path / "adapted", "adapted (greedy)", REFS, REFS)
    for folder, system, hyps in (
        ("raw-src", "raw", ["the house is big", "dont stop", "hello world", "a quiet street"]),
        ("ad-src", "adapted (greedy)", ["de haus is bik", "dont stop", "halo welt", "a kwit"]),
    ):
        summary = _write_eval(tmp_path / folder, source_eval_name(system), EN_REFS, hyps, lang="en")
        (tmp_path / folder / "summary.json").write_text(json.dumps({**summary, **source_summary_extra(system)}))
    page = build_report([tmp_path / n for n in ("raw", "adapted", "raw-src", "ad-src")], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    systems = md[md.index("## Systems"):md.index("## Source language")]
    assert "[source test]" not in systems and "| adapted (greedy) |" in systems
    html = page.read_text()
    raw_cer = json.loads((tmp_path / "raw-src" / "summary.json").read_text())["cer"]
    ad_cer = json.loads((tmp_path / "ad-src" / "summary.json").read_text())["cer"]
    expected = raw_cer / ad_cer
    assert 0 < expected < 1  # "don't" -> "dont" costs both; the adapted one forgot more
    assert f'data-system="adapted (greedy)" data-metric="retention" data-value="{expected!r}"' in html
    assert f"{expected:.2f}" in md[md.index("## Source language"):]


def test_cli_baseline_evaluate_and_report_give_retention(en_model, de_model, sine_manifest, tmp_path, capsys):
    """baseline --source-test scores the unadapted model, evaluate --source-test a "trained" one; report pairs them."""
    from asr_transfer.cli import main

    common = ["--manifest", str(sine_manifest), "--device", "cpu", "--source-test", str(sine_manifest)]
    assert main(["baseline", "--model", str(en_model), "--lang", "de", "--out", str(tmp_path / "b"), *common]) == 0
    assert main(["evaluate", "--model", str(de_model), "--lang", "de", "--name", "adapted", "--out",
                 str(tmp_path / "e"), *common]) == 0
    out = capsys.readouterr().out
    assert "raw [source test]: WER" in out and "adapted [source test]: WER" in out
    src = json.loads((tmp_path / "e" / "source-test" / "summary.json").read_text())
    assert src["normalizer"] == "en-v1" and src["system"] == "adapted" and src["test_set"] == "source"
    ref = json.loads((tmp_path / "b" / "source-test" / "summary.json").read_text())
    assert main(["report", str(tmp_path / "b"), str(tmp_path / "e"), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    section = md[md.index("## Source language"):].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| adapted |"))
    assert row.rstrip(" |").endswith(f"{retention(ref['cer'], src['cer']):.2f}")


def test_runs_compare_shows_retention(en_model, de_model, sine_manifest, tmp_path, capsys):
    from asr_transfer.cli import main

    common = ["--manifest", str(sine_manifest), "--device", "cpu", "--lang", "de", "--source-test", str(sine_manifest)]
    assert main(["baseline", "--model", str(en_model), "--out", str(tmp_path / "b"), *common]) == 0
    assert main(["evaluate", "--model", str(de_model), "--out", str(tmp_path / "e"), *common]) == 0
    capsys.readouterr()
    assert main(["runs", "compare", str(tmp_path / "b"), str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    ref = json.loads((tmp_path / "b" / "source-test" / "summary.json").read_text())["cer"]
    cer = json.loads((tmp_path / "e" / "source-test" / "summary.json").read_text())["cer"]
    row = next(line for line in out.splitlines() if line.startswith("retention"))
    assert row.split()[1:3] == ["1", f"{retention(ref, cer):.6g}"], row
    assert any(line.startswith("source_cer") for line in out.splitlines())


@pytest.fixture(scope="module")
def two_head_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("two")
    return make_two_head_model(d / "model", make_source_model(d / "src"))


def test_a_two_head_model_is_scored_on_the_source_test_with_both_heads(en_model, two_head_model, sine_manifest,
                                                                        tmp_path, capsys):
    """evaluate --source-test scores the target head and the kept English head; report and runs compare show both."""
    from asr_transfer.cli import main

    common = ["--manifest", str(sine_manifest), "--device", "cpu", "--lang", "de", "--source-test", str(sine_manifest)]
    assert main(["baseline", "--model", str(en_model), "--out", str(tmp_path / "b"), *common]) == 0
    assert main(["evaluate", "--model", str(two_head_model), "--name", "adapted", "--out", str(tmp_path / "e"),
                 *common]) == 0
    out = capsys.readouterr().out
    assert "adapted [source test]: WER" in out and "adapted [source test, en head]: WER" in out
    own = json.loads((tmp_path / "e" / "source-test" / "summary.json").read_text())
    kept = json.loads((tmp_path / "e" / "source-test-en-head" / "summary.json").read_text())
    assert kept["head"] == "en" and kept["system"] == "adapted" and kept["test_set"] == "source"
    assert kept["model"].endswith("heads/en") and kept["normalizer"] == "en-v1" and "head" not in own
    ref = json.loads((tmp_path / "b" / "source-test" / "summary.json").read_text())
    assert main(["report", str(tmp_path / "b"), str(tmp_path / "e"), "--out", str(tmp_path / "r")]) == 0
    section = (tmp_path / "r" / "report.md").read_text().split("## Source language")[1].split("\n## ")[0]
    rows = {line.split("|")[2].strip(): line for line in section.splitlines() if line.startswith("| adapted |")}
    assert set(rows) == {"own", "kept en"}
    assert rows["kept en"].rstrip(" |").endswith(f"{retention(ref['cer'], kept['cer']):.2f}")
    assert rows["own"].rstrip(" |").endswith(f"{retention(ref['cer'], own['cer']):.2f}")
    html = (tmp_path / "r" / "report.html").read_text()
    assert 'data-system="adapted (kept en head)" data-metric="retention"' in html
    capsys.readouterr()
    assert main(["runs", "compare", str(tmp_path / "b"), str(tmp_path / "e")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("kept_en_retention"))
    assert line.split()[2] == f"{retention(ref['cer'], kept['cer']):.6g}", line


def test_a_one_head_model_gets_no_kept_head_row(de_model, sine_manifest, tmp_path):
    from asr_transfer.retention import score_kept_head

    assert score_kept_head(str(de_model), sine_manifest, "adapted", tmp_path / "x", device="cpu") is None
    assert not (tmp_path / "x").exists()
