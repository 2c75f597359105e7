"""``asr-transfer recipe RECIPE [--stage N] [--stop-stage M] [--set key=value …] [--force] [--out DIR] [--cv-root
DIR]``.

RECIPE is a name under ``recipes/`` (``de-synth``, ``de``, ``nl-synth``, …) or a path to a recipe.toml. Stages:
0 data, 1 validate, 2 vocab + LM, 3 baseline, 4 train (+ control), 5 evaluate, 6 report. Finished stages are
skipped on rerun unless their config changed or ``--force`` is given.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe name under recipes/ or a path to a recipe.toml")
    p.add_argument("--stage", type=int, default=0, metavar="N", help="first stage to run (default: %(default)s)")
    p.add_argument("--stop-stage", type=int, default=None, metavar="M", help="last stage to run (default: the last, 7)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set data.minutes=2 --set train.stages.0.steps=50 (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun the selected stages even if they are done")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: exp/<recipe name>)")
    p.add_argument("--cv-root", default=None, metavar="DIR",
                   help="Common Voice release folder (cv-corpus-N or its <lang>/ folder) for data.kind = commonvoice")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument(
        "--help-config", action="store_true", help="list every recipe key with its default and help, then exit"
    )
    p.add_argument("--show-config", action="store_true", help="print the resolved recipe config as JSON and exit")
    p.add_argument("--no-progress", action="store_true", help="no training progress bars")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..config import describe, to_dict
    from ..errors import UserError
    from ..recipe import RecipeConfig, RecipeRunner, find_recipe, list_recipes, load_recipe

    if args.help_config:
        for key, default, text in describe(RecipeConfig):
            print(f"{key:24s} {default:28s} {text}")
        print(
            "train.*                  (see `asr-transfer train --help-config`; model.source, model.lang, model.vocab, "
            "data.train_manifest, data.dev_manifest and train.output_dir are set by the runner)"
        )
        return 0
    if args.list:
        from ..recipe import read_config_data

        for name in list_recipes():
            data = read_config_data(find_recipe(name))
            print(f"{name:12s} {data.get('description', '')}")
        return 0
    if not args.recipe:
        raise UserError("give a recipe name (see `asr-transfer recipe --list`) or a path to a recipe.toml")
    name, config, path = load_recipe(args.recipe, args.overrides)
    if args.show_config:
        print(json.dumps({"name": name, **to_dict(config)}, indent=2, ensure_ascii=False))
        return 0
    out = Path(args.out) if args.out else Path("exp") / name
    print(f"recipe {name} ({path}): {config.description or config.lang} -> {out}")
    runner = RecipeRunner(name, config, out, cv_root=args.cv_root, force=args.force, progress=not args.no_progress)
    runner.run(args.stage, args.stop_stage)
    stop = max(runner.stages) if args.stop_stage is None else args.stop_stage
    html = out / "report" / "report.html"
    if stop >= max(runner.stages) and html.is_file():
        from ..recipe_stages import results_table

        print()
        print(results_table(runner))
        print(f"\nreport: {html.resolve()}")
    return 0
