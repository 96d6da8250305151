"""`samsnet-search report NAME`: the study's counts, validation table, choice and where to look.

The study folder is written here by the project's own writers (manifest, selection record),
so the report is checked without running a search; the end-to-end selection test runs the
command on a real finished study.
"""

from __future__ import annotations

import numpy as np

from samsnet_search.cli import main
from samsnet_search.config import TARGETS
from samsnet_search.delivery.report import gather, render_text
from samsnet_search.search import identity
from samsnet_search.search.estimate import SegmentParts, SliceEstimate
from samsnet_search.search.estimate_step import save_estimate
from samsnet_search.search.select import RESULT_FILE, SelectionResult, bootstrap_table, selection_uri
from samsnet_search.services.storage import write_json


def _pairs(avg: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"track": f"t{t}", "seed": s, "scores": {k: avg + rng.normal(0, 0.3) for k in TARGETS}}
        for t in range(3)
        for s in range(3)
    ]


def fake_estimate(slices: list[int]) -> SliceEstimate:
    """An estimate whose segments came out with these slice counts (parts = slices here)."""
    segments = [SegmentParts("t0", 6.0 * i, s, s, None, [], None) for i, s in enumerate(slices)]
    allowed = [1, 2, 4, 8]
    median = float(np.median(slices))
    return SliceEstimate(
        6.0,
        allowed,
        4096,
        1024,
        1,
        segments,
        list(slices),
        list(slices),
        median,
        median,
        min(allowed, key=lambda a: abs(a - median)),
        (float(np.percentile(slices, 25)), float(np.percentile(slices, 75))),
        {a: slices.count(a) for a in allowed},
        params={"method": "novelty"},
    )


def write_study(
    storage, state="finished", with_selection=True, estimate: SliceEstimate | None = None
) -> identity.Manifest:
    m = identity.Manifest(
        name="demo",
        storage=str(storage),
        experiment_name="demo",
        experiment_id="1",
        parent_run_id="p" * 32,
        registered_model="samsnet-demo",
        tracking_uri=f"sqlite:///{storage}/mlruns/mlflow.db",
        artifact_root=f"file://{storage}/mlruns/artifacts",
        base_dir=str(storage),
        source="demo.yaml",
        state=state,
        summary={
            "trials": 12,
            "counts": {"completed": 4, "pruned": 8},
            "seconds": 321.0,
            "epochs_run": 30,
            "epochs_full": 72,
            "fraction_saved": 1 - 30 / 72,
        },
    )
    identity.write_manifest(m)
    if with_selection:
        table = bootstrap_table(
            {1: _pairs(3.0, 0), 4: _pairs(5.0, 1), 8: _pairs(4.9, 2)},
            resamples=300,
            backend="fast",
            data="synthetic (MUSDB18-HQ format)",
        )
        test = {
            "estimator": "winner",
            "backend": "museval",
            "data": "synthetic (MUSDB18-HQ format)",
            "subset": "test",
            "summary": {**{t: 4.0 for t in TARGETS}, "avg": 4.0},
            "tracks": {"a": {t: 4.0 for t in TARGETS}},
        }
        sel = SelectionResult(
            table,
            [],
            [],
            {"seed": 43, "run_id": "r" * 32},
            test,
            {"name": "samsnet-demo", "version": "1", "alias": "champion"},
            {"retrain_and_validate": 100.0, "test_and_register": 20.0},
            "MLflow UI: ...",
        )
        write_json(identity.study_uri(selection_uri(m.path), RESULT_FILE), sel.to_dict())
    if estimate is not None:  # as the study writes it before the search (estimate.enabled)
        save_estimate(m.path, estimate, "none: reported only")
    return m


def test_report_prints_counts_table_choice_and_where(tmp_path, capsys):
    write_study(tmp_path / "runs")
    assert main(["report", "demo", "--storage", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "12 trials (4 completed, 8 pruned)" in out
    assert "42 of 72" not in out and "30 of 72" in out and "58% saved" in out
    assert "VALIDATION" in out and "median over tracks and seeds" in out
    assert "chosen slices: 4" in out and "not significantly different from slices 8" in out
    assert "significantly worse" in out  # slices 1
    assert "TEST (synthetic (MUSDB18-HQ format), 1 tracks, museval BSSEval v4), winner only (slices=4, seed 43)" in out
    assert "models:/samsnet-demo@champion (version 1)" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/runs/mlruns/mlflow.db" in out


def test_report_before_selection_says_so(tmp_path):
    write_study(tmp_path / "runs", state="running", with_selection=False)
    report = gather("demo", str(tmp_path / "runs"))
    text = [x for x in render_text(report) if isinstance(x, str)]
    assert any("not chosen yet (the search is not finished)" in line for line in text)
    assert report.to_dict()["selection"] is None
    assert report.estimate is None and report.to_dict()["estimate"] is None
    assert not any("slice estimate" in line for line in text)  # the study ran without it


def test_report_shows_the_estimate_next_to_the_chosen_slice_count(tmp_path, capsys):
    """Estimate 4 (segments 2, 4, 4, 8: IQR 3.5-5), searched optimum 4: they agree."""
    write_study(tmp_path / "runs", estimate=fake_estimate([2, 4, 4, 8]))
    assert main(["report", "demo", "--storage", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = (
        "slice estimate (unsupervised, training mixtures): 4 (median 4, IQR 3.5-5; hypothesis: one slice per "
        "contiguous part); searched optimum: 4 (agrees)"
    )
    at = [i for i, text in enumerate(lines) if line in text]
    chosen = [i for i, text in enumerate(lines) if "chosen slices: 4" in text]
    assert len(at) == 1 and chosen and at[0] == chosen[0] + 1, lines  # right under the verdict
    summary = gather("demo", str(tmp_path / "runs")).to_dict()["estimate"]
    assert summary["slices_estimate"] == 4 and summary["iqr"] == [3.5, 5.0] and summary["segments"] == 4
    assert summary["method"] == "novelty" and summary["action"] == "none: reported only"
    assert "parts" not in summary and "slices" not in summary  # per-segment lists stay in the file


def test_report_says_how_far_the_estimate_is_from_the_optimum(tmp_path):
    write_study(tmp_path / "runs", estimate=fake_estimate([1, 2, 2, 2]))  # estimate 2, IQR 1.75-2
    text = [x for x in render_text(gather("demo", str(tmp_path / "runs"))) if isinstance(x, str)]
    assert any(line.endswith("searched optimum: 4 (differs by +2; outside the estimate's IQR)") for line in text), text
    write_study(tmp_path / "wide", estimate=fake_estimate([2, 2, 4, 8]))  # median 3 -> estimate 2, IQR 2-5
    text = [x for x in render_text(gather("demo", str(tmp_path / "wide"))) if isinstance(x, str)]
    assert any(line.endswith("searched optimum: 4 (differs by +2; inside the estimate's IQR)") for line in text), text
    write_study(tmp_path / "early", state="running", with_selection=False, estimate=fake_estimate([8, 8, 2, 8]))
    text = [x for x in render_text(gather("demo", str(tmp_path / "early"))) if isinstance(x, str)]
    assert any(
        "slice estimate (unsupervised, training mixtures): 8" in line
        and line.endswith("searched optimum: not chosen yet")
        for line in text
    ), text


def test_report_of_unknown_study_is_one_line_error(tmp_path, capsys):
    write_study(tmp_path / "runs", with_selection=False)
    assert main(["report", "nope", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "known studies: demo" in err
