"""gpu-check's platform sections: BSSEval, separation, placement under Ray, the study, an export
moved to the device, and GPU metrics in MLflow."""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import numpy as np
import ray
import torch
import yaml

from ..config import SAMPLE_RATE
from ..delivery.export import PARITY_TOLERANCE, example_audio, export_programs, parity_lengths
from ..engine.separate import separate
from ..errors import one_line
from ..metrics.bsseval import sdr_v4
from ..model import SamsNet
from ..search.placement import job_device
from ..search.runner import run_study
from ..search.study import load_study
from ..services.gpu_metrics import GpuSampler, device_name
from .common import timed
from .gpu_check_model import Check


def check_bsseval(c: Check) -> dict[str, Any]:
    seconds = 5.0 if c.dry else 180.0
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((4, int(seconds * SAMPLE_RATE), 2))
    ests = refs + 0.3 * rng.standard_normal(refs.shape)
    out: dict[str, Any] = {"seconds_of_audio": seconds}
    out["cpu_s"] = timed(lambda: sdr_v4(refs, ests), repeats=1, warmup=0)["median_s"]
    if not c.cuda:
        return {**out, "cuda_s": "no CUDA here: CPU path only"}
    r, e = torch.from_numpy(refs).cuda(), torch.from_numpy(ests).cuda()
    out["cuda_s"] = timed(lambda: sdr_v4(r, e), repeats=2, warmup=1, device="cuda")["median_s"]
    out["max_abs_diff_db"] = float(np.nanmax(np.abs(sdr_v4(r, e) - sdr_v4(refs, ests))))
    return out


def check_separate(c: Check) -> dict[str, Any]:
    model = SamsNet(**c.experiment().resolved_model().model_dump())
    seconds = 10.0 if c.dry else 180.0
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    audio = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(np.float32) * 0.3
    stems: dict[str, np.ndarray] = {}

    def run() -> None:
        stems.update(separate(model, audio, c.device))

    c.reset_peak()
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    out = {"track_seconds": seconds, "wall_s": wall, "x_realtime": seconds / wall, "peak_mib": c.peak_mib()}
    if not all(s.shape == audio.shape and np.isfinite(s).all() for s in stems.values()):
        out["problems"] = ["stems of the wrong shape or not finite"]
    return out


# --- placement: gpu 0 beside a GPU task ---------------------------------------------------


@ray.remote
def _where() -> dict[str, Any]:
    """What a task sees and chooses: its assigned GPUs, CUDA's view, and `job_device("auto")`."""
    return {
        "device": str(job_device("auto")),
        "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_available": torch.cuda.is_available(),
    }


def check_placement(c: Check) -> dict[str, Any]:
    """A `gpu: 0` task and a `gpu: 0.5` task side by side on the local Ray (the real GPU count;
    dry run: one logical GPU): only the second may choose CUDA."""
    c.enter_ray()
    refs = {gpu: _where.options(num_cpus=1, num_gpus=gpu).remote() for gpu in (0, 0.5)}
    seen = {f"gpu_{gpu}": ray.get(ref, timeout=120) for gpu, ref in refs.items()}
    problems = []
    if seen["gpu_0"]["device"] != "cpu":
        problems.append(f"a gpu: 0 task chose {seen['gpu_0']['device']}")
    if c.cuda and not seen["gpu_0.5"]["device"].startswith("cuda"):
        problems.append(f"a gpu: 0.5 task chose {seen['gpu_0.5']['device']}")
    return {**seen, "problems": problems} if problems else seen


def check_study(c: Check) -> dict[str, Any]:
    """Two trials of a tiny study sharing the GPU (`resources.gpu: 0.5`), on the shared local Ray."""
    study = {
        "name": "gpu-check",
        "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 4]}, "heads": 1, "channels": 2, "depth": 1},
        "data": {"root": str(c.root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
        "train": {"lr": 1e-3, "batch_size": 2, "epochs": 2, "patience": 2, "valid_sdr_every": 0, "device": c.device},
        "search": {"num_samples": 2, "seed": 0, "grace_period": 2, "max_t": 2, "max_concurrent_trials": 2},
        "resources": {"cpu": 1, "gpu": 0.5 if c.cuda else 0},
        "storage": str(c.work / "runs"),
        "tracking": {"uri": str(c.work / "mlruns"), "system_metrics_interval_s": 5},
    }
    path = c.work / "gpu-check.yaml"
    path.write_text(yaml.safe_dump(study))
    c.enter_ray()
    start = time.perf_counter()
    result = run_study(load_study(path, base_dir=c.work), quiet=True)
    out = {"wall_s": time.perf_counter() - start, "trials": result.counts(), "resources_gpu": study["resources"]["gpu"]}
    if result.counts().get("completed", 0) != 2:
        out["problems"] = ["not both trials completed"]
    return out


# --- export moved to the device -----------------------------------------------------------


def check_export(c: Check) -> dict[str, Any]:
    """The masks and separate programs traced on CPU (as `export` does), moved to the device and
    compared with the eager model there, at the traced length and the parity lengths."""
    net = SamsNet(**c.experiment().resolved_model().model_dump()).eval()
    audio = example_audio({}, net, seconds=1.0 if c.dry else 2.0)
    with torch.no_grad():
        mag = net.spectrogram(audio).abs()
    start = time.perf_counter()
    masks_program, separate_program = export_programs(net, mag, audio)
    traced_s = time.perf_counter() - start
    masks, stems = masks_program.module().to(c.device), separate_program.module().to(c.device)
    eager = copy.deepcopy(net).to(c.device)
    mag, audio = mag.to(c.device), audio.to(c.device)
    parity = {
        f: _parity_at(f, masks, stems, eager, mag, audio) for f in parity_lengths(mag.shape[-1], net.slice_frames)
    }
    out = {"trace_s": traced_s, "device": c.device, "tolerance": PARITY_TOLERANCE, "max_abs_diff_by_frames": parity}
    bad = [f"{f} frames: {k} {v}" for f, row in parity.items() for k, v in row.items() if not _within(v)]
    return {**out, "problems": bad} if bad else out


def _parity_at(frames: int, masks, stems, eager: SamsNet, mag: torch.Tensor, audio: torch.Tensor) -> dict[str, Any]:
    """Max |exported - eager| of both programs at one frame count; a program that refuses the
    length (a runtime assertion) is recorded as such."""
    hop = eager.spectrogram.hop_length
    cut, wave = mag[..., :frames], audio[..., : (frames - 1) * hop + hop // 2]
    pairs = {"masks": (masks, eager, cut)}
    if wave.shape[-1] > eager.spectrogram.n_fft // 2:
        pairs["separate"] = (stems, eager.separate, wave)
    row: dict[str, Any] = {}
    with torch.no_grad():
        for name, (program, reference, x) in pairs.items():
            try:
                row[name] = float((program(x) - reference(x)).abs().max())
            except RuntimeError as e:
                row[name] = f"fails: {one_line(e)[:90]}"
    return row


def _within(value: Any) -> bool:
    return isinstance(value, float) and value <= PARITY_TOLERANCE


# --- MLflow GPU metrics -------------------------------------------------------------------


def check_mlflow_gpu(c: Check) -> dict[str, Any]:
    """`GpuSampler` logging to a local MLflow store for a few seconds (the GPU busy meanwhile), then
    the run read back: its system/gpu_* metrics and the device tag a trial gets. A SQLite file:
    MLflow 3 refuses new file stores (./mlruns), and the platform's local default is SQLite too."""
    from mlflow.entities import Metric  # lazy: mlflow, for this section only
    from mlflow.tracking import MlflowClient  # lazy: mlflow, for this section only

    client = MlflowClient(tracking_uri=f"sqlite:///{c.work / 'mlflow-gpu.db'}")
    run_id = client.create_run(client.create_experiment("gpu-check")).info.run_id
    # NVML ignores CUDA_VISIBLE_DEVICES: name the GPU as it does (the variable's entry, else 0).
    gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()

    def log(metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    sampler = GpuSampler([gpu], log, interval_s=0.5)
    sampler.start()
    _busy(c, seconds=1.0 if c.dry else 3.0)
    sampler.stop()
    client.set_terminated(run_id)
    logged = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("system/gpu_"))
    out = {"gpu": gpu, "metrics": logged, "device_tag": device_name([gpu])}
    if c.cuda and not logged:
        out["problems"] = ["no system/gpu_* metric reached MLflow (NVML unavailable?)"]
    elif not logged:
        out["note"] = "no NVML here: nothing to log (expected on CPU)"
    return out


def _busy(c: Check, seconds: float) -> None:
    """Matmuls on the device for `seconds`, so utilization has something to show."""
    x = torch.randn(2048 if c.cuda else 64, 2048 if c.cuda else 64, device=c.device)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = torch.tanh(x @ x)
        if c.cuda:
            torch.cuda.synchronize()
