"""Shared fixtures: tiny random wav2vec2 models from tests/assets, vocabularies, synthetic audio.

Tiny models (hidden 32, 2 layers, conv 32×7 with base-960h's kernels/strides: 20 ms frames, 400-sample receptive
field) build in milliseconds; ``base960h_model`` is a random 95M-parameter model from base-960h's real config, built
once per session, for parameter-count arithmetic only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ASSETS = Path(__file__).parent / "assets"
TINY_CONFIG = ASSETS / "tiny" / "config.json"
TINY_STABLE_CONFIG = ASSETS / "tiny" / "config_stable_layer_norm.json"
BASE960H_CONFIG = ASSETS / "wav2vec2-base-960h" / "config.json"


def build_model(config_path: Path = TINY_CONFIG, seed: int = 0):
    """A randomly initialised ``Wav2Vec2ForCTC`` in eval mode; the same seed gives the same weights."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(seed)
    return Wav2Vec2ForCTC(Wav2Vec2Config.from_json_file(str(config_path))).eval()


@pytest.fixture
def tiny_config():
    """Post-LN tiny config (group-norm CNN, do_stable_layer_norm=False, base-960h vocab of 32)."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config.from_json_file(str(TINY_CONFIG))


@pytest.fixture
def tiny_model():
    return build_model(TINY_CONFIG)


@pytest.fixture
def tiny_stable_model():
    """Stable-layer-norm (pre-LN, layer-norm CNN) tiny model: the only kind that takes MMS adapters."""
    return build_model(TINY_STABLE_CONFIG)


@pytest.fixture(scope="session")
def base960h_model():
    """Random model from facebook/wav2vec2-base-960h's config (94.4M parameters, ~1-2 s to build). Do not mutate
    its weights; tests that change ``requires_grad`` must not rely on its previous state."""
    return build_model(BASE960H_CONFIG)


@pytest.fixture
def en_vocab() -> dict[str, int]:
    """base-960h's vocabulary: <pad>=0 <s>=1 </s>=2 <unk>=3 |=4, upper-case letters by frequency."""
    from asr_transfer.vocab import english_source_vocab

    return english_source_vocab()


@pytest.fixture
def de_vocab() -> dict[str, int]:
    """A German character vocabulary in base-960h layout: specials, |, apostrophe, a-z, ß ä ö ü (code-point order)."""
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", "'", *"abcdefghijklmnopqrstuvwxyz", "ß", "ä", "ö", "ü"]
    return {t: i for i, t in enumerate(tokens)}


@pytest.fixture
def sine_wave() -> np.ndarray:
    """1 s of a 440 Hz sine at 16 kHz, amplitude 0.5: float32 ``(16000,)``."""
    t = np.arange(16000, dtype=np.float64) / 16000
    return (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def pytest_addoption(parser):
    """``--full``: larger sizes for tests that scale (e.g. the audio fuzz test's number of mutated files)."""
    parser.addoption("--full", action="store_true", default=False, help="run size-scaled tests at full size")
