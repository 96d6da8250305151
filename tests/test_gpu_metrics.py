"""Each trial's MLflow run logs only the GPUs Ray assigned it (NVML sees every GPU of the node),
and is tagged with their name. NVML is a fake with two GPUs."""

from __future__ import annotations

import sys
import time
import types

import pytest

from samsnet_search.services import gpu_metrics, tracking
from samsnet_search.services.tracking import ChildRunSpec, TrialRun


class NVMLError(Exception):
    pass


def fake_nvml(uuids=("GPU-aaaa", "GPU-bbbb")) -> types.ModuleType:
    """Two GPUs: index i has UUID uuids[i], utilization 10 + 40 i %, 1000 + 1000 i MB used."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(uuids)

    def by_index(i: int) -> int:
        if not 0 <= i < len(uuids):
            raise NVMLError(f"no GPU {i}")
        return i

    nvml.nvmlDeviceGetHandleByIndex = by_index
    nvml.nvmlDeviceGetHandleByUUID = lambda u: uuids.index(u)
    nvml.nvmlDeviceGetName = lambda h: f"Fake GPU {h}".encode()
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=10 + 40 * h, memory=0)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(1 + h) * 1e9, total=80e9)
    nvml.nvmlDeviceGetPowerUsage = lambda h: 100_000
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda h: 400_000
    return nvml


@pytest.fixture
def nvml(monkeypatch):
    fake = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    # MLflow's own GPU monitor sees the fake too: it would log both GPUs unless dropped.
    monkeypatch.setattr("mlflow.system_metrics.metrics.gpu_monitor.pynvml", fake, raising=False)
    return fake


def test_only_the_assigned_gpu_is_read_by_index_or_uuid(nvml):
    assert gpu_metrics.metrics_of(gpu_metrics.read_gpus([1])) == {
        "system/gpu_1_utilization_percentage": 50.0,
        "system/gpu_1_memory_usage_megabytes": 2000.0,
    }
    assert gpu_metrics.read_gpus(["GPU-aaaa"])["GPU-aaaa"].utilization == 10.0
    assert gpu_metrics.device_name([1]) == "Fake GPU 1" and gpu_metrics.device_name([]) == "cpu"


def test_a_missing_gpu_is_a_warning_not_a_crash(nvml, caplog):
    logged = []
    sampler = gpu_metrics.GpuSampler([7], lambda m, step: logged.append(m), 0.01)
    assert sampler.sample() == {} and not logged
    assert "GPU metrics unavailable for GPU(s) [7]" in caplog.text


def test_mlflows_all_gpu_monitor_is_dropped():
    monitor = types.SimpleNamespace(monitors=[type("CPUMonitor", (), {})(), type("GPUMonitor", (), {})()])
    gpu_metrics.without_gpu_monitors(monitor)
    assert [type(m).__name__ for m in monitor.monitors] == ["CPUMonitor"]


def test_a_trial_run_logs_its_own_gpu_and_its_device_name(store_uri, nvml):
    target, exp = store_uri
    parent = tracking.start_parent_run(target, exp, "unit")
    spec = ChildRunSpec(target.uri, target.artifact_root, exp, parent, "unit", system_metrics_interval_s=0.05)
    run = TrialRun(spec, "gpu1")
    run.start_system_metrics([1])  # Ray assigned GPU 1 of the node's two
    run.tag_device([1])
    c = tracking.client(target)
    deadline = time.monotonic() + 20
    while (
        time.monotonic() < deadline and "system/gpu_1_utilization_percentage" not in c.get_run(run.run_id).data.metrics
    ):
        time.sleep(0.05)
    run.finish("completed")
    data = c.get_run(run.run_id).data
    gpu_keys = {k for k in data.metrics if k.startswith("system/gpu_")}
    assert gpu_keys == {"system/gpu_1_utilization_percentage", "system/gpu_1_memory_usage_megabytes"}
    assert data.metrics["system/gpu_1_utilization_percentage"] == 50.0
    assert data.tags[tracking.DEVICE_TAG] == "Fake GPU 1"


@pytest.fixture
def store_uri(tmp_path):
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    return target, tracking.ensure_experiment(target, "unit")
