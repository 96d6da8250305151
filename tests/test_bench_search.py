"""`samsnet-search bench --only search`: the platform's slice-count choice against the paper's grid.

A real tiny run (2 slice values, 1 epoch, a 2-map model on 3 s synthetic tracks) checks the JSON,
the printed table and that the regret is read from the grid's own table; the figures mean nothing
at this size (no timing assertions).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
from rich.console import Console

from samsnet_search.bench import (
    check_options,
    search_efficiency,
    skip_reason,
    write_report,
)
from samsnet_search.bench.common import machine_info
from samsnet_search.bench.search_efficiency import (
    FIXED,
    QUICKSTART,
    arms,
    base_study,
    compare,
    verdict_line,
)
from samsnet_search.bench.show import SEARCH_COLUMNS, print_report, search_rows
from samsnet_search.config import read_yaml

ARM_KEYS = {
    "trial_epochs",
    "search_trial_epochs",
    "selection_trial_epochs",
    "cpu_s",
    "wall_s",
    "pick",
    "pick_interval",
    "grid_avg_db",
    "regret_db",
    "matches_grid",
    "grid_best",
    "epoch_share",
    "search_best_slices",
    "search_regret_db",
    "table",
    "verdict",
}


@pytest.mark.slow  # a tiny grid and a tiny TPE + ASHA study with their selections: about a minute idle
def test_search_bench_tiny_json_table_and_regret(tmp_path):
    # The library path, with the grid and one platform arm (each arm costs a study and a selection; the
    # CLI's --tiny runs every arm through the same function).
    result = search_efficiency.run(
        quick=False, device="cpu", threads=1, tiny=True, only_arms=["asha"], workdir=tmp_path / "work"
    )
    result["seconds"] = 1.0
    report = {
        "machine": machine_info("cpu", 1),
        "settings": {"tiny": True},
        "benchmarks": {"search": result},
        "skipped": {},
    }
    report = json.loads(write_report(report, tmp_path / "bench.json").read_text())
    console = Console(record=True, width=240)  # wide: the whole table on one line per row
    print_report(report, console)
    printed = console.export_text()
    result = report["benchmarks"]["search"]
    assert result["sizes"]["slices"] == [1, 2] and result["sizes"]["tiny"] is True
    found = result["arms"]
    assert list(found) == ["grid", "asha"]
    for name, arm in found.items():
        assert ARM_KEYS <= set(arm), name
        assert arm["trial_epochs"] == arm["search_trial_epochs"] + arm["selection_trial_epochs"]
        assert arm["cpu_s"] > 0 and arm["wall_s"] > 0
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in result["figures"].values())

    # The grid: one trial per slice value (seed 0), reused by its selection; seeds 1 and 2 trained, 1 epoch each.
    grid = found["grid"]
    assert grid["search_trial_epochs"] == 2 and grid["selection_trial_epochs"] == 4
    assert grid["counts"] == {"completed": 2} and grid["selection_jobs"] == 6 and grid["selection_jobs_reused"] == 2
    rows = {r["slices"]: r for r in grid["table"]}
    assert sorted(rows) == [1, 2] and all(r["pairs"] == 3 for r in rows.values())  # 1 validation track x 3 seeds
    assert rows[grid["pick"]]["vs_winner"] == "winner"
    assert grid["regret_db"] == 0 and grid["epoch_share"] == 1

    # Regret: the grid's avg SDR of its best minus the grid's avg SDR of the arm's pick (not the arm's own table).
    for name, arm in found.items():
        assert arm["regret_db"] == pytest.approx(rows[grid["pick"]]["avg"] - rows[arm["pick"]]["avg"]), name
        assert arm["grid_avg_db"] == rows[arm["pick"]]["avg"]
        assert arm["epoch_share"] == pytest.approx(arm["trial_epochs"] / grid["trial_epochs"])
        assert result["figures"][f"{name}_regret_db"] == pytest.approx(arm["regret_db"])
        if name != "grid":
            assert arm["target_met"] == (arm["matches_grid"] and arm["epoch_share"] <= 0.25)
            assert any(
                n.startswith(f"{name}: target {'MET' if arm['target_met'] else 'NOT met'}") for n in result["notes"]
            )

    # The printed table: every column, a row per arm as search_rows renders it from the JSON.
    assert "search efficiency against the paper's grid" in printed
    assert all(header in printed for header in SEARCH_COLUMNS)
    for row in search_rows(result):
        assert re.search(r"[\s│]+".join(re.escape(cell) for cell in row), printed), row


def test_compare_reads_the_regret_from_the_grid():
    """A pick the platform scores high but the grid scores low has the grid's regret."""
    table = [
        {"slices": 1, "avg": 2.0, "avg_low": 1.5, "avg_high": 2.5, "vs_winner": "winner"},
        {"slices": 4, "avg": 1.2, "avg_low": 1.0, "avg_high": 1.4, "vs_winner": "significantly worse"},
        {"slices": 8, "avg": 1.8, "avg_low": 1.3, "avg_high": 2.2, "vs_winner": "not significantly different"},
    ]
    common = {"cpu_s": 10.0, "search_trial_epochs": 5}
    results = {
        "grid": {**common, "pick": 1, "search_best_slices": 8, "trial_epochs": 40, "table": table},
        "asha": {**common, "pick": 4, "search_best_slices": 8, "trial_epochs": 8, "table": [{**table[1], "avg": 9.0}]},
        "median": {**common, "pick": 8, "search_best_slices": 1, "trial_epochs": 12, "table": []},
    }
    compare(results)
    asha, median = results["asha"], results["median"]
    assert asha["regret_db"] == pytest.approx(0.8) and not asha["matches_grid"] and not asha["target_met"]
    assert asha["search_regret_db"] == pytest.approx(0.2) and asha["epoch_share"] == pytest.approx(0.2)
    assert median["regret_db"] == pytest.approx(0.2) and median["matches_grid"] and not median["grid_best"]
    assert median["epoch_share"] == pytest.approx(0.3) and not median["target_met"]  # over 25% of the grid's epochs
    assert verdict_line("median", median).startswith(
        "median: target NOT met: picked slices 8 (regret 0.20 dB, not significantly"
    )
    results["median"]["trial_epochs"] = 10
    compare(results)
    assert results["median"]["target_met"] and verdict_line("median", results["median"]).startswith(
        "median: target MET"
    )


def test_studies_derive_from_the_quickstart(tmp_path):
    """Slices searched over the quickstart's choices, every other searched key fixed, the rest as the quickstart."""
    quick = read_yaml(QUICKSTART)
    base = base_study(tmp_path, tmp_path / "data")
    assert base["model"]["slices"] == quick["model"]["slices"]
    for key, value in FIXED.items():
        section, leaf = key.split(".")
        assert base[section][leaf] == value
    for section in ("model", "data", "train"):
        searched = [k for k, v in base[section].items() if isinstance(v, dict) and k != "slices"]
        assert not searched, (section, searched)
        assert {k: v for k, v in base[section].items() if f"{section}.{k}" not in FIXED and k != "root"} == {
            k: v for k, v in quick[section].items() if f"{section}.{k}" not in FIXED and k != "root"
        }
    assert base["search"] == quick["search"] and base["train"]["epochs"] == quick["train"]["epochs"]
    grid, asha = arms(quick["model"]["slices"]["choice"])[:2]
    assert grid.search == {"searcher": "grid", "scheduler": "fifo", "num_samples": 1} and grid.full_budget_selection
    assert asha.search["scheduler"] == "asha" and asha.search["num_samples"] == 2 * len(
        quick["model"]["slices"]["choice"]
    )


def test_search_bench_runs_only_when_asked():
    """A plain `bench` leaves the search benchmark out (tens of minutes) and says how to run it."""
    assert {"search", "overhead"} <= set(check_options("cpu", None, None))
    assert "--only search" in skip_reason("search", quick=False, only=None, tiny=False)
    assert skip_reason("search", quick=False, only=["search"], tiny=False) is None
    assert (
        skip_reason("search", quick=True, only=["search"], tiny=False) == "full mode only (a Ray study takes minutes)"
    )
    assert skip_reason("search", quick=True, only=None, tiny=True) is None  # --tiny: in any mode
    assert skip_reason("overhead", quick=False, only=None, tiny=False) is None
    assert skip_reason("overhead", quick=True, only=None, tiny=True) is not None


def test_tree_cpu_counts_a_child_that_has_ended():
    """The CPU of a descendant is kept after it ends (Ray's raylet does not add its workers' times to its own)."""
    with search_efficiency.TreeCpu(interval=0.05) as tree:
        before = tree.seconds()
        code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
        subprocess.run([sys.executable, "-c", code], check=True)
        used = tree.seconds() - before
    assert 0.8 <= used < 3.0  # 1 s of the child's CPU (its start-up on top), less at most one sampling interval
