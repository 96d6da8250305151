"""Post-filters: with the Wiener filter (or the residual "other") the stems add up to the mixture.

The paper's independent sigmoid masks need not sum to one; a freshly initialised model shows it
plainly (every mask near 0.5, so the four stems sum to about twice the mixture). Checked on the
synthetic data and on stempeg's real MUSDB18 excerpt.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from samsnet_search.cli import main
from samsnet_search.config import SAMPLE_RATE, TARGETS, DataConfig, ModelConfig
from samsnet_search.data import load_splits
from samsnet_search.data.audio_io import read_audio
from samsnet_search.engine import checkpoint
from samsnet_search.engine.evaluate import evaluate_tracks, oracle_estimator
from samsnet_search.engine.separate import separate
from samsnet_search.engine.wiener import PostFilter, sum_snr, wiener

PLAIN, WIENER1, RESIDUAL = PostFilter(), PostFilter(wiener=1), PostFilter(residual=True)


def tiny_config(slices: int = 2) -> ModelConfig:
    return ModelConfig(n_fft=512, hop_length=256, channels=4, heads=1, depth=1, slices=slices).resolved(SAMPLE_RATE)


def tiny_model(seed: int = 0, slices: int = 2) -> torch.nn.Module:
    """A freshly initialised small Sams-Net (separation needs no training to show the property)."""
    torch.manual_seed(seed)
    return checkpoint.build_model(tiny_config(slices)).eval()


def save_tiny_checkpoint(folder, seed: int = 0, slices: int = 2):
    """tiny_model() in the checkpoint format, as `separate` and `evaluate` load it."""
    checkpoint.save(
        folder / checkpoint.BEST,
        {
            "experiment": {"data": DataConfig().model_dump(mode="json")},
            "model_config": tiny_config(slices).model_dump(mode="json"),
            "model": tiny_model(seed, slices).state_dict(),
            "epoch": 0,
            "metrics": {},
        },
    )
    return folder


def error_lines(err: str) -> list[str]:
    """The CLI's error lines (stderr also names the command's log file first)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def stacked(stems: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([stems[t] for t in TARGETS])


@pytest.fixture(scope="module")
def synth_mixture(synth_root):
    return np.array(load_splits(DataConfig(root=synth_root)).test[0].audio()[0][:, : 4 * SAMPLE_RATE])


@pytest.fixture(scope="module")
def real_mixture(stem_example):
    """The first 4 s of stream 0 (the mixture) of the real MUSDB18 excerpt."""
    return read_audio(stem_example)[:, : 4 * SAMPLE_RATE]


@pytest.mark.parametrize("which", ["synth_mixture", "real_mixture"])
def test_wiener_and_residual_stems_sum_to_the_mixture(which, request):
    mixture = request.getfixturevalue(which)
    model = tiny_model()
    snr = {
        post.label: sum_snr(stacked(separate(model, mixture, chunk_seconds=2.0, post=post)), mixture)
        for post in (PLAIN, WIENER1, RESIDUAL)
    }
    assert snr[PLAIN.label] < 10.0, snr  # independent sigmoid masks: measured about -3 dB here
    assert snr[WIENER1.label] > 60.0, snr  # the Wiener estimates' STFTs sum to the mixture's
    assert snr[RESIDUAL.label] > 80.0, snr  # exact up to float32 rounding


@pytest.mark.parametrize("start", ["softmask", "magnitudes"])
def test_chunks_do_not_change_the_wiener_output(synth_mixture, start):
    """1 s chunks give the whole-song stems (one 30 s chunk here): the filter's windows are fixed to
    the song and each chunk carries a window of context, so every window that reaches into a chunk is
    whole (issue 25: with windows cut at each chunk's start the two differed by 17-23 dB SNR on
    the whole 8 s track)."""
    model, post = tiny_model(), PostFilter(wiener=1, start=start)
    whole = stacked(separate(model, synth_mixture, chunk_seconds=30.0, post=post))
    chunked = stacked(separate(model, synth_mixture, chunk_seconds=1.0, post=post))
    for target, a, b in zip(TARGETS, chunked, whole):
        assert sum_snr(a[None], b) > 100.0, target  # measured about 325 dB: float rounding


def test_no_wiener_iterations_is_the_papers_plain_masks(synth_mixture):
    model = tiny_model()
    with torch.no_grad():
        direct = model.separate(torch.from_numpy(synth_mixture)[None])[0].numpy()
    np.testing.assert_allclose(stacked(separate(model, synth_mixture, post=PLAIN)), direct, atol=1e-6)


def test_wiener_keeps_a_soft_mask_that_already_sums_to_one():
    """Ratio masks that sum to one and point the same way as the mixture's spatial image pass through:
    the filter refines, it does not invent."""
    rng = np.random.default_rng(0)
    x = torch.complex(torch.randn(2, 33, 40), torch.randn(2, 33, 40))
    share = torch.from_numpy(rng.dirichlet(np.ones(4), size=(33, 40))).permute(2, 0, 1).float()  # (S, F, T), sums to 1
    v = share[:, None] * x.abs()[None]  # (S, C, F, T)
    y = wiener(v, x, iterations=1)
    assert y.shape == (4, 2, 33, 40)
    torch.testing.assert_close(y.sum(0), x, atol=1e-4, rtol=1e-4)


def test_post_filter_rejects_negative_iterations_and_labels_itself():
    with pytest.raises(ValueError, match="wiener iterations must be >= 0"):
        PostFilter(wiener=-1)
    assert PLAIN.label == "plain masks (paper)"
    assert PostFilter(wiener=2, residual=True).label == "Wiener filter (2 EM iterations) + other = mixture - rest"
    assert PostFilter(wiener=1, start="magnitudes").label == "Wiener filter (1 EM iteration, from the magnitudes)"


def test_oracle_with_wiener_on_synthetic_track(synth_root):
    """The IRM oracle through the filter still separates (and its stems now sum to the mixture)."""
    track = load_splits(DataConfig(root=synth_root)).test[:1]
    scores = {
        post.label: evaluate_tracks(
            oracle_estimator("irm1", 1024, 256, post=post),
            track,
            name="irm1",
            backend="fast",
            data_kind="synthetic",
            subset="test",
        ).summary["avg"]
        for post in (PLAIN, WIENER1)
    }
    assert scores[WIENER1.label] > 6.0 and scores[PLAIN.label] > 6.0, scores
    est = oracle_estimator("irm1", 1024, 256, post=WIENER1)(track[0])
    assert sum_snr(est, np.asarray(track[0].audio()[0])) > 60.0


def test_evaluate_command_labels_the_post_filter(synth_root, tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    assert (
        main(
            [
                "evaluate",
                str(ckpt),
                "--data",
                str(synth_root),
                "--backend",
                "fast",
                "--wiener",
                "1",
                "--out",
                str(tmp_path / "w"),
                "--max-tracks",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["estimator"].endswith("Wiener filter (1 EM iteration)")
    assert "Wiener filter (1 EM iteration)" in capsys.readouterr().out
    assert main(["evaluate", "--oracle", "irm1", "--data", str(synth_root), "--wiener", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--wiener -1: EM iterations must be >= 0" in err and len(error_lines(err)) == 1
    assert main(["evaluate", "--oracle", "irm1", "--data", str(synth_root), "--wiener-start", "phase"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == ["error: --wiener-start phase: must be one of softmask, magnitudes"]
