"""The objectives table (samsnet_search.search.objectives): one comparison, and what the table drives."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from samsnet_search.search import objectives, pareto, runner, select
from samsnet_search.search.objectives import Objective, best_of, better
from samsnet_search.search.study import SearchSettings

NAN = math.nan


@pytest.mark.parametrize(
    "a, b, mode, expected",
    [
        (1.0, 2.0, "min", True),
        (2.0, 1.0, "min", False),
        (2.0, 1.0, "max", True),
        (1.0, 1.0, "min", False),  # strictly better: the first of equals stays
        (1.0, None, "max", True),  # anything finite beats nothing
        (1.0, NAN, "min", True),  # ... and a diverged trial's NaN
        (None, 1.0, "min", False),
        (NAN, 1.0, "max", False),
        (math.inf, 1.0, "max", False),  # non-finite is never better
        (NAN, None, "min", False),
    ],
)
def test_better_by_mode(a, b, mode, expected):
    assert better(a, b, mode) is expected


def test_better_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        better(1.0, 2.0, "minimize")


def test_best_of_picks_by_mode_and_skips_missing_values():
    rows = [{"v": 3.0}, {"v": NAN}, {}, {"v": 1.0}, {"v": 1.0, "second": True}, {"v": 2.0}]
    assert best_of(rows, "min", key=lambda r: r.get("v")) == {"v": 1.0}  # the first of equals
    assert best_of(rows, "max", key=lambda r: r.get("v")) == {"v": 3.0}
    assert best_of([NAN, None], "min") is None and best_of([], "max") is None
    assert best_of([2, 5, 1], "max") == 5


def test_table_directions_and_sources():
    assert {n: o.mode for n, o in objectives.OBJECTIVES.items()} == {
        "valid_loss": "min",
        "valid_sdr": "max",
        "params": "min",
        "gmacs_per_second": "min",
    }
    assert objectives.names("quality") == ["valid_loss", "valid_sdr"]
    assert objectives.names("cost") == ["params", "gmacs_per_second"]
    assert objectives.get("valid_sdr").every == "train.valid_sdr_every"
    assert objectives.searcher_objectives("valid_sdr", ["valid_sdr", "params"]) == {
        "best_valid_sdr": "max",
        "params": "min",
    }
    with pytest.raises(KeyError, match="'latency' is not an objective; valid: valid_loss, valid_sdr"):
        objectives.get("latency")


def test_study_schema_names_the_metrics_of_the_table():
    assert SearchSettings(metric="valid_sdr").resolved_mode == "max"
    assert SearchSettings(objectives=["valid_sdr", "params"]).objective_modes == {"valid_sdr": "max", "params": "min"}
    with pytest.raises(ValueError, match="not a quality metric; valid: valid_loss or valid_sdr"):
        SearchSettings(metric="params")  # a cost is not reported per epoch


def _record(tid, history, metric, status="completed", slices=2):
    return SimpleNamespace(
        trial_id=tid,
        status=status,
        history=history,
        best=best_of(history, objectives.mode_of(metric), key=lambda h: h.get(metric)),
        experiment={"model": {"slices": slices}},
        config={"model.slices": slices},
        mlflow_run_id=f"run-{tid}",
        epochs=len(history),
        metrics={"params": 100.0},
    )


def test_a_new_objective_is_one_table_entry(monkeypatch):
    """A maximized per-epoch metric added to the table alone: the study accepts it, its direction
    follows, trial histories keep it, selection and the Pareto table rank and show it."""
    monkeypatch.setitem(
        objectives.OBJECTIVES,
        "valid_si_sdr",
        Objective("valid_si_sdr", "max", "quality", "SI-SDR dB", "{:.1f}", "scale-invariant SDR"),
    )
    settings = SearchSettings(metric="valid_si_sdr")
    assert settings.resolved_mode == "max"
    with pytest.raises(ValueError, match="mode: valid_si_sdr is compared with mode max"):
        SearchSettings(metric="valid_si_sdr", mode="min")

    frame = pd.DataFrame(
        [
            {"epoch": 1, "valid_loss": 0.5, "valid_si_sdr": 1.5, "time_this_iter_s": 0.1},
            {"epoch": 2, "valid_loss": 0.4, "valid_si_sdr": 2.5, "time_this_iter_s": 0.1},
        ]
    )
    history = runner.trial_history(frame)
    assert history == [
        {"epoch": 1, "valid_loss": 0.5, "valid_si_sdr": 1.5},
        {"epoch": 2, "valid_loss": 0.4, "valid_si_sdr": 2.5},
    ]

    low = _record("a", [{"epoch": 1, "valid_si_sdr": 1.0}], "valid_si_sdr")
    high = _record("b", history, "valid_si_sdr")
    assert high.best["epoch"] == 2
    assert select.contenders([low, high], "valid_si_sdr", settings.resolved_mode) == {2: high}

    front = pareto.pareto_summary([low, high], "valid_si_sdr", {"valid_si_sdr": "max", "params": "min"}, "fifo")
    assert front["front"] == ["b"]  # same size, better SI-SDR
    header, rows = pareto.front_rows(front)
    assert header[:3] == ["trial", "SI-SDR dB", "params"] and rows[0][:2] == ["b", "2.5"]


def test_history_keeps_every_objective_of_the_table():
    frame = pd.DataFrame(
        [
            {
                "epoch": 1,
                "train_loss": 1.0,
                "valid_loss": 0.5,
                "valid_sdr": NAN,
                "valid_sdr_vocals": NAN,
                "best_valid_loss": 0.5,
                "epochs_without_improvement": 0,
                "mlflow_run_id": "r",
            },
            {
                "epoch": 2,
                "train_loss": 0.9,
                "valid_loss": 0.6,
                "valid_sdr": 3.0,
                "valid_sdr_vocals": 4.0,
                "best_valid_loss": 0.5,
                "epochs_without_improvement": 1,
                "mlflow_run_id": "r",
            },
        ]
    )
    first, second = runner.trial_history(frame)
    assert "valid_sdr" not in first  # not computed that epoch: dropped, not NaN
    assert set(second) == {
        "epoch",
        "train_loss",
        "valid_loss",
        "valid_sdr",
        "valid_sdr_vocals",
        "best_valid_loss",
        "epochs_without_improvement",
    }
    assert set(objectives.per_epoch_keys()) <= set(second)
