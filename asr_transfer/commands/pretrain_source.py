"""``asr-transfer pretrain-source [--resume] [--time-budget-min N]``: train ``models/en-synth-small`` from scratch."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training.pretrain import PretrainOptions

    d = PretrainOptions()
    p.add_argument(
        "--config", default=d.config, help=f"TrainConfig with model.init_config and the stages (default {d.config})"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set stages.1.steps=2000 (repeatable)")
    p.add_argument("--out", default=d.out, help=f"exported model folder (default {d.out})")
    p.add_argument(
        "--corpus-dir",
        default=d.corpus_dir,
        help=f"synthetic English corpus folder, made or reused (default {d.corpus_dir})",
    )
    p.add_argument("--runs-dir", default=d.runs_dir, help=f"folder of the training runs (default {d.runs_dir})")
    p.add_argument("--minutes", type=float, default=d.minutes, help=f"train audio minutes (default {d.minutes:g})")
    p.add_argument(
        "--dev-minutes", type=float, default=d.dev_minutes, help=f"dev audio minutes (default {d.dev_minutes:g})"
    )
    p.add_argument(
        "--test-minutes", type=float, default=d.test_minutes, help=f"test audio minutes (default {d.test_minutes:g})"
    )
    p.add_argument("--snr-db", type=float, default=d.snr_db, help=f"corpus noise SNR in dB (default {d.snr_db:g})")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed, help="seed of sentences, voices, speeds, noise")
    p.add_argument("--jobs", type=int, default=d.jobs, help="parallel espeak-ng processes")
    p.add_argument(
        "--curriculum-stages",
        type=int,
        default=d.curriculum_stages,
        help=f"leading stages trained on short utterances only (default {d.curriculum_stages}; 0: no curriculum)",
    )
    p.add_argument("--curriculum-max-utt-s", type=float, default=d.curriculum_max_utt_s,
                   help=f"longest utterance in the curriculum run, seconds (default {d.curriculum_max_utt_s:g})")
    p.add_argument(
        "--realspeech", default=d.realspeech, help="real English manifest to evaluate on (skipped if missing)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the runs in --runs-dir from their newest checkpoints"
    )
    p.add_argument("--time-budget-min", type=float, default=None, metavar="MIN",
                   help="pause (checkpoint) after MIN minutes of training in this invocation; continue with --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..training.pretrain import PretrainOptions, command_line, format_summary, pretrain_source

    argv = [a for a in sys.argv[1:] if a != "--resume"]
    options = PretrainOptions(
        config=args.config,
        overrides=tuple(args.overrides),
        out=args.out,
        corpus_dir=args.corpus_dir,
        runs_dir=args.runs_dir,
        minutes=args.minutes,
        dev_minutes=args.dev_minutes,
        test_minutes=args.test_minutes,
        snr_db=args.snr_db,
        corpus_seed=args.corpus_seed,
        jobs=args.jobs,
        curriculum_stages=args.curriculum_stages,
        curriculum_max_utt_s=args.curriculum_max_utt_s,
        realspeech=args.realspeech or None,
        command=(
            command_line(["asr-transfer", *argv])
            if argv and argv[0] == "pretrain-source"
            else "asr-transfer pretrain-source"
        ),
    )
    budget = args.time_budget_min * 60 if args.time_budget_min else None
    result = pretrain_source(options, resume=args.resume, time_budget_s=budget, progress=not args.no_progress)
    print(format_summary(result))
    return 0
