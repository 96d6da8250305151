"""samsnet_search.metrics.bsseval against museval 0.4.1 itself: per frame, per target median, NaN frames.

Every comparison runs museval on the same arrays. Both code paths are checked on CPU: the
numba kernels (the CPU default) and the pure-torch path that CUDA tensors take.
"""

from __future__ import annotations

import math
import os
import shutil

import museval
import numpy as np
import pytest
import torch
from museval import metrics as museval_metrics

from samsnet_search.bench.museval_compare import compare_with_museval, synthetic_sources
from samsnet_search.metrics import bsseval as metrics
from samsnet_search.metrics.bsseval import (
    METRICS,
    bss_eval_v4,
    median_over_tracks,
    sdr_v4,
    track_scores,
)

TOL_DB = 0.01  # the exactness target: per frame and per target median


@pytest.fixture(params=["numba", "torch"])
def backend(request, monkeypatch) -> str:
    """Run a test on the CPU numba kernels and on the torch path (the one CUDA tensors take)."""
    monkeypatch.setattr(metrics, "_CPU_KERNELS", request.param)
    return request.param


@pytest.fixture(scope="module")
def stems() -> np.ndarray:
    """stempeg's shipped excerpt (AAC, 6 s): (4, nsamples, 2) drums, bass, other, vocals."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("stempeg needs the ffmpeg binary to decode its stems")
    import stempeg

    path = os.path.join(os.path.dirname(stempeg.__file__), "data", "The Easton Ellises - Falcon 69.stem.mp4")
    audio, rate = stempeg.read_stems(path)
    assert rate == 44100 and audio.shape[0] == 5 and audio.shape[2] == 2
    return audio[1:]  # stream 0 is the mixture


def leaky_estimates(refs: np.ndarray, seed: int, noise: float = 0.02) -> np.ndarray:
    """Imperfect separations: scaled reference, delayed leakage of the next source, white noise."""
    rng = np.random.default_rng(seed)
    leakage = np.roll(np.roll(refs, 1, axis=0), 37, axis=1)
    return 0.8 * refs + 0.15 * leakage + noise * rng.standard_normal(refs.shape)


def museval_dict(refs: np.ndarray, ests: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    """museval.metrics.bss_eval with museval.evaluate's v4 settings; kwargs: window, hop, filters_len."""
    sdr, isr, sir, sar, _ = museval_metrics.bss_eval(
        refs, ests, compute_permutation=False, framewise_filters=False, bsseval_sources_version=False, **kwargs
    )
    return {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}


def assert_matches(ours: dict, ref: dict, names=METRICS, tol: float = TOL_DB) -> None:
    """Same shape, same NaN frames, frames and per-target medians within tol dB."""
    for m in names:
        a, b = ref[m], ours[m]
        assert b.shape == a.shape, m
        np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg=f"{m}: NaN frames differ")
        np.testing.assert_array_equal(b[np.isinf(a)], a[np.isinf(a)], err_msg=f"{m}: infinite frames differ")
        both = np.isfinite(a)
        assert np.max(np.abs(a[both] - b[both]), initial=0.0) < tol, (m, np.abs(a[both] - b[both]).max())
        targets = [f"t{j}" for j in range(a.shape[0])]
        med_a, med_b = track_scores(a, targets), track_scores(b, targets)
        for t in targets:
            assert (math.isnan(med_a[t]) and math.isnan(med_b[t])) or abs(med_a[t] - med_b[t]) < tol, (m, t)


# ----------------------------------------------------------------------------- real stems


@pytest.fixture(scope="module")
def dithered_case(stems):
    """4 s of three real stems (drums, bass, vocals) with -60 dB white dither, so that museval's
    projections are well posed (three, not four: museval's cost grows with the cube of the count)."""
    rng = np.random.default_rng(0)
    refs = stems[[0, 1, 3], : 4 * 44100] + 1e-3 * rng.standard_normal((3, 4 * 44100, 2))
    ests = leaky_estimates(refs, seed=1)
    return refs, ests, dict(zip(METRICS, museval.evaluate(refs, ests, win=44100, hop=44100)))


def test_real_stems_match_museval(backend, dithered_case):
    refs, ests, ref = dithered_case
    ours = bss_eval_v4(refs, ests, win=44100, hop=44100)
    assert_matches(ours, ref)
    assert ours["SDR"].shape == (3, 4) and np.isfinite(ours["SDR"]).all()
    np.testing.assert_allclose(sdr_v4(refs, ests), ref["SDR"], rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def raw_aac_case(stems):
    """3 s of two raw AAC stems: G is nearly singular (the real MUSDB18 situation)."""
    refs = np.ascontiguousarray(stems[:2, : 3 * 44100])
    ests = 0.9 * refs + 0.15 * refs[::-1] + 0.05 * np.tanh(3 * refs)
    return refs, ests, dict(zip(METRICS, museval.evaluate(refs, ests, win=44100, hop=44100)))


def test_raw_aac_stems_sdr_exact_sir_sar_within_museval_rounding(backend, raw_aac_case):
    """SDR needs no projection and ISR barely; museval's own SIR/SAR move by ~0.1 dB under
    1e-15 relative perturbations of G on such stems, so they are held to 0.5 dB."""
    refs, ests, ref = raw_aac_case
    ours = bss_eval_v4(refs, ests)
    assert_matches(ours, ref, names=("SDR", "ISR"))
    assert_matches(ours, ref, names=("SIR", "SAR"), tol=0.5)


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.slow
def test_compare_with_museval_synthetic_track_with_silent_second():
    sources, _ = synthetic_sources(3.0, seed=1, nsrc=2)
    assert not sources[0, 44100:88200].any()  # source 0 is silent over its second second
    result = compare_with_museval(3.0, seed=1, nsrc=2)
    for m in METRICS:
        assert result[f"{m}_nan_match"]
        assert result[f"{m}_max_frame_diff"] < TOL_DB
        assert result[f"{m}_max_median_diff"] < TOL_DB
    assert result["museval_s"] > 0 and result["fast_s"] > 0
    stages = result["fast_stages_s"]
    assert set(stages) == {"scan", "correlations", "solve", "frames"} and sum(stages.values()) <= result["fast_s"]
    assert len(result["fast_runs_s"]) == 3 and result["fast_s"] == sorted(result["fast_runs_s"])[1]


def coloured(rng: np.random.Generator, nsrc: int, nsamples: int, nchan: int) -> np.ndarray:
    """Independent low-passed noise per source and channel, (nsrc, nsamples, nchan)."""
    white = rng.standard_normal((nsrc, nsamples + 15, nchan))
    kernel = rng.uniform(0.2, 1.0, 16)
    return np.stack(
        [[np.convolve(white[j, :, c], kernel, "valid") for c in range(nchan)] for j in range(nsrc)]
    ).transpose(0, 2, 1)


def test_silent_frames_follow_museval(backend):
    """museval's rule: a frame where ANY reference or estimate has a zero channel sum at every
    sample is NaN for all sources and metrics, including a stereo source with left = -right."""
    rng = np.random.default_rng(3)
    win, L = 8000, 64
    refs = coloured(rng, 3, 4 * win + 1234, 2)
    ests = 0.9 * refs + 0.1 * refs[[1, 2, 0]] + 0.01 * rng.standard_normal(refs.shape)
    refs[1, win : 2 * win] = 0.0  # a reference silent over frame 1
    ests[2, 2 * win : 3 * win] = 0.0  # an estimate silent over frame 2
    refs[0, 3 * win : 4 * win, 1] = -refs[0, 3 * win : 4 * win, 0]  # frame 3: channel sum zero, not silent
    ref = museval_dict(refs, ests, window=win, hop=win, filters_len=L)
    ours = bss_eval_v4(refs, ests, win=win, hop=win, filters_len=L)
    assert_matches(ours, ref)
    assert np.isfinite(ours["SDR"][:, 0]).all() and np.isnan(ours["SDR"][:, 1:]).all()
    np.testing.assert_array_equal(np.isnan(sdr_v4(refs, ests, win=win, hop=win)), np.isnan(ref["SDR"]))


@pytest.mark.parametrize(
    "nsrc, nchan, nsamples, win, hop",
    [
        (2, 1, 50_000, 8_000, 8_000),  # frames tile the signal; an unscored tail of 2000 samples
        (3, 2, 40_000, 10_000, 6_000),  # overlapping frames
        (2, 2, 70_001, 7_000, 9_000),  # gaps between frames
        (2, 2, 12_345, 44_100, 44_100),  # window longer than the signal: one frame
        (1, 2, 20_000, 5_000, 5_000),  # a single source
    ],
)
def test_framings_match_museval(backend, nsrc, nchan, nsamples, win, hop):
    """Frame counts, frame positions and the whole-signal filters for other framings (short filters keep museval quick)."""
    rng = np.random.default_rng(nsamples)
    refs = coloured(rng, nsrc, nsamples, nchan)
    ests = 0.8 * refs + 0.2 * np.roll(refs, 1, axis=0) + 0.05 * rng.standard_normal(refs.shape)
    ref = museval_dict(refs, ests, window=win, hop=hop, filters_len=32)
    assert_matches(bss_eval_v4(refs, ests, win=win, hop=hop, filters_len=32), ref)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    "nsamples, win, hop, L",
    [
        (2_000, 36, 36, 8),  # FFT length 45 (odd) for frames and correlation blocks
        (50_000, 8_000, 8_000, 32),  # frames are the correlation blocks; an unscored tail
        (70_001, 7_000, 9_000, 33),  # gaps; 32k correlation blocks, the last one partial
        (40_000, 10_000, 6_000, 16),  # overlapping frames
        (12_345, 44_100, 44_100, 16),  # one frame, shorter than the window
    ],
)
def test_cpu_kernels_equal_torch_path(monkeypatch, threads, nsamples, win, hop, L):
    """The CPU path (strided FFTs, numba kernels, work split over threads) and the torch path
    (CUDA's) agree to rounding; museval's tolerance would hide a wrong FFT length or frame."""
    rng = np.random.default_rng(nsamples + L)
    refs = coloured(rng, 3, nsamples, 2)
    ests = 0.8 * refs + 0.2 * np.roll(refs, 1, axis=0) + 0.05 * rng.standard_normal(refs.shape)
    refs[1, 5 * win : 6 * win] = 0.0  # a NaN frame (when there are six)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for kernels in ("numba", "torch"):
            monkeypatch.setattr(metrics, "_CPU_KERNELS", kernels)
            out[kernels] = bss_eval_v4(refs, ests, win=win, hop=hop, filters_len=L)
            out[kernels]["sdr_v4"] = sdr_v4(refs, ests, win=win, hop=hop)
    finally:
        torch.set_num_threads(before)
    for m in (*METRICS, "sdr_v4"):
        a, b = out["torch"][m], out["numba"][m]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=m)
        np.testing.assert_allclose(b[~np.isnan(a)], a[~np.isnan(a)], rtol=0, atol=1e-9, err_msg=m)


def test_cpu_results_do_not_depend_on_thread_scheduling():
    """Threads pull work from a queue; every sum must still run in a fixed order (on an
    ill-conditioned G a rounding-level change moves SIR/SAR visibly)."""
    rng = np.random.default_rng(4)
    refs = coloured(rng, 3, 90_000, 2)
    ests = 0.8 * refs + 0.2 * np.roll(refs, 1, axis=0) + 0.05 * rng.standard_normal(refs.shape)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        runs = [bss_eval_v4(refs, ests, win=4000, hop=4000, filters_len=32) for _ in range(3)]
    finally:
        torch.set_num_threads(before)
    for m in METRICS:
        np.testing.assert_array_equal(runs[1][m], runs[0][m])
        np.testing.assert_array_equal(runs[2][m], runs[0][m])


def test_identical_stereo_channels_fall_back_like_museval(backend):
    """A reference with left == right makes G exactly singular: museval's LU solve fails and
    it takes least squares; so must we (a Cholesky that "succeeds" on rounding-level pivots
    gave ISR 60 dB away)."""
    rng = np.random.default_rng(1)
    refs = rng.standard_normal((2, 20_000, 2))
    refs[0, :, 1] = refs[0, :, 0]
    ests = 0.9 * refs + 0.1 * rng.standard_normal(refs.shape)
    ref = museval_dict(refs, ests, window=5000, hop=5000, filters_len=16)
    assert_matches(bss_eval_v4(refs, ests, win=5000, hop=5000, filters_len=16), ref)


def test_torch_float32_inputs_equal_numpy_float64(backend):
    rng = np.random.default_rng(5)
    refs = torch.from_numpy(coloured(rng, 2, 30_000, 2)).float()
    ests = (0.9 * refs + 0.1 * torch.randn(refs.shape, generator=torch.Generator().manual_seed(0))).float()
    ours = bss_eval_v4(refs, ests, win=10_000, hop=10_000, filters_len=32)
    again = bss_eval_v4(refs.double().numpy(), ests.double().numpy(), win=10_000, hop=10_000, filters_len=32)
    for m in METRICS:
        assert isinstance(ours[m], np.ndarray) and ours[m].dtype == np.float64
        np.testing.assert_allclose(ours[m], again[m], rtol=0, atol=1e-9)
    np.testing.assert_allclose(sdr_v4(refs, ests, win=10_000, hop=10_000), again["SDR"], rtol=0, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_match_cpu():
    rng = np.random.default_rng(6)
    refs = coloured(rng, 4, 3 * 44100, 2)
    ests = leaky_estimates(refs, seed=2)
    cpu = bss_eval_v4(refs, ests)
    gpu = bss_eval_v4(torch.from_numpy(refs).cuda(), torch.from_numpy(ests).cuda())
    for m in METRICS:
        np.testing.assert_allclose(gpu[m], cpu[m], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        sdr_v4(torch.from_numpy(refs).cuda(), torch.from_numpy(ests).cuda()), cpu["SDR"], atol=1e-9
    )


# ----------------------------------------------------------------------------- input handling


def test_padding_matches_museval_pad_or_truncate():
    rng = np.random.default_rng(7)
    refs = coloured(rng, 2, 20_000, 2)
    for length in (18_500, 23_000):
        ests = 0.9 * coloured(rng, 2, length, 2)[:, :length]
        padded_refs, padded_ests = museval.pad_or_truncate(refs, ests)
        expected = bss_eval_v4(padded_refs, padded_ests, win=5000, hop=5000, filters_len=16)
        ours = bss_eval_v4(refs, ests, win=5000, hop=5000, filters_len=16, padding=True)
        for m in METRICS:
            np.testing.assert_array_equal(ours[m], expected[m])


@pytest.mark.parametrize("fn", [bss_eval_v4, sdr_v4])
def test_shape_errors_name_the_shapes(fn):
    refs = np.ones((2, 1000, 2))
    with pytest.raises(ValueError, match=r"references shape \(2, 1000, 2\) and estimates shape \(3, 1000, 2\)"):
        fn(refs, np.ones((3, 1000, 2)))
    with pytest.raises(ValueError, match=r"\(2, 1000, 2\).*\(2, 900, 2\) differ in nsamples; pass padding=True"):
        fn(refs, np.ones((2, 900, 2)))
    with pytest.raises(ValueError, match=r"estimates must be shaped \(nsrc, nsamples, nchan\), got shape \(2, 1000\)"):
        fn(refs, np.ones((2, 1000)))
    with pytest.raises(ValueError, match=r"references is empty"):
        fn(np.ones((2, 0, 2)), np.ones((2, 0, 2)))


@pytest.mark.parametrize("fn", [bss_eval_v4, sdr_v4])
def test_value_errors(fn):
    refs, ests = np.ones((2, 1000, 2)), np.ones((2, 1000, 2))
    bad = ests.copy()
    bad[1, 10, 0] = np.nan
    with pytest.raises(ValueError, match="estimates contain NaN or infinite samples"):
        fn(refs, bad)
    bad[1, 10, 0] = np.inf
    with pytest.raises(ValueError, match="estimates contain NaN or infinite samples"):
        fn(refs, bad)
    for kw in ({"win": 0}, {"hop": -5}, {"win": 1.5}):
        with pytest.raises(ValueError, match="must be a positive number of samples"):
            fn(refs, ests, **kw)
    with pytest.raises(ValueError, match="on_silent must be 'raise' or 'nan'"):
        fn(refs, ests, on_silent="skip")


@pytest.mark.parametrize("fn", [bss_eval_v4, sdr_v4])
def test_silent_source_raises_like_museval_or_gives_nan(fn, backend):
    refs, ests = np.ones((3, 5000, 2)), np.ones((3, 5000, 2))
    refs[1] = 0.0
    with pytest.raises(ValueError, match=r"silent \(all-zero\) sources: reference 1; museval refuses"):
        fn(refs, ests, win=1000, hop=1000)
    with pytest.raises(ValueError, match="All the reference sources should be non-silent"):
        museval_metrics.validate(refs, ests)  # what museval does with the same input
    out = fn(refs, ests, win=1000, hop=1000, on_silent="nan")
    sdr = out["SDR"] if isinstance(out, dict) else out
    assert sdr.shape == (3, 5) and np.isnan(sdr).all()


# ----------------------------------------------------------------------------- aggregation


def test_track_scores_skip_nan_and_inf():
    sdr = np.array([[1.0, np.nan, 3.0, np.inf], [np.nan, np.nan, np.nan, np.nan], [-np.inf, 2.0, 4.0, 6.0]])
    scores = track_scores(sdr, ["vocals", "drums", "bass"])
    assert scores["vocals"] == 2.0 and math.isnan(scores["drums"]) and scores["bass"] == 4.0
    assert track_scores(torch.tensor([[1.0, 2.0, 4.0]]), ["vocals"]) == {"vocals": 2.0}
    with pytest.raises(ValueError, match=r"scores shaped \(3, 4\) do not match 2 targets"):
        track_scores(sdr, ["vocals", "drums"])


def test_median_over_tracks_and_average():
    tracks = [
        {"vocals": 1.0, "drums": 4.0},
        {"vocals": 3.0, "drums": math.nan},
        {"vocals": 2.0, "drums": 6.0},
    ]
    agg = median_over_tracks(tracks)
    assert agg == {"vocals": 2.0, "drums": 5.0, "avg": 3.5}
    with pytest.raises(ValueError, match="at least one track"):
        median_over_tracks([])
    with pytest.raises(ValueError, match=r"track 1 has targets \['bass'\], expected \['drums', 'vocals'\]"):
        median_over_tracks([tracks[0], {"bass": 1.0}])


def test_aggregation_matches_museval_stores():
    """Frames -> track (nanmedian, inf as NaN) -> median over tracks, as museval's TrackStore/EvalStore."""
    rng = np.random.default_rng(8)
    targets = ["vocals", "drums", "bass", "other"]
    store = museval.EvalStore(frames_agg="median", tracks_agg="median")
    ours = []
    for k in range(5):
        frames = {m: rng.normal(5.0, 3.0, (4, 9)) for m in METRICS}
        frames["SDR"][0, :3] = np.nan
        frames["SDR"][1, 4] = np.inf
        track = museval.TrackStore(track_name=f"track{k}", win=1, hop=1)
        for j, target in enumerate(targets):
            track.add_target(target, {m: frames[m][j].tolist() for m in METRICS})
        store.add_track(track)
        ours.append(track_scores(frames["SDR"], targets))
    theirs = store.agg_frames_tracks_scores()
    mine = median_over_tracks(ours)
    for target in targets:
        assert abs(mine[target] - theirs[(target, "SDR")]) < 1e-4  # museval stores 5 decimals
    assert mine["avg"] == pytest.approx(np.mean([mine[t] for t in targets]))


def test_torch_thread_setting_is_left_alone(backend):
    """A Ray worker pins torch to one thread; evaluating must not change that (numba's OpenMP
    layer used to reset the process-wide thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        refs = coloured(np.random.default_rng(9), 2, 20_000, 2)
        bss_eval_v4(refs, 0.9 * refs + 0.1 * refs[::-1], win=5000, hop=5000, filters_len=16)
        sdr_v4(refs, 0.9 * refs + 0.1 * refs[::-1], win=5000, hop=5000)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- singular systems


@pytest.fixture(scope="module")
def stems_pcm16() -> np.ndarray:
    """stempeg's excerpt decoded as musdb decodes it (16-bit PCM): (4, nsamples, 2) float64."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("stempeg needs the ffmpeg binary to decode its stems")
    import stempeg

    audio, _ = stempeg.read_stems(stempeg.example_stem_path(), ffmpeg_format="s16le")
    return audio[1:]


def museval_least_squares(monkeypatch, refs: np.ndarray, ests: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    """museval with its least-squares branch forced: np.linalg.solve raises, so museval takes
    np.linalg.lstsq(G, D). (museval 0.4.1 catches np.linalg.linalg.LinAlgError, a name numpy 2.4
    no longer has: the shim lets its except clause run.)"""
    with monkeypatch.context() as m:
        m.setattr(np.linalg, "linalg", np.linalg, raising=False)

        def refuse(*args, **kw):
            raise np.linalg.LinAlgError("forced: take the least-squares branch")

        m.setattr(np.linalg, "solve", refuse)
        return museval_dict(refs, ests, **kwargs)


def repeated_channels(stems: np.ndarray, nsamples: int, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A slice of the four real stems with the left channel repeated (mir_eval-style mono images;
    `noise` adds an independent right-channel part), and leaky estimates."""
    rng = np.random.default_rng(3)
    refs = np.repeat(stems[:, 44100 : 44100 + nsamples, :1], 2, axis=2)
    refs[..., 1] += noise * rng.standard_normal(refs.shape[:2])
    ests = 0.8 * refs + 0.15 * np.roll(refs, 1, axis=0) + 0.01 * rng.standard_normal(refs.shape)
    return refs, ests


def test_exactly_singular_gram_solved_as_museval_least_squares(backend, stems_pcm16, monkeypatch, caplog):
    """Channels repeated make G exactly singular (rank 128 of 256). The LU fallback "succeeded"
    there with a useless solution (SIR/SAR 51 dB away from museval); the rank-revealing solve
    gives museval's least-squares answer, and says that it took it."""
    refs, ests = repeated_channels(stems_pcm16, 1024)
    kwargs = dict(window=1024, hop=1024, filters_len=32)
    ref = museval_least_squares(monkeypatch, refs, ests, **kwargs)
    assert_matches(ref, museval_dict(refs, ests, **kwargs))  # museval's own LU agrees on this input
    with caplog.at_level("WARNING", logger="samsnet_search.metrics.bsseval"):
        ours = bss_eval_v4(refs, ests, win=1024, hop=1024, filters_len=32)
    assert_matches(ours, ref, tol=1e-6)
    assert "rank-deficient Gram matrix (rank 128 of 256)" in caplog.text


def test_near_singular_gram_keeps_the_direct_solve(backend, stems_pcm16, caplog):
    """A right channel 1e-5 away from the left: G is near-singular but of full rank; the
    Cholesky solve stands (no least-squares fallback) and equals museval's LU solve."""
    refs, ests = repeated_channels(stems_pcm16, 4096, noise=1e-5)
    with caplog.at_level("WARNING", logger="samsnet_search.metrics.bsseval"):
        ours = bss_eval_v4(refs, ests, win=2048, hop=2048, filters_len=32)
    assert "rank-deficient" not in caplog.text
    assert_matches(ours, museval_dict(refs, ests, window=2048, hop=2048, filters_len=32), tol=1e-4)


@pytest.mark.parametrize("rank", [60, 37])
def test_min_norm_solve_is_lstsq(rank):
    """On Gram systems of known rank: numpy lstsq's minimum-norm solution, and the rank."""
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((200, rank)) @ rng.standard_normal((rank, 60))  # 200 samples, 60 columns
    gram, rhs = x.T @ x, x.T @ rng.standard_normal((200, 3))
    solution, found = metrics.min_norm_solve(gram, rhs)
    assert found == rank
    expected = np.linalg.lstsq(gram, rhs)[0]
    np.testing.assert_allclose(solution, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
