"""Does aligned data train as well as true data? The demo's recipe trained on its true train segments and on the
same audio cut again by ``asr-transfer align``, scored on the same held-out-voice test split.

1. ``asr-transfer recipe de-synth`` (stages 0-5) in ``OUT/true``: the demo, trained on the true train segments.
2. Its train split (``OUT/true/data/train.jsonl``), in manifest order, becomes ``--chapters`` books of about equal
   length (``books.py``: random 0.2-1.5 s pauses, each chapter's text one line, sentences joined by ". ").
3. ``asr-transfer align OUT/books`` with ``models/en-synth-small`` (English only, before any German training).
4. The same recipe and settings in ``OUT/aligned`` with ``--set data.train_manifest=OUT/aligned-segments/
   manifest.jsonl``: stage 0 makes the same dev/test; vocab, LM text and training read the aligned segments
   (marked ones skipped and counted).
5. Both adapted models on the same test split, greedy and beam + LM (each tuned on dev as the demo does): CER/WER
   with 95% bootstrap intervals and one-sided paired bootstrap p-values each way (``results.compare``).

    python bench/aligned_train.py                       # data/bench/aligned-train, 3 chapters, one thread
    python bench/aligned_train.py --set data.minutes=5  # any recipe key, for every run

More runs, each compared with the true run the same way: ``--second-pass`` (the books aligned again with the
aligned run's adapted model, then trained on), ``--lost-control`` (the true clips less the utterances whose segment
was marked: what the marked minutes alone cost), ``--context-s S`` (the first pass's segments widened to S s of
audio around their letters). Results and the exact numbers: docs/long-recordings.md.

Stage 3 (baselines) is off in both runs: the comparison does not read it. Runs and alignment resume: a finished
step is skipped when rerun with the same settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from books import write_chapters  # noqa: E402
from common import git_state, loadavg, other_heavy_processes  # noqa: E402

from asr_transfer.audio import audio_info  # noqa: E402
from asr_transfer.cli import main as cli  # noqa: E402
from asr_transfer.files import sha256_files  # noqa: E402
from asr_transfer.manifest import is_marked, read_manifest, write_manifest  # noqa: E402
from asr_transfer.recipe_stages import trained_model_dir  # noqa: E402
from asr_transfer.results import compare, load_evaluation  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "en-synth-small"
SYSTEMS = {"greedy": "adapted-greedy", "+ LM": "adapted-lm"}  # eval/ folders of stage 5


def _recipe(recipe: str, out: Path, sets: list[str]) -> float:
    t0 = time.perf_counter()
    args = ["recipe", recipe, "--out", str(out), "--stop-stage", "5", "--no-progress"]
    if cli(args + [a for s in sets for a in ("--set", s)]):
        raise SystemExit(f"recipe run in {out} failed")
    return time.perf_counter() - t0


def _align(books: Path, out: Path, model: Path, max_s: float) -> float:
    if (out / "summary.json").is_file():
        return 0.0
    t0 = time.perf_counter()
    if cli(["align", str(books), "--model", str(model), "--lang", "de", "--out", str(out), "--max-s", str(max_s),
            "--overwrite"]):
        raise SystemExit("align failed")
    return time.perf_counter() - t0


def _minutes(utts) -> float:
    return round(sum(u.duration for u in utts) / 60, 3)


def segment_facts(true_train: Path, aligned: Path) -> dict:
    """Minutes of the true train split against the aligned segments: all, kept, marked (with their flags)."""
    truth, segments = read_manifest(true_train), read_manifest(aligned)
    kept = [u for u in segments if not is_marked(u)]
    marked = [u for u in segments if is_marked(u)]
    flags: dict[str, int] = {}
    for u in marked:
        for flag in str(u.extra["align_flag"]).split(","):
            flags[flag] = flags.get(flag, 0) + 1
    return {"true_utterances": len(truth), "true_minutes": _minutes(truth), "segments": len(segments),
            "kept": len(kept), "kept_minutes": _minutes(kept), "marked": len(marked),
            "marked_minutes": _minutes(marked), "marked_by_flag": flags}


def same_test_split(true_run: Path, aligned_run: Path) -> bool:
    """Both runs' stage 0 made the same test split: the same ids, texts and durations, and the same audio bytes."""
    a, b = (read_manifest(run / "data" / "test.jsonl") for run in (true_run, aligned_run))
    if [(u.uid, u.text, u.duration) for u in a] != [(u.uid, u.text, u.duration) for u in b]:
        return False
    return all(sha256_files([x.audio_filepath]).digest() == sha256_files([y.audio_filepath]).digest()
               for x, y in zip(a, b))


def start_accuracy(books: dict, aligned: Path, tolerance_s: float = 0.2) -> dict:
    """How near each true utterance start lies to an aligned segment start (``align_start``) of its chapter.

    Starts only: the recipe's clips carry noise at ``data.snr_db`` (30 dB in de-synth), which the 1 %-of-peak rule
    of ``books.speech_edges`` takes for speech through espeak's trailing silence, so true *ends* are not measurable
    this way (``align_accuracy.py`` measures both on clean clips).
    """
    rows = [json.loads(line) for line in aligned.read_text(encoding="utf-8").splitlines()]
    errors = []
    for book in books["books"]:
        starts = np.array([r["align_start"] for r in rows if r["id"].startswith(book["name"] + "-")])
        errors += [float(np.abs(starts - t["start"]).min()) for t in book["utterances_truth"]]
    errors = np.array(errors)
    return {"starts": len(errors), "within": int((errors <= tolerance_s).sum()), "tolerance_s": tolerance_s,
            "median_error_s": round(float(np.median(errors)), 3),
            "p95_error_s": round(float(np.percentile(errors, 95)), 3)}


def segments_against_truth(books: dict, aligned: Path, tolerance_s: float = 0.2, trailing_s: float = 0.8) -> dict:
    """Each segment against the true utterance whose start is nearest its ``align_start``, kept and marked apart.

    ``right``: the same text, the start within ``tolerance_s``, the end at most ``trailing_s`` before the true end
    (which runs on through espeak's trailing silence under the noise, see :func:`start_accuracy`) and at most
    ``tolerance_s`` after it. ``edge_off``: the same text, an edge outside that. ``other_text``: not the sentence
    spoken there (a word left out, or another sentence): what would train a model on wrong text if kept.
    """
    counts = {kind: {"right": 0, "edge_off": 0, "other_text": 0} for kind in ("kept", "marked")}
    for line in aligned.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        u = _nearest_utterance(books, r)
        if u["text"] != r["text"]:
            verdict = "other_text"
        elif abs(u["start"] - r["align_start"]) <= tolerance_s and -trailing_s <= r["align_end"] - u["end"] <= \
                tolerance_s:
            verdict = "right"
        else:
            verdict = "edge_off"
        counts["marked" if r.get("align_flag") else "kept"][verdict] += 1
    return counts


def _nearest_utterance(truth: dict, row: dict) -> dict:
    """The true utterance (of the segment's chapter) whose start is nearest the segment's ``align_start``."""
    book = next(b for b in truth["books"] if b["name"] == row["id"].rsplit("-", 1)[0])
    return min(book["utterances_truth"], key=lambda t: abs(t["start"] - row["align_start"]))


def true_clips_of_kept(truth: dict, aligned: Path, true_train: Path, out: Path) -> Path:
    """The true train split less the utterances whose aligned segment was marked: the data the marks lose, and
    nothing else changed (the true clips, the true boundaries). Written to ``out`` (absolute audio paths)."""
    lost = {_nearest_utterance(truth, r)["id"] for r in map(json.loads, aligned.read_text().splitlines())
            if r.get("align_flag")}
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(out, [u for u in read_manifest(true_train) if u.uid not in lost], relative=False)


def widened(aligned: Path, out: Path, context_s: float) -> Path:
    """``aligned``'s segments with up to ``context_s`` of audio before the first and after the last letter
    (``align_start``/``align_end``; at most half the gap to the neighbouring segment, within the file), instead of
    ``align``'s 0.1 s. Written to ``out`` (absolute audio paths)."""
    utts = read_manifest(aligned)
    edges = {}
    for u in utts:
        edges.setdefault(u.audio_filepath, []).append((u.extra["align_start"], u.extra["align_end"]))
    for spans in edges.values():
        spans.sort()
    rows = []
    for u in utts:
        spans = edges[u.audio_filepath]
        k = spans.index((u.extra["align_start"], u.extra["align_end"]))
        a, b = spans[k]
        before = a - spans[k - 1][1] if k else a
        after = spans[k + 1][0] - b if k + 1 < len(spans) else audio_info(u.audio_filepath).duration_s - b
        start = a - min(context_s, before / 2 if k else before)
        end = b + min(context_s, after / 2 if k + 1 < len(spans) else after)
        rows.append(replace(u, offset=round(start, 3), duration=round(end - start, 3)))
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(out, rows, relative=False)


def comparison(true_run: Path, aligned_run: Path) -> dict:
    """Per decoder: both systems' WER/CER with intervals, whether aligned lies inside true's interval, p-values."""
    out = {}
    for decoder, folder in SYSTEMS.items():
        t = load_evaluation(true_run / "eval" / folder, f"true ({decoder})")
        a = load_evaluation(aligned_run / "eval" / folder, f"aligned ({decoder})")
        # One-sided each way (results.compare: p = share of resamples where the system is not better than the base).
        rows = {r["name"]: r for r in compare([t, a], baseline=t.name)[1]}
        back = {r["name"]: r for r in compare([t, a], baseline=a.name)[1]}
        row = {}
        for name, ev in (("true", t), ("aligned", a)):
            s = ev.summary
            row[name] = {k: s.get(k) for k in ("wer", "wer_ci95", "cer", "cer_ci95", "n_utterances")}
            decoder_settings = s.get("decoder") or {}
            if decoder_settings.get("lm_dir"):  # tuned on dev by stage 5: the same grid for every run
                row[name].update(lm_weight=decoder_settings["lm_weight"], word_score=decoder_settings["word_score"])
        lo, hi = row["true"]["cer_ci95"]
        row["aligned_cer_inside_true_ci95"] = lo <= row["aligned"]["cer"] <= hi
        row["p_aligned_better"] = {"cer": rows[a.name]["p_cer"], "wer": rows[a.name]["p_wer"]}
        row["p_true_better"] = {"cer": back[t.name]["p_cer"], "wer": back[t.name]["p_wer"]}
        row["paired_utterances"] = rows[a.name]["n_paired"]
        out[decoder] = row
    return out


def _train_facts(run: Path) -> dict:
    s = json.loads((run / "train" / "train_summary.json").read_text())
    return {k: s.get(k) for k in ("steps", "wall_s", "cpu_s", "train_minutes", "train_utterances", "skipped")}


def markdown(result: dict) -> str:
    lines = []
    for label, one in result["passes"].items():
        if "segments" not in one:  # the lost-minutes control (true clips) or widened segments
            lines += [f"{label}: {one['utterances']} utterances, {one['minutes']:.2f} min", ""]
        else:
            seg = one["segments"]
            lines += [f"{label}: aligned with {one['model']}",
                      f"true train: {seg['true_utterances']} utterances, {seg['true_minutes']:.2f} min; aligned: "
                      f"{seg['segments']} segments, {seg['kept']} kept ({seg['kept_minutes']:.2f} min), "
                      f"{seg['marked']} marked ({seg['marked_minutes']:.2f} min: {seg['marked_by_flag']})",
                      "utterance starts within {tolerance_s} s of a segment start: {within} of {starts} (median "
                      "error {median_error_s} s)".format(**one["start_accuracy"]),
                      f"segments against the true utterances: {one['against_truth']}", ""]
        lines += ["| decoder | train data | CER % [95% CI] | WER % [95% CI] | p (aligned better), CER / WER "
                  "| p (true better), CER / WER |", "|---|---|---|---|---|---|"]
        for decoder, row in one["comparison"].items():
            for name in ("true", "aligned"):
                r = row[name]
                cells = [f"{100 * r[k]:.2f} [{100 * r[k + '_ci95'][0]:.2f}, {100 * r[k + '_ci95'][1]:.2f}]"
                         for k in ("cer", "wer")]
                p = (f"{row['p_aligned_better']['cer']:.3f} / {row['p_aligned_better']['wer']:.3f} | "
                     f"{row['p_true_better']['cer']:.3f} / {row['p_true_better']['wer']:.3f}") if name == "aligned" \
                    else " | "
                lines.append(f"| {decoder} | {label if name == 'aligned' else name} | {cells[0]} | {cells[1]} | {p} |")
        lines.append("")
    return "\n".join(lines)


def aligned_pass(out: Path, label: str, recipe: str, sets: list[str], model: Path, max_s: float, truth: dict,
                 walls: dict) -> dict:
    """Align ``OUT/books`` with ``model`` into ``OUT/<label>-segments``, train the recipe on them in ``OUT/<label>``
    and compare it with ``OUT/true``."""
    segments = out / f"{label}-segments"
    walls[f"{label}_align_s"] = _align(out / "books", segments, model, max_s)
    walls[f"{label}_recipe_s"] = _recipe(recipe, out / label,
                                         [*sets, f"data.train_manifest={(segments / 'manifest.jsonl').resolve()}"])
    return {"model": str(model),
            "segments": segment_facts(out / "true" / "data" / "train.jsonl", segments / "manifest.jsonl"),
            "start_accuracy": start_accuracy(truth, segments / "manifest.jsonl"),
            "against_truth": segments_against_truth(truth, segments / "manifest.jsonl"),
            **against_true(out, label)}


def against_true(out: Path, label: str) -> dict:
    """The run ``OUT/<label>``'s training facts and its comparison with ``OUT/true`` on the same test split."""
    return {"train": _train_facts(out / label), "same_test_split": same_test_split(out / "true", out / label),
            "comparison": comparison(out / "true", out / label)}


def run(out: Path, recipe: str, chapters: int, model: Path, max_s: float, sets: list[str], seed: int = 0,
        second_pass: bool = False, lost_control: bool = False, context_s: float | None = None) -> dict:
    """Steps 1-5 of the module docstring (and the second pass); writes ``OUT/comparison.json`` and returns it."""
    machine = {"git": git_state(), "load_before": loadavg(), "busy_before": other_heavy_processes()}
    walls = {"true_recipe_s": _recipe(recipe, out / "true", sets)}
    books = out / "books"
    if not (books / "truth.json").is_file():
        write_chapters(read_manifest(out / "true" / "data" / "train.jsonl"), books, chapters, seed)
    truth = json.loads((books / "truth.json").read_text())
    passes = {"aligned": aligned_pass(out, "aligned", recipe, sets, model, max_s, truth, walls)}
    if lost_control:
        kept = true_clips_of_kept(truth, out / "aligned-segments" / "manifest.jsonl",
                                  out / "true" / "data" / "train.jsonl", out / "true-kept-clips" / "train.jsonl")
        walls["true_kept_recipe_s"] = _recipe(recipe, out / "true-kept", [*sets, f"data.train_manifest={kept}"])
        clips = read_manifest(kept)
        passes["true clips of the kept segments"] = {"manifest": str(kept), "utterances": len(clips),
                                                     "minutes": _minutes(clips), **against_true(out, "true-kept")}
    if context_s is not None:
        label = f"aligned, {context_s:g} s context"
        wide = widened(out / "aligned-segments" / "manifest.jsonl", out / "wide-segments" / "manifest.jsonl",
                       context_s)
        walls["wide_recipe_s"] = _recipe(recipe, out / "aligned-wide", [*sets, f"data.train_manifest={wide}"])
        kept = [u for u in read_manifest(wide) if not is_marked(u)]
        passes[label] = {"manifest": str(wide), "utterances": len(kept), "minutes": _minutes(kept),
                         **against_true(out, "aligned-wide")}
    if second_pass:
        adapted = trained_model_dir(out / "aligned" / "train", "best")
        passes["realigned"] = aligned_pass(out, "realigned", recipe, sets, adapted, max_s, truth, walls)
    result = {"recipe": recipe, "sets": sets,
              "books": {**truth,
                        "books": [{k: b[k] for k in ("name", "minutes", "utterances")} for b in truth["books"]]},
              "train_true": _train_facts(out / "true"), "passes": passes,
              "wall_s_this_call": {k: round(v, 1) for k, v in walls.items()},
              "machine": {**machine, "load_after": loadavg()}}
    (out / "comparison.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="de-synth", help="recipe (default de-synth, the demo's)")
    p.add_argument("--chapters", type=int, default=3, help="books the train split is cut into (default 3)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="alignment model (default the English source)")
    p.add_argument("--max-s", type=float, default=15.0, help="align --max-s (the recipe's train.data.max_utt_s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (recipe num_threads; default 1)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for both runs (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="pauses between the books' utterances")
    p.add_argument("--lost-control", action="store_true",
                   help="also train on the true clips less the utterances whose aligned segment was marked: what the "
                        "marked minutes alone cost")
    p.add_argument("--context-s", type=float, default=None,
                   help="also train on the first pass's segments widened to this much context around their letters "
                        "(align adds 0.1 s; the recipe's clips carry espeak's silences)")
    p.add_argument("--second-pass", action="store_true",
                   help="also align the books again with the adapted model of the aligned run and train on that")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "bench" / "aligned-train")
    args = p.parse_args(argv)
    if args.chapters < 1:
        p.error("--chapters must be >= 1")
    sets = ["baseline.enabled=false", f"num_threads={args.threads}", *args.sets]
    result = run(args.out, args.recipe, args.chapters, args.model, args.max_s, sets, args.seed,
                 args.second_pass, args.lost_control, args.context_s)
    print(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
