"""Validation scores of whole excerpts, computed in chunks: device memory is set by the chunk,
not the song.

Whole-track validation (`valid_protocol: paper`, or `valid_seconds: null`) would otherwise run a
whole song through the network at once (tens of GB at the paper's shape). Both scores equal the
whole-excerpt computation up to float rounding: every chunk starts on a slice boundary and
carries the network's receptive field (`SamsNet.context_frames`) plus the frames whose STFT
window a cut changes, as `separate.chunk_plan` does for separation. An excerpt within one
chunk runs exactly as a whole.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ..config import SAMPLE_RATE
from ..model import SamsNet
from .apply import apply_chunked, blocks_of
from .device import amp_dtype
from .loss import magnitude_loss
from .separate import chunk_plan


def loss_windows(model: SamsNet, samples: int, chunk_seconds: float) -> Iterator[tuple[int, int, slice]]:
    """(lo, hi, keep): the network sees samples [lo, hi); `keep` are the frames of that window's
    STFT that belong to this chunk. The kept frames tile the excerpt's T = 1 + N // hop frames."""
    n_fft, hop, L = model.spectrogram.n_fft, model.spectrogram.hop_length, model.slice_frames
    frames = 1 + samples // hop
    edge = math.ceil(n_fft / (2 * hop))  # frames whose window reaches past a cut (reflect-padded there)
    chunk = max(L, int(chunk_seconds * SAMPLE_RATE / hop) // L * L)  # whole slices
    context = math.ceil((model.context_frames() + edge) / L) * L  # whole slices: inputs start on a slice
    for f0 in range(0, frames, chunk):
        f1 = min(frames, f0 + chunk)
        a, b = max(0, f0 - context), min(frames, f1 + context)
        hi = samples if b == frames else (b - 1) * hop + 1  # the window's STFT has frames a..b-1
        yield a * hop, hi, slice(f0 - a, f1 - a)


@torch.no_grad()
def chunked_loss(
    model: SamsNet, mixture: np.ndarray, targets: np.ndarray, device: torch.device, amp: bool, chunk_seconds: float
) -> float:
    """`magnitude_loss` of a whole excerpt. mixture: (C, N), targets: (S, C, N), on the host."""
    total, count = 0.0, 0
    for lo, hi, keep in loss_windows(model, mixture.shape[-1], chunk_seconds):
        mix = torch.tensor(mixture[..., lo:hi], device=device)[None]  # (1, C, n), a copy: the cache is read-only
        tgt = torch.tensor(targets[..., lo:hi], device=device)[None]  # (1, S, C, n)
        frames = keep.stop - keep.start
        total += magnitude_loss(model, mix, tgt, amp, keep).item() * frames  # the mean weighs every frame alike
        count += frames
    return total / count


@torch.no_grad()
def chunked_estimates(
    model: SamsNet, mixture: np.ndarray, device: torch.device, amp: bool, chunk_seconds: float
) -> np.ndarray:
    """`model.separate` of a whole excerpt (mixture phase, plain masks). (C, N) -> (S, C, N) float32."""

    def separate(audio: np.ndarray, start: int) -> np.ndarray:  # plain masks: where the piece lies does not matter
        x = torch.tensor(audio, device=device)[None]  # (1, C, n)
        with torch.autocast(device.type, dtype=amp_dtype(), enabled=amp):
            return model.separate(x)[0].float().cpu().numpy()  # (S, C, n)

    plan = chunk_plan(model, chunk_seconds)
    return np.concatenate(list(apply_chunked(separate, blocks_of(mixture, plan.chunk), plan)), axis=-1)
