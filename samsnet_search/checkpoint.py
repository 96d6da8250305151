"""The one checkpoint format: trainer resume, Ray Tune checkpoints and export all use it.

A checkpoint folder holds `last.pt` (full training state) and `best.pt` (the best weights
so far). Both are plain dicts of tensors, numbers, strings and lists, so they load with
`torch.load(weights_only=True)`: no pickled code runs on load.

last.pt: format, code_version, experiment (config dict), model_config, model (state
dict), optimizer, scaler, rng (tensors), epoch, history (list of per-epoch dicts), best.
best.pt: format, code_version, experiment, model_config, model, epoch, metrics.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import ModelConfig
from .errors import CheckpointError
from .model import SamsNet

FORMAT = "samsnet-checkpoint/1"
LAST, BEST = "last.pt", "best.pt"


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def save(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "code_version": code_version(), **state}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file, or `last.pt` from a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, pickle with code in it, ...
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a samsnet checkpoint (expected format {FORMAT})")
    return state


def build_model(model_config: ModelConfig | dict[str, Any]) -> SamsNet:
    cfg = model_config if isinstance(model_config, ModelConfig) else ModelConfig.model_validate(model_config)
    return SamsNet(**cfg.model_dump())


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[SamsNet, dict[str, Any]]:
    """Best weights from a checkpoint folder (or a given .pt file) as an eval-mode model.

    Returns (model, state) where state holds the configs and metrics stored beside them.
    """
    path = Path(path)
    if path.is_dir():
        path = path / BEST if (path / BEST).is_file() else path / LAST
    state = load(path, map_location)
    model = build_model(state["model_config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the stored model config ({e})") from None
    return model.eval(), state
