"""``asr-transfer synth --lang de --minutes 30 --out DIR``: a synthetic espeak-ng corpus (wavs + manifests)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..text import LANGUAGES

VOICE_SET_CHOICES = ("target", "source", "held-out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lang", required=True, choices=LANGUAGES, help="language of text and voice")
    parser.add_argument("--out", required=True, type=Path, help="output folder (wavs/, *.jsonl, corpus.json)")
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of train audio (default 30)")
    parser.add_argument("--text", type=Path, action="append", metavar="FILE",
                        help="text file(s) to read sentences from (plain, fortune or roff; .gz ok); repeatable. "
                             "Default: installed Debian packages (fortunes-de, fortunes, fortunes-es, manpages-fr/-nl)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sentence order, voices, speeds, pitches, noise")
    parser.add_argument("--voices", choices=VOICE_SET_CHOICES, default="target",
                        help="espeak variant set for train (dev/test always use held-out); 'source' is for the "
                             "English source model")
    parser.add_argument("--snr-db", type=float, default=None, help="add white/pink noise at this SNR (dB)")
    parser.add_argument("--dev-minutes", type=float, default=None,
                        help="dev audio minutes (default 10%% of --minutes, at most 10)")
    parser.add_argument("--test-minutes", type=float, default=None,
                        help="test audio minutes (default 10%% of --minutes, at most 10)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in --out")


def run(args: argparse.Namespace) -> int:
    import json

    from ..corpora.synth import prepare_synth

    started = time.perf_counter()
    outputs = prepare_synth(
        args.lang, args.out, args.minutes, seed=args.seed, text_files=args.text, voice_set=args.voices,
        snr_db=args.snr_db, dev_minutes=args.dev_minutes, test_minutes=args.test_minutes, jobs=args.jobs,
        overwrite=args.overwrite,
    )
    record = json.loads(outputs["corpus"].read_text(encoding="utf-8"))
    for split, info in record["splits"].items():
        print(f"{split:5s} {info['utterances']:6d} utterances {info['minutes']:8.2f} min "
              f"{len(info['speakers']):3d} voices -> {outputs[split]}")
    build = record.get("build", {})
    print(f"built in {build.get('wall_s', time.perf_counter() - started):.1f} s with {build.get('jobs')} jobs "
          f"({build.get('audio_minutes_per_wall_minute')} audio minutes per wall minute; "
          f"{build.get('synth_audio_minutes_per_wall_minute')} after {build.get('text_s')} s of text extraction); "
          f"record: {outputs['corpus']}")
    return 0
