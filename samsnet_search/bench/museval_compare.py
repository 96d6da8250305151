"""The fast BSSEval v4 (`metrics.bsseval`) beside museval on one synthetic track: time and differences.

Used by `bench --only sdr` and by the tests that hold the fast path to museval. The track
is synthetic (made here, never downloaded) and has a silent second, so museval's NaN-frame
rule is exercised too.
"""

from __future__ import annotations

import math
import os
import time

import museval
import numpy as np
import torch

from ..config import SAMPLE_RATE
from ..metrics.bsseval import LAST_TIMINGS, METRICS, bss_eval_v4, track_scores


def synthetic_sources(
    seconds: float, seed: int, nsrc: int = 4, nchan: int = 2, rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, np.ndarray]:
    """Music-like references and imperfect estimates, (nsrc, nsamples, nchan) float64 each.

    References: coloured noise with tones and an amplitude envelope per source, a different
    stereo balance per source, and source 0 silent over its second second (museval NaN frame
    when long enough). Estimates: each reference scaled and slightly delayed, leakage from
    the next source, and white noise (artifacts).
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    refs = np.empty((nsrc, n, nchan))
    for j in range(nsrc):
        noise = np.convolve(rng.standard_normal(n + 63), rng.standard_normal(64) / 8, mode="valid")
        tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in rng.uniform(60, 4000, 3))
        env = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t))
        mono = 0.1 * env * (noise + 0.5 * tones)
        pan = rng.uniform(0.2, 0.8, nchan)
        refs[j] = mono[:, None] * pan[None, :] + 0.01 * rng.standard_normal((n, nchan))
    if n > 2 * rate:
        refs[0, rate : 2 * rate] = 0.0
    ests = np.empty_like(refs)
    for j in range(nsrc):
        shifted = np.roll(refs[j], int(rng.integers(0, 20)), axis=0)
        ests[j] = rng.uniform(0.7, 1.1) * shifted + 0.1 * refs[(j + 1) % nsrc]
        ests[j] += 0.005 * rng.standard_normal((n, nchan))
    return refs, ests


def compare_with_museval(seconds: float, seed: int = 0, nsrc: int = 4, repeats: int = 3) -> dict:
    """Time museval.evaluate (once) and bss_eval_v4 (`repeats` times) on the same synthetic
    stereo track; compare them.

    Returns seconds of audio, museval's wall time, the fast path's median wall time
    (`fast_s`) and all of them (`fast_runs_s`), their ratio, the fast path's time per stage in
    its median run (`fast_stages_s`), the 1-minute load average before and after (timings
    under load mean little), the largest absolute per-frame and per-target-median difference
    per metric (dB, NaN and infinite frames excluded) and whether the NaN frames coincide.
    """
    refs, ests = synthetic_sources(seconds, seed, nsrc=nsrc)
    bss_eval_v4(refs[:, :8192], ests[:, :8192], win=4096, hop=4096)  # JIT-compile (or load) the kernels untimed
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    ref_out = dict(zip(METRICS, museval.evaluate(refs, ests, win=SAMPLE_RATE, hop=SAMPLE_RATE)))
    t1 = time.perf_counter()
    runs = []  # (wall seconds, stages)
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fast_out = bss_eval_v4(refs, ests, win=SAMPLE_RATE, hop=SAMPLE_RATE)
        runs.append((time.perf_counter() - start, dict(LAST_TIMINGS)))
    fast_s, stages = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    result: dict = {
        "seconds": seconds,
        "targets": nsrc,
        "torch_threads": torch.get_num_threads(),
        "museval_s": t1 - t0,
        "fast_s": fast_s,
        "fast_runs_s": [wall for wall, _ in runs],
        "speedup": (t1 - t0) / fast_s,
        "fast_stages_s": stages,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    targets = [f"src{j}" for j in range(refs.shape[0])]
    for m in METRICS:
        a, b = ref_out[m], fast_out[m]
        result[f"{m}_nan_match"] = bool(np.array_equal(np.isnan(a), np.isnan(b)))
        both = np.isfinite(a) & np.isfinite(b)
        result[f"{m}_max_frame_diff"] = float(np.max(np.abs(a[both] - b[both]), initial=0.0))
        med_a, med_b = track_scores(a, targets), track_scores(b, targets)
        result[f"{m}_max_median_diff"] = max(
            0.0 if math.isnan(med_a[t]) and math.isnan(med_b[t]) else abs(med_a[t] - med_b[t]) for t in targets
        )
    return result
