"""BSSEval v4 with museval's semantics, fast and exact: SDR, ISR, SIR, SAR per 1 s frame.

`bss_eval_v4(refs, ests, win, hop)` returns what ``museval.evaluate`` returns (museval 0.4.1:
projection filters of 512 taps computed once on the whole signal, per-frame metrics, a frame
NaN where any source is silent); `sdr_v4` the SDR alone, which needs no projection;
`track_scores` and `median_over_tracks` aggregate as museval's stores do (median over frames,
then over tracks). Inputs are (nsrc, nsamples, nchan) numpy arrays or torch tensors; CUDA
tensors are evaluated on their device in float64.

Why it is fast (the derivation and the measurements are in docs/metrics.md):

- the lagged correlations of G and D are accumulated block by block in the frequency
  domain, with an exact correction for the sample pairs straddling a block boundary;
- one Cholesky solve with every estimate as a right-hand side; an exactly singular G falls
  back to a pivoted Cholesky and the minimum-norm least-squares solution, museval's own
  ``lstsq`` fallback, in about a Cholesky's time (with a warning naming the rank);
- per-frame energies come from Parseval's theorem: no inverse FFT per frame;
- on CPU, numpy FFTs on strided views and single-threaded numba kernels, spread over
  ``torch.get_num_threads()`` Python threads pulling work items from a queue (results do
  not depend on the thread count). The kernels stay single-threaded because numba's
  OpenMP layer resets the process-wide OpenMP thread count, which changed torch's setting
  inside 1-thread Ray workers, and it is not fork-safe.

Where museval itself is unstable (AAC stems decoded straight to float leave G nearly
singular, so its SIR and SAR move by dB under rounding) no reimplementation can match it:
the data readers decode to 16-bit PCM as ``musdb`` does, where the two agree to about 1e-7 dB.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple, TypeVar

import numba
import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve, lapack, solve_triangular

from ..config import SAMPLE_RATE

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("SDR", "ISR", "SIR", "SAR")
FILTERS_LEN = 512  # museval's distortion-filter length (BSSEval v3/v4 default)
_EPS = float(np.finfo(float).eps)  # museval adds eps * I to G before solving
_CHUNK_BYTES = 128 * 2**20  # working set of one batch of blocks/frames (bounds memory)
_F_CHUNK = 64  # frequency bins per numba work item: a chunk's spectra and filters stay in cache
# the numba kernels may reassociate sums (vectorized reductions) and fuse multiply-adds: the
# results move by rounding only (about 1e-16 relative); nothing there is NaN or infinite
_FAST = {"reassoc", "contract", "nsz"}
# "numba": fused kernels on CPU; "torch": the CUDA code path on CPU too (tests use it to check that path)
_CPU_KERNELS: Literal["numba", "torch"] = "numba"

ArrayLike = np.ndarray | torch.Tensor
T = TypeVar("T")
OnSilent = Literal["raise", "nan"]
# seconds spent per stage by the latest bss_eval_v4 call (scan, correlations, solve, frames): for benchmarks
LAST_TIMINGS: dict[str, float] = {}


def _use_numba(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and _CPU_KERNELS == "numba"


# ----------------------------------------------------------------------------- inputs


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Array or tensor -> tensor on its own device (numpy -> CPU, no copy), dtype unchanged."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _prepare(references: ArrayLike, estimates: ArrayLike, padding: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; returns both as contiguous float64 tensors (nsrc, nsamples, nchan)."""
    refs, ests = _as_tensor(references, "references"), _as_tensor(estimates, "estimates")
    for name, x in (("references", refs), ("estimates", ests)):
        if x.ndim != 3:
            raise ValueError(f"{name} must be shaped (nsrc, nsamples, nchan), got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    if refs.shape[0] != ests.shape[0] or refs.shape[2] != ests.shape[2]:
        raise ValueError(
            f"references shape {tuple(refs.shape)} and estimates shape {tuple(ests.shape)} differ in "
            "nsrc or nchan (both are (nsrc, nsamples, nchan))"
        )
    if refs.shape[1] != ests.shape[1]:
        if not padding:
            raise ValueError(
                f"references shape {tuple(refs.shape)} and estimates shape {tuple(ests.shape)} differ in "
                "nsamples; pass padding=True to zero-pad/truncate the estimates like museval.evaluate"
            )
        ests = _pad_or_truncate(ests, refs.shape[1])
    if ests.device != refs.device:
        raise ValueError(f"references are on {refs.device} but estimates on {ests.device}")
    # float64 C-contiguous from here on (no copy for such inputs): the kernels compile once.
    # museval tests silence on channel sums in the input dtype; for up to two channels the
    # float64 test is identical (x + y == 0 exactly when x == -y in any precision).
    return refs.to(torch.float64).contiguous(), ests.to(torch.float64).contiguous()


def _pad_or_truncate(ests: torch.Tensor, nsamples: int) -> torch.Tensor:
    """museval.pad_or_truncate: zero-pad or cut the estimates at the end to `nsamples`."""
    if ests.shape[1] >= nsamples:
        return ests[:, :nsamples]
    return torch.nn.functional.pad(ests, (0, 0, 0, nsamples - ests.shape[1]))


def _check_frames(win: int, hop: int) -> None:
    for name, v in (("win", win), ("hop", hop)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive number of samples, got {v!r}")


def _frame_layout(nsamples: int, win: int, hop: int) -> tuple[int, int]:
    """museval's Framing: (nframes, frame length); frame t starts at t * hop."""
    if win < nsamples:
        return (nsamples - win + hop) // hop, win
    return 1, nsamples


def _check_on_silent(on_silent: OnSilent) -> None:
    if on_silent not in ("raise", "nan"):
        raise ValueError(f"on_silent must be 'raise' or 'nan', got {on_silent!r}")


def _any_silent_source(scan: "_Scan", on_silent: OnSilent) -> bool:
    """Check values: NaN/inf is an error; a silent source raises or (on_silent="nan") returns True.

    museval's silence test: a source's channel sum is exactly zero at every sample.
    """
    found = []
    for name, active, finite in (
        ("reference", scan.ref_active, scan.ref_finite),
        ("estimate", scan.est_active, scan.est_finite),
    ):
        if not finite:
            raise ValueError(f"{name}s contain NaN or infinite samples")
        found += [f"{name} {j}" for j in torch.nonzero(~active).flatten().tolist()]
    if found and on_silent == "raise":
        raise ValueError(
            f"silent (all-zero) sources: {', '.join(found)}; museval refuses these. "
            "Pass on_silent='nan' to get NaN for every frame instead"
        )
    return bool(found)


def _source_activity(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """x: (nsrc, nsamples, nchan) -> ((nsrc,) bool: some channel sum is non-zero, all samples finite)."""
    active = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    finite = True
    step = max(1, _CHUNK_BYTES // (x.shape[0] * x.shape[2] * 8))
    for i in range(0, x.shape[1], step):
        piece = x[:, i : i + step]
        active |= (piece.sum(dim=2) != 0).any(dim=1)
        finite = finite and bool(torch.isfinite(piece.sum(dtype=torch.float64)))
    return active, finite


def _segments_into(out: torch.Tensor, x: torch.Tensor, first: int, step: int) -> None:
    """Fill out (count, nsrc*nchan, length) with segments of x starting at first + i*step, zero past the end.

    x: (nsrc, nsamples, nchan); row j*nchan + c of each segment is source j, channel c.
    """
    nsrc, nsamples, nchan = x.shape
    count, length = out.shape[0], out.shape[2]
    end = first + (count - 1) * step + length
    piece = x[:, first : min(end, nsamples)]
    if end > nsamples:
        piece = torch.nn.functional.pad(piece, (0, 0, 0, end - nsamples))
    seg = piece.unfold(1, length, step)  # (nsrc, count, nchan, length)
    out.view(count, nsrc, nchan, length).copy_(seg.transpose(0, 1))


def _stacked_segments(
    refs: torch.Tensor, ests: torch.Tensor, first: int, step: int, count: int, length: int
) -> torch.Tensor:
    """(count, 2P, length) float64: reference channels then estimate channels of each segment."""
    P = refs.shape[0] * refs.shape[2]
    z = torch.empty((count, 2 * P, length), dtype=torch.float64, device=refs.device)
    _segments_into(z[:, :P], refs, first, step)
    _segments_into(z[:, P:], ests, first, step)
    return z


def _segment_spectra(
    refs: torch.Tensor, ests: torch.Tensor, step: int, count: int, length: int, n_fft: int
) -> Iterator[torch.Tensor]:
    """Spectra of the segments [i*step, i*step + length), i < count, zero-padded to n_fft.

    Yields them batch by batch as (n, 2P, n_fft//2+1) complex128, reference channels then
    estimate channels (the torch path; the CPU path is _cpu_spectra_into).
    """
    P, nbins = refs.shape[0] * refs.shape[2], n_fft // 2 + 1
    batches = _batches(count, 2 * P * (n_fft * 8 + nbins * 16))
    cap = batches[0].stop - batches[0].start
    z = torch.zeros((cap, 2 * P, n_fft), dtype=torch.float64, device=refs.device)  # tail stays zero
    for sl in batches:
        n = sl.stop - sl.start
        _segments_into(z[:n, :P, :length], refs, sl.start * step, step)
        _segments_into(z[:n, P:, :length], ests, sl.start * step, step)
        yield torch.fft.rfft(z[:n], n=n_fft, dim=-1)


def _batches(total: int, per_item_bytes: int) -> list[slice]:
    """Slices over `total` items so that one batch holds about _CHUNK_BYTES."""
    step = max(1, _CHUNK_BYTES // max(per_item_bytes, 1))
    return [slice(i, min(i + step, total)) for i in range(0, total, step)]


def _fft_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n with b <= 2 and c <= 1: mostly factors of two, fast for
    every FFT backend (docs/metrics.md has the timing)."""
    best = 1 << (n - 1).bit_length()
    for odd in (3, 5, 9, 15, 45):
        m = odd
        while m < n:
            m *= 2
        best = min(best, m)
    return best


def _rfft(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Real FFT along the last axis, zero-padded to n_fft: (..., n) -> (..., n_fft//2+1).

    On CPU numpy's pocketfft (about twice torch's speed on these sizes).
    """
    if _use_numba(x):
        return torch.from_numpy(np.fft.rfft(x.numpy(), n=n_fft, axis=-1))
    return torch.fft.rfft(x, n=n_fft, dim=-1)


def _parseval_weights(n_fft: int, device: torch.device) -> torch.Tensor:
    """(n_fft//2+1,) weights w with sum(x^2) = sum(w * |rfft(x, n_fft)|^2) for real x."""
    w = torch.full((n_fft // 2 + 1,), 2.0 / n_fft, dtype=torch.float64, device=device)
    w[0] = 1.0 / n_fft
    if n_fft % 2 == 0:
        w[-1] = 1.0 / n_fft
    return w


def _db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """museval's _safe_db: 10 log10(num / den), +inf where den == 0."""
    out = 10.0 * torch.log10(num / den)
    return torch.where(den == 0, torch.full_like(out, math.inf), out)


# ----------------------------------------------------------------------------- SDR only


def sdr_v4(
    references: ArrayLike,
    estimates: ArrayLike,
    win: int = SAMPLE_RATE,
    hop: int = SAMPLE_RATE,
    *,
    padding: bool = False,
    on_silent: OnSilent = "raise",
) -> np.ndarray:
    """museval's v4 SDR per frame, without the projections (it needs none).

    references, estimates: (nsrc, nsamples, nchan) numpy arrays or torch tensors (any
    device). Returns (nsrc, nframes) float64; NaN on frames where any source is silent.
    Equal to ``museval.evaluate(references, estimates, win, hop)[0]`` up to rounding.
    padding and on_silent as in `bss_eval_v4`.
    """
    _check_frames(win, hop)
    _check_on_silent(on_silent)
    refs, ests = _prepare(references, estimates, padding)
    nframes, wlen = _frame_layout(refs.shape[1], win, hop)
    scan = _scan(refs, ests, nframes, wlen, hop)
    if _any_silent_source(scan, on_silent):
        return np.full((refs.shape[0], nframes), np.nan)
    return _sdr(scan.num, scan.den, scan.silent).cpu().numpy()


def _sdr(num: torch.Tensor, den: torch.Tensor, silent: torch.Tensor) -> torch.Tensor:
    """(nsrc, nframes) SDR in dB from |s|^2 and |e - s|^2, NaN on silent frames."""
    sdr = _db(num, den)
    sdr[:, silent] = math.nan
    return sdr


class _Scan(NamedTuple):
    """One pass over the signals: per frame |s|^2 and |e - s|^2 over all channels ((nsrc,
    nframes) float64 each), museval's NaN frames ((nframes,) bool: some reference or estimate
    sums to zero over channels at every sample of the frame), and per whole source whether
    it is active ((nsrc,) bool) and all its samples finite."""

    num: torch.Tensor
    den: torch.Tensor
    silent: torch.Tensor
    ref_active: torch.Tensor
    est_active: torch.Tensor
    ref_finite: bool
    est_finite: bool


def _scan(refs: torch.Tensor, ests: torch.Tensor, nframes: int, wlen: int, hop: int) -> _Scan:
    """Frame terms and whole-signal checks; on CPU one fused numba pass, frames split over threads."""
    if _use_numba(refs):
        return _cpu_scan(refs.numpy(), ests.numpy(), nframes, wlen, hop)
    (ref_active, ref_finite), (est_active, est_finite) = _source_activity(refs), _source_activity(ests)
    return _Scan(*_frame_sdr_terms(refs, ests, nframes, wlen, hop), ref_active, est_active, ref_finite, est_finite)


def _frame_sdr_terms(
    refs: torch.Tensor, ests: torch.Tensor, nframes: int, wlen: int, hop: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch: per frame |s|^2 and |e - s|^2 (nsrc, nframes) and the (nframes,) NaN frames, see _Scan."""
    nums, dens, silent = [], [], []
    for sl in _batches(nframes, 3 * refs.shape[0] * wlen * refs.shape[2] * 8):
        end = (sl.stop - 1) * hop + wlen
        s = refs[:, sl.start * hop : end].unfold(1, wlen, hop)  # (nsrc, n, nchan, W)
        e = ests[:, sl.start * hop : end].unfold(1, wlen, hop)
        silent.append(((s.sum(dim=2) == 0).all(dim=2) | (e.sum(dim=2) == 0).all(dim=2)).any(dim=0))
        s, e = s.to(torch.float64), e.to(torch.float64)
        nums.append(torch.linalg.vector_norm(s, dim=(2, 3)).square())
        dens.append(torch.linalg.vector_norm(e - s, dim=(2, 3)).square())
    return torch.cat(nums, dim=1), torch.cat(dens, dim=1), torch.cat(silent)


# ----------------------------------------------------------------------------- full BSSEval v4


def bss_eval_v4(
    references: ArrayLike,
    estimates: ArrayLike,
    win: int = SAMPLE_RATE,
    hop: int = SAMPLE_RATE,
    *,
    padding: bool = False,
    on_silent: OnSilent = "raise",
    filters_len: int = FILTERS_LEN,
) -> dict[str, np.ndarray]:
    """BSSEval v4 images metrics per frame, as ``museval.evaluate(references, estimates, win, hop)``.

    references, estimates: (nsrc, nsamples, nchan) numpy arrays or torch tensors; tensors
    on CUDA are evaluated on that device (always in float64). padding: zero-pad/truncate the
    estimates to the references' length (museval.evaluate does), else a length mismatch is a
    ValueError. on_silent: what to do when a whole source is all zeros: "raise" (museval) or
    "nan" (every frame NaN, the per-frame rule extended).
    Returns {"SDR", "ISR", "SIR", "SAR"} -> (nsrc, nframes) float64 numpy arrays.
    """
    _check_frames(win, hop)
    if isinstance(filters_len, bool) or not isinstance(filters_len, (int, np.integer)) or filters_len < 1:
        raise ValueError(f"filters_len must be a positive integer, got {filters_len!r}")
    _check_on_silent(on_silent)
    refs, ests = _prepare(references, estimates, padding)
    nsrc, nsamples, nchan = refs.shape
    nframes, wlen = _frame_layout(nsamples, win, hop)
    t0 = time.perf_counter()
    scan = _scan(refs, ests, nframes, wlen, hop)
    if _any_silent_source(scan, on_silent):
        return {m: np.full((nsrc, nframes), np.nan) for m in METRICS}
    L = filters_len
    # correlation blocks: the frames when they tile the signal, else about 32k samples
    block = wlen if (hop == wlen and wlen >= 2 * L) else _fft_len(max(2**15, 8 * L)) - L + 1
    t1 = time.perf_counter()
    r_xx, r_ex = _lagged_correlations(refs, ests, block, L)
    t2 = time.perf_counter()
    c_all, c_own = _projection_filters(r_xx, r_ex, nsrc, nchan, L)
    t3 = time.perf_counter()
    # the frame spectra are computed again rather than kept: 1 GB for 3 minutes of 4 stereo targets
    out = _frame_metrics(refs, ests, hop, nframes, wlen, c_all, c_own, scan.num)
    out["SDR"] = _sdr(scan.num, scan.den, scan.silent)
    for m in ("ISR", "SIR", "SAR"):
        out[m][:, scan.silent] = math.nan
    timings = {"scan": t1 - t0, "correlations": t2 - t1, "solve": t3 - t2, "frames": time.perf_counter() - t3}
    LAST_TIMINGS.clear()
    LAST_TIMINGS.update(timings)
    logger.debug("bss_eval_v4: %d x %d samples x %d ch, %d frames: %s", nsrc, nsamples, nchan, nframes, timings)
    return {m: out[m].cpu().numpy() for m in METRICS}


def _lagged_correlations(
    refs: torch.Tensor, ests: torch.Tensor, block: int, filters_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact full-signal correlations at lags 0..L-1, L = filters_len.

    refs, ests: (nsrc, nsamples, nchan). With x the P = nsrc*nchan reference channels and e
    the estimate channels, returns r_xx (P, P, L) and r_ex (P, P, L) with
    r_zx[a, p, k] = sum_n z_a[n + k] x_p[n].

    The signal is cut into blocks of `block` samples; within-block pairs come from the block
    FFTs (n_fft >= block + L - 1, so no wrap-around), with cross-spectra summed over blocks
    before one inverse FFT per pair; pairs straddling a block boundary from short FFTs.
    """
    L, P = filters_len, refs.shape[0] * refs.shape[2]
    nblocks = -(-refs.shape[1] // block)
    n_fft = _fft_len(block + L - 1)
    if _use_numba(refs):
        acc = torch.from_numpy(_cpu_block_cross_spectra(refs.numpy(), ests.numpy(), block, nblocks, n_fft))
    else:
        acc = torch.zeros((n_fft // 2 + 1, 2 * P, P), dtype=torch.complex128, device=refs.device)
        for zf in _segment_spectra(refs, ests, block, nblocks, block, n_fft):  # (n, 2P, F)
            _accumulate_cross_spectra(zf, zf, acc)
    r = torch.fft.irfft(acc, n=n_fft, dim=0)[:L].permute(1, 2, 0)  # (2P, P, L)
    if nblocks > 1 and L > 1:  # at lag 0 no pair straddles a boundary
        r = r + _boundary_correlations(refs, ests, block, nblocks, L)
    return r[:P].contiguous(), r[P:].contiguous()


def _boundary_correlations(refs: torch.Tensor, ests: torch.Tensor, block: int, nblocks: int, L: int) -> torch.Tensor:
    """(2P, P, L): the terms z_a[n + k] x_p[n] with n and n + k on either side of a block boundary."""
    P, n_fft = refs.shape[0] * refs.shape[2], 2 * L
    acc = torch.zeros((L + 1, 2 * P, P), dtype=torch.complex128, device=refs.device)
    for sl in _batches(nblocks - 1, 2 * P * (L + 1) * 16 * 4):
        # 2L-2 samples around each boundary b*block: L-1 before it, L-1 after it
        first = (sl.start + 1) * block - (L - 1)
        seg = _stacked_segments(refs, ests, first, block, sl.stop - sl.start, 2 * L - 2)  # (n, 2P, 2L-2)
        after = seg.clone()
        after[..., : L - 1] = 0
        before = seg  # only its reference rows are used
        before[..., L - 1 :] = 0
        _accumulate_cross_spectra(_rfft(after, n_fft), _rfft(before, n_fft), acc)
    return torch.fft.irfft(acc, n=n_fft, dim=0)[:L].permute(1, 2, 0)


def _accumulate_cross_spectra(zf: torch.Tensor, yf: torch.Tensor, acc: torch.Tensor) -> None:
    """acc[f, a, p] += sum_b zf[b, a, f] * conj(yf[b, p, f]) for p < P.

    zf: (nb, R, F), yf: (nb, >= P, F) (only its first P rows are used), acc: (F, R, P).
    """
    P = acc.shape[2]
    acc += zf.permute(2, 1, 0) @ yf[:, :P].permute(2, 0, 1).conj()


def _projection_filters(
    r_xx: torch.Tensor, r_ex: torch.Tensor, nsrc: int, nchan: int, filters_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares distortion filters, museval's C and Cj.

    r_xx, r_ex: (P, P, L) from _lagged_correlations. Returns
    c_all: (P, L, Q), estimate q projected on all reference channels p with delays 0..L-1;
    c_own: (nsrc, nchan, L, nchan), estimate (j, c) projected on reference j's channels only.
    """
    if _use_numba(r_xx):
        return _cpu_projection_filters(r_xx.numpy(), r_ex.numpy(), nsrc, nchan)
    L, P = filters_len, nsrc * nchan
    # G[(p,a),(q,b)] = <x_p delayed a, x_q delayed b> = r_xx[q,p,a-b] if a >= b else r_xx[p,q,b-a]:
    # full[p, q, L-1+d] holds the value for a - b = d, then each (p, q) block is a Toeplitz window
    full = torch.cat([r_xx.flip(-1)[..., :-1], r_xx.transpose(0, 1)], dim=2)  # (P, P, 2L-1)
    windows = full.flip(-1).unfold(2, L, 1).flip(2)  # (P, P, L, L): [p, q, a, b] = full[p, q, L-1+a-b]
    gram = windows.permute(0, 2, 1, 3).reshape(P * L, P * L)
    # D[(p,a), q] = <x_p delayed a, e_q> = r_ex[q, p, a]
    rhs = r_ex.permute(1, 2, 0).reshape(P * L, P)
    gram.diagonal().add_(_EPS)
    c_all = _solve_spd(gram, rhs).view(P, L, P)
    blocks = gram.view(nsrc, nchan * L, nsrc, nchan * L).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    own_rhs = rhs.view(nsrc, nchan * L, nsrc, nchan).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    c_own = _solve_spd(blocks.contiguous(), own_rhs.contiguous()).view(nsrc, nchan, L, nchan)
    return c_all, c_own


def _rank_tolerance(a: torch.Tensor) -> torch.Tensor:
    """Pivot threshold of a symmetric PSD matrix (batched: (..., n, n) -> (...,)): a pivot at or
    below n * eps * max(diag) is rounding noise, i.e. the column depends on the ones before it.
    The scale of numpy's lstsq cutoff (singular values below eps * n * largest)."""
    return a.shape[-1] * _EPS * a.diagonal(dim1=-2, dim2=-1).amax(dim=-1)


def _solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve a x = b for Gram matrices a (..., n, n) (eps already on the diagonal), b (..., n, k).

    museval solves G + eps I by LU and, when that raises, takes ``np.linalg.lstsq(G, D)`` (the
    minimum-norm least-squares solution). An LU or Cholesky on an exactly singular G need not
    raise: it can "succeed" on rounding-level pivots with a solution whose projections are
    garbage (SIR -170 dB). So: Cholesky, accepted only when every pivot is above the rank
    tolerance; otherwise a pivoted (rank-revealing) Cholesky gives the numerical rank, and the
    minimum-norm solution of the rank-r system, lstsq's semantics, in O(n^3) like one Cholesky
    (lstsq's SVD of a 4096 x 4096 G took 40-140 s here)."""
    chol, info = torch.linalg.cholesky_ex(a)
    pivots = chol.diagonal(dim1=-2, dim2=-1).square().amin(dim=-1)
    if not bool((info != 0).any()) and bool((pivots > _rank_tolerance(a)).all()):
        # two triangular solves: same numbers as cholesky_solve, 2.5x faster here
        return torch.linalg.solve_triangular(chol.mT, torch.linalg.solve_triangular(chol, b, upper=False), upper=True)
    a_np = a.detach().cpu().numpy().reshape(-1, *a.shape[-2:])
    b_np = b.detach().cpu().numpy().reshape(-1, *b.shape[-2:])
    solved = [min_norm_solve(ai, bi) for ai, bi in zip(a_np, b_np)]
    ranks = [rank for _, rank in solved]
    if min(ranks) < a.shape[-1]:
        logger.warning(
            "rank-deficient Gram matrix (rank %s of %d): minimum-norm least-squares projection filters "
            "(museval's fallback)",
            "/".join(map(str, ranks)),
            a.shape[-1],
        )
    x = np.stack([xi for xi, _ in solved]).reshape(b.shape)
    return torch.from_numpy(x).to(device=b.device, dtype=b.dtype)


def min_norm_solve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Minimum-norm least-squares solution of a x = b, and a's numerical rank; a (n, n)
    symmetric positive semidefinite, b (n, k).

    Pivoted Cholesky (LAPACK dpstrf) stops at the first pivot below the rank tolerance:
    a[p][:, p] = R^T R with R = [R11 R12] (r x n). The basic solution y = [R11^-1 R11^-T b1; 0]
    solves the system (b lies in a's range for a Gram matrix and its correlations); the null
    space is spanned by N = [-R11^-1 R12; I], and the minimum-norm solution is y minus its
    projection on N (what lstsq returns). The projection filters need the minimum-norm one: a
    null-space component vanishes on the whole signal but not on each frame's references.
    """
    n = a.shape[0]
    tol = n * _EPS * float(np.max(np.diag(a)))  # as _rank_tolerance
    factor, piv, rank, info = lapack.dpstrf(a, tol=tol, lower=0)
    if info < 0:
        raise ValueError(f"dpstrf: argument {-info} is invalid")
    p = piv - 1  # LAPACK pivots count from 1
    r11, bp = np.triu(factor[:rank, :rank]), b[p]
    y = solve_triangular(r11, solve_triangular(r11, bp[:rank], trans="T"))  # (r, k)
    if rank < n:
        w = solve_triangular(r11, factor[:rank, rank:])  # R11^-1 R12, (r, n - r)
        # z = (N^T N)^-1 N^T y, N^T N = I + W^T W (eigenvalues >= 1: well conditioned)
        z = cho_solve(cho_factor(np.eye(n - rank) + w.T @ w), -(w.T @ y))
        y = np.concatenate([y + w @ z, -z])
    x = np.empty_like(y)
    x[p] = y
    return x, int(rank)


def _frame_metrics(
    refs: torch.Tensor,
    ests: torch.Tensor,
    hop: int,
    nframes: int,
    wlen: int,
    c_all: torch.Tensor,
    c_own: torch.Tensor,
    s_energy: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """ISR, SIR, SAR per frame, (nsrc, nframes) each, from the global filters.

    Frame t is [t*hop, t*hop + wlen); s_energy: (nsrc, nframes) |s|^2 per frame. Each frame's
    references (zero outside the frame) are filtered with the global filters over wlen + L - 1
    samples, as museval does; products and energies live in the frequency domain (Parseval).
    """
    nsrc, _, nchan = refs.shape
    n_fft = _fft_len(wlen + c_all.shape[1] - 1)
    cf_all = _rfft(c_all.permute(0, 2, 1), n_fft).permute(2, 0, 1).contiguous()  # (F, P, Q)
    cf_own = _rfft(c_own.permute(0, 1, 3, 2), n_fft).permute(3, 0, 1, 2).contiguous()  # (F, nsrc, cin, cout)
    w = _parseval_weights(n_fft, c_all.device)
    if _use_numba(refs):
        sums = torch.from_numpy(
            _cpu_frame_energies(
                refs.numpy(), ests.numpy(), hop, nframes, wlen, n_fft, cf_all.numpy(), cf_own.numpy(), w.numpy()
            )
        )
    else:
        spectra = _segment_spectra(refs, ests, hop, nframes, wlen, n_fft)
        sums = torch.cat([_frame_energy_sums(zf, cf_all, cf_own, w) for zf in spectra])  # (T, 5, P)
    en = sums.view(sums.shape[0], 5, nsrc, nchan).sum(dim=3).permute(1, 2, 0)  # (5, nsrc, T)
    pall, pj, pall_pj, pj_s, e_pall = en
    return {"ISR": _db(s_energy, pj_s), "SIR": _db(pj, pall_pj), "SAR": _db(pall, e_pall)}


def _frame_energy_sums(zf: torch.Tensor, cf_all: torch.Tensor, cf_own: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(n, 5, P) energies per frame and channel of Pall, Pj, Pall - Pj, Pj - s, e - Pall.

    zf: (n, 2P, F) frame spectra (references then estimates); cf_all: (F, P, Q) and
    cf_own: (F, nsrc, nchan, nchan) filter spectra; w: (F,) Parseval weights. The torch path.
    """
    P, (nsrc, nchan) = cf_all.shape[1], cf_own.shape[1:3]
    zt = zf.permute(2, 0, 1)  # (F, n, 2P)
    xf, ef = zt[..., :P], zt[..., P:]
    pall = xf @ cf_all  # (F, n, Q)
    pj = (xf.unflatten(2, (nsrc, nchan)).transpose(1, 2) @ cf_own).transpose(1, 2).reshape(pall.shape)
    parts = (pall, pj, pall - pj, pj - xf, ef - pall)
    return torch.stack([torch.einsum("f,fnq->nq", w, v.real.square() + v.imag.square()) for v in parts], dim=1)


# ----------------------------------------------------------------------------- CPU path (numpy FFTs, numba kernels, threads)
#
# The FFTs read the segments straight from the (nsrc, nsamples, nchan) input through strided
# views (pocketfft copies each row into its own buffer anyway, zero-padding it to n_fft), so no
# segment copies are made. The work is split over torch.get_num_threads() Python threads: the
# numba kernels release the GIL (nogil) and pocketfft does too, and no OpenMP layer is touched.


def _cpu_workers() -> int:
    """Threads for the CPU path: torch's setting (a Ray worker pins it to its CPU share)."""
    return max(1, torch.get_num_threads())


def _pull_batches(count: int, per: int, make_state: Callable[[], T], body: Callable[[T, range], None]) -> list[T]:
    """body(state, batch) over batches of `per` items of range(count), pulled from one shared
    queue by up to _cpu_workers() threads, each with its own state from make_state(); returns
    the states. A queue rather than fixed shares: on a busy machine a descheduled thread does
    not hold up the others for a whole share of the work."""
    batches = iter([range(i, min(i + per, count)) for i in range(0, count, per)])
    lock = threading.Lock()

    def worker(_: int) -> T:
        state = make_state()
        while True:
            with lock:
                batch = next(batches, None)
            if batch is None:
                return state
            body(state, batch)

    threads = min(_cpu_workers(), -(-count // per))
    if threads <= 1:
        return [worker(0)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(worker, range(threads)))


def _cpu_batch(count: int, per_item_bytes: int) -> int:
    """Items per batch: all workers' buffers together hold about _CHUNK_BYTES, and each worker
    gets about four batches or more (for balance)."""
    workers = _cpu_workers()
    by_memory = _CHUNK_BYTES // (workers * max(per_item_bytes, 1))
    return max(1, min(by_memory, -(-count // (4 * workers))))


def _cpu_projection_filters(
    r_xx: np.ndarray, r_ex: np.ndarray, nsrc: int, nchan: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """_projection_filters with the Gram matrices built by a numba kernel in one pass (the
    torch flips, unfold and reshape took about 0.2 s for 4096 x 4096); the same numbers.

    The solve stays torch's (MKL) Cholesky (threads as torch's setting); rank-deficient
    systems go to the pivoted solve in _solve_spd."""
    P, L = r_xx.shape[0], r_xx.shape[2]
    n = nchan * L
    rhs = torch.from_numpy(
        np.ascontiguousarray(r_ex.transpose(1, 2, 0).reshape(P * L, P))
    )  # D[(p,a), q] = r_ex[q, p, a]
    c_all = _solve_spd(torch.from_numpy(_nb_gram(r_xx, _EPS)), rhs).view(P, L, P)
    own_rhs = rhs.view(nsrc, n, nsrc, nchan)
    own = []
    for j in range(nsrc):
        chans = slice(j * nchan, (j + 1) * nchan)
        gram_jj = _nb_gram(np.ascontiguousarray(r_xx[chans, chans]), _EPS)  # G's diagonal block of source j
        own.append(_solve_spd(torch.from_numpy(gram_jj), own_rhs[j, :, j].contiguous()))
    return c_all, torch.stack(own).view(nsrc, nchan, L, nchan)


def _strided_segments(x: np.ndarray, first: int, step: int, count: int, length: int) -> np.ndarray:
    """Read-only view (count, nsrc, nchan, length) of x (nsrc, nsamples, nchan, C-contiguous):
    [i, j, c, n] = x[j, first + i*step + n, c]. Every segment must lie inside x."""
    s_src, s_time, s_chan = x.strides
    return np.lib.stride_tricks.as_strided(
        x[:, first:],
        shape=(count, x.shape[0], x.shape[2], length),
        strides=(step * s_time, s_src, s_chan, s_time),
        writeable=False,
    )


def _cpu_spectra_into(
    out: np.ndarray, refs: np.ndarray, ests: np.ndarray, first: int, step: int, length: int, n_fft: int
) -> None:
    """out (n, 2P, n_fft//2+1) complex128, C-contiguous <- real FFTs of the segments
    [first + i*step, first + i*step + length), references then estimates, zero past the end."""
    n, _, nbins = out.shape
    nsrc, nsamples, nchan = refs.shape
    whole = min(n, max(0, (nsamples - length - first) // step + 1))  # segments inside the signal
    dst = out.reshape(n, 2, nsrc, nchan, nbins)  # a view: out is contiguous
    for k, x in enumerate((refs, ests)):
        if whole:
            np.fft.rfft(_strided_segments(x, first, step, whole, length), n=n_fft, axis=-1, out=dst[:whole, k])
        for i in range(whole, n):  # the last correlation block may end past the signal
            start = min(first + i * step, nsamples)
            piece = x[:, start : min(start + length, nsamples)].transpose(0, 2, 1)
            if piece.shape[2]:
                np.fft.rfft(piece, n=n_fft, axis=-1, out=dst[i, k])
            else:
                dst[i, k] = 0


def _cpu_block_cross_spectra(refs: np.ndarray, ests: np.ndarray, block: int, nblocks: int, n_fft: int) -> np.ndarray:
    """(F, 2P, P) complex128 (a strided view): sum over blocks of Z_a(f) conj(X_p(f)), Z the
    reference then estimate channels."""
    P, nbins = refs.shape[0] * refs.shape[2], n_fft // 2 + 1
    per = max(1, min(nblocks, _CHUNK_BYTES // (2 * P * nbins * 16)))  # blocks per batch (one shared buffer)
    buf = np.empty((per, 2 * P, nbins), np.complex128)
    acc = np.zeros((2 * P, P, 2, nbins))  # real and imaginary parts apart, bins last: the kernel vectorizes
    step = 16 * _F_CHUNK
    bins = [range(f, min(f + step, nbins)) for f in range(0, nbins, step)]
    # per batch: the blocks' FFTs, then the kernel over ranges of bins, each range summing the
    # blocks in order: the result does not depend on the threads or their scheduling
    with ThreadPoolExecutor(_cpu_workers()) as pool:
        for b0 in range(0, nblocks, per):
            n = min(per, nblocks - b0)

            def fft(i: int, b0: int = b0) -> None:
                _cpu_spectra_into(buf[i : i + 1], refs, ests, (b0 + i) * block, block, block, n_fft)

            def kernel(r: range, n: int = n) -> None:
                _nb_cross_spectra(buf[:n], acc, P, r.start, r.stop)

            list(pool.map(fft, range(n)))
            list(pool.map(kernel, bins))
    out = acc[:, :, 0] + 1j * acc[:, :, 1]  # (2P, P, F)
    upper = np.triu_indices(P, 1)  # reference pairs (a, p) with a < p: conj of (p, a), not computed
    out[upper] = out[upper[1], upper[0]].conj()
    return out.transpose(2, 0, 1)


def _cpu_frame_energies(
    refs: np.ndarray,
    ests: np.ndarray,
    hop: int,
    nframes: int,
    wlen: int,
    n_fft: int,
    cf_all: np.ndarray,
    cf_own: np.ndarray,
    w: np.ndarray,
) -> np.ndarray:
    """(nframes, 5, P) energies per frame and channel of Pall, Pj, Pall - Pj, Pj - s, e - Pall
    (see _frame_energy_sums); frames split over threads."""
    P, nbins = refs.shape[0] * refs.shape[2], n_fft // 2 + 1
    # real and imaginary parts apart, bins last: the kernel's inner loops vectorize over bins
    ca = np.ascontiguousarray(np.stack([cf_all.real, cf_all.imag]).transpose(2, 3, 0, 1))  # (P, Q, 2, F)
    co = np.ascontiguousarray(np.stack([cf_own.real, cf_own.imag]).transpose(2, 3, 4, 0, 1))  # (nsrc, cin, cout, 2, F)
    out = np.zeros((nframes, 5, P))
    per = _cpu_batch(nframes, 2 * P * nbins * 16)

    def body(buf: np.ndarray, frames: range) -> None:
        spectra = buf[: len(frames)]
        _cpu_spectra_into(spectra, refs, ests, frames.start * hop, hop, wlen, n_fft)
        _nb_frame_energies(spectra, ca, co, w, out[frames.start : frames.stop])

    _pull_batches(nframes, per, lambda: np.empty((per, 2 * P, nbins), np.complex128), body)
    return out


def _cpu_scan(refs: np.ndarray, ests: np.ndarray, nframes: int, wlen: int, hop: int) -> _Scan:
    """_Scan in one numba pass over the signals, batches of frames over threads. A batch of
    frames [t0, t1) also checks the samples no frame covers in [t0*hop, t1*hop) (from 0 for the
    first batch, to the end for the last): the batches tile the signal."""
    nsrc, nsamples, _ = refs.shape
    num, den = np.zeros((nsrc, nframes)), np.zeros((nsrc, nframes))
    silent = np.zeros(nframes, np.bool_)

    def body(state: list, frames: range) -> None:
        lo = 0 if frames.start == 0 else frames.start * hop
        hi = nsamples if frames.stop == nframes else frames.stop * hop
        state.append(_nb_scan(refs, ests, frames.start, frames.stop, wlen, hop, lo, hi, num, den, silent))

    parts = [part for state in _pull_batches(nframes, _cpu_batch(nframes, 0), list, body) for part in state]
    ref_active = np.logical_or.reduce([p[0] for p in parts])
    est_active = np.logical_or.reduce([p[1] for p in parts])
    t = torch.from_numpy
    return _Scan(
        t(num), t(den), t(silent), t(ref_active), t(est_active), all(p[2] for p in parts), all(p[3] for p in parts)
    )


@numba.njit(cache=True, nogil=True)
def _nb_gram(r, eps):  # pragma: no cover - compiled
    """r: (P, P, L) -> G + eps I, (P*L, P*L) C-ordered, G[(p,a),(q,b)] = r[q,p,a-b] if a >= b else r[p,q,b-a]."""
    P, _, L = r.shape
    g = np.empty((P * L, P * L))
    for p in range(P):
        for a in range(L):
            row = p * L + a
            for q in range(P):
                for b in range(a + 1):
                    g[row, q * L + b] = r[q, p, a - b]
                for b in range(a + 1, L):
                    g[row, q * L + b] = r[p, q, b - a]
            g[row, row] += eps
    return g


@numba.njit(cache=True, nogil=True)
def _nb_scan(refs, ests, t0, t1, wlen, hop, lo, hi, num, den, silent):  # pragma: no cover - compiled
    """Frames t0 <= t < t1: num[:, t] = |s|^2, den[:, t] = |e - s|^2, silent[t]; plus, over the
    frames and the uncovered samples of [lo, hi): per source (reference, estimate) whether some
    channel sum is non-zero, and whether all samples are finite. Returns (ref_active,
    est_active, refs finite, ests finite)."""
    nsrc, _, nchan = refs.shape
    ref_active = np.zeros(nsrc, np.bool_)
    est_active = np.zeros(nsrc, np.bool_)
    rpoison, epoison = 0.0, 0.0  # v * 0.0 stays 0 for finite v and turns NaN for NaN or inf
    covered = lo  # samples before this one are checked
    for t in range(t0, t1 + 1):
        start = hi if t == t1 else t * hop  # after the last frame: the rest up to hi
        for j in range(nsrc):  # uncovered samples [covered, start): activity and finiteness only
            for i in range(covered, start):
                ref_sum, est_sum = 0.0, 0.0
                for c in range(nchan):
                    ref_sum += refs[j, i, c]
                    est_sum += ests[j, i, c]
                    rpoison += refs[j, i, c] * 0.0
                    epoison += ests[j, i, c] * 0.0
                if ref_sum != 0:
                    ref_active[j] = True
                if est_sum != 0:
                    est_active[j] = True
        if t == t1:
            break
        for j in range(nsrc):
            ref_on, est_on, s2, d2 = False, False, 0.0, 0.0
            for i in range(start, start + wlen):
                ref_sum, est_sum = 0.0, 0.0
                for c in range(nchan):
                    s, e = refs[j, i, c], ests[j, i, c]
                    s2 += s * s
                    d2 += (e - s) * (e - s)
                    ref_sum += s
                    est_sum += e
                    rpoison += s * 0.0
                    epoison += e * 0.0
                ref_on = ref_on or ref_sum != 0
                est_on = est_on or est_sum != 0
            num[j, t], den[j, t] = s2, d2
            ref_active[j] = ref_active[j] or ref_on
            est_active[j] = est_active[j] or est_on
            silent[t] = silent[t] or not (ref_on and est_on)
        covered = max(covered, start + wlen)
    return ref_active, est_active, rpoison == 0.0, epoison == 0.0


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _nb_cross_spectra(z, acc, P, f_lo, f_hi):  # pragma: no cover - compiled
    """acc[a, p, :, f] += (re, im) of sum_b z[b, a, f] conj(z[b, p, f]) for p < P (only p <= a where
    a < P: the rest is the conjugate), for bins f_lo <= f < f_hi. z: (nb, R, F), acc: (R, P, 2, F).

    Per chunk of bins and block the spectra are split into real and imaginary parts in a small
    local buffer, so that the inner loops run over contiguous bins and vectorize."""
    nblocks, nrows, _ = z.shape
    zr = np.empty((nrows, _F_CHUNK))
    zi = np.empty((nrows, _F_CHUNK))
    for f0 in range(f_lo, f_hi, _F_CHUNK):
        m = min(_F_CHUNK, f_hi - f0)
        for b in range(nblocks):
            for a in range(nrows):
                for k in range(m):
                    v = z[b, a, f0 + k]
                    zr[a, k] = v.real
                    zi[a, k] = v.imag
            for a in range(nrows):
                for p in range(min(a + 1, P)):
                    out_r = acc[a, p, 0, f0 : f0 + m]
                    out_i = acc[a, p, 1, f0 : f0 + m]
                    for k in range(m):
                        out_r[k] += zr[a, k] * zr[p, k] + zi[a, k] * zi[p, k]
                        out_i[k] += zi[a, k] * zr[p, k] - zr[a, k] * zi[p, k]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _nb_frame_energies(z, ca, co, w, out):  # pragma: no cover - compiled
    """out[t, :, q] += weighted energies of Pall, Pj, Pall-Pj, Pj-s, e-Pall for channel q of frame t.

    z: (n, 2P, F) spectra (references then estimates); ca: (P, Q, 2, F) and co: (nsrc, cin,
    cout, 2, F) filter spectra, real and imaginary parts apart; w: (F,); out: (n, 5, P).
    Bins are the inner loop (contiguous, vectorized), as in _nb_cross_spectra."""
    nframes, _, nbins = z.shape
    P, nchan = ca.shape[0], co.shape[1]
    xr = np.empty((2 * P, _F_CHUNK))
    xi = np.empty((2 * P, _F_CHUNK))
    ar, ai = np.empty(_F_CHUNK), np.empty(_F_CHUNK)
    br, bi = np.empty(_F_CHUNK), np.empty(_F_CHUNK)
    for f0 in range(0, nbins, _F_CHUNK):
        m = min(_F_CHUNK, nbins - f0)
        wk = w[f0 : f0 + m]
        for t in range(nframes):
            for p in range(2 * P):
                for k in range(m):
                    v = z[t, p, f0 + k]
                    xr[p, k] = v.real
                    xi[p, k] = v.imag
            for q in range(P):
                j, c = q // nchan, q % nchan
                for k in range(m):
                    ar[k], ai[k], br[k], bi[k] = 0.0, 0.0, 0.0, 0.0
                for p in range(P):
                    cr = ca[p, q, 0, f0 : f0 + m]
                    ci = ca[p, q, 1, f0 : f0 + m]
                    for k in range(m):
                        ar[k] += xr[p, k] * cr[k] - xi[p, k] * ci[k]
                        ai[k] += xr[p, k] * ci[k] + xi[p, k] * cr[k]
                for cin in range(nchan):
                    p = j * nchan + cin
                    cr = co[j, cin, c, 0, f0 : f0 + m]
                    ci = co[j, cin, c, 1, f0 : f0 + m]
                    for k in range(m):
                        br[k] += xr[p, k] * cr[k] - xi[p, k] * ci[k]
                        bi[k] += xr[p, k] * ci[k] + xi[p, k] * cr[k]
                e0, e1, e2, e3, e4 = 0.0, 0.0, 0.0, 0.0, 0.0
                for k in range(m):
                    e0 += wk[k] * (ar[k] * ar[k] + ai[k] * ai[k])
                    e1 += wk[k] * (br[k] * br[k] + bi[k] * bi[k])
                    dr, di = ar[k] - br[k], ai[k] - bi[k]
                    e2 += wk[k] * (dr * dr + di * di)
                    dr, di = br[k] - xr[q, k], bi[k] - xi[q, k]
                    e3 += wk[k] * (dr * dr + di * di)
                    dr, di = xr[P + q, k] - ar[k], xi[P + q, k] - ai[k]
                    e4 += wk[k] * (dr * dr + di * di)
                out[t, 0, q] += e0
                out[t, 1, q] += e1
                out[t, 2, q] += e2
                out[t, 3, q] += e3
                out[t, 4, q] += e4


# ----------------------------------------------------------------------------- aggregation


def track_scores(sdr: ArrayLike, targets: Sequence[str]) -> dict[str, float]:
    """Per-target score of one track: median over frames, NaN and +-inf frames skipped.

    sdr: (nsrc, nframes) framewise values (any metric), rows in the order of `targets`.
    museval stores +-inf as NaN and aggregates frames with nanmedian; a target whose frames
    are all NaN scores NaN.
    """
    values = np.asarray(sdr.detach().cpu() if isinstance(sdr, torch.Tensor) else sdr, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(targets):
        raise ValueError(
            f"scores shaped {values.shape} do not match {len(targets)} targets {list(targets)}: "
            "expected (ntargets, nframes)"
        )
    values = np.where(np.isinf(values), np.nan, values)
    return {t: _nanmedian(row) for t, row in zip(targets, values)}


def median_over_tracks(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """Median over tracks per target (NaN tracks skipped), plus "avg": the mean of the targets.

    scores: one `track_scores` dict per track, all with the same targets.
    """
    if not scores:
        raise ValueError("median_over_tracks needs at least one track's scores, got none")
    targets = [t for t in scores[0] if t != "avg"]
    for i, s in enumerate(scores):
        if sorted(t for t in s if t != "avg") != sorted(targets):
            raise ValueError(f"track {i} has targets {sorted(s)}, expected {sorted(targets)}")
    out = {t: _nanmedian(np.array([s[t] for s in scores], dtype=np.float64)) for t in targets}
    out["avg"] = float(np.mean([out[t] for t in targets]))
    return out


def _nanmedian(values: np.ndarray) -> float:
    """nanmedian that returns NaN (without a warning) when every value is NaN."""
    finite = values[~np.isnan(values)]
    return float(np.median(finite)) if finite.size else math.nan
