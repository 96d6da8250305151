"""Trial schedulers a study can name (`search.scheduler`): one registry, each entry with its checks.

A scheduler decides, from each epoch's quality metric, whether a trial goes on. The
pruning ones remember which trials they stopped before the epoch budget
(`adapters.PruneRecording`), so that the driver tags those runs `pruned`. With several
objectives a scheduler still ranks on the quality metric alone (it gets its own
metric/mode then: TuneConfig has none, see `searchers.tune_metric`).

An entry: `build(study)` returns the Tune scheduler (None: Tune's FIFO), `check(study)` a
problem with the study's settings (a `key: what is wrong (what is valid)` line) or None.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

# A search.study.Study: not imported, since the study module imports this registry to check a study.
Study = Any

log = logging.getLogger(__name__)

TIME_ATTR = "training_iteration"  # one report per epoch


@dataclass(frozen=True)
class SchedulerEntry:
    name: str
    label: str  # how reports name it
    description: str
    build: Callable[[Study], Any]
    check: Callable[[Study], str | None] = lambda study: None  # the settings are fine
    prunes: bool = True  # stops weak trials before their budget
    settings: tuple[str, ...] = ()  # the `search:` keys it reads (max_t: the resolved epoch budget)

    def settings_of(self, search: Any, max_t: int | None) -> dict[str, Any]:
        """{key: value} of this scheduler's settings in a study's `search:` (a SearchSettings);
        `max_t` is the study's resolved budget (search.max_t, else train.epochs)."""
        return {key: max_t if key == "max_t" else getattr(search, key) for key in self.settings}

    def describe(self, search: Any, max_t: int | None) -> str:
        """`asha (grace 1, reduction factor 2, max_t 8)`: the name and its settings, as reports write them."""
        words = {"grace_period": "grace", "reduction_factor": "reduction factor", "max_t": "max_t"}
        values = self.settings_of(search, max_t)
        shown = ", ".join(f"{words[k]} {v:g}" if isinstance(v, float) else f"{words[k]} {v}" for k, v in values.items())
        return f"{self.name} ({shown})" if shown else self.name

    def caveat(self, metric: str) -> str:
        """What a Pareto front of a multi-objective study must say about this scheduler."""
        if self.prunes:
            return f"{self.label} pruned on {metric} alone: pruned trials are scored at the epoch they reached"
        return f"{self.label}: every trial ran its full budget (or stopped early)"


def _own_metric(study: Study) -> dict[str, Any]:
    """The scheduler's metric/mode: from TuneConfig for one objective, its own for several."""
    if not study.search.multi_objective:
        return {}
    # A cheap model that learns slowly can be pruned before its cost advantage counts; the
    # Pareto report says so.
    log.warning(
        "search.scheduler: %s prunes on %s alone, not on the other objectives", study.search.scheduler, study.metric
    )
    return {"metric": study.metric, "mode": study.mode}


def _cuts_at_max_t(study: Study) -> bool:
    # With max_t = train.epochs trials end by themselves (and close their own runs); the
    # scheduler stops them only when max_t cuts the budget short.
    return study.max_t < study.max_epochs


def _asha(study: Study):
    from .adapters import PruneRecordingASHA  # lazy: imports ray.tune; loading a study must not

    s = study.search
    return PruneRecordingASHA(
        **_own_metric(study),
        time_attr=TIME_ATTR,
        max_t=study.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        stop_last_trials=_cuts_at_max_t(study),
    )


def _hyperband(study: Study):
    from .adapters import PruneRecordingHyperBand  # lazy: imports ray.tune; loading a study must not

    s = study.search
    return PruneRecordingHyperBand(
        **_own_metric(study),
        time_attr=TIME_ATTR,
        max_t=study.max_t,
        reduction_factor=s.reduction_factor,
        stop_last_trials=_cuts_at_max_t(study),
    )


def _median(study: Study):
    from .adapters import PruneRecordingMedian  # lazy: imports ray.tune; loading a study must not

    # min_time_slice = inf: while too few trials have reached an epoch to compare, the rule
    # would pause a trial for a pending one (its first pause at any time: Ray's last pause
    # starts at -inf); restarting a paused trial's worker from its checkpoint costs more than
    # the epochs it frees, so trials continue instead.
    return PruneRecordingMedian(
        **_own_metric(study),
        time_attr=TIME_ATTR,
        grace_period=study.search.grace_period,
        min_time_slice=math.inf,
        budget=study.max_t,
    )


def _check_horizon(study: Study) -> str | None:
    """A scheduler that ends trials at max_t must leave early stopping room to act."""
    horizon = min(study.max_epochs, max(study.values("train.patience")))
    if study.max_t < horizon:
        return (
            f"search.max_t: {study.max_t} is below the patience horizon {horizon} (min of train.epochs and "
            f"train.patience): {study.search.scheduler} would end every trial before early stopping could; "
            f"valid: max_t >= {horizon}, or max_t = train.epochs"
        )
    return None


def _check_no_max_t(study: Study) -> str | None:
    if study.search.max_t is not None:
        return (
            "search.max_t: the median rule never ends a trial at max_t (trials run train.epochs unless "
            "stopped); valid: leave max_t out, or scheduler asha or hyperband"
        )
    return None


SCHEDULERS: dict[str, SchedulerEntry] = {
    e.name: e
    for e in (
        SchedulerEntry(
            "asha",
            "ASHA",
            "asynchronous successive halving: prunes weak trials at rungs (grace_period, reduction_factor, max_t)",
            _asha,
            _check_horizon,
            settings=("grace_period", "reduction_factor", "max_t"),
        ),
        SchedulerEntry(
            "hyperband",
            "HyperBand",
            "synchronous HyperBand brackets (reduction_factor, max_t); pauses trials between rungs",
            _hyperband,
            _check_horizon,
            settings=("reduction_factor", "max_t"),
        ),
        SchedulerEntry(
            "median",
            "Median stopping",
            "median stopping rule: stops a trial whose best result is "
            "worse than the median of the others' running means at the same epoch (after grace_period)",
            _median,
            _check_no_max_t,
            settings=("grace_period",),
        ),
        SchedulerEntry("fifo", "FIFO", "never stops a trial early", lambda study: None, prunes=False),
    )
}


def get(name: str) -> SchedulerEntry:
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise ConfigError(f"search.scheduler: {name!r} is not a scheduler; valid: {', '.join(SCHEDULERS)}") from None


def build_scheduler(study: Study):
    """The study's Tune scheduler (None for FIFO)."""
    return get(study.search.scheduler).build(study)


def check(study: Study) -> None:
    """The scheduler's own checks: ConfigError `FILE: key: ...`."""
    problem = get(study.search.scheduler).check(study)
    if problem:
        raise ConfigError(f"{study.source}: {problem}")
