"""Audio files for `separate`: any format ffmpeg reads, streamed in blocks; stems written as they come.

Reading goes through the two decoders the training data uses (`data/readers.py`): soundfile
for what libsndfile reads at 44.1 kHz (wav, flac, ogg), ffmpeg for the rest (mp3, m4a, AAC
`.stem.mp4`, other rates, resampled to 44.1 kHz by ffmpeg). Unlike the training readers, which
decode a whole track (all five streams) into the cache, this streams one stream in blocks, so
memory does not grow with the song. Of a MUSDB18 `.stem.mp4` the mixture stream is read (the
stream id comes from the `musdb` configuration, as for training); of any other file its first
audio stream. Mono is put on both channels.

Errors are `DataError`s naming the file: missing, a folder, unreadable, no audio stream, a
channel count the model does not take, NaN samples, ffmpeg needed but not on PATH.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from ..config import SAMPLE_RATE
from ..errors import DataError
from .readers import STEMS_PCM_FORMAT, STEMS_SUFFIX, stem_stream_ids

log = logging.getLogger(__name__)

Decoder = Literal["soundfile", "ffmpeg", "whole-file"]
BITS = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}  # --bits -> soundfile subtype


@dataclass(frozen=True)
class AudioInput:
    """A probed input file: how it is decoded and roughly how long it is at 44.1 kHz."""

    path: Path
    channels: int  # in the file
    rate: int  # in the file
    frames: int | None  # samples at 44.1 kHz; from the header (ffmpeg: from the stated duration)
    decoder: Decoder
    stream: int = 0  # audio stream ordinal (ffmpeg)


def _ffmpeg_tools() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def open_audio(path: str | Path, channels: int = 2) -> AudioInput:
    """Probe `path` (headers only) and choose its decoder; raises DataError with the reason."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an audio file (wav, flac, mp3, .stem.mp4, ...)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        info = None
    if info is not None and info.samplerate == SAMPLE_RATE:
        found = AudioInput(path, info.channels, info.samplerate, info.frames, "soundfile")
    elif _ffmpeg_tools():
        found = _probe_ffmpeg(path)
    elif info is not None:  # soundfile reads it but only scipy can resample: the whole file at once
        log.warning("%s: %d Hz and no ffmpeg on PATH: resampling the whole file in memory", path, info.samplerate)
        frames = int(round(info.frames * SAMPLE_RATE / info.samplerate))
        found = AudioInput(path, info.channels, info.samplerate, frames, "whole-file")
    else:
        raise DataError(
            f"{path}: cannot read audio: not a format soundfile reads, and decoding other formats "
            "(mp3, mp4, ...) needs ffmpeg, which is not on PATH (e.g. apt install ffmpeg)"
        )
    if found.channels not in (1, channels):
        raise DataError(f"{path}: has {found.channels} channels, the model takes {channels} (or mono)")
    return found


def _probe_ffmpeg(path: Path) -> AudioInput:
    import stempeg  # lazy: pulls in ffmpeg-python; the same probe the training reader uses

    try:
        info = stempeg.Info(str(path))
    except Exception as e:  # ffmpeg.Error and JSON errors all mean: not readable
        detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()
        raise DataError(
            f"{path}: cannot read audio ({(detail[-1] if detail else str(e)).removeprefix(f'{path}: ')})"
        ) from None
    if not info.nb_audio_streams:
        raise DataError(f"{path}: no audio stream")
    stream = stem_stream_ids()[0] if path.name.endswith(STEMS_SUFFIX) and info.nb_audio_streams > 1 else 0
    rate = info.sample_rate(stream)
    duration = info.audio_streams[stream].get("duration") or info.info.get("format", {}).get("duration")
    frames = int(round(float(duration) * SAMPLE_RATE)) if duration else None
    return AudioInput(path, info.channels(stream), rate, frames, "ffmpeg", stream)


def _checked(block: np.ndarray, inp: AudioInput, offset: int, channels: int) -> np.ndarray:
    """(n, C_file) float32 -> (channels, n), NaN-checked; mono is repeated on every channel."""
    bad = ~np.isfinite(block)
    if bad.any():
        first = offset + int(np.argwhere(bad)[0][0])
        raise DataError(f"{inp.path}: NaN or infinite samples (first at sample {first}, {first / SAMPLE_RATE:.2f} s)")
    if block.shape[1] == 1 and channels > 1:
        block = np.repeat(block, channels, axis=1)
    return np.ascontiguousarray(block.T)


def read_blocks(inp: AudioInput, block: int, channels: int = 2) -> Iterator[np.ndarray]:
    """The file as consecutive float32 blocks (channels, <= block) at 44.1 kHz."""
    decode = {"soundfile": _soundfile_blocks, "ffmpeg": _ffmpeg_blocks, "whole-file": _whole_file_blocks}[inp.decoder]
    offset = 0
    for raw in decode(inp, max(1, block)):
        yield _checked(raw, inp, offset, channels)
        offset += raw.shape[0]


def _soundfile_blocks(inp: AudioInput, block: int) -> Iterator[np.ndarray]:
    try:
        with sf.SoundFile(str(inp.path)) as f:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)  # (n, C)
                if not len(data):
                    return
                yield data
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{inp.path}: cannot read audio ({e})") from None


def _whole_file_blocks(inp: AudioInput, block: int) -> Iterator[np.ndarray]:
    try:
        audio, rate = sf.read(str(inp.path), dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{inp.path}: cannot read audio ({e})") from None
    g = gcd(rate, SAMPLE_RATE)
    audio = resample_poly(audio, SAMPLE_RATE // g, rate // g, axis=0).astype(np.float32)
    for start in range(0, len(audio), block):
        yield audio[start : start + block]


def _ffmpeg_blocks(inp: AudioInput, block: int) -> Iterator[np.ndarray]:
    """ffmpeg decodes (and resamples) one stream on a pipe; read `block` frames at a time.

    A MUSDB18 stems file is decoded to 16-bit PCM / 32768, as the training reader and musdb do
    (the samples then equal those the model was trained and scored on); anything else to float32.
    """
    pcm = STEMS_PCM_FORMAT if inp.path.name.endswith(STEMS_SUFFIX) else "f32le"
    dtype, scale = ("<i2", 1 / 32768) if pcm == "s16le" else ("<f4", 1.0)
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        str(inp.path),
        "-map",
        f"0:a:{inp.stream}",
        "-f",
        pcm,
        "-acodec",
        f"pcm_{pcm}",
        "-ar",
        str(SAMPLE_RATE),
        "pipe:1",
    ]
    width = np.dtype(dtype).itemsize * inp.channels  # bytes per frame
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: ffmpeg never blocks on a full stderr
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors)
        try:
            while True:
                data = proc.stdout.read(block * width)
                if not data:
                    break
                usable = len(data) // width * width
                if usable:
                    frames = np.frombuffer(data[:usable], dtype=dtype).reshape(-1, inp.channels)
                    yield frames if scale == 1.0 else (frames * np.float32(scale)).astype(np.float32)
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # the consumer stopped early (an error downstream)
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if rc != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise DataError(f"{inp.path}: ffmpeg cannot decode it ({lines[-1] if lines else f'exit code {rc}'})")


def read_audio(path: str | Path, channels: int = 2) -> np.ndarray:
    """The whole file as float32 (channels, N) at 44.1 kHz (for short inputs; `separate` streams)."""
    inp = open_audio(path, channels)
    blocks = list(read_blocks(inp, 1 << 20, channels))
    if not blocks:
        raise DataError(f"{path}: empty audio (0 samples)")
    return np.concatenate(blocks, axis=-1)


class StemWriter:
    """`<out_dir>/<stem>.wav` for each stem, written block by block as `bits` (16, 24 or 32f).

    Files are written under a `.part` name and renamed on success, so an interrupted run never
    leaves a truncated file under the final name. Integer output is clipped to [-1, 1] (counted).
    """

    def __init__(self, out_dir: str | Path, stems: list[str], channels: int, bits: str = "32f"):
        if bits not in BITS:
            raise DataError(f"--bits {bits}: expected one of {', '.join(BITS)}")
        self.out_dir = Path(out_dir)
        self.stems, self.channels, self.bits = list(stems), channels, bits
        self.paths = {s: self.out_dir / f"{s}.wav" for s in self.stems}
        self.files: dict[str, sf.SoundFile] = {}
        self.clipped = 0

    def __enter__(self) -> "StemWriter":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stem, path in self.paths.items():
            self.files[stem] = sf.SoundFile(
                str(path) + ".part", "w", SAMPLE_RATE, self.channels, subtype=BITS[self.bits], format="WAV"
            )
        return self

    def write(self, stems: dict[str, np.ndarray]) -> None:
        """stems: name -> (C, n) float."""
        for stem, f in self.files.items():
            audio = stems[stem]
            if self.bits != "32f":
                self.clipped += int(np.count_nonzero(np.abs(audio) > 1.0))
                audio = np.clip(audio, -1.0, 1.0)
            f.write(np.ascontiguousarray(audio.T))

    def __exit__(self, exc_type, exc, tb) -> None:
        for f in self.files.values():
            f.close()
        for path in self.paths.values():
            part = Path(str(path) + ".part")
            if exc_type is None:
                part.replace(path)
            else:
                part.unlink(missing_ok=True)
        if self.clipped:
            log.warning(
                "%d samples were clipped to [-1, 1] for %s-bit output (use --bits 32f to keep them)",
                self.clipped,
                self.bits,
            )
