"""Which device a job runs on, and how CUDA is set up for it.

A job uses exactly the GPUs its scheduler assigned it. The engine knows nothing of Ray: the
search layer asks Ray (`ray.get_gpu_ids()`) and passes the answer in as `gpu_ids`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Sequence

import torch

from ..errors import SamsNetError

log = logging.getLogger(__name__)

CPU = torch.device("cpu")
# Most DataLoader workers a CUDA job starts by default: segment cutting and augmentation are
# light; beyond a few workers they only take CPUs from the other trials of the node.
MAX_DEFAULT_WORKERS = 4


class DeviceError(SamsNetError):
    """The requested device is not available to this job."""


def pick_device(name: str, gpu_ids: Sequence[int | str] | None = None) -> torch.device:
    """The device for `train.device` = name (auto / cpu / cuda).

    gpu_ids: the GPUs a scheduler assigned this job (Ray's `get_gpu_ids()`), or None outside a
    scheduler (every visible GPU is the job's). An empty list means CPU whatever
    CUDA_VISIBLE_DEVICES says: Ray 2.60 no longer blanks it for a task that asked for no GPU.
    """
    if name == "cpu":
        return CPU
    if gpu_ids is not None and not gpu_ids:
        return _cpu_because(name, "the scheduler assigned this job no GPU", "set resources.gpu > 0")
    if not torch.cuda.is_available():
        return _cpu_because(name, "no CUDA device is available", "install a CUDA build of torch")
    if gpu_ids is None:
        device, why = torch.device("cuda", 0), "CUDA is available"
    else:
        device, why = torch.device("cuda", _visible_index(gpu_ids[0])), f"the scheduler assigned GPU {gpu_ids[0]}"
    if name == "auto":
        log.info("train.device auto: %s (%s)", device, why)
    return device


def _cpu_because(name: str, why: str, fix: str) -> torch.device:
    if name == "cuda":
        raise DeviceError(f"train.device: cuda requested but {why} (use auto or cpu, or {fix})")
    log.info("train.device auto: cpu (%s)", why)
    return CPU


def _visible_index(gpu_id: int | str) -> int:
    """CUDA's index of an assigned GPU: its position among CUDA_VISIBLE_DEVICES (Ray sets it to a
    task's GPUs), or the id itself where the variable is unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return int(gpu_id)
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if str(gpu_id) not in ids:
        raise DeviceError(f"assigned GPU {gpu_id} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return ids.index(str(gpu_id))


def configure_cuda(device: torch.device, *, fixed_shapes: bool) -> None:
    """Numerics for a job on `device`, set once where the device is chosen.

    TF32 for matmuls and convolutions on Ampere and newer (capability >= 8: 10-bit mantissa
    products, float32 accumulation; masks and SDR are insensitive to it). The legacy `allow_tf32`
    switches, not `fp32_precision`: torch 2.13 raises where the two APIs are mixed, and libraries
    still read the legacy ones. cuDNN's autotuner only where shapes repeat (training on fixed
    segments); separating songs would re-tune for every odd last chunk.
    """
    if device.type != "cuda":
        return
    ampere = torch.cuda.get_device_capability(device)[0] >= 8
    torch.backends.cuda.matmul.allow_tf32 = ampere
    torch.backends.cudnn.allow_tf32 = ampere
    torch.backends.cudnn.benchmark = fixed_shapes


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN's autotuner on or off for a block (e.g. validation on tracks of different lengths)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def amp_dtype() -> torch.dtype:
    """bfloat16 where the GPU computes it natively (Ampere and newer), else float16 with a
    GradScaler: T4 and V100 report bf16 support by emulation, which trains several times slower."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def loader_defaults(
    num_workers: int | None, pin_memory: bool | None, device: torch.device, cpus: int
) -> tuple[int, bool]:
    """(num_workers, pin_memory) for a job on `device` with `cpus` CPUs, unset values chosen.

    On CUDA the loader works while the GPU steps: workers on the job's CPUs but one (the main
    process launches the kernels), at most `MAX_DEFAULT_WORKERS`, and pinned memory for
    asynchronous copies. On CPU the model needs every CPU: batches come from the main process.
    """
    cuda = device.type == "cuda"
    if num_workers is None:
        num_workers = min(MAX_DEFAULT_WORKERS, max(0, cpus - 1)) if cuda else 0
    if pin_memory is None:
        pin_memory = cuda
    return num_workers, pin_memory
