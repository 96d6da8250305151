"""Infrastructure faults: which errors are outages, how long they are waited out, and what a
trial's MLflow calls do when the server is away. No servers: real clients against a port
nothing listens on."""

from __future__ import annotations

import socket

import pytest
from mlflow.exceptions import MlflowException, RestException

from samsnet_search.engine.train import TrainingDiverged
from samsnet_search.errors import CheckpointError
from samsnet_search.services import faults, tracking
from samsnet_search.services.faults import InfraUnavailable, RetryingClient, is_infra_error, retry


def dead_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_outages_are_told_from_the_trials_own_errors():
    pyarrow_s3 = OSError(
        "When getting information for key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION "
        "during HeadBucket operation: curlCode: 7, Could not connect to server"
    )
    mlflow_down = MlflowException(
        "API request to http://127.0.0.1:1/api/2.0/mlflow/runs/get failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: ..."
    )
    server_5xx = RestException({"error_code": "INTERNAL_ERROR", "message": "database is locked"})
    for e in (
        pyarrow_s3,
        mlflow_down,
        server_5xx,
        ConnectionRefusedError(111, "refused"),
        TimeoutError("read"),
        OSError("Connection reset by peer"),
        MlflowException("failed with error code 503 != 200"),
    ):
        assert is_infra_error(e), e
    try:  # the cause counts: a library wrapping a reset connection in its own error
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as wrapped:
        assert is_infra_error(wrapped)
    not_found = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'x' not found"})
    for e in (
        TrainingDiverged("train_loss became nan"),
        CheckpointError("x: corrupt checkpoint"),
        not_found,
        ValueError("request timed out"),
        KeyError("f4c9eede"),
        OSError("No such file or directory"),
    ):
        assert not is_infra_error(e), e


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def __call__(self) -> float:
        return self.now


def test_retry_waits_out_an_outage_with_backoff():
    clock, calls = FakeClock(), []

    def flaky():
        calls.append(clock.now)
        if len(calls) <= 5:
            raise ConnectionRefusedError(111, "Connection refused")
        return "stored"

    assert retry(flaky, budget_s=60, what="upload", sleep=clock.sleep, clock=clock) == "stored"
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]  # doubling, from half a second


def test_retry_gives_up_after_its_budget_naming_what_failed():
    clock = FakeClock()

    def down():
        raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation")

    with pytest.raises(InfraUnavailable, match=r"storing epoch 3: still failing after 30 s .*NETWORK_CONNECTION"):
        retry(down, budget_s=30, what="storing epoch 3", sleep=clock.sleep, clock=clock)
    assert sum(clock.sleeps) == pytest.approx(30) and max(clock.sleeps) <= faults.MAX_DELAY_S


def test_retry_passes_the_trials_own_errors_through_at_once():
    clock = FakeClock()

    def diverges():
        raise TrainingDiverged("train_loss became nan in epoch 2")

    with pytest.raises(TrainingDiverged):
        retry(diverges, budget_s=60, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []


def test_a_real_s3_error_of_a_stopped_store_is_an_outage():
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{dead_port()}",
        scheme="http",
        access_key="k",
        secret_key="s",
        region="us-east-1",
        retry_strategy=pafs.AwsDefaultS3RetryStrategy(1),
    )
    with pytest.raises(OSError) as info:
        fs.get_file_info("bucket/study/trial/checkpoint_000001")
    assert is_infra_error(info.value)


def test_mlflow_calls_of_a_trial_wait_for_the_server_then_fail_as_infrastructure(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    target = tracking.resolve_tracking(f"http://127.0.0.1:{dead_port()}")
    client = RetryingClient(tracking.client(target), budget_s=1.0)
    with pytest.raises(InfraUnavailable, match="MLflow get_run: still failing after 1 s"):
        client.get_run("0123")
    spec = tracking.ChildRunSpec(target.uri, None, "0", "parent", "study", system_metrics=False, infra_retry_s=1.0)
    with pytest.raises(InfraUnavailable, match="MLflow run of trial t1"):
        tracking.TrialRun(spec, "t1")


def test_a_failed_trial_is_never_the_best(tmp_path):
    """A trial that reported the best value and then failed (e.g. an outage) must not be
    picked: not as StudyResult.best, not in the summary (and so not as the parent's best_run)."""
    import yaml

    from samsnet_search.search.runner import StudyResult, TrialRecord
    from samsnet_search.search.study import load_study

    (tmp_path / "d").mkdir()
    path = tmp_path / "b.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"n_fft": 512, "hop_length": 128, "slices": {"choice": [1, 2]}},
                "data": {"root": str(tmp_path / "d")},
            }
        )
    )
    study = load_study(path, check_data=False)

    def record(trial_id: str, status: str, loss: float) -> TrialRecord:
        best = {"epoch": 2, "valid_loss": loss}
        return TrialRecord(trial_id, {}, {}, status, 2, best, [best], best, None, None, f"run-{trial_id}", None, "")

    result = StudyResult(
        study, None, None, [record("a", "failed", 0.1), record("b", "completed", 0.5), record("c", "pruned", 0.7)], 1.0
    )
    assert result.best.trial_id == "b"
    assert result.summary()["best_trial"] == "b" and result.summary()["best_run"] == "run-b"
    only_failed = StudyResult(study, None, None, [record("a", "failed", 0.1)], 1.0)
    assert only_failed.best is None and only_failed.summary()["best_trial"] is None


def test_a_client_side_mlflow_error_is_not_an_outage():
    """MlflowException defaults to INTERNAL_ERROR; only a server's answer with that code is one."""
    assert not is_infra_error(MlflowException("Invalid value for metric 'x'"))
    assert is_infra_error(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))


def test_run_with_a_stopped_tracking_server_is_one_line_and_exit_2(tmp_path, synth_root, capsys):
    """Before: 249 s of urllib3 retry warnings, then the error. Now: the health check's line."""
    import yaml

    from samsnet_search.cli import main

    uri = f"http://127.0.0.1:{dead_port()}"
    path = tmp_path / "down.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "n_fft": 256,
                    "hop_length": 128,
                    "slices": {"choice": [1, 2]},
                    "heads": 1,
                    "channels": 2,
                    "depth": 1,
                },
                "data": {"root": str(synth_root), "segment_seconds": 0.5, "valid_seconds": 1.0},
                "train": {"epochs": 1, "patience": 1, "device": "cpu"},
                "storage": str(tmp_path / "runs"),
                "tracking": {"uri": uri},
            }
        )
    )
    assert main(["run", str(path), "--no-live", "--no-select"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"tracking server {uri} does not answer" in err[0] and "samsnet-search infra up" in err[0]


@pytest.mark.slow
def test_a_stopped_trial_still_busy_does_not_fail_the_next_one(tmp_path, synth_root, local_ray):
    """ASHA stops a trial while its thread is still at work (in the field: waiting out an
    MLflow outage). With actor reuse Tune gives that worker the next trial only if the old
    thread ends within TUNE_FUNCTION_THREAD_TIMEOUT_S, else it fails the next trial ("reuse
    requires reset_config()"); 0 here makes every stopped trial such a one."""
    import yaml

    from samsnet_search.search.runner import run_study
    from samsnet_search.search.study import load_study

    path = tmp_path / "reuse.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "n_fft": 256,
                    "hop_length": 128,
                    "slices": {"choice": [1, 2]},
                    "heads": 1,
                    "channels": 2,
                    "depth": 1,
                },
                "data": {"root": str(synth_root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
                # a good learning rate first: the barely learning ones after it are pruned at epoch 1
                "train": {
                    "lr": {"choice": [1e-2, 1e-7]},
                    "batch_size": 2,
                    "epochs": 3,
                    "patience": 3,
                    "valid_sdr_every": 0,
                    "device": "cpu",
                },
                "search": {
                    "searcher": "grid",
                    "num_samples": 1,
                    "scheduler": "asha",
                    "grace_period": 1,
                    "reduction_factor": 2,
                    "max_concurrent_trials": 1,
                },
                "storage": str(tmp_path / "runs"),
                "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics": False},
            }
        )
    )
    with local_ray({"TUNE_FUNCTION_THREAD_TIMEOUT_S": "0"}):
        result = run_study(load_study(path, base_dir=tmp_path))
    statuses = [(t.config["train.lr"], t.status, t.error) for t in result.trials]
    assert len(result.trials) == 4 and "pruned" in {t.status for t in result.trials}, statuses
    assert "failed" not in {t.status for t in result.trials}, statuses


def test_a_full_disk_is_an_outage_not_the_trials_error():
    """ENOSPC/EDQUOT on the study storage or the local work folder: the trial waits, as for a
    storage outage (space can be freed); other file errors stay the trial's own."""
    import errno

    for e in (
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"),  # pyarrow
        OSError("When uploading part for key 'k' in bucket 'b': AWS Error UNKNOWN: Disk quota exceeded"),
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"),  # torch.save, disk full
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    ):
        assert is_infra_error(e), e
    try:  # the cause counts: a failed checkpoint write wrapped in the trainer's error
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "last.pt")
        except OSError as inner:
            raise ValueError("could not save the checkpoint") from inner
    except ValueError as wrapped:
        assert is_infra_error(wrapped)
    for e in (OSError(errno.EACCES, "Permission denied"), OSError(errno.EROFS, "Read-only file system")):
        assert not is_infra_error(e), e


def _trial_workers(tag: str) -> list:
    """The processes running a trial (Tune's function trainable actors) of the Ray started with
    SAMSNET_TEST_RAY=tag in its environment (other Rays may run on this machine)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if " ".join(p.info["cmdline"] or []).startswith("ray::ImplicitFunc") and (
                p.environ().get("SAMSNET_TEST_RAY") == tag
            ):
                found.append(p)
        except psutil.Error:  # gone, or not ours
            continue
    return found


@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_continues_from_its_checkpoint(tmp_path, synth_root, local_ray):
    """SIGKILL of a trial's worker mid-study (the OOM killer, a lost node) with max_failures: 0:
    the trial continues from its last checkpoint and completes, each epoch logged once."""
    import signal
    import threading
    import time

    import yaml

    from samsnet_search.search.runner import run_study
    from samsnet_search.search.study import load_study

    path = tmp_path / "lost.yaml"
    model = {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}, "heads": 1, "channels": 2, "depth": 1}
    data = {"root": str(synth_root), "segment_seconds": 0.5, "samples_per_track": 2, "valid_seconds": 1.0}
    train = {"lr": 3e-3, "batch_size": 2, "epochs": 4, "patience": 4, "valid_sdr_every": 0, "device": "cpu"}
    path.write_text(
        yaml.safe_dump(
            {
                "model": model,
                "data": data,
                "train": train,
                "search": {
                    "searcher": "grid",
                    "num_samples": 1,
                    "scheduler": "fifo",
                    "max_failures": 0,
                    "max_concurrent_trials": 1,
                },
                "storage": str(tmp_path / "runs"),
                "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics": False},
            }
        )
    )
    study = load_study(path, base_dir=tmp_path)
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    killed: list[int] = []

    def kill_after_first_epoch() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            runs = tracking.client(target).search_runs(
                [e.experiment_id for e in tracking.client(target).search_experiments()],
                filter_string="metrics.train_loss > -1",
            )
            workers = _trial_workers(tag)
            if runs and workers:
                workers[0].send_signal(signal.SIGKILL)
                killed.append(workers[0].pid)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
    tag = str(tmp_path)
    with local_ray({"SAMSNET_TEST_RAY": tag}):
        killer.start()
        result = run_study(study)
    killer.join(5)
    assert killed, "no trial worker was found to kill"
    c = tracking.client(target)
    for trial in result.trials:  # the one whose worker was killed too
        assert trial.status == "completed" and trial.epochs == 4, (trial.status, trial.error)
        steps = [m.step for m in c.get_metric_history(trial.mlflow_run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3, 4]  # every epoch once: the retry continued, it did not start over
        assert "samsnet.own_failures" not in c.get_run(trial.mlflow_run_id).data.tags  # not the trial's error


def test_a_trial_failed_by_an_outage_is_told_from_its_records():
    """What the driver reads after the search: the trial's MLflow line when it recorded one, else
    Tune's error; a trial whose error only error.txt holds (its error.pkl cut short and set aside)
    or whose error file is empty failed while the storage was failing: an outage, continued by a
    plain resume."""
    from samsnet_search.search.runner import error_line, is_outage

    own = RuntimeError('Traceback (most recent call last):\n  File "x.py", line 1\nValueError: diverged')
    assert error_line(own, {}) == "ValueError: diverged" and not is_outage(None, own)
    infra = InfraUnavailable("recording the configuration of trial t: still failing after 4 s")
    assert is_outage(None, infra)
    text = "Failure # 1 (occurred at 2026-12-08_00-10-27)\nInfraUnavailable: recording the configuration\n"
    assert error_line(text, {}) == "InfraUnavailable: recording the configuration" and is_outage(None, text)
    assert error_line("Failure # 1 (occurred at x)\n", {}).startswith("unknown") and is_outage(None, "")
    tags = {tracking.ERROR_TAG: "infrastructure: ConnectionError: refused"}
    assert error_line("", tags) == tags[tracking.ERROR_TAG] and is_outage(tags[tracking.ERROR_TAG], "")
    assert not is_outage("ValueError: diverged", "")  # the trial recorded an error of its own
