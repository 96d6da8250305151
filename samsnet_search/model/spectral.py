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
        # A buffer, so the window follows .to(device) and is saved with the weights.
        self.register_buffer("window", torch.hamming_window(n_fft), persistent=False)

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
        audio = torch.istft(
            spec.reshape(-1, f, t),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            length=length,
        )
        return audio.reshape(*lead, length)  # (..., C, N)
