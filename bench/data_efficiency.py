"""Data efficiency: test CER/WER against minutes of training audio, as a dated RESULTS.md section.

A thin call of the library's curve (:func:`asr_transfer.curve.curve`, the ``asr-transfer curve`` command): a recipe
(default ``de-synth``), its data made once at the largest size, nested prefixes of the train split, one run folder
per (system, minutes) point under ``--work-dir``, scored on the recipe's test split greedy and with its LM (tuned on
dev per model). Systems: transfer (mapped head), transfer (random head), from scratch (same steps, one stage
training everything), zero-shot. This script only adds the bench section: machine, load, commit, the table, the
figure and the raw JSON.

Default: the command's default (1, 5, 20 min; 120 steps a point). ``--full``: 1, 2, 5, 10, 20, 40 min with the
recipe's whole schedule (hours on 2 cores).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import common
from common import DEFAULT_MODEL, Section


def main(argv=None) -> int:
    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--recipe", default="de-synth", help="recipe name or recipe.toml path")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="the English source model (the recipe's source)")
    p.add_argument("--minutes-list", default=None, help="train sizes in minutes, comma-separated (default: the "
                                                        "command's; --full its full sweep)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per point (default: the command's)")
    p.add_argument("--systems", default="transfer,random-head,scratch,zero-shot")
    p.add_argument("--no-lm", action="store_true", help="greedy only")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, as for `asr-transfer curve --set`")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    from asr_transfer.curve import curve, curve_options, curve_table
    from asr_transfer.recipe import load_recipe

    source = str(common.require_model(args.model))
    data = {"systems": args.systems.split(","), "lm": not args.no_lm}
    if args.minutes_list:
        data["minutes"] = [float(x) for x in args.minutes_list.split(",")]
    if args.steps:
        data["steps"] = args.steps
    options = curve_options(data, full=args.full)
    name, config, _ = load_recipe(args.recipe, [f"source={source}", f"data.seed={args.seed}", *args.overrides])
    work = Path(args.work_dir) / f"data_efficiency-{name}{'-full' if args.full else ''}"

    section = Section(f"data_efficiency: {name}, test CER/WER vs training minutes" + (" (--full)" if args.full else ""))
    section.start()
    section.model = source
    record = curve(name, config, work, options, progress=False)
    results_path = Path(args.results)
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())  # one figure per results section
    png = results_path.parent / "figures" / f"data_efficiency{'-full' if args.full else ''}-{stamp}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(record["files"]["png"], png)
    section.add(f"`asr_transfer.curve.curve` on recipe `{name}`; run folders under `{work}`; report "
                f"`{record['files']['html']}`. Test: {record['test']['utterances']} utterances, "
                f"{record['test']['minutes']:g} min.\n")
    section.add(f"![CER and WER vs training minutes](figures/{png.name})\n")
    section.add("```\n" + curve_table(record) + "\n```\n")
    section.data = {k: record[k] for k in ("recipe", "minutes", "systems", "options", "schedule", "scratch_stage",
                                           "test", "points", "zero_shot", "wall_s")}
    section.data["png"] = str(png)
    section.append(results_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
