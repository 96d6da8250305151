"""Full-track separation and BSSEval v4 scores, aggregated as the paper (and SiSEC 2018) does.

SDR per target = median over 1 s frames (NaN frames, i.e. silent references, ignored),
then median over tracks; the headline number is the average of the four targets.
Estimators: a trained model (chunked, bounded memory) or an oracle ideal ratio mask:
`irm1` = magnitude ratio |S_j| / sum_k |S_k|, `irm2` = power ratio |S_j|^2 / sum_k |S_k|^2,
both applied to the mixture STFT (same STFT as the model) with the mixture phase.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from ..config import SAMPLE_RATE, TARGETS
from ..data import Track
from ..metrics.bsseval import bss_eval_v4, median_over_tracks, track_scores
from ..model import SamsNet, Spectrogram
from .apply import apply_chunked, blocks_of
from .separate import MaskSeparator
from .wiener import PostFilter, mixture_residual

log = logging.getLogger(__name__)

Backend = Literal["museval", "fast"]
# A function from a mixture (C, N) to estimates (S, C, N); oracles also see the stems.
Estimator = Callable[[Track], np.ndarray]


@dataclass
class EvalReport:
    estimator: str
    backend: Backend
    data: str  # which data: "MUSDB18", "MUSDB18-HQ" or "synthetic (MUSDB18-HQ format)"
    subset: str
    tracks: dict[str, dict[str, float]] = field(default_factory=dict)  # track -> target -> median SDR
    decoding: str = ""  # how the audio was decoded (MUSDB18: 16-bit PCM as musdb, so museval's numbers)

    @property
    def summary(self) -> dict[str, float]:
        """Median over tracks per target, and their average ("avg")."""
        return median_over_tracks(list(self.tracks.values()))

    def to_dict(self) -> dict:
        return {
            "estimator": self.estimator,
            "backend": self.backend,
            "data": self.data,
            "subset": self.subset,
            "decoding": self.decoding,
            "aggregation": "SDR: median over 1 s frames, then median over tracks; avg = mean of targets",
            "summary": self.summary,
            "tracks": self.tracks,
        }


def model_estimator(
    model: SamsNet, device: torch.device, chunk_seconds: float = 30.0, post: PostFilter = PostFilter()
) -> Estimator:
    """Separate with the mixture phase and `post` (default: the paper's plain masks), `chunk_seconds` at a time."""
    separator = MaskSeparator(model, device, post)
    plan = separator.plan(chunk_seconds)

    def estimate(track: Track) -> np.ndarray:
        mixture = track.audio()[0]  # (C, N), the cache's memory map: read a chunk at a time
        return np.concatenate(list(apply_chunked(separator, blocks_of(mixture, plan.chunk), plan)), axis=-1)

    return estimate


def oracle_estimator(
    kind: Literal["irm1", "irm2"], n_fft: int = 4096, hop_length: int = 1024, post: PostFilter = PostFilter()
) -> Estimator:
    """Ideal ratio mask from the true stems: irm1 magnitude ratio, irm2 power ratio; then `post`."""
    power = {"irm1": 1, "irm2": 2}[kind]
    stft = Spectrogram(n_fft, hop_length)

    @torch.no_grad()
    def estimate(track: Track) -> np.ndarray:
        audio = torch.from_numpy(np.array(track.audio()))  # (1 + S, C, N), a writable copy of the cache
        spec = stft(audio)  # (1 + S, C, F, T)
        weights = spec[1:].abs() ** power  # (S, C, F, T)
        masks = weights / (weights.sum(0, keepdim=True) + torch.finfo(weights.dtype).eps)
        estimates = stft.inverse(post.apply(masks, spec[0]), audio.shape[-1]).numpy()
        return mixture_residual(estimates, audio[0].numpy()) if post.residual else estimates

    return estimate


def score(references: np.ndarray, estimates: np.ndarray, backend: Backend) -> dict[str, np.ndarray]:
    """BSSEval v4 per 1 s frame. references, estimates: (S, C, N) -> metric -> (S, frames)."""
    refs = np.transpose(references, (0, 2, 1)).astype(np.float64)  # museval layout (S, N, C)
    ests = np.transpose(estimates, (0, 2, 1)).astype(np.float64)
    if backend == "museval":
        import museval  # lazy: museval (musdb, stempeg); only its backend needs it

        sdr, isr, sir, sar = museval.evaluate(refs, ests, win=SAMPLE_RATE, hop=SAMPLE_RATE)
        return {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}
    return bss_eval_v4(refs, ests, win=SAMPLE_RATE, hop=SAMPLE_RATE)


def museval_json(name: str, metrics: dict[str, np.ndarray]) -> str:
    """The per-track JSON museval writes (frames of SDR/SIR/ISR/SAR per target)."""
    from museval.aggregate import TrackStore  # lazy: museval

    store = TrackStore(track_name=name, win=1.0, hop=1.0)
    for i, target in enumerate(TARGETS):
        store.add_target(target, {k: metrics[k][i].tolist() for k in ("SDR", "SIR", "ISR", "SAR")})
    return store.json


def evaluate_tracks(
    estimator: Estimator,
    tracks: list[Track],
    *,
    name: str,
    backend: Backend,
    data_kind: str,
    subset: str,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalReport:
    """Separate and score each track; write museval JSON per track and a summary to `out_dir`.

    progress: told one line per scored track (k of n, the track's average SDR, elapsed time)."""
    decoding = "; ".join(sorted({track.source.decoding for track in tracks}))
    report = EvalReport(estimator=name, backend=backend, data=data_kind, subset=subset, decoding=decoding)
    start = time.monotonic()
    for k, track in enumerate(tracks, 1):
        estimates = estimator(track)
        metrics = score(track.audio()[1:], estimates, backend)
        report.tracks[track.name] = track_scores(metrics["SDR"], TARGETS)
        log.info("%s: %s", track.name, report.tracks[track.name])
        if progress is not None:
            avg = sum(report.tracks[track.name][t] for t in TARGETS) / len(TARGETS)
            progress(
                f"{subset} [{k}/{len(tracks)}, {time.monotonic() - start:.0f} s]: {track.name} avg SDR {avg:.2f} dB ({name})"
            )
        if out_dir is not None:
            (out_dir / subset).mkdir(parents=True, exist_ok=True)
            (out_dir / subset / f"{track.name}.json").write_text(museval_json(track.name, metrics))
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report
