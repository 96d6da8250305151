"""Driver-side bookkeeping: which trials the scheduler pruned, final status tags, live-view events.

Only the driver sees scheduler decisions: when a scheduler stops a trial, Ray ends its actor and
the trial's own code never runs again, so the driver tags that trial's MLflow run
(`samsnet.status = pruned`) from `on_trial_complete`. Trials that finish by themselves
tag their own runs (completed / stopped_early / failed); a trial killed outright (worker
crash) is tagged failed here.

Tune pickles its callbacks and scheduler into the experiment folder and restores them on
`Tuner.restore`, so these objects hold only picklable state. Listeners that cannot be
pickled (the terminal view) are registered per study in this process with
`add_listener` and looked up by name at each event.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ray.tune import Callback

from ..services import stop, tracking
from ..services.tracking import TrackingTarget
from .adapters import PruneRecording
from .objectives import better
from .objectives import get as objective
from .trial import RUN_ID_KEY, trial_workdir

log = logging.getLogger(__name__)


@dataclass
class TrialEvent:
    """What a listener sees: one trial changed. `statuses` covers every trial seen so far."""

    kind: str  # "start", "result", "complete", "error"
    trial_id: str
    status: str
    result: dict[str, Any]
    statuses: dict[str, str]
    best: dict[str, Any] | None


Listener = Callable[[TrialEvent], None]
_LISTENERS: dict[str, list[Listener]] = {}
_LOCK = threading.Lock()


def add_listener(study_name: str, listener: Listener) -> None:
    with _LOCK:
        _LISTENERS.setdefault(study_name, []).append(listener)


def remove_listener(study_name: str, listener: Listener) -> None:
    with _LOCK:
        if listener in _LISTENERS.get(study_name, []):
            _LISTENERS[study_name].remove(listener)


@dataclass
class StudyCallback(Callback):
    """Sets final MLflow status tags for trials the driver ended, and tells listeners."""

    study_name: str
    target: TrackingTarget
    metric: str
    mode: str
    max_t: int
    epochs: int  # train.epochs when fixed (the largest value when searched)
    experiment_id: str
    parent_run_id: str
    scheduler: PruneRecording | None = None
    statuses: dict[str, str] = field(default_factory=dict)
    best: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        Callback.__init__(self)

    # --- Tune hooks ------------------------------------------------------------------

    def setup(self, **info) -> None:
        """Also runs on `Tuner.restore`: trials that ended before come from MLflow, so the
        live view counts them (Tune restores this object as it was when the study began)."""
        try:
            self.statuses, self.best = previous_statuses(
                self.target, self.experiment_id, self.parent_run_id, self.metric, self.mode
            )
        except Exception as e:
            log.warning("could not read earlier trial statuses: %s", e)

    def on_step_begin(self, iteration, trials, **info) -> None:
        """Fencing: a driver that lost the study's lease (it was paused and taken over) stops
        before its next step starts or saves anything."""
        stop.check_fences()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.statuses[trial.trial_id] = "running"
        self._emit("start", trial, {"config": dict(trial.config)})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if better(value, (self.best or {}).get(self.metric), self.mode):
            self.best = {
                "trial_id": trial.trial_id,
                "epoch": result.get("epoch"),
                self.metric: value,
                "config": dict(trial.config),
            }
        self._emit("result", trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        status = self._final_status(trial.trial_id, result, trial.config)
        self._tag(result, status)
        self.statuses[trial.trial_id] = status
        # A pruned trial's actor is ended before its code can clean up (Tune keeps the
        # reported checkpoints); only where the driver shares the worker's disk.
        shutil.rmtree(trial_workdir(self.study_name, trial.trial_id), ignore_errors=True)
        self._emit("complete", trial, result)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        error = str(getattr(trial, "error_message", None) or "trial failed")
        if worker_lost(error):  # not the trial's error: `resume --restart-errored` continues it
            error = f"infrastructure: its worker process died again and again (host memory?): {error}"
        self._tag(result, "failed", error=error)
        self.statuses[trial.trial_id] = "failed"
        # Tune retries no more; its kept checkpoints serve `--restart-errored` (only where
        # the driver shares the worker's disk, as for pruned trials).
        shutil.rmtree(trial_workdir(self.study_name, trial.trial_id), ignore_errors=True)
        self._emit("error", trial, result)

    # --- helpers ---------------------------------------------------------------------

    def _final_status(self, trial_id: str, result: dict, config: dict) -> str:
        if self.scheduler is not None and trial_id in self.scheduler.pruned:
            return "pruned"
        if result.get("stopped_early"):
            return "stopped_early"
        epoch = int(result.get("epoch", 0) or 0)
        epochs = int(config.get("train.epochs", self.epochs))
        budget = min(self.max_t, epochs)
        return "completed" if epoch >= budget else "stopped"

    def _tag(self, result: dict, status: str, error: str | None = None) -> None:
        """Set the status unless the trial's own code already set a final one."""
        run_id = result.get(RUN_ID_KEY)
        if not run_id:
            return
        try:
            current = tracking.client(self.target).get_run(run_id).data.tags.get(tracking.STATUS_TAG)
            if current in tracking.FINAL_STATUSES:
                return
            tracking.set_status(self.target, run_id, status, error)
        except Exception as e:  # tracking trouble must not stop the study
            log.warning("could not tag MLflow run %s as %s: %s", run_id, status, e)

    def _emit(self, kind: str, trial, result: dict) -> None:
        with _LOCK:
            listeners = list(_LISTENERS.get(self.study_name, []))
        if not listeners:
            return
        event = TrialEvent(
            kind,
            trial.trial_id,
            self.statuses.get(trial.trial_id, "running"),
            dict(result),
            dict(self.statuses),
            self.best,
        )
        for listener in listeners:
            try:
                listener(event)
            except Exception as e:  # a broken view must not stop the study
                log.warning("listener failed: %s", e)


def previous_statuses(
    target: TrackingTarget, experiment_id: str, parent_run_id: str, metric: str, mode: str
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Final statuses of a study's trial runs, and the best value of `metric` among them."""
    statuses: dict[str, str] = {}
    best = None
    key = objective(metric).best_key  # logged every epoch with the metric itself
    for run in tracking.find_child_runs(target, experiment_id, parent_run_id):
        trial_id = run.data.tags.get(tracking.TRIAL_TAG)
        status = run.data.tags.get(tracking.STATUS_TAG)
        if trial_id and status in tracking.FINAL_STATUSES:
            statuses[trial_id] = status
        value = run.data.metrics.get(key)
        if status == "failed":  # a failed trial is never the best
            continue
        if trial_id and better(value, (best or {}).get(metric), mode):
            best = {"trial_id": trial_id, metric: value}
    return statuses, best


def worker_lost(error: str) -> bool:
    """Ray's words for a worker process that died under a trial (SIGKILL, OOM killer, lost node)."""
    return any(w in error for w in ("ActorDiedError", "RayActorError", "actor died", "NodeDiedError"))
