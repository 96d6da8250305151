"""Decoded-audio cache: each track decoded once into a float32 `.npy`, then memory-mapped.

A cached file holds (5, C, N) float32 ordered [mixture, vocals, drums, bass, other]. Its name
carries a key over the source files' names, sizes and modification times (and the cache format
version), so an edited or replaced source is decoded again instead of served stale. Writes go to a
temporary file that is renamed into place, under an exclusive lock per entry, so concurrent trials
and DataLoader workers never read half a file and decode each track once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from ..files import exclusive, write_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: MUSDB18 stems decoded to 16-bit PCM as musdb does (1 decoded to float)
N_STEMS = 5


def source_key(files: list[Path]) -> str:
    """Short hash over (size, mtime) of the source files; changes when any file changes."""
    h = hashlib.sha256(f"samsnet-cache-v{CACHE_VERSION}".encode())
    for path in files:
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def location_key(files: list[Path]) -> str:
    """Short hash of where the sources are, so two datasets can share one cache folder."""
    return hashlib.sha256(str(files[0].resolve().parent).encode()).hexdigest()[:8]


def _safe(name: str) -> str:
    """A file-name-safe form of a track name (MUSDB names hold spaces, '&', apostrophes)."""
    return re.sub(r"[^\w.,&'() -]", "_", name).strip() or "track"


def _decode(decode: Callable[[], np.ndarray]) -> np.ndarray:
    """Run a reader; an OSError from it is about the source, not the cache, and says so."""
    try:
        return decode()
    except OSError as e:
        raise DataError(f"{e.filename or 'source audio'}: unreadable ({e.strerror or e})") from None


class AudioCache:
    """A folder of decoded tracks: `<folder>/<subset>/<track>.<location>.<key>.npy`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path_for(self, subset: str, name: str, files: list[Path]) -> Path:
        """Where the decoded audio of these source files lives (the name changes with the sources)."""
        return self.folder / subset / f"{_safe(name)}.{location_key(files)}.{source_key(files)}.npy"

    def _open(self, path: Path) -> np.ndarray | None:
        """The memory-mapped array at `path`, or None when absent or unusable (then it is rebuilt)."""
        if not path.is_file():
            return None
        try:
            audio = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable cache entry, decoding again (%s)", path, e)
            return None
        if audio.dtype != np.float32 or audio.ndim != 3 or audio.shape[0] != N_STEMS:
            log.warning("%s: cache entry has shape %s %s, decoding again", path, audio.shape, audio.dtype)
            return None
        return audio

    def peek(self, subset: str, name: str, files: list[Path]) -> np.ndarray | None:
        """The cached audio if this exact source is cached already, else None (never decodes)."""
        if not all(p.is_file() for p in files):  # the reader will say which one is missing
            return None
        return self._open(self.path_for(subset, name, files))

    def load(self, subset: str, name: str, files: list[Path], decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The track's audio (5, C, N) float32, read-only memmap; `decode()` runs only on a miss."""
        audio = self.peek(subset, name, files)
        if audio is not None:
            return audio
        if not all(p.is_file() for p in files):
            return _decode(decode)  # the reader raises a DataError naming the missing file
        path = self.path_for(subset, name, files)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = path.with_suffix(".lock")
            with exclusive(lock):
                audio = self._open(path)  # another process may have written it while we waited
                if audio is None:
                    self._write(path, _decode(decode))
                    self._remove_stale(path)
                    audio = self._open(path)
                    # Later readers find the .npy and never lock; waiters hold the old inode: safe to drop.
                    lock.unlink(missing_ok=True)
        except OSError as e:  # not writable, not a folder, disk full, ...
            raise DataError(
                f"{self.folder}: cannot write the decoded-audio cache ({e.strerror or e}: {e.filename}); "
                "set data.cache_dir to a writable folder"
            ) from None
        if audio is None:
            raise DataError(f"{path}: the cache entry just written cannot be read back")
        return audio

    def _write(self, path: Path, audio: np.ndarray) -> None:
        """Atomic write: a unique temporary file in the same folder, then rename."""
        if audio.dtype != np.float32 or audio.ndim != 3 or audio.shape[0] != N_STEMS:
            raise ValueError(f"cache entries are float32 (5, C, N), got {audio.dtype} {audio.shape}")
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(audio))
        write_atomic(path, buffer.getvalue())
        log.info("cached %s (%.1f MB)", path, audio.nbytes / 1e6)

    def _remove_stale(self, path: Path) -> None:
        """Delete older entries of the same track and location (other source keys).

        Readers still holding a memmap of a deleted entry keep reading it (POSIX unlink semantics).
        """
        prefix = path.name.rsplit(".", 2)[0]  # "<track>.<location>"
        for old in path.parent.glob("*.npy"):
            if old != path and old.name.rsplit(".", 2)[0] == prefix:
                old.unlink(missing_ok=True)
                old.with_suffix(".lock").unlink(missing_ok=True)
                log.info("removed stale cache entry %s", old)
