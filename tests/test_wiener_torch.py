"""The torch Wiener filter against its reference, sigsep's `norbert` (the numpy filter it replaced).

`norbert_wiener` is the call the post-filter made before it ran on the device: norbert's `wiener`
(soft-mask initialisation, then EM) on the same windows, in complex128 on the CPU. The torch filter
works in complex128 on every device (`wiener.WORK_DTYPE`), so it matches to float64 rounding;
complex64 inputs, the separator's float32 STFT, come back in complex64, within float32 rounding.

Why not complex64 inside: norbert derives its diagonal loading from the working dtype's epsilon,
and float32's is large enough to drop quiet bins. Run in complex64 (norbert's or this filter), the
IRM oracle's SDR on the synthetic track moved by up to about a dB per target and the stems no
longer summed to the mixture as they do in complex128; the SDR test below would catch that change.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from samsnet_search.config import DataConfig
from samsnet_search.data import load_splits
from samsnet_search.engine import wiener as wiener_module
from samsnet_search.engine.evaluate import evaluate_tracks, oracle_estimator
from samsnet_search.engine.wiener import PostFilter, wiener

with warnings.catch_warnings():
    # norbert 0.2.1 imports gaussian_filter1d from scipy.ndimage.filters (deprecated namespace).
    warnings.simplefilter("ignore", DeprecationWarning)
    import norbert

FLOAT64_REL_TOL = 1e-12  # of the largest output magnitude; measured below 3e-15
FLOAT32_REL_TOL = 1e-6  # complex64 in and out: the final cast's rounding
# How far the stems' sum may miss the mixture: norbert's loading is sqrt(eps), and norbert itself
# misses by as much as the torch filter (measured 3e-8 on `random_mixture`).
SUM_REL_TOL = 1e-6


def norbert_wiener(
    v: torch.Tensor,
    x: torch.Tensor,
    iterations: int,
    window_frames: int,
    start: str = "softmask",
    first_frame: int = 0,
) -> torch.Tensor:
    """v (S, C, F, T), x (C, F, T) -> (S, C, F, T) complex128: norbert on each window, as the post-filter called it
    (`start` "magnitudes": norbert's `use_softmask=False`; windows fixed to the song, x starting at `first_frame`)."""
    out = []
    for edge in range(-(first_frame % window_frames), x.shape[-1], window_frames):
        window = slice(max(0, edge), edge + window_frames)
        v_np = v[..., window].permute(3, 2, 1, 0).numpy().astype(np.float64)  # norbert: (T, F, C, S)
        x_np = x[..., window].permute(2, 1, 0).numpy().astype(np.complex128)  # (T, F, C)
        out.append(
            torch.from_numpy(norbert.wiener(v_np, x_np, iterations, use_softmask=start == "softmask")).permute(
                3, 2, 1, 0
            )
        )
    return torch.cat(out, -1)


def random_mixture(channels: int = 2, bins: int = 33, frames: int = 70, seed: int = 0):
    """A complex mixture (C, F, T) and magnitudes (S=4, C, F, T) below it, in float64; loud enough
    (|x| above 10) that norbert scales it for the EM."""
    g = torch.Generator().manual_seed(seed)
    x = torch.complex(*(torch.randn(channels, bins, frames, generator=g, dtype=torch.float64) for _ in range(2)))
    x = x * 30
    v = torch.rand(4, channels, bins, frames, generator=g, dtype=torch.float64) * x.abs()
    return v, x


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of the reference."""
    return ((got.to(want.dtype) - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("iterations", [1, 2])
def test_float64_equals_norbert_on_stereo_windows(iterations):
    v, x = random_mixture()  # 70 frames in windows of 30: two full windows and a short one
    got = wiener(v, x, iterations, window_frames=30)
    want = norbert_wiener(v, x, iterations, window_frames=30)
    assert got.dtype == torch.complex128 and got.shape == (4, 2, 33, 70)
    assert relative_error(got, want) < FLOAT64_REL_TOL


@pytest.mark.parametrize("channels", [1, 3])
def test_float64_equals_norbert_for_mono_and_more_channels(channels):
    """norbert's other inverses: 1 / (Cxx + eps) for one channel, a pseudo-inverse beyond two."""
    v, x = random_mixture(channels=channels, frames=40)
    got = wiener(v, x, 2, window_frames=40)
    assert relative_error(got, norbert_wiener(v, x, 2, window_frames=40)) < FLOAT64_REL_TOL


def test_no_iterations_is_the_soft_mask():
    v, x = random_mixture(frames=20)
    assert relative_error(wiener(v, x, 0), norbert_wiener(v, x, 0, window_frames=300)) < FLOAT64_REL_TOL


@pytest.mark.parametrize("iterations", [0, 1, 2])
def test_magnitudes_start_equals_norbert_without_softmask(iterations):
    """open-unmix's default start: the masked magnitudes with the mixture's phase (norbert's
    `use_softmask=False`), then the same EM; a zero mixture bin keeps norbert's phase (angle 0)."""
    v, x = random_mixture()
    x[0, 3, 5] = 0
    got = wiener(v, x, iterations, window_frames=30, start="magnitudes")
    want = norbert_wiener(v, x, iterations, window_frames=30, start="magnitudes")
    assert relative_error(got, want) < FLOAT64_REL_TOL
    assert relative_error(got, wiener(v, x, iterations, window_frames=30)) > 1e-3  # not the soft-mask start


def test_windows_are_fixed_to_the_song():
    """A spectrogram that starts at the song's frame 50 is cut into the song's windows (frames 50-59
    end the song's window [30, 60)): every frame of a whole window in it is filtered as in the song."""
    v, x = random_mixture(frames=120)
    whole = wiener(v, x, 2, window_frames=30)
    part = wiener(v[..., 50:], x[..., 50:], 2, window_frames=30, first_frame=50)
    assert relative_error(part, norbert_wiener(v[..., 50:], x[..., 50:], 2, 30, first_frame=50)) < FLOAT64_REL_TOL
    assert relative_error(part[..., 10:], whole[..., 60:]) < FLOAT64_REL_TOL  # the windows [60, 90), [90, 120)
    assert relative_error(part[..., :10], whole[..., 50:60]) > 1e-3  # the song's window [30, 60), cut


def test_unknown_start_is_refused():
    v, x = random_mixture(frames=20)
    with pytest.raises(ValueError, match="wiener start must be one of softmask, magnitudes"):
        wiener(v, x, 1, start="phase")
    with pytest.raises(ValueError, match="got 'phase'"):
        PostFilter(wiener=1, start="phase")


def test_complex64_input_is_filtered_in_complex128():
    """The separator's float32 STFT: filtered in complex128 as before, returned in complex64."""
    v, x = random_mixture()
    v32, x64 = v.float(), x.to(torch.complex64)
    got = wiener(v32, x64, 2, window_frames=30)
    assert got.dtype == torch.complex64
    assert relative_error(got, norbert_wiener(v32.double(), x64.to(torch.complex128), 2, 30)) < FLOAT32_REL_TOL


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_stems_sum_to_the_mixture(dtype):
    """The Wiener gains sum to Cxx (Cxx + loading)^-1: the identity up to the diagonal loading."""
    v, x = random_mixture()
    y = wiener(v, x.to(dtype), 2, window_frames=30)
    assert relative_error(y.sum(0), x) < SUM_REL_TOL


def test_the_filter_makes_no_host_copy(monkeypatch):
    """On the meta device every value read (.item(), .cpu(), .numpy()) fails: the filter reads none.
    On the CPU the same calls are patched to fail, so a numpy detour would show there too."""
    x = torch.empty(2, 33, 70, dtype=torch.complex64, device="meta")  # a float32 STFT, as on a GPU
    y = wiener(torch.empty(4, 2, 33, 70, device="meta"), x, 2, window_frames=30)
    assert y.shape == (4, 2, 33, 70) and y.dtype == torch.complex64 and y.device.type == "meta"

    def refuse(*args, **kwargs):
        raise AssertionError("the Wiener filter copied a tensor to the host")

    for name in ("cpu", "numpy", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    v, x = random_mixture(frames=20)
    wiener(v, x, 1)


def test_oracle_sdr_with_the_torch_filter_equals_norbert(synth_root, monkeypatch):
    """BSSEval SDR of the IRM oracle through the filter, on a synthetic test track: the torch filter
    scores what norbert scored, per target."""
    track = load_splits(DataConfig(root=synth_root)).test[:1]
    post = PostFilter(wiener=1)  # what `selection.wiener` scores by default

    def sdr() -> dict[str, float]:
        estimator = oracle_estimator("irm1", 1024, 256, post=post)
        report = evaluate_tracks(estimator, track, name="irm1", backend="fast", data_kind="synthetic", subset="test")
        return report.summary  # median SDR per target and their average

    torch_sdr = sdr()
    monkeypatch.setattr(wiener_module, "wiener", norbert_wiener)
    norbert_sdr = sdr()
    assert torch_sdr.keys() == norbert_sdr.keys()
    for target, value in torch_sdr.items():
        assert value == pytest.approx(norbert_sdr[target], abs=1e-3), target
