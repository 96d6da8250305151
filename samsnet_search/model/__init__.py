"""Sams-Net model (torch only: no Ray, MLflow or file I/O here)."""

from .sams_net import FrameLayerNorm, SamsModule, SamsNet, SlicedMultiHeadAttention
from .spectral import Spectrogram

__all__ = ["FrameLayerNorm", "SamsModule", "SamsNet", "SlicedMultiHeadAttention", "Spectrogram"]
