"""Report figures as PNG bytes: system comparison, learning curves with stage boundaries, per-character errors, the
data-efficiency curve.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed), so a report
can be built on a headless server or from several threads. Each function returns the PNG file's bytes.
"""
from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

NEW_CHAR_COLOR = "#d62728"  # red: characters the English source never wrote
DPI = 110


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def systems_png(names: Sequence[str], wer: Sequence[float], wer_ci, cer: Sequence[float], cer_ci) -> bytes:
    """Horizontal bars of WER and CER (%) per system with their 95% intervals as error bars."""
    fig = _figure(9.0, 0.45 * len(names) + 1.4)
    axes = fig.subplots(1, 2, sharey=True)
    y = list(range(len(names)))
    for ax, values, cis, title in ((axes[0], wer, wer_ci, "WER (%)"), (axes[1], cer, cer_ci, "CER (%)")):
        v = [100 * x if x is not None and math.isfinite(x) else 0.0 for x in values]
        lo = [max(0.0, vi - 100 * ci[0]) if ci else 0.0 for vi, ci in zip(v, cis)]
        hi = [max(0.0, 100 * ci[1] - vi) if ci else 0.0 for vi, ci in zip(v, cis)]
        ax.barh(y, v, xerr=[lo, hi], color="#4c72b0", capsize=3)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels=list(names))
    axes[0].invert_yaxis()
    return _png(fig)


def learning_curve_png(metrics: Sequence[Mapping], stages: Sequence[Mapping], title: str = "") -> bytes:
    """Train/dev loss and dev CER/WER (%) over steps; a dashed line and label at each stage's first step.

    ``metrics``: rows of ``metrics.jsonl`` (``step``, ``split``, ``loss``, ``cer``, ``wer``); ``stages``: rows of
    ``stages.json`` (``name``, ``start_step``, ``end_step``).
    """
    fig = _figure(10.0, 3.6)
    ax_loss, ax_err = fig.subplots(1, 2)

    def series(split: str, key: str):
        pts = [(r["step"], r[key]) for r in metrics if r.get("split") == split and _finite(r.get(key))]
        return [p[0] for p in pts], [p[1] for p in pts]

    for split, style in (("train", "-"), ("dev", "o-")):
        steps, loss = series(split, "loss")
        if steps:
            ax_loss.plot(steps, loss, style, label=f"{split} loss", markersize=3, linewidth=1.2)
    for key, style in (("cer", "o-"), ("wer", "s--")):
        steps, values = series("dev", key)
        if steps:
            ax_err.plot(steps, [100 * v for v in values], style, label=f"dev {key.upper()}", markersize=3)
    ax_loss.set_title("loss")
    ax_err.set_title("dev error rate (%)")
    for ax in (ax_loss, ax_err):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        for i, stage in enumerate(stages):
            start = stage.get("start_step")
            if start is None:
                continue
            ax.axvline(start, color="grey", linestyle=":", linewidth=1)
            ax.text(start, 1.0, f" {stage.get('name', i)}", transform=ax.get_xaxis_transform(), rotation=90,
                    va="top", ha="left", fontsize=7, color="dimgrey")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def char_errors_png(rates: Mapping[str, Mapping[str, float]], chars: Sequence[str], new_chars: set[str]) -> bytes:
    """Grouped bars of per-character error rate (%) for each system; ``new_chars`` get red labels and a red band.

    ``rates``: ``{system: {char: error_rate}}`` (missing or nan → no bar); ``chars``: the x-axis order.
    """
    systems = list(rates)
    fig = _figure(max(6.0, 0.32 * len(chars) * max(1, len(systems)) ** 0.5 + 2), 3.6)
    ax = fig.subplots()
    width = 0.8 / max(1, len(systems))
    for k, system in enumerate(systems):
        xs, ys = [], []
        for i, ch in enumerate(chars):
            v = rates[system].get(ch)
            if _finite(v):
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(100 * v)
        ax.bar(xs, ys, width=width, label=system)
    for i, ch in enumerate(chars):
        if ch in new_chars:
            ax.axvspan(i - 0.5, i + 0.5, color=NEW_CHAR_COLOR, alpha=0.08, linewidth=0)
    ax.set_xticks(range(len(chars)), labels=[_label(c) for c in chars])
    for tick, ch in zip(ax.get_xticklabels(), chars):
        if ch in new_chars:
            tick.set_color(NEW_CHAR_COLOR)
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, len(chars) - 0.4)
    ax.set_ylabel("error rate (%) = (sub + del) / count")
    ax.set_title("per-character error rate (red: letters the English source does not have)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if systems:
        ax.legend(fontsize=8)
    return _png(fig)


def data_efficiency_png(series: Sequence[Mapping], zero_shot: Mapping | None, sizes: Sequence[float],
                        title: str = "") -> bytes:
    """Test CER and WER (%) against minutes of training audio (log x), one line per system and decoder.

    ``series``: ``{label, system, dashed, minutes, cer, cer_ci95, wer, wer_ci95}`` with one value per size (rates in
    0..1, intervals as ``[lo, hi]`` or None) drawn with the intervals as error bars; a system keeps its colour across
    decoders, beam + LM dashed. ``zero_shot``: a flat line with its interval as a band (``name``, rates, intervals).
    """
    fig = _figure(11.0, 5.2)
    axes = fig.subplots(1, 2)
    systems = list(dict.fromkeys(s["system"] for s in series))
    colours = {system: f"C{i}" for i, system in enumerate(systems)}
    for ax, metric in zip(axes, ("cer", "wer")):
        for s in series:
            pts = [(m, v, ci) for m, v, ci in zip(s["minutes"], s[metric], s[f"{metric}_ci95"]) if _finite(v)]
            if not pts:
                continue
            ys = [100 * v for _, v, _ in pts]
            err = [[max(0.0, y - 100 * ci[0]) if ci else 0.0 for y, (_, _, ci) in zip(ys, pts)],
                   [max(0.0, 100 * ci[1] - y) if ci else 0.0 for y, (_, _, ci) in zip(ys, pts)]]
            ax.errorbar([m for m, _, _ in pts], ys, yerr=err, fmt="s--" if s.get("dashed") else "o-", capsize=3,
                        color=colours[s["system"]], label=s["label"], markersize=4, linewidth=1.2)
        if zero_shot and _finite(zero_shot.get(metric)):
            y = 100 * zero_shot[metric]
            ax.axhline(y, color="grey", linestyle=":", label=f"zero-shot ({zero_shot.get('name')})")
            ci = zero_shot.get(f"{metric}_ci95")
            if ci:
                ax.axhspan(100 * ci[0], 100 * ci[1], color="grey", alpha=0.12, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(list(sizes), labels=[f"{m:g}" for m in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training audio (minutes, log scale)")
        ax.set_ylabel(f"test {metric.upper()} (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # below both panels: inside one it would cover points
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=min(3, len(handles)))
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def _label(ch: str) -> str:
    return "␣" if ch == " " else ch


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
