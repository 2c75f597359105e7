"""Property-based tests of the parsers that face user files: manifest lines and run configs.

The text normalisers (tests/test_text.py::test_properties) and the greedy CTC decoder
(tests/test_decode.py::test_hypothesis_properties) already have hypothesis tests; they are not repeated here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr_transfer.config import TrainConfig, from_dict
from asr_transfer.errors import ConfigError, ManifestError
from asr_transfer.manifest import OPTIONAL, REQUIRED, Utterance, parse_line

BASE = Path("/corpus")
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
KEYS = st.sampled_from([*REQUIRED, *OPTIONAL, "extra", "speed_wpm"])


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_manifest_error(raw):
    try:
        u = parse_line(raw, 7, "m.jsonl", BASE)
    except ManifestError as exc:
        assert str(exc).startswith("m.jsonl:7: ") and "\n" not in str(exc)
    else:
        assert isinstance(u, Utterance)


@settings(max_examples=300, deadline=None)
@given(obj=st.one_of(JSON_VALUES, st.dictionaries(KEYS, JSON_VALUES, max_size=7)))
def test_arbitrary_json_parses_or_raises_manifest_error(obj):
    raw = json.dumps(obj, allow_nan=True)
    try:
        u = parse_line(raw, 3, "m.jsonl", BASE)
    except ManifestError as exc:
        assert str(exc).startswith("m.jsonl:3: ") and "\n" not in str(exc)
        return
    assert isinstance(obj, dict)
    assert math.isfinite(u.duration) and u.duration >= 0 and math.isfinite(u.offset) and u.offset >= 0
    assert isinstance(u.text, str) and u.audio_filepath


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_NAME = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="/"), min_size=1,
                max_size=12).filter(lambda n: n.strip() and n not in (".", ".."))
_EXTRA_KEYS = st.text(min_size=1, max_size=8).filter(lambda k: k not in REQUIRED + OPTIONAL + ("extra",))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    folder=st.sampled_from([BASE / "audio", BASE, Path("/elsewhere/clips")]),
    name=_NAME,
    duration=st.floats(0, 1e5, allow_nan=False),
    offset=st.floats(0, 1e4, allow_nan=False),
    text=_TEXT,
    lang=st.one_of(st.none(), st.sampled_from(["de", "en", "nl"])),
    speaker=st.one_of(st.none(), _NAME),
    uid=st.one_of(st.none(), _NAME),
    extra=st.dictionaries(
        _EXTRA_KEYS, JSON_SCALARS.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))), max_size=3
    ),
)
def test_valid_utterances_round_trip_through_to_json(folder, name, duration, offset, text, lang, speaker, uid, extra):
    u = Utterance(str(folder / f"{name}.wav"), duration, text, offset, lang, speaker, uid, extra)
    line = u.to_json(relative_to=BASE)
    assert "\n" not in line  # one manifest line, whatever the text holds
    back = parse_line(line.encode("utf-8"), 1, "m.jsonl", BASE)
    # Audio outside the manifest folder is stored as "../x.wav" and read back as "/corpus/../x.wav": the same file.
    assert os.path.normpath(back.audio_filepath) == u.audio_filepath
    assert dataclasses.replace(back, audio_filepath=u.audio_filepath) == u  # every other field (extra aside)
    assert back.extra == extra and back.uid == u.uid
    assert parse_line(back.to_json(), 1, "m.jsonl") == back  # absolute paths stay absolute


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["model", "data", "augment", "train", "stages", "bogus"]),
                            st.one_of(JSON_VALUES, st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=4),
                                      st.lists(st.dictionaries(st.sampled_from(["name", "train", "lr", "steps",
                                                                                "epochs", "x"]), JSON_VALUES,
                                                               max_size=4), max_size=2)),
                            max_size=4))
def test_arbitrary_config_data_builds_or_raises_config_error(data):
    try:
        cfg = from_dict(TrainConfig, data)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(cfg, TrainConfig)
