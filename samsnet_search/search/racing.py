"""Racing over slice values on paired evidence: buy seeds only where the answer is still open.

Every model of the selection is scored on the same validation tracks and targets, so two slice
values are compared track by track (paired), not as two independent clouds of scores. The
statistic is the selection's: median over (seed, track) pairs per target, then the mean of the
targets (`pair_statistic`, the selection table's too). Its uncertainty comes from a two-level bootstrap: the tracks are
resampled once per replicate and shared by every contender (the pairing), each contender's seeds
independently (seed-to-seed variance is not shared).

One step of the race (`decide`) names the leader and, for each other slice value, the paired
interval of the leader's advantage over it:

- `worse`: the interval's lower bound is above 0; the leader clears it;
- `tied`: the whole interval lies inside +-tolerance; a practical tie (the fewer slices win ties);
- `open`: neither. The leader and the open contenders get one more seed each, up to `max_seeds`.

A contender is decided only once it and the leader have `min_seeds` seeds: one seed says nothing
about seed-to-seed variance. The race stops when nothing is open (`resolved`) or when every open
contender and the leader have `max_seeds` seeds (`budget`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

TOLERANCE_DB = 0.1  # a practical tie: differences this small do not decide a slice count
CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass
class Gap:
    """The leader's advantage over one slice value (dB, the statistic's avg)."""

    slices: int
    point: float
    low: float
    high: float
    state: str  # "worse" | "tied" | "open"


@dataclass
class Step:
    leader: int
    gaps: list[Gap]
    buy: list[int] = field(default_factory=list)  # slice values that get one more seed
    stop: str | None = None  # "resolved" | "budget" when the race is over

    def why(self) -> str:
        """One line a report can print."""
        states = ", ".join(f"{g.slices}: {g.state} ({g.low:+.2f}..{g.high:+.2f} dB)" for g in self.gaps)
        what = f"stopped ({self.stop})" if self.stop else f"one more seed for slices {self.buy}"
        return f"leader slices={self.leader}; vs {states or 'nothing'}; {what}"


def pair_statistic(values: np.ndarray) -> np.ndarray:
    """values (..., P, S) SDR per pair and target -> (..., S + 1): median over pairs per target, then avg.

    avg is the mean of the target medians, as the paper (and `median_over_tracks`) aggregates.
    NaN pairs (a silent reference) are skipped. The selection's table uses it too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample of one target
        med = np.nanmedian(values, axis=-2)  # (..., S)
    return np.concatenate([med, med.mean(axis=-1, keepdims=True)], axis=-1)


def statistic(scores: np.ndarray) -> np.ndarray:
    """scores (..., seeds, tracks, targets) -> (...): `pair_statistic`'s avg over the (seed, track) pairs."""
    return pair_statistic(scores.reshape(*scores.shape[:-3], -1, scores.shape[-1]))[..., -1]


def decide(
    evidence: dict[int, np.ndarray],
    *,
    tolerance_db: float = TOLERANCE_DB,
    min_seeds: int = 2,
    max_seeds: int = 3,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Step:
    """One step of the race. evidence: slices -> scores (seeds, tracks, targets), the same tracks
    and targets in the same order for every slice value."""
    shapes = {v.shape[1:] for v in evidence.values()}
    if not evidence or len(shapes) != 1:
        raise ValueError(f"evidence must share its (tracks, targets) shape; got {sorted(shapes)}")
    rng = np.random.default_rng(seed)
    tracks = next(iter(shapes))[0]
    track_idx = rng.integers(0, tracks, size=(resamples, tracks))
    point = {s: float(statistic(v)) for s, v in evidence.items()}
    leader = max(point, key=lambda s: (np.nan_to_num(point[s], nan=-np.inf), -s))
    boot = {s: _resampled(v, track_idx, rng) for s, v in evidence.items()}
    alpha = (1 - confidence) / 2
    gaps = []
    for s in sorted(evidence):
        if s == leader:
            continue
        diff = boot[leader] - boot[s]
        low, high = np.nanquantile(diff, [alpha, 1 - alpha])
        decided = min(len(evidence[s]), len(evidence[leader])) >= min_seeds
        state = "open"
        if decided and low > 0:
            state = "worse"
        elif decided and -tolerance_db < low and high < tolerance_db:
            state = "tied"
        gaps.append(Gap(s, point[leader] - point[s], float(low), float(high), state))
    step = Step(leader, gaps)
    open_values = [g.slices for g in gaps if g.state == "open"]
    if not open_values:
        step.stop = "resolved"
        return step
    step.buy = [s for s in [leader, *open_values] if len(evidence[s]) < max_seeds]
    if not step.buy:
        step.stop = "budget"
    return step


def _resampled(scores: np.ndarray, track_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The statistic over bootstrap replicates: shared track indices, this contender's own seeds."""
    resamples, seeds = len(track_idx), scores.shape[0]
    seed_idx = rng.integers(0, seeds, size=(resamples, seeds))
    picked = scores[seed_idx[:, :, None], track_idx[:, None, :]]  # (R, seeds, tracks, targets)
    return statistic(picked)
