"""``asr-transfer`` command line: a thin dispatcher over ``asr_transfer.commands.<name>``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen command's module is
imported, so ``asr-transfer --help`` does not pay for torch. Exit codes: 0 ok, 1 user/data error (one line on stderr,
no traceback), 2 usage error (argparse).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Sequence

from . import __version__
from .errors import UserError

# name -> (module under asr_transfer.commands, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "make a synthetic speech corpus with espeak-ng (wavs + train/dev/test manifests)"),
    "prepare": ("prepare", "import a corpus (commonvoice, folder, tabular, librispeech) into JSONL manifests"),
    "align": ("align", "align long recordings with their text into a manifest of utterance segments"),
    "validate": ("validate", "check every line of a manifest and print a summary table"),
    "vocab": ("vocab", "build a character vocabulary (base-960h layout) from manifests"),
    "lm": ("lm", "build an n-gram language model from normalised text"),
    "tune-lm": ("tune_lm", "grid-search LM weight (alpha) and word bonus (beta) on a dev manifest"),
    "train": ("train", "staged transfer training from a config file"),
    "pseudo-label": ("pseudo_label", "label untranscribed audio with a model (+ LM), with confidences; keep the "
                     "confident share (self-training)"),
    "pretrain-source": ("pretrain_source", "train the English source model from scratch on synthetic speech"),
    "evaluate": ("evaluate", "WER/CER of a model on a manifest (summary.json + utterances.jsonl)"),
    "baseline": ("baseline", "source-only baselines (raw English head, zero-shot mapped head, zero-shot + LM)"),
    "report": ("report", "markdown + HTML report comparing evaluations and runs"),
    "transcribe": ("transcribe", "transcribe audio files (txt/json/srt/vtt/tsv)"),
    "export-onnx": ("export_onnx", "export a model to ONNX (fp32 + int8) for transcribe --engine onnx"),
    "recipe": ("recipe", "run a per-language recipe stage by stage"),
    "curve": ("curve", "the data-efficiency curve of a recipe: test CER/WER against training minutes per system"),
    "runs": ("runs", "list and compare run folders"),
    "reproduce": ("reproduce", "re-run a recorded run from its saved config"),
    "doctor": ("doctor", "check the install; print versions, hardware and CUDA for bug reports"),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(f"asr_transfer.commands.{module}") is not None


def version_text() -> str:
    """Package version plus the versions of the libraries that decide behaviour (libsndfile above all)."""
    parts = [f"asr-transfer {__version__}"]
    try:
        import soundfile

        parts.append(f"libsndfile {soundfile.__libsndfile_version__}")
    except Exception as exc:  # pragma: no cover - broken install
        parts.append(f"libsndfile unavailable ({exc})")
    for name in ("torch", "torchaudio", "transformers"):
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:  # pragma: no cover
            parts.append(f"{name} missing")
    return ", ".join(parts)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print versions (package, libsndfile, torch) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr-transfer",
        description="Teach an English wav2vec2 CTC speech recogniser another language with little data.",
        epilog="Exit codes: 0 ok, 1 a problem with your data/config/model (one line on stderr), 2 usage error. "
               "Run 'asr-transfer COMMAND --help' for a command's options.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if not _available(module):
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # import only the module that will run
            importlib.import_module(f"asr_transfer.commands.{module}").add_arguments(p)
    return parser


def _quiet_library_progress() -> None:
    """transformers draws a bar per weight file on every load/save; our own bars say what is going on."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return
    hf_logging.disable_progress_bar()


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` (``PATH -> PATH2: reason`` for a rename) of an OSError, on one line."""
    where = os.fsdecode(exc.filename) if not isinstance(exc.filename, int) else f"file descriptor {exc.filename}"
    if exc.filename2 is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    return f"{where}: {exc.strerror or exc}".replace("\n", " ")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, usage errors 2
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"asr_transfer.commands.{COMMANDS[args.command][0]}")
    _quiet_library_progress()
    try:
        try:
            return int(module.run(args) or 0)
        except BaseException as exc:
            if "asr_transfer.provenance" in sys.modules:  # only then can a run record be open
                sys.modules["asr_transfer.provenance"].record_failure(exc)
            raise
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # About a path the user gave (a full disk, a folder where a file goes, no permission): theirs to fix, in
        # one line. An OSError that names no path is not about their input: a bug, so it keeps its traceback.
        if exc.filename is None:
            raise
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
