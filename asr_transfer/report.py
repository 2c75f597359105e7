"""``report.md`` + one self-contained ``report.html`` comparing evaluations and training runs.

Inputs are evaluation folders (``summary.json`` + ``utterances.jsonl``, from ``evaluate``/``baseline``), folders that
hold several of them (a ``baseline`` output), and run folders (``metrics.jsonl``, ``stages.json``, optional
``config.resolved.json`` and evaluations below ``eval/``), read and compared by :mod:`asr_transfer.results`. The
report shows:

* the systems table: WER/CER with bootstrap 95% intervals and paired-bootstrap p-values against the baseline
  (utterances paired by id; p = fraction of resamples where the system is *not* better than the baseline);
* learning curves per run with stage boundaries, and the trainable parameters of each stage;
* per-character error rates, with the letters the English source lacks (ä ö ü ß for German) in red;
* the worst utterances of each system with aligned ref/hyp; decode speed, model sizes, configs, versions + commit.

In the HTML every number of the systems table sits in a cell with ``data-system``, ``data-metric`` and the exact
``data-value``, so tools (and tests) can read the numbers back. Plots are PNGs embedded as base64 data URIs; the
markdown references the same PNGs in ``figures/``.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Sequence

from . import report_plots as plots
from .metrics import char_errors, wrap_alignment
from .results import Evaluation, Run, collect, compare, worst_utterances
from .retention import is_source_eval, retention_rows
from .text import LETTERS


def new_letters(lang: str | None) -> set[str]:
    """Letters of ``lang`` that English lacks (German: ä ö ü ß)."""

    if not lang or lang not in LETTERS:
        return set()
    return set(LETTERS[lang]) - set(LETTERS["en"])


def _pct(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _ci(ci) -> str:
    return "n/a" if not ci else f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def _p(p) -> str:
    return "—" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


class _Doc:
    """Builds the markdown and the HTML side by side, so both always show the same content."""

    def __init__(self, out_dir: Path):
        self.md: list[str] = []
        self.html: list[str] = []
        self.figures = out_dir / "figures"

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, headers: list[str], rows: list[list], cls: str = "") -> None:
        """Cells are strings or ``(text, {data-attr: value})`` tuples."""
        cells = lambda row: [c if isinstance(c, tuple) else (str(c), {}) for c in row]  # noqa: E731
        self.md.append("| " + " | ".join(headers) + " |")
        self.md.append("|" + "---|" * len(headers))
        for row in rows:
            self.md.append("| " + " | ".join(t.replace("|", "\\|").replace("\n", " ") for t, _ in cells(row)) + " |")
        self.md.append("")
        out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in headers)]
        out.append("</tr></thead><tbody>")
        for row in rows:
            tds = []
            for text, attrs in cells(row):
                a = "".join(f' {k}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items())
                tds.append(f"<td{a}>{html.escape(text)}</td>")
            out.append("<tr>" + "".join(tds) + "</tr>")
        self.html.append("".join(out) + "</tbody></table>")

    def figure(self, png: bytes, name: str, alt: str) -> None:
        self.figures.mkdir(parents=True, exist_ok=True)
        (self.figures / f"{name}.png").write_bytes(png)
        self.md.append(f"![{alt}](figures/{name}.png)\n")
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"></figure>')

    def pre(self, text: str, summary: str | None = None) -> None:
        self.md.append(("" if summary is None else f"<details><summary>{summary}</summary>\n\n") + "```\n" + text +
                       "\n```\n" + ("" if summary is None else "</details>\n"))
        block = f"<pre>{html.escape(text)}</pre>"
        self.html.append(
            block if summary is None else f"<details><summary>{html.escape(summary)}</summary>{block}</details>"
        )


Document = _Doc  # the public name, for other pages built the same way (the data-efficiency curve)

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}td[data-value]{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:13px}img{max-width:100%}
.new{color:#d62728;font-weight:bold}"""


def build_report(inputs, out_dir, baseline: str | None = None, worst: int = 10,
                 pairs: Sequence[tuple[str, str]] = ()) -> Path:
    """Write ``out_dir/report.md``, ``out_dir/report.html`` and ``out_dir/figures/*.png``; returns the HTML path.

    ``pairs``: ``(reference system, system)`` names compared head to head besides the baseline comparison (e.g. the
    supervised model and its self-trained successor); a pair naming a system not present is left out.
    """
    evaluations, runs = collect(inputs)
    # Source-language test evaluations (retention) are not systems of the target test: their own table.
    source_evals = [e for e in evaluations if is_source_eval(e.summary)]
    evaluations = [e for e in evaluations if not is_source_eval(e.summary)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out)
    doc.heading("asr-transfer report", 1)
    if evaluations:
        _systems_section(doc, evaluations, baseline)
        _pairs_section(doc, evaluations, pairs)
    if source_evals:
        _retention_section(doc, evaluations + source_evals)
    if evaluations:
        _char_section(doc, evaluations)
    for i, run in enumerate(runs):
        _run_section(doc, run, i)
    if evaluations:
        _worst_section(doc, evaluations, worst)
        _speed_section(doc, evaluations)
        _environment_section(doc, evaluations)
    return write_page(doc, out, "asr-transfer report")


def write_page(doc: _Doc, out: Path, title: str) -> Path:
    """``out/report.md`` and the self-contained ``out/report.html`` of ``doc``; returns the HTML path."""
    (out / "report.md").write_text("\n".join(doc.md), encoding="utf-8")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>" + "\n".join(doc.html) + "</body></html>\n")
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


def _systems_section(doc: _Doc, evaluations: list[Evaluation], baseline: str | None) -> None:
    base_name, rows = compare(evaluations, baseline)
    doc.heading("Systems")
    doc.para(
        f"Baseline for p-values: {base_name}. WER/CER in %, bootstrap 95% intervals over utterances; p = one-sided "
        "paired bootstrap probability that the system is not better than the baseline (small p: a real gain)."
    )
    table = []
    for r in rows:
        name = r["name"]

        def cell(metric, text, value):
            return (text, {"data-system": name, "data-metric": metric, "data-value": repr(value)})

        table.append(
            [
                name,
                str(r["n"]) + (f" (+{r['skipped']} skipped)" if r["skipped"] else ""),
                cell("wer", _pct(r["wer"]), r["wer"]),
                _ci(r["wer_ci95"]),
                cell("cer", _pct(r["cer"]), r["cer"]),
                _ci(r["cer_ci95"]),
                cell("p_wer", _p(r["p_wer"]), r["p_wer"]),
                cell("p_cer", _p(r["p_cer"]), r["p_cer"]),
                (
                    "—"
                    if r["n_paired"] is None
                    else f"{r['n_paired']}" + ("" if r["same_manifest"] else " (other manifest)")
                ),
            ]
        )
    doc.table(["system", "utterances", "WER %", "WER 95% CI", "CER %", "CER 95% CI", "p (WER)", "p (CER)", "paired"],
              table, cls="systems")
    ok = [r for r in rows if r["wer"] is not None]
    if ok:
        png = plots.systems_png([r["name"] for r in ok], [r["wer"] for r in ok], [r["wer_ci95"] for r in ok],
                                [r["cer"] for r in ok], [r["cer_ci95"] for r in ok])
        doc.figure(png, "systems", "WER and CER per system")


def _pairs_section(doc: _Doc, evaluations: list[Evaluation], pairs: Sequence[tuple[str, str]]) -> None:
    by_name = {e.name: e for e in evaluations}
    table = []
    for ref, system in pairs:
        if ref not in by_name or system not in by_name:
            continue
        _, (base_row, row) = compare([by_name[ref], by_name[system]], baseline=ref)
        table.append([system, ref, f"{_pct(base_row['wer'])} → {_pct(row['wer'])}",
                      f"{_pct(base_row['cer'])} → {_pct(row['cer'])}", _p(row["p_wer"]), _p(row["p_cer"]),
                      str(row["n_paired"])])
    if not table:
        return
    doc.heading("Paired comparisons")
    doc.para("Each system against the one it was built from (e.g. self-training against the supervised model it "
             "started from), on the same test utterances: p = one-sided paired bootstrap probability that the system "
             "is not better than the reference.")
    doc.table(["system", "against", "WER %", "CER %", "p (WER)", "p (CER)", "paired"], table, cls="pairs")


def _retention_section(doc: _Doc, evaluations: list[Evaluation]) -> None:
    rows = retention_rows([e.summary for e in evaluations])
    doc.heading("Source language (retention)")
    doc.para("Each model on the source-language test with its own head (greedy), the reference through the source "
             "language's normaliser; letters the head lacks count as errors. A model trained with two heads "
             "(train.mix.head = own) has a second row: its kept source head (head 'kept en'). Retention = source CER "
             "of the unadapted source model / source CER of the system (1: nothing forgotten). WER/CER in %, "
             "bootstrap 95% intervals.")
    table = []
    for row in rows:
        c = row.cells()

        def cell(metric):
            return (_pct(c[metric]), {"data-system": row.label, "data-metric": metric, "data-value": repr(c[metric])})

        table.append([row.system, row.head, cell("target_wer"), _ci(c["target_wer_ci95"]), cell("target_cer"),
                      _ci(c["target_cer_ci95"]), cell("source_wer"), _ci(c["source_wer_ci95"]), cell("source_cer"),
                      _ci(c["source_cer_ci95"]),
                      ("n/a" if row.retention is None else f"{row.retention:.2f}",
                       {"data-system": row.label, "data-metric": "retention", "data-value": repr(row.retention)})])
    doc.table(["system", "head", "target WER %", "95% CI", "target CER %", "95% CI", "source WER %", "95% CI",
               "source CER %", "95% CI", "retention"], table, cls="retention")


def _char_section(doc: _Doc, evaluations: list[Evaluation], max_systems: int = 4) -> None:
    chosen = [e for e in evaluations if e.rows]
    if not chosen:
        return
    if len(chosen) > max_systems:  # the first (usually the baseline) and the best few
        rest = sorted(chosen[1:], key=lambda e: e.summary.get("wer") if e.summary.get("wer") is not None else 1e9)
        chosen = [chosen[0], *rest[: max_systems - 1]]
    stats = {e.name: char_errors((r["ref"], r["hyp"]) for r in e.rows) for e in chosen}
    new = set().union(*(new_letters(e.summary.get("lang")) for e in chosen))
    counts: dict[str, int] = {}
    for s in stats.values():
        for ch, st in s.items():
            counts[ch] = max(counts.get(ch, 0), st.ref_count)
    chars = sorted((c for c, n in counts.items() if n > 0), key=lambda c: (c == " ", c == "'", c))
    doc.heading("Per-character errors")
    doc.figure(plots.char_errors_png({n: {c: st.error_rate for c, st in s.items()} for n, s in stats.items()},
                                     chars, new), "char_errors", "per-character error rates")
    shown = [c for c in chars if c in new]
    if shown:
        doc.para("Letters new to the target language (not in the English alphabet): error rate % (count) and the most "
                 "frequent confusions.")
        rows = []
        for c in shown:
            row = [c]
            for name, s in stats.items():
                st = s.get(c)
                if st is None or not st.ref_count:
                    row.append("—")
                    continue
                conf = ", ".join(f"→{h or '∅'} {k}" for h, k in st.confusions.most_common(2))
                row.append(f"{_pct(st.error_rate)} ({st.ref_count})" + (f"; {conf}" if conf else ""))
            rows.append(row)
        doc.table(["letter", *stats], rows, cls="newchars")


def _run_section(doc: _Doc, run: Run, index: int) -> None:
    doc.heading(f"Run {run.name}")
    if run.skipped_lines:
        doc.para(f"{run.skipped_lines} unreadable metrics.jsonl line(s) were skipped.")
    if run.metrics:
        png = plots.learning_curve_png(run.metrics, run.stages, title=run.name)
        doc.figure(png, f"run{index}_curves", f"learning curves of {run.name}")
    if run.stages:
        step = lambda v: "—" if v is None else str(v)  # noqa: E731 - end_step is None while a stage runs
        rows = [[str(s.get("name")), step(s.get("start_step")), step(s.get("end_step")),
                 (f"{s['trainable_params']:,}" if isinstance(s.get("trainable_params"), int) else "—",
                  {"data-run": run.name, "data-stage": str(s.get("name")), "data-metric": "trainable_params",
                   "data-value": repr(s.get("trainable_params"))})] for s in run.stages]
        doc.table(["stage", "start step", "end step", "trainable parameters"], rows, cls="stages")
    if run.evaluations:
        doc.para("Evaluations of this run: " + ", ".join(run.evaluations))
    if run.config is not None:
        doc.pre(json.dumps(run.config, indent=2, ensure_ascii=False), summary="config.resolved.json")


def _worst_section(doc: _Doc, evaluations: list[Evaluation], n: int) -> None:
    if n <= 0:
        return
    doc.heading(f"Worst {n} utterances per system")
    for ev in evaluations:
        worst = worst_utterances(ev, n)
        if not worst:
            continue
        lines = []
        for r in worst:
            errors = r["substitutions"] + r["deletions"] + r["insertions"]
            lines.append(f"{r['id']}  errors {errors}/{r['ref_len']} words\n{wrap_alignment(r['alignment'], 110)}")
        doc.pre("\n\n".join(lines), summary=f"{ev.name} ({len(worst)} utterances)")


def _speed_section(doc: _Doc, evaluations: list[Evaluation]) -> None:
    doc.heading("Decoding speed and model size")
    rows = []
    for ev in evaluations:
        s = ev.summary
        dec = s.get("decoder") or {}
        desc = dec.get("kind", "?") + (
            ""
            if dec.get("kind") != "beam"
            else f" (beam {dec.get('beam_size')}, α {dec.get('lm_weight')}, β {dec.get('word_score')}"
            f"{', LM' if dec.get('lm_dir') else ''})"
        )
        params = s.get("model_params")
        size = s.get("model_size_mb")
        rows.append([ev.name, desc, f"{s.get('device', '?')} / {s.get('precision', '?')}",
                     "n/a" if s.get("rtf") is None else f"{s['rtf']:.4f}", f"{s.get('audio_s', 0):.1f}",
                     f"{params / 1e6:.2f} M" if params else "n/a", f"{size:.1f}" if size else "n/a",
                     str(s.get("model", ""))])
    doc.table(["system", "decoder", "device / precision", "RTF", "audio s", "parameters", "MB on disk", "model"], rows)


def _environment_section(doc: _Doc, evaluations: list[Evaluation]) -> None:
    doc.heading("Versions")
    envs = {ev.name: ev.summary.get("environment") or {} for ev in evaluations}
    flat = {}
    for name, env in envs.items():
        d = dict(env.get("versions") or {})
        git = env.get("git") or {}
        d["git commit"] = (git.get("commit") or "n/a") + (" (dirty)" if git.get("dirty") else "")
        flat[name] = d
    keys = sorted({k for d in flat.values() for k in d}, key=lambda k: (k == "git commit", k))
    distinct = {json.dumps(d, sort_keys=True) for d in flat.values()}
    if len(distinct) == 1:
        d = next(iter(flat.values()))
        doc.table(["package", "version"], [[k, str(d.get(k))] for k in keys])
    else:
        doc.para("The systems were evaluated with different software versions:")
        doc.table(["package", *flat], [[k, *(str(d.get(k)) for d in flat.values())] for k in keys])
