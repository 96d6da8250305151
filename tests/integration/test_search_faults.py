"""Killing the study's servers mid-study: SeaweedFS or the MLflow server gets SIGKILL while
trials train and is started again seconds later; the study loses no trial, epoch or
checkpoint. A longer outage fails a trial as an infrastructure failure, and
`resume --restart-errored` continues it (from an older checkpoint when the newest is corrupt).

The stack here is this module's own (free ports, its own state folder): the session stack
of the other integration tests is never killed.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

from samsnet_search.engine import checkpoint
from samsnet_search.search.runner import resume_study, run_study
from samsnet_search.search.study import load_study
from samsnet_search.services import infra, tracking

pytestmark = [pytest.mark.slow, pytest.mark.servers]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, make_infra_config, local_ray):
    cfg = make_infra_config(tmp_path_factory.mktemp("faults") / "state")
    try:
        infra.up(cfg)
        env = infra.client_env(cfg)
        with local_ray(env):
            yield cfg, env
    finally:
        infra.down(cfg)


def study_file(tmp_path: Path, data_root: Path, cfg, name: str, search: dict, epochs: int = 6) -> Path:
    env = infra.client_env(cfg)
    storage = infra.storage_uri(cfg.bucket, "studies", env["MLFLOW_S3_ENDPOINT_URL"])
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "model": {
                    "n_fft": 256,
                    "hop_length": 128,
                    "slices": {"choice": [1, 2, 4]},
                    "heads": 1,
                    "channels": 2,
                    "depth": 1,
                },
                "data": {"root": str(data_root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
                "train": {
                    "lr": 1e-3,
                    "batch_size": 2,
                    "epochs": epochs,
                    "patience": epochs,
                    "valid_sdr_every": 0,
                    "device": "cpu",
                },
                "search": {"searcher": "grid", "num_samples": 1, "seed": 0, **search},
                "storage": storage,
                "tracking": {"uri": env["MLFLOW_TRACKING_URI"], "system_metrics": False},
            }
        )
    )
    return path


def epochs_logged(target, experiment_name: str) -> dict[str, tuple[str | None, list[int]]]:
    """trial id -> (status tag, train_loss steps) of a study's trial runs, read from MLflow."""
    c = tracking.client(target)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return {}
    out = {}
    for run in c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'trial'"):
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "train_loss")]
        out[run.data.tags[tracking.TRIAL_TAG]] = (run.data.tags.get(tracking.STATUS_TAG), steps)
    return out


class Outage(threading.Thread):
    """Once `when()` holds, SIGKILL `service` (its whole process group), wait until `back()`
    holds (or `down_s` passed), then start it again with `infra up`."""

    def __init__(
        self,
        cfg,
        service: str,
        when: Callable[[], bool],
        back: Callable[[], bool] = lambda: True,
        down_s: float = 3.0,
        timeout_s: float = 240.0,
    ):
        super().__init__(daemon=True)
        self.cfg, self.service, self.when, self.back, self.down_s, self.timeout_s = (
            cfg,
            service,
            when,
            back,
            down_s,
            timeout_s,
        )
        self.killed_at: float | None = None
        self.restarted_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline and not self._safe(self.when):
                time.sleep(0.3)
            pid = next(s.pid for s in infra.status(self.cfg) if s.name == self.service)
            assert pid, f"{self.service} is not running"
            os.killpg(pid, signal.SIGKILL)
            self.killed_at = time.monotonic()
            infra.down(self.cfg, services=(self.service,))  # forgets the dead process, removes weed's sockets
            time.sleep(self.down_s)
            while time.monotonic() < deadline and not self._safe(self.back):
                time.sleep(0.3)
            infra.up(self.cfg, services=(self.service,))
            self.restarted_at = time.monotonic()
        except BaseException as e:  # reported by the test
            self.error = e

    @staticmethod
    def _safe(check: Callable[[], bool]) -> bool:
        try:
            return check()
        except Exception:
            return False

    def check(self) -> None:
        self.join(300)
        assert self.error is None, self.error
        assert self.killed_at is not None and self.restarted_at is not None


def some_trial_at(target, name: str, epoch: int, status: str = "running") -> Callable[[], bool]:
    return lambda: any(s == status and len(steps) >= epoch for s, steps in epochs_logged(target, name).values())


def s3_keys(cfg, env, prefix: str) -> list[str]:
    s3 = infra.s3_client(env["MLFLOW_S3_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def assert_nothing_lost(result, epochs: int, statuses: set[str] = frozenset({"completed"})) -> None:
    """Every trial ended well with each epoch in MLflow once and its last checkpoint stored intact."""
    assert not result.interrupted and result.manifest.state == "finished"
    assert {t.status for t in result.trials} <= statuses, [(t.trial_id, t.status, t.error) for t in result.trials]
    c = tracking.client(result.target)
    runs = tracking.find_child_runs(result.target, result.manifest.experiment_id, result.manifest.parent_run_id)
    assert sorted(r.data.tags[tracking.TRIAL_TAG] for r in runs) == sorted(t.trial_id for t in result.trials)
    by_id = {t.trial_id: t for t in result.trials}
    for run in runs:
        trial = by_id[run.data.tags[tracking.TRIAL_TAG]]
        assert run.info.status == tracking.RUN_STATUS[trial.status]
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == list(range(1, trial.epochs + 1)), (trial.trial_id, steps)
    for t in result.trials:
        assert t.epochs == epochs or t.status == "pruned"
        assert [h["epoch"] for h in t.history] == list(range(1, t.epochs + 1))
        with tempfile.TemporaryDirectory() as tmp:
            state = checkpoint.load(Path(t.last_checkpoint.to_directory(tmp)))  # checksum verified
        assert state["epoch"] == t.epochs


def run_through_outage(tmp_path, synth_root, stack, name: str, service: str, search: dict):
    """Run study `name` while `service` is killed (once a trial reached epoch 2) and restarted 3 s later."""
    cfg, env = stack
    path = study_file(tmp_path, synth_root, cfg, name, search)
    target = tracking.resolve_tracking(env["MLFLOW_TRACKING_URI"])
    outage = Outage(cfg, service, when=some_trial_at(target, name, 2), down_s=3.0)
    outage.start()
    result = run_study(load_study(path, base_dir=tmp_path))
    outage.check()
    return result


def test_seaweedfs_killed_mid_study_loses_nothing(tmp_path, synth_root, stack):
    cfg, env = stack
    result = run_through_outage(
        tmp_path, synth_root, stack, "s3kill", "s3", {"scheduler": "fifo", "max_concurrent_trials": 2}
    )
    assert len(result.trials) == 3
    assert_nothing_lost(result, 6)
    for t in result.trials:  # each trial's checkpoints are objects in the restarted store
        keys = s3_keys(cfg, env, f"studies/s3kill/trial_{t.trial_id}/checkpoint_")
        assert any(k.endswith("/last.pt") for k in keys) and any(k.endswith("/last.pt.sha256.json") for k in keys)


def test_mlflow_server_killed_mid_study_loses_nothing(tmp_path, synth_root, stack):
    """ASHA prunes while the server is away: a stopped trial still waiting on MLflow must not
    fail the next trial (no actor reuse)."""
    search = {"scheduler": "asha", "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 2}
    result = run_through_outage(tmp_path, synth_root, stack, "mlkill", "mlflow", search)
    assert len(result.trials) == 3
    assert_nothing_lost(result, 6, {"completed", "pruned"})


def test_outage_longer_than_the_budget_fails_the_trial_and_a_plain_resume_continues_it(tmp_path, synth_root, stack):
    """search.infra_retry_s: 2, no retries (worker_retries: 0; they would wait out the outage) and
    SeaweedFS away until the trial has failed: the trial is recorded as an infrastructure failure; its newest checkpoint is then truncated in the
    store. The study is not finished (an outage is not the trial's fault), and a plain `resume`
    continues the trial from the checkpoint before the damaged one."""
    cfg, env = stack
    path = study_file(
        tmp_path,
        synth_root,
        cfg,
        "s3long",
        {"scheduler": "fifo", "max_concurrent_trials": 1, "infra_retry_s": 2, "worker_retries": 0},
    )
    target = tracking.resolve_tracking(env["MLFLOW_TRACKING_URI"])
    some_failed = lambda: any(s == "failed" for s, _ in epochs_logged(target, "s3long").values())  # noqa: E731
    outage = Outage(cfg, "s3", when=some_trial_at(target, "s3long", 3), back=some_failed, down_s=0.0)
    outage.start()
    first = run_study(load_study(path, base_dir=tmp_path))
    outage.check()
    failed = [t for t in first.trials if t.status == "failed"]
    assert failed, [(t.trial_id, t.status) for t in first.trials]
    assert first.interrupted and first.outages == failed
    c = tracking.client(first.target)
    for t in failed:
        assert c.get_run(t.mlflow_run_id).data.tags["samsnet.error"].startswith("infrastructure:")
        assert first.best is None or first.best.trial_id != t.trial_id
    assert first.manifest.summary["best_trial"] not in {t.trial_id for t in failed}

    # the newest checkpoint of each failed trial is damaged in the store
    s3 = infra.s3_client(env["MLFLOW_S3_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    damaged = set()
    for t in failed:
        lasts = sorted(
            k for k in s3_keys(cfg, env, f"studies/s3long/trial_{t.trial_id}/checkpoint_") if k.endswith("/last.pt")
        )
        if len(lasts) >= 2:
            body = s3.get_object(Bucket=cfg.bucket, Key=lasts[-1])["Body"].read()
            s3.put_object(Bucket=cfg.bucket, Key=lasts[-1], Body=body[: len(body) // 2])
            damaged.add(t.trial_id)
    assert damaged

    again = resume_study("s3long", storage=first.manifest.storage)
    assert sorted(t.trial_id for t in again.trials) == sorted(t.trial_id for t in first.trials)  # the same trials
    assert_nothing_lost(again, 6)
    for r in again.result_grid:
        if Path(str(r.path)).name.removeprefix("trial_") in damaged:
            # continued from the checkpoint before the damaged one: Tune got that epoch twice
            # (MLflow once, checked above; the record keeps the later one)
            epochs = list(r.metrics_dataframe["epoch"])
            assert len(epochs) > len(set(epochs)), epochs
