"""Data efficiency: test WER against minutes of German training audio, for four systems.

- ``transfer (mapped head)``: the English source, CTC head swapped with shared letters copied (the default);
- ``transfer (random head)``: the same, head initialised at random;
- ``from scratch``: the same architecture with every weight random (``model.from_scratch = true``), the same data and
  the same number of optimiser steps, trained in one stage that updates everything (staged freezing would only
  handicap random weights);
- ``source only``: the English model with the mapped head and no training (zero-shot), one number for all sizes.

Data: one synthetic German corpus (espeak-ng, noise at ``--snr-db``); the sweep's train sets are nested prefixes of
its train split, so every size is scored on the same test set, whose sentences and voices never occur in training.
The n-gram LM is built from the language's default text with every dev and test sentence excluded
(``lm.build_lm(exclude_manifests=...)``); its weight and word score are tuned on dev per model. The best dev
checkpoint of each run is scored; greedy and beam + LM WER are both reported. Writes a PNG and a table.

Default: 2 and 5 minutes with a short schedule (a few minutes on 2 cores). ``--full``: 2, 5, 10, 20, 40 minutes with
a longer schedule (hours on 2 cores).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import common
from common import DEFAULT_MODEL, Section, fmt, table

SYSTEMS = ("mapped", "random", "scratch")
LABELS = {"mapped": "transfer (mapped head)", "random": "transfer (random head)", "scratch": "from scratch",
          "source": "source only (zero-shot)"}


def transfer_stages(steps: list[int], top_k: int) -> list[dict]:
    head, top, full = steps
    return [
        {"name": "head", "train": ["head"], "lr": 2e-3, "steps": head, "warmup_ratio": 0.1},
        {"name": "top", "train": ["head", f"layers.-{top_k}:"], "lr": 3e-4, "steps": top, "warmup_ratio": 0.1},
        {"name": "all", "train": ["head", "layers", "feature_projection"], "lr": 1e-4, "steps": full,
         "warmup_ratio": 0.1, "layer_decay": 0.9},
    ]


def scratch_stages(steps: list[int], lr: float) -> list[dict]:
    return [{"name": "all", "train": ["feature_encoder", "feature_projection", "pos_conv", "encoder_norm", "layers",
                                      "head"], "lr": lr, "steps": sum(steps), "warmup_ratio": 0.1}]


def train_system(system: str, source: str, vocab: Path, train: Path, dev: Path, out: Path, steps: list[int],
                 top_k: int, max_batch_s: float, seed: int, scratch_lr: float) -> tuple[Path, float]:
    import shutil

    from asr_transfer.config import TrainConfig, load_config
    from asr_transfer.training.loop import train as run_train

    shutil.rmtree(out, ignore_errors=True)
    total = sum(steps)
    base = {
        "model": {"source": source, "lang": "de", "vocab": str(vocab),
                  "head_init": "random" if system == "random" else "mapped", "from_scratch": system == "scratch"},
        "data": {"train_manifest": str(train), "dev_manifest": str(dev), "max_batch_s": max_batch_s,
                 "max_utt_s": min(20.0, max_batch_s)},
        "train": {"output_dir": str(out), "seed": seed, "eval_every": max(10, total // 6), "save_every": 10**9,
                  "log_every": 10, "keep_last": 1},
        "stages": scratch_stages(steps, scratch_lr) if system == "scratch" else transfer_stages(steps, top_k),
    }
    cfg = load_config(TrainConfig, None, (), base=base)
    t0 = time.perf_counter()
    final = run_train(cfg, progress=False)
    wall = time.perf_counter() - t0
    best = out / "best"
    return (best if (best / "config.json").is_file() else final), wall


def score(model, test: Path, dev: Path, lm_dir: Path | None, out: Path, alphas, betas) -> dict:
    from asr_transfer.evaluation import evaluate, tune_lm

    greedy = evaluate(str(model), str(test), decoder="greedy", lang="de", device="cpu", out_dir=out / "greedy")
    res = {"wer": greedy["wer"], "cer": greedy["cer"], "wer_ci95": greedy.get("wer_ci95")}
    if lm_dir is not None:
        tuned = tune_lm(str(model), str(dev), str(lm_dir), alphas, betas, lang="de", device="cpu", out_dir=out / "tune")
        best = tuned["best"]
        lm = evaluate(str(model), str(test), decoder="beam", lm_dir=str(lm_dir), lm_weight=best["lm_weight"],
                      word_score=best["word_score"], lang="de", device="cpu", out_dir=out / "lm")
        res.update(wer_lm=lm["wer"], cer_lm=lm["cer"], lm_weight=best["lm_weight"], word_score=best["word_score"])
    return res


def cached_lm(text_files, order: int, exclude: list[Path], lm_dir: Path, vocab: Path) -> dict:
    """Build the LM once; rebuilt when its sources, order, excluded manifests or vocabulary change."""
    from asr_transfer import lm
    from asr_transfer.lm import build_lm

    key = {"text": [str(t) for t in text_files], "order": order, "exclude": [common.short_hash(p) for p in exclude],
           "vocab": common.short_hash(vocab), "lm_code": common.short_hash(Path(lm.__file__))}
    stamp = lm_dir / "bench-key.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == key and (lm_dir / "lm.json").is_file()):
        build_lm(text_files, "de", order=order, exclude_manifests=exclude, out_dir=lm_dir, vocab=vocab,
                 log=lambda *a: None)
        stamp.write_text(json.dumps(key))
    return json.loads((lm_dir / "lm.json").read_text())


def plot(results: dict, sizes: list[float], source: dict | None, path: Path, title: str) -> Path:
    """Two panels: test WER (greedy solid, beam + LM dashed) and greedy CER against training minutes (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = {"mapped": "tab:blue", "random": "tab:orange", "scratch": "tab:red"}
    for ax, metric in zip(axes, ("wer", "cer")):
        top = 20.0
        for system, by_size in results.items():
            xs = [m for m in sizes if m in by_size]
            ys = [100 * by_size[m][metric] for m in xs]
            ax.plot(xs, ys, "o-", color=colours[system], label=f"{LABELS[system]}, greedy")
            top = max([top, *ys])
            lm = [m for m in xs if f"{metric}_lm" in by_size[m]]
            if lm:
                ys = [100 * by_size[m][f"{metric}_lm"] for m in lm]
                ax.plot(lm, ys, "s--", color=colours[system], label=f"{LABELS[system]}, beam + LM")
                top = max([top, *ys])
        if source is not None:
            ax.axhline(100 * source[metric], color="grey", linestyle=":", label=LABELS["source"])
            top = max(top, 100 * source[metric])
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{m:g}" for m in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("German training audio (minutes)")
        ax.set_ylabel(f"test {metric.upper()} (%)")
        ax.set_ylim(0, top * 1.08)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="the English source model")
    p.add_argument("--minutes-list", default=None, help="train sizes in minutes (default 2,5; --full 2,5,10,20,40)")
    p.add_argument("--steps", default=None, help="head,top,all steps per run (default 30,40,40; --full 200,400,800)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="subset of mapped,random,scratch")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--max-batch-s", type=float, default=20.0)
    p.add_argument("--scratch-lr", type=float, default=5e-4)
    p.add_argument("--test-minutes", type=float, default=None, help="default 2; --full 5")
    p.add_argument("--dev-minutes", type=float, default=1.0)
    p.add_argument("--snr-db", type=float, default=20.0, help="noise in every split of the corpus")
    p.add_argument("--lm-order", type=int, default=4)
    p.add_argument("--no-lm", action="store_true", help="greedy only (no LM build, no beam search)")
    p.add_argument(
        "--lm-text", action="append", default=None, help="LM text file(s) (default: the language's default text)"
    )
    p.add_argument(
        "--train", default=None, help="own train manifest (with --dev and --test) instead of the synthetic corpus"
    )
    p.add_argument("--dev", default=None)
    p.add_argument("--test", default=None)
    p.add_argument("--alphas", default="0.5,1,2")
    p.add_argument("--betas", default="0,1,2")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    from asr_transfer.corpora.textsource import default_text_files
    from asr_transfer.evaluation import baseline
    from asr_transfer.manifest import read_manifest
    from asr_transfer.vocab import build_vocab, save_vocab

    source = str(common.require_model(args.model))
    sizes = [float(x) for x in (args.minutes_list or ("2,5,10,20,40" if args.full else "2,5")).split(",")]
    steps = [int(x) for x in (args.steps or ("200,400,800" if args.full else "30,40,40")).split(",")]
    systems = [s for s in args.systems.split(",") if s]
    test_minutes = args.test_minutes or (5.0 if args.full else 2.0)
    work = Path(args.work_dir) / ("data_efficiency-full" if args.full else "data_efficiency")
    alphas = [float(a) for a in args.alphas.split(",")]
    betas = [float(b) for b in args.betas.split(",")]

    section = Section("data_efficiency: WER vs German training minutes" + (" (--full)" if args.full else "")).start()
    section.model = source
    if args.train:
        if not (args.dev and args.test):
            raise SystemExit("error: --train needs --dev and --test")
        corpus = {"train": Path(args.train), "dev": Path(args.dev), "test": Path(args.test)}
        test_minutes = common.manifest_minutes(corpus["test"])
    else:
        corpus = common.synth_corpus(args.work_dir, "de", max(sizes), dev_minutes=args.dev_minutes,
                                     test_minutes=test_minutes, snr_db=args.snr_db, seed=args.seed)
    # One German vocabulary for every system and size (all the language's letters), so no size lacks a letter.
    vocab = save_vocab(build_vocab([u.text for u in read_manifest(corpus["train"])], "de", all_letters=True),
                       work / "vocab.json")
    lm_dir = None
    if not args.no_lm:
        lm_dir = work / "lm"

        lm_record = cached_lm(args.lm_text or default_text_files("de"), args.lm_order, [corpus["test"], corpus["dev"]],
                              lm_dir, vocab)
    base = baseline(source, str(corpus["test"]), target_vocab=str(vocab), lang="de", out_dir=work / "baseline",
                    device="cpu")
    source_res = {"wer": base["zero-shot"]["wer"], "cer": base["zero-shot"]["cer"], "raw_wer": base["raw"]["wer"]}
    results: dict[str, dict[float, dict]] = {s: {} for s in systems}
    for minutes in sizes:
        train = common.manifest_prefix(corpus["train"], minutes, work / f"train-{minutes:g}m.jsonl")
        for system in systems:
            model, wall = train_system(
                system,
                source,
                vocab,
                train,
                corpus["dev"],
                work / "runs" / f"{minutes:g}m-{system}",
                steps,
                args.top_k,
                args.max_batch_s,
                args.seed,
                args.scratch_lr,
            )
            res = score(
                model, corpus["test"], corpus["dev"], lm_dir, work / "eval" / f"{minutes:g}m-{system}", alphas, betas
            )
            res.update(train_s=wall, train_minutes=common.manifest_minutes(train), model=str(model))
            results[system][minutes] = res
            print(
                f"{minutes:g} min {system}: WER {res['wer']:.3f}"
                + (f", +LM {res['wer_lm']:.3f}" if "wer_lm" in res else "")
                + f" (train {wall:.0f}s)",
                flush=True,
            )

    results_path = Path(args.results)
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())  # one figure per results section
    png = results_path.parent / "figures" / f"data_efficiency{'-full' if args.full else ''}-{stamp}.png"
    plot(results, sizes, source_res, png, f"German synthetic test ({test_minutes:g} min, SNR {args.snr_db:g} dB)")
    rows = [[LABELS["source"], "–", source_res["wer"], None, source_res["cer"], None]]
    for system in systems:
        for minutes in sizes:
            r = results[system][minutes]
            rows.append([LABELS[system], f"{minutes:g}", r["wer"], r.get("wer_lm"), r["cer"], r["train_s"]])
    section.add(
        f"Synthetic German (espeak-ng, SNR {args.snr_db:g} dB white/pink noise), test {test_minutes:g} min / "
        f"dev {args.dev_minutes:g} min on held-out voices and sentences; source `{source}`. Transfer schedule "
        f"head/top-{args.top_k}/all = {'/'.join(map(str, steps))} steps, batches ≤ {args.max_batch_s:g} s; scratch: "
        f"{sum(steps)} steps training everything at lr {args.scratch_lr:g}. Best dev checkpoint scored. "
        + (
            f"LM: {args.lm_order}-gram ({lm_record['sentences_used']} sentences) from "
            f"{'the default German text' if not args.lm_text else ', '.join(args.lm_text)}, "
            f"{lm_record['sentences_excluded']} LM sentences dropped as (parts of) dev/test sentences; α/β tuned on "
            f"dev."
            if lm_dir
            else "No LM."
        )
        + "\n"
    )
    rel = png.relative_to(results_path.parent) if png.is_relative_to(results_path.parent) else png
    section.add(f"![WER vs training minutes]({rel})\n")
    section.add(
        table(["system", "train min", "test WER greedy", "test WER beam+LM", "test CER greedy", "train s"], rows) + "\n"
    )
    goals = []
    if 10.0 in sizes and "mapped" in systems:
        r = results["mapped"][10.0]
        goals.append(
            f"transfer at 10 min greedy WER ≤ 15%: {fmt(100 * r['wer'])}% — {'met' if r['wer'] <= 0.15 else 'MISSED'}"
        )
        if "wer_lm" in r:
            goals.append(f"with LM ≤ 10%: {fmt(100 * r['wer_lm'])}% — {'met' if r['wer_lm'] <= 0.10 else 'MISSED'}")
    top = max(sizes)
    if "mapped" in systems and "scratch" in systems:
        a, b = results["mapped"][top]["wer"], results["scratch"][top]["wer"]
        goals.append(
            f"transfer beats scratch at {top:g} min: {fmt(100 * a)}% vs {fmt(100 * b)}% — {'yes' if a < b else 'NO'}"
        )
    if goals:
        section.add("Goals (set for --full): " + "; ".join(goals) + ".\n")
    section.data = {
        "sizes": sizes,
        "steps": steps,
        "source_only": source_res,
        "results": {s: {f"{m:g}": r for m, r in by.items()} for s, by in results.items()},
        "lm": (
            {k: lm_record.get(k) for k in ("order", "sentences_used", "sentences_excluded", "ngram_counts", "build_s")}
            if lm_dir
            else None
        ),
        "png": str(png),
    }
    section.append(results_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
