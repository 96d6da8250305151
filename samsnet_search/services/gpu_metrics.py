"""Utilization and memory of the GPUs a trial was assigned, logged to its own MLflow run.

MLflow's `SystemMetricsMonitor` logs every GPU NVML sees, and NVML ignores
CUDA_VISIBLE_DEVICES: on a node shared by several trials, each run would log its neighbours'
GPUs too, and the monitor takes no list of devices. So a trial's run leaves MLflow's monitor to
CPU, disk and network (`without_gpu_monitors`) and this sampler logs
`system/gpu_<id>_utilization_percentage` and `system/gpu_<id>_memory_usage_megabytes` for the
ids Ray assigned. Ray numbers GPUs as NVML does (it counts them through NVML), or names them by
UUID where the node's own CUDA_VISIBLE_DEVICES did; `read_gpus` takes either.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger(__name__)

GpuId = int | str
LogMetrics = Callable[[dict[str, float], int], None]  # (metrics, step)


@dataclass(frozen=True)
class GpuSample:
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    utilization: float  # percent of the last sample period a kernel ran
    memory_mb: float  # used, all processes (1e6 bytes, as MLflow's own GPU metrics)


def read_gpus(ids: Sequence[GpuId]) -> dict[str, GpuSample]:
    """NVML's reading of the given GPUs: the one place pynvml is called (tests patch it)."""
    import pynvml  # lazy: nvidia-ml-py installs anywhere; nvmlInit needs the NVIDIA driver

    pynvml.nvmlInit()
    try:
        out = {}
        for gpu in ids:
            text = str(gpu)
            if text.isdigit():
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(text))
            else:  # GPU-... / MIG-... UUIDs
                handle = pynvml.nvmlDeviceGetHandleByUUID(text)
            name = pynvml.nvmlDeviceGetName(handle)
            out[text] = GpuSample(
                name=name.decode() if isinstance(name, bytes) else str(name),
                utilization=float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                memory_mb=pynvml.nvmlDeviceGetMemoryInfo(handle).used / 1e6,
            )
        return out
    finally:
        pynvml.nvmlShutdown()


def metrics_of(samples: dict[str, GpuSample]) -> dict[str, float]:
    """MLflow's metric names, one pair per assigned GPU."""
    out = {}
    for gpu, s in samples.items():
        out[f"system/gpu_{gpu}_utilization_percentage"] = s.utilization
        out[f"system/gpu_{gpu}_memory_usage_megabytes"] = round(s.memory_mb, 1)
    return out


def without_gpu_monitors(monitor) -> None:
    """Drop MLflow's all-GPU monitors (NVIDIA and ROCm) from a `SystemMetricsMonitor`, keeping
    CPU, disk and network. Its `monitors` list is the only handle (validated on mlflow 3.x)."""
    monitor.monitors = [m for m in monitor.monitors if type(m).__name__ not in ("GPUMonitor", "ROCMMonitor")]


class GpuSampler:
    """A daemon thread logging the assigned GPUs every `interval_s` through `log_metrics`."""

    def __init__(self, ids: Sequence[GpuId], log_metrics: LogMetrics, interval_s: float, first_step: int = 0):
        self.ids, self.log_metrics, self.interval_s = list(ids), log_metrics, interval_s
        self.step = first_step
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, float]:
        """One reading, logged; {} (and a warning) where NVML cannot answer."""
        try:
            metrics = metrics_of(read_gpus(self.ids))
        except Exception as e:  # no driver, NVML missing: metrics are optional, training is not
            log.warning("GPU metrics unavailable for GPU(s) %s: %s", self.ids, e)
            return {}
        self.log_metrics(metrics, self.step)
        self.step += 1
        return metrics

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="GpuSampler")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.sample():
                return  # NVML failed once: it will not recover in this process

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def device_name(ids: Sequence[GpuId]) -> str:
    """The assigned GPUs' names for the run's `samsnet.device` tag ("cpu" when none)."""
    if not ids:
        return "cpu"
    try:
        names = [s.name for s in read_gpus(ids).values()]
    except Exception as e:
        log.warning("GPU names unavailable: %s", e)
        return "cuda"
    return ", ".join(dict.fromkeys(names))
