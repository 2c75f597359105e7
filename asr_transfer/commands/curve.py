"""``asr-transfer curve RECIPE [--minutes M …] [--systems a,b] [--steps N] [--full] [--out DIR] [--set key=value …]``.

The data-efficiency curve of a recipe: test CER/WER against minutes of training audio for transfer (mapped head),
transfer (random head), from scratch and zero-shot, with 95% intervals. Points are run folders under
``<out>/curve/``; a rerun skips finished points and resumes a half-trained one. See :mod:`asr_transfer.curve`.
"""

from __future__ import annotations

import argparse

# Measured 2026-12-03: `asr-transfer curve de-synth --minutes 1 5 20`, 2940 s wall (README "Few-shot").
DEFAULT_TIME = ("the default (1, 5 and 20 min, 120 steps a point, 3 trained systems + zero-shot) took 49 min for "
                "de-synth on two CPU cores shared with other jobs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..curve import DEFAULT_MINUTES, DEFAULT_STEPS, FULL_MINUTES, SYSTEMS

    p.description = (f"Test CER/WER against minutes of training audio, for several systems. Time: {DEFAULT_TIME}. "
                     "--full sweeps more sizes with the recipe's whole schedule (hours on a CPU; a GPU is advised).")
    p.add_argument("recipe", help="recipe name under recipes/ or a path to a recipe.toml")
    p.add_argument("--minutes", type=float, nargs="+", default=None, metavar="M",
                   help=f"train sizes in minutes (default {' '.join(f'{m:g}' for m in DEFAULT_MINUTES)}; --full "
                        f"{' '.join(f'{m:g}' for m in FULL_MINUTES)}); the data is made once at the largest")
    p.add_argument("--systems", default=",".join(SYSTEMS), metavar="A,B",
                   help="comma-separated subset of %(default)s")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help=f"optimiser steps per trained point: the recipe's stages scaled to N in all (default "
                        f"{DEFAULT_STEPS}; --full: the recipe's schedule as it is); scratch gets as many in one stage")
    p.add_argument("--full", action="store_true", help="more sizes and the recipe's full training schedule")
    p.add_argument("--no-lm", action="store_true", help="greedy only (no beam + LM scoring)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set eval.tune_lm=false (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: exp/<recipe>-curve, with --full exp/<recipe>-curve-full); the "
                        "shared stages 0-3 live here as in a recipe run, the points under DIR/curve/")
    p.add_argument("--cv-root", default=None, metavar="DIR", help="Common Voice release folder (commonvoice recipes)")
    p.add_argument("--force", action="store_true", help="rerun the shared stages and retrain every point")
    p.add_argument("--no-progress", action="store_true", help="no training progress bars")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..curve import curve, curve_options
    from ..recipe import load_recipe

    data = {"systems": [s.strip() for s in args.systems.split(",") if s.strip()], "lm": not args.no_lm}
    if args.minutes is not None:
        data["minutes"] = args.minutes
    if args.steps is not None:
        data["steps"] = args.steps
    options = curve_options(data, full=args.full)
    name, config, path = load_recipe(args.recipe, args.overrides)
    out = Path(args.out) if args.out else Path("exp") / f"{name}-curve{'-full' if args.full else ''}"
    print(f"curve {name} ({path}) -> {out}: {', '.join(options.systems)} at "
          f"{', '.join(f'{m:g}' for m in sorted(options.minutes))} min")
    record = curve(name, config, out, options, cv_root=args.cv_root, force=args.force, progress=not args.no_progress)
    print(f"\nreport: {Path(record['files']['html']).resolve()}\nplot: {Path(record['files']['png']).resolve()}")
    return 0
