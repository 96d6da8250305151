"""Benchmark 3: the fast BSSEval v4 (`samsnet_search.metrics.bsseval`) against museval on the same track.

Both score the same 4 stereo references and imperfect estimates (`museval_compare.synthetic_sources`,
with a silent second that museval reports as NaN); `museval_compare.compare_with_museval` gives the
time ratio, the largest per-frame and per-target-median differences (dB), the fast path's time per
stage (scan: silence checks and SDR terms; correlations: FFTs and cross-spectra for G and D; solve:
the Cholesky solves; frames: FFTs and projections per frame) and the load average around the run,
which the times depend on (docs/metrics.md).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import SAMPLE_RATE
from ..metrics.bsseval import METRICS
from .museval_compare import compare_with_museval


def seconds_for(quick: bool, smoke: bool) -> float:
    if smoke:
        return 3.0
    return 10.0 if quick else 180.0  # full: a 3-minute track, a typical song


def run(quick: bool, device: str, threads: int, smoke: bool = False) -> dict[str, Any]:
    torch.set_num_threads(threads)
    seconds = seconds_for(quick, smoke)
    result = compare_with_museval(seconds, seed=0)
    figures = {
        "museval_s": result["museval_s"],
        "fast_s": result["fast_s"],
        "speedup": result["speedup"],
        "load_avg_before": result["load_before"],
        "load_avg_after": result["load_after"],
    }
    for stage, secs in result["fast_stages_s"].items():
        figures[f"fast_{stage}_s"] = secs
    for m in METRICS:
        figures[f"{m}_max_frame_diff_db"] = result[f"{m}_max_frame_diff"]
        figures[f"{m}_max_target_diff_db"] = result[f"{m}_max_median_diff"]
        figures[f"{m}_nan_frames_match"] = float(result[f"{m}_nan_match"])
    sizes = {
        "seconds": seconds,
        "targets": 4,
        "channels": 2,
        "win": SAMPLE_RATE,
        "hop": SAMPLE_RATE,
        "data": "museval_compare.synthetic_sources(seed=0)",
    }
    notes = [
        "the fast path runs on CPU (numpy/numba) whatever --device is, on torch.get_num_threads() threads (--threads)",
        "museval and the fast path run one after the other on the same data; compare them only at a low load average",
    ]
    return {"sizes": sizes, "figures": figures, "notes": notes}
