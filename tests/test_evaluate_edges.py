"""Evaluation edge cases (issue 22 item 8), through the real `samsnet-search evaluate` path: a
track museval cannot score is refused in one line naming it; silent stretches score as museval does.

museval 0.4.1 raises a ValueError for a reference silent throughout (its projection is then
undetermined) and scores a track shorter than its window as one frame of another length; frames
where any reference is silent are NaN and skipped by the median (docs/metrics.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from samsnet_search import cli
from samsnet_search.config import SAMPLE_RATE


def _stems(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((4, 2, int(seconds * SAMPLE_RATE)))).astype(np.float32)


def _evaluate(root, out, backend: str = "fast") -> list[str]:
    return f"evaluate --oracle irm1 --subset test --backend {backend}".split() + [
        "--data",
        str(root),
        "--out",
        str(out),
    ]


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("backend", ["fast", "museval"])
def test_a_reference_silent_throughout_is_refused_naming_track_and_stem(tmp_path, make_hq_track, capsys, backend):
    stems = _stems(2.0)
    stems[2] = 0.0  # bass
    make_hq_track(tmp_path / "data" / "test" / "no bass", stems)
    assert cli.main(_evaluate(tmp_path / "data", tmp_path / "eval", backend)) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'no bass'" in line and "reference bass is silent throughout" in line


def test_a_track_shorter_than_one_bsseval_frame_is_refused_naming_it(tmp_path, make_hq_track, capsys):
    make_hq_track(tmp_path / "data" / "test" / "short", _stems(0.5))
    assert cli.main(_evaluate(tmp_path / "data", tmp_path / "eval")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'short'" in line and "shorter than one BSSEval frame (44100 samples" in line


def test_silent_stretches_are_scored_as_museval_does(tmp_path, make_hq_track, capsys):
    """Bass silent in the first of three seconds: that frame is NaN for every target (museval's
    rule), the other two frames are scored, and both backends agree."""
    stems = _stems(3.0)
    stems[2, :, :SAMPLE_RATE] = 0.0
    make_hq_track(tmp_path / "data" / "test" / "quiet start", stems)
    scores = {}
    for backend in ("fast", "museval"):
        assert cli.main(_evaluate(tmp_path / "data", tmp_path / backend, backend)) == 0
        frames = json.loads((tmp_path / backend / "test" / "quiet start.json").read_text())["targets"]
        sdr = {t["name"]: [f["metrics"]["SDR"] for f in t["frames"]] for t in frames}
        assert all(values[0] is None or np.isnan(values[0]) for values in sdr.values()), sdr
        scores[backend] = json.loads((tmp_path / backend / "summary.json").read_text())["summary"]
    assert all(np.isfinite(v) for v in scores["fast"].values())
    assert scores["fast"] == pytest.approx(scores["museval"], abs=1e-3)
