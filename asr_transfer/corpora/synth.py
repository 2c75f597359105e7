"""Synthetic speech corpora with espeak-ng: 16 kHz PCM16 wavs plus train/dev/test manifests.

Each utterance is one normalised sentence (:mod:`asr_transfer.corpora.textsource`) spoken by
``espeak-ng -v <lang>+<variant> -s <wpm> -p <pitch>``; espeak's 22.05 kHz output is resampled to 16 kHz, peak-scaled
to a random level and, with ``snr_db``, mixed with white or pink noise at that SNR. The transcript is the very text
espeak was given, so labels match the audio exactly (numbers are already words).

Voices. espeak-ng's voice variants (``voices/!v/``) are split once, here, into three disjoint sets:

- ``source``   — only for training the English source model (``models/en-synth-small``);
- ``target``   — training data in the target language (the default for ``--voices``);
- ``held-out`` — every dev and test set, in every language, whatever ``--voices`` says.

So no evaluation voice is ever heard in training, by the source model or by the transferred one, and the target
training voices are new to the source model (as real target-language speakers would be). Left out of all sets:
``whisper``/``whisperf`` (unvoiced), ``croak``, ``Demonic``, ``Tweaky``, the ``robosoft*``/``UniRobot``/``anikaRobot``
robots, ``fast`` and ``announcer`` (effects), ``Mr`` (its file name holds a space) and ``caleb``/``klatt6``, which
render identically to ``klatt``.

Splits. The normalised sentences are shuffled with the seed; test takes sentences from the front until it holds
``test_minutes`` of audio, dev continues after it, train after dev. So dev/test sentences never occur in train, and
for a fixed seed and dev/test size the dev and test sets stay the same whatever ``minutes`` is (train sets of
different sizes are prefixes of each other: data-efficiency sweeps compare on one test set). Every utterance's
voice, speed, pitch, level and noise come from an RNG seeded by ``(seed, split, index, lang)``, so a corpus is
reproducible byte for byte and independent of ``jobs``. If train runs out of sentences it starts over with new
voices (reported as ``passes`` in ``corpus.json``); dev/test never repeat a sentence.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio import SAMPLE_RATE, resample, write_wav
from ..errors import UserError
from ..files import atomic_write_json
from ..manifest import Utterance, write_manifest
from ..text import LANGUAGES, get_normalizer
from .textsource import MAX_CHARS, MAX_WORDS, MIN_WORDS, default_text_files, extract_sentences, shuffled

ESPEAK = "espeak-ng"
ESPEAK_VOICE = {"de": "de", "en": "en-us", "nl": "nl", "es": "es", "fr": "fr-fr"}
VOICE_SETS: dict[str, tuple[str, ...]] = {
    "source": (
        "f1", "f4", "m1", "m2", "m5", "m8", "klatt", "klatt4", "Alex", "Andy", "Diogo", "Gene", "Henrique", "Jacky",
        "Mario", "Nguyen", "RicishayMax", "Storm", "adam", "antonio", "belinda", "boris", "david", "edward", "gustave",
        "iven", "iven4", "john", "marcelo", "max", "norbert", "paul", "quincy", "sandro", "steph", "travis",
    ),
    "target": (
        "f2", "f5", "m4", "m7", "klatt2", "klatt5", "Alicia", "Andrea", "AnxiousAndy", "Hugo", "Marco", "Michael",
        "Mike", "RicishayMax2", "RicishayMax3", "anika", "benjamin", "ed", "edward2", "grandma", "iven2",
        "kaukovalta", "miguel", "pablo", "pedro", "robert", "shelby", "steph3", "victor",
    ),
    "held-out": (
        "f3", "m3", "m6", "klatt3", "Annie", "Denis", "Gene2", "Lee", "aunty", "iven3", "linda", "michel", "rob",
        "steph2", "zac", "grandpa",
    ),
}
SPLITS = ("test", "dev", "train")  # the order in which sentences are dealt out
SPEED_WPM = (120, 200)  # words per minute, uniform
PITCH = (25, 75)  # espeak pitch 0-99, uniform
PEAK = (0.3, 0.9)  # peak level after scaling, uniform
DEFAULT_EVAL_FRACTION = 0.1  # dev and test each get this share of --minutes by default ...
DEFAULT_EVAL_MAX_MINUTES = 10.0  # ... up to this many minutes


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything that decides one synthetic utterance (so it can be rebuilt or run in any worker)."""

    uid: str
    split: str
    text: str
    lang: str
    variant: str
    speed_wpm: int
    pitch: int
    peak: float
    noise: str | None  # "white" | "pink" | None
    snr_db: float | None
    noise_seed: int
    wav_path: str


# ------------------------------------------------------------------------------------------------------------ espeak
def espeak_binary() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise UserError("espeak-ng not found on PATH: install it (apt-get install espeak-ng)")
    return path


def espeak_data_dir(binary: str) -> Path:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"Data at:\s*(\S.*)$", out.strip())
    if not m:
        raise UserError(f"cannot find espeak-ng's data folder in '{out.strip()}'")
    return Path(m.group(1).strip())


def available_variants(binary: str | None = None) -> set[str]:
    """Names of the installed espeak-ng voice variants (files in ``<data>/voices/!v``)."""
    folder = espeak_data_dir(binary or espeak_binary()) / "voices" / "!v"
    return {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()


def check_espeak(lang: str, voice_sets: Sequence[str]) -> str:
    """Check espeak-ng, the language voice and the variants of ``voice_sets``; return the binary's path."""
    binary = espeak_binary()
    probe = subprocess.run([binary, "-v", ESPEAK_VOICE[lang], "-q", "test"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise UserError(f"espeak-ng has no voice '{ESPEAK_VOICE[lang]}' for '{lang}' "
                        f"({probe.stderr.strip() or probe.returncode}): install espeak-ng-data")
    have = available_variants(binary)
    missing = sorted({v for s in voice_sets for v in VOICE_SETS[s]} - have)
    if missing:
        raise UserError(f"espeak-ng lacks the voice variant(s) {', '.join(missing)} (looked in "
                        f"{espeak_data_dir(binary) / 'voices' / '!v'}): install espeak-ng-data >= 1.51")
    return binary


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """espeak's --stdout wav: a 44-byte PCM16 header with unknown (0x7fff...) lengths, then samples."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE" or data[36:40] != b"data":
        raise UserError("espeak-ng produced no WAV output")
    sample_rate = int.from_bytes(data[24:28], "little")
    x = np.frombuffer(data[44 : 44 + (len(data) - 44) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    return x, sample_rate


def pink_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power, zero-mean 1/f noise ``(num_samples,)`` by shaping white noise in the frequency domain."""
    n_fft = 1 << max(0, num_samples - 1).bit_length()  # a power of two: FFTs of prime lengths are 10x slower
    spectrum = np.fft.rfft(rng.standard_normal(n_fft))
    scale = np.zeros(spectrum.shape[0])  # no DC: the noise power is then all audible power
    scale[1:] = 1.0 / np.sqrt(np.arange(1, spectrum.shape[0]))
    x = np.fft.irfft(spectrum * scale, n=n_fft)[:num_samples]
    x = x - x.mean()
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Mix ``x`` ``(samples,)`` with white or pink noise so that signal power / noise power = ``snr_db``."""
    if colour == "pink":
        noise = pink_noise(x.size, rng)
    else:
        noise = rng.standard_normal(x.size)
        noise = (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)
    power = float(np.mean(x.astype(np.float64) ** 2))
    gain = math.sqrt(power / (10 ** (snr_db / 10))) if power > 0 else 0.0
    return (x + gain * noise).astype(np.float32)


def render(spec: UtteranceSpec, binary: str = ESPEAK) -> tuple[str, float]:
    """Synthesise ``spec`` into ``spec.wav_path`` (16 kHz PCM16); return ``(uid, duration_s)``."""
    cmd = [binary, "-b", "1", "-v", f"{ESPEAK_VOICE[spec.lang]}+{spec.variant}", "-s", str(spec.speed_wpm),
           "-p", str(spec.pitch), "--stdout", spec.text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise UserError(f"espeak-ng failed on {spec.uid}: {proc.stderr.decode(errors='replace').strip()}")
    x, rate = _parse_wav(proc.stdout)
    x = resample(x, rate, SAMPLE_RATE)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 0:
        x = x * (spec.peak / peak)
    if spec.noise and spec.snr_db is not None:
        x = add_noise(x, spec.snr_db, spec.noise, np.random.default_rng(spec.noise_seed))
    write_wav(spec.wav_path, x, SAMPLE_RATE)
    return spec.uid, x.size / SAMPLE_RATE


# ----------------------------------------------------------------------------------------------------------- specs
def utterance_spec(
    lang: str, split: str, index: int, text: str, variants: Sequence[str], seed: int, snr_db: float | None,
    out_dir: Path,
) -> UtteranceSpec:
    """Utterance ``index`` of ``split``: voice, speed, pitch, level, noise from ``(seed, split, index, lang)``."""
    # The language is in the seed too, so corpora of different languages do not share voice/speed sequences.
    rng = np.random.default_rng([seed, SPLITS.index(split), index, LANGUAGES.index(lang)])
    uid = f"synth-{lang}-{split}-{index:06d}"
    return UtteranceSpec(
        uid=uid,
        split=split,
        text=text,
        lang=lang,
        variant=str(variants[int(rng.integers(len(variants)))]),
        speed_wpm=int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1)),
        pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
        peak=round(float(rng.uniform(*PEAK)), 4),
        noise=("white", "pink")[int(rng.integers(2))] if snr_db is not None else None,
        snr_db=snr_db,
        noise_seed=int(rng.integers(2**31)),
        wav_path=str(out_dir / "wavs" / split / f"{uid}.wav"),
    )


def _estimate_s(text: str) -> float:
    # Words at the mean rate plus ~0.4 s of edges: this only sizes batches, it never decides the cut.
    mean_wpm = (SPEED_WPM[0] + SPEED_WPM[1]) / 2
    return (text.count(" ") + 1) * 60.0 / mean_wpm + 0.4


def _synth_split(
    split: str, pool: Sequence[str], target_s: float, lang: str, variants: Sequence[str], seed: int,
    snr_db: float | None, out_dir: Path, executor: ThreadPoolExecutor, binary: str, bar, cycle: bool,
) -> list[tuple[UtteranceSpec, float]]:
    """Synthesise utterances of ``split`` in index order until they hold ``>= target_s`` seconds (at least one)."""
    done: list[tuple[UtteranceSpec, float]] = []
    total_s = 0.0
    index = 0
    while total_s < target_s or not done:
        if index >= len(pool) and not cycle:
            raise UserError(f"the text ran out after {len(done)} {split} sentences ({total_s / 60:.2f} of "
                            f"{target_s / 60:.2f} minutes): pass more --text or ask for fewer {split} minutes")
        mean_s = total_s / len(done) if done else _estimate_s(pool[index % len(pool)])
        batch = max(4, min(256, math.ceil((target_s - total_s) / max(mean_s, 0.5)) + 2))
        if not cycle:
            batch = min(batch, len(pool) - index)
        specs = [utterance_spec(lang, split, i, pool[i % len(pool)], variants, seed, snr_db, out_dir)
                 for i in range(index, index + batch)]
        index += batch
        for spec, (_, duration_s) in zip(specs, executor.map(lambda s: render(s, binary), specs)):
            if total_s >= target_s and done:  # past the cut: synthesised but not used
                Path(spec.wav_path).unlink(missing_ok=True)
                continue
            done.append((spec, duration_s))
            total_s += duration_s
            bar.update(duration_s)
    return done


# ------------------------------------------------------------------------------------------------------ the corpus
def _request(lang, minutes, seed, text_files, voice_set, snr_db, dev_minutes, test_minutes) -> dict:
    return {"lang": lang, "minutes": minutes, "dev_minutes": dev_minutes, "test_minutes": test_minutes, "seed": seed,
            "voice_set": voice_set, "snr_db": snr_db, "text_files": [str(p) for p in text_files]}


def _prepare_out_dir(out_dir: Path, request: dict, overwrite: bool) -> dict[str, Path] | None:
    record_path = out_dir / "corpus.json"
    marker = out_dir / ".synth-in-progress"
    if record_path.exists() and not overwrite:
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            record = {}
        if record.get("request") == request and all((out_dir / f"{s}.jsonl").exists() for s in SPLITS):
            return _outputs(out_dir)
        raise UserError("folder holds a different synthetic corpus: choose another --out or pass --overwrite",
                        path=out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (overwrite or marker.exists()):
        raise UserError("output folder is not empty: choose another --out or pass --overwrite", path=out_dir)
    shutil.rmtree(out_dir / "wavs", ignore_errors=True)
    for name in ("corpus.json", *(f"{s}.jsonl" for s in SPLITS), "dev_sentences.txt", "test_sentences.txt"):
        (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return None


def _outputs(out_dir: Path) -> dict[str, Path]:
    out = {s: out_dir / f"{s}.jsonl" for s in ("train", "dev", "test")}
    out.update(dev_sentences=out_dir / "dev_sentences.txt", test_sentences=out_dir / "test_sentences.txt",
               corpus=out_dir / "corpus.json")
    return out


def _extra(spec: UtteranceSpec) -> dict:
    # Kept in the manifest (NeMo ignores unknown keys) so errors can be analysed by speed, pitch or noise.
    extra = {"speed_wpm": spec.speed_wpm, "pitch": spec.pitch}
    if spec.noise:
        extra.update(noise=spec.noise, snr_db=spec.snr_db)
    return extra


def _espeak_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"eSpeak NG text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.strip()


def prepare_synth(
    lang: str,
    out_dir: str | Path,
    minutes: float,
    seed: int = 0,
    text_files: Sequence[str | Path] | None = None,
    voice_set: str = "target",
    snr_db: float | None = None,
    dev_minutes: float | None = None,
    test_minutes: float | None = None,
    jobs: int = 2,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Build a synthetic corpus in ``out_dir``; return paths ``train``/``dev``/``test`` (manifests),
    ``dev_sentences``/``test_sentences`` and ``corpus`` (``corpus.json``).

    ``minutes`` of train audio (dev/test default to 10 % of it each, at most 10 minutes); ``voice_set`` picks the
    train voices (``target``, ``source`` or ``held-out``); dev/test always use ``held-out``. Re-running with the same
    arguments on a finished folder returns it unchanged.
    """
    normalize = get_normalizer(lang)
    lang = normalize.lang
    if voice_set not in VOICE_SETS:
        raise UserError(f"unknown voice set '{voice_set}': choose one of {', '.join(VOICE_SETS)}")
    for name, value in (("minutes", minutes), ("dev minutes", dev_minutes), ("test minutes", test_minutes)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a number > 0, got {value}")
    if snr_db is not None and not math.isfinite(snr_db):
        raise UserError(f"--snr-db must be a finite number, got {snr_db}")
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    eval_default = round(min(minutes * DEFAULT_EVAL_FRACTION, DEFAULT_EVAL_MAX_MINUTES), 4)
    dev_minutes = eval_default if dev_minutes is None else dev_minutes
    test_minutes = eval_default if test_minutes is None else test_minutes
    files = [Path(p) for p in text_files] if text_files else default_text_files(lang)
    out_dir = Path(out_dir)
    request = _request(lang, minutes, seed, files, voice_set, snr_db, dev_minutes, test_minutes)
    existing = _prepare_out_dir(out_dir, request, overwrite)
    if existing is not None:
        print(f"{out_dir}: corpus already built with these settings (corpus.json); nothing to do")
        return existing
    binary = check_espeak(lang, sorted({voice_set, "held-out"}))
    if voice_set == "held-out":
        print("warning: training on the held-out voices: dev/test voices are no longer unseen", file=sys.stderr)

    started = time.perf_counter()
    sentences = extract_sentences(lang, files)
    if not sentences:
        raise UserError(f"no usable {lang} sentences ({MIN_WORDS}-{MAX_WORDS} words) in the text files",
                        path=files[0] if len(files) == 1 else None)
    order = shuffled(sentences, seed)
    text_s = time.perf_counter() - started
    targets_s = {"test": test_minutes * 60, "dev": dev_minutes * 60, "train": minutes * 60}
    results: dict[str, list[tuple[UtteranceSpec, float]]] = {}
    from tqdm.auto import tqdm

    position = 0
    with ThreadPoolExecutor(max_workers=jobs) as executor, \
            tqdm(total=round(sum(targets_s.values()), 1), unit="s", desc=f"synth {lang}", disable=None,
                 bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]") as bar:
        for split in SPLITS:
            variants = VOICE_SETS["held-out" if split != "train" else voice_set]
            pool = order[position:]
            if not pool:
                raise UserError(f"no sentences left for {split} after dev/test took {position}: pass more --text "
                                "or fewer --dev-minutes/--test-minutes")
            results[split] = _synth_split(split, pool, targets_s[split], lang, variants, seed, snr_db, out_dir,
                                          executor, binary, bar, cycle=split == "train")
            position += len(results[split]) if split != "train" else 0
    wall_s = time.perf_counter() - started

    outputs = _outputs(out_dir)
    splits_record = {}
    for split, items in results.items():
        utts = [Utterance(audio_filepath=str(Path(s.wav_path).resolve()), duration=round(d, 4), text=s.text,
                          lang=lang, speaker=s.variant, id=s.uid, extra=_extra(s)) for s, d in items]
        write_manifest(outputs[split], utts)
        audio_s = sum(d for _, d in items)
        unique = len({s.text for s, _ in items})
        splits_record[split] = {
            "utterances": len(items), "minutes": round(audio_s / 60, 3), "sentences": unique,
            "passes": math.ceil(len(items) / max(1, len(order) - position)) if split == "train" else 1,
            "speakers": sorted({s.variant for s, _ in items}),
        }
        if split != "train":
            outputs[f"{split}_sentences"].write_text("".join(s.text + "\n" for s, _ in items), encoding="utf-8")
    if splits_record["train"]["passes"] > 1:
        print(f"note: train needed {splits_record['train']['passes']} passes over its "
              f"{len(order) - position} sentences (new voices each pass); add --text for more variety",
              file=sys.stderr)
    audio_min = sum(r["minutes"] for r in splits_record.values())
    record = {
        "kind": "synth",
        "request": request,
        "normalizer": normalize.name,
        "espeak": {"version": _espeak_version(binary), "voice": ESPEAK_VOICE[lang]},
        "voice_sets": {"train": voice_set, "dev": "held-out", "test": "held-out"},
        "variants": {name: list(VOICE_SETS[name]) for name in sorted({voice_set, "held-out"})},
        "speed_wpm": list(SPEED_WPM),
        "pitch": list(PITCH),
        "peak": list(PEAK),
        "noise": {"snr_db": snr_db, "colours": ["white", "pink"]} if snr_db is not None else None,
        "sample_rate": SAMPLE_RATE,
        "sentence_filter": {"min_words": MIN_WORDS, "max_words": MAX_WORDS, "max_chars": MAX_CHARS},
        "sentences_available": len(sentences),
        "sentences_sha256": hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16],
        "splits": splits_record,
        "build": {"jobs": jobs, "wall_s": round(wall_s, 2), "text_s": round(text_s, 2),
                  "audio_minutes_per_wall_minute": round(audio_min / (wall_s / 60), 1) if wall_s > 0 else None,
                  "synth_audio_minutes_per_wall_minute":
                      round(audio_min / ((wall_s - text_s) / 60), 1) if wall_s > text_s else None},
    }
    atomic_write_json(outputs["corpus"], record)
    (out_dir / ".synth-in-progress").unlink(missing_ok=True)
    return outputs


__all__ = ["ESPEAK_VOICE", "VOICE_SETS", "UtteranceSpec", "add_noise", "available_variants", "check_espeak",
           "pink_noise", "prepare_synth", "render", "utterance_spec"]
