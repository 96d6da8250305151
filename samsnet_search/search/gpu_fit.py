"""Does a study's largest trial fit its share of the declared GPU? Predicted before anything runs.

`model.memory` predicts one training step's peak from a configuration; here it is applied to
the configurations a study can produce, and the largest is held against `resources.gpu x
resources.gpu_memory_gb`. A refusal names the settings of that trial that would fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..model.memory import peak_bytes, training_shape

GB = 1e9  # gpu_memory_gb is in decimal GB, as cards are sold (an A10G's "24 GB" is 22.5 GiB usable)
# Keys whose values change a trial's memory; every other searched key is left at one value.
MEMORY_KEYS = ("model.", "data.segment_seconds", "train.batch_size", "train.amp", "train.device")


class DoesNotFit(ConfigError):
    """A study's largest trial is predicted not to fit its share of the declared GPU memory."""


@dataclass(frozen=True)
class Extreme:
    """One trial of the space (its searched values) and its predicted peak in bytes."""

    values: dict[str, Any]
    peak: int

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.values.items() if k.startswith(MEMORY_KEYS))
        return f"{self.peak / GB:.1f} GB" + (f" [{shown}]" if shown else "")


@dataclass(frozen=True)
class MemoryFit:
    smallest: Extreme
    largest: Extreme
    share_gb: float | None  # gpu x gpu_memory_gb; None when no card size is declared

    def describe(self) -> str:
        share = (
            "declare resources.gpu_memory_gb to check it" if self.share_gb is None else f"share {self.share_gb:g} GB"
        )
        return (
            f"predicted GPU peak per trial (docs/gpu-memory.md): largest {self.largest.describe()}, "
            f"smallest {self.smallest.describe()}; {share}"
        )


def predicted_peak(cfg: ExperimentConfig) -> int:
    return peak_bytes(training_shape(cfg))


def extremes(combos: list[dict[str, Any]], experiment: Callable[[dict[str, Any]], ExperimentConfig]) -> MemoryFit:
    """The smallest and largest predicted peaks over `combos` (searched values, built by `experiment`)."""
    found = sorted((Extreme(c, predicted_peak(experiment(c))) for c in combos), key=lambda e: e.peak)
    return MemoryFit(found[0], found[-1], None)


def check(fit: MemoryFit, gpu: float, card_gb: float, experiment: Callable, source: str) -> MemoryFit:
    """`fit` with its share; DoesNotFit (one line) when its largest trial needs more."""
    share = gpu * card_gb
    fit = MemoryFit(fit.smallest, fit.largest, share)
    if fit.largest.peak <= share * GB:
        return fit
    cfg = experiment(fit.largest.values)
    raise DoesNotFit(
        f"{source}: resources.gpu_memory_gb: the largest trial needs {fit.largest.describe()}, more than "
        f"its share of the card (resources.gpu {gpu:g} x gpu_memory_gb {card_gb:g} = {share:g} GB); "
        f"{_what_fits(cfg, share * GB)}"
    )


def _what_fits(cfg: ExperimentConfig, budget: float) -> str:
    """The changes to `cfg` (AMP, gradient checkpointing, a smaller batch) that bring it under `budget`."""
    toggles = [("train.amp", True), ("model.grad_checkpoint", True)]
    options = []
    for key, value in toggles:
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) == value:
            continue
        peak = predicted_peak(_with(cfg, {key: value}))
        if peak <= budget:
            options.append(f"{key}: {str(value).lower()} ({peak / GB:.1f} GB)")
    best = _with(cfg, dict(toggles))
    for base, note in ((cfg, ""), (best, " with train.amp and model.grad_checkpoint")):
        batch = _largest_batch(base, budget)
        if batch is not None:
            options.append(f"train.batch_size: {batch}{note}")
            break
    if not options:
        floor = predicted_peak(_with(best, {"train.batch_size": 1})) / GB
        return f"nothing fits: batch 1 with AMP and gradient checkpointing needs {floor:.1f} GB (fewer channels or a shorter data.segment_seconds)"
    return "would fit: " + ", or ".join(options)


def _largest_batch(cfg: ExperimentConfig, budget: float) -> int | None:
    sizes = range(cfg.train.batch_size - 1, 0, -1)
    return next((b for b in sizes if predicted_peak(_with(cfg, {"train.batch_size": b})) <= budget), None)


def _with(cfg: ExperimentConfig, updates: dict[str, Any]) -> ExperimentConfig:
    data = cfg.model_dump()
    for key, value in updates.items():
        section, name = key.split(".")
        data[section][name] = value
    return ExperimentConfig.model_validate(data)
