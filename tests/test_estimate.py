"""Unsupervised slice estimate: building blocks, recovery on synthetic sections, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samsnet_search.cli import main
from samsnet_search.errors import ConfigError
from samsnet_search.search.estimate import (
    EstimateParams,
    checkerboard_kernel,
    chroma_filterbank,
    contiguous_runs,
    eigengap,
    estimate_slices,
    lagged_product,
    nearest_slices,
    novelty_curve,
    parts_between,
    pick_peaks,
    recovery_rate,
    rhythm_features,
    stft_magnitude,
    true_parts,
)


def test_stft_matches_torch_hamming_center():
    """The features use the model's framing: torch.stft, Hamming window, center=True, reflect pad."""
    import torch

    x = np.random.default_rng(0).standard_normal(5000)
    ref = (
        torch.stft(
            torch.from_numpy(x),
            512,
            128,
            window=torch.hamming_window(512, dtype=torch.float64),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        .abs()
        .numpy()
    )
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

    return synthesize(
        tmp_path_factory.mktemp("est"), n_train=4, n_valid=1, n_test=1, seconds=24.0, seed=3, section_range=(1.0, 6.0)
    )


def test_recovery_rate_on_synthetic_sections(varied_root):
    """Truth: sections overlapping a segment by >= 0.5 s. Measured on this set (seed 3, 4 x 24 s, not
    used for tuning; 16 segments): novelty (default, timbre + harmony + rhythm) exact 0.62, within one
    0.94; the timbre-only novelty of before 0.56 / 0.94; eigengap 0.31 / 0.69. This small set is
    noisy (timbre-only with today's kernel: 0.69); the 400 held-out segments are in docs/estimate.md."""
    r = recovery_rate(varied_root, segment_seconds=6.0)
    assert r["segments"] == 16
    assert r["within_one"] >= 0.875, r
    assert r["exact"] >= 0.5625, r
    est = r["estimate"]
    assert len(est.parts) == len(est.slices) == 16
    assert set(est.slices) <= set(est.allowed_slices)
    assert est.iqr[0] <= est.median_slices <= est.iqr[1]
    assert sum(est.histogram.values()) == 16
    assert all(s.clusters is None for s in est.segments)  # the novelty path clusters nothing
    eig = recovery_rate(varied_root, segment_seconds=6.0, params=EstimateParams(method="eigengap"))
    assert eig["exact"] < r["exact"] and eig["within_one"] < r["within_one"], eig


def test_novelty_finds_the_block_boundary_and_nothing_in_a_homogeneous_stretch():
    """Two feature regimes meeting at point 40: one change point there; one regime: none (the floor)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16), rng.standard_normal(16)
    feats = np.concatenate([a + 0.3 * rng.standard_normal((40, 16)), b + 0.3 * rng.standard_normal((30, 16))])
    nov = novelty_curve(feats, half_width=8)
    assert nov.shape == (70,) and np.all(np.abs(nov) <= 1.0 + 1e-9)
    assert pick_peaks(nov, min_distance=3, window=32, delta=0.5, floor=0.06).tolist() == [40]
    flat = a + 0.3 * rng.standard_normal((70, 16))
    assert pick_peaks(novelty_curve(flat, 8), 3, 32, 0.5, 0.06).tolist() == []
    K = checkerboard_kernel(4)
    assert K.shape == (8, 8) and K[0, 0] > 0 and K[0, 7] < 0 and np.allclose(K, K.T)


def test_soft_cosine_floor_silences_small_wobble_but_keeps_a_real_change():
    """Centered features that stay near the track mean (chord-to-chord wobble) give no novelty peak
    with a norm floor, though a plain cosine scales the wobble up to full contrast."""
    rng = np.random.default_rng(2)
    wobble = 0.01 * rng.standard_normal((60, 12))
    wobble[:30] += 0.02  # a tiny shift (norm ~0.07): a plain cosine sees it as a full change
    wobble[30:] -= 0.02
    plain, floored = novelty_curve(wobble, 8), novelty_curve(wobble, 8, norm_floor=0.3)
    assert plain.max() > 0.6 and floored.max() < 0.06
    change = np.concatenate([np.full((30, 12), -0.3), np.full((30, 12), 0.3)]) + wobble  # norm ~1
    real = novelty_curve(change, 8, norm_floor=0.3)
    assert int(np.argmax(real)) == 30 and real.max() > 0.8


def test_lagged_product_is_centred_and_never_runs_into_zero_padding():
    x = np.arange(1.0, 6.0)
    assert lagged_product(x, 2).tolist() == [3.0, 3.0, 8.0, 15.0, 15.0]  # centred; the ends repeat the nearest pair
    assert lagged_product(x, 9).tolist() == [0.0] * 5


def test_rhythm_view_sees_a_tempo_change_and_chroma_maps_a440_to_a():
    """A click track at 120 bpm, then at 90 bpm: the rhythm novelty peaks at the change."""
    from samsnet_search.config import SAMPLE_RATE

    params = EstimateParams()
    clicks = np.zeros(16 * SAMPLE_RATE)
    for t in list(np.arange(0.0, 8.0, 0.5)) + list(np.arange(8.0, 16.0, 60 / 90)):
        i = int(t * SAMPLE_RATE)
        clicks[i : i + 200] += np.hanning(200)
    mag = stft_magnitude(clicks, 4096, 1024)
    feats = rhythm_features(mag, 4096, 1024, params)
    seconds_per_point = 1024 * params.frames_per_point / SAMPLE_RATE
    nov = novelty_curve(feats, int(round(params.kernel_seconds / seconds_per_point)), params.rhythm_floor)
    inner = slice(int(2 / seconds_per_point), int(14 / seconds_per_point))  # away from the track's ends
    peak = (inner.start + int(np.argmax(nov[inner]))) * seconds_per_point
    assert abs(peak - 8.0) < 0.5, peak
    fb = chroma_filterbank(4096)
    assert fb.shape == (12, 2049) and fb.sum(0).max() == 1.0
    assert fb[:, int(round(440 / (SAMPLE_RATE / 4096)))].argmax() == 9  # A


def test_parts_between_uses_the_truths_min_part_rule():
    bounds = np.array([2.0, 6.3, 9.0, 11.8])
    assert parts_between(bounds, 6.0, 12.0, 0.5) == (2, [3.0])  # 6.3 and 11.8 sit within 0.5 s of an edge
    assert parts_between(bounds, 0.0, 6.0, 0.5) == (2, [2.0])
    assert parts_between(np.zeros(0), 0.0, 6.0, 0.5) == (1, [])


def test_one_long_section_gives_one_part(tmp_path):
    """A segment inside one section is one part, one slice (no spurious splits on notes or chords).

    Guards the novelty threshold's absolute floor and the views' norm floors: without them the
    relatively largest wiggles of a homogeneous stretch become change points. Tracks of one
    24 s section (seed 5): measured 7 of 8 segments as one part. Whole tracks much shorter than the
    kernel's span (6 s here vs 2 x 2.5 s) are over-split: per-track centering scales their wobble up.
    """
    from samsnet_search.config import DataConfig
    from samsnet_search.data.splits import load_splits
    from samsnet_search.data.synth import synthesize

    one = synthesize(tmp_path / "one", n_train=2, n_valid=1, n_test=1, seconds=24.0, seed=5, section_range=(24.0, 24.0))
    est = estimate_slices(load_splits(DataConfig(root=one)), 6.0)
    assert [s.true_parts for s in est.segments] == [1] * 8
    assert est.parts.count(1) >= 7 and est.slices_estimate == 1, est.parts


def test_boundaries_between_long_sections_are_found_where_they_are(tmp_path):
    """Two 12 s sections per track: one change point each, within 1 s of 12 s (measured 12.07 and
    12.72 s). Timbre alone finds 12.07 plus a spurious 17.83, and 15.7 instead of 12 on the other
    track: the harmony and rhythm views are what place it."""
    from samsnet_search.config import DataConfig
    from samsnet_search.data.splits import load_splits
    from samsnet_search.data.synth import synthesize
    from samsnet_search.search.estimate import track_boundaries

    twelve = synthesize(
        tmp_path / "twelve", n_train=2, n_valid=1, n_test=1, seconds=24.0, seed=5, section_range=(12.0, 12.0)
    )
    tracks = load_splits(DataConfig(root=twelve)).train
    found = [track_boundaries(np.asarray(t.audio()[0]).mean(0), 4096, 1024, EstimateParams()) for t in tracks]
    assert all(len(b) == 1 and abs(b[0] - 12.0) < 1.0 for b in found), found
    est = estimate_slices(tracks, 6.0)
    assert [s.true_parts for s in est.segments] == [1] * 8  # the boundary sits on a segment edge
    assert est.parts.count(1) >= 7 and est.slices_estimate == 1, est.parts


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
    with pytest.raises(ConfigError, match="method must be one of"):
        estimate_slices(splits, 2.0, [1, 2], params=EstimateParams(method="foote"))
    with pytest.raises(ConfigError, match="threshold_floor"):
        estimate_slices(splits, 2.0, [1, 2], params=EstimateParams(threshold_floor=-0.1))
    with pytest.raises(ConfigError, match="rhythm_weight"):
        estimate_slices(splits, 2.0, [1, 2], params=EstimateParams(rhythm_weight=-1))
    with pytest.raises(ConfigError, match="chroma_seconds"):
        estimate_slices(splits, 2.0, [1, 2], params=EstimateParams(chroma_seconds=0))


def test_cli_prints_table_histogram_hypothesis_and_writes_json(synth_root, tmp_path, capsys):
    out = tmp_path / "est.json"
    rc = main(
        [
            "estimate-slices",
            "--data",
            str(synth_root),
            "--segment-seconds",
            "2",
            "--slices",
            "1,2,4,8",
            "--n-fft",
            "1024",
            "--hop",
            "256",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "hypothesis: one slice per contiguous part" in text
    assert "slices  segments" in text and "median" in text
    data = json.loads(out.read_text())
    # synth_root: 2 training tracks of 8 s -> 4 segments each; validation tracks are not read.
    assert len(data["segments"]) == 8 and {s["track"] for s in data["segments"]} == {
        "synth-train-000",
        "synth-train-001",
    }
    assert all(s["true_parts"] >= 1 for s in data["segments"])
    assert sum(data["histogram"].values()) == 8


def test_cli_bad_slices_exit_2(synth_root, capsys):
    assert main(["estimate-slices", "--data", str(synth_root), "--slices", "1,two"]) == 2
    assert main(["estimate-slices", "--data", str(synth_root), "--segment-seconds", "1", "--slices", "1,100"]) == 2
