"""The other side of the whole-process benchmark: transcribe a folder with ``transformers.pipeline``, the way its
documentation shows, and write one ``.txt`` per file. Standing alone on purpose (no asr_transfer import), so its
start-up is what a user of the pipeline waits for.

    python bench/pipeline_transcribe.py --model DIR AUDIO_DIR --out OUT [--batch-size N] [--bf16]
"""
import argparse
import sys
from pathlib import Path

import soundfile
import torch
from transformers import pipeline


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("audio_dir")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=None, help="the pipeline's batch_size (default: its own, 1)")
    p.add_argument("--bf16", action="store_true", help="load the model in bfloat16 (torch_dtype)")
    args = p.parse_args(argv)
    kw = {"dtype": torch.bfloat16} if args.bf16 else {}
    pipe = pipeline("automatic-speech-recognition", model=args.model, device="cpu", **kw)
    paths = sorted(Path(args.audio_dir).glob("*.wav"))
    inputs = []
    for path in paths:
        wave, rate = soundfile.read(str(path), dtype="float32")
        inputs.append({"raw": wave, "sampling_rate": rate})
    out = pipe(inputs, **({} if args.batch_size is None else {"batch_size": args.batch_size}))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for path, result in zip(paths, out):
        (Path(args.out) / f"{path.stem}.txt").write_text(result["text"] + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
