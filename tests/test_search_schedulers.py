"""The scheduler registry (samsnet_search.search.schedulers): what each entry builds, records and refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.tune.schedulers import AsyncHyperBandScheduler, HyperBandScheduler, MedianStoppingRule, TrialScheduler

from samsnet_search.errors import ConfigError
from samsnet_search.search import schedulers
from samsnet_search.search.study import load_study


def study_with(tmp_path: Path, epochs: int = 8, patience: int = 8, train: dict | None = None, **search):
    data = {
        "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}, "channels": 2, "depth": 1},
        "data": {"root": str(tmp_path), "segment_seconds": 0.5},
        "train": {"epochs": epochs, "patience": patience, **(train or {})},
        "search": search,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_study(path, base_dir=tmp_path, check_data=False)


class Trial:
    """What the schedulers read of a Tune trial."""

    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.is_saving, self.last_result = trial_id, "RUNNING", False, {}

    def __repr__(self) -> str:
        return self.trial_id


class Controller:
    """Records the trials a scheduler stops through Tune's controller."""

    def __init__(self, trials=()):
        self.trials, self.stopped = list(trials), []

    def get_live_trials(self) -> list:
        return [t for t in self.trials if t.status != "TERMINATED"]

    def stop_trial(self, trial) -> None:
        self.stopped.append(trial.trial_id)
        trial.status = "TERMINATED"


def report(scheduler, controller, trial, epoch: int, loss: float) -> str:
    result = {"training_iteration": epoch, "valid_loss": loss}
    trial.last_result = result
    action = scheduler.on_trial_result(controller, trial, result)
    if action == TrialScheduler.PAUSE:
        trial.status = "PAUSED"
    return action


def test_each_name_builds_its_scheduler(tmp_path):
    built = {name: schedulers.build_scheduler(study_with(tmp_path, scheduler=name)) for name in schedulers.SCHEDULERS}
    assert isinstance(built["asha"], AsyncHyperBandScheduler) and built["fifo"] is None
    assert isinstance(built["hyperband"], HyperBandScheduler) and isinstance(built["median"], MedianStoppingRule)
    assert all(s.pruned == {} for s in built.values() if s is not None)
    assert {name: e.prunes for name, e in schedulers.SCHEDULERS.items()} == {
        "asha": True,
        "hyperband": True,
        "median": True,
        "fifo": False,
    }


def test_median_rule_records_the_trials_it_stops(tmp_path):
    sched = schedulers.build_scheduler(study_with(tmp_path, scheduler="median", grace_period=1))
    sched.set_search_properties("valid_loss", "min")
    trials = [Trial(f"t{i}") for i in range(5)]
    trials[4].status = "PENDING"  # waiting for a free CPU: the rule must not pause others for it
    controller = Controller(trials)
    for t in trials:
        sched.on_trial_add(controller, t)
    for t, loss in zip(trials[:3], [0.1, 0.2, 0.3]):
        for epoch in (1, 2):
            assert report(sched, controller, t, epoch, loss) == TrialScheduler.CONTINUE  # too few to compare yet
    assert report(sched, controller, trials[3], 1, 0.9) == TrialScheduler.STOP  # worse than the median of three
    assert sched.pruned == {"t3": 1}


def test_hyperband_records_losers_it_stops_while_paused(tmp_path):
    """HyperBand stops the bracket's paused losers through the controller, not by its answer."""
    sched = schedulers.build_scheduler(study_with(tmp_path, scheduler="hyperband", reduction_factor=2, max_t=8))
    sched.set_search_properties("valid_loss", "min")
    controller, trials = Controller(), [Trial(f"t{i}") for i in range(8)]
    for t in trials:  # max_t 8, factor 2: bracket 0 runs 4 trials to 8 epochs, bracket 1 halves 4 at epoch 4
        sched.on_trial_add(controller, t)
    second = trials[4:]
    for epoch in (1, 2, 3):
        assert {report(sched, controller, t, epoch, 1.0) for t in second} == {TrialScheduler.CONTINUE}
    actions = [report(sched, controller, t, 4, loss) for t, loss in zip(second, [0.9, 0.1, 0.2, 0.8])]
    assert actions[:3] == [TrialScheduler.PAUSE] * 3  # waiting for the rung to fill
    assert controller.stopped == ["t4"] and actions[3] == TrialScheduler.STOP  # the worse half
    assert sched.pruned == {"t4": 4, "t7": 4}  # stopped at epoch 4 of 8


@pytest.mark.parametrize(
    "search, message",
    [
        ({"scheduler": "median", "max_t": 4}, "s.yaml: search.max_t: the median rule never ends a trial at max_t"),
        ({"scheduler": "hyperband", "max_t": 4}, "s.yaml: search.max_t: 4 is below the patience horizon 8"),
        (
            {"scheduler": "asha", "max_t": 4},
            "asha would end every trial before early stopping could; valid: max_t >= 8",
        ),
        (
            {"scheduler": "pbt"},
            "s.yaml: search.scheduler: not a scheduler; valid: asha, hyperband, median, fifo (got 'pbt')",
        ),
    ],
)
def test_a_scheduler_refuses_settings_it_cannot_honour(tmp_path, search, message):
    with pytest.raises(ConfigError, match=None) as err:
        study_with(tmp_path, **search)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1, str(err.value)


def test_study_file_syntax_for_each_scheduler(tmp_path):
    for name in schedulers.SCHEDULERS:
        assert study_with(tmp_path, scheduler=name).search.scheduler == name
    assert (
        study_with(tmp_path, objectives=["valid_loss", "params"]).search.scheduler == "fifo"
    )  # the default with objectives


@pytest.mark.parametrize(
    "scheduler, shown",
    [
        ("asha", "asha (grace 2, reduction factor 3, max_t 8)"),
        ("hyperband", "hyperband (reduction factor 3, max_t 8)"),
        ("median", "median (grace 2)"),
        ("fifo", "fifo, valid_sdr (max)"),
    ],
)
def test_validate_prints_each_schedulers_own_settings(tmp_path, scheduler, shown):
    """`validate` (show.format_space) names each scheduler with the settings it reads, not ASHA's alone."""
    from samsnet_search.delivery.show import format_space

    study = study_with(
        tmp_path,
        train={"valid_sdr_every": 1},
        scheduler=scheduler,
        grace_period=2,
        reduction_factor=3,
        metric="valid_sdr",
        num_samples=4,
    )
    line = next(x for x in format_space(study).splitlines() if x.strip().startswith("search:"))
    assert shown in line, line
    assert line.count("grace") == (scheduler in ("asha", "median"))
