"""Parameter importance from a search's trials (fANOVA, PED-ANOVA) and the slice-count line."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import optuna.distributions as od
import pytest

from samsnet_search.search.importance import mlflow_metrics, param_importance, slices_line

SPACE = {
    "model.slices": od.CategoricalDistribution([1, 2, 4, 8]),
    "train.lr": od.FloatDistribution(1e-4, 1e-2, log=True),
    "model.heads": od.IntDistribution(1, 2),
}


def _trials(n: int, loss, seed: int = 0, epochs: int = 3):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cfg = {
            "model.slices": [1, 2, 4, 8][i % 4],
            "train.lr": float(10 ** rng.uniform(-4, -2)),
            "model.heads": int(rng.integers(1, 3)),
        }
        value = loss(cfg, rng)
        history = [
            {"epoch": e + 1, "valid_loss": value + 0.1 * (epochs - e - 1), "macs": cfg["model.slices"] * 1e6}
            for e in range(epochs)
        ]
        out.append(SimpleNamespace(config=cfg, history=history, metrics=history[-1], status="finished"))
    return out


def test_the_slice_count_that_drives_the_loss_ranks_first():
    trials = _trials(16, lambda c, rng: abs(np.log2(c["model.slices"]) - 2) + 0.01 * rng.normal())
    found = param_importance(trials, SPACE, {"valid_loss": "min"})
    fanova = found["objectives"]["valid_loss"]["fanova"]
    assert list(fanova)[0] == "model.slices" and fanova["model.slices"] > 0.5
    assert abs(sum(fanova.values()) - 1) < 1e-3
    assert list(found["objectives"]["valid_loss"]["ped_anova"])[0] == "model.slices"
    line = slices_line(found, "valid_loss")
    assert line.startswith("does the slice count matter? yes, the most: model.slices has") and "16 trials" in line


def test_a_loss_driven_by_the_learning_rate_says_slices_matter_little():
    trials = _trials(16, lambda c, rng: 3 * abs(np.log10(c["train.lr"]) + 3) + 0.001 * rng.normal())
    found = param_importance(trials, SPACE, {"valid_loss": "min"})
    fanova = found["objectives"]["valid_loss"]["fanova"]
    assert list(fanova)[0] == "train.lr"
    assert "rank 1 of" not in slices_line(found, "valid_loss")


def test_values_come_from_the_last_reported_epoch_of_each_trial():
    trials = _trials(16, lambda c, rng: c["model.slices"] * 1.0, epochs=2)
    trials[0].history[-1]["valid_loss"] = float("nan")  # a diverged trial: left out, not a NaN importance
    found = param_importance(trials, SPACE, {"valid_loss": "min"})
    assert found["trials"] == 15 and found["at"] == "last reported epoch"


def test_each_objective_of_a_multi_objective_study_gets_its_own_importance():
    trials = _trials(12, lambda c, rng: float(rng.normal()))
    found = param_importance(trials, SPACE, {"valid_loss": "min", "macs": "min"})
    assert set(found["objectives"]) == {"valid_loss", "macs"}
    assert list(found["objectives"]["macs"]["fanova"])[0] == "model.slices"  # macs = slices x 1e6 exactly
    metrics = mlflow_metrics(found)
    assert metrics["importance.fanova.macs.model.slices"] == found["objectives"]["macs"]["fanova"]["model.slices"]


@pytest.mark.parametrize("n", [0, 3])
def test_too_few_trials_is_said_not_guessed(n):
    found = param_importance(_trials(n, lambda c, rng: 1.0), SPACE, {"valid_loss": "min"})
    assert found["objectives"] == {} and "skipped" in found
    assert slices_line(found, "valid_loss").startswith("does the slice count matter? not computed")


def test_a_space_without_slices_says_so():
    trials = _trials(8, lambda c, rng: c["train.lr"])
    space = {k: v for k, v in SPACE.items() if k != "model.slices"}
    assert "not searched" in slices_line(param_importance(trials, space, {"valid_loss": "min"}), "valid_loss")
