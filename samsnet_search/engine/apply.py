"""Chunked separation with bounded memory, for any separator (the idea of demucs' `apply.py`).

`apply_chunked(fn, blocks, plan)` streams a mixture given as blocks of samples through a
separator `fn(audio (C, n), start) -> estimates (S, C, n)` (`start`: the piece's first sample in
the song, for a separator whose result depends on where it is, as the Wiener filter's windows
fixed to the song; others ignore it): each chunk of `plan.chunk` samples is
separated with `plan.context` samples of the mixture on each side and only its own part is
kept. Nothing holds more than one chunk and its context, so memory is set by the chunk, not by
the track, and the caller may write each piece out as it comes.

With chunk and context multiples of `plan.align` (for Sams-Net: a whole number of slices of
STFT hops, so every chunk cuts time into the same slices as the whole track) and a context
covering the separator's receptive field, the pieces equal the whole-track result up to float
rounding; `MaskSeparator.plan` computes such a plan.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)

Separator = Callable[[np.ndarray, int], np.ndarray]  # (audio (C, n), its first sample in the song) -> (S, C, n)
Progress = Callable[[int], None]  # samples of the mixture separated so far


@dataclass(frozen=True)
class ChunkPlan:
    """Samples per chunk and of context on each side; both multiples of `align`."""

    chunk: int
    context: int
    align: int = 1

    @classmethod
    def make(cls, chunk_samples: int, context_samples: int, align: int = 1) -> "ChunkPlan":
        """Round the chunk down (at least one `align`) and the context up to multiples of `align`."""
        align = max(1, int(align))
        chunk = max(align, int(chunk_samples) // align * align)
        context = math.ceil(max(0, int(context_samples)) / align) * align
        return cls(chunk, context, align)


def blocks_of(audio: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """An in-memory mixture (C, N) as blocks of `size` samples (views, no copies)."""
    for start in range(0, audio.shape[-1], max(1, size)):
        yield audio[..., start : start + size]


def apply_chunked(
    fn: Separator, blocks: Iterable[np.ndarray], plan: ChunkPlan, progress: Progress | None = None
) -> Iterator[np.ndarray]:
    """Yield the estimates (S, C, n) of consecutive chunks; concatenated on the last axis they cover
    the whole mixture. `blocks` are (C, n) pieces of the mixture of any sizes, in order."""
    buf: np.ndarray | None = None  # mixture samples [buf_start, buf_start + buf.shape[-1])
    buf_start, start, done = 0, 0, 0  # start: first sample of the next chunk
    source = iter(blocks)
    exhausted = False
    while True:
        # Fill until the next chunk and its right context are buffered (or the input ends).
        while not exhausted and (buf is None or buf_start + buf.shape[-1] < start + plan.chunk + plan.context):
            block = next(source, None)
            if block is None:
                exhausted = True
            elif block.shape[-1]:
                buf = block if buf is None else np.concatenate([buf, block], axis=-1)
        end = buf_start + (0 if buf is None else buf.shape[-1])
        if start >= end:
            return
        stop = min(end, start + plan.chunk)
        lo, hi = max(0, start - plan.context), min(end, stop + plan.context)
        estimates = fn(np.ascontiguousarray(buf[..., lo - buf_start : hi - buf_start]), lo)
        yield estimates[..., start - lo : stop - lo]
        done += stop - start
        if progress is not None:
            progress(done)
        start = stop
        keep = max(0, start - plan.context) - buf_start  # what the next chunk's left context no longer needs
        buf, buf_start = buf[..., keep:], buf_start + keep
