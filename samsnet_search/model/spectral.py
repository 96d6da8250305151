"""STFT front end: Hamming window, frame `n_fft`, hop `hop_length` (paper: 4096 / 1024)."""

from __future__ import annotations

import torch
from torch import nn


class Spectrogram(nn.Module):
    """Complex STFT and its inverse.

    `forward(audio)`: audio (B, C, N) -> complex spectrogram (B, C, F, T),
    F = n_fft // 2 + 1, T = 1 + N // hop_length (centered frames).
    `inverse(spec, length)`: complex (..., C, F, T) -> audio (..., C, length).
    """

    def __init__(self, n_fft: int = 4096, hop_length: int = 1024):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        # A buffer, so the window follows .to(device) (not saved: it follows from n_fft). Cloned: the
        # periodic window is a view of n_fft + 1 values, which torch.export's archive would warn about.
        self.register_buffer("window", torch.hamming_window(n_fft).clone(), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        *lead, n = audio.shape
        spec = torch.stft(
            audio.reshape(-1, n).float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            return_complex=True,
        )
        return spec.reshape(*lead, *spec.shape[-2:])  # (B, C, F, T)

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        *lead, f, t = spec.shape
        # The centred inverse, cut from the whole overlap-add: istft's own `length=` is a plain
        # int that torch.export would freeze at the example's length. The Hamming window never
        # vanishes, so the uncentred inverse is defined at the edges too; same samples.
        audio = torch.istft(
            spec.reshape(-1, f, t),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=False,
        )  # (-1, n_fft + hop * (t - 1))
        start = self.n_fft // 2
        audio = audio[:, start : start + length]
        audio = torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))  # past the last frame: zeros, as istft
        return audio.reshape(*lead, length)  # (..., C, N)
