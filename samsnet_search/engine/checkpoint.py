"""The one checkpoint format: trainer resume, Ray Tune checkpoints and export all use it.

A checkpoint folder holds `last.pt` (full training state) and `best.pt` (the best weights
so far). Both are plain dicts of tensors, numbers, strings and lists, so they load with
`torch.load(weights_only=True)`: no pickled code runs on load.

last.pt: format, code_version, experiment (config dict), model_config, model (state
dict), optimizer, scaler, rng (tensors), epoch, history (list of per-epoch dicts), best.
best.pt: format, code_version, experiment, model_config, model, epoch, metrics.

Each `.pt` has a sidecar `<name>.sha256.json` (`{"sha256": ..., "bytes": ...}`) written with
it, so a copy damaged in storage or in transit is recognised on load (`verify`) instead of
being trained on or exported; files without a sidecar (older checkpoints) load unchecked.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from ..files import write_atomic
from ..model import SamsNet
from ..version import code_version

FORMAT = "samsnet-checkpoint/1"
LAST, BEST = "last.pt", "best.pt"
CHECKSUM_SUFFIX = ".sha256.json"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, with its checksum sidecar: a crash mid-write never leaves a
    truncated checkpoint (at worst a checkpoint whose sidecar disagrees: seen as corrupt)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "code_version": code_version(), **state}, buffer)
    data = buffer.getvalue()
    write_atomic(path, data)
    digest = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_atomic(checksum_path(path), json.dumps(digest).encode())


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_digest(path: Path) -> dict[str, Any]:
    """{"sha256": hex digest, "bytes": size} of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"sha256": h.hexdigest(), "bytes": size}


def verify(path: str | Path, origin: str | None = None) -> None:
    """Raise CheckpointError unless `path` matches the checksum stored beside it.

    origin: where the file came from (its stored location), named in the error instead of
    a local copy's path.
    """
    path = Path(path)
    name = origin or str(path)
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return
    try:
        expected = json.loads(sidecar.read_text())
        want_sha, want_bytes = str(expected["sha256"]), int(expected["bytes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{name}: its checksum file {sidecar.name} is unreadable ({e})") from None
    if not path.is_file():
        raise CheckpointError(f"{name}: no such checkpoint")
    actual = file_digest(path)
    if actual["bytes"] != want_bytes:
        raise CheckpointError(f"{name}: corrupt checkpoint: {actual['bytes']} bytes, {want_bytes} were written")
    if actual["sha256"] != want_sha:
        raise CheckpointError(f"{name}: corrupt checkpoint: its sha256 differs from the one written with it")


def load(path: str | Path, map_location: str | torch.device = "cpu", origin: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file, or `last.pt` from a checkpoint folder, after checking its checksum.

    origin: the stored location of a downloaded copy, named in errors instead of the copy.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LAST
        origin = f"{origin.rstrip('/')}/{LAST}" if origin else None
    name = origin or str(path)
    if not path.is_file():
        raise CheckpointError(f"{name}: no such checkpoint")
    verify(path, origin)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, pickle with code in it, ...
        raise CheckpointError(f"{name}: cannot be read as a checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not a samsnet checkpoint (expected format {FORMAT})")
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
