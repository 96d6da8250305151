"""Shared benchmark helpers: timing, peak memory, machine description, child processes.

Timing: `timed(fn)` runs `warmup` untimed calls, then `repeats` timed ones, and reports the
median (the figure) and the minimum. Machines are noisy, so comparisons are ratios of
medians measured side by side in the same process.

Peak memory on CPU: tracemalloc does not see torch's allocations, and torch's CPU allocator
keeps no statistics. We read the kernel's resident-set high-water mark instead
(`VmHWM` in /proc/self/status, reset by writing 5 to /proc/self/clear_refs) in a child
process started with glibc's mmap threshold at 64 KiB, so every tensor is its own mapping
and freed tensors leave the resident set at once. The figure is the peak resident set
during the call minus the resident set before it: activations, gradients and workspace,
plus whatever else the process touched (so an upper bound of the tensor bytes, to about a
megabyte). On CUDA it is `torch.cuda.max_memory_allocated` minus the memory allocated
before the call (tensor bytes exactly, without the caching allocator's reserve).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy
import torch

from ..errors import SamsNetError

log = logging.getLogger(__name__)

MiB = 2**20
# glibc tunables for the measuring child: mmap every allocation >= 64 KiB and return freed
# memory at once, so the resident set follows the live tensor bytes.
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


class BenchError(SamsNetError):
    """A benchmark cannot run as asked (bad option, missing device, failed child process)."""


def sync(device: str) -> None:
    """Wait for queued GPU work so that wall time covers it (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: str = "cpu") -> dict[str, float]:
    """Median and minimum wall time (seconds) of `fn()` over `repeats` runs after `warmup` runs,
    and the median process CPU time (`cpu_s`: all threads; on a shared machine it moves less
    with other people's load than wall time does)."""
    for _ in range(warmup):
        fn()
        sync(device)
    times, cpu = [], []
    for _ in range(max(1, repeats)):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_s": statistics.median(cpu),
        "runs": len(times),
    }


def timed_side_by_side(
    fns: dict[str, Callable[[], Any]], repeats: int, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """`timed` for several functions, their runs interleaved (A B A B ...) so that a change in
    the machine's load falls on all of them alike; one untimed warm-up run each first."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        sync(device)
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            results[name].append(timed(fn, repeats=1, warmup=0, device=device))
    return {
        name: {
            "median_s": statistics.median(r["median_s"] for r in runs),
            "min_s": min(r["min_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "runs": len(runs),
        }
        for name, runs in results.items()
    }


def machine_roofline(device: str, quick: bool = False) -> dict[str, float]:
    """This machine's ceilings, measured now: float32 matmul GFLOPS (square sgemm) and copy
    bandwidth in GB/s (bytes read + written by a copy much larger than the caches)."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    mm = timed(lambda: a @ b, repeats=3 if quick else 5, device=device)
    src = torch.randn(64 * MiB // 4, device=device)  # 64 MiB: larger than the last-level cache
    dst = torch.empty_like(src)
    cp = timed(lambda: dst.copy_(src), repeats=3 if quick else 5, device=device)
    return {"matmul_gflops": 2 * n**3 / mm["min_s"] / 1e9, "copy_gbps": 2 * src.numel() * 4 / cp["min_s"] / 1e9}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/self/status has no {field} line: peak memory cannot be measured here")


def peak_bytes(fn: Callable[[], Any], device: str = "cpu") -> int:
    """Peak memory (bytes) that one call of `fn()` adds on top of what was live before it.

    CPU: resident-set high-water mark delta (see the module docstring; meaningful in a child
    started with CHILD_MALLOC_ENV). CUDA: allocator peak delta.
    """
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated() - before)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str, threads: int) -> dict[str, Any]:
    """CPU, cores, load, library versions and the device the figures come from."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": device,
    }
    for name in ("ray", "museval", "numba", "optuna", "mlflow"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - an absent or broken optional package is only not listed
            info[name] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_child(module: str, args: dict[str, Any], timeout: float, malloc_env: bool = True) -> dict[str, Any]:
    """Run `python -m module ARGS_JSON` (with CHILD_MALLOC_ENV unless malloc_env is False: that
    setting makes every large allocation a page-faulting mmap, right for reading peak memory,
    wrong for timing); its last stdout line is the JSON result."""
    env = {**os.environ, **(CHILD_MALLOC_ENV if malloc_env else {})}
    cmd = [sys.executable, "-m", module, json.dumps(args)]
    log.debug("child: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"benchmark child {module} ran past {timeout:.0f} s (sizes {args})") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise BenchError(f"benchmark child {module} failed (exit {proc.returncode}): {' | '.join(tail)}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"benchmark child {module} printed no result")
    return json.loads(lines[-1])
