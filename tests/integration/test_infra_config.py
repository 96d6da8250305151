"""The local stack's configuration, credentials, addresses and error paths (no servers started)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import psutil
import pytest
from pyarrow import fs as pafs

from samsnet_search import cli, infra
from samsnet_search.infra import InfraError


@pytest.fixture(autouse=True)
def _no_aws_env(monkeypatch):
    """These tests decide the AWS variables themselves."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- config


def test_state_dir_default_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMSNET_INFRA_DIR", str(tmp_path / "here"))
    assert infra.InfraConfig().state_dir == tmp_path / "here"
    monkeypatch.delenv("SAMSNET_INFRA_DIR")
    assert str(infra.InfraConfig().state_dir) == ".samsnet/infra"


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"bucket": "Bad_Bucket"}, "--bucket: bucket 'Bad_Bucket' is not a valid S3 bucket name"),
        ({"bucket": "ab"}, "--bucket"),
        ({"s3_port": 60000}, "--s3-port: Input should be less than or equal to 55535"),
        ({"mlflow_port": 0}, "--mlflow-port"),
        ({"s3_port": 9000, "mlflow_port": 19000}, "port 19000 is used twice: S3 API gRPC (--s3-port + 10000)"),
        ({"colour": "red"}, "colour: unknown option"),
    ],
)
def test_bad_options_name_the_flag(options, expected):
    with pytest.raises(InfraError, match=None) as err:
        infra.make_config(**options)
    assert expected in str(err.value)


def test_cli_bad_option_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["infra", "up", "--state-dir", str(tmp_path), "--bucket", "UPPER"]) == 2
    err = capsys.readouterr().err
    assert "--bucket" in err and "UPPER" in err and "Traceback" not in err
    assert not (tmp_path / "stack.json").exists()


# ---------------------------------------------------------------- credentials


def test_generated_credentials_are_private_and_stable(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path / "s")
    first = infra.load_credentials(cfg, create=True)
    path = infra.credentials_path(cfg)
    assert path.stat().st_mode & 0o777 == 0o600
    assert first.source == "file" and len(first.secret_key) >= 32
    assert infra.load_credentials(cfg) == first
    assert first.secret_key not in repr(first)


def test_environment_credentials_win(tmp_path, monkeypatch):
    cfg = infra.InfraConfig(state_dir=tmp_path / "s")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    creds = infra.load_credentials(cfg, create=True)
    assert (creds.access_key, creds.secret_key, creds.source) == ("AKENV", "envsecret", "environment")
    assert not infra.credentials_path(cfg).exists()  # keys from the environment are not copied there


def test_half_set_environment_credentials_are_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKENV")
    with pytest.raises(InfraError, match="set AWS_SECRET_ACCESS_KEY too"):
        infra.load_credentials(infra.InfraConfig(state_dir=tmp_path), create=True)


def test_missing_or_corrupt_credentials(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path)
    with pytest.raises(InfraError, match="run `infra up` first"):
        infra.client_env(cfg)
    infra.credentials_path(cfg).write_text("{not json")
    with pytest.raises(InfraError, match="credentials.json: not a credentials file"):
        infra.load_credentials(cfg)


def test_mlflow_server_env_has_our_keys_only(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-for-real-aws")
    env = infra._mlflow_env("http://127.0.0.1:8333", infra.Credentials("AK", "SK"), "us-east-1")
    assert "AWS_SESSION_TOKEN" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "AK" and env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_commands_bind_host_and_carry_no_secret(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path)
    creds = infra.load_credentials(cfg, create=True)
    weed = infra._weed_command(cfg, infra._write_identities(cfg, creds))
    assert "-ip.bind=127.0.0.1" in weed and "-master.telemetry=false" in weed and "-s3.port=8333" in weed
    mlflow = infra._mlflow_command(cfg, "samsnet")
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1" and "s3://samsnet/mlartifacts" in mlflow
    assert creds.secret_key not in " ".join(weed + mlflow)
    ident = tmp_path / "s3-identities.json"
    assert ident.stat().st_mode & 0o777 == 0o600
    assert json.loads(ident.read_text())["identities"][0]["credentials"][0]["secretKey"] == creds.secret_key


# ---------------------------------------------------------------- addresses for clients


def test_storage_uri_and_filesystem():
    uri = infra.storage_uri("samsnet", "/ray/study/", "http://127.0.0.1:8333")
    assert uri == "s3://samsnet/ray/study?endpoint_override=127.0.0.1:8333&scheme=http&region=us-east-1"
    filesystem, path = pafs.FileSystem.from_uri(uri)
    assert isinstance(filesystem, pafs.S3FileSystem) and path == "samsnet/ray/study"
    assert isinstance(infra.s3_filesystem("https://s3.example.org", "a", "b"), pafs.S3FileSystem)


def test_endpoint_without_scheme_is_an_error():
    with pytest.raises(InfraError, match="must look like http://HOST:PORT"):
        infra.storage_uri("samsnet", "x", "127.0.0.1:8333")


def test_client_env_uses_stored_keys_and_config_addresses(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path, mlflow_port=5123, s3_port=8444, host="0.0.0.0")
    creds = infra.load_credentials(cfg, create=True)
    env = infra.client_env(cfg)
    assert env == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5123",  # a wildcard bind is reached on loopback
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:8444",
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


# ---------------------------------------------------------------- ports and stale state


def _listen(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize(
    "taken, flag",
    [("s3_port", "(--s3-port)"), ("s3_grpc", "(--s3-port + 10000)"), ("mlflow_port", "(--mlflow-port)")],
)
def test_port_clash_names_port_and_flag(make_infra_config, tmp_path, capsys, taken, flag):
    cfg = make_infra_config(tmp_path / "s")
    port = cfg.s3_port + infra.GRPC_OFFSET if taken == "s3_grpc" else getattr(cfg, taken)
    args = [f"--{k.replace('_', '-')}={getattr(cfg, k)}" for k in (*infra.WEED_PORTS, "mlflow_port")]
    with _listen(port):
        assert cli.main(["infra", "up", "--state-dir", str(cfg.state_dir), *args]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and flag in err, err
    assert not (cfg.state_dir / "stack.json").exists()  # nothing was started


def test_host_that_is_not_ours(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path, host="203.0.113.7")  # TEST-NET-3: documentation range, not ours
    with pytest.raises(InfraError, match="--host must be an address of this machine"):
        infra.check_ports(cfg)


def test_stale_and_foreign_pids_are_neither_reported_nor_killed(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # A live process that is not ours: same pid as recorded, another start time (pid reuse).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        born = psutil.Process(other.pid).create_time()
        services = {
            "s3": {"pid": dead.pid, "create_time": 0.0, "endpoint": "http://127.0.0.1:1", "log": "x"},
            "mlflow": {"pid": other.pid, "create_time": born - 100, "endpoint": "http://127.0.0.1:2", "log": "y"},
        }
        (tmp_path / "stack.json").write_text(json.dumps({"services": services}))
        assert [s.running for s in infra.status(cfg)] == [False, False]
        assert infra.down(cfg) == []
        assert other.poll() is None, "down killed a process that was not the stack's"
        assert not (tmp_path / "stack.json").exists()
    finally:
        other.kill()
        other.wait()


def test_corrupt_state_file(tmp_path):
    (tmp_path / "stack.json").write_text("[1, 2")
    with pytest.raises(InfraError, match="stack.json: unreadable stack state"):
        infra.status(infra.InfraConfig(state_dir=tmp_path))


def test_status_and_down_on_an_empty_folder(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path / "never")
    assert [(s.name, s.running, s.healthy) for s in infra.status(cfg)] == [("s3", False, False), ("mlflow", False, False)]
    assert infra.down(cfg) == []
    assert not cfg.state_dir.exists()


def test_mlflow_needs_s3(tmp_path):
    with pytest.raises(InfraError, match="start the S3 store first"):
        infra.up(infra.InfraConfig(state_dir=tmp_path), services=("mlflow",))
    with pytest.raises(InfraError, match="unknown service"):
        infra.up(infra.InfraConfig(state_dir=tmp_path), services=("redis",))
