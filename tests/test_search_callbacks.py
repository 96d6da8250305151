"""Driver-side pieces without a Ray cluster: pruning records, final statuses (the live view: test_search_live.py)."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from samsnet_search.search.adapters import PruneRecordingASHA
from samsnet_search.search.callbacks import StudyCallback
from samsnet_search.services.tracking import TrackingTarget


def test_asha_records_pruned_trials_not_finished_ones():
    sched = PruneRecordingASHA(
        time_attr="training_iteration",
        metric="valid_loss",
        mode="min",
        max_t=4,
        grace_period=1,
        reduction_factor=2,
        stop_last_trials=True,
    )
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for t in trials:
        sched.on_trial_add(None, t)
    # rung at epoch 1: the good trials report first, the worst is cut
    decisions = {
        t.trial_id: sched.on_trial_result(None, t, {"training_iteration": 1, "valid_loss": loss})
        for t, loss in zip(trials, [0.1, 0.2, 0.3, 5.0])
    }
    stopped = {t for t, d in decisions.items() if d == TrialScheduler.STOP}
    assert "t3" in stopped and "t0" not in stopped  # the best continues, the worst is cut
    assert sched.pruned == {t: 1 for t in stopped}
    # a trial that reaches max_t is stopped by ASHA too, but that is finishing, not pruning
    assert sched.on_trial_result(None, trials[0], {"training_iteration": 4, "valid_loss": 0.01}) == TrialScheduler.STOP
    assert "t0" not in sched.pruned


def _callback(**kw) -> StudyCallback:
    fields = dict(
        study_name="s",
        target=TrackingTarget("sqlite:///x.db"),
        metric="valid_loss",
        mode="min",
        max_t=4,
        epochs=4,
        experiment_id="1",
        parent_run_id="p",
    )
    return StudyCallback(**{**fields, **kw})


def _complete(cb: StudyCallback, trial_id: str, result: dict, config: dict | None = None) -> str:
    """The status the driver gives a trial Tune reports complete (no MLflow run: nothing to tag)."""
    cb.on_trial_complete(0, [], SimpleNamespace(trial_id=trial_id, last_result=result, config=config or {}))
    return cb.statuses[trial_id]


def test_final_status_rules():
    sched = PruneRecordingASHA(time_attr="training_iteration", metric="valid_loss", mode="min", max_t=4)
    sched.pruned["a"] = 1
    cb = _callback(scheduler=sched)
    assert _complete(cb, "a", {"epoch": 1}) == "pruned"
    assert _complete(cb, "b", {"epoch": 2, "stopped_early": 1.0}) == "stopped_early"
    assert _complete(cb, "c", {"epoch": 4, "stopped_early": 0.0}) == "completed"
    assert _complete(cb, "d", {"epoch": 2}, {"train.epochs": 2}) == "completed"  # searched epochs
    assert _complete(cb, "e", {"epoch": 2}) == "stopped"  # time budget / shutdown
    # best so far follows the mode; a diverged trial's NaN is never the best
    trial = SimpleNamespace(trial_id="x", config={"model.slices": 2})
    cb.on_trial_result(0, [], SimpleNamespace(trial_id="n", config={}), {"valid_loss": float("nan"), "epoch": 1})
    cb.on_trial_result(0, [], trial, {"valid_loss": 0.5, "epoch": 1})
    cb.on_trial_result(0, [], SimpleNamespace(trial_id="y", config={}), {"valid_loss": 0.7, "epoch": 1})
    assert cb.best["trial_id"] == "x" and cb.best["valid_loss"] == 0.5
    sdr = _callback(metric="valid_sdr", mode="max")
    for tid, value in (("p", 3.0), ("q", 5.0), ("r", 4.0)):
        sdr.on_trial_result(0, [], SimpleNamespace(trial_id=tid, config={}), {"valid_sdr": value, "epoch": 1})
    assert sdr.best["trial_id"] == "q"


def test_searcher_tolerates_trials_it_does_not_know():
    """A resumed study (or --restart-errored) can hold a trial the searcher's saved state never
    saw; plain OptunaSearch raises KeyError on its first result and the study stops."""
    import pytest
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from samsnet_search.search.adapters import RestartTolerantOptuna

    space = {"model.slices": tune.choice([1, 2])}
    plain = OptunaSearch(space=space, metric="valid_loss", mode="min", seed=0)
    with pytest.raises(KeyError):
        plain.on_trial_result("f4c9eede", {"valid_loss": 0.5, "training_iteration": 1})
    searcher = RestartTolerantOptuna(space=space, metric="valid_loss", mode="min", seed=0)
    searcher.on_trial_result("f4c9eede", {"valid_loss": 0.5, "training_iteration": 1})
    searcher.on_trial_complete("f4c9eede", {"valid_loss": 0.4, "training_iteration": 2})
    # trials it knows are told as before
    assert searcher.suggest("known") is not None
    searcher.on_trial_result("known", {"valid_loss": 0.3, "training_iteration": 1})
    searcher.on_trial_complete("known", {"valid_loss": 0.3, "training_iteration": 1})
    assert [t.value for t in searcher._ot_study.trials if t.value is not None] == [0.3]


def test_a_failed_trials_work_folder_is_removed():
    """Tune retries a failed trial no more: the trainer's local copy goes (its kept
    checkpoints in the storage serve --restart-errored)."""
    from samsnet_search.search.trial import trial_workdir

    work = trial_workdir("s", "tfail")
    (work / "checkpoint").mkdir(parents=True, exist_ok=True)
    (work / "checkpoint" / "last.pt").write_bytes(b"x")
    cb = _callback()
    cb.on_trial_error(0, [], SimpleNamespace(trial_id="tfail", last_result={}, error_message="boom", config={}))
    assert not work.exists() and cb.statuses["tfail"] == "failed"
