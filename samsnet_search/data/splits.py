"""Find the tracks of a MUSDB18 / MUSDB18-HQ / synthetic dataset and split them train / valid / test.

Layouts (`DataConfig.format`, or detected from `root/train` with "auto"):

    hq:     root/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav    (MUSDB18-HQ, synthetic)
    stems:  root/{train,test}/<track>.stem.mp4                                  (MUSDB18)

Split: validation tracks are taken out of train/ (as in MUSDB18); test/ is the test set. The
validation names come from `DataConfig.valid_tracks`, else from `root/samsnet-synth.json` (written by
the synthetic generator), else the official 14 MUSDB18 validation tracks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .cache import AudioCache
from .readers import STEMS_SUFFIX, Source, StemsFileSource, WavFolderSource, official_validation_tracks
from .synth import MANIFEST, read_sections

log = logging.getLogger(__name__)

KIND_STEMS = "MUSDB18"
KIND_HQ = "MUSDB18-HQ"
KIND_SYNTH = "synthetic (MUSDB18-HQ format)"
SUBSETS = ("train", "test")
CACHE_FOLDER = ".samsnet-cache"


@dataclass(eq=False)
class Track:
    """One track. `audio()` is (5, C, N) float32 [mixture, vocals, drums, bass, other], decoded once
    into the cache and memory-mapped (read-only) afterwards."""

    name: str
    subset: str  # "train" | "test" (validation tracks are train/ tracks)
    source: Source
    cache: AudioCache = field(repr=False)
    _num_samples: int | None = field(default=None, init=False, repr=False)
    _audio: np.ndarray | None = field(default=None, init=False, repr=False)

    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = self.cache.load(self.subset, self.name, self.source.files, self.source.decode)
            self._num_samples = int(self._audio.shape[-1])
        return self._audio

    @property
    def num_samples(self) -> int:
        """Length N in samples (from the wav headers for HQ; MUSDB18 stems are decoded to know it)."""
        if self._num_samples is None:
            self.audio()
        return self._num_samples

    @property
    def path(self) -> Path:
        """The track's folder (HQ) or .stem.mp4 file (MUSDB18)."""
        return self.source.folder if isinstance(self.source, WavFolderSource) else self.source.path

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.source.files)

    def sections(self) -> dict | None:
        """The synthetic generator's sections.json for this track, or None (real data)."""
        return read_sections(self.path) if isinstance(self.source, WavFolderSource) else None

    def __getstate__(self) -> dict:
        # A memmap would be pickled as a full copy of the audio: workers reopen the cache instead.
        state = dict(self.__dict__)
        state["_audio"] = None
        return state


@dataclass
class Splits:
    train: list[Track]
    valid: list[Track]
    test: list[Track]
    kind: str  # KIND_STEMS, KIND_HQ or KIND_SYNTH
    fingerprint: str  # short hash of kind + track names and sizes per split
    root: Path

    def all_tracks(self) -> list[Track]:
        return self.train + self.valid + self.test


def detect_format(root: Path, fmt: str = "auto") -> str:
    """ "hq" or "stems" for `root`, checking that train/ and test/ exist."""
    for subset in SUBSETS:
        _require_folder(root / subset)
    return folder_format(root / "train", fmt)


def _require_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder (a MUSDB18 / MUSDB18-HQ root holds train/ and test/; "
            "`samsnet-search data synth DIR` makes a synthetic one)"
        )


def folder_format(folder: Path, fmt: str = "auto") -> str:
    """ "hq" or "stems" for the tracks in one subset folder (`fmt` unless it is "auto")."""
    _require_folder(folder)
    if fmt != "auto":
        return fmt
    has_stems = any(p.name.endswith(STEMS_SUFFIX) for p in folder.iterdir())
    has_folders = any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    if has_stems and has_folders:
        raise DataError(f"{folder}: holds both .stem.mp4 files and track folders; set data.format to 'stems' or 'hq'")
    if not (has_stems or has_folders):
        raise DataError(
            f"{folder}: no tracks found (expected <track>/ folders of wav files or <track>{STEMS_SUFFIX} files)"
        )
    return "stems" if has_stems else "hq"


def dataset_kind(root: Path, fmt: str) -> str:
    """KIND_STEMS, KIND_SYNTH (the generator's manifest is there) or KIND_HQ."""
    if fmt == "stems":
        return KIND_STEMS
    return KIND_SYNTH if (root / MANIFEST).is_file() else KIND_HQ


def find_tracks(root: Path, subset: str, fmt: str, cache: AudioCache) -> list[Track]:
    """All tracks of one subset folder, sorted by name."""
    folder = root / subset
    if fmt == "stems":
        files = sorted(p for p in folder.iterdir() if p.name.endswith(STEMS_SUFFIX))
        tracks = [Track(p.name[: -len(STEMS_SUFFIX)], subset, StemsFileSource(p), cache) for p in files]
    else:
        dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        tracks = [Track(p.name, subset, WavFolderSource(p), cache) for p in dirs]
    if not tracks:
        what = f"<track>{STEMS_SUFFIX} files" if fmt == "stems" else "<track>/ folders with mixture.wav and 4 stems"
        raise DataError(f"{folder}: no tracks found (format {fmt!r} expects {what})")
    return tracks


def check_tracks(tracks: list[Track]) -> None:
    """Header checks before any training starts; tracks already in the cache were checked when decoded."""
    for track in tracks:
        cached = track.cache.peek(track.subset, track.name, track.source.files)
        if cached is not None:
            track._audio, track._num_samples = cached, int(cached.shape[-1])
            continue
        frames = track.source.probe()
        if isinstance(frames, int):
            track._num_samples = frames


def _synth_manifest_valid(root: Path) -> list[str] | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())["valid_tracks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: unreadable synthetic-dataset manifest ({type(e).__name__}: {e})") from None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DataError(f"{path}: valid_tracks must be a list of track names, got {names!r}")
    return names


def validation_names(cfg: DataConfig, root: Path) -> tuple[list[str], str]:
    """The validation track names and where they came from (for error messages)."""
    if cfg.valid_tracks is not None:
        return list(cfg.valid_tracks), "data.valid_tracks"
    names = _synth_manifest_valid(root)
    if names is not None:
        return names, str(root / MANIFEST)
    return official_validation_tracks(), "the official MUSDB18 validation list (set data.valid_tracks for other data)"


def fingerprint(kind: str, splits: dict[str, list[Track]]) -> str:
    """12 hex digits over the kind and each split's (name, size in bytes): same data, same print."""
    payload = {"kind": kind, **{k: [(t.name, t.size_bytes) for t in v] for k, v in splits.items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def pick_valid(train_folder: list[Track], cfg: DataConfig, root: Path) -> list[Track]:
    """The validation tracks (by name, see `validation_names`) among the tracks of train/, sorted."""
    names, origin = validation_names(cfg, root)
    by_name = {t.name: t for t in train_folder}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        some = ", ".join(repr(t) for t in list(by_name)[:5]) + (", ..." if len(by_name) > 5 else "")
        raise DataError(
            f"{origin}: validation track {unknown[0]!r} is not in {root / 'train'} ({len(by_name)} tracks there: {some})"
        )
    if not names:
        raise DataError(f"{origin}: no validation tracks given; validation needs at least one train/ track")
    return sorted((by_name[n] for n in set(names)), key=lambda t: t.name)


def split_train_valid(train_folder: list[Track], cfg: DataConfig, root: Path) -> tuple[list[Track], list[Track]]:
    valid = pick_valid(train_folder, cfg, root)
    chosen = {t.name for t in valid}
    train = [t for t in train_folder if t.name not in chosen]
    if not train:
        _, origin = validation_names(cfg, root)
        raise DataError(f"{root / 'train'}: no training tracks left after taking out the validation tracks ({origin})")
    return train[: cfg.max_train_tracks], valid[: cfg.max_valid_tracks]


def load_splits(cfg: DataConfig) -> Splits:
    """Tracks of `cfg.resolved_root()` split into train / valid / test, headers checked, audio lazy."""
    root = cfg.resolved_root()
    fmt = detect_format(root, cfg.format)
    cache = AudioCache(cfg.cache_dir or root / CACHE_FOLDER)
    train, valid = split_train_valid(find_tracks(root, "train", fmt, cache), cfg, root)
    test = find_tracks(root, "test", fmt, cache)
    check_tracks(train + valid + test)
    kind = dataset_kind(root, fmt)
    fp = fingerprint(kind, {"train": train, "valid": valid, "test": test})
    log.info(
        "%s at %s: %d train, %d valid, %d test tracks (fingerprint %s)",
        kind,
        root,
        len(train),
        len(valid),
        len(test),
        fp,
    )
    return Splits(train=train, valid=valid, test=test, kind=kind, fingerprint=fp, root=root)


def load_subset(cfg: DataConfig, subset: str) -> tuple[list[Track], str]:
    """Only the tracks of one subset, headers checked, audio lazy; and the dataset's kind.

    What evaluation reads (open-unmix's evaluate does the same): "test" needs test/ alone (train/
    may be missing or partial), "valid" needs train/ with the validation tracks in it, "train" is
    the training split.
    """
    if subset not in ("train", "valid", "test"):
        raise DataError(f"subset {subset!r}: expected train, valid or test")
    root = cfg.resolved_root()
    folder = "test" if subset == "test" else "train"
    fmt = folder_format(root / folder, cfg.format)
    cache = AudioCache(cfg.cache_dir or root / CACHE_FOLDER)
    tracks = find_tracks(root, folder, fmt, cache)
    if subset == "valid":
        tracks = pick_valid(tracks, cfg, root)[: cfg.max_valid_tracks]
    elif subset == "train":
        tracks = split_train_valid(tracks, cfg, root)[0]
    check_tracks(tracks)
    return tracks, dataset_kind(root, fmt)


def prepare(tracks: list[Track]) -> int:
    """Decode every track into the cache now (e.g. once before a study); returns the total samples."""
    for track in tracks:
        track.audio()
    return sum(track.num_samples for track in tracks)
