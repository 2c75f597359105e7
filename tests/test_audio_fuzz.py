"""Audio fuzzing: mutated and truncated wav/flac/ogg/mp3/opus files through ``audio.load_audio``.

Each file must either load as finite float32 mono ``(samples,)`` or raise :class:`AudioError` with one line naming
the file. Anything else (another exception, a crash inside libsndfile, a hang) fails. The loop runs in a subprocess,
so a segfault fails this test instead of killing pytest, and the last file it started is named. Default: 400 files
(a few seconds); ``pytest --full``: 3000.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FUZZ = r"""
import json, sys
from pathlib import Path
import numpy as np
import soundfile as sf
from asr_transfer.audio import load_audio
from asr_transfer.errors import AudioError

out_dir, count, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
t = np.arange(12000) / 12000
tone = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
seeds = {}
for ext, fmt, sub, rate, ch in [("wav", "WAV", "PCM_16", 12000, 1), ("f32.wav", "WAV", "FLOAT", 12000, 2),
                                ("flac", "FLAC", "PCM_24", 12000, 1), ("ogg", "OGG", "VORBIS", 12000, 2),
                                ("mp3", "MP3", "MPEG_LAYER_III", 12000, 1), ("opus", "OGG", "OPUS", 12000, 1)]:
    p = out_dir / f"seed.{ext}"
    x = tone if ch == 1 else np.stack([tone, tone[::-1]], 1)
    sf.write(str(p), x, rate, format=fmt, subtype=sub)
    seeds[ext] = p.read_bytes()

def mutate(data: bytes) -> tuple[str, bytes]:
    b = bytearray(data)
    kind = rng.choice(["flip", "truncate", "header", "insert", "zero-tail", "flip+truncate"])
    if kind in ("flip", "flip+truncate"):
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 40))):
            b[i] ^= int(rng.integers(1, 256))
    if kind in ("truncate", "flip+truncate"):
        b = b[: int(rng.integers(0, len(b)))]
    if kind == "header":
        n = int(rng.integers(1, 64))
        b[:n] = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    if kind == "insert":
        i = int(rng.integers(0, len(b)))
        b[i:i] = rng.integers(0, 256, size=int(rng.integers(1, 512)), dtype=np.uint8).tobytes()
    if kind == "zero-tail":
        i = int(rng.integers(0, len(b)))
        b[i:] = bytes(len(b) - i)
    return kind, bytes(b)

results = {"ok": 0, "AudioError": 0, "by_kind": {}}
names = list(seeds)
for i in range(count):
    ext = names[i % len(names)]
    kind, data = mutate(seeds[ext])
    path = out_dir / f"fuzz{i}.{ext}"
    path.write_bytes(data)
    print(json.dumps({"start": str(path), "kind": kind}), file=sys.stderr, flush=True)
    try:
        x = load_audio(path)
    except AudioError as exc:
        msg = str(exc)
        if "\n" in msg or str(path) not in msg:
            print(json.dumps({"bad_message": msg, "path": str(path)}), flush=True)
            sys.exit(3)
        results["AudioError"] += 1
    except BaseException as exc:
        print(json.dumps({"escaped": f"{type(exc).__name__}: {exc}", "path": str(path), "kind": kind}), flush=True)
        sys.exit(4)
    else:
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 1 and x.size
                and np.isfinite(x).all()):
            print(json.dumps({"bad_array": str(path), "dtype": str(x.dtype), "shape": list(x.shape)}), flush=True)
            sys.exit(5)
        results["ok"] += 1
    results["by_kind"][kind] = results["by_kind"].get(kind, 0) + 1
    path.unlink()
print(json.dumps(results), flush=True)
"""


def test_mutated_audio_loads_or_raises_audio_error(tmp_path, request):
    count = 3000 if request.config.getoption("--full") else 400
    res = subprocess.run([sys.executable, "-c", FUZZ, str(tmp_path), str(count), "1234"], capture_output=True,
                         text=True, timeout=60 if count <= 400 else 900,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    last_started = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    assert res.returncode == 0, f"exit {res.returncode}; last file: {last_started}\n{res.stdout[-2000:]}"
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] + summary["AudioError"] == count
    # Both outcomes occur (a fuzzer whose files all load, or all fail, tests little) and every mutation kind ran.
    assert summary["ok"] > count // 20 and summary["AudioError"] > count // 20, summary
    assert len(summary["by_kind"]) == 6, summary
