"""Data: MUSDB18 / MUSDB18-HQ loading and splits, decoded-audio cache, augmentation, training
segments, validation excerpts, and the synthetic MUSDB18-HQ-format generator.

    from samsnet_search.data import load_splits, make_train_loader, validation_excerpts

Names are imported lazily, so `import samsnet_search.data.synth` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Track": "splits",
    "Splits": "splits",
    "load_splits": "splits",
    "load_subset": "splits",
    "prepare": "splits",
    "KIND_HQ": "splits",
    "KIND_STEMS": "splits",
    "KIND_SYNTH": "splits",
    "TrainSegments": "dataset",
    "make_train_loader": "dataset",
    "validation_excerpts": "dataset",
    "Excerpt": "dataset",
    "synthesize": "synth",
    "read_sections": "synth",
    "STEM_NAMES": "readers",
    "official_validation_tracks": "readers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
