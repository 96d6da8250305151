"""A fractional trial is capped to its share of the GPU; out of GPU memory is "does not fit", not a failure."""

from __future__ import annotations

import pytest
import torch

from samsnet_search.config import ExperimentConfig
from samsnet_search.engine import gpu_share
from samsnet_search.search import trial


@pytest.fixture
def fake_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    return calls


def test_a_fractional_trial_is_capped_to_its_share(fake_cuda):
    assert gpu_share.cap_to_share(0.5, "cuda")
    assert fake_cuda == [(0.5, 0)]


@pytest.mark.parametrize("share,device", [(1.0, "cuda"), (0.0, "auto"), (0.5, "cpu")])
def test_whole_gpus_cpu_trials_and_cpu_devices_are_not_capped(fake_cuda, share, device):
    assert not gpu_share.cap_to_share(share, device)
    assert fake_cuda == []


def test_out_of_memory_is_recognised_in_its_forms():
    assert gpu_share.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert gpu_share.is_out_of_memory(RuntimeError("CUDNN_STATUS_INTERNAL_ERROR: out of memory"))
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise ValueError("while validating") from inner
    except ValueError as outer:
        assert gpu_share.is_out_of_memory(outer)
    assert not gpu_share.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not gpu_share.is_out_of_memory(ValueError("out of memory"))  # only torch's errors say it


class FakeRun:
    trial_id = "t1"

    def __init__(self):
        self.status = None

    def start_system_metrics(self, gpu_ids=()):
        pass

    def tag_device(self, gpu_ids):
        pass

    def stop_system_metrics(self):
        pass

    def log_config(self, *args):
        pass

    def log_epoch(self, *args):
        pass

    def finish(self, status, error=None):
        self.status, self.error = status, error


@pytest.mark.parametrize(
    "error,status",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.60 GiB"), "does_not_fit"),
        (KeyError("x"), "failed"),
    ],
)
def test_an_out_of_memory_trial_is_tagged_does_not_fit(monkeypatch, tmp_path, error, status):
    class OutOfMemoryTrainer:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            raise error

    monkeypatch.setattr(trial, "Trainer", OutOfMemoryTrainer)
    cfg = ExperimentConfig.model_validate({"model": {"channels": 4, "n_fft": 256, "hop_length": 64}})
    run = FakeRun()
    with pytest.raises(type(error)):
        trial.train_tracked(cfg, run, tmp_path)
    assert run.status == status
    assert (status == "does_not_fit") == ("out of memory" in run.error)


def test_the_trial_ends_normally_on_out_of_memory_so_tune_does_not_retry_it(monkeypatch, fake_cuda):
    """Tune retries (FailureConfig.max_failures) only a trainable that raises: this one returns."""
    from types import SimpleNamespace

    context = SimpleNamespace(get_trial_id=lambda: "t1", get_assigned_resources=lambda: {"GPU": 0.25})
    monkeypatch.setattr(trial.tune, "get_context", lambda: context)
    monkeypatch.setattr(trial.ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr(trial, "worker_http_settings", lambda: None)
    monkeypatch.setattr(trial, "record_node", lambda run: "node")
    tags: dict[str, str] = {}
    client = SimpleNamespace(
        get_run=lambda run_id: SimpleNamespace(data=SimpleNamespace(tags=tags)),
        set_tag=lambda run_id, k, v: tags.__setitem__(k, v),
    )
    monkeypatch.setattr(
        trial, "TrialRun", lambda *a: SimpleNamespace(finished=False, client=client, run_id="r", trial_id="t1")
    )

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(trial, "train_tracked", oom)
    ctx = trial.TrialContext(study_name="s", base={"train": {"device": "cuda"}}, tracking=None, max_failures=2)
    trial.train_trial({"model.slices": 2}, ctx)  # returns: no exception for Tune to retry
    assert fake_cuda == [(0.25, 0)]  # capped to its share first

    monkeypatch.setattr(trial, "train_tracked", lambda *a, **k: (_ for _ in ()).throw(KeyError("x")))
    with pytest.raises(KeyError):
        trial.train_trial({"model.slices": 2}, ctx)
