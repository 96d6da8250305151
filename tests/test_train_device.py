"""Devices and CUDA numerics (issue 21 items 3, 6, 7, 9, 12), reached without a GPU.

CUDA-only decisions are reached by patching torch's capability queries; what Ray assigns is
shown by a local Ray with one logical GPU (`num_gpus=1`): a task that asked for none gets no
GPU id, whatever CUDA_VISIBLE_DEVICES says (Ray 2.60 no longer blanks it for such a task).
"""

import logging

import pytest
import torch

from samsnet_search.config import ExperimentConfig
from samsnet_search.engine import checkpoint
from samsnet_search.engine.device import (
    DeviceError,
    amp_dtype,
    configure_cuda,
    cudnn_benchmark,
    loader_defaults,
    pick_device,
)
from samsnet_search.engine.train import Trainer, with_loader_defaults
from samsnet_search.search.placement import assigned_gpu_ids


def tiny_experiment(root, **train) -> ExperimentConfig:
    """A model small enough for an epoch in about a second on CPU (non-paper sizes)."""
    return ExperimentConfig.model_validate(
        {
            "model": {"n_fft": 256, "hop_length": 128, "channels": 4, "heads": 2, "depth": 1, "slices": 2},
            "data": {"root": str(root), "segment_seconds": 1.0, "samples_per_track": 2, "valid_seconds": 2.0},
            "train": {"lr": 0.01, "batch_size": 4, "patience": 50, "valid_sdr_every": 0, "seed": 3, "threads": 2}
            | train,
        }
    )


@pytest.fixture
def cuda_present(monkeypatch):
    """torch believes a CUDA device is there (capability queries only; nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# --- item 3: the devices Ray assigned ------------------------------------------------------


@pytest.fixture(scope="module")
def ray_with_one_gpu():
    import ray

    ray.init(num_cpus=2, num_gpus=1, object_store_memory=200 * 2**20, include_dashboard=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def device_in_task():
    """A function for a Ray task; defined here, not at module level, so that Ray ships it by value
    (workers cannot import the test modules)."""

    def _device_in_task(name: str):
        """In a Ray task, with CUDA patched as available and visible: the device a job would pick."""
        import os
        from unittest import mock

        import torch

        from samsnet_search.search.placement import job_device

        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")  # what Ray 2.60 leaves a gpu=0 task on a GPU node
        with mock.patch.object(torch.cuda, "is_available", lambda: True):
            try:
                return str(job_device(name))
            except Exception as e:  # the error travels back as text
                return f"{type(e).__name__}: {e}"

    return _device_in_task


def test_a_task_without_gpus_trains_on_cpu_even_where_cuda_is_visible(ray_with_one_gpu, device_in_task):
    ray = ray_with_one_gpu
    task = ray.remote(num_cpus=1, num_gpus=0)(device_in_task)
    assert ray.get(task.remote("auto")) == "cpu"
    refused = ray.get(task.remote("cuda"))
    assert refused.startswith("DeviceError: train.device: cuda") and "resources.gpu > 0" in refused


def test_a_task_with_a_gpu_uses_the_one_ray_assigned(ray_with_one_gpu, device_in_task):
    ray = ray_with_one_gpu
    assert ray.get(ray.remote(num_cpus=1, num_gpus=1)(device_in_task).remote("auto")) == "cuda:0"


def test_the_driver_is_no_ray_worker(ray_with_one_gpu):
    assert assigned_gpu_ids() is None


def test_assigned_ids_are_indexed_among_the_visible_ones(cuda_present, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert pick_device("auto", [3]) == torch.device("cuda", 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert pick_device("cuda", [3]) == torch.device("cuda", 3)


def test_auto_logs_its_choice_and_why(cuda_present, caplog):
    with caplog.at_level(logging.INFO, logger="samsnet_search.engine.device"):
        assert pick_device("auto", []) == torch.device("cpu")
        assert pick_device("auto") == torch.device("cuda", 0)
    assert "train.device auto: cpu (the scheduler assigned this job no GPU)" in caplog.text
    assert "train.device auto: cuda:0 (CUDA is available)" in caplog.text


def test_cuda_without_cuda_is_refused_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("a real GPU is here")
    with pytest.raises(DeviceError, match=r"^train.device: cuda requested but no CUDA device is available"):
        pick_device("cuda")


# --- item 6: AMP dtype ------------------------------------------------------------------------


@pytest.mark.parametrize("native,want", [(True, torch.bfloat16), (False, torch.float16)])
def test_bf16_only_where_native(cuda_present, monkeypatch, native, want):
    """A T4 or V100 reports bf16 support by emulation (`including_emulation=True`, the default)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert amp_dtype() == want


# --- item 9: TF32 and cuDNN autotuning ----------------------------------------------------


@pytest.fixture
def restore_backends():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize("capability,tf32", [((8, 0), True), ((9, 0), True), ((7, 5), False)])
@pytest.mark.parametrize("fixed_shapes", [True, False])
def test_tf32_on_ampere_and_autotuning_only_for_fixed_shapes(
    restore_backends, monkeypatch, capability, tf32, fixed_shapes
):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    configure_cuda(torch.device("cuda", 0), fixed_shapes=fixed_shapes)
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert torch.backends.cudnn.benchmark is fixed_shapes


def test_cpu_leaves_cuda_switches_alone(restore_backends):
    torch.backends.cudnn.benchmark = False
    configure_cuda(torch.device("cpu"), fixed_shapes=True)
    assert torch.backends.cudnn.benchmark is False


def test_autotuning_is_switched_for_a_block_and_back(restore_backends):
    torch.backends.cudnn.benchmark = True
    with cudnn_benchmark(False):
        assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cudnn.benchmark is True


def test_separation_never_autotunes(monkeypatch, tmp_path):
    from samsnet_search.config import ModelConfig
    from samsnet_search.engine import separate

    calls = []
    monkeypatch.setattr(separate, "configure_cuda", lambda device, fixed_shapes: calls.append(fixed_shapes))
    net = checkpoint.build_model(ModelConfig(n_fft=256, hop_length=128, channels=2, depth=1, slices=2).resolved(22050))
    separate.MaskSeparator(net, "cpu")
    assert calls == [False]


# --- item 12: the loader keeps a GPU fed ----------------------------------------------------


@pytest.mark.parametrize(
    "device,cpus,want",
    [("cuda", 8, (4, True)), ("cuda", 3, (2, True)), ("cuda", 1, (0, True)), ("cpu", 8, (0, False))],
)
def test_loader_defaults_by_device_and_cpus(device, cpus, want):
    assert loader_defaults(None, None, torch.device(device), cpus) == want
    assert loader_defaults(1, False, torch.device(device), cpus) == (1, False)  # set values are kept


def test_a_trial_records_the_loader_it_used(synth_root, tmp_path):
    cfg = tiny_experiment(synth_root, epochs=1, threads=3)
    assert cfg.data.num_workers is None and cfg.data.pin_memory is None
    on_gpu = with_loader_defaults(cfg, torch.device("cuda", 0))
    assert (on_gpu.data.num_workers, on_gpu.data.pin_memory) == (2, True)
    Trainer(cfg, tmp_path).fit()
    recorded = checkpoint.load(tmp_path / "checkpoint")["experiment"]["data"]
    assert (recorded["num_workers"], recorded["pin_memory"]) == (0, False)


# --- item 7: the fp16 loss scaler resumes across a mixed cluster ----------------------------


def _fp16_scaler() -> torch.amp.GradScaler:
    """An enabled scaler as on a float16 node (on this CPU build: a CPU GradScaler, same state)."""
    return torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**10)


@pytest.mark.parametrize("saved_state", ["empty", "absent"])
def test_fp16_scaler_resumes_from_a_cpu_or_bf16_checkpoint(synth_root, tmp_path, saved_state):
    cfg = tiny_experiment(synth_root, epochs=1)
    Trainer(cfg, tmp_path / "cpu").fit()  # a CPU node: the scaler is disabled, its state {}
    last = tmp_path / "cpu" / "checkpoint" / checkpoint.LAST
    if saved_state == "absent":
        state = checkpoint.load(last)
        del state["scaler"]
        checkpoint.save(last, state)
    resumed = Trainer(tiny_experiment(synth_root, epochs=2), tmp_path / "fp16")
    resumed.scaler = _fp16_scaler()
    resumed.restore(last)  # raised RuntimeError ("The source state dict is empty") before
    assert resumed.scaler.get_scale() == 2.0**10  # starts fresh
    resumed.fit()
    assert resumed.epoch == 2


def test_a_cpu_or_bf16_node_resumes_from_an_fp16_checkpoint(synth_root, tmp_path):
    fp16 = Trainer(tiny_experiment(synth_root, epochs=1), tmp_path / "fp16")
    fp16.scaler = _fp16_scaler()
    fp16.fit()
    last = tmp_path / "fp16" / "checkpoint" / checkpoint.LAST
    assert checkpoint.load(last)["scaler"]["scale"] > 0
    resumed = Trainer(tiny_experiment(synth_root, epochs=2), tmp_path / "cpu")
    resumed.restore(last)
    assert not resumed.scaler.is_enabled()
    resumed.fit()
    assert resumed.epoch == 2
