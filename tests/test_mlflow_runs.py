"""What the MLflow UI shows of a study: named trial runs, pruned trials not shown as failures,
the study's parent run open until the selection that follows the search has ended."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from samsnet_search.search import select
from samsnet_search.search.identity import Manifest
from samsnet_search.search.runner import close_study
from samsnet_search.search.trial import run_name
from samsnet_search.services import tracking


def _parent(tmp_path):
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    experiment_id = tracking.ensure_experiment(target, "ui")
    return target, experiment_id, tracking.start_parent_run(target, experiment_id, "ui")


def test_trial_runs_are_named_by_trial_and_searched_values():
    name = run_name("3f2a_00001", {"model.slices": 4, "train.lr": 0.000312345, "model.heads": 2})
    assert name == "trial 3f2a_00001 heads=2 slices=4 lr=0.000312"  # model keys, then train keys
    assert run_name("3f2a_00002", {}) == "trial 3f2a_00002"


@pytest.mark.parametrize(
    "status, run_status",
    [("pruned", "FINISHED"), ("stopped_early", "FINISHED"), ("completed", "FINISHED"), ("failed", "FAILED")],
)
def test_pruned_and_early_stopped_trials_finish(tmp_path, status, run_status):
    target, experiment_id, parent = _parent(tmp_path)
    run = tracking.client(target).create_run(experiment_id, tags={tracking.PARENT_TAG: parent}).info.run_id
    tracking.set_status(target, run, status)
    got = tracking.client(target).get_run(run)
    assert got.info.status == run_status and got.data.tags[tracking.STATUS_TAG] == status


def _manifest(target, experiment_id, parent, tmp_path) -> Manifest:
    return Manifest(
        name="ui",
        storage=str(tmp_path / "runs"),
        experiment_name="ui",
        experiment_id=experiment_id,
        parent_run_id=parent,
        registered_model="samsnet-ui",
        tracking_uri=target.uri,
        artifact_root=target.artifact_root,
        base_dir=str(tmp_path),
        source="ui.yaml",
    )


def test_parent_run_spans_search_and_selection(tmp_path):
    target, experiment_id, parent = _parent(tmp_path)
    c = tracking.client(target)
    close_study(_manifest(target, experiment_id, parent, tmp_path), target, "finished", None, keep_open=True)
    assert c.get_run(parent).info.status == "RUNNING"  # the search is done, the selection follows
    with select.parent_run_open(target, parent):
        assert c.get_run(parent).info.status == "RUNNING"
    assert c.get_run(parent).info.status == "FINISHED"
    with pytest.raises(RuntimeError), select.parent_run_open(target, parent):
        raise RuntimeError("a selection job crashed")
    assert c.get_run(parent).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt), select.parent_run_open(target, parent):
        raise KeyboardInterrupt
    assert c.get_run(parent).info.status == "KILLED"


def test_search_alone_ends_the_parent_run(tmp_path):
    target, experiment_id, parent = _parent(tmp_path)
    close_study(_manifest(target, experiment_id, parent, tmp_path), target, "finished", None)
    assert tracking.client(target).get_run(parent).info.status == "FINISHED"
    _, experiment_id, other = _parent(tmp_path)
    close_study(_manifest(target, experiment_id, other, tmp_path), target, "interrupted", None, keep_open=True)
    assert tracking.client(target).get_run(other).info.status == "RUNNING"  # keep_open is the caller's word


# --- the MLflow UI itself, in headless Chromium -----------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def plain_mlflow_server(tmp_path, free_port_for_ui):
    """A real `mlflow server` on 127.0.0.1 with a sqlite store (no login: the UI page is the subject)."""
    port = free_port_for_ui
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--default-artifact-root",
        str(tmp_path / "a"),
    ]
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # a new sqlite store migrates its schema first (~20 s)
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.fixture
def free_port_for_ui():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_mlflow_ui_opens_the_study_on_its_named_runs(tmp_path, plain_mlflow_server):
    target = tracking.resolve_tracking(plain_mlflow_server)
    experiment_id = tracking.ensure_experiment(target, "ui")
    parent = tracking.start_parent_run(target, experiment_id, "ui")
    c = tracking.client(target)
    for i, config in enumerate([{"model.slices": 1}, {"model.slices": 4}]):
        tags = {tracking.PARENT_TAG: parent, "mlflow.parentRunId": parent}
        run = c.create_run(experiment_id, tags=tags, run_name=run_name(f"abc_0000{i}", config)).info.run_id
        tracking.set_status(target, run, "pruned" if i else "completed")
    page = target.where(experiment_id).removeprefix("MLflow UI: ")
    assert page.endswith(f"#/experiments/{experiment_id}?workflowType=machine_learning")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
        "--window-size=1400,900",
    ]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "ui (study)" in dom  # the study's parent run in the runs table, not the GenAI traces page
    assert re.search(r"<strong>3</strong>\s*matching runs", dom)  # and its two nested trial runs
    assert "Traces</h" not in dom
