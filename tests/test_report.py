"""report: self-contained HTML with embedded PNGs, numbers equal to summary.json, learning curves from run folders."""
from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from asr_transfer.cli import main
from asr_transfer.environment import environment_info
from asr_transfer.errors import UserError
from asr_transfer.evaluation import rates_with_ci, write_evaluation
from asr_transfer.metrics import paired_bootstrap, score_pairs
from asr_transfer.report import build_report

REFS = [
    "das ist ein haus",
    "grüße aus köln",
    "die straße ist groß",
    "über den fluss",
    "hallo welt",
    "schön",
    "das mädchen",
]
HYPS_RAW = [
    "das ist en haus",
    "gruse aus koln",
    "die strase ist gros",
    "uber den flus",
    "halo welt",
    "schon",
    "das madchen",
]
HYPS_ADAPTED = [
    "das ist ein haus",
    "grüße aus köln",
    "die straße ist gros",
    "über den fluss",
    "hallo welt",
    "schön",
    "das mädchen",
]


def _write_eval(folder: Path, name: str, refs, hyps, lang="de") -> dict:
    """An evaluation folder exactly as evaluate() writes it, from text pairs (no model needed)."""
    scores = score_pairs(refs, hyps)
    rows = []
    for i, (r, h, s) in enumerate(zip(refs, hyps, scores)):
        rows.append({"id": f"utt{i}", "ref": r, "hyp": h, "ref_raw": r, "hyp_raw": h,
                     **{k: v for k, v in s.words.as_dict().items() if k != "errors"},
                     "char_errors": s.chars.errors, "char_ref_len": s.chars.ref_len, "alignment": s.alignment,
                     "audio_s": 1.0 + i, "decode_s": 0.05})
    summary = {"name": name, "model": f"/models/{name}", "lang": lang, "normalizer": f"{lang}-v1",
               "decoder": {"kind": "greedy"}, "device": "cpu", "precision": "fp32", "n_utterances": len(rows),
               "n_skipped": 0, "skipped": [], "audio_s": sum(r["audio_s"] for r in rows), "decode_s": 0.3,
               "rtf": 0.3 / sum(r["audio_s"] for r in rows), "model_params": 1_234_567, "model_size_mb": 4.9,
               "manifest_fingerprint": "abc", **rates_with_ci(scores), "environment": environment_info()}
    write_evaluation(folder, summary, rows)
    return summary


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.cells: list[tuple[dict, str]] = []
        self._cell: dict | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs["src"])
        if tag == "td":
            self._cell, self._text = attrs, ""

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell, self._text))
            self._cell = None


def _parse(path: Path) -> _Collect:
    parser = _Collect()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_from_two_evaluations(tmp_path):
    raw = _write_eval(tmp_path / "raw", "raw", REFS, HYPS_RAW)
    adapted = _write_eval(tmp_path / "adapted", "adapted-greedy", REFS, HYPS_ADAPTED)
    html_path = build_report([tmp_path / "raw", tmp_path / "adapted"], tmp_path / "report", worst=3)
    assert html_path == tmp_path / "report" / "report.html"
    page = _parse(html_path)
    assert page.imgs, "no plots"
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    text = html_path.read_text(encoding="utf-8")
    assert "<link" not in text and "<script src" not in text and 'src="http' not in text  # self-contained
    values = {(a["data-system"], a["data-metric"]): a["data-value"] for a, _ in page.cells if "data-metric" in a
              and "data-system" in a}
    for name, summary in (("raw", raw), ("adapted-greedy", adapted)):
        for metric in ("wer", "cer"):
            assert float(values[(name, metric)]) == summary[metric]
    # displayed text agrees with the value (percent, 2 decimals)
    shown = {(a["data-system"], a["data-metric"]): t for a, t in page.cells if "data-system" in a}
    assert shown[("raw", "wer")] == f"{100 * raw['wer']:.2f}"
    # p-value against the baseline "raw" equals a direct paired bootstrap over the same utterances
    a = [json.loads(x) for x in (tmp_path / "raw" / "utterances.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "adapted" / "utterances.jsonl").read_text().splitlines()]
    err = lambda r: r["substitutions"] + r["deletions"] + r["insertions"]  # noqa: E731
    want = paired_bootstrap([err(r) for r in a], [err(r) for r in b], [r["ref_len"] for r in a], n=1000, seed=0)
    assert float(values[("adapted-greedy", "p_wer")]) == want
    assert values[("raw", "p_wer")] == "None"
    # markdown twin with figures on disk; the new German letters are called out; worst utterances are aligned
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "![per-character error rates](figures/char_errors.png)" in md
    assert (tmp_path / "report" / "figures" / "char_errors.png").read_bytes()[:4] == b"\x89PNG"
    letters_table = [t for a, t in page.cells if not a]
    for letter in ("ä", "ö", "ü", "ß"):
        assert letter in letters_table
    assert "REF: die straße ist groß" in text and "HYP: die strase ist gros" in text
    assert "jiwer" in md and "git commit" in md


def test_report_with_a_run_folder_renders_learning_curves(tmp_path):
    run = tmp_path / "runs" / "de-small"
    run.mkdir(parents=True)
    rows = []
    for step in range(0, 300, 10):
        stage = "head" if step < 100 else ("top" if step < 200 else "all")
        params = {"head": 1_000, "top": 50_000, "all": 400_000}[stage]
        rows.append({"step": step, "stage": stage, "split": "train", "loss": 3.0 / (1 + step / 50), "lr": 1e-4,
                     "trainable_params": params, "time_s": step * 0.1})
        if step % 50 == 0:
            rows.append({"step": step, "stage": stage, "split": "dev", "loss": 3.2 / (1 + step / 60),
                         "cer": 0.9 / (1 + step / 80), "wer": 1.0 / (1 + step / 120), "lr": 1e-4,
                         "trainable_params": params, "time_s": step * 0.1})
    lines = [json.dumps(r) for r in rows] + ['{"step": 300, "spl']  # a run killed mid-write
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    stages = [{"name": "head", "start_step": 0, "end_step": 100, "trainable_params": 1_000},
              {"name": "top", "start_step": 100, "end_step": 200, "trainable_params": 50_000},
              {"name": "all", "start_step": 200, "end_step": 300, "trainable_params": 400_000}]
    (run / "stages.json").write_text(json.dumps(stages))
    (run / "config.resolved.json").write_text(json.dumps({"model": {"lang": "de"}, "seed": 0}))
    summary = _write_eval(run / "eval" / "greedy", "greedy", REFS, HYPS_ADAPTED)
    base = tmp_path / "baseline"
    _write_eval(base / "raw", "raw", REFS, HYPS_RAW)
    _write_eval(base / "zero-shot", "zero-shot", REFS, HYPS_RAW[::-1])

    rc = main(["report", str(base), str(run), "--out", str(tmp_path / "rep")])
    assert rc == 0
    html_path = tmp_path / "rep" / "report.html"
    page = _parse(html_path)
    curves = tmp_path / "rep" / "figures" / "run0_curves.png"
    assert curves.read_bytes()[:4] == b"\x89PNG"
    assert base64.b64encode(curves.read_bytes()).decode() in [s.split(",", 1)[1] for s in page.imgs]
    trainable = {
        a["data-stage"]: int(a["data-value"]) for a, _ in page.cells if a.get("data-metric") == "trainable_params"
    }
    assert trainable == {"head": 1_000, "top": 50_000, "all": 400_000}
    values = {(a["data-system"], a["data-metric"]): a["data-value"] for a, _ in page.cells if "data-system" in a}
    assert float(values[("de-small/greedy", "wer")]) == summary["wer"]
    assert {"raw", "zero-shot"} <= {s for s, _ in values}
    text = html_path.read_text(encoding="utf-8")
    assert "1 unreadable metrics.jsonl line(s)" in text and "config.resolved.json" in text


def test_report_errors(tmp_path):
    _write_eval(tmp_path / "a", "a", REFS, HYPS_RAW)
    with pytest.raises(UserError, match="not one of the systems"):
        build_report([tmp_path / "a"], tmp_path / "r", baseline="nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no summary.json"):
        build_report([tmp_path / "empty"], tmp_path / "r")
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 1
    (tmp_path / "a" / "utterances.jsonl").write_text('{"id": "x", "ref": "a"}\n')
    with pytest.raises(UserError, match="lacks hyp"):
        build_report([tmp_path / "a"], tmp_path / "r")


def test_p_values_compare_against_the_best_zero_shot_system(tmp_path):
    """Without --baseline the reference is the zero-shot system (no target audio) with the lowest WER, not raw."""
    from asr_transfer.results import best_zero_shot, collect, compare

    hyps_zs_lm = [
        "das ist ein haus",
        "grüße aus köln",
        "die strase ist gros",
        "über den fluss",
        "halo welt",
        "schon",
        "das mädchen",
    ]
    for name, hyps, zero_shot in (("raw", HYPS_RAW, True), ("zero-shot + LM", hyps_zs_lm, True),
                                  ("adapted", HYPS_ADAPTED, False)):
        summary = _write_eval(tmp_path / name, name, REFS, hyps)
        (tmp_path / name / "summary.json").write_text(json.dumps({**summary, "zero_shot": zero_shot}))
    evaluations, _ = collect([tmp_path / n for n in ("raw", "zero-shot + LM", "adapted")])
    assert best_zero_shot(evaluations) == "zero-shot + LM"  # adapted is better still, but it used target audio
    base, rows = compare(evaluations)
    assert base == "zero-shot + LM" and rows[1]["p_wer"] is None and rows[0]["p_wer"] is not None
    assert compare(evaluations, "raw")[0] == "raw"  # an explicit --baseline still wins
    for n in ("raw", "zero-shot + LM"):  # summaries from before the flag: raw, as before
        summary = json.loads((tmp_path / n / "summary.json").read_text())
        del summary["zero_shot"]
        (tmp_path / n / "summary.json").write_text(json.dumps(summary))
    assert compare(collect([tmp_path / n for n in ("zero-shot + LM", "raw")])[0])[0] == "raw"
