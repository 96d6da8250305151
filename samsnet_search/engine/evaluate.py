"""Full-track separation and BSSEval v4 scores, aggregated as the paper (and SiSEC 2018) does.

SDR per target = median over 1 s frames (NaN frames, i.e. silent references, ignored),
then median over tracks; the headline number is the average of the four targets. A track museval
cannot score is refused in one line naming it (`check_scorable`): shorter than one 1 s frame, or a
reference or estimate silent throughout (docs/metrics.md, "Tracks that cannot be scored").
Estimators: a trained model (chunked, bounded memory) or an oracle ideal ratio mask:
`irm1` = magnitude ratio |S_j| / sum_k |S_k|, `irm2` = power ratio |S_j|^2 / sum_k |S_k|^2,
both applied to the mixture STFT with the mixture phase. Which STFT is `ORACLE_STFTS`: the
model's (Hamming 4096 / hop 1024, the default) or sigsep's (`sigsep-mus-oracle/IRM.py`, the
SiSEC 2018 oracle runs: scipy.signal.stft with nperseg 2048, i.e. Hann, hop 1024). The model's
STFT scores 1.1-2.0 dB higher on the same track (docs/metrics.md, "IRM oracles").
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import scipy.signal
import torch

from ..config import SAMPLE_RATE, TARGETS
from ..data import Track
from ..errors import DataError
from ..metrics.bsseval import bss_eval_v4, median_over_tracks, track_scores
from ..model import SamsNet, Spectrogram
from .apply import apply_chunked, blocks_of
from .separate import MaskSeparator
from .wiener import PostFilter, mixture_residual

log = logging.getLogger(__name__)

Backend = Literal["museval", "fast"]
# The proof that the fast path scores SDR as museval does: this test scores a model's estimates with
# both backends and holds every target's SDR to EXACT_DB (SDR needs no projection: on real stems
# the two agree to 1e-9 dB, tests/test_metrics.py::test_real_stems_match_museval).
FAST_PROOF = "tests/test_evaluate.py::test_fast_backend_matches_museval_on_model_estimates"
EXACT_DB = 0.01
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


class SigsepSTFT:
    """The STFT of sigsep-mus-oracle's IRM.py (SiSEC 2018's oracles), computed as it computes it.

    `scipy.signal.stft(x, nperseg=n_fft)` with scipy's defaults: periodic Hann window, hop
    n_fft // 2 (noverlap = nperseg // 2), zero-padded boundaries; the inverse is
    `scipy.signal.istft` with the same defaults, cut to the input's length. In float64, as IRM.py
    reads musdb's float64 audio (so the mask's epsilon is float64's too). Same interface as
    `model.Spectrogram`: forward (..., N) -> complex (..., F, T), inverse (..., F, T) -> (..., length).
    """

    def __init__(self, n_fft: int = 2048):
        self.n_fft = n_fft
        self.hop_length = n_fft // 2  # scipy's default overlap: half a frame

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(scipy.signal.stft(audio.numpy().astype(np.float64), nperseg=self.n_fft)[-1])

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        audio = scipy.signal.istft(spec.numpy(), nperseg=self.n_fft)[1][..., :length]
        return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))


# The STFTs an oracle can use: name -> (factory, how reports name the settings).
ORACLE_STFTS: dict[str, tuple[Callable[[], Callable], str]] = {
    "model": (lambda: Spectrogram(4096, 1024), "model STFT: Hamming 4096, hop 1024"),
    "sigsep": (lambda: SigsepSTFT(2048), "sigsep STFT: Hann 2048, hop 1024 (sigsep-mus-oracle, SiSEC 2018)"),
}


def oracle_estimator(
    kind: Literal["irm1", "irm2"],
    n_fft: int = 4096,
    hop_length: int = 1024,
    post: PostFilter = PostFilter(),
    stft: Callable | None = None,
) -> Estimator:
    """Ideal ratio mask from the true stems: irm1 magnitude ratio, irm2 power ratio; then `post`.

    `stft`: a `Spectrogram`-like transform (`ORACLE_STFTS`); default the model's STFT with
    `n_fft` / `hop_length` (Hamming window).
    """
    power = {"irm1": 1, "irm2": 2}[kind]
    stft = Spectrogram(n_fft, hop_length) if stft is None else stft

    @torch.no_grad()
    def estimate(track: Track) -> np.ndarray:
        audio = torch.from_numpy(np.array(track.audio()))  # (1 + S, C, N), a writable copy of the cache
        spec = stft(audio)  # (1 + S, C, F, T)
        weights = spec[1:].abs() ** power  # (S, C, F, T)
        masks = weights / (weights.sum(0, keepdim=True) + torch.finfo(weights.dtype).eps)
        estimates = stft.inverse(post.apply(masks, spec[0]), audio.shape[-1]).numpy()
        return mixture_residual(estimates, audio[0].numpy()) if post.residual else estimates

    return estimate


def backend_label(backend: Backend) -> str:
    """What scored an SDR, as the output says it: the fast path names its proof of equality."""
    if backend == "fast":
        return f"BSSEval v4, exact fast path, equal to museval within {EXACT_DB:g} dB: {FAST_PROOF}"
    return "museval BSSEval v4"


def score(references: np.ndarray, estimates: np.ndarray, backend: Backend) -> dict[str, np.ndarray]:
    """BSSEval v4 per 1 s frame. references, estimates: (S, C, N) -> metric -> (S, frames)."""
    refs = np.transpose(references, (0, 2, 1)).astype(np.float64)  # museval layout (S, N, C)
    ests = np.transpose(estimates, (0, 2, 1)).astype(np.float64)
    if backend == "museval":
        import museval  # lazy: museval (musdb, stempeg); only its backend needs it

        sdr, isr, sir, sar = museval.evaluate(refs, ests, win=SAMPLE_RATE, hop=SAMPLE_RATE)
        return {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}
    return bss_eval_v4(refs, ests, win=SAMPLE_RATE, hop=SAMPLE_RATE)


def check_scorable(track: str, stems: np.ndarray, kind: str, win: int = SAMPLE_RATE) -> None:
    """Refuse, naming the track, what museval would refuse or score meaninglessly. stems: (S, C, N).

    Shorter than one BSSEval frame (`win` samples): museval scores the whole signal as one frame
    of another length, not comparable with 1 s frames. A stem silent throughout (museval's rule:
    its channel sum is exactly zero at every sample): museval's projection is undetermined and it
    raises. Frames silent only in stretches are scored as museval does (NaN, skipped by the median).
    """
    n = stems.shape[-1]
    if n < win:
        raise DataError(
            f"track {track!r}: {n} samples ({n / SAMPLE_RATE:.2f} s) is shorter than one BSSEval frame "
            f"({win} samples, {win / SAMPLE_RATE:g} s); it cannot be scored: leave it out"
        )
    silent = [t for t, stem in zip(TARGETS, stems) if not np.any(np.sum(stem, axis=0))]
    if silent:
        raise DataError(
            f"track {track!r}: {kind} {', '.join(silent)} is silent throughout (all zeros); BSSEval v4 "
            "(museval) cannot score a track with a silent stem: leave the track out"
        )


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
        references = track.audio()[1:]
        check_scorable(track.name, references, "reference")  # before the separation: it costs minutes
        estimates = estimator(track)
        check_scorable(track.name, estimates, "estimate")
        metrics = score(references, estimates, backend)
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
