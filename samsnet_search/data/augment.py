"""Uhlich et al. 2017 data augmentation, as open-unmix applies it to MUSDB18 training segments.

Per stem: a random gain in [gain_min, gain_max] and, with probability 0.5, swapped left/right
channels. With `remix`, the caller draws each stem from its own random training track at its own
random offset (see `dataset.TrainSegments`), so the mixtures the model sees are new combinations.
The mixture of an augmented example is always the sum of its augmented stems.
All randomness comes from the numpy Generator the caller passes, so examples are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import AugmentConfig


@dataclass
class StemAugment:
    """What was drawn for one example: gains (S,) and channel swaps (S,) bool, one per stem."""

    gains: np.ndarray
    swaps: np.ndarray


def draw(n_stems: int, cfg: AugmentConfig, rng: np.random.Generator) -> StemAugment:
    """Draw gains uniformly in [gain_min, gain_max] and a fair coin per stem for the channel swap."""
    gains = rng.uniform(cfg.gain_min, cfg.gain_max, size=n_stems).astype(np.float32)
    swaps = rng.random(n_stems) < 0.5
    return StemAugment(gains=gains, swaps=swaps if cfg.channel_swap else np.zeros(n_stems, bool))


def apply(stems: np.ndarray, params: StemAugment) -> np.ndarray:
    """stems: (S, C, T) -> (S, C, T) float32, each stem scaled and (if drawn) channel-reversed.

    A channel swap reverses the channel axis; mono stems (C == 1) are left as they are.
    """
    out = stems * params.gains[:, None, None]
    if stems.shape[1] > 1 and params.swaps.any():
        out[params.swaps] = out[params.swaps, ::-1]
    return out.astype(np.float32, copy=False)


def augment_stems(stems: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random gain and channel swap per stem. stems: (S, C, T) -> (S, C, T) float32."""
    return apply(stems, draw(stems.shape[0], cfg, rng))


def mixture_of(stems: np.ndarray) -> np.ndarray:
    """The mixture (C, T) of stems (S, C, T): their sum."""
    return stems.sum(axis=0, dtype=np.float32)
