"""What a study cost: per trial, the search's totals, the selection, and the report's lines."""

from __future__ import annotations

from types import SimpleNamespace

from samsnet_search.search.cost import cost_lines, search_cost, selection_cost, trial_cost


def _trial(tid, status, epochs, epoch_s=2.0, cpu_s=1.5, total=None):
    history = [{"epoch": e, "epoch_seconds": epoch_s, "epoch_cpu_seconds": cpu_s} for e in range(1, epochs + 1)]
    return SimpleNamespace(
        trial_id=tid,
        status=status,
        epochs=epochs,
        history=history,
        metrics={"time_total_s": total if total is not None else epochs * epoch_s + 1.0},
    )


def test_a_pruned_trial_saved_its_missing_epochs_at_its_own_epoch_time():
    c = trial_cost(_trial("a", "pruned", 2, epoch_s=3.0), budget=6, cpus=1.0, gpus=0.5)
    assert c["epochs"] == 2 and c["saved_epochs"] == 4 and c["saved_s"] == 12.0
    assert c["cpu_s"] == 3.0 and c["wall_s"] == 7.0 and c["gpu_s"] == 3.5  # wall x the GPU share held
    assert c["resources"] == {"cpu": 1.0, "gpu": 0.5}


def test_a_failed_trial_saved_nothing_and_a_full_one_neither():
    assert trial_cost(_trial("f", "failed", 1), budget=6, cpus=1, gpus=0)["saved_epochs"] == 0
    assert trial_cost(_trial("c", "completed", 6), budget=6, cpus=1, gpus=0)["saved_epochs"] == 0


def test_search_totals_add_up_the_trials():
    trials = [_trial("a", "completed", 6), _trial("b", "pruned", 1), _trial("c", "stopped_early", 4)]
    spent = search_cost(trials, lambda t: 6, 1.0, 0.0, wall_s=20.0)
    assert spent["epochs"] == 11 and spent["saved_epochs"] == 5 + 2 and spent["saved_s"] == 14.0
    assert spent["cpu_s"] == 11 * 1.5 and spent["trial_seconds"] == 13 + 3 + 9 and spent["wall_s"] == 20.0
    assert set(spent["trials"]) == {"a", "b", "c"}
    lines = cost_lines(spent, None)
    assert lines[0] == "cost of the search: 20 s wall, 25 trial-seconds, 16 CPU-s, 11 trial-epochs"
    assert "7 trial-epochs, about 14 trial-seconds" in lines[1]


def test_selection_cost_counts_retrained_epochs_only():
    jobs = [{"wall_s": 10.0, "cpu_s": 8.0, "epochs": 4}, {"wall_s": 2.0, "cpu_s": 1.0, "epochs": 4, "reused": True}]
    spent = selection_cost(jobs, {"retrain_and_validate": 11.0, "test_and_register": 5.0}, {"cpu_s": 4.0})
    assert spent == {
        "wall_s": 11.0,
        "job_seconds": 12.0,
        "cpu_s": 9.0,
        "epochs": 4,
        "test": {"wall_s": 5.0, "cpu_s": 4.0},
    }
    assert "test scoring and registering: 5 s wall, 4 CPU-s" in cost_lines(None, spent)[0]


def _result(statuses: dict[str, tuple[str, int]], interrupted: bool):
    from samsnet_search.search.runner import StudyResult

    study = SimpleNamespace(
        name="s",
        metric="valid_loss",
        mode="min",
        max_t=4,
        spec=SimpleNamespace(resources=SimpleNamespace(cpu=1, gpu=0)),
    )
    trials = [
        SimpleNamespace(
            **vars(_trial(tid, status, epochs)),
            experiment={"train": {"epochs": 4}},
            best={"valid_loss": 1.0 / epochs, "epoch": epochs},
            config={"model.slices": 2},
            mlflow_run_id=None,
            error=None,
        )
        for tid, (status, epochs) in statuses.items()
    ]
    manifest = SimpleNamespace(path="/runs/s", experiment_id="1")
    return StudyResult(study, manifest, SimpleNamespace(where=lambda e: "MLflow"), trials, 30.0, interrupted)


def test_an_interrupted_search_counts_only_the_ended_trials_as_saved():
    """An interrupted trial's unrun epochs are not saved by pruning (the old figure said 50% here)."""
    from samsnet_search.delivery.show import format_result

    result = _result({"a": ("completed", 4), "b": ("pruned", 1), "c": ("running", 2), "d": ("running", 1)}, True)
    assert result.epoch_savings() == {"epochs_run": 8, "epochs_full": 11, "fraction_saved": 3 / 11}
    text = format_result(result)
    assert "INTERRUPTED" in text and "% saved" not in text
    assert "trial-epochs so far: 8; pruning and early stopping saved 3 more in the trials that ended" in text
    done = _result({"a": ("completed", 4), "b": ("pruned", 1), "c": ("stopped_early", 2), "d": ("failed", 1)}, False)
    assert (
        "trial-epochs: 8 of 13 if every pruned or early-stopped trial had run to the end (38% saved"
        in format_result(done)
    )


def test_a_resumed_search_counts_the_time_before_the_interrupt():
    from samsnet_search.search.runner import seconds_before

    interrupted = SimpleNamespace(summary={"seconds": 95.5, "trials": 3})
    assert seconds_before(interrupted, resuming=True) == 95.5
    assert seconds_before(interrupted, resuming=False) == 0.0  # a new study (same name, new file) starts at 0
    assert seconds_before(SimpleNamespace(summary={}), resuming=True) == 0.0  # killed before any summary
