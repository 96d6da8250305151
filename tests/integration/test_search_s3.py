"""A tiny study against the full local stack: Ray storage on SeaweedFS S3, a real MLflow
server with its artifacts in the same bucket. Everything is listed back with boto3."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from samsnet_search.cli import main
from samsnet_search.search import identity, lease
from samsnet_search.search.runner import run_study
from samsnet_search.search.study import load_study
from samsnet_search.services import infra, tracking

pytestmark = [pytest.mark.slow, pytest.mark.servers]


@pytest.fixture(scope="module")
def stack_env(infra_config, s3_stack, mlflow_server, local_ray):
    """The client environment (keys included) set before Ray starts, so workers inherit it."""
    env = infra.client_env(infra_config)
    with local_ray(env):
        yield env


def test_study_on_s3_and_mlflow_server(tmp_path, synth_root, s3_stack, mlflow_server, stack_env, capsys):
    storage = f"s3://{s3_stack.bucket}/studies"  # the README's plain form: `infra env` says where S3 is
    study_file = tmp_path / "s3tiny.yaml"
    study_file.write_text(
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
                "train": {
                    "lr": {"loguniform": [1e-3, 1e-2]},
                    "batch_size": 2,
                    "epochs": 2,
                    "patience": 2,
                    "valid_sdr_every": 0,
                    "device": "cpu",
                },
                "search": {"num_samples": 2, "max_concurrent_trials": 2},
                "storage": storage,
                "tracking": {"uri": mlflow_server, "system_metrics": False},
            }
        )
    )
    study = load_study(study_file, base_dir=tmp_path)
    result = run_study(study)
    assert len(result.trials) == 2 and {t.status for t in result.trials} <= {"completed", "pruned"}
    assert not result.target.embedded and result.target.uri == mlflow_server

    # Ray's study folder, checkpoints and the manifest are objects in the bucket
    s3 = infra.s3_client(s3_stack.endpoint_url, s3_stack.access_key, s3_stack.secret_key)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_stack.bucket)
        for o in page.get("Contents", [])
    ]
    study_keys = [k for k in keys if k.startswith("studies/s3tiny/")]
    assert "studies/s3tiny/study.json" in study_keys and "studies/s3tiny/study.yaml" in study_keys
    assert any(k.endswith("tuner.pkl") for k in study_keys)
    for t in result.trials:
        assert any(
            k.startswith(f"studies/s3tiny/trial_{t.trial_id}/checkpoint_") and k.endswith("/last.pt")
            for k in study_keys
        ), t.trial_id
        assert t.best_checkpoint.path.startswith(f"{s3_stack.bucket}/studies/s3tiny/")
    # MLflow artifacts went through the server into the same bucket
    runs = tracking.find_child_runs(result.target, result.manifest.experiment_id, result.manifest.parent_run_id)
    assert len(runs) == 2
    for run in runs:
        assert any(k.endswith(f"{run.info.run_id}/artifacts/model/best.pt") for k in keys), run.info.run_id
    assert any(k.endswith(f"{result.manifest.parent_run_id}/artifacts/study.yaml") for k in keys)

    # nothing secret in params, tags, or any object the study wrote
    secret = s3_stack.secret_key
    c = tracking.client(result.target)
    for run_id in [result.manifest.parent_run_id] + [r.info.run_id for r in runs]:
        run = c.get_run(run_id)
        assert not any(secret in v for v in {**run.data.params, **run.data.tags}.values())
    for key in keys:
        if key.endswith((".json", ".yaml", ".csv", ".txt")):
            body = s3.get_object(Bucket=s3_stack.bucket, Key=key)["Body"].read()
            assert secret.encode() not in body, key

    # identity on S3: the manifest reads back, ls lists the study
    manifest = identity.read_manifest(identity.study_uri(storage, "s3tiny"))
    assert manifest.state == "finished" and manifest.tracking_uri == mlflow_server
    assert main(["ls", "--storage", storage]) == 0
    assert "s3tiny" in capsys.readouterr().out
    # a checkpoint on S3 is usable by the next step (download + load)
    from samsnet_search.engine.checkpoint import load_model

    model, state = load_model(Path(result.best.best_checkpoint.to_directory()))
    assert state["model_config"]["slices"] == result.best.config["model.slices"]


HOLDER = """
import sys, time
from samsnet_search.search import lease
held = lease.acquire(sys.argv[1], "study", heartbeat_s=0.2)
print("held", flush=True)
time.sleep(600)
"""


def test_one_driver_per_study_on_s3(s3_stack, monkeypatch, caplog):
    """The lease object on S3: a live second driver is refused, a killed one's lease taken over,
    and of drivers starting together one gets it."""
    env = {
        "AWS_ACCESS_KEY_ID": s3_stack.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_stack.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    storage = infra.storage_uri(s3_stack.bucket, "lease-test", s3_stack.endpoint_url)
    study_path = identity.study_uri(storage, f"s{os.getpid()}")
    other = subprocess.Popen([sys.executable, "-c", HOLDER, study_path], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(lease.StudyLocked, match=f"pid {other.pid}"):
            lease.acquire(study_path, "s")
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait(30)
    with caplog.at_level(logging.WARNING, logger="samsnet_search.search.lease"):
        held = lease.acquire(study_path, "s")
    assert f"pid {other.pid}" in caplog.text and "no longer runs" in caplog.text
    assert lease.read_holder(study_path).token == held.holder.token
    held.release()
    assert lease.read_holder(study_path) is None

    won, refused = [], []
    start = threading.Barrier(4)

    def one():
        start.wait()
        try:
            won.append(lease.acquire(study_path, "s"))
        except lease.StudyLocked as e:
            refused.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1 and len(refused) == 3
    won[0].release()


def test_s3_secret_in_no_ray_file_and_no_command_line(tmp_path, synth_root, infra_config, s3_stack, mlflow_server):
    """A real `run` on S3 storage with the keys in its environment (as after `eval "$(infra env)"`):
    the secret is in no file under Ray's temp folder and on no command line while trials run."""
    import shutil
    import tempfile
    import time

    import psutil

    storage = infra.storage_uri(s3_stack.bucket, "secrets", s3_stack.endpoint_url)
    study_file = tmp_path / "nosecret.yaml"
    study_file.write_text(
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
                "train": {
                    "lr": 1e-3,
                    "batch_size": 2,
                    "epochs": 2,
                    "patience": 2,
                    "valid_sdr_every": 0,
                    "device": "cpu",
                },
                "search": {"num_samples": 2, "scheduler": "fifo", "max_concurrent_trials": 2},
                "storage": storage,
                "tracking": {"uri": mlflow_server, "system_metrics": False},
            }
        )
    )
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        **infra.client_env(infra_config),
        "RAY_TMPDIR": ray_tmp,
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
    }
    secret = s3_stack.secret_key
    cmd = [
        sys.executable,
        "-m",
        "samsnet_search.cli",
        "run",
        str(study_file),
        "--no-live",
        "--no-select",
        "--num-cpus",
        "2",
    ]
    seen_on = []
    try:
        with open(tmp_path / "driver.log", "w") as log:
            driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 300
            while driver.poll() is None and time.monotonic() < deadline:
                for p in psutil.process_iter(["pid", "cmdline"]):
                    if any(secret in arg for arg in p.info["cmdline"] or []):
                        seen_on.append(" ".join(p.info["cmdline"]).replace(secret, "***")[:300])
                time.sleep(0.2)
            assert driver.wait(30) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        assert not seen_on, seen_on
        files = [f for f in Path(ray_tmp).rglob("*") if f.is_file() and not f.is_symlink()]
        assert any(f.name == "runtime_env_agent.log" for f in files), "Ray's session logs are where the test looks"
        leaked = [str(f) for f in files if secret.encode() in f.read_bytes()]
        assert not leaked, leaked
        assert secret not in (tmp_path / "driver.log").read_text()
        manifest = identity.read_manifest(identity.study_uri(storage, "nosecret"))
        assert manifest is not None and manifest.state == "finished"  # the trials wrote to S3 all the same
        assert not list(Path("/dev/shm").glob("samsnet-aws-*"))  # the credentials file is gone
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_validate_reaches_the_stack(tmp_path, synth_root, infra_config, s3_stack, mlflow_server, monkeypatch, capsys):
    for k, v in infra.client_env(infra_config).items():
        monkeypatch.setenv(k, v)
    study_file = tmp_path / "reach.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}},
                "data": {"root": str(synth_root), "segment_seconds": 0.5},
                "storage": infra.storage_uri(s3_stack.bucket, "studies", s3_stack.endpoint_url),
                "tracking": {"uri": mlflow_server},
            }
        )
    )
    assert main(["validate", str(study_file)]) == 0
    assert "reachable: storage and tracking server" in capsys.readouterr().out
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(["validate", str(study_file)]) == 2
    assert "refused the keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in capsys.readouterr().err
