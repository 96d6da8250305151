"""The Pareto front of a multi-objective study (samsnet_search.search.pareto) and the study keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from samsnet_search.errors import ConfigError
from samsnet_search.search import pareto, schedulers, searchers
from samsnet_search.search.objectives import dominates
from samsnet_search.search.study import load_study

MODES = {"valid_sdr": "max", "params": "min"}


def trial(tid, sdr, params, status="completed", epochs=4):
    best = {"epoch": 2, "valid_sdr": sdr} if sdr is not None else None
    return SimpleNamespace(
        trial_id=tid,
        mlflow_run_id=f"run-{tid}",
        status=status,
        epochs=epochs,
        best=best,
        config={"model.channels": params // 10, "train.lr": 0.001},
        metrics={"params": float(params), "gmacs_per_second": params / 1e6},
        best_checkpoint=None,
    )


def test_dominance_respects_each_direction():
    modes = ["max", "min"]  # SDR, size
    assert dominates([5.0, 100], [4.0, 100], modes)  # better SDR, same size
    assert not dominates([5.0, 200], [4.0, 100], modes)  # a trade-off
    assert not dominates([4.0, 100], [4.0, 100], modes)  # equal points do not dominate
    assert dominates([4.0, 100], [float("nan"), 100], modes)  # a diverged trial's NaN is beaten


def test_front_keeps_trade_offs_and_drops_dominated_points():
    trials = [
        trial("a", 1.0, 100),
        trial("b", 3.0, 300),
        trial("c", 2.0, 400),
        trial("d", 3.5, 900),
        trial("e", 0.5, 100),
        trial("f", None, 50),
        trial("g", 9.0, 10, status="failed"),
    ]
    summary = pareto.pareto_summary(trials, "valid_sdr", MODES, "fifo")
    assert summary["front"] == ["a", "b", "d"]  # sorted by size; c is beaten by b, e by a
    assert {p["trial_id"] for p in summary["points"]} == {"a", "b", "c", "d", "e"}  # unscored, failed left out
    assert "FIFO" in summary["caveat"]
    asha = pareto.pareto_summary(trials, "valid_sdr", MODES, "asha")
    assert "ASHA pruned on valid_sdr alone" in asha["caveat"]


def test_identical_points_are_both_on_the_front():
    summary = pareto.pareto_summary([trial("a", 1.0, 100), trial("b", 1.0, 100)], "valid_sdr", MODES, "fifo")
    assert sorted(summary["front"]) == ["a", "b"]


def test_three_objectives():
    modes = {"valid_loss": "min", "params": "min", "gmacs_per_second": "min"}
    values = [[0.3, 100, 2.0], [0.2, 200, 1.0], [0.4, 150, 3.0], [0.2, 200, 1.5]]
    assert pareto.front_indices(values, list(modes.values())) == [0, 1]


def test_table_and_markdown_show_the_front():
    summary = pareto.pareto_summary([trial("a", 1.0, 100), trial("b", 3.0, 300)], "valid_sdr", MODES, "fifo")
    pareto.front_points(summary)[0]["latency_ms"] = 12.34
    header, rows = pareto.front_rows(summary)
    assert header[:3] == ["trial", "SDR dB", "params"] and "latency ms" in header
    assert rows[0][:5] == ["a", "1.00", "100", "12.3", "4"] and rows[1][3] == "-"
    md = pareto.front_markdown(summary)
    assert "PARETO FRONT (validation; max valid_sdr, min params): 2 of 2 scored trials" in md
    assert "| b | 3.00 | 300 |" in md


def test_latency_is_measured_from_the_best_checkpoint(tmp_path):
    """On real weights: a tiny model saved in the checkpoint format, CPU, 1 thread."""
    import torch

    from samsnet_search.config import ModelConfig
    from samsnet_search.engine import checkpoint

    cfg = ModelConfig(n_fft=256, hop_length=128, channels=2, heads=1, depth=1, slices=2, slice_frames=4)
    threads = torch.get_num_threads()
    model = checkpoint.build_model(cfg)
    checkpoint.save(
        tmp_path / checkpoint.BEST, {"model_config": cfg.model_dump(mode="json"), "model": model.state_dict()}
    )
    ms = pareto.measure_latency(tmp_path, seconds=0.25)
    assert ms > 0 and torch.get_num_threads() == threads  # the caller's thread count is restored


def write_study(tmp_path, synth_root, search):
    study = {
        "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}, "channels": 2, "depth": 1},
        "data": {"root": str(synth_root), "segment_seconds": 0.5},
        "train": {"epochs": 2, "patience": 2},
        "search": search,
    }
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_objectives_default_to_fifo_and_need_sdr_every_epoch(tmp_path, synth_root):
    path = write_study(tmp_path, synth_root, {"objectives": ["valid_loss", "params", "gmacs_per_second"]})
    study = load_study(path)
    assert study.search.scheduler == "fifo" and study.metric == "valid_loss" and study.search.multi_objective
    with pytest.raises(ConfigError, match=r"mo.yaml: train.valid_sdr_every: .*must be 1"):
        load_study(write_study(tmp_path, synth_root, {"objectives": ["valid_sdr", "params"]}))


@pytest.mark.parametrize(
    "objectives, message",
    [
        (["params", "valid_sdr"], "the first must be the quality metric"),
        (["valid_sdr"], "at least one cost"),
        (
            ["valid_loss", "latency"],
            "'latency' is not a cost objective; valid after the quality metric: params, gmacs_per_second",
        ),
        (["valid_loss", "params", "params"], "names an objective twice"),
    ],
)
def test_bad_objectives_name_the_key(tmp_path, synth_root, objectives, message):
    with pytest.raises(ConfigError) as err:
        load_study(write_study(tmp_path, synth_root, {"objectives": objectives}))
    assert "mo.yaml: search: objectives: " in str(err.value) and message in str(err.value)


def test_wiring_for_several_objectives(tmp_path, synth_root):
    """Optuna gets every objective (quality at the best epoch first), ASHA the quality metric alone,
    TuneConfig none (Tune would hand its single metric to both)."""
    study = load_study(
        write_study(
            tmp_path, synth_root, {"objectives": ["valid_loss", "params", "gmacs_per_second"], "scheduler": "asha"}
        )
    )
    searcher = searchers.build_searcher(study)
    assert searcher.metric == ["best_valid_loss", "params", "gmacs_per_second"] and searcher.mode == ["min"] * 3
    asha = schedulers.build_scheduler(study)
    assert (asha.metric, asha._mode) == ("valid_loss", "min")
    assert searchers.tune_metric(study) == {"metric": None, "mode": None}
    single = load_study(write_study(tmp_path, synth_root, {"metric": "valid_loss"}))
    assert searchers.tune_metric(single) == {"metric": "valid_loss", "mode": "min"}
    assert schedulers.build_scheduler(single).metric is None


def test_report_shows_the_front_of_a_multi_objective_study(tmp_path, capsys):
    from samsnet_search.cli import main
    from samsnet_search.search import identity

    storage = tmp_path / "runs"
    front = pareto.pareto_summary(
        [trial("a1b2", 1.0, 100), trial("c3d4", 3.0, 300), trial("e5f6", 0.5, 400)], "valid_sdr", MODES, "fifo"
    )
    identity.write_manifest(
        identity.Manifest(
            name="mo",
            storage=str(storage),
            experiment_name="mo",
            experiment_id="1",
            parent_run_id="p" * 32,
            registered_model="samsnet-mo",
            tracking_uri=f"sqlite:///{storage}/mlflow.db",
            artifact_root=f"file://{storage}/a",
            base_dir=str(storage),
            source="mo.yaml",
            state="finished",
            summary={"trials": 3, "counts": {"completed": 3}, "seconds": 10.0, "pareto": front},
        )
    )
    assert main(["report", "mo", "--storage", str(storage)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the table title wraps
    assert "PARETO FRONT (validation; max valid_sdr, min params): 2 of 3 scored trials" in out
    assert "a1b2" in out and "c3d4" in out and "e5f6" not in out  # e5f6 is dominated
