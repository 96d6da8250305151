"""Where a trial or selection job runs: exactly the GPUs Ray assigned it.

Ray 2.60 no longer blanks CUDA_VISIBLE_DEVICES for a task that asked for no GPU, so "CUDA is
available" inside a worker says nothing about what the job may use; `ray.get_gpu_ids()` does.
The engine takes the answer as an argument (it knows nothing of Ray).
"""

from __future__ import annotations

import ray
import torch

from ..config import ExperimentConfig
from ..engine.device import pick_device
from ..engine.train import with_loader_defaults


def assigned_gpu_ids() -> list[int | str] | None:
    """The GPUs Ray assigned the calling task or actor; None outside a Ray worker (the driver, the
    CLI), where the caller's own view of CUDA decides."""
    # RuntimeContext.worker.mode is the only way to tell a worker from a driver without a warning
    # (get_task_id() logs one in a driver); is_initialized first: a runtime context starts Ray.
    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return list(ray.get_gpu_ids())


def job_device(name: str) -> torch.device:
    """`pick_device(name)` for the calling Ray task: CPU when Ray assigned it no GPU."""
    return pick_device(name, assigned_gpu_ids())


def place(cfg: ExperimentConfig) -> tuple[ExperimentConfig, torch.device]:
    """(cfg with the loader defaults for its device, the device Ray assigned the calling job)."""
    device = job_device(cfg.train.device)
    return with_loader_defaults(cfg, device), device
