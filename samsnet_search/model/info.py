"""Parameter count and multiply-accumulates (MACs) of a Sams-Net, counted from its layers."""

from __future__ import annotations

from torch import nn

from ..config import SAMPLE_RATE
from .sams_net import SamsNet, SlicedMultiHeadAttention


def _conv_macs_per_position(conv: nn.Conv2d) -> int:
    kh, kw = conv.kernel_size
    return conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def macs_per_second(model: SamsNet, sample_rate: int = SAMPLE_RATE) -> int:
    """MACs to compute the masks for one second of audio (STFT excluded).

    Every convolution runs at each (bin, frame); attention costs 2 * L * d per head and
    token (scores and weighted sum over the L frames of a slice).
    """
    per_position = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            per_position += _conv_macs_per_position(module)
        elif isinstance(module, SlicedMultiHeadAttention):
            per_position += 2 * module.heads * module.slice_frames * module.channels
    bins = model.spectrogram.n_fft // 2 + 1
    frames_per_second = sample_rate / model.spectrogram.hop_length
    return int(per_position * bins * frames_per_second)


def parameter_breakdown(model: SamsNet) -> dict[str, int]:
    """Parameters by kind: convolutions, LayerNorm affine, total."""
    norms = sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "conv_parameters": total - norms, "layernorm_parameters": norms}


def model_cost(model: SamsNet) -> dict[str, float]:
    """The cost objectives a study can minimize: parameter count and GMACs per second of audio."""
    return {"params": float(parameter_breakdown(model)["parameters"]), "gmacs_per_second": macs_per_second(model) / 1e9}
