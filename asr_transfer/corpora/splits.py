"""Train/dev/test splits, and the bookkeeping every corpus importer shares.

:func:`split_utterances` assigns whole speakers to splits (so no voice is in both train and test) when speakers are
known, and single utterances otherwise, greedily by duration so that each split's share of the audio approaches its
fraction. The order in which speakers are dealt out is a seeded shuffle, so a split is a pure function of
``(utterances, fractions, seed)``.

:class:`ImportSummary` is what every ``prepare_*`` returns: utterances and hours per split, skipped items by reason,
warnings (e.g. official splits that share speakers) and the manifests written. :func:`probe_audio` reads many audio
headers in a few threads (libsndfile releases the GIL), and :func:`write_splits` writes the validated manifests.
"""
from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from ..audio import RECEPTIVE_FIELD_SAMPLES, SAMPLE_RATE, AudioInfo, audio_info
from ..errors import AudioError, UserError
from ..manifest import Utterance, write_manifest

T = TypeVar("T")

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "dev": 0.1, "test": 0.1}
MIN_DURATION_S = RECEPTIVE_FIELD_SAMPLES / SAMPLE_RATE  # s; shorter clips give the CNN no output frame
EXAMPLES_PER_REASON = 3  # how many example items each skip reason keeps for the summary
# A row whose fields do not line up with the header: in a quote-less TSV (Common Voice) a tab inside the sentence
# splits it, and reading on would cut the transcript at the tab without a word. It is skipped and counted instead.
FIELD_COUNT_SKIP = "fields do not match the header (a tab or delimiter inside the text?)"


def parse_fractions(spec: str) -> dict[str, float]:
    """``"train=0.8,dev=0.1,test=0.1"`` or ``"0.8,0.1,0.1"`` (train, dev, test) → a fractions dict."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    out: dict[str, float] = {}
    try:
        if all("=" in p for p in parts):
            for p in parts:
                name, value = p.split("=", 1)
                out[name.strip()] = float(value)
        elif len(parts) == 3 and not any("=" in p for p in parts):
            out = dict(zip(("train", "dev", "test"), map(float, parts)))
        else:
            raise ValueError
    except ValueError:
        raise UserError(f"cannot read fractions '{spec}': give e.g. 'train=0.8,dev=0.1,test=0.1' or '0.8,0.1,0.1'")
    return out


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not fractions:
        raise UserError("split fractions are empty: give e.g. train=0.8,dev=0.1,test=0.1")
    bad = {k: v for k, v in fractions.items() if not (isinstance(v, (int, float)) and v >= 0)}
    if bad:
        raise UserError(f"split fractions must be numbers >= 0, got {bad}")
    total = float(sum(fractions.values()))
    if total <= 0:
        raise UserError(f"split fractions sum to {total}: at least one must be > 0")
    return {k: float(v) / total for k, v in fractions.items()}  # weights are normalised, so 8,1,1 works too


def split_utterances(
    utts: Sequence[Utterance],
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[Utterance]]:
    """Split ``utts`` into named parts whose audio durations approach ``fractions`` (normalised to sum 1).

    Utterances of one speaker always land in the same part; utterances without a speaker are placed one by one.
    Groups (speakers) are dealt in a seeded random order, each to the part that is least full relative to its target
    (``current_s / target_fraction``), so every part with a fraction > 0 gets a speaker as long as there are enough
    speakers. Within each part the input order is kept. Deterministic for a given ``seed``.
    """
    weights = _check_fractions(fractions)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, u in enumerate(utts):
        key = ("speaker", u.speaker) if u.speaker not in (None, "") else ("utterance", i)
        groups[key].append(i)
    # Sorting first makes the shuffle independent of dict/insertion order quirks; the seed alone decides.
    keys = sorted(groups, key=lambda k: (k[0], str(k[1])))
    random.Random(seed).shuffle(keys)

    names = list(weights)
    filled_s = {name: 0.0 for name in names}
    assigned: dict[str, list[int]] = {name: [] for name in names}
    active = [n for n in names if weights[n] > 0]
    for key in keys:
        # Least filled relative to target; ties go to the larger fraction, then to the order given.
        target = min(active, key=lambda n: (filled_s[n] / weights[n], -weights[n], names.index(n)))
        assigned[target].extend(groups[key])
        # A zero-duration group still counts a little, so that ties between empty parts keep rotating.
        filled_s[target] += sum(max(utts[i].duration, 1e-3) for i in groups[key])
    return {name: [utts[i] for i in sorted(idx)] for name, idx in assigned.items()}


def speaker_overlaps(parts: Mapping[str, Sequence[Utterance]]) -> dict[tuple[str, str], set[str]]:
    """Speakers shared by each pair of parts (only pairs that share any); empty means speaker-disjoint."""
    speakers = {name: {u.speaker for u in utts if u.speaker} for name, utts in parts.items()}
    names = list(parts)
    out: dict[tuple[str, str], set[str]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = speakers[a] & speakers[b]
            if shared:
                out[(a, b)] = shared
    return out


@dataclass
class ImportSummary:
    """What an import did: per-split counts and hours, skipped items by reason, warnings, manifests written."""

    corpus: str
    out_dir: Path
    utterances: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    speakers: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    manifests: dict[str, Path] = field(default_factory=dict)

    def skip(self, reason: str, item: str) -> None:
        """Count one skipped item (a clip, a line) under ``reason``, keeping a few examples."""
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(item)

    @property
    def total_utterances(self) -> int:
        return sum(self.utterances.values())

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def format(self) -> str:
        """A small plain-text table for the CLI."""
        lines = [f"{self.corpus} → {self.out_dir}", f"{'split':<12}{'utterances':>12}{'hours':>10}{'speakers':>10}"]
        for name in self.utterances:
            hours, speakers = self.hours.get(name, 0.0), self.speakers.get(name, 0)
            lines.append(f"{name:<12}{self.utterances[name]:>12}{hours:>10.3f}{speakers:>10}")
        lines.append(f"{'total':<12}{self.total_utterances:>12}{sum(self.hours.values()):>10.3f}")
        if self.skipped:
            lines.append(f"skipped {self.total_skipped}:")
            for reason, n in self.skipped.most_common():
                lines.append(f"  {reason}: {n} (e.g. {', '.join(self.skipped_examples.get(reason, []))})")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        for name, path in self.manifests.items():
            lines.append(f"wrote {path}")
        return "\n".join(lines)


def probe_audio(paths: Sequence[Path], num_workers: int | None = None) -> list[AudioInfo | AudioError]:
    """Header of each path (or the :class:`AudioError` saying why it is unreadable), in input order.

    A few threads overlap the file system and mp3 scanning; results do not depend on ``num_workers``.
    """
    from tqdm import tqdm

    def one(p: Path) -> AudioInfo | AudioError:
        try:
            return audio_info(p)
        except AudioError as exc:
            return exc

    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    bar = dict(total=len(paths), desc="reading audio headers", unit="file", disable=None, leave=False)
    if workers <= 1 or len(paths) < 16:
        return [one(p) for p in tqdm(paths, **bar)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(one, paths), **bar))


def skip_reason(info: AudioInfo | AudioError, min_duration_s: float, max_duration_s: float | None) -> str | None:
    """Why an audio file cannot become an utterance (``None`` when it can)."""
    if isinstance(info, AudioError):
        message = str(info)
        if "not found" in message:
            return "missing audio"
        return "unreadable audio"
    if info.frames == 0:
        return "empty audio"
    if info.duration_s < min_duration_s:
        return "too short"
    if max_duration_s is not None and info.duration_s > max_duration_s:
        return "too long"
    return None


def usable_audio(items: Sequence[T], audio_of: Callable[[T], Path], label_of: Callable[[T], str],
                 summary: ImportSummary, min_duration_s: float, max_duration_s: float | None,
                 num_workers: int | None = None) -> Iterator[tuple[T, AudioInfo]]:
    """``(item, header)`` for each candidate whose audio can become an utterance, in input order.

    The loop every importer shares: read the headers (:func:`probe_audio`), then skip and count in ``summary`` each
    item whose audio is missing, unreadable, empty or outside the duration limits, under ``label_of(item)``.
    """
    infos = probe_audio([audio_of(item) for item in items], num_workers=num_workers)
    for item, info in zip(items, infos):
        reason = skip_reason(info, min_duration_s, max_duration_s)
        if reason:
            summary.skip(reason, label_of(item))
            continue
        yield item, info


def write_splits(
    summary: ImportSummary,
    parts: Mapping[str, Iterable[Utterance]],
    manifest_names: Mapping[str, str] | None = None,
) -> ImportSummary:
    """Write each non-empty part as ``<out_dir>/<name>.jsonl`` (validated, atomic) and fill in ``summary``."""
    out_dir = Path(summary.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, utts in parts.items():
        utts = list(utts)
        if not utts:
            continue
        filename = (manifest_names or {}).get(name, f"{name}.jsonl")
        summary.manifests[name] = write_manifest(out_dir / filename, utts)
        summary.utterances[name] = len(utts)
        summary.hours[name] = sum(u.duration for u in utts) / 3600.0
        summary.speakers[name] = len({u.speaker for u in utts if u.speaker})
    if not summary.manifests:
        reasons = ", ".join(f"{r}: {n}" for r, n in summary.skipped.most_common()) or "nothing found"
        raise UserError(f"no usable utterances ({reasons}); nothing written", path=out_dir)
    return summary
