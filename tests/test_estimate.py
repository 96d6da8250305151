"""Unsupervised slice estimate (issue 7): building blocks, recovery on synthetic sections, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samsnet_search.cli import main
from samsnet_search.errors import ConfigError
from samsnet_search.estimate import (
    EstimateParams,
    contiguous_runs,
    eigengap,
    estimate_slices,
    nearest_slices,
    recovery_rate,
    stft_magnitude,
    true_parts,
)


def test_stft_matches_torch_hamming_center():
    """The features use the model's framing: torch.stft, Hamming window, center=True, reflect pad."""
    import torch

    x = np.random.default_rng(0).standard_normal(5000)
    ref = torch.stft(torch.from_numpy(x), 512, 128, window=torch.hamming_window(512, dtype=torch.float64),
                     center=True, pad_mode="reflect", return_complex=True).abs().numpy()  # fmt: skip
    ours = stft_magnitude(x, 512, 128)
    assert ours.shape == ref.shape == (257, 1 + 5000 // 128)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-8)


def test_contiguous_runs_count_returning_pattern_once_per_run_and_drop_short_runs():
    labels = np.array([0] * 10 + [1] * 10 + [0] * 10)  # A B A: three parts, two clusters
    assert [r[:2] for r in contiguous_runs(labels, min_run=3)] == [(0, 10), (10, 20), (20, 30)]
    blip = np.array([0] * 10 + [1] * 2 + [0] * 10 + [2] * 8)  # a 2-frame blip inside A
    assert contiguous_runs(blip, min_run=3) == [(0, 22, 0), (22, 30, 2)]
    assert len(contiguous_runs(np.array([0, 1, 0, 1]), min_run=10)) == 1


def test_nearest_slices_ties_to_smaller():
    allowed = [1, 2, 4, 8, 12, 16, 18, 24]
    assert [nearest_slices(p, allowed) for p in (1, 3, 5, 6, 7, 10, 17, 40)] == [1, 2, 4, 4, 8, 8, 16, 24]


def test_eigengap_finds_block_count():
    rng = np.random.default_rng(1)
    sizes = [12, 20, 9]
    A = np.zeros((41, 41))
    start = 0
    for n in sizes:
        A[start : start + n, start : start + n] = 0.8 + 0.2 * rng.random((n, n))
        start += n
    A = (A + A.T) / 2 + 0.01 * rng.random((41, 41))  # weak links between blocks
    A = (A + A.T) / 2
    k, vals, _ = eigengap(A, max_clusters=8)
    assert k == 3
    assert vals[0] == pytest.approx(0.0, abs=1e-8)


def test_true_parts_ignores_overlaps_shorter_than_min_part():
    sections = {"sections": [{"start": 0.0, "end": 2.2}, {"start": 2.2, "end": 5.9}, {"start": 5.9, "end": 9.0}]}
    assert true_parts(sections, 0.0, 6.0, 0.5) == 2  # the third section overlaps by 0.1 s only
    assert true_parts(sections, 3.0, 4.0, 0.5) == 1


@pytest.fixture(scope="module")
def varied_root(tmp_path_factory):
    """Training mixtures with sections of 1-6 s: 6 s segments hold 1-3 parts (slices 1-4 by the hypothesis)."""
    from samsnet_search.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("est"), n_train=4, n_valid=1, n_test=1, seconds=24.0, seed=3,
                      section_range=(1.0, 6.0))  # fmt: skip


def test_recovery_rate_on_synthetic_sections(varied_root):
    """Truth: sections overlapping a segment by >= 0.5 s. Measured on this set (seed 3, 4 x 24 s):
    exact 0.31, within one 0.75; on 16 x 30 s (seed 1, 80 segments): exact 0.25, within one 0.71.
    Well short of the 70 % exact the issue hopes for: the thresholds guard against regressions only."""
    r = recovery_rate(varied_root, segment_seconds=6.0)
    assert r["segments"] == 16
    assert r["within_one"] >= 0.6, r
    assert r["exact"] >= 0.25, r
    est = r["estimate"]
    assert len(est.parts) == len(est.slices) == 16
    assert set(est.slices) <= set(est.allowed_slices)
    assert est.iqr[0] <= est.median_slices <= est.iqr[1]
    assert sum(est.histogram.values()) == 16


def test_one_long_section_gives_one_part(tmp_path):
    """A segment inside one section is one part, one slice (no spurious splits on notes or chords).

    Known limitation (measured, see report): many short sections (1-1.5 s) are under-counted, since
    the lambda_1 eigengap dominates on these dense graphs; this test does not cover that case.
    """
    from samsnet_search.config import DataConfig
    from samsnet_search.data.splits import load_splits
    from samsnet_search.data.synth import synthesize

    long = synthesize(tmp_path / "long", n_train=2, n_valid=1, n_test=1, seconds=6.0, seed=5, section_range=(6.0, 6.0))
    est = estimate_slices(load_splits(DataConfig(root=long)), 6.0)
    assert est.parts == [1, 1] and est.slices_estimate == 1
    assert [s.true_parts for s in est.segments] == [1, 1]


def test_estimate_rejects_bad_input(synth_root):
    from samsnet_search.config import DataConfig
    from samsnet_search.data.splits import load_splits

    splits = load_splits(DataConfig(root=synth_root))
    with pytest.raises(ConfigError, match="exceeds the"):
        estimate_slices(splits, 0.5, [1, 200], 512, 256)  # 87 frames
    with pytest.raises(ConfigError, match="positive"):
        estimate_slices(splits, 2.0, [0, 2])
    with pytest.raises(ConfigError, match="temporal_weight"):
        estimate_slices(splits, 2.0, [1, 2], params=EstimateParams(temporal_weight=1.5))


def test_cli_prints_table_histogram_hypothesis_and_writes_json(synth_root, tmp_path, capsys):
    out = tmp_path / "est.json"
    rc = main(["estimate-slices", "--data", str(synth_root), "--segment-seconds", "2", "--slices", "1,2,4,8",
               "--n-fft", "1024", "--hop", "256", "--json", str(out)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "hypothesis: one slice per contiguous part" in text
    assert "slices  segments" in text and "median" in text
    data = json.loads(out.read_text())
    # synth_root: 2 training tracks of 8 s -> 4 segments each; validation tracks are not read.
    assert len(data["segments"]) == 8 and {s["track"] for s in data["segments"]} == {"synth-train-000", "synth-train-001"}
    assert all(s["true_parts"] >= 1 for s in data["segments"])
    assert sum(data["histogram"].values()) == 8


def test_cli_bad_slices_exit_2(synth_root, capsys):
    assert main(["estimate-slices", "--data", str(synth_root), "--slices", "1,two"]) == 2
    assert main(["estimate-slices", "--data", str(synth_root), "--segment-seconds", "1", "--slices", "1,100"]) == 2
