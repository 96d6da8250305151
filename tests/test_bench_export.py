"""`bench --only export`: the exported programs timed beside the eager model (no timing assertions)."""

from __future__ import annotations

import math

import pytest

from samsnet_search.bench import NAMES
from samsnet_search.bench.export import run


@pytest.mark.slow  # exports one quickstart model (three traces): tens of seconds under load
def test_export_bench_reports_both_times_and_their_ratio():
    assert "export" in NAMES
    result = run(quick=True, device="cpu", threads=2, smoke=True)
    figures = result["figures"]
    for line in ("masks_eager", "masks_pt2", "masks_onnx", "separate_eager", "separate_pt2"):
        assert figures[f"{line}_ms"] > 0, line
    for ratio in ("masks_pt2_ratio", "masks_onnx_ratio", "separate_pt2_ratio"):
        assert math.isfinite(figures[ratio]) and figures[ratio] > 0
    assert figures["max_abs_diff"] <= 1e-4  # the timed programs compute what the model does
    assert figures["frames"] % figures["slice_frames"] != 0  # the padded last slice is in the timing
    assert result["sizes"][0]["label"] == "quickstart's largest trial model"
