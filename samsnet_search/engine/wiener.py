"""Post-filters that make the stems add up to the mixture: a multichannel Wiener filter and a residual.

The paper applies each target's sigmoid mask to the mixture independently, so the four
estimates need not sum to the mixture (on a real song they summed with ~7 dB SNR).

* `wiener`: sigsep's `norbert` filter (open-unmix's, Nugraha et al. 2016) in torch, on the
  spectrogram's device: the masked magnitudes give the first estimates, either through a soft mask
  (`start="softmask"`, the ratio of the targets' magnitudes: norbert's `use_softmask=True`) or
  as they are with the mixture's phase (`start="magnitudes"`: norbert's `use_softmask=False`,
  open-unmix's default, `Separator(softmask=False)`), then `iterations` EM steps re-estimate each target's power spectral density and
  spatial covariance and apply the multichannel Wiener gains. Any number of iterations gives
  estimates whose STFTs sum to the mixture's STFT. It works in complex128 on every device, as
  norbert (`WORK_DTYPE`), on windows of `window_frames` frames (open-unmix's
  `wiener_win_len=300`), which bounds its memory and lets the spatial covariances follow the song.
  The windows are fixed to the song (frames [k W, (k + 1) W)), not to the spectrogram handed in:
  `first_frame` says where that spectrogram starts, so a chunked separation filters each frame in
  the same window as a whole-song one (`separate.chunk_plan` adds a window of context).
  No value leaves the device, so a separation on a GPU keeps its spectrograms there;
  tests/test_wiener_torch.py holds it to norbert, which stays as the tests' reference.
* `residual`: "other" becomes the mixture minus the other targets (as demucs users expect
  from a four-stem model), in the time domain, so the stems sum to the mixture exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import TARGETS

WINDOW_FRAMES = 300  # open-unmix's wiener_win_len: frames per filter window
# The filter's precision on every device, as norbert's: in complex64 the diagonal loading norbert
# derives from the dtype's epsilon is large enough to drop quiet bins, so the stems would no longer
# sum to the mixture and SDR would move (tests/test_wiener_torch.py). A window's tensors are small.
WORK_DTYPE = torch.complex128
RESIDUAL_TARGET = TARGETS.index("other")
# How the EM's first estimates are made from the masked magnitudes v and the mixture x:
# "softmask": v / sum(v) * x (norbert's default, use_softmask=True);
# "magnitudes": v with x's phase (norbert's use_softmask=False, open-unmix's Separator default).
STARTS = ("softmask", "magnitudes")


@dataclass(frozen=True)
class PostFilter:
    """What happens after the masks: `wiener` EM iterations (0: the paper's plain masks) from
    `start` (one of `STARTS`), `residual`."""

    wiener: int = 0
    residual: bool = False
    window_frames: int = WINDOW_FRAMES
    start: str = "softmask"

    def __post_init__(self) -> None:
        if self.wiener < 0 or self.window_frames < 1:
            raise ValueError(
                f"wiener iterations must be >= 0 and window_frames >= 1 (got {self.wiener}, {self.window_frames})"
            )
        if self.start not in STARTS:
            raise ValueError(f"wiener start must be one of {', '.join(STARTS)} (got {self.start!r})")

    @property
    def label(self) -> str:
        """How reports name it."""
        parts = []
        if self.wiener:
            start = "" if self.start == "softmask" else f", from the {self.start}"
            parts.append(f"Wiener filter ({self.wiener} EM iteration{'s' if self.wiener > 1 else ''}{start})")
        if self.residual:
            parts.append("other = mixture - rest")
        return " + ".join(parts) or "plain masks (paper)"

    @property
    def context_frames(self) -> int:
        """Frames of context a chunk needs on each side for the filter to see whole windows."""
        return self.window_frames if self.wiener else 0

    def apply(self, masks: torch.Tensor, spec: torch.Tensor, first_frame: int = 0) -> torch.Tensor:
        """masks (S, C, F, T) real, mixture spec (C, F, T) complex -> target spectrograms (S, C, F, T).
        first_frame: spec's first frame in the song (where the filter's windows fall)."""
        if not self.wiener:
            return masks.to(spec.real.dtype) * spec.unsqueeze(0)  # mixture phase, as the paper
        v = masks * spec.abs().unsqueeze(0)
        return wiener(v, spec, self.wiener, self.window_frames, self.start, first_frame)


def wiener(
    v: torch.Tensor,
    x: torch.Tensor,
    iterations: int,
    window_frames: int = WINDOW_FRAMES,
    start: str = "softmask",
    first_frame: int = 0,
) -> torch.Tensor:
    """Multichannel Wiener filter (norbert's `wiener`). v: target magnitudes (S, C, F, T); x: mixture (C, F, T) complex.

    Returns the target spectrograms (S, C, F, T) in x's dtype, on x's device; with `iterations` > 0
    (or the soft-mask start) they sum to x over S. `start`: one of `STARTS`. Windows cover the
    song's frames [k window_frames, (k + 1) window_frames); x's first frame is the song's `first_frame`.
    """
    if start not in STARTS:
        raise ValueError(f"wiener start must be one of {', '.join(STARTS)} (got {start!r})")
    T = x.shape[-1]
    out = torch.empty((v.shape[0], *x.shape), dtype=x.dtype, device=x.device)
    for edge in range(-(first_frame % window_frames), T, window_frames):
        first, stop = max(0, edge), min(T, edge + window_frames)
        # Channels last, so each time-frequency bin's C x C algebra is on the innermost axes.
        mix = x[..., first:stop].to(WORK_DTYPE).permute(1, 2, 0).contiguous()  # (F, T, C)
        mag = v[..., first:stop].to(WORK_DTYPE.to_real()).permute(0, 2, 3, 1).contiguous()  # (S, F, T, C)
        out[..., first:stop] = _wiener_window(mag, mix, iterations, start).permute(0, 3, 1, 2)
    return out


def _wiener_window(v: torch.Tensor, x: torch.Tensor, iterations: int, start: str) -> torch.Tensor:
    """One window, channels last: v (S, F, T, C) real, x (F, T, C) complex -> (S, F, T, C) complex."""
    eps = torch.finfo(v.dtype).eps  # norbert: the epsilon of the working precision
    if start == "softmask":
        y = v / (eps + v.sum(0)) * x  # each target's share of the magnitudes
    else:  # the magnitudes with the mixture's phase, x / |x| (norbert: exp(1j * angle(x)), 1 where x is 0)
        y = v * torch.where(x == 0, torch.ones_like(x), x / x.abs())
    if not iterations:
        return y
    # norbert runs the EM on the mixture scaled to |x| <= 10 (when louder) for numerical stability;
    # a 0-d tensor, so no value leaves the device.
    scale = (_power(x).amax().sqrt() / 10).clamp(min=1.0)
    x, y = x / scale, y / scale
    for _ in range(iterations):
        y = _em_step(y, x, eps)
    return y * scale


def _em_step(y: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """One EM iteration (norbert's `expectation_maximization`): y (S, F, T, C) estimates, x (F, T, C) mixture.

    Re-estimates each target's power spectral density v_j (S, F, T) and spatial covariance
    R_j (S, F, C, C) from the estimates, then separates again with the Wiener gains
    v_j R_j Cxx^-1, Cxx = sum_j v_j R_j (Nugraha et al. 2016).
    """
    psd = _power(y).mean(-1)  # (S, F, T)
    cov = torch.einsum("sftc,sftd->sfcd", y, y.conj())  # sum over frames of y y^H
    cov = cov / (eps + psd.sum(-1))[..., None, None]  # R_j: (S, F, C, C), weighted by the frames' power
    mix_cov = torch.einsum("sft,sfcd->ftcd", psd.to(cov.dtype), cov)  # Cxx: (F, T, C, C)
    # norbert's diagonal loading keeps Cxx invertible where every target is silent.
    eye = torch.eye(x.shape[-1], dtype=cov.dtype, device=cov.device)
    inv = _invert(mix_cov + math.sqrt(eps) * eye, eps)
    # v_j R_j (Cxx^-1 x): Cxx^-1 x is shared by the targets, so no (S, F, T, C, C) gain is formed
    # (norbert forms v_j R_j Cxx^-1 first; the products differ by rounding only).
    shared = torch.einsum("ftde,fte->ftd", inv, x)  # (F, T, C)
    return torch.einsum("sfcd,ftd->sftc", cov, shared) * psd[..., None]


def _power(z: torch.Tensor) -> torch.Tensor:
    """|z|^2 of a complex tensor, without the square root of `abs`."""
    return z.real.square() + z.imag.square()


def _invert(m: torch.Tensor, eps: float) -> torch.Tensor:
    """Inverse of (..., C, C) matrices as norbert's `_invert`: closed forms for one and two channels
    (no factorisation, the stereo case), a pseudo-inverse cut at `eps` beyond."""
    channels = m.shape[-1]
    if channels == 1:
        return 1.0 / (m + eps)
    if channels == 2:
        a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
        adjugate = torch.stack([d, -b, -c, a], -1).view(m.shape)
        return adjugate * (1.0 / (a * d - b * c))[..., None, None]
    return torch.linalg.pinv(m, rtol=eps)


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
