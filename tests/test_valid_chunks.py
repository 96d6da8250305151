"""Validation runs in chunks on every protocol: the network never sees more than a chunk and
its context, and the scores equal the whole-excerpt computation up to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samsnet_search.config import SAMPLE_RATE, ExperimentConfig
from samsnet_search.engine import checkpoint
from samsnet_search.engine.loss import magnitude_loss
from samsnet_search.engine.train import Trainer
from samsnet_search.engine.validation import chunked_estimates, chunked_loss, loss_windows
from samsnet_search.metrics.bsseval import sdr_v4

MODEL = {"n_fft": 256, "hop_length": 128, "channels": 4, "heads": 2, "depth": 2, "slices": 3}
SEGMENT = 0.25  # 87 frames: slices of 29 frames, a receptive field of 87
CHUNK_SECONDS = 0.5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ExperimentConfig.model_validate({"model": MODEL, "data": {"segment_seconds": SEGMENT}})
    return checkpoint.build_model(cfg.resolved_model()).eval()


def _spy_frames(model) -> list[int]:
    """Frames of every input the network's forward receives."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-1]))
    return seen


def _longest_chunk_input(model, chunk_seconds: float) -> int:
    """A chunk of whole slices and its context on both sides, in frames (samples: one more frame)."""
    hop = model.spectrogram.hop_length
    return int(chunk_seconds * SAMPLE_RATE / hop) + 2 * (model.context_frames() + 2 * model.slice_frames) + 1


def test_chunked_loss_and_estimates_equal_the_whole_excerpt():
    samples = 4 * SAMPLE_RATE + 77  # not a whole number of hops
    model = _model()
    rng = np.random.default_rng(1)
    targets = (0.1 * rng.standard_normal((4, 2, samples))).astype(np.float32)
    mixture = targets.sum(0)
    with torch.no_grad():
        whole_loss = magnitude_loss(model, torch.from_numpy(mixture)[None], torch.from_numpy(targets)[None], False)
        whole_est = model.separate(torch.from_numpy(mixture)[None])[0].numpy()
    seen = _spy_frames(model)
    loss = chunked_loss(model, mixture, targets, torch.device("cpu"), False, CHUNK_SECONDS)
    estimates = chunked_estimates(model, mixture, torch.device("cpu"), False, CHUNK_SECONDS)
    assert loss == pytest.approx(whole_loss.item(), rel=1e-5)
    np.testing.assert_allclose(estimates, whole_est, atol=1e-5)
    frames = 1 + samples // model.spectrogram.hop_length
    assert len(seen) > 2 and max(seen) <= _longest_chunk_input(model, CHUNK_SECONDS) and max(seen) < frames, seen
    refs, est = targets.astype(np.float64).transpose(0, 2, 1), estimates.astype(np.float64).transpose(0, 2, 1)
    np.testing.assert_allclose(
        sdr_v4(refs, est), sdr_v4(refs, whole_est.astype(np.float64).transpose(0, 2, 1)), atol=1e-4
    )


def test_loss_windows_tile_the_frames_and_start_on_slices():
    model = _model()
    samples = 5 * SAMPLE_RATE + 3
    kept = []
    for lo, hi, keep in loss_windows(model, samples, CHUNK_SECONDS):
        assert lo % (model.slice_frames * model.spectrogram.hop_length) == 0
        first = lo // model.spectrogram.hop_length
        kept.extend(range(first + keep.start, first + keep.stop))
        assert keep.stop <= 1 + (hi - lo) // model.spectrogram.hop_length
    assert kept == list(range(1 + samples // model.spectrogram.hop_length))


def _whole_track_experiment(root, chunk_seconds: float) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": MODEL,
            "data": {
                "root": str(root),
                "segment_seconds": SEGMENT,
                "valid_protocol": "paper",
                "valid_chunk_seconds": chunk_seconds,
            },
            "train": {"batch_size": 2, "epochs": 1, "valid_sdr_every": 1, "seed": 3, "threads": 2},
        }
    )


def test_whole_track_validation_goes_through_the_chunks(synth_root, tmp_path):
    chunked = Trainer(_whole_track_experiment(synth_root, CHUNK_SECONDS), tmp_path / "chunked")
    whole = Trainer(_whole_track_experiment(synth_root, 600.0), tmp_path / "whole")  # one chunk: as before
    whole.model.load_state_dict(chunked.model.state_dict())
    seen = _spy_frames(chunked.model)
    loss, sdr, _ = chunked.validate(with_sdr=True)
    ref_loss, ref_sdr, _ = whole.validate(with_sdr=True)
    assert max(seen) <= _longest_chunk_input(chunked.model, CHUNK_SECONDS), seen
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert sdr == pytest.approx(ref_sdr, abs=1e-3)
