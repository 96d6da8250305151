"""`samsnet-search bench`: measure the hot paths. Benchmarks are not tests.

One module per benchmark, each with `run(quick, device, threads, ...) -> {"sizes", "figures", "notes"}`
where `figures` is a flat mapping name -> float:

- `attention`: the attention step (projection, scores, softmax, values, W^O) vs slices, the model's
  kernel beside the previous SDPA line, FLOPs, bytes, GFLOPS, GB/s and this machine's roofline;
  peak memory; the whole model.
- `train`: training-step samples/s, the share of step time waiting on data, and a quickstart
  trial-epoch with the model's attention vs the previous one.
- `sdr`: fast BSSEval v4 vs museval, time ratio and largest differences.
- `export`: the exported programs (`masks.pt2`, `separate.pt2`, ONNX) beside the eager model, time ratio.
- `search`: search efficiency against the paper's grid: trial-epochs, CPU-seconds, wall time, the
  slice count picked and its regret, for the grid, TPE + ASHA and TPE + median stopping (when
  asked for by `--only search`, or `tiny`).
- `overhead`: per-trial time outside training on a tiny study (full mode only).
- `strategies`: ways to choose the slice count replayed on the learning-curve table
  (`benchmarks/curves/`): cost as a share of the 3-seed grid, how often the pick is right, regret.

`run_benchmarks` runs a selection and returns one JSON-ready report with the machine.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..files import write_atomic
from .common import BenchError, machine_info

log = logging.getLogger(__name__)

# benchmark name -> its module in this package
MODULES: dict[str, str] = {
    "attention": "attention",
    "train": "train_step",
    "sdr": "sdr",
    "export": "export",
    "search": "search_efficiency",
    "overhead": "search_overhead",
    "strategies": "strategies",
}
NAMES: tuple[str, ...] = tuple(MODULES)
FULL_ONLY = ("search", "overhead", "strategies")  # a Ray study (or hundreds of replays) does not fit --quick
ON_REQUEST = ("search",)  # tens of minutes: runs when --only names it (or tiny)


def _runner(name: str) -> Callable[..., dict[str, Any]]:
    # Imported on demand: the measuring children (`python -m samsnet_search.bench.attention`)
    # import this package, and the search benchmark would load Ray into every one of them.
    return importlib.import_module(f".{MODULES[name]}", __name__).run


def check_options(device: str, only: list[str] | None, threads: int | None) -> list[str]:
    """Validated benchmark names to run; BenchError names the bad option and what is valid."""
    if device not in ("cpu", "cuda"):
        raise BenchError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is available here (use --device cpu)")
    unknown = sorted(set(only or ()) - set(NAMES))
    if unknown:
        raise BenchError(f"--only: unknown benchmark {', '.join(unknown)} (valid: {', '.join(NAMES)})")
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    return [n for n in NAMES if not only or n in only]


def run_benchmarks(
    quick: bool = False,
    device: str = "cpu",
    only: list[str] | None = None,
    threads: int | None = None,
    smoke: bool = False,
    progress: Callable[[str], None] | None = None,
    tiny: bool = False,
) -> dict[str, Any]:
    """Run the selected benchmarks; returns {"machine", "settings", "benchmarks", "skipped"}.

    smoke: the smallest sizes (seconds; figures not meaningful), implies quick.
    threads: torch CPU threads (default: all cores), fixed for every benchmark and recorded.
    tiny: the search benchmark at tiny sizes (about a minute, figures not meaningful), in any mode.
    """
    quick = quick or smoke
    names = check_options(device, only, threads)
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    report: dict[str, Any] = {
        "machine": machine_info(device, threads),
        "settings": {"quick": quick, "smoke": smoke, "tiny": tiny, "device": device, "only": only or list(NAMES)},
        "benchmarks": {},
        "skipped": {},
    }
    for name in names:
        why = skip_reason(name, quick, only, tiny)
        if why:
            report["skipped"][name] = why
            continue
        if progress:
            progress(name)
        start = time.perf_counter()
        kwargs = {"search": {"tiny": tiny}, "overhead": {}}.get(name, {"smoke": smoke})
        result = _runner(name)(quick, device, threads, **kwargs)
        result["seconds"] = time.perf_counter() - start
        _check_finite(name, result["figures"])
        report["benchmarks"][name] = result
        log.info("bench %s: %.1f s", name, result["seconds"])
    report["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return report


def skip_reason(name: str, quick: bool, only: list[str] | None, tiny: bool) -> str | None:
    """Why a selected benchmark does not run in this mode, or None. `tiny` runs the search one in any mode."""
    if name == "search" and tiny:
        return None
    if name in ON_REQUEST and name not in (only or ()):
        return f"runs when asked for (--only {name}): it takes tens of minutes"
    if quick and name in FULL_ONLY:
        return "full mode only (a Ray study takes minutes)"
    return None


def _check_finite(name: str, figures: dict[str, float]) -> None:
    bad = {k: v for k, v in figures.items() if not isinstance(v, (int, float)) or not math.isfinite(v)}
    if bad:
        raise BenchError(f"benchmark {name} produced non-finite figures: {bad}")


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as JSON (files.write_atomic)."""
    return write_atomic(path, json.dumps(report, indent=2, default=str).encode())


__all__ = ["NAMES", "BenchError", "check_options", "run_benchmarks", "skip_reason", "write_report"]
