"""Ray Tune's schedulers and OptunaSearch with what the study needs of them.

The pruning schedulers remember which trials they stopped before the epoch budget, so that
the driver can tag those runs `pruned` (only the driver sees scheduler decisions: Ray ends
a stopped trial's actor before its code runs again). The Optuna searcher tolerates results
of trials it does not know (a resumed study). Tune pickles schedulers and searchers into the
study folder, so these hold only picklable state. Nothing here imports the rest of the
search: the registries (`schedulers`, `searchers`) and the driver's callback use them.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, HyperBandScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from . import tune_internals

log = logging.getLogger(__name__)


class PruneRecording:
    """Mixin for a Tune scheduler: remembers the trials it stopped before `budget` epochs
    (pruned, not finished), trial id -> epoch reached. `budget` defaults to the scheduler's max_t."""

    def __init__(self, *args: Any, budget: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.budget = budget if budget is not None else kwargs.get("max_t", math.inf)
        self.pruned: dict[str, int] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self.note_stopped(trial, result)
        return action

    def note_stopped(self, trial, result: dict | None) -> None:
        t = (result or {}).get(tune_internals.time_attr(self))
        if t is not None and t < self.budget:
            self.pruned[trial.trial_id] = int(t)


class PruneRecordingASHA(PruneRecording, AsyncHyperBandScheduler):
    """ASHA that remembers which trials it stopped below `max_t`."""


class PruneRecordingMedian(PruneRecording, MedianStoppingRule):
    """The median stopping rule that remembers which trials it stopped below `budget`."""


class PruneRecordingHyperBand(PruneRecording, tune_internals.StopHook, HyperBandScheduler):
    """HyperBand that remembers which trials it stopped below `max_t`.

    Besides stopping the trial whose result it judges, HyperBand stops the bracket's paused
    losers through the controller: `StopHook` hears of those stops.
    """

    def on_stop(self, trial) -> None:
        self.note_stopped(trial, getattr(trial, "last_result", None))


class RestartTolerantOptuna(OptunaSearch):
    """OptunaSearch that ignores results of trials it does not know.

    A resumed study can hold a trial the searcher's saved state never saw (Tune saves its
    trial list and the searcher's state separately; an outage or a kill can land between),
    and `--restart-errored` reruns trials the searcher already closed. Plain OptunaSearch
    raises KeyError on their first result and the whole study stops; here such a trial
    trains on and only Optuna does not learn from it.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except KeyError as e:
            if e.args != (trial_id,):
                raise
            log.warning(
                "the searcher does not know trial %s (resumed study); its results are not told to Optuna", trial_id
            )

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        try:
            super().on_trial_complete(trial_id, result, error)
        except KeyError as e:
            if e.args != (trial_id,):
                raise
            log.warning("the searcher does not know trial %s (resumed study); its end is not told to Optuna", trial_id)
