"""Inference: separate a song into the four targets with a trained model, in chunks of bounded memory.

`MaskSeparator` turns a mask model (the Python `SamsNet`, or its export loaded by
`delivery.export_folder.load_exported`: both give `model(mag) -> masks`, `spectrogram`,
`slice_frames` and `context_frames()`) into a chunk separator for `apply.apply_chunked`: STFT, masks, the post-filter (`wiener.PostFilter`: the paper's plain
masks, a multichannel Wiener filter, the residual "other"), ISTFT. `separate` works on an array,
`separate_file` streams a file of any format ffmpeg reads (`audio_io`) to one wav per stem.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..config import SAMPLE_RATE, TARGETS
from ..data.audio_io import StemWriter, open_audio, read_audio, read_blocks
from ..errors import DataError
from .apply import ChunkPlan, apply_chunked, blocks_of
from .device import configure_cuda
from .wiener import PostFilter, mixture_residual

log = logging.getLogger(__name__)

__all__ = ["MaskSeparator", "separate", "separate_file", "read_audio", "check_arguments", "parse_stems"]

FileProgress = Callable[[int, "int | None"], None]  # (samples done, total samples if known)
MODEL_SUFFIXES = (".pt", ".pt2", ".pth")
MODEL_FOLDER_MARKS = ("*.pt", "*.pt2", "export.json")  # what a checkpoint or export folder holds
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".mp4", ".aac", ".aif", ".aiff", ".opus")


def chunk_plan(model: nn.Module, chunk_seconds: float, filter_frames: int = 0) -> ChunkPlan:
    """Chunks that start on slice boundaries, with context for the network's receptive field
    plus the STFT frames a chunk edge changes on each side of it (so plain masks are exact), plus
    `filter_frames` (a post-filter's: the Wiener filter's window, so the windows that reach into
    the chunk are whole and exact, and its output is the whole song's too)."""
    n_fft, hop = int(model.spectrogram.n_fft), int(model.spectrogram.hop_length)
    edge = math.ceil(n_fft / (2 * hop))  # frames whose window crosses a chunk edge
    context = (int(model.context_frames()) + 2 * edge + 1 + filter_frames) * hop
    return ChunkPlan.make(int(chunk_seconds * SAMPLE_RATE), context, int(model.slice_frames) * hop)


class MaskSeparator:
    """A mask model as a chunk separator: audio (C, n) -> estimates (S, C, n) as float32 numpy."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", post: PostFilter = PostFilter()):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        configure_cuda(self.device, fixed_shapes=False)  # TF32; no autotuning: the last chunk of each song is odd
        self.post = post
        spec = model.spectrogram
        self.n_fft, self.hop = int(spec.n_fft), int(spec.hop_length)
        self.slice_frames = int(model.slice_frames)
        self.context_frames = int(model.context_frames())

    def plan(self, chunk_seconds: float) -> ChunkPlan:
        return chunk_plan(self.model, chunk_seconds, self.post.context_frames)

    @torch.no_grad()
    def __call__(self, audio: np.ndarray, start: int = 0) -> np.ndarray:
        """audio (C, n) starting at the song's sample `start` -> estimates (S, C, n)."""
        n = audio.shape[-1]
        x = torch.tensor(audio, dtype=torch.float32, device=self.device)  # (C, n), a copy: inputs may be read-only
        if n <= self.n_fft:  # the centred STFT needs more samples than half a frame: pad, crop below
            x = torch.nn.functional.pad(x, (0, self.n_fft + 1 - n))
        spec = self.model.spectrogram(x[None])  # (1, C, F, T) complex
        masks = self.model(spec.abs())[0]  # (S, C, F, T)
        # Chunks start on whole hops (`plan`): frame 0 here is the song's frame start // hop.
        targets = self.post.apply(masks, spec[0], start // self.hop)  # (S, C, F, T) complex
        estimates = self.model.spectrogram.inverse(targets[None], x.shape[-1])[0, ..., :n].float().cpu().numpy()
        if self.post.residual:
            estimates = mixture_residual(estimates, audio)
        return estimates


def separate(
    model: nn.Module,
    audio: np.ndarray,
    device: str | torch.device = "cpu",
    chunk_seconds: float = 30.0,
    post: PostFilter = PostFilter(),
) -> dict[str, np.ndarray]:
    """audio (C, N) at 44.1 kHz -> {target: (C, N)}, `chunk_seconds` at a time."""
    if not audio.shape[-1]:
        raise DataError("empty audio (0 samples): nothing to separate")
    sep = MaskSeparator(model, device, post)
    plan = sep.plan(chunk_seconds)
    estimates = np.concatenate(list(apply_chunked(sep, blocks_of(audio, plan.chunk), plan)), axis=-1)
    return dict(zip(TARGETS, estimates))


def parse_stems(text: str | Sequence[str] | None) -> list[str]:
    """ "vocals,drums" -> ["vocals", "drums"] (all targets when empty); unknown names are a DataError."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text or []) if s.strip()]
    unknown = [s for s in names if s not in TARGETS]
    if unknown:
        raise DataError(f"--stems {','.join(names)}: unknown {', '.join(unknown)} (choose from {','.join(TARGETS)})")
    return list(dict.fromkeys(names)) or list(TARGETS)


def check_arguments(model_ref: str | Path, audio: str | Path) -> None:
    """One clear line for the usual slip, `separate SONG MODEL` (arguments swapped)."""
    model_path, audio_path = Path(str(model_ref)), Path(audio)
    model_folder = audio_path.is_dir() and any(next(audio_path.glob(p), None) for p in MODEL_FOLDER_MARKS)
    audio_is_model = model_folder or audio_path.suffix.lower() in MODEL_SUFFIXES or str(audio).startswith("models:/")
    model_is_audio = model_path.is_file() and model_path.name.lower().endswith(AUDIO_SUFFIXES)
    if audio_is_model or model_is_audio:
        raise DataError(
            f"arguments swapped? `separate MODEL AUDIO` takes the model first (an export or checkpoint "
            f"folder, a .pt file or models:/NAME@ALIAS), then the audio file; got MODEL={model_ref}, "
            f"AUDIO={audio}"
        )


def separate_file(
    model: nn.Module,
    path: str | Path,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    chunk_seconds: float = 30.0,
    post: PostFilter = PostFilter(),
    stems: Sequence[str] = TARGETS,
    bits: str = "32f",
    progress: FileProgress | None = None,
) -> dict[str, Path]:
    """Write `<out_dir>/<stem>.wav` for each of `stems`, streaming: memory is set by the chunk, not the song."""
    if chunk_seconds <= 0:
        raise DataError(f"--chunk-seconds {chunk_seconds:g}: must be > 0")
    stems = parse_stems(list(stems))
    channels = int(model.audio_channels)
    inp = open_audio(path, channels)
    sep = MaskSeparator(model, device, post)
    plan = sep.plan(chunk_seconds)
    report = None if progress is None else (lambda done: progress(done, inp.frames))
    written = 0
    writer = StemWriter(out_dir, stems, channels, bits)  # checks `bits` before anything is written
    check_free_space(out_dir, inp.frames, channels, len(stems), bits)
    created = _first_missing(Path(out_dir))
    if report is not None:
        report(0)  # the input is probed and the options are valid: work starts
    try:
        with writer:  # on any exception (a SIGTERM raised by the CLI's handler too) the .part files go
            for piece in apply_chunked(sep, read_blocks(inp, plan.chunk, channels), plan, report):
                writer.write(dict(zip(TARGETS, piece)))
                written += piece.shape[-1]
            if not written:
                raise DataError(f"{path}: empty audio (0 samples)")
    except BaseException:
        _remove_empty(created, Path(out_dir))  # no empty --out folder left behind by a failed run
        raise
    log.info("%s: %.1f s separated (%s) into %s", path, written / SAMPLE_RATE, post.label, out_dir)
    return dict(writer.paths)


# Bytes per sample of each --bits (audio_io.BITS); a wav header is tens of bytes, a block covers it.
BYTES_PER_SAMPLE = {"16": 2, "24": 3, "32f": 4}
HEADER_BYTES = 4096


def check_free_space(out_dir: str | Path, frames: int | None, channels: int, stems: int, bits: str) -> None:
    """Refuse before any work when the stems will not fit: frames x channels x stems x bytes per
    sample (`bits`). An input of unknown length (a stream without a stated duration) is not checked."""
    if frames is None:
        log.info("%s: input length unknown: free space not checked", out_dir)
        return
    folder = _first_existing(Path(out_dir))
    needed = stems * (frames * channels * BYTES_PER_SAMPLE[bits] + HEADER_BYTES)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(
            f"{out_dir}: not enough free space for the stems: {_size(needed)} needed ({stems} stems x "
            f"{channels} channels x {frames} samples x {BYTES_PER_SAMPLE[bits]} bytes, --bits {bits}), "
            f"{_size(free)} free on {folder}"
        )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _first_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of `folder` and its parents that does not exist yet (None: all exist)."""
    missing = None
    while not folder.exists() and folder != folder.parent:
        missing, folder = folder, folder.parent
    return missing


def _remove_empty(created: Path | None, out_dir: Path) -> None:
    """Remove the folders this run created from `out_dir` up to `created`, where they are empty."""
    if created is None:
        return
    for folder in [out_dir, *out_dir.parents]:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        if folder == created:
            return
