"""What a study can optimise: one table of objectives, and the one comparison of their values.

Each entry says how a value is compared (its direction), where it comes from (a key of the
trainer's per-epoch metrics, or the model's cost known before training) and how reports show
it. The study schema (`search.metric`, `search.objectives`), a trial's history, the
schedulers, the multi-objective searcher, the selection and the reports all read this table,
so a new objective is one entry here (and its tests), provided its value reaches Tune's
results under `name`.

`better` is the only place a direction is applied: missing and non-finite values are never
better than anything (a diverged trial reports NaN), and any finite value beats a missing one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence, TypeVar

Mode = Literal["min", "max"]
MODES: tuple[str, ...] = ("min", "max")
T = TypeVar("T")


@dataclass(frozen=True)
class Objective:
    """One objective. `quality` objectives are measured each epoch by the trainer (schedulers
    and checkpoints rank on them); `cost` objectives describe the model (known before training,
    reported with every result)."""

    name: str  # the study's name for it and its key in every Tune result / MLflow metric
    mode: Mode
    kind: Literal["quality", "cost"]
    label: str  # column header in reports
    fmt: str  # how reports print one value
    description: str
    # A train setting that says how often the trainer computes the value: comparing it every
    # epoch (schedulers, checkpoints) needs it to be 1.
    every: str | None = None

    @property
    def best_key(self) -> str:
        """The best value so far, carried by every result of a trial (trial.BestSoFar; the
        trainer's own `best_valid_loss`): what a multi-objective searcher and a resumed
        driver judge a trial by, as its best checkpoint holds it."""
        return f"best_{self.name}"

    def format(self, value: float) -> str:
        return self.fmt.format(value)


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "valid_loss", "min", "quality", "loss", "{:.4f}", "validation MSE of the target magnitudes, every epoch"
        ),
        Objective(
            "valid_sdr",
            "max",
            "quality",
            "SDR dB",
            "{:.2f}",
            "validation SDR (dB, average of the four targets)",
            every="train.valid_sdr_every",
        ),
        Objective("params", "min", "cost", "params", "{:,.0f}", "parameter count of the model"),
        Objective(
            "gmacs_per_second", "min", "cost", "GMAC/s", "{:.3f}", "multiply-accumulates per second of audio (GMAC)"
        ),
    )
}


def get(name: str) -> Objective:
    """The entry of `name`; KeyError naming the valid ones otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not an objective; valid: {', '.join(OBJECTIVES)}") from None


def names(kind: str | None = None) -> list[str]:
    """Objective names in table order, of one kind (quality / cost) or all."""
    return [o.name for o in OBJECTIVES.values() if kind is None or o.kind == kind]


def mode_of(name: str) -> str:
    return get(name).mode


def per_epoch_keys() -> tuple[str, ...]:
    """Result keys each epoch brings for the objectives (what a trial's history must keep)."""
    return tuple(names("quality"))


def searcher_objectives(metric: str, objectives: Iterable[str]) -> dict[str, str]:
    """{result key: mode} a multi-objective searcher is told of each finished trial: the quality
    metric at the trial's best epoch (`best_<metric>`), then the model's costs."""
    out = {get(metric).best_key: mode_of(metric)}
    out.update({name: mode_of(name) for name in objectives if name != metric})
    return out


# --- comparing values --------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def better(a: Any, b: Any, mode: str) -> bool:
    """Whether `a` is strictly better than `b` under `mode` (min or max).

    A missing or non-finite `a` is never better; a finite `a` is better than a missing or
    non-finite `b`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not _finite(a):
        return False
    if not _finite(b):
        return True
    return a < b if mode == "min" else a > b


def best_of(items: Iterable[T], mode: str, key: Callable[[T], Any] | None = None) -> T | None:
    """The best item by `key(item)` (the item itself by default) under `mode`; the first of
    equals; None when no item has a finite value."""
    best: T | None = None
    best_value: Any = None
    for item in items:
        value = key(item) if key is not None else item
        if better(value, best_value, mode):
            best, best_value = item, value
    return best


def dominates(a: Sequence[Any], b: Sequence[Any], modes: Sequence[str]) -> bool:
    """Point a is no worse than b in every objective and better in one (Pareto); `modes` gives
    each position's direction."""
    no_worse = all(not better(y, x, m) for x, y, m in zip(a, b, modes))
    return no_worse and any(better(x, y, m) for x, y, m in zip(a, b, modes))
