"""Post-filters that make the stems add up to the mixture: a multichannel Wiener filter and a residual.

The paper applies each target's sigmoid mask to the mixture independently, so the four
estimates need not sum to the mixture (on a real song they summed with ~7 dB SNR).

* `wiener`: sigsep's `norbert` (the filter of open-unmix, Nugraha et al. 2016): the masked
  magnitudes initialise a soft mask (ratio of the targets' magnitudes), then `iterations` EM
  steps re-estimate each target's power spectral density and spatial covariance and apply the
  multichannel Wiener gains. Any number of iterations gives estimates whose STFTs sum to the
  mixture's STFT. It runs on windows of `window_frames` frames (open-unmix's
  `wiener_win_len=300`), which bounds its memory (norbert works in complex128) and lets the
  spatial covariances follow the song.
* `residual`: "other" becomes the mixture minus the other targets (as demucs users expect
  from a four-stem model), in the time domain, so the stems sum to the mixture exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import TARGETS

with warnings.catch_warnings():
    # norbert 0.2.1 imports gaussian_filter1d from scipy.ndimage.filters (deprecated namespace,
    # same function); the filter itself runs unchanged on numpy 2.x.
    warnings.simplefilter("ignore", DeprecationWarning)
    import norbert

WINDOW_FRAMES = 300  # open-unmix's wiener_win_len: frames per filter window
RESIDUAL_TARGET = TARGETS.index("other")


@dataclass(frozen=True)
class PostFilter:
    """What happens after the masks: `wiener` EM iterations (0: the paper's plain masks), `residual`."""

    wiener: int = 0
    residual: bool = False
    window_frames: int = WINDOW_FRAMES

    def __post_init__(self) -> None:
        if self.wiener < 0 or self.window_frames < 1:
            raise ValueError(
                f"wiener iterations must be >= 0 and window_frames >= 1 (got {self.wiener}, {self.window_frames})"
            )

    @property
    def label(self) -> str:
        """How reports name it."""
        parts = []
        if self.wiener:
            parts.append(f"Wiener filter ({self.wiener} EM iteration{'s' if self.wiener > 1 else ''})")
        if self.residual:
            parts.append("other = mixture - rest")
        return " + ".join(parts) or "plain masks (paper)"

    def apply(self, masks: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        """masks (S, C, F, T) real, mixture spec (C, F, T) complex -> target spectrograms (S, C, F, T)."""
        if not self.wiener:
            return masks.to(spec.real.dtype) * spec.unsqueeze(0)  # mixture phase, as the paper
        return wiener(masks * spec.abs().unsqueeze(0), spec, self.wiener, self.window_frames)


def wiener(v: torch.Tensor, x: torch.Tensor, iterations: int, window_frames: int = WINDOW_FRAMES) -> torch.Tensor:
    """Multichannel Wiener filter (norbert). v: target magnitudes (S, C, F, T); x: mixture (C, F, T) complex.

    Returns the target spectrograms (S, C, F, T) in x's dtype; they sum to x over S.
    """
    S, C, Fq, T = v.shape
    out = torch.empty((S, C, Fq, T), dtype=x.dtype, device=x.device)
    for start in range(0, T, window_frames):
        stop = min(T, start + window_frames)
        v_np = v[..., start:stop].permute(3, 2, 1, 0).double().cpu().numpy()  # norbert: (T, F, C, S)
        x_np = x[..., start:stop].permute(2, 1, 0).cpu().numpy().astype(np.complex128)  # (T, F, C)
        y = norbert.wiener(v_np, x_np, iterations)  # (T, F, C, S)
        out[..., start:stop] = torch.from_numpy(y).permute(3, 2, 1, 0).to(x.dtype)
    return out


def mixture_residual(estimates: np.ndarray, mixture: np.ndarray) -> np.ndarray:
    """estimates (S, C, N) with "other" replaced by the mixture (C, N) minus the other targets."""
    out = estimates.copy()
    rest = np.delete(estimates, RESIDUAL_TARGET, axis=0).sum(0)
    out[RESIDUAL_TARGET] = mixture - rest
    return out


def sum_snr(estimates: np.ndarray, mixture: np.ndarray) -> float:
    """How well the stems add up: 10 log10(|mixture|^2 / |mixture - sum of stems|^2) in dB."""
    error = mixture.astype(np.float64) - estimates.astype(np.float64).sum(0)
    return float(10 * np.log10(np.sum(mixture.astype(np.float64) ** 2) / max(np.sum(error**2), 1e-30)))
