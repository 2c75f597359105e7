"""``asr-transfer export-onnx --model M [--out DIR] [--no-int8]``: an ONNX export for ``transcribe --engine onnx``."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (or hub id in the local cache) to export")
    parser.add_argument("--out", type=Path,
                        help="export folder (default: <model>/onnx, where transcribe --engine auto finds it)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 (dynamically quantised) model")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading pickled pytorch_model.bin weights (can run code: trusted models only)")


def run(args: argparse.Namespace) -> int:
    import json

    from ..onnx_engine import ONNX_META_FILE
    from ..onnx_export import export_onnx

    out = export_onnx(args.model, args.out, int8=not args.no_int8, allow_pickle=args.allow_pickle)
    meta = json.loads((out / ONNX_META_FILE).read_text(encoding="utf-8"))
    for precision, name in meta["files"].items():
        check = meta["check"][precision]
        size_mb = (out / name).stat().st_size / 1e6
        print(f"wrote {out / name}: {precision}, {size_mb:.1f} MB; against torch fp32 on a "
              f"{meta['check']['signal_s']:g}-s test signal: max |Δ log-prob| {check['max_abs_log_prob_diff']:.2g}, "
              f"frame argmax agreement {check['argmax_agreement']:.1%}")
    print(f"transcribe with: asr-transfer transcribe --model {args.model if args.out is None else out} "
          f"--engine onnx [--precision int8] FILES")
    return 0
