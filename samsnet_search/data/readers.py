"""Read one track's audio from MUSDB18-HQ wav folders or MUSDB18 `.stem.mp4` files, with checks.

Every reader returns float32 audio of shape (5, C, N) ordered [mixture, vocals, drums, bass,
other] (`STEM_NAMES`), and raises `DataError` naming the file and the problem for: a missing stem,
a wrong sample rate, a channel count that differs between stems or from the expected one, unequal
lengths, an unreadable file, empty audio, and NaN / infinite samples.

The stream order of MUSDB18 stem files and the official validation tracks come from the `musdb`
package's own configuration (`musdb/configs/mus.yaml`), not from a copy kept here.

MUSDB18 stems are decoded as `musdb` decodes them (`stempeg.read_stems(..., ffmpeg_format="s16le")`:
ffmpeg's AAC decoder to 16-bit PCM, then / 32768), so that the audio, and the BSSEval scores on
it, are those of museval's published numbers. Decoded straight to float, the AAC's empty band
near Nyquist leaves the references' Gram matrix nearly singular and ISR/SIR/SAR unstable
(docs/metrics.md); float decoding would also keep peaks above full scale that 16-bit PCM clips.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from ..config import SAMPLE_RATE, TARGETS
from ..errors import DataError

log = logging.getLogger(__name__)

STEM_NAMES: tuple[str, ...] = ("mixture",) + TARGETS  # axis 0 of every decoded array
EXPECTED_CHANNELS = 2  # MUSDB18 is stereo
STEMS_SUFFIX = ".stem.mp4"
STEMS_PCM_FORMAT = "s16le"  # ffmpeg's output format for .stem.mp4, as musdb asks stempeg for it


@functools.lru_cache(maxsize=1)
def musdb_config() -> dict:
    """The `musdb` package's mus.yaml (validation tracks, stem stream ids), read without importing musdb."""
    spec = importlib.util.find_spec("musdb")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the musdb package is not installed; it provides the official MUSDB18 split (pip install musdb)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "configs" / "mus.yaml"
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read the musdb configuration: {e}") from None


def official_validation_tracks() -> list[str]:
    """The 14 official MUSDB18 validation tracks (they live in train/)."""
    return list(musdb_config()["validation_tracks"])


def stem_stream_ids() -> list[int]:
    """Stream index in a .stem.mp4 for each of STEM_NAMES (musdb: 0 mixture, 1 drums, 2 bass, 3 other, 4 vocals)."""
    ids = musdb_config()["stem_ids"]
    return [int(ids[name]) for name in STEM_NAMES]


def _check_rate(path: Path | str, rate: float) -> None:
    if int(round(rate)) != SAMPLE_RATE:
        raise DataError(f"{path}: sample rate {rate:g} Hz, expected {SAMPLE_RATE} Hz (resample the file)")


def _check_channels(path: Path | str, channels: int, ref_path: Path | str, ref_channels: int, expected: int) -> None:
    if channels != ref_channels:
        raise DataError(
            f"{path}: {channels} channel(s) but {ref_path} has {ref_channels}: all stems of a track need the same channels"
        )
    if channels != expected:
        what = "mono (1 channel)" if channels == 1 else f"{channels} channels"
        raise DataError(f"{path}: {what}, but {expected} channels (stereo) are expected")


def _check_lengths(paths: list[Path | str], lengths: list[int]) -> None:
    for path, n in zip(paths, lengths):
        if n == 0:
            raise DataError(f"{path}: empty audio (0 samples)")
        if n != lengths[0]:
            raise DataError(
                f"{path}: {n} samples but {paths[0]} has {lengths[0]}: stems of a track must have equal lengths"
            )


def check_finite(audio: np.ndarray, names: list[Path | str]) -> None:
    """Raise DataError naming the stem whose samples are NaN or infinite. audio: (5, C, N)."""
    for stem, name in zip(audio, names):
        bad = ~np.isfinite(stem)
        if bad.any():
            first = int(np.argwhere(bad)[0][-1])
            raise DataError(f"{name}: NaN or infinite samples (first at sample {first}, {first / SAMPLE_RATE:.2f} s)")


@dataclass(frozen=True)
class WavFolderSource:
    """A MUSDB18-HQ track: a folder with mixture.wav, vocals.wav, drums.wav, bass.wav, other.wav."""

    folder: Path
    channels: int = EXPECTED_CHANNELS
    decoding = "wav files as stored (soundfile, float32)"

    @property
    def files(self) -> list[Path]:
        return [self.folder / f"{name}.wav" for name in STEM_NAMES]

    def probe(self) -> int:
        """Check the headers (presence, rate, channels, lengths) without decoding; returns the length N."""
        missing = [p for p in self.files if not p.is_file()]
        if missing:
            need = ", ".join(p.name for p in self.files)
            raise DataError(f"{missing[0]}: missing stem (a MUSDB18-HQ track folder needs {need})")
        infos = []
        for path in self.files:
            try:
                infos.append(sf.info(str(path)))
            except (sf.LibsndfileError, RuntimeError, OSError) as e:
                raise DataError(f"{path}: unreadable audio file ({e})") from None
        for path, info in zip(self.files, infos):
            _check_rate(path, info.samplerate)
            _check_channels(path, info.channels, self.files[0], infos[0].channels, self.channels)
        _check_lengths(list(self.files), [info.frames for info in infos])
        return infos[0].frames

    def decode(self) -> np.ndarray:
        """All five files as float32 (5, C, N), checked."""
        self.probe()
        stems = []
        for path in self.files:
            try:
                data, _ = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
            except (sf.LibsndfileError, RuntimeError, OSError) as e:
                raise DataError(f"{path}: unreadable audio file ({e})") from None
            stems.append(data.T)
        _check_lengths(list(self.files), [s.shape[-1] for s in stems])  # headers can lie about truncated files
        audio = np.stack(stems)
        check_finite(audio, list(self.files))
        return audio


@dataclass(frozen=True)
class StemsFileSource:
    """A MUSDB18 track: one `<name>.stem.mp4` with 5 AAC streams, decoded with stempeg (ffmpeg)."""

    path: Path
    channels: int = EXPECTED_CHANNELS
    decoding = "AAC by ffmpeg to 16-bit PCM / 32768, as musdb decodes MUSDB18 (museval's published numbers)"

    @property
    def files(self) -> list[Path]:
        return [self.path]

    def _info(self):
        for tool in ("ffmpeg", "ffprobe"):
            if shutil.which(tool) is None:
                raise DataError(
                    f"{self.path}: decoding MUSDB18 .stem.mp4 needs {tool}, which is not on PATH "
                    "(install ffmpeg, e.g. apt install ffmpeg, or use MUSDB18-HQ wav folders)"
                )
        import stempeg  # lazy: pulls in ffmpeg-python (0.4 s), needed for .stem.mp4 only

        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        try:
            return stempeg.Info(str(self.path))
        except Exception as e:  # ffmpeg.Error, JSON errors, ...: all mean the file cannot be read
            detail = getattr(e, "stderr", b"") or b""
            detail = detail.decode(errors="replace").strip().splitlines()[-1] if detail else str(e)
            detail = detail.removeprefix(f"{self.path}: ")  # ffprobe repeats the path
            raise DataError(f"{self.path}: unreadable stems file ({detail})") from None

    def probe(self):
        """Check streams, rates and channels with ffprobe; returns the stempeg.Info.

        Unlike the wav reader it returns no length: the decoded AAC length is known only after decoding.
        """
        info = self._info()
        ids = stem_stream_ids()
        if info.nb_audio_streams <= max(ids):
            raise DataError(
                f"{self.path}: {info.nb_audio_streams} audio stream(s), a MUSDB18 .stem.mp4 needs "
                f"{len(STEM_NAMES)} (mixture, drums, bass, other, vocals)"
            )
        for name, k in zip(STEM_NAMES, ids):
            where = f"{self.path} [stream {k}: {name}]"
            _check_rate(where, info.sample_rate(k))
            _check_channels(
                where, info.channels(k), f"{self.path} [stream {ids[0]}: mixture]", info.channels(ids[0]), self.channels
            )
        return info

    def decode(self) -> np.ndarray:
        """The five streams as float32 (5, C, N) in STEM_NAMES order, decoded as musdb does, checked."""
        import stempeg  # lazy: stempeg (0.4 s), for .stem.mp4 only

        info = self.probe()
        stems, names = [], []
        for name, k in zip(STEM_NAMES, stem_stream_ids()):
            names.append(f"{self.path} [stream {k}: {name}]")
            try:
                data, _ = stempeg.read_stems(
                    str(self.path),
                    stem_id=k,
                    dtype=np.float32,
                    info=info,
                    always_3d=True,
                    ffmpeg_format=STEMS_PCM_FORMAT,
                )
            except Exception as e:
                raise DataError(f"{names[-1]}: cannot decode ({e})") from None
            stems.append(data[0].T)  # (1, N, C) -> (C, N)
        _check_lengths(names, [s.shape[-1] for s in stems])
        audio = np.stack(stems).astype(np.float32, copy=False)
        check_finite(audio, names)
        return audio


Source = WavFolderSource | StemsFileSource
