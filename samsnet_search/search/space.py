"""The resolved search space of a study: Tune's `param_space`, its size, and its description.

Bounds in study files are inclusive on both ends; each distribution converts itself
(`Distribution.to_tune`, `to_optuna`: Ray's `randint`/`lograndint` exclude the upper bound,
so it is shifted by one there). Which form a study's space takes depends on its searcher
(`searchers.SEARCHERS`: grid searches get `tune.grid_search`).
"""

from __future__ import annotations

from typing import Any

from ..config import flatten
from . import searchers
from .study import Study


def tune_space(study: Study) -> dict[str, Any]:
    """Ray Tune `param_space` of the study's searcher: flat, dotted keys (`model.slices`) -> domains."""
    return searchers.param_space(study)


def num_trials(study: Study) -> int:
    """Trials the study will run: num_samples, times the grid size for `searcher: grid`."""
    return searchers.num_trials(study)


def space_size(study: Study) -> int | None:
    """Number of distinct configurations, None when a range is continuous."""
    total = 1
    for dist in study.space.values():
        if dist.size is None:
            return None
        total *= dist.size
    return total


def describe(study: Study) -> list[tuple[str, str]]:
    """(key, description) rows of the resolved space: searched keys, then fixed values."""
    rows = [(key, dist.describe()) for key, dist in study.space.items()]
    fixed = flatten(study.representative().model_dump(mode="json"))
    rows += [(key, repr(value)) for key, value in fixed.items() if key not in study.space]
    return rows
