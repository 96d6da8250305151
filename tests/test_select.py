"""Slice selection: bootstrap intervals, winner and significance on hand-made scores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from samsnet_search.config import TARGETS
from samsnet_search.search.select import (
    SelectionError,
    SelectionTable,
    bootstrap_row,
    bootstrap_table,
    contenders,
    overlaps,
    plan_jobs,
)


def pairs(avg: float, spread: float, tracks: int = 4, seeds: int = 3, seed: int = 0) -> list[dict]:
    """(track x seed) pairs whose per-target SDR scatter by `spread` around `avg`."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(tracks):
        for s in range(seeds):
            noise = rng.uniform(-spread, spread, size=len(TARGETS))
            out.append({"track": f"track{t}", "seed": s, "scores": {k: avg + n for k, n in zip(TARGETS, noise)}})
    return out


def test_interval_contains_median_and_shrinks_with_less_spread():
    rng = np.random.default_rng(0)
    wide = np.array([[p["scores"][t] for t in TARGETS] for p in pairs(5.0, 2.0)])
    narrow = np.array([[p["scores"][t] for t in TARGETS] for p in pairs(5.0, 0.2)])
    point, low, high = bootstrap_row(wide, 500, 0.95, rng)
    assert point.shape == low.shape == high.shape == (len(TARGETS) + 1,)
    assert np.all(low <= point) and np.all(point <= high)
    assert point[-1] == pytest.approx(np.median(wide, axis=0).mean())  # avg = mean of target medians
    _, nlow, nhigh = bootstrap_row(narrow, 500, 0.95, rng)
    assert (nhigh - nlow)[-1] < (high - low)[-1] / 3


def test_clear_winner_is_significant():
    table = bootstrap_table({1: pairs(3.0, 0.3), 4: pairs(6.0, 0.3, seed=1), 8: pairs(4.0, 0.3, seed=2)},
                            resamples=1000, seed=0, data="synthetic")  # fmt: skip
    assert table.winner == 4
    assert table.row(4).significant is None
    assert table.row(1).significant is True and table.row(8).significant is True
    assert table.tied == []
    assert "chosen slices: 4" in table.verdict() and "overlaps no other" in table.verdict()
    assert not overlaps(table.row(4).interval["avg"], table.row(8).interval["avg"])


def test_overlapping_intervals_are_not_significant():
    table = bootstrap_table({2: pairs(5.0, 3.0), 12: pairs(5.3, 3.0, seed=1), 24: pairs(-5.0, 0.5, seed=2)},
                            resamples=1000, seed=0)  # fmt: skip
    best = max(table.rows, key=lambda r: r.median["avg"])
    assert table.winner == best.slices
    other = 2 if table.winner == 12 else 12
    assert table.row(other).significant is False and table.tied == [other]
    assert table.row(24).significant is True
    assert f"not significantly different from slices {other}" in table.verdict()
    md = table.markdown()
    assert "validation" in md and "not significantly different" in md and "significantly worse" in md
    assert table.csv().splitlines()[0].startswith("slices,vocals,drums,bass,other,avg,avg_low,avg_high")


def test_same_scores_same_table_and_roundtrip():
    scores = {1: pairs(4.0, 1.0), 2: pairs(4.5, 1.0, seed=3)}
    a = bootstrap_table(scores, resamples=300, seed=7)
    b = bootstrap_table(scores, resamples=300, seed=7)
    assert a.to_dict() == b.to_dict()
    again = SelectionTable.from_dict(a.to_dict())
    assert again.to_dict() == a.to_dict() and again.winner == a.winner


def test_ties_go_to_fewer_slices_and_nan_never_wins():
    same = pairs(5.0, 0.0)
    assert bootstrap_table({8: same, 2: same}, resamples=50).winner == 2
    silent = [{**p, "scores": {**p["scores"], "vocals": float("nan")}} for p in pairs(9.0, 0.1)]
    assert bootstrap_table({1: silent, 2: pairs(1.0, 0.1)}, resamples=50).winner == 2


def test_empty_scores_are_an_error():
    with pytest.raises(SelectionError, match="nothing to choose"):
        bootstrap_table({})
    with pytest.raises(SelectionError, match="slices=4"):
        bootstrap_table({4: []})


def trial(tid, slices, loss, status="completed", epochs=4, seed=42, ckpt="ckpt"):
    return SimpleNamespace(trial_id=tid, config={"model.slices": slices}, status=status,
                           experiment={"model": {"slices": slices}, "train": {"epochs": epochs, "seed": seed}},
                           best={"valid_loss": loss} if loss is not None else None, best_checkpoint=ckpt,
                           mlflow_run_id=f"run-{tid}")  # fmt: skip


def test_contenders_and_jobs():
    trials = [trial("a", 1, 0.5, "pruned", epochs=4), trial("b", 1, 0.4), trial("c", 2, 0.3, "pruned"),
              trial("d", 2, 0.1, "failed"), trial("e", 4, None)]  # fmt: skip
    best = contenders(trials, "valid_loss", "min")
    assert {s: t.trial_id for s, t in best.items()} == {1: "b", 2: "c"}
    jobs = plan_jobs(trials, "valid_loss", "min", seeds=3, epochs=4)
    assert [j.key for j in jobs] == [f"slices_{s}_seed_{k}" for s in (1, 2) for k in range(3)]
    assert [j.seed for j in jobs[:3]] == [42, 43, 44]
    # b completed its full budget: it is seed 0; c was pruned: all three seeds retrain
    assert [j.reuse_checkpoint for j in jobs] == ["ckpt", None, None, None, None, None]
    assert all(j.experiment["train"]["epochs"] == 4 for j in jobs)
    # a longer selection budget than the search's: nothing is reused
    assert all(j.reuse_checkpoint is None for j in plan_jobs(trials, "valid_loss", "min", 3, 8))
