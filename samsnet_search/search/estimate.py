"""Unsupervised estimate of the slice count from the training mixtures alone.

The paper (Li et al. 2020, section 5) hopes the best number of slices could be found without
training, e.g. by spectral clustering with an unknown number of clusters. This module counts the
contiguous musical parts of each training segment and maps parts to slices by HYPOTHESIS (one
slice per contiguous part: unverified), aggregated over segments and tracks (median, IQR,
histogram). Parts come from one of two methods (`EstimateParams.method`):

- novelty (default): per track, three views from the model's STFT pooled to ~0.1 s points
  (timbre: log-mel; harmony: pitch-class profiles; rhythm: a tempogram), a Foote (2000)
  checkerboard novelty curve per view on the cosine self-similarity of the whole track, their
  weighted mean, and change points at its peaks above an adaptive threshold; a segment's parts
  are 1 + the change points inside it;
- eigengap: per segment, the largest eigengap of a locally scaled affinity graph (Zelnik-Manor
  & Perona 2004) and spectral clustering (Ng, Jordan & Weiss 2001), counted as contiguous runs.

Timbre alone mistakes a chord change inside a section for a boundary; harmony and rhythm add
what stays put within a section and changes between them. The defaults were tuned on synthetic
sections (`recovery_rate` scores a synthetic set against its sections.json): treat the estimate
as a prior, not an answer. The recovery measurements are in docs/estimate.md.
numpy / scipy only: no torch, Ray or MLflow.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.linalg import eigh
from scipy.ndimage import maximum_filter1d, median_filter, uniform_filter1d

from ..config import PAPER_SLICES, SAMPLE_RATE, DataConfig
from ..data.splits import load_splits
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

METHODS = ("novelty", "eigengap")

HYPOTHESIS = (
    "one slice per contiguous part: attention inside a slice works best when the slice covers one "
    "musically homogeneous stretch, so the slice count of a segment is its number of contiguous "
    "parts (rounded to the nearest slice count the study allows, ties to the smaller); the "
    "estimate is the median over all training segments. Unverified: compare it with the searched optimum."
)


@dataclass(frozen=True)
class EstimateParams:
    """Knobs of the estimate; defaults were tuned on synthetic data (see recovery_rate)."""

    n_mels: int = 80  # bands of the spectral envelope (timbre, instrumentation); 80 beat 40 on synthetic data
    smooth_seconds: float = 0.5  # moving average over frames: beats and single notes blur, sections stay
    neighbors: int = 10  # k of the local scaling (Zelnik-Manor & Perona use 7; 10 won on synthetic data)
    temporal_weight: float = 0.3  # mu: share of a frame's links that run to its neighbours in time
    max_clusters: int = 12  # eigengap searched over min_clusters..max_clusters
    min_clusters: int = 1  # 2: skip the lambda_1 gap, which dominates on dense graphs (parts may still merge to 1)
    min_part_seconds: float = 0.5  # runs shorter than this merge into a neighbour
    texture: bool = True  # add each band's standard deviation over the smoothing window
    frames_per_point: int = 4  # frames pooled per point: about 0.09 s at hop 1024 (eigengap was tuned at 8)
    seed: int = 0  # k-means initialisation
    # How parts are counted. novelty: 1 + change points of a Foote novelty curve over the whole
    # track (the default: docs/estimate.md has the measured comparison); eigengap: the
    # spectral clustering of each segment alone, as first built.
    method: str = "novelty"
    kernel_seconds: float = 2.5  # half-width of the checkerboard kernel: the stretch compared on each side
    threshold_seconds: float = 6.0  # window of the running median the novelty must rise above
    threshold_delta: float = 0.0  # ... by this many standard deviations of the track's novelty curve
    # ... and by this much in absolute terms (novelty is a contrast of cosine similarities, in [-1, 1]):
    # without it a homogeneous track still gets its relatively largest wiggles as change points.
    threshold_floor: float = 0.05
    # Novelty: a weighted mean of one curve per view of the music. Timbre (log-mel, weight 1) alone
    # mistakes a chord change inside a section (every bar) for a boundary; harmony and rhythm add
    # what stays put within a section and changes between them.
    chroma_weight: float = 0.25  # harmony: pitch-class profile (key, mode)
    chroma_seconds: float = 2.0  # its moving average: a bar or more, so single chords blur
    rhythm_weight: float = 1.5  # rhythm: local autocorrelation of onset strength (tempo, drum pattern)
    rhythm_seconds: float = 2.0  # its window: a few beats at 80-150 bpm
    chroma_floor: float = 0.1  # novelty_curve's norm floor for the harmony view
    rhythm_floor: float = 1.5  # ... and for the rhythm view

    def check(self) -> None:
        for key in ("n_mels", "neighbors", "max_clusters", "frames_per_point"):
            if getattr(self, key) < 1:
                raise ConfigError(f"estimate: {key} must be >= 1, got {getattr(self, key)!r}")
        if self.method not in METHODS:
            raise ConfigError(f"estimate: method must be one of {list(METHODS)}, got {self.method!r}")
        if not (
            self.kernel_seconds > 0 and self.threshold_seconds > 0 and self.threshold_delta >= 0 <= self.threshold_floor
        ):
            raise ConfigError(
                "estimate: kernel_seconds and threshold_seconds must be > 0, threshold_delta and threshold_floor "
                f">= 0, got {self.kernel_seconds!r}, {self.threshold_seconds!r}, {self.threshold_delta!r}, "
                f"{self.threshold_floor!r}"
            )
        if not 0.0 <= self.temporal_weight < 1.0:
            raise ConfigError(f"estimate: temporal_weight must be in [0, 1), got {self.temporal_weight!r}")
        if self.smooth_seconds < 0 or self.min_part_seconds < 0:
            raise ConfigError("estimate: smooth_seconds and min_part_seconds must be >= 0")
        if self.chroma_weight < 0 or self.rhythm_weight < 0:
            raise ConfigError(
                f"estimate: chroma_weight and rhythm_weight must be >= 0, got "
                f"{self.chroma_weight!r}, {self.rhythm_weight!r}"
            )
        if not (self.chroma_seconds > 0 and self.rhythm_seconds > 0):
            raise ConfigError(
                f"estimate: chroma_seconds and rhythm_seconds must be > 0, got "
                f"{self.chroma_seconds!r}, {self.rhythm_seconds!r}"
            )


# --------------------------------------------------------------------------- features


def stft_magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| of mono audio x (N,) with a Hamming window, centered frames as torch.stft(center=True)
    with reflect padding: the model's framing. Returns (F, T) = (n_fft // 2 + 1, 1 + N // hop)."""
    pad = n_fft // 2
    mode = "reflect" if len(x) > pad else "constant"  # reflect needs more samples than the pad
    x = np.pad(x.astype(np.float64), pad, mode=mode)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # (T, n_fft)
    window = np.hamming(n_fft + 1)[:-1]  # periodic, as torch.hamming_window
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


def mel_filterbank(
    n_mels: int, n_fft: int, sr: int = SAMPLE_RATE, fmin: float = 30.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular HTK-mel filters, (n_mels, n_fft // 2 + 1), each normalized to unit area."""
    fmax = fmax or sr / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    # Low filters narrower than a bin catch nothing: give each at least its nearest bin.
    empty = tri.sum(1) == 0
    tri[empty, np.abs(freqs[None, :] - mid[empty]).argmin(1)] = 1.0
    return tri / tri.sum(1, keepdims=True)


def frame_features(x: np.ndarray, n_fft: int, hop: int, params: EstimateParams) -> np.ndarray:
    """Standardized, smoothed log-mel frames of mono audio x (N,). Returns (T, n_mels)."""
    return timbre_features(stft_magnitude(x, n_fft, hop), n_fft, hop, params)


def pool(feats: np.ndarray, frames_per_point: int) -> np.ndarray:
    """Mean over consecutive groups of `frames_per_point` frames (T, D) -> (T // p, D); a short tail is dropped."""
    if frames_per_point <= 1:
        return feats
    T = feats.shape[0] // frames_per_point * frames_per_point
    return feats[:T].reshape(-1, frames_per_point, feats.shape[1]).mean(1)


def timbre_features(mag: np.ndarray, n_fft: int, hop: int, params: EstimateParams) -> np.ndarray:
    """Standardized, smoothed log-mel frames from |STFT| (F, T). Returns (T // p, M or 2M) pooled points."""
    logmel = np.log(mel_filterbank(params.n_mels, n_fft) @ mag**2 + 1e-8).T  # (T, M)
    # Per band over the segment: the clustering sees changes, not the overall spectral tilt.
    feats = (logmel - logmel.mean(0)) / (logmel.std(0) + 1e-3)
    width = max(1, int(round(params.smooth_seconds * SAMPLE_RATE / hop)))
    mean = uniform_filter1d(feats, size=width, axis=0, mode="nearest")
    if params.texture:
        # Texture window: the spread of each band over the window tells a steady pad from
        # drum hits or a busy arpeggio, which the mean alone mixes up.
        spread = np.sqrt(np.maximum(uniform_filter1d(feats**2, size=width, axis=0, mode="nearest") - mean**2, 0.0))
        feats = np.concatenate([mean, spread], axis=1)  # (T, 2M)
    else:
        feats = mean
    return pool(feats, params.frames_per_point)


def chroma_filterbank(n_fft: int, sr: int = SAMPLE_RATE, fmin: float = 55.0, fmax: float = 5000.0) -> np.ndarray:
    """(12, n_fft // 2 + 1): each STFT bin between fmin and fmax to the pitch class nearest its
    frequency (0 = C). Coarse at low frequencies (4096 points: 10.8 Hz bins), enough for a key profile."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    bins = np.flatnonzero((freqs >= fmin) & (freqs <= fmax))
    pitch_class = np.mod(np.round(12 * np.log2(freqs[bins] / 440.0)) + 9, 12).astype(int)
    fb = np.zeros((12, len(freqs)))
    fb[pitch_class, bins] = 1.0
    return fb


def chroma_features(mag: np.ndarray, n_fft: int, hop: int, params: EstimateParams) -> np.ndarray:
    """Harmony: log-compressed pitch-class profiles from |STFT| (F, T), unit norm per frame (loudness
    out), standardized per pitch class over the track, averaged over `chroma_seconds`. (T // p, 12)."""
    c = chroma_filterbank(n_fft) @ mag  # (12, T)
    c = np.log1p(100.0 * c / (c.max() + 1e-9)).T  # (T, 12)
    c = c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-9)
    # Centered, not scaled per pitch class: how far a profile strays from the track's average
    # is kept, so that novelty_curve's norm floor can tell a key change from chord-to-chord wobble.
    c = c - c.mean(0)
    width = max(1, int(round(params.chroma_seconds * SAMPLE_RATE / hop)))
    return pool(uniform_filter1d(c, size=width, axis=0, mode="nearest"), params.frames_per_point)


def lagged_product(x: np.ndarray, lag: int) -> np.ndarray:
    """x[t - lag // 2] * x[t - lag // 2 + lag] (T,): the pair centred on t, so that a change of
    rhythm shows at the change and not up to `lag` frames early; pairs that would run off either
    end are replaced by the nearest pair inside (zero padding would fake a change at the ends)."""
    T = len(x)
    if lag >= T:
        return np.zeros_like(x)
    a = np.clip(np.arange(T) - lag // 2, 0, T - 1 - lag)
    return x[a] * x[a + lag]


def rhythm_features(
    mag: np.ndarray, n_fft: int, hop: int, params: EstimateParams, min_lag: float = 0.2, max_lag: float = 1.5
) -> np.ndarray:
    """Rhythm: a tempogram. Onset strength (half-wave rectified log-mel flux, its 1 s trend removed),
    then its autocorrelation over a `rhythm_seconds` window at lags `min_lag`..`max_lag` seconds
    (40-300 bpm beat periods), divided by the window's energy and standardized per lag. (T // p, lags)."""
    logmel = np.log(mel_filterbank(params.n_mels, n_fft) @ mag**2 + 1e-8)  # (M, T)
    onset = np.maximum(np.diff(logmel, axis=1, prepend=logmel[:, :1]), 0.0).mean(0)  # (T,)
    frames_per_second = SAMPLE_RATE / hop
    onset = onset - uniform_filter1d(onset, size=max(3, int(round(frames_per_second))), mode="nearest")
    lags = np.arange(max(1, int(min_lag * frames_per_second)), max(2, int(max_lag * frames_per_second) + 1))
    width = max(3, int(round(params.rhythm_seconds * frames_per_second)))
    ac = np.stack([uniform_filter1d(lagged_product(onset, int(lag)), size=width, mode="nearest") for lag in lags], 1)
    ac = ac / (uniform_filter1d(onset**2, size=width, mode="nearest")[:, None] + 1e-9)  # (T, lags)
    return pool(ac - ac.mean(0), params.frames_per_point)  # centered, not scaled: see chroma_features


# --------------------------------------------------------------------------- clustering


def affinity(feats: np.ndarray, params: EstimateParams) -> np.ndarray:
    """Frame affinity (T, T) for features (T, M).

    Recurrence part: exp(-d_ij^2 / (sigma_i sigma_j)) on cosine distance d, sigma_i the distance of
    frame i to its k-th nearest neighbour (local scaling: no global bandwidth to tune). Sequential
    part: links i <-> i+1. They are mixed as mu * Seq + (1 - mu) * Rec, each scaled to mean degree 1
    (after McFee & Ellis 2014), so frames that are close in time and alike end up together.
    """
    T = feats.shape[0]
    unit = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-9)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)  # (T, T) cosine distance
    k = min(params.neighbors, T - 1)
    sigma = np.sort(dist, axis=1)[:, k] + 1e-6 if k > 0 else np.ones(T)  # column 0 is the frame itself
    rec = np.exp(-(dist**2) / np.outer(sigma, sigma))
    np.fill_diagonal(rec, 0.0)
    seq = np.eye(T, k=1) + np.eye(T, k=-1)
    # Each part scaled to mean degree 1, so temporal_weight is the share of a frame's links that
    # run along time, whatever the kernel's overall level.
    mu = params.temporal_weight
    rec_scale = rec.sum(1).mean() + 1e-12
    return mu * seq / 2.0 + (1.0 - mu) * rec / rec_scale


def eigengap(A: np.ndarray, max_clusters: int, min_clusters: int = 1) -> tuple[int, np.ndarray, np.ndarray]:
    """Number of clusters from the largest eigengap of L = I - D^-1/2 A D^-1/2 (A: (T, T)).

    Returns (k, eigenvalues (m,), eigenvectors (T, m)) for the m = max_clusters + 1 smallest
    eigenvalues; k = argmax_j (lambda_j - lambda_{j-1}), j = 1..max_clusters.
    """
    T = A.shape[0]
    d = 1.0 / np.sqrt(A.sum(1) + 1e-12)
    L = np.eye(T) - d[:, None] * A * d[None, :]
    m = min(max_clusters + 1, T)
    vals, vecs = eigh(L, subset_by_index=[0, m - 1])
    if m < 2:
        return 1, vals, vecs
    gaps = np.diff(vals)  # gaps[j - 1] = lambda_j - lambda_{j-1}
    gaps[: min_clusters - 1] = -np.inf
    k = int(np.argmax(gaps)) + 1
    return k, vals, vecs


def spectral_labels(vecs: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means on the row-normalized first k eigenvectors (T, k) -> labels (T,)."""
    if k == 1:
        return np.zeros(vecs.shape[0], dtype=int)
    emb = vecs[:, :k] / (np.linalg.norm(vecs[:, :k], axis=1, keepdims=True) + 1e-12)
    # scipy's k-means++ with restarts: sklearn's KMeans spends ~1 s per call starting threads
    # for a few hundred points.
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(5):
        centers, labels = kmeans2(emb, k, minit="++", seed=rng, missing="raise")
        cost = float(((emb - centers[labels]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def contiguous_runs(labels: np.ndarray, min_run: int) -> list[tuple[int, int, int]]:
    """Runs (start, end, label) of equal labels (T,). The shortest run under `min_run` is merged
    into its longer neighbour, repeatedly, until every run is long enough or one run remains."""
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(labels)]])
    runs = [[int(s), int(e), int(labels[s])] for s, e in zip(starts, ends)]
    while len(runs) > 1:
        lengths = [e - s for s, e, _ in runs]
        i = int(np.argmin(lengths))
        if lengths[i] >= min_run:
            break
        left = lengths[i - 1] if i > 0 else -1
        right = lengths[i + 1] if i + 1 < len(runs) else -1
        j = i - 1 if left >= right else i + 1  # absorb into the longer neighbour
        lo, hi = min(i, j), max(i, j)
        runs[lo : hi + 1] = [[runs[lo][0], runs[hi][1], runs[j][2]]]
        # Equal labels side by side after the merge are one run.
        merged: list[list[int]] = []
        for r in runs:
            if merged and merged[-1][2] == r[2]:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        runs = merged
    return [tuple(r) for r in runs]


@dataclass
class SegmentParts:
    """The estimate for one segment."""

    track: str
    start: float  # seconds into the track
    parts: int  # contiguous parts found
    slices: int  # parts mapped to an allowed slice count
    clusters: int | None  # eigengap method: clusters from the eigengap (parts >= clusters); novelty: None
    boundaries: list[float]  # seconds from the segment start where a part begins (excluding 0)
    true_parts: int | None = None  # from sections.json (synthetic data), else None


def segment_parts(x: np.ndarray, n_fft: int, hop: int, params: EstimateParams) -> tuple[int, int, list[float]]:
    """Contiguous parts of mono audio x (N,). Returns (parts, clusters, boundaries in seconds)."""
    feats = frame_features(x, n_fft, hop, params)  # (T, M)
    seconds_per_point = hop * params.frames_per_point / SAMPLE_RATE
    max_clusters = max(1, min(params.max_clusters, feats.shape[0] // 2))
    k, _, vecs = eigengap(affinity(feats, params), max_clusters, min(params.min_clusters, max_clusters))
    labels = spectral_labels(vecs, k, params.seed)
    min_run = max(1, int(round(params.min_part_seconds / seconds_per_point)))
    runs = contiguous_runs(labels, min_run)
    return len(runs), k, [round(s * seconds_per_point, 3) for s, _, _ in runs[1:]]


# --------------------------------------------------------------------------- change points


def checkerboard_kernel(half_width: int) -> np.ndarray:
    """Foote's (2000) checkerboard kernel (2L, 2L), L = half_width, with a Gaussian taper.

    +1 where both frames lie on the same side of the centre (past-past, future-future), -1 across
    it; the taper (sigma = L / 2) weighs frames near the candidate boundary most.
    """
    offsets = np.arange(-half_width, half_width) + 0.5  # the centre lies between frames L-1 and L
    taper = np.exp(-0.5 * (offsets / (0.5 * half_width)) ** 2)
    sign = np.sign(offsets)
    return np.outer(taper * sign, taper * sign)


def novelty_curve(feats: np.ndarray, half_width: int, norm_floor: float = 0.0) -> np.ndarray:
    """Foote novelty of features (T, M): the checkerboard kernel slid along the diagonal of the
    cosine self-similarity matrix (T, T), divided by the kernel's mass so that it reads as a contrast
    (mean similarity within each side minus across, in [-1, 1]) whatever the kernel size.
    Returns (T,); entry t scores a boundary just before point t.

    Outside the track the matrix is zero-padded, so the ends get no spurious peak.

    norm_floor > 0: a soft cosine, f / sqrt(|f|^2 + norm_floor^2): points of centered features that
    stay within norm_floor of the track's mean count as near-zero vectors and contrast little, so a
    track without a real change (small wobble, fully scaled up by a plain cosine) gets no peaks.
    """
    T = feats.shape[0]
    unit = feats / (np.sqrt((feats**2).sum(1, keepdims=True) + norm_floor**2) + 1e-9)
    # The kernel is an outer product K = v v^T and the similarity block of the window starting at t
    # is U_t U_t^T (U_t: its 2L rows of `unit`), so sum(K * block) = |v^T U_t|^2: a weighted sum of
    # feature rows per t. Memory O(T M) instead of the (T, 2L, 2L) blocks (GBs for minutes of audio
    # at hop 256), same numbers.
    offsets = np.arange(-half_width, half_width) + 0.5
    v = np.exp(-0.5 * (offsets / (0.5 * half_width)) ** 2) * np.sign(offsets)  # checkerboard_kernel's factor
    padded = np.pad(unit, ((half_width, half_width), (0, 0)))  # zero rows outside the track
    weighted = np.zeros_like(unit)
    for i, w in enumerate(v):
        weighted += w * padded[i : i + T]
    return (weighted**2).sum(1) / np.abs(v).sum() ** 2


def pick_peaks(novelty: np.ndarray, min_distance: int, window: int, delta: float, floor: float = 0.0) -> np.ndarray:
    """Indices of novelty peaks (T,): the maximum within +-min_distance, and above an adaptive
    threshold: the running median over `window` points, plus `delta` standard deviations of the
    whole curve, plus an absolute `floor`."""
    if len(novelty) == 0:
        return np.zeros(0, dtype=int)
    threshold = median_filter(novelty, size=max(3, window), mode="nearest") + delta * novelty.std() + floor
    local_max = maximum_filter1d(novelty, size=2 * max(1, min_distance) + 1, mode="nearest")
    peaks = np.flatnonzero((novelty == local_max) & (novelty > threshold))
    # Plateaus give equal neighbours: keep the first of peaks closer than min_distance.
    kept: list[int] = []
    for i in peaks:
        if not kept or i - kept[-1] >= max(1, min_distance):
            kept.append(int(i))
    return np.array(kept, dtype=int)


def track_novelty(x: np.ndarray, n_fft: int, hop: int, params: EstimateParams) -> np.ndarray:
    """Novelty of mono audio x (N,) per pooled point: the weighted mean of the timbre (weight 1),
    harmony (chroma_weight) and rhythm (rhythm_weight) curves. Returns (T // frames_per_point,)."""
    mag = stft_magnitude(x, n_fft, hop)  # (F, T): one STFT for every view
    half_width = max(1, int(round(params.kernel_seconds / (hop * params.frames_per_point / SAMPLE_RATE))))
    views = [
        (1.0, timbre_features, 0.0),
        (params.chroma_weight, chroma_features, params.chroma_floor),
        (params.rhythm_weight, rhythm_features, params.rhythm_floor),
    ]
    total = sum(w for w, _, _ in views)
    return (
        sum(w * novelty_curve(f(mag, n_fft, hop, params), half_width, floor) for w, f, floor in views if w > 0) / total
    )


def track_boundaries(x: np.ndarray, n_fft: int, hop: int, params: EstimateParams) -> np.ndarray:
    """Change points of mono audio x (N,) in seconds from its start, over the whole track: a
    boundary near a segment's edge is judged with the audio beyond the edge in view."""
    seconds_per_point = hop * params.frames_per_point / SAMPLE_RATE
    points = lambda seconds: max(1, int(round(seconds / seconds_per_point)))  # noqa: E731
    novelty = track_novelty(x, n_fft, hop, params)
    peaks = pick_peaks(
        novelty,
        points(params.min_part_seconds),
        points(params.threshold_seconds),
        params.threshold_delta,
        params.threshold_floor,
    )
    return peaks * seconds_per_point


def parts_between(boundaries: np.ndarray, start: float, end: float, min_part_seconds: float) -> tuple[int, list[float]]:
    """Contiguous parts of [start, end) given change points (seconds): 1 + the boundaries that
    leave at least min_part_seconds on both sides (the same rule as `true_parts`). Returns
    (parts, boundaries in seconds from `start`)."""
    inside = boundaries[(boundaries > start + min_part_seconds) & (boundaries < end - min_part_seconds)]
    return 1 + len(inside), [round(float(b - start), 3) for b in inside]


def nearest_slices(parts: int, allowed: Sequence[int]) -> int:
    """The allowed slice count nearest to `parts` (ties: the smaller)."""
    return min(sorted(allowed), key=lambda s: abs(s - parts))


# --------------------------------------------------------------------------- aggregation


@dataclass
class SliceEstimate:
    """Slice count estimate over all training segments.

    parts / slices: per segment, in `segments` order. median / iqr are over `slices`;
    histogram maps each allowed slice count to its number of segments.
    """

    segment_seconds: float
    allowed_slices: list[int]
    n_fft: int
    hop: int
    n_tracks: int
    segments: list[SegmentParts]
    parts: list[int]
    slices: list[int]
    median_parts: float
    median_slices: float
    slices_estimate: int  # the median mapped onto an allowed value: the number to try first
    iqr: tuple[float, float]  # 25th and 75th percentile of the per-segment slice counts
    histogram: dict[int, int]
    hypothesis: str = HYPOTHESIS
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready (for --json and for logging to the parent MLflow run)."""
        out = asdict(self)
        out["histogram"] = {str(k): v for k, v in self.histogram.items()}
        return out

    def summary(self) -> dict[str, float]:
        """Flat numbers for MLflow metrics/params."""
        return {
            "estimate_slices": self.slices_estimate,
            "estimate_median_slices": self.median_slices,
            "estimate_median_parts": self.median_parts,
            "estimate_iqr_low": self.iqr[0],
            "estimate_iqr_high": self.iqr[1],
            "estimate_segments": len(self.segments),
        }

    def format(self, width: int = 40) -> str:
        """A short table and a text histogram."""
        lines = [
            f"slice estimate from {len(self.segments)} segments of {self.segment_seconds:g} s "
            f"({self.n_tracks} training tracks, STFT {self.n_fft}/{self.hop})",
            f"  contiguous parts per segment: median {self.median_parts:g}",
            f"  slices per segment:           median {self.median_slices:g}, IQR {self.iqr[0]:g}-{self.iqr[1]:g}",
            f"  estimate:                     {self.slices_estimate} slices (allowed: {', '.join(map(str, self.allowed_slices))})",
            "",
            "slices  segments",
        ]
        top = max(self.histogram.values(), default=0) or 1
        for s, n in self.histogram.items():
            bar = "#" * int(round(width * n / top))
            lines.append(f"{s:>6}  {n:>8}  {bar}")
        lines += ["", f"hypothesis: {self.hypothesis}"]
        return "\n".join(lines)


def _check_allowed(allowed: Sequence[int], segment_samples: int, hop: int) -> list[int]:
    allowed = sorted(set(int(s) for s in allowed))
    if not allowed or allowed[0] < 1:
        raise ConfigError(f"estimate: slices must be positive integers, got {allowed!r}")
    frames = 1 + segment_samples // hop
    if allowed[-1] > frames:
        raise ConfigError(f"estimate: slices={allowed[-1]} exceeds the {frames} STFT frames of a segment at hop {hop}")
    return allowed


def track_segments(n_samples: int, segment_samples: int) -> list[int]:
    """Starts of consecutive segments covering a track; a tail shorter than a segment is skipped,
    a track shorter than one segment gives one short segment."""
    if n_samples <= segment_samples:
        return [0]
    return list(range(0, n_samples - segment_samples + 1, segment_samples))


def true_parts(sections: dict, start: float, end: float, min_part_seconds: float) -> int:
    """Sections of sections.json that overlap [start, end) by at least min_part_seconds (at least 1)."""
    count = 0
    for sec in sections["sections"]:
        overlap = min(end, sec["end"]) - max(start, sec["start"])
        count += overlap >= min_part_seconds - 1e-9
    return max(1, count)


def _tracks_of(splits_or_tracks) -> list:
    tracks = getattr(splits_or_tracks, "train", splits_or_tracks)
    return list(tracks)


def estimate_slices(
    splits_or_tracks,
    segment_seconds: float = 6.0,
    allowed_slices: Sequence[int] = PAPER_SLICES,
    n_fft: int = 4096,
    hop: int = 1024,
    max_tracks: int | None = None,
    params: EstimateParams | None = None,
) -> SliceEstimate:
    """Estimate the slice count from training mixtures.

    splits_or_tracks: a `Splits` (its `.train` is used: never validation or test data) or a list of
    `Track`. Each mixture (C, N) is averaged to mono and cut into consecutive segments of
    `segment_seconds`. Synthetic tracks also get their true part count (from sections.json).
    """
    params = params or EstimateParams()
    params.check()
    if not segment_seconds > 0:
        raise ConfigError(f"estimate: segment_seconds must be > 0, got {segment_seconds!r}")
    if n_fft < 2 or hop < 1 or hop > n_fft:
        raise ConfigError(f"estimate: need n_fft >= 2 and 1 <= hop <= n_fft, got n_fft={n_fft}, hop={hop}")
    seg = int(round(segment_seconds * SAMPLE_RATE))
    allowed = _check_allowed(allowed_slices, seg, hop)
    tracks = _tracks_of(splits_or_tracks)[: max_tracks or None]
    if not tracks:
        raise DataError("estimate: no training tracks to estimate from")
    segments = [s for track in tracks for s in _track_parts(track, seg, allowed, n_fft, hop, params)]
    return _aggregate(segments, len(tracks), segment_seconds, allowed, n_fft, hop, params)


def _track_parts(
    track, seg: int, allowed: list[int], n_fft: int, hop: int, params: EstimateParams
) -> Iterable[SegmentParts]:
    mono = np.asarray(track.audio()[0]).mean(0)  # mixture (C, N) -> (N,)
    sections = track.sections() if hasattr(track, "sections") else None
    changes = track_boundaries(mono, n_fft, hop, params) if params.method == "novelty" else None
    for start in track_segments(len(mono), seg):
        x = mono[start : start + seg]
        t0, t1 = start / SAMPLE_RATE, (start + len(x)) / SAMPLE_RATE
        if changes is None:
            parts, clusters, bounds = segment_parts(x, n_fft, hop, params)
        else:
            (parts, bounds), clusters = parts_between(changes, t0, t1, params.min_part_seconds), None
        truth = true_parts(sections, t0, t1, params.min_part_seconds) if sections else None
        yield SegmentParts(track.name, round(t0, 3), parts, nearest_slices(parts, allowed), clusters, bounds, truth)
    log.debug("estimated %s", track.name)


def _aggregate(
    segments: list[SegmentParts],
    n_tracks: int,
    segment_seconds: float,
    allowed: list[int],
    n_fft: int,
    hop: int,
    params: EstimateParams,
) -> SliceEstimate:
    parts = [s.parts for s in segments]
    slices = [s.slices for s in segments]
    counts = Counter(slices)
    median_slices = float(np.median(slices))
    return SliceEstimate(
        segment_seconds=segment_seconds,
        allowed_slices=allowed,
        n_fft=n_fft,
        hop=hop,
        n_tracks=n_tracks,
        segments=segments,
        parts=parts,
        slices=slices,
        median_parts=float(np.median(parts)),
        median_slices=median_slices,
        slices_estimate=nearest_slices(int(np.ceil(median_slices - 0.5)), allowed),
        iqr=(float(np.percentile(slices, 25)), float(np.percentile(slices, 75))),
        histogram={s: counts.get(s, 0) for s in allowed},
        params=asdict(params),
    )


# --------------------------------------------------------------------------- validation


def recovery_rate(
    root: str | Path,
    segment_seconds: float = 6.0,
    allowed_slices: Sequence[int] = PAPER_SLICES,
    n_fft: int = 4096,
    hop: int = 1024,
    max_tracks: int | None = None,
    params: EstimateParams | None = None,
) -> dict:
    """How often the estimate finds the true number of contiguous parts, on a synthetic dataset.

    Truth per segment: the sections of sections.json overlapping it by at least min_part_seconds.
    Returns {"segments", "exact" (share with parts == truth), "within_one", "slices_exact" (share
    whose mapped slice count equals the truth's), "mean_abs_error", "confusion" {truth: {found: n}},
    "estimate": SliceEstimate}.
    """
    splits = load_splits(DataConfig(root=Path(root)))
    est = estimate_slices(splits, segment_seconds, allowed_slices, n_fft, hop, max_tracks, params)
    scored = [s for s in est.segments if s.true_parts is not None]
    if not scored:
        raise DataError(f"{root}: no sections.json beside the training tracks (not a synthetic dataset?)")
    truth = np.array([s.true_parts for s in scored])
    found = np.array([s.parts for s in scored])
    slice_truth = np.array([nearest_slices(int(t), est.allowed_slices) for t in truth])
    confusion: dict[int, dict[int, int]] = {}
    for t, f in zip(truth.tolist(), found.tolist()):
        confusion.setdefault(t, Counter())[f] += 1
    return {
        "segments": len(scored),
        "exact": float(np.mean(truth == found)),
        "within_one": float(np.mean(np.abs(truth - found) <= 1)),
        "slices_exact": float(np.mean(slice_truth == np.array([s.slices for s in scored]))),
        "mean_abs_error": float(np.mean(np.abs(truth - found))),
        "confusion": {t: dict(sorted(c.items())) for t, c in sorted(confusion.items())},
        "estimate": est,
    }
