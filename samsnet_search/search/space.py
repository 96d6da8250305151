"""Study distributions -> Ray Tune search space (which OptunaSearch converts) and Optuna.

Bounds in study files are inclusive on both ends; Ray's `randint`/`lograndint` exclude
the upper bound, so it is shifted by one here, and Optuna receives the same inclusive
ranges (`IntDistribution(low, high)`).
"""

from __future__ import annotations

from typing import Any

from .study import Choice, Distribution, IntRange, LogUniform, Study, Uniform


def to_tune(dist: Distribution) -> Any:
    """One distribution as a Ray Tune domain (`tune.choice`, `tune.randint`, ...)."""
    from ray import tune

    if isinstance(dist, Choice):
        return tune.choice(list(dist.choice))
    if isinstance(dist, IntRange):
        if dist.log:
            return tune.lograndint(dist.low, dist.high + 1)  # upper bound exclusive in Ray
        if dist.step != 1:
            return tune.qrandint(dist.low, dist.high, dist.step)  # inclusive when quantized
        return tune.randint(dist.low, dist.high + 1)
    if isinstance(dist, Uniform):
        return tune.uniform(*dist.uniform)
    if isinstance(dist, LogUniform):
        return tune.loguniform(*dist.loguniform)
    raise TypeError(f"unknown distribution {dist!r}")


def to_optuna(dist: Distribution) -> Any:
    """One distribution as an Optuna distribution (inclusive bounds)."""
    import optuna.distributions as od

    if isinstance(dist, Choice):
        return od.CategoricalDistribution(list(dist.choice))
    if isinstance(dist, IntRange):
        return od.IntDistribution(dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, Uniform):
        return od.FloatDistribution(*dist.uniform)
    if isinstance(dist, LogUniform):
        return od.FloatDistribution(*dist.loguniform, log=True)
    raise TypeError(f"unknown distribution {dist!r}")


def tune_space(study: Study) -> dict[str, Any]:
    """Ray Tune `param_space`: flat, dotted keys (`model.slices`) -> domains.

    Only the searched keys travel as trial config; the fixed parts reach the trainable
    through its context, so trial configs (and MLflow's compare view) show what varies.
    With `searcher: grid` every key is a `tune.grid_search` over all its values.
    """
    if study.search.searcher == "grid":
        from ray import tune

        return {key: tune.grid_search(grid_values(dist)) for key, dist in study.space.items()}
    return {key: to_tune(dist) for key, dist in study.space.items()}


def num_trials(study: Study) -> int:
    """Trials the study will run: num_samples, times the grid size for `searcher: grid`."""
    if study.search.searcher == "grid":
        return study.search.num_samples * (space_size(study) or 1)
    return study.search.num_samples


def grid_values(dist: Distribution) -> list[Any]:
    if isinstance(dist, Choice):
        return list(dist.choice)
    if isinstance(dist, IntRange):
        return list(range(dist.low, dist.high + 1, dist.step))
    raise ValueError(f"{dist.describe()} is continuous: no grid")


def optuna_space(study: Study) -> dict[str, Any]:
    return {key: to_optuna(dist) for key, dist in study.space.items()}


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
    from ..config import flatten

    rows = [(key, dist.describe()) for key, dist in study.space.items()]
    fixed = flatten(study.representative().model_dump(mode="json"))
    rows += [(key, repr(value)) for key, value in fixed.items() if key not in study.space]
    return rows
