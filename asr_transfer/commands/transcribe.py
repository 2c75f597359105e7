"""``asr-transfer transcribe``: audio files → text / json / srt / vtt / tsv.

Without ``--out`` the result goes to stdout (txt: one line per file, prefixed by the path when there are several;
json: one JSON object per line). With ``--out`` one ``<stem>.<fmt>`` file per input is written and a summary line
per file (duration, RTF, output path) is printed. Unreadable files are reported on one line each and skipped; the
exit code is 1 at the end if any file failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ..onnx_engine import ENGINES
from ..precision import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..writers import FORMATS

    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders or glob patterns")
    parser.add_argument("--model", required=True, help="model folder (or hub id in the local cache)")
    parser.add_argument("--recursive", action="store_true", help="include audio files in subfolders of folders")
    parser.add_argument("--format", choices=FORMATS, default="txt", help="output format (default: txt)")
    parser.add_argument("--out", type=Path, help="folder for one <stem>.<format> file per input (default: stdout)")
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy", help="CTC decoder")
    parser.add_argument("--lm", type=Path, help="LM folder from `asr-transfer lm` (needs --decoder beam)")
    parser.add_argument("--beam-size", type=int, default=None, help="beam width for --decoder beam (default 50)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): bf16 where the CPU (AMX, avx512_bf16) or GPU computes it natively, "
                             "else fp32 (with the ONNX engine: int8); bf16: weights and activations in bf16; "
                             "int8: dynamic quantisation (CPU)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="auto (default): ONNX Runtime when the model folder is, or holds in onnx/, an export "
                             "from `asr-transfer export-onnx` and the run is on the CPU and not bf16, else torch; "
                             "onnx: CPU, fp32 or int8 (auto: int8)")
    parser.add_argument("--chunk-s", type=float, default=30.0, help="window length for long files, s (default 30)")
    parser.add_argument("--stride-s", type=float, default=5.0, help="context on each side of a window, s (default 5)")
    parser.add_argument("--batch-s", type=float, default=160.0, help="padded audio per forward pass, s (default 160)")
    parser.add_argument("--lang", default=None,
                        help="which head of a two-head model (train.mix.head = own) transcribes, e.g. en; default: the "
                             "model's own language (an unknown one lists those the model has)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading pickled pytorch_model.bin weights (can run code: trusted models only)")


def _unique_names(paths: list[str]) -> dict[str, str]:
    """Output stem per input: the file stem, or parent_stem when two inputs share a stem."""
    stems: dict[str, list[str]] = {}
    for p in paths:
        stems.setdefault(Path(p).stem, []).append(p)
    names = {}
    for stem, group in stems.items():
        for i, p in enumerate(group):
            if len(group) == 1:
                names[p] = stem
            else:
                parent = Path(p).parent.name or "root"
                names[p] = f"{parent}_{stem}" if len({Path(q).parent.name for q in group}) == len(group) \
                    else f"{stem}-{i + 1}"
    return names


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        # Library warnings (e.g. bf16 falling back to fp32) as one plain line, not Python's file:line form.
        warnings.showwarning = lambda message, category, *rest, **kw: print(f"warning: {message}", file=sys.stderr)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..transcription import expand_inputs, iter_transcripts
    from ..writers import format_transcript, write_transcript

    if args.lm is not None and args.decoder != "beam":
        raise UserError("--lm needs --decoder beam")
    inputs = expand_inputs(args.paths, args.recursive)
    several = len(inputs) > 1
    if args.out is None and several and args.format in ("srt", "vtt", "tsv"):
        raise UserError(f"{len(inputs)} inputs: use --out DIR to write one .{args.format} file per input")
    names = _unique_names([str(p) for p, _ in inputs])
    if args.out is not None:
        from ..outdir import check_output_dir

        # Before the model loads: each file is written as it is transcribed, and a bad --out would lose the work.
        check_output_dir(args.out, files=[f"{names[str(p)]}.{args.format}" for p, error in inputs if error is None],
                         key="--out")
    failed = 0
    for t in iter_transcripts(
        [p for p, _ in inputs],  # expanding again is idempotent and reports the same errors
        args.model, decoder=args.decoder, lm_dir=args.lm, device=args.device, precision=args.precision,
        recursive=args.recursive, chunk_s=args.chunk_s, stride_s=args.stride_s, batch_s=args.batch_s,
        beam_size=args.beam_size, allow_pickle=args.allow_pickle, engine=args.engine, lang=args.lang,
    ):
        if t.error is not None:
            failed += 1
            continue
        if args.out is None:
            if args.format == "json":
                print(json.dumps(t.to_dict(), ensure_ascii=False))
            elif args.format == "txt" and several:
                print(f"{t.path}\t{t.text}")
            else:
                sys.stdout.write(format_transcript(t, args.format))
            sys.stdout.flush()
        else:
            target = write_transcript(t, args.format, args.out, names.get(t.path))
            print(f"{t.path}: {t.duration_s:.1f} s audio, RTF {t.timings.rtf:.3f} -> {target}")
    if failed:
        print(f"error: {failed} of {len(inputs)} file(s) failed (see above)", file=sys.stderr)
        return 1
    return 0
