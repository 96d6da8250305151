"""Training segments (seeded, worker-count independent, resumable) and validation excerpts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from samsnet_search.config import SAMPLE_RATE, AugmentConfig, DataConfig
from samsnet_search.data.dataset import (
    TrainSegments,
    make_train_loader,
    random_start,
    seeded_rng,
    validation_excerpts,
)
from samsnet_search.data.splits import load_splits
from samsnet_search.errors import DataError


@pytest.fixture(scope="module")
def splits(synth_root):
    return load_splits(DataConfig(root=synth_root))


def cfg_for(synth_root, **kw) -> DataConfig:
    return DataConfig(root=synth_root, **{"segment_seconds": 0.5, **kw})


def epoch_batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.dataset.set_epoch(epoch)
    return [(m.clone(), t.clone()) for m, t in loader]


def assert_same(a, b):
    assert len(a) == len(b)
    for (ma, ta), (mb, tb) in zip(a, b):
        torch.testing.assert_close(ma, mb, rtol=0, atol=0)
        torch.testing.assert_close(ta, tb, rtol=0, atol=0)


def test_length_and_shapes(splits, synth_root):
    cfg = cfg_for(synth_root, samples_per_track=3)
    loader = make_train_loader(splits.train, cfg, batch_size=4, seed=0, pin_memory=False)
    assert len(loader.dataset) == 3 * len(splits.train) == 6
    batches = epoch_batches(loader, 0)
    assert [m.shape[0] for m, _ in batches] == [4, 2]  # drop_last=False keeps the remainder
    mixture, targets = batches[0]
    S = cfg.segment_samples
    assert mixture.shape == (4, 2, S) and targets.shape == (4, 4, 2, S)
    assert mixture.dtype == targets.dtype == torch.float32
    # Augmented examples: the mixture is the sum of the (augmented) targets.
    torch.testing.assert_close(mixture, targets.sum(1), rtol=1e-5, atol=1e-6)


def test_same_batches_with_0_or_2_workers(splits, synth_root):
    results = []
    for workers in (0, 2):
        cfg = cfg_for(synth_root, num_workers=workers, samples_per_track=2)
        loader = make_train_loader(splits.train, cfg, batch_size=3, seed=11, pin_memory=False)
        results.append([epoch_batches(loader, e) for e in (0, 1)])
    for epoch in (0, 1):
        assert_same(results[0][epoch], results[1][epoch])
    a, b = results[0]
    assert not torch.equal(a[0][0], b[0][0])  # a new epoch draws new segments


def test_resume_at_epoch_boundary_matches_uninterrupted_run(splits, synth_root):
    cfg = cfg_for(synth_root, samples_per_track=2)
    uninterrupted = make_train_loader(splits.train, cfg, batch_size=2, seed=5, pin_memory=False)
    for epoch in range(3):
        last = epoch_batches(uninterrupted, epoch)
    resumed = make_train_loader(splits.train, cfg, batch_size=2, seed=5, pin_memory=False)
    assert_same(epoch_batches(resumed, 2), last)
    other_seed = make_train_loader(splits.train, cfg, batch_size=2, seed=6, pin_memory=False)
    assert not torch.equal(epoch_batches(other_seed, 2)[0][0], last[0][0])


def test_without_augmentation_segments_come_from_the_track(splits, synth_root):
    cfg = cfg_for(synth_root, augment=None, samples_per_track=2)
    ds = TrainSegments(splits.train, cfg, seed=3)
    ds.set_epoch(4)
    S = cfg.segment_samples
    for i in range(len(ds)):
        mixture, targets = ds[i]
        track = splits.train[i // 2]
        start = random_start(seeded_rng(3, 0, 4, i), track.num_samples, S)
        audio = track.audio()
        np.testing.assert_array_equal(mixture.numpy(), audio[0, :, start : start + S])
        np.testing.assert_array_equal(targets.numpy(), audio[1:, :, start : start + S])


@dataclass
class CodedTrack:
    """A stand-in Track whose samples encode where they come from: track id, row, channel, index."""

    tid: int
    num_samples: int

    def audio(self) -> np.ndarray:
        n = np.arange(self.num_samples, dtype=np.float32)
        rows = [[self.tid * 100_000 + r * 20_000 + c * 0.5 + n for c in range(2)] for r in range(5)]
        return np.array(rows, dtype=np.float32)  # (5, 2, N), exact in float32 (< 2**24)


def test_remix_takes_each_stem_from_its_own_track_and_offset():
    tracks = [CodedTrack(tid, 10_000 + 1000 * tid) for tid in range(6)]
    cfg = DataConfig(
        segment_seconds=2000 / SAMPLE_RATE,
        samples_per_track=10,
        augment=AugmentConfig(gain_min=1.0, gain_max=1.0, channel_swap=False, remix=True),
    )
    ds = TrainSegments(tracks, cfg, seed=0)
    origins = []
    for i in range(len(ds)):
        mixture, targets = ds[i]
        torch.testing.assert_close(mixture, targets.sum(0))
        for s in range(4):
            v = float(targets[s, 0, 0])
            tid, row, start = int(v // 100_000), int(v % 100_000 // 20_000), int(v % 20_000)
            assert row == 1 + s  # target s comes from row 1 + s ([mixture, vocals, drums, bass, other])
            expected = torch.as_tensor(tracks[tid].audio()[row, :, start : start + 2000])
            torch.testing.assert_close(targets[s], expected, rtol=0, atol=0)
            origins.append((i, s, tid, start))
    per_item = {}
    for i, _, tid, start in origins:
        per_item.setdefault(i, set()).add((tid, start))
    assert all(len(v) > 1 for v in per_item.values())  # stems of one example come from different places
    assert len({tid for *_, tid, _ in origins}) == len(tracks)  # every track gets used
    assert len({start for *_, start in origins}) > 100  # offsets are random


def test_short_tracks_are_zero_padded(splits, synth_root):
    cfg = cfg_for(synth_root, segment_seconds=10.0, augment=None)  # tracks are 8 s
    mixture, targets = TrainSegments(splits.train, cfg, seed=0)[0]
    n = splits.train[0].num_samples
    assert mixture.shape[-1] == targets.shape[-1] == 10 * SAMPLE_RATE
    assert torch.count_nonzero(mixture[:, n:]) == 0 and torch.count_nonzero(targets[..., n:]) == 0
    np.testing.assert_array_equal(mixture[:, :n].numpy(), splits.train[0].audio()[0])


def test_bad_indices_and_empty_split(splits, synth_root):
    ds = TrainSegments(splits.train, cfg_for(synth_root), seed=0)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(DataError, match="training split is empty"):
        TrainSegments([], cfg_for(synth_root), seed=0)
    with pytest.raises(DataError, match="validation split is empty"):
        validation_excerpts([], cfg_for(synth_root))


def test_fixed_validation_excerpts(splits, synth_root):
    cfg = cfg_for(synth_root, valid_seconds=3.0)
    first = validation_excerpts(splits.valid, cfg, epoch=0, seed=0)
    again = validation_excerpts(splits.valid, cfg, epoch=7, seed=123)  # fixed: epoch and seed do not matter
    assert [e.name for e in first] == [t.name for t in splits.valid]
    L = 3 * SAMPLE_RATE
    for ex, ex2, track in zip(first, again, splits.valid):
        assert ex.mixture.shape == (2, L) and ex.targets.shape == (4, 2, L)
        assert ex.start == (track.num_samples - L) // 2  # centered
        np.testing.assert_array_equal(ex.mixture, track.audio()[0, :, ex.start : ex.start + L])
        np.testing.assert_array_equal(ex.targets, track.audio()[1:, :, ex.start : ex.start + L])
        np.testing.assert_array_equal(ex.mixture, ex2.mixture)
    for seconds in (None, 60.0):  # full tracks
        full = validation_excerpts(splits.valid, cfg_for(synth_root, valid_seconds=seconds))
        assert [e.mixture.shape[-1] for e in full] == [t.num_samples for t in splits.valid]
        assert all(e.start == 0 for e in full)


def test_paper_protocol_one_random_full_track_per_epoch(splits, synth_root):
    cfg = cfg_for(synth_root, valid_protocol="paper")
    chosen = []
    for epoch in range(20):
        excerpts = validation_excerpts(splits.valid, cfg, epoch=epoch, seed=1)
        assert len(excerpts) == 1
        ex = excerpts[0]
        track = next(t for t in splits.valid if t.name == ex.name)
        assert ex.mixture.shape[-1] == track.num_samples
        assert validation_excerpts(splits.valid, cfg, epoch=epoch, seed=1)[0].name == ex.name
        chosen.append(ex.name)
    assert set(chosen) == {t.name for t in splits.valid}
