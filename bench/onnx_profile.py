"""Where ONNX Runtime spends an export's kernel time: its own profiler over a folder of clips, summed by operator.

    .venv/bin/python bench/onnx_profile.py --model data/bench/models/base960h-random-s0 --precision int8

``--model`` is an export folder or a model folder with its export in ``onnx/`` (``asr-transfer export-onnx``). The
clips run one at a time through :class:`asr_transfer.onnx_engine.OnnxRecognizer`'s session, as ``transcribe`` feeds
them; the shares are of the summed kernel times (session start-up and Python are not in them, see
``transcribe_speed.py --whole-process`` for the wall time a user waits). Convolutions are reported apart by kernel
shape, because the first CNN layer and the positional convolution cost differently and are the ones left in fp32.
"""
from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import common
from common import Section, table

TOP_NODES = 10


def op_label(node: dict, conv_kernels: dict[str, list[int]]) -> str:
    """The operator of one profiled node; a Conv with its kernel size (``Conv k=10``)."""
    op = node["args"]["op_name"]
    name = node["name"].removesuffix("_kernel_time")
    return f"{op} k={conv_kernels[name][0]}" if op == "Conv" and name in conv_kernels else op


def profile(export: Path, precision: str, clips: list[Path]) -> tuple[Counter, Counter]:
    """Kernel microseconds by operator label and by node over ``clips``."""
    import onnx
    import onnxruntime as ort

    from asr_transfer.audio import load_audio
    from asr_transfer.inference import InferenceOptions
    from asr_transfer.onnx_engine import OnnxRecognizer

    recognizer = OnnxRecognizer(export, InferenceOptions(device="cpu", precision=precision))
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")  # to name the fused Conv nodes
        session = ort.InferenceSession(str(recognizer.onnx_file), options, providers=["CPUExecutionProvider"])
        recognizer.session = session
        recognizer.log_probs([load_audio(c) for c in clips])
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False).graph
    conv_kernels = {n.name: list(a.ints) for n in graph.node for a in n.attribute if a.name == "kernel_shape"}
    by_op: Counter = Counter()
    by_node: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[op_label(event, conv_kernels)] += event["dur"]
            by_node[event["name"].removesuffix("_kernel_time")] += event["dur"]
    return by_op, by_node


def main(argv=None) -> int:
    from asr_transfer.onnx_engine import find_export

    p = common.base_parser(__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="an export folder, or a model folder with onnx/")
    p.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    p.add_argument("--clips", default=None, help="folder of audio clips (default: transcribe_speed's 5-min folder)")
    p.add_argument("--count", type=int, default=15, help="clips to run (the first, by name)")
    args = p.parse_args(argv)
    export = find_export(args.model, "onnx", precision=args.precision, device="cpu")
    clips_dir = Path(args.clips) if args.clips else Path(args.work_dir) / "transcribe_speed" / "clips-en-5m-s0"
    clips = sorted(c for c in clips_dir.iterdir() if c.suffix in (".wav", ".flac"))[: args.count]
    if not clips:
        raise SystemExit(f"error: no clips in {clips_dir} (run transcribe_speed.py --whole-process once, or --clips)")
    section = Section(f"onnx_profile: ONNX Runtime kernel time by operator, {args.precision}").start()
    section.model = args.model
    by_op, by_node = profile(export, args.precision, clips)
    total = sum(by_op.values())
    section.add(f"`{export}`, {args.precision}, {len(clips)} clips from `{clips_dir}`; summed kernel time "
                f"{total / 1e6:.2f} s.\n")
    section.add(table(["operator", "kernel s", "share"],
                      [[op, us / 1e6, f"{100 * us / total:.1f} %"] for op, us in by_op.most_common()]) + "\n")
    section.add(f"Largest {TOP_NODES} nodes: " + ", ".join(f"{n} {100 * us / total:.1f} %"
                                                           for n, us in by_node.most_common(TOP_NODES)) + ".\n")
    section.data = {"kernel_s_by_op": {k: v / 1e6 for k, v in by_op.items()}, "clips": [c.name for c in clips]}
    section.append(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
