"""Training segments and validation excerpts for the trainer and evaluator.

Reproducibility: every random choice for training example `i` of epoch `e` comes from a numpy
Generator seeded by (seed, e, i), and the shuffle order of epoch `e` from one seeded by (seed, e).
The sampler hands `(epoch, i)` keys to the workers, so a batch is the same with 0 or N DataLoader
workers (persistent or not), and a run resumed at an epoch boundary continues exactly as an
uninterrupted one would. Call `loader.dataset.set_epoch(epoch)` before iterating each epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import SAMPLE_RATE, DataConfig
from ..errors import DataError
from .augment import augment_stems, mixture_of
from .splits import Track

log = logging.getLogger(__name__)

# Separate spawn-key namespaces so the streams for items, shuffles and validation never overlap.
_ITEMS, _SHUFFLE, _VALID = 0, 1, 2


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """A Generator that depends only on (seed, *key); negative seeds are allowed."""
    return np.random.default_rng(np.random.SeedSequence(seed % 2**64, spawn_key=tuple(int(k) for k in key)))


def read_segment(track: Track, rows: slice | int, start: int, length: int) -> np.ndarray:
    """audio[rows, :, start:start+length] as a float32 copy, zero-padded at the end to `length`.

    Returns (R, C, length) for a slice of rows, (C, length) for one row.
    """
    seg = np.array(track.audio()[rows, :, start : start + length], dtype=np.float32)
    missing = length - seg.shape[-1]
    if missing > 0:  # a track shorter than the segment: pad, as open-unmix does, rather than fail
        seg = np.concatenate([seg, np.zeros(seg.shape[:-1] + (missing,), np.float32)], axis=-1)
    return seg


def random_start(rng: np.random.Generator, num_samples: int, length: int) -> int:
    return int(rng.integers(0, max(num_samples - length, 0) + 1))


class TrainSegments(Dataset):
    """Random training segments: item i -> (mixture (C, S), targets (4, C, S)), float32 tensors.

    An epoch has `samples_per_track` items per track; item i draws from track i // samples_per_track,
    or, with `augment.remix`, each stem from its own random track at its own random offset.
    """

    def __init__(self, tracks: list[Track], cfg: DataConfig, seed: int) -> None:
        if not tracks:
            raise DataError("no training tracks: the training split is empty")
        self.tracks = list(tracks)
        self.cfg = cfg
        self.seed = int(seed)
        self.segment = cfg.segment_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.cfg.samples_per_track * len(self.tracks)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} training segments")
        mixture, targets = self.example(epoch, i)
        return torch.from_numpy(mixture), torch.from_numpy(targets)

    def example(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item i of `epoch` as numpy: mixture (C, S), targets (4, C, S)."""
        rng = seeded_rng(self.seed, _ITEMS, epoch, i)
        aug = self.cfg.augment
        if aug is not None and aug.remix:
            stems = np.stack([self._remixed_stem(s, rng) for s in range(4)])
        else:
            track = self.tracks[i // self.cfg.samples_per_track]
            segment = read_segment(track, slice(0, 5), random_start(rng, track.num_samples, self.segment), self.segment)
            if aug is None:  # the track's own mixture (for MUSDB18 AAC it is not exactly the stems' sum)
                return segment[0], segment[1:]
            stems = segment[1:]
        stems = augment_stems(stems, aug, rng)
        return mixture_of(stems), stems

    def _remixed_stem(self, s: int, rng: np.random.Generator) -> np.ndarray:
        """Target s (0..3) from a random track at a random offset. Returns (C, S)."""
        track = self.tracks[int(rng.integers(len(self.tracks)))]
        return read_segment(track, 1 + s, random_start(rng, track.num_samples, self.segment), self.segment)


class EpochSampler(Sampler):
    """Yields (epoch, i) keys in a shuffled order seeded by (seed, epoch); epoch = dataset.epoch."""

    def __init__(self, dataset: TrainSegments, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.dataset.epoch  # read in the main process, so workers need not know the epoch
        order = seeded_rng(self.seed, _SHUFFLE, epoch).permutation(len(self.dataset))
        return iter([(epoch, int(i)) for i in order])


def _worker_init(_: int) -> None:
    # Workers only slice memmaps and do light numpy: one torch thread each avoids oversubscribing cores.
    torch.set_num_threads(1)


def make_train_loader(tracks: list[Track], cfg: DataConfig, batch_size: int, seed: int, pin_memory: bool) -> DataLoader:
    """Shuffled, seeded batches of (mixture (B, C, S), targets (B, 4, C, S)).

    Call `loader.dataset.set_epoch(epoch)` before each epoch: the shuffle and every segment depend
    on (seed, epoch), not on the number of workers or on how often the loader was iterated before.
    """
    dataset = TrainSegments(tracks, cfg, seed)
    workers = cfg.num_workers or 0  # None: the trainer did not choose (its default is by device)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(dataset, seed),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        drop_last=False,
        worker_init_fn=_worker_init if workers > 0 else None,
    )


@dataclass
class Excerpt:
    """A validation excerpt: mixture (C, N) and targets (4, C, N), read-only views of the cache."""

    name: str
    mixture: np.ndarray
    targets: np.ndarray
    start: int = 0  # first sample of the excerpt in the track


def centered_excerpt(track: Track, seconds: float | None) -> Excerpt:
    """`seconds` from the middle of the track, or the whole track when None or longer than it."""
    n = track.num_samples
    length = n if seconds is None else min(n, int(round(seconds * SAMPLE_RATE)))
    start = (n - length) // 2
    audio = track.audio()
    return Excerpt(track.name, audio[0, :, start : start + length], audio[1:5, :, start : start + length], start)


def validation_excerpts(tracks: list[Track], cfg: DataConfig, epoch: int = 0, seed: int = 0) -> list[Excerpt]:
    """The validation set of an epoch.

    protocol "fixed": one centered excerpt of `valid_seconds` per track, identical for every epoch,
    trial and run with the same config (the default: trials are compared on the same data).
    protocol "paper" (Li et al. 2020): one random track per epoch, chosen by (seed, epoch), full length.
    """
    if not tracks:
        raise DataError("no validation tracks: the validation split is empty")
    if cfg.valid_protocol == "paper":
        track = tracks[int(seeded_rng(seed, _VALID, epoch).integers(len(tracks)))]
        return [centered_excerpt(track, None)]
    return [centered_excerpt(track, cfg.valid_seconds) for track in tracks]
