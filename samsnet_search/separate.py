"""Inference: separate an audio file into the four targets with a trained model."""

from __future__ import annotations

import logging
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from .config import SAMPLE_RATE, TARGETS
from .errors import DataError
from .model import SamsNet

log = logging.getLogger(__name__)


def read_audio(path: str | Path, channels: int = 2) -> np.ndarray:
    """Read any soundfile-readable file as float32 (channels, N) at 44.1 kHz."""
    path = Path(path)
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)  # (N, C)
    except Exception as e:
        raise DataError(f"{path}: cannot read audio ({e})") from None
    if not np.isfinite(audio).all():
        raise DataError(f"{path}: contains NaN or infinite samples")
    if audio.shape[1] == 1 and channels == 2:
        audio = np.repeat(audio, 2, axis=1)  # mono: the same signal on both channels
    elif audio.shape[1] != channels:
        raise DataError(f"{path}: has {audio.shape[1]} channels, the model takes {channels} (or mono)")
    if rate != SAMPLE_RATE:
        log.info("%s: resampling %d Hz -> %d Hz", path, rate, SAMPLE_RATE)
        g = gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g, axis=0).astype(np.float32)
    return np.ascontiguousarray(audio.T)


@torch.no_grad()
def separate(
    model: SamsNet, audio: np.ndarray, device: str | torch.device = "cpu", chunk_seconds: float = 30.0
) -> dict[str, np.ndarray]:
    """audio (C, N) at 44.1 kHz -> {target: (C, N)}; long inputs in chunks of bounded memory."""
    model = model.to(device).eval()
    chunk_frames = int(chunk_seconds * SAMPLE_RATE / model.spectrogram.hop_length)
    mixture = torch.from_numpy(audio)[None].to(device)  # (1, C, N)
    estimates = model.separate(mixture, chunk_frames=chunk_frames)[0].cpu().numpy()  # (S, C, N)
    return dict(zip(TARGETS, estimates))


def separate_file(
    model: SamsNet, path: str | Path, out_dir: str | Path, device: str | torch.device = "cpu"
) -> dict[str, Path]:
    """Write `<out_dir>/<target>.wav` for each target; returns the paths."""
    stems = separate(model, read_audio(path, model.audio_channels), device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for target, audio in stems.items():
        written[target] = out_dir / f"{target}.wav"
        sf.write(written[target], audio.T, SAMPLE_RATE, subtype="FLOAT")
    return written


def load_separator(model_ref: str | Path, tracking_uri: str | None = None, map_location: str = "cpu"):
    """A model for `separate` / `separate_file` from any of:

    - an export folder (`samsnet-search export`): its TorchScript module, so no SamsNet
      Python code runs (torch.stft/istft and the network are inside model.ts); every file of
      the folder must match the sha256 its export.json records, or nothing is loaded;
    - an MLflow registry URI `models:/NAME@ALIAS` or `models:/NAME/VERSION`: the export
      folder stored in that model version, downloaded, checked against the checksum the
      registry recorded, and loaded the same way (the pyfunc wrapper is not unpickled or
      executed); `tracking_uri` (default `$MLFLOW_TRACKING_URI`, else ./mlruns) names the server;
    - a checkpoint folder or .pt file: the Python SamsNet with the best weights.
    """
    import os
    import tempfile

    from . import export
    from .checkpoint import load_model

    ref = str(model_ref)
    if ref.startswith(export.REGISTRY_PREFIX):
        with tempfile.TemporaryDirectory() as tmp:
            folder = export.download_registered(ref, tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), tmp)
            return export.load_exported(folder, map_location)
    if export.is_export(ref):
        export.verify_export(ref)  # the whole folder, not only model.ts: a changed file is named
        return export.load_exported(ref, map_location)
    path = Path(ref)
    if not path.exists():
        raise export.ExportError(f"{ref}: no such file or folder (expected an export folder, a checkpoint "
                                 "folder or .pt file, or models:/NAME@ALIAS)")  # fmt: skip
    if path.is_dir() and not any((path / name).is_file() for name in ("best.pt", "last.pt")):
        raise export.ExportError(f"{ref}: neither an export folder (no {export.MANIFEST}) nor a checkpoint "
                                 "folder (no best.pt / last.pt)")  # fmt: skip
    return load_model(ref, map_location)[0]
