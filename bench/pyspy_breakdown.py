"""Where a transcription process spends its wall time, from a py-spy profile (``--format raw``, collapsed stacks).

    py-spy record -r 100 -f raw -o ours.txt -- .venv/bin/asr-transfer transcribe --model M DIR --out O
    python bench/pyspy_breakdown.py ours.txt [pipeline.txt ...]

py-spy is not a dependency of the project: install it apart (``python3 -m venv /tmp/spy && /tmp/spy/bin/pip install
py-spy``). Each sample (one stack of the main thread) goes to the first category, in the order below, that one of
its frames matches; the shares are of all main-thread samples, i.e. of the process's wall time.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

# (category, substrings of a frame "function (file:line)"), first match wins: the order is the nesting, outside in.
CATEGORIES = (
    ("imports", ("_find_and_load (<frozen importlib._bootstrap>",)),
    ("model loading and checks", ("load_model (asr_transfer/model/load.py", "from_pretrained (transformers/",
                                  "pipeline (transformers/pipelines/__init__.py")),
    ("CNN feature encoder", ("group_norm_cnn (asr_transfer/model/forward.py", "Wav2Vec2FeatureEncoder.forward")),
    ("transformer encoder and head", ("run_segments (asr_transfer/model/forward.py", "Wav2Vec2Encoder.forward",
                                      "Wav2Vec2ForCTC.forward", "Wav2Vec2Model.forward")),
    ("reading audio", ("load_audio (asr_transfer/audio.py", "audio_info (asr_transfer/audio.py", "soundfile.py")),
    ("decoding and word timings", ("decode (asr_transfer/decode.py", "_finish (asr_transfer/transcription.py",
                                   "postprocess (transformers/pipelines")),
    ("writing transcripts", ("asr_transfer/writers.py", "write_text (pathlib")),
)


def breakdown(path: Path) -> tuple[int, Counter]:
    """``(samples, Counter(category -> samples))`` of the main thread's stacks in a py-spy raw file."""
    counts: Counter = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        if "Thread._bootstrap" in stack:  # tqdm's monitor and other helper threads: not the process's critical path
            continue
        total += int(n)
        frames = stack.split(";")
        category = next((name for name, keys in CATEGORIES if any(k in f for f in frames for k in keys)), "other")
        counts[category] += int(n)
    return total, counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("profiles", nargs="+", type=Path)
    args = p.parse_args(argv)
    names = [name for name, _ in CATEGORIES] + ["other"]
    results = [breakdown(f) for f in args.profiles]
    print("| part | " + " | ".join(f.stem for f in args.profiles) + " |")
    print("|---|" + "---|" * len(args.profiles))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{100 * c[name] / max(t, 1):.1f} %" for t, c in results) + " |")
    print("| samples | " + " | ".join(str(t) for t, _ in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
