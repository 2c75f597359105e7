"""``asr-transfer train CONFIG [--set key=value …] [--resume]``."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="run config (TOML or JSON); see --help-config for every key")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.output_dir=runs/x --set stages.0.lr=1e-3 (repeatable)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in train.output_dir from its newest valid checkpoint"
    )
    p.add_argument("--allow-inexact-resume", action="store_true",
                   help="resume even if the config, a manifest fingerprint or RNG state differ from the checkpoint")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a source model with pickled pytorch_model.bin / .pt weights (same as --set "
                        "model.allow_pickle=true); unpickling can run arbitrary code: only for sources you trust")
    p.add_argument(
        "--help-config", action="store_true", help="list every config key with its default and help, then exit"
    )
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                   help="checkpoint and pause after N optimiser steps in this invocation (continue with --resume)")
    p.add_argument("--time-budget-min", type=float, default=None, metavar="MIN",
                   help="checkpoint and pause once this invocation has run MIN minutes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..config import TrainConfig, describe, load_config

    if args.help_config:
        for key, default, text in describe(TrainConfig):
            print(f"{key:32s} {default:28s} {text}")
        return 0
    from ..errors import ConfigError
    from ..training.loop import train

    if args.config is None and not args.overrides:
        raise ConfigError("give a config file (or --set keys); see asr-transfer train --help-config")
    overrides = [*args.overrides, *(["model.allow_pickle=true"] if args.allow_pickle else [])]
    config = load_config(TrainConfig, args.config, overrides)
    try:
        out = train(config, resume=args.resume, allow_inexact_resume=args.allow_inexact_resume,
                    progress=not args.no_progress, stop_after_steps=args.stop_after_steps,
                    time_budget_s=args.time_budget_min * 60 if args.time_budget_min else None)
    except ConfigError as exc:
        if exc.path is None and args.config is not None:  # schedule checks run later; still name the config file
            raise ConfigError(str(exc), path=args.config) from None
        raise
    print(f"final model: {out}" if out.name != "checkpoints" else f"paused; checkpoints in {out}")
    return 0
