"""The training objective (paper eq. 4), shared by training and validation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import SamsNet
from .device import amp_dtype


def magnitude_loss(
    model: SamsNet, mixture: torch.Tensor, targets: torch.Tensor, amp: bool, frames: slice = slice(None)
) -> torch.Tensor:
    """MSE between estimated and true target magnitudes (paper eq. 4, all four targets).

    mixture: (B, C, N); targets: (B, S, C, N). frames: the STFT frames scored (a chunk of a
    longer excerpt keeps only its own frames; its context frames are scored by their chunk).
    """
    mix_mag = model.spectrogram(mixture).abs()  # (B, C, F, T), STFT in float32
    target_mag = model.spectrogram(targets).abs()  # (B, S, C, F, T)
    with torch.autocast(mixture.device.type, dtype=amp_dtype(), enabled=amp):
        masks = model(mix_mag)  # (B, S, C, F, T)
    return F.mse_loss((masks.float() * mix_mag.unsqueeze(1))[..., frames], target_mag[..., frames])
