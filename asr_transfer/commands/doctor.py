"""``asr-transfer doctor``: versions, hardware and whether the install works, for pasting into bug reports.

Exit 1 with one line when the install is broken (a torch/torchaudio pair that does not load, a missing library);
else one ``name: value`` line each: package and library versions, libsndfile, espeak-ng and the Debian packages,
the CPU's bf16 support, CUDA and the GPUs, and whether the shipped source model loads.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--install-check", action="store_true",
                        help="only import what the tool needs (what 'make install' runs after every install)")


def run(args: argparse.Namespace) -> int:
    from ..environment import main

    return main(["--install-check"] if args.install_check else [])
