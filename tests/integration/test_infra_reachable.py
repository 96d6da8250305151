"""`infra.check_reachable(storage, tracking_uri, timeout)`: one line per problem, against real servers."""

from __future__ import annotations

import socket

import pytest

from samsnet_search.services import infra

pytestmark = pytest.mark.servers


@pytest.fixture
def stack_env(infra_config, s3_stack, mlflow_server, monkeypatch):
    """The environment `eval "$(samsnet-search infra env)"` gives a shell."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    env = infra.client_env(infra_config)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def silent_port(free_port):
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port(grpc_twin=False)))
        s.listen(8)
        yield s.getsockname()[1]


def test_the_running_stack_is_reachable(stack_env, s3_stack, mlflow_server, tmp_path):
    assert infra.check_reachable(f"s3://{s3_stack.bucket}/ray", mlflow_server, timeout=3) == []
    assert infra.check_reachable(infra.storage_uri(s3_stack.bucket, "ray", s3_stack.endpoint_url), mlflow_server) == []
    assert infra.check_reachable(str(tmp_path / "runs" / "new"), "sqlite:///x.db") == []  # local: nothing to reach


def test_missing_bucket_and_wrong_keys(stack_env, s3_stack, monkeypatch):
    assert infra.check_reachable("s3://no-such-bucket/ray", None) == [
        f"storage s3://no-such-bucket/ray: bucket 'no-such-bucket' does not exist at {s3_stack.endpoint_url}"
    ]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack_env["AWS_SECRET_ACCESS_KEY"] + "x")
    problems = infra.check_reachable(f"s3://{s3_stack.bucket}/ray", None)
    assert problems == [
        f"storage s3://{s3_stack.bucket}/ray: {s3_stack.endpoint_url} refused the keys in AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY"
    ]
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert "no S3 keys" in infra.check_reachable(f"s3://{s3_stack.bucket}/ray", None)[0]


def test_endpoints_that_are_down_or_silent(stack_env, free_port, silent_port, monkeypatch):
    dead = free_port(grpc_twin=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{dead}")
    [storage] = infra.check_reachable("s3://samsnet/ray", None, timeout=2)
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{dead}" in storage and "infra up" in storage
    [tracking] = infra.check_reachable(None, f"http://127.0.0.1:{dead}", timeout=2)
    assert tracking.startswith(f"tracking server http://127.0.0.1:{dead} does not answer") and "infra up" in tracking

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent_port}")
    assert infra.check_reachable("s3://samsnet/ray", None, timeout=1) == [
        f"storage s3://samsnet/ray: the S3 endpoint http://127.0.0.1:{silent_port} did not answer within 1 s"
    ]
    [silent] = infra.check_reachable(None, f"http://127.0.0.1:{silent_port}", timeout=1)
    assert "does not answer" in silent and "timed out" in silent


def test_tracking_login_missing_or_wrong(stack_env, mlflow_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    [problem] = infra.check_reachable(None, mlflow_server)
    assert problem.startswith(f"tracking server {mlflow_server} requires a login: set MLFLOW_TRACKING_USERNAME")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    assert infra.check_reachable(None, mlflow_server) == [
        f"tracking server {mlflow_server} refused the login in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (401)"
    ]


def test_local_storage_must_be_a_writable_folder(tmp_path):
    (tmp_path / "a-file").write_text("x")
    assert infra.check_reachable(str(tmp_path / "a-file" / "runs"), None) == [
        f"storage {tmp_path / 'a-file' / 'runs'}: {tmp_path / 'a-file'} is not a folder this user can write"
    ]
