"""Replays on a constructed learning-curve table: the platform's searcher and scheduler decide
(ASHA prunes, FIFO does not), the selections pay what they should, and `bench --only
strategies` reports every strategy with the fields a reader compares."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from samsnet_search.bench import curves as curve_table
from samsnet_search.bench import replay, strategies
from samsnet_search.config import TARGETS, flatten

SLICES, SEEDS, EPOCHS, TRACKS = (1, 2, 4, 8), (0, 1, 2), 8, 6
SETTINGS = ((1, 4, 1e-3), (2, 8, 3e-3))


def constructed_rows(best: int = 4, gap: float = 1.5, noise: float = 0.05) -> list[dict]:
    """Every run learns along the same curve; `best` ends `gap` dB above the rest (the others
    tied), and its validation loss is lower from the first epoch on. Songs differ (a per-track
    offset); seeds add small noise."""
    rng = np.random.default_rng(0)
    rows = []
    offset = np.linspace(-3, 3, TRACKS)
    for setting in SETTINGS:
        for s in SLICES:
            for seed in SEEDS:
                for e in range(1, EPOCHS + 1):
                    level = (gap if s == best else 0.0) * e / EPOCHS + 4.0 * e / EPOCHS
                    row = {
                        "run": f"{s}-{setting}-{seed}",
                        "slices": s,
                        "heads": setting[0],
                        "channels": setting[1],
                        "lr": setting[2],
                        "seed": seed,
                        "epoch": e,
                        "train_loss": 1.0 / e,
                        "valid_loss": 1.0 / e - (0.05 if s == best else 0.0) + 0.001 * rng.standard_normal(),
                        "valid_sdr": level,
                        "epoch_seconds": 2.0 + s / 8,
                        "epoch_cpu_seconds": 2.0,
                    }
                    for t, name in enumerate(f"song{i}" for i in range(TRACKS)):
                        for target in TARGETS:
                            row[f"track_sdr.{name}.{target}"] = level + offset[t] + noise * rng.standard_normal()
                    rows.append(row)
    return rows


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("curves") / curve_table.TABLE
    curve_table.write_table(pa.Table.from_pylist(constructed_rows()), {"constructed": True}, path)
    return path


def test_the_table_loads_into_runs(table):
    curves = replay.Curves.load(table)
    assert curves.slices == list(SLICES) and curves.seeds == list(SEEDS) and curves.epochs == EPOCHS
    assert curves.settings == sorted(SETTINGS)
    run = curves.run(4, SETTINGS[0], 1)
    assert run.tracks.shape == (EPOCHS, TRACKS, len(TARGETS)) and run.valid_loss.shape == (EPOCHS,)


def test_asha_prunes_in_a_replay_and_fifo_runs_every_trial_to_the_budget(table):
    curves = replay.Curves.load(table)
    runs = {}
    for scheduler in ("fifo", "asha"):
        study = replay.paper_question_study(curves, SETTINGS[0], "optuna", scheduler, 8, seed=3)
        runs[scheduler] = replay.replay_search(study, curves, SETTINGS[0], np.random.default_rng(3))
    assert len(runs["fifo"].trials) == len(runs["asha"].trials) == 8
    assert runs["fifo"].epochs == 8 * EPOCHS
    assert runs["asha"].epochs < runs["fifo"].epochs
    assert any(t.status == "PRUNED" for t in runs["asha"].trials)
    # the same replay number: the same proposals and seeds (reproducible)
    study = replay.paper_question_study(curves, SETTINGS[0], "optuna", "asha", 8, seed=3)
    again = replay.replay_search(study, curves, SETTINGS[0], np.random.default_rng(3))
    assert [(t.slices, t.seed, t.epochs) for t in again.trials] == [
        (t.slices, t.seed, t.epochs) for t in runs["asha"].trials
    ]


def test_the_reference_and_the_selections_cost_what_they_should(table):
    curves = replay.Curves.load(table)
    reference = strategies.Reference(curves, SETTINGS[0])
    assert reference.winner == 4 and reference.best_set == {4}
    assert reference.regret(1) == pytest.approx(1.5, abs=0.1)
    by_name = {s.name: s for s in strategies.STRATEGIES}
    grid1 = strategies.replay(by_name["grid-1-seed"], curves, SETTINGS[0], 0)
    assert grid1.epochs * 3 == reference.epochs and grid1.pick == 4
    picks = []
    for rep in range(6):  # the same search for both; a search that never proposed 4 cannot pick it
        today = strategies.replay(by_name["tpe+asha+today"], curves, SETTINGS[0], rep)
        racing = strategies.replay(by_name["tpe+asha+racing"], curves, SETTINGS[0], rep)
        assert racing.epochs < today.epochs  # continued from the search, seeds only where open
        assert (today.pick == 4) == (racing.pick == 4)
        picks.append(racing.pick)
    assert picks.count(4) >= 3, picks


def test_bench_strategies_writes_every_strategy_with_its_figures(table, tmp_path):
    result = strategies.run(False, "cpu", 1, smoke=True, table=table)
    out = tmp_path / "strategies.json"
    out.write_text(json.dumps(result))
    listed = json.loads(out.read_text())["strategies"]
    assert [s["name"] for s in listed] == [s.name for s in strategies.STRATEGIES]
    assert sum(s["default"] for s in listed) == 1
    for s in listed:
        assert 0 < s["share_of_grid_epochs_median"] and 0 <= s["correct_probability"] <= 1
        assert s["mean_regret_db"] >= 0
    grid = next(s for s in listed if s["name"] == "grid-3-seeds")
    assert grid["share_of_grid_epochs_median"] == 1.0 and grid["correct_probability"] == 1.0


def test_the_strategies_print_as_one_table(table):
    from rich.console import Console

    from samsnet_search.bench.show import strategies_table

    result = {**strategies.run(False, "cpu", 1, smoke=True, table=table), "seconds": 1.0}
    console = Console(width=200, record=True)
    console.print(strategies_table(result))
    text = console.export_text()
    assert "tpe+asha+today (default)" in text and "grid-3-seeds" in text and "100%" in text


def test_without_a_table_the_bench_says_how_to_build_it(tmp_path):
    with pytest.raises(strategies.BenchError, match="samsnet-search curves build"):
        strategies.run(False, "cpu", 1, smoke=True, table=tmp_path / "none.parquet")


def test_a_replay_makes_the_decisions_ray_tune_makes_with_the_same_objects(table, local_ray, tmp_path):
    """The simulated clock against Tune's own controller: the same study's searcher and scheduler
    (from the platform's registries), one trial at a time, a function trainable that reports the
    recorded epochs. Both propose the same slice values and stop each trial at the same epoch."""
    from ray import tune

    from samsnet_search.search import schedulers, searchers

    # One recorded seed: which seed a trial draws is the replay's choice, not Tune's.
    curves = replay.Curves([r for r in pq.read_table(table).to_pylist() if r["seed"] == 0])
    setting, n = SETTINGS[1], 8

    def study():
        return replay.paper_question_study(curves, setting, "optuna", "asha", n, seed=5, concurrency=1)

    simulated = replay.replay_search(study(), curves, setting, np.random.default_rng(5))

    def trainable(config):
        run = curves.run(int(flatten(config)["model.slices"]), setting, 0)
        for e in range(curves.epochs):
            tune.report({"epoch": e + 1, replay.METRIC: float(run.valid_loss[e])})

    s = study()
    with local_ray({}):
        grid = tune.Tuner(
            trainable,
            param_space=searchers.param_space(s),
            tune_config=tune.TuneConfig(
                search_alg=searchers.build_searcher(s),
                scheduler=schedulers.build_scheduler(s),
                num_samples=n,
                max_concurrent_trials=1,
                metric=replay.METRIC,
                mode="min",
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="tune", verbose=0),
        ).fit()
    real = [(flatten(r.config)["model.slices"], r.metrics["epoch"]) for r in grid]  # in the order Tune made them
    assert real == [(t.slices, t.epochs) for t in simulated.trials]
    assert any(t.epochs < EPOCHS for t in simulated.trials)  # ASHA stopped some: decisions were compared
