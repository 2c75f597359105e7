"""Trainer-side audio augmentation: the random equaliser against known filter responses, and its determinism."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import freqz

from asr_transfer.training.data import Example, load_example_audio, peaking_biquad, random_eq


@pytest.mark.parametrize("f0,gain_db,q", [(300.0, 9.0, 0.7), (2500.0, -12.0, 2.0), (6000.0, 6.0, 1.0)])
def test_peaking_biquad_has_its_gain_at_the_centre_and_none_far_away(f0, gain_db, q):
    b, a = peaking_biquad(f0, gain_db, q)
    _, h = freqz(b, a, worN=[0.0, f0, 8000.0], fs=16000)
    db = 20 * np.log10(np.abs(h))
    assert db[1] == pytest.approx(gain_db, abs=1e-6)  # the cookbook filter is exact at f0
    assert db[0] == pytest.approx(0.0, abs=1e-6) and db[2] == pytest.approx(0.0, abs=1e-6)  # DC and Nyquist untouched


def test_random_eq_is_seeded_and_zero_gain_is_the_identity():
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    one = random_eq(wave, 9.0, np.random.default_rng(5))
    assert np.array_equal(one, random_eq(wave, 9.0, np.random.default_rng(5)))
    assert not np.allclose(one, random_eq(wave, 9.0, np.random.default_rng(6)))
    assert np.allclose(random_eq(wave, 0.0, np.random.default_rng(5)), wave, atol=1e-6)


def test_equalising_leaves_the_added_noise_draws_unchanged(tmp_path):
    """EQ takes a child RNG stream: turning it on changes the speech's timbre, not which noise is added."""
    from asr_transfer.audio import write_wav
    from asr_transfer.manifest import Utterance

    t = np.arange(16000) / 16000
    write_wav(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * t))
    ex = Example("a", Utterance(str(tmp_path / "a.wav"), 1.0, "a", id="a"), (1,), 1.0)
    clean = load_example_audio(ex)
    plain = load_example_audio(ex, 1.0, 20.0, np.random.default_rng(3)) - clean
    eq_clean = random_eq(clean, 9.0, np.random.default_rng(3).spawn(1)[0])
    eq_noise = load_example_audio(ex, 1.0, 20.0, np.random.default_rng(3), eq_db=9.0) - eq_clean
    assert np.corrcoef(plain, eq_noise)[0, 1] > 0.9999  # same noise samples, scaled to the equalised speech's power


def test_eq_db_is_validated_and_named_on_the_card():
    from asr_transfer.config import DataArgs
    from asr_transfer.errors import ConfigError
    from asr_transfer.training.source_card import augmentation_text

    with pytest.raises(ConfigError, match="eq_db"):
        DataArgs(train_manifest="x", eq_db=-1.0)
    text = augmentation_text({"data": {"eq_db": 9.0}, "augment": {}})
    assert text == "random equaliser (2 peaking filters, gains within ±9 dB)"
