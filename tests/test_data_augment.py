"""Uhlich et al. 2017 augmentation: gains in range, channel swaps, mixture = sum of stems."""

from __future__ import annotations

import numpy as np
import pytest

from samsnet_search.config import AugmentConfig
from samsnet_search.data.augment import apply, augment_stems, draw, mixture_of


def distinct_stems(channels: int = 2, length: int = 64) -> np.ndarray:
    """(4, C, T): every stem and channel has its own non-zero constant, so gains and swaps can be read back."""
    values = 1.0 + np.arange(4 * channels, dtype=np.float32).reshape(4, channels, 1)
    return np.repeat(values, length, axis=-1)


def read_back(stems: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recover (gains (4,), swapped (4,)) from input and output of a gain+swap augmentation."""
    gains, swaps = [], []
    for x, y in zip(stems, out):
        g = y[0, 0] / x[0, 0]
        if np.allclose(y, g * x):
            gains.append(g), swaps.append(False)
        else:
            g = y[0, 0] / x[-1, 0]
            assert np.allclose(y, g * x[::-1]), "output is neither a scaled nor a scaled and swapped stem"
            gains.append(g), swaps.append(True)
    return np.array(gains), np.array(swaps)


def test_gains_in_range_and_swaps_happen():
    cfg = AugmentConfig(gain_min=0.5, gain_max=1.5)
    stems = distinct_stems()
    rng = np.random.default_rng(0)
    all_gains, all_swaps = [], []
    for _ in range(200):
        out = augment_stems(stems, cfg, rng)
        assert out.shape == stems.shape and out.dtype == np.float32
        gains, swaps = read_back(stems, out)
        all_gains.append(gains), all_swaps.append(swaps)
    gains, swaps = np.concatenate(all_gains), np.concatenate(all_swaps)
    assert gains.min() >= 0.5 - 1e-6 and gains.max() <= 1.5 + 1e-6
    assert gains.max() - gains.min() > 0.8  # spread over the range, not a constant
    assert 0.4 < swaps.mean() < 0.6  # a fair coin per stem
    assert len({tuple(s) for s in all_swaps}) > 4  # stems swap independently


def test_no_swap_when_disabled_and_mono_untouched():
    cfg = AugmentConfig(channel_swap=False)
    stems = distinct_stems()
    rng = np.random.default_rng(1)
    for _ in range(50):
        _, swaps = read_back(stems, augment_stems(stems, cfg, rng))
        assert not swaps.any()
    mono = distinct_stems(channels=1)
    params = draw(4, AugmentConfig(), np.random.default_rng(2))
    params.swaps[:] = True
    np.testing.assert_allclose(apply(mono, params), mono * params.gains[:, None, None])


def test_mixture_is_sum_of_augmented_stems():
    rng = np.random.default_rng(3)
    stems = rng.standard_normal((4, 2, 1000)).astype(np.float32)
    out = augment_stems(stems, AugmentConfig(), rng)
    np.testing.assert_allclose(mixture_of(out), out[0] + out[1] + out[2] + out[3], rtol=1e-6, atol=1e-6)


def test_same_generator_state_same_augmentation():
    stems = distinct_stems()
    a = augment_stems(stems, AugmentConfig(), np.random.default_rng(5))
    b = augment_stems(stems, AugmentConfig(), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_gain_bounds_are_validated():
    with pytest.raises(ValueError, match="gain_min"):
        AugmentConfig(gain_min=2.0, gain_max=1.0)
