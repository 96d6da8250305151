"""MLflow tracking on the embedded store: parent/child runs, params, metrics, status, registry, secrets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from samsnet_search.errors import ConfigError
from samsnet_search.services import tracking
from samsnet_search.services.tracking import ChildRunSpec, TrialRun


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One embedded store per module: creating the SQLite schema takes seconds."""
    folder = tmp_path_factory.mktemp("mlruns")
    target = tracking.resolve_tracking(str(folder))
    exp = tracking.ensure_experiment(target, "unit")
    return target, exp


def scan_for_secrets(target, run_id: str, secrets: list[str]) -> list[str]:
    """Every place a secret value shows up in a run: params, tags, artifact files."""
    c = tracking.client(target)
    run = c.get_run(run_id)
    hits = [f"param {k}" for k, v in run.data.params.items() if any(s in v or s in k for s in secrets)]
    hits += [f"tag {k}" for k, v in run.data.tags.items() if any(s in v for s in secrets)]
    root = Path(run.info.artifact_uri.removeprefix("file://"))
    for f in root.rglob("*") if root.exists() else []:
        if f.is_file() and any(s.encode() in f.read_bytes() for s in secrets):
            hits.append(f"artifact {f.relative_to(root)}")
    return hits


def test_resolve_tracking(tmp_path):
    t = tracking.resolve_tracking("mlruns", tmp_path)
    assert t.uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert t.artifact_root == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert t.embedded and "mlflow ui --backend-store-uri sqlite:///" in t.where()
    # not MLflow's default port 5000: `infra up`'s server listens there
    assert f" --port {tracking.UI_PORT} " in t.where("7") and tracking.UI_PORT != 5000
    assert f"-> http://127.0.0.1:{tracking.UI_PORT}/#/experiments/7" in t.where("7")
    http = tracking.resolve_tracking("http://127.0.0.1:5000")
    assert (
        http.uri == "http://127.0.0.1:5000" and not http.embedded and http.where() == "MLflow UI: http://127.0.0.1:5000"
    )
    with pytest.raises(ConfigError, match="file store is in maintenance mode"):
        tracking.resolve_tracking("file:///tmp/mlruns")
    with pytest.raises(ConfigError, match="credentials in the URI"):
        tracking.resolve_tracking("https://me:secret@mlflow.example.org")


def test_unreachable_server_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(tracking.TrackingError, match="tracking.uri http://127.0.0.1:9: cannot open MLflow experiment"):
        tracking.ensure_experiment(tracking.resolve_tracking("http://127.0.0.1:9"), "x")


def test_flatten_params_is_consistent():
    params = tracking.flatten_params(
        {
            "model": {"slices": 4, "slice_frames": None},
            "data": {"valid_tracks": ["a", "b"], "augment": {"remix": True}},
            "x": "y" * 7000,
        }
    )
    assert params == {
        "model.slices": "4",
        "model.slice_frames": "None",
        "data.valid_tracks": '["a", "b"]',
        "data.augment.remix": "True",
        "x": "y" * 5997 + "...",
    }


def test_parent_and_child_runs(store, tmp_path):
    target, exp = store
    assert tracking.ensure_experiment(target, "unit") == exp  # idempotent
    parent = tracking.start_parent_run(target, exp, "unit")
    tracking.log_study_details(target, parent, "name: unit\n", {"search": {"num_samples": 3}}, "fp123", "synthetic")
    c = tracking.client(target)
    prun = c.get_run(parent)
    assert prun.data.params == {"search.num_samples": "3"}
    assert prun.data.tags[tracking.STUDY_TAG] == "unit" and prun.data.tags[tracking.ROLE_TAG] == "study"
    assert prun.data.tags["samsnet.data_fingerprint"] == "fp123"
    assert prun.data.tags["version.torch"] and prun.data.tags["version.python"]
    assert [a.path for a in c.list_artifacts(parent)] == ["study.yaml"]
    # logging details again (resume) keeps params and does not fail on immutability
    tracking.log_study_details(target, parent, "name: unit\n", {"search": {"num_samples": 3, "seed": 1}})
    assert c.get_run(parent).data.params["search.seed"] == "1"

    spec = ChildRunSpec(target.uri, target.artifact_root, exp, parent, "unit", system_metrics=False)
    run = TrialRun(spec, "t0001", "trial one")
    assert not run.resumed
    run.log_config({"model": {"slices": 4}, "train": {"lr": 0.001}}, {"slices": 4, "slice_frames": 10})
    run.log_epoch({"epoch": 1, "train_loss": 1.0, "valid_loss": 0.9, "valid_sdr": None}, 1)
    run.log_epoch({"epoch": 2, "train_loss": 0.8, "valid_loss": 0.7, "valid_sdr": 2.5, "valid_sdr_vocals": 3.0}, 2)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "best.pt").write_bytes(b"weights")
    run.log_best(ckpt / "best.pt", 2)
    child = c.get_run(run.run_id)
    assert child.data.tags[tracking.PARENT_TAG] == parent
    assert child.data.tags[tracking.TRIAL_TAG] == "t0001"
    assert child.data.tags[tracking.STATUS_TAG] == "running"
    assert child.data.params == {"model.slices": "4", "train.lr": "0.001"}
    assert [m.step for m in c.get_metric_history(run.run_id, "valid_loss")] == [1, 2]
    assert [m.value for m in c.get_metric_history(run.run_id, "valid_sdr")] == [2.5]  # None is not a metric
    assert "epoch" not in child.data.metrics
    assert {a.path for a in c.list_artifacts(run.run_id, "model")} == {
        "model/best.pt",
        "model/model_config.json",
        "model/experiment.json",
    }

    # a retried / resumed trial reopens its run instead of making a second one
    again = TrialRun(spec, "t0001")
    assert again.resumed and again.run_id == run.run_id
    again.log_config({"model": {"slices": 4}, "train": {"lr": 0.001}}, {"slices": 4})
    again.finish("completed")
    done = c.get_run(run.run_id)
    assert done.data.tags[tracking.STATUS_TAG] == "completed" and done.info.status == "FINISHED"
    # reopening a finished trial (Tune's saved state lagged) leaves it finished
    third = TrialRun(spec, "t0001")
    assert third.finished and third.previous_status == "completed"
    assert c.get_run(run.run_id).data.tags[tracking.STATUS_TAG] == "completed"
    assert third.last_metrics()["epoch"] == 2 and third.last_metrics()["valid_loss"] == 0.7
    other = TrialRun(spec, "t0002")
    other.finish("failed", error="TrainingDiverged: train_loss became nan")
    failed = c.get_run(other.run_id)
    assert failed.info.status == "FAILED" and "nan" in failed.data.tags["samsnet.error"]
    children = tracking.find_child_runs(target, exp, parent)
    assert [r.data.tags[tracking.TRIAL_TAG] for r in children] == ["t0001", "t0002"]
    with pytest.raises(ValueError, match="status must be one of"):
        tracking.set_status(target, other.run_id, "great")


def test_system_metrics_are_logged(store):
    target, exp = store
    parent = tracking.start_parent_run(target, exp, "unit")
    spec = ChildRunSpec(
        target.uri, target.artifact_root, exp, parent, "unit", system_metrics=True, system_metrics_interval_s=0.2
    )
    run = TrialRun(spec, "sys1")
    run.start_system_metrics()
    deadline = time.monotonic() + 20
    c = tracking.client(target)
    while time.monotonic() < deadline and "system/cpu_utilization_percentage" not in c.get_run(run.run_id).data.metrics:
        time.sleep(0.2)
    run.finish("completed")
    assert "system/cpu_utilization_percentage" in c.get_run(run.run_id).data.metrics


def test_secrets_are_refused_and_never_logged(store, monkeypatch):
    target, exp = store
    monkeypatch.setenv("SAMSNET_TEST_API_TOKEN", "tok-123456789")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-987654321")
    secrets = tracking.secret_values()
    assert "tok-123456789" in secrets and "aws-secret-987654321" in secrets
    parent = tracking.start_parent_run(target, exp, "unit")
    with pytest.raises(tracking.TrackingError, match="contains a credential"):
        tracking.log_study_details(target, parent, "key: tok-123456789\n", {})
    with pytest.raises(tracking.TrackingError, match="param 'data.root'"):
        tracking.log_study_details(target, parent, "ok\n", {"data": {"root": "/x/aws-secret-987654321"}})
    spec = ChildRunSpec(target.uri, target.artifact_root, exp, parent, "unit", system_metrics=False)
    run = TrialRun(spec, "sec1")
    run.log_config({"model": {"slices": 2}}, {"slices": 2})
    # an error message carrying a secret is redacted before it becomes a tag
    run.finish("failed", error="could not connect with key aws-secret-987654321")
    assert scan_for_secrets(target, parent, secrets) == []
    assert scan_for_secrets(target, run.run_id, secrets) == []
    assert "***" in tracking.client(target).get_run(run.run_id).data.tags["samsnet.error"]


def test_register_model(store, tmp_path):
    target, exp = store
    parent = tracking.start_parent_run(target, exp, "unit")
    spec = ChildRunSpec(target.uri, target.artifact_root, exp, parent, "unit", system_metrics=False)
    run = TrialRun(spec, "reg1")
    (tmp_path / "best.pt").write_bytes(b"w")
    run.log_best(tmp_path / "best.pt", 1)
    assert tracking.registered_model_name("unit") == "samsnet-unit"
    v1 = tracking.register_model(target, "unit", run.run_id, "model", tags={"slices": "4"})
    v2 = tracking.register_model(target, "unit", run.run_id, "model")
    assert (v1, v2) == ("1", "2")
    version = tracking.client(target).get_model_version("samsnet-unit", "1")
    assert version.run_id == run.run_id and version.tags == {"slices": "4"}


def _dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stopped_tracking_server_is_one_line_naming_infra_up():
    """No environment tuning: the health check answers before MLflow's minutes of retries."""
    uri = f"http://127.0.0.1:{_dead_port()}"
    with pytest.raises(tracking.TrackingError) as info:
        tracking.check_server(tracking.resolve_tracking(uri))
    message = str(info.value)
    assert message.startswith(f"tracking server {uri} does not answer") and "\n" not in message
    assert "samsnet-search infra up" in message and "tracking.uri" in message
    tracking.check_server(tracking.resolve_tracking("mlruns"))  # the embedded store needs no server


def test_a_resumed_trial_does_not_log_an_epoch_mlflow_already_has(store):
    """The driver died after epoch 3 was logged but before Tune saved its checkpoint: the
    resumed trial recomputes epoch 3 from checkpoint 2; MLflow keeps one value per epoch."""
    target, exp = store
    parent = tracking.start_parent_run(target, exp, "unit")
    spec = ChildRunSpec(target.uri, target.artifact_root, exp, parent, "unit", system_metrics=False)
    first = TrialRun(spec, "t-resume")
    first.log_epoch({"params": 10.0}, 0)
    for epoch in (1, 2, 3):
        first.log_epoch({"train_loss": 1.0 / epoch, "valid_loss": 1.0 / epoch}, epoch)
    resumed = TrialRun(spec, "t-resume")
    assert resumed.resumed and resumed.logged_epoch == 3
    resumed.log_epoch({"params": 10.0}, 0)
    for epoch in (3, 4):
        resumed.log_epoch({"train_loss": 0.5 / epoch, "valid_loss": 0.5 / epoch}, epoch)
    c = tracking.client(target)
    assert [m.step for m in c.get_metric_history(first.run_id, "train_loss")] == [1, 2, 3, 4]
    assert [m.value for m in c.get_metric_history(first.run_id, "train_loss")][2] == pytest.approx(1 / 3)
    assert len(c.get_metric_history(first.run_id, "params")) == 1
