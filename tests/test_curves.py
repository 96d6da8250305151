"""The learning-curve table: built by the platform's runner, resumable, with its provenance.

A tiny grid (2 slice values x 2 seeds, 2 epochs, a tiny model) runs end to end through the
real runner (Ray, MLflow); a second build trains nothing and scores nothing again. The slice
effect summary and the progress line are checked on constructed inputs.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import yaml

from samsnet_search.bench import curves
from samsnet_search.config import TARGETS

pytestmark = pytest.mark.slow

TINY_DATA = {"n_train": 2, "n_valid": 2, "n_test": 1, "seconds": 3.0, "seed": 0, "section_range": (1.0, 2.0)}


def tiny_space(tmp_path):
    spec = yaml.safe_load(curves.SPACE.read_text())
    spec["model"].update({"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}, "heads": 1, "channels": 2})
    spec["data"].update({"segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0})
    spec["train"].update({"lr": {"choice": [3.0e-3]}, "seed": {"choice": [0, 1]}, "epochs": 2, "patience": 2})
    path = tmp_path / "tiny-curves.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, local_ray):
    tmp = tmp_path_factory.mktemp("curves")
    lines: list[str] = []
    with local_ray({}):
        first = curves.build(tiny_space(tmp), tmp / "work", tmp / "out", say=lines.append, data=TINY_DATA)
        again_lines: list[str] = []
        again = curves.build(tiny_space(tmp), tmp / "work", tmp / "out", say=again_lines.append, data=TINY_DATA)
    return tmp, first, lines, again, again_lines


def test_the_table_has_every_run_and_epoch_with_paired_scores_and_provenance(built):
    tmp, first, lines, _, _ = built
    table, provenance = curves.read_table(first.table)
    assert first.runs == 4 and table.num_rows == 8
    rows = table.to_pylist()
    assert sorted({(r["slices"], r["seed"]) for r in rows}) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert sorted(r["epoch"] for r in rows) == [1, 1, 1, 1, 2, 2, 2, 2]
    tracks = sorted({c.split(".")[1] for c in table.column_names if c.startswith("track_sdr.")})
    assert tracks == ["synth-valid-000", "synth-valid-001"]
    for r in rows:
        # every track's column (NaN where a stem is silent over the tiny excerpt), finite somewhere
        assert all(f"track_sdr.{t}.{target}" in r for t in tracks for target in TARGETS)
        assert any(math.isfinite(r[f"track_sdr.{t}.{target}"]) for t in tracks for target in TARGETS)
        assert r["epoch_seconds"] > 0 and r["epoch_cpu_seconds"] > 0 and r["params"] > 0
        assert math.isfinite(r["test_sdr"]) and math.isfinite(r["valid_loss"])
    per_run = {}
    for r in rows:
        per_run.setdefault(r["run"], set()).add(r["test_sdr"])
    assert all(len(v) == 1 for v in per_run.values())  # one test score per run
    assert {"code_commit", "space", "data", "cpu", "load_average_1m", "torch"} <= set(provenance)
    assert len(provenance["data"]["fingerprint"]) == 64 and provenance["data"]["n_valid"] == 2
    sheet = first.datasheet.read_text()
    assert "8 rows" in sheet and "samsnet-search curves build" in sheet and "| heads |" in sheet
    assert any(line.startswith("curves: test SDR 4/4") for line in lines)


def test_a_second_build_trains_and_scores_nothing_again(built):
    _, first, _, again, again_lines = built
    assert not any(line.startswith("curves: test SDR") for line in again_lines)  # scores kept
    before, after = curves.read_table(first.table)[0], curves.read_table(again.table)[0]
    cols = ["run", "epoch", "valid_loss", "test_sdr"]
    assert before.select(cols).to_pylist() == after.select(cols).to_pylist()


def test_the_slice_effect_compares_the_spread_with_the_seeds_noise():
    rows = []
    for lr, gap in ((1e-3, 2.0), (1e-2, 0.0)):  # slices matter at one lr only
        for slices in (1, 4):
            for seed, noise in enumerate((-0.1, 0.0, 0.1)):
                sdr = 3.0 + (gap if slices == 4 else 0.0) + noise
                rows.append(
                    {"heads": 1, "channels": 4, "lr": lr, "slices": slices, "seed": seed, "epoch": 8, "valid_sdr": sdr}
                )
                rows.append({**rows[-1], "epoch": 1, "valid_sdr": 0.0})
    effect = curves.slice_effect(pa.Table.from_pylist(rows))
    by_lr = {c["lr"]: c for c in effect["configs"]}
    assert by_lr[1e-3]["best_slices"] == 4 and by_lr[1e-3]["spread_db"] == pytest.approx(2.0)
    assert by_lr[1e-2]["spread_db"] == pytest.approx(0.0)
    assert effect["clear"] == 1 and effect["epoch"] == 8
    assert "1 of 2 configurations" in effect["summary"]


def test_progress_names_the_epochs_done_and_the_time_left_at_this_sessions_rate():
    assert curves.progress_line(30, 10, 110, 600.0) == "curves: 30 of 110 epochs (27 %), 40 min left"
    assert curves.progress_line(10, 10, 110, 60.0).endswith("time left unknown yet")
