"""The local stack's configuration, credentials, addresses and error paths (no servers started)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import psutil
import pytest
from pyarrow import fs as pafs

from samsnet_search import cli
from samsnet_search.services import infra, weed_sandbox
from samsnet_search.services.infra import InfraError
from samsnet_search.services.storage import StorageError


@pytest.fixture(autouse=True)
def _no_aws_env(monkeypatch):
    """These tests decide the AWS variables themselves."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- config


def test_state_dir_default_is_user_level(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # never the real home
    monkeypatch.setenv("SAMSNET_INFRA_DIR", str(tmp_path / "here"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert infra.InfraConfig().state_dir == tmp_path / "here"
    monkeypatch.delenv("SAMSNET_INFRA_DIR")
    assert infra.InfraConfig().state_dir == tmp_path / "xdg" / "samsnet" / "infra"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/xdg")  # the XDG spec says: ignore a relative one
    assert infra.InfraConfig().state_dir == tmp_path / "home" / ".local" / "state" / "samsnet" / "infra"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert infra.InfraConfig().state_dir == tmp_path / "home" / ".local" / "state" / "samsnet" / "infra"


def _user_level_state(monkeypatch, tmp_path):
    """HOME and XDG_STATE_HOME in tmp_path, no SAMSNET_INFRA_DIR, the cwd elsewhere."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SAMSNET_INFRA_DIR", raising=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "xdg" / "samsnet" / "infra"


def test_env_and_status_find_the_stack_from_any_folder(monkeypatch, tmp_path, capsys):
    state = _user_level_state(monkeypatch, tmp_path)
    cfg = infra.InfraConfig()
    creds = infra.load_credentials(cfg, create=True)
    login = infra.load_mlflow_login(cfg, create=True)
    assert infra.credentials_path(cfg) == state / "credentials.json"
    assert cli.main(["infra", "env"]) == 0
    out = capsys.readouterr().out
    assert f"export AWS_SECRET_ACCESS_KEY={creds.secret_key}" in out
    assert f"export MLFLOW_TRACKING_PASSWORD={login.password}" in out
    assert cli.main(["infra", "status"]) == 1  # recorded nowhere: the hint names the folder and the flag
    out = capsys.readouterr().out
    assert f"no stack recorded in {state}" in out and "--state-dir" in out


def test_missing_stack_messages_name_state_dir(monkeypatch, tmp_path, capsys):
    state = _user_level_state(monkeypatch, tmp_path)
    assert cli.main(["infra", "env"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--state-dir" in err and str(state) in err and "infra up" in err, err
    assert cli.main(["infra", "down"]) == 0
    assert "--state-dir" in capsys.readouterr().out


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"bucket": "Bad_Bucket"}, "--bucket: bucket 'Bad_Bucket' is not a valid S3 bucket name"),
        ({"bucket": "ab"}, "--bucket"),
        ({"s3_port": 60000}, "--s3-port: Input should be less than or equal to 55535"),
        ({"mlflow_port": 0}, "--mlflow-port"),
        ({"s3_port": 9000, "mlflow_port": 19000}, "port 19000 is used twice: S3 API gRPC (--s3-port + 10000)"),
        ({"colour": "red"}, "colour: unknown option"),
        ({"auth": False, "host": "0.0.0.0"}, "--no-auth with --host 0.0.0.0 would serve the MLflow server without"),
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
    with pytest.raises(InfraError, match="run `samsnet-search infra up` first, or point --state-dir"):
        infra.client_env(cfg)
    infra.credentials_path(cfg).write_text("{not json")
    with pytest.raises(InfraError, match="credentials.json: not a credentials file"):
        infra.load_credentials(cfg)


def test_mlflow_login_is_generated_once_and_kept_with_the_keys(tmp_path, monkeypatch):
    cfg = infra.InfraConfig(state_dir=tmp_path / "s")
    creds = infra.load_credentials(cfg, create=True)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-client-variable")  # never taken as the server's admin
    login = infra.load_mlflow_login(cfg, create=True)
    assert login.username == infra.MLFLOW_ADMIN and len(login.password) >= 24 and login.password != "a-client-variable"
    assert infra.load_mlflow_login(cfg) == login and infra.load_credentials(cfg) == creds  # one file, both kept
    assert infra.credentials_path(cfg).stat().st_mode & 0o777 == 0o600
    assert login.password not in repr(login) and login.session_key not in repr(login)


def test_mlflow_admin_login_from_the_cluster_environment(tmp_path, monkeypatch):
    """On a cluster every node reads one env file: the head's server takes its admin from it."""
    cfg = infra.InfraConfig(state_dir=tmp_path / "s")
    monkeypatch.setenv(infra.ADMIN_USERNAME_ENV, "cluster-admin")
    monkeypatch.setenv(infra.ADMIN_PASSWORD_ENV, "given-on-every-node")
    login = infra.load_mlflow_login(cfg, create=True)
    assert (login.username, login.password) == ("cluster-admin", "given-on-every-node")
    monkeypatch.delenv(infra.ADMIN_PASSWORD_ENV)
    assert infra.load_mlflow_login(cfg) == login  # kept in the 0600 file like a generated one


def test_mlflow_login_with_environment_s3_keys(tmp_path, monkeypatch):
    cfg = infra.InfraConfig(state_dir=tmp_path / "s")
    infra.load_mlflow_login(cfg, create=True)  # the file now holds only the login
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    assert infra.load_credentials(cfg).source == "environment"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(InfraError, match="no S3 credentials"):
        infra.load_credentials(cfg)


def test_mlflow_server_env_has_our_keys_only(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-for-real-aws")
    auth = {"MLFLOW_AUTH_CONFIG_PATH": "/s/mlflow-auth.ini", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}
    env = infra.stack.mlflow_env("http://127.0.0.1:8333", infra.Credentials("AK", "SK"), "us-east-1", auth)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/s/mlflow-auth.ini" and env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "k"
    assert "AWS_SESSION_TOKEN" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "AK" and env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_commands_bind_host_and_carry_no_secret(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path, host="0.0.0.0")
    creds = infra.load_credentials(cfg, create=True)
    login = infra.load_mlflow_login(cfg, create=True)
    cmd = infra.stack.weed_command(cfg, infra.credentials.write_identities(cfg, creds))
    # The sandbox binds --host; weed itself binds loopback inside its private namespace.
    sandbox, weed = cmd[: cmd.index("--")], cmd[cmd.index("--") + 1 :]
    assert (
        sandbox[1:3] == ["-m", "samsnet_search.services.weed_sandbox"]
        and sandbox[sandbox.index("--host") + 1] == "0.0.0.0"
    )
    assert "-ip.bind=127.0.0.1" in weed and "-master.telemetry=false" in weed and "-s3.port=8333" in weed
    assert f"-s3.localSocket={tmp_path / 's3.sock'}" in weed and f"-filer.localSocket={tmp_path / 'filer.sock'}" in weed
    mlflow = infra.stack.mlflow_command(cfg, "samsnet")
    assert mlflow[mlflow.index("--host") + 1] == "0.0.0.0" and "s3://samsnet/mlartifacts" in mlflow
    assert mlflow[mlflow.index("--app-name") + 1] == "basic-auth"
    assert creds.secret_key not in " ".join(cmd + mlflow) and login.password not in " ".join(cmd + mlflow)
    ident = tmp_path / "s3-identities.json"
    assert ident.stat().st_mode & 0o777 == 0o600
    assert json.loads(ident.read_text())["identities"][0]["credentials"][0]["secretKey"] == creds.secret_key
    ini = infra.stack.write_auth_config(cfg, login)
    assert ini.stat().st_mode & 0o777 == 0o600
    assert (
        f"admin_password = {login.password}" in ini.read_text()
        and "default_permission = NO_PERMISSIONS" in ini.read_text()
    )


def test_opt_outs(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path, auth=False, isolate=False)
    cmd = infra.stack.weed_command(cfg, tmp_path / "ident.json")
    sandbox, weed = cmd[: cmd.index("--")], cmd[cmd.index("--") + 1 :]
    assert "--no-namespace" in sandbox and "-ip.bind=127.0.0.1" in weed
    assert "-s3.port=8333" not in weed  # weed's own S3 TCP port moves aside: the sandbox listens on 8333
    assert "--app-name" not in infra.stack.mlflow_command(cfg, "samsnet")
    # Not isolated, the internal ports are on this machine's loopback and checked there, whatever --host.
    open_cfg = infra.InfraConfig(state_dir=tmp_path, isolate=False, host="10.0.0.5")
    hosts = {host for host, _, label in open_cfg.host_ports() if "S3 API (" not in label and "MLflow" not in label}
    assert len(open_cfg.host_ports()) == 11 and hosts == {"127.0.0.1"}
    assert [(h, p) for h, p, _ in infra.InfraConfig().host_ports()] == [("127.0.0.1", 8333), ("127.0.0.1", 5000)]


# ---------------------------------------------------------------- addresses for clients


def test_storage_uri_and_filesystem():
    uri = infra.storage_uri("samsnet", "/ray/study/", "http://127.0.0.1:8333")
    assert uri == "s3://samsnet/ray/study?endpoint_override=127.0.0.1:8333&scheme=http&region=us-east-1"
    filesystem, path = pafs.FileSystem.from_uri(uri)
    assert isinstance(filesystem, pafs.S3FileSystem) and path == "samsnet/ray/study"
    assert isinstance(infra.s3_filesystem("https://s3.example.org", "a", "b"), pafs.S3FileSystem)


def test_endpoint_without_scheme_is_an_error():
    with pytest.raises(StorageError, match="must look like http://HOST:PORT"):
        infra.storage_uri("samsnet", "x", "127.0.0.1:8333")


def test_client_env_uses_stored_keys_and_config_addresses(tmp_path):
    cfg = infra.InfraConfig(state_dir=tmp_path, mlflow_port=5123, s3_port=8444, host="0.0.0.0")
    creds = infra.load_credentials(cfg, create=True)
    login = infra.load_mlflow_login(cfg, create=True)
    env = infra.client_env(cfg)
    assert env == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5123",  # a wildcard bind is reached on loopback
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:8444",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8444",  # plain s3://BUCKET/PATH goes here (pyarrow, boto3)
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "MLFLOW_TRACKING_USERNAME": login.username,
        "MLFLOW_TRACKING_PASSWORD": login.password,
    }
    no_auth = infra.client_env(cfg.model_copy(update={"auth": False, "host": "127.0.0.1"}))
    assert "MLFLOW_TRACKING_PASSWORD" not in no_auth


def test_plain_s3_uri_resolves_to_the_stack_endpoint(tmp_path, monkeypatch):
    cfg = infra.InfraConfig(state_dir=tmp_path, s3_port=8444)
    infra.load_credentials(cfg, create=True)
    infra.load_mlflow_login(cfg, create=True)
    for key, value in infra.client_env(cfg).items():
        monkeypatch.setenv(key, value)
    assert infra.reachable.s3_endpoint_of("s3://samsnet/ray") == ("http://127.0.0.1:8444", "127.0.0.1", 8444)
    query = "s3://b/x?endpoint_override=10.1.2.3:9000&scheme=http"
    assert infra.reachable.s3_endpoint_of(query) == ("http://10.1.2.3:9000", "10.1.2.3", 9000)  # the URI's query wins


# ---------------------------------------------------------------- ports and stale state


def _listen(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize(
    "taken, flag, extra",
    [
        ("s3_port", "(--s3-port)", []),
        ("mlflow_port", "(--mlflow-port)", []),
        ("s3_grpc", "(--s3-port + 10000)", ["--no-isolation"]),  # isolated, that port is inside the namespace
        ("filer_port", "(--filer-port)", ["--no-isolation"]),
    ],
)
def test_port_clash_names_port_and_flag(make_infra_config, tmp_path, capsys, taken, flag, extra):
    cfg = make_infra_config(tmp_path / "s")
    port = cfg.s3_port + infra.GRPC_OFFSET if taken == "s3_grpc" else getattr(cfg, taken)
    args = [f"--{k.replace('_', '-')}={getattr(cfg, k)}" for k in (*infra.WEED_PORTS, "mlflow_port")]
    with _listen(port):
        assert cli.main(["infra", "up", "--state-dir", str(cfg.state_dir), *args, *extra]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and flag in err, err
    assert not (cfg.state_dir / "stack.json").exists()  # nothing was started


def test_weed_socket_of_another_seaweedfs_is_a_clash(make_infra_config, tmp_path):
    """weed dials its gRPC services through /tmp sockets named by port, across namespaces: a live one is a clash."""
    cfg = make_infra_config(tmp_path / "s")
    path = infra.weed_grpc_sockets({"filer_port": cfg.filer_port})["filer_port"]
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        try:
            with pytest.raises(InfraError, match=rf"{path} is in use by another SeaweedFS.*\(--filer-port \+ 10000\)"):
                infra.check_ports(cfg)
        finally:
            os.unlink(path)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # bound, never listening: what a killed weed leaves
    infra.check_ports(cfg)
    assert not os.path.exists(path)  # removed, so weed can listen there


def test_state_dir_too_long_for_a_unix_socket(tmp_path):
    deep = tmp_path / ("x" * 120)
    with pytest.raises(InfraError, match="too long a path for the unix socket"):
        infra.check_ports(
            infra.InfraConfig(
                state_dir=deep,
                s3_port=15001,
                mlflow_port=15002,
                master_port=15003,
                volume_port=15004,
                filer_port=15005,
                admin_port=15006,
            )
        )


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
    assert [(s.name, s.running, s.healthy) for s in infra.status(cfg)] == [
        ("s3", False, False),
        ("mlflow", False, False),
    ]
    assert infra.down(cfg) == []
    assert not cfg.state_dir.exists()


def test_mlflow_needs_s3(tmp_path):
    with pytest.raises(InfraError, match="start the S3 store first"):
        infra.up(infra.InfraConfig(state_dir=tmp_path), services=("mlflow",))
    with pytest.raises(InfraError, match="unknown service"):
        infra.up(infra.InfraConfig(state_dir=tmp_path), services=("redis",))


def test_cli_no_auth_beyond_loopback_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["infra", "up", "--state-dir", str(tmp_path), "--host", "0.0.0.0", "--no-auth"]) == 2
    err = capsys.readouterr().err
    assert "--no-auth with --host 0.0.0.0" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the sandbox's own errors


def test_sandbox_without_namespaces_says_what_to_do(monkeypatch, capsys, free_port):
    def refused() -> None:
        raise weed_sandbox.NamespaceError(1, "unshare: Operation not permitted")

    monkeypatch.setattr(weed_sandbox, "enter_private_network", refused)
    args = ["--host", "127.0.0.1", "--port", str(free_port()), "--socket", "/nonexistent/s3.sock", "--", "weed", "mini"]
    assert weed_sandbox.main(args) == weed_sandbox.EXIT_NAMESPACE
    err = capsys.readouterr().err
    assert "cannot make a private network namespace" in err and "Operation not permitted" in err
    assert "--no-isolation" in err and "apparmor_restrict_unprivileged_userns" in err


def test_up_refuses_when_namespaces_are_not_allowed(make_infra_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weed_sandbox, "namespace_problem", lambda: "Operation not permitted")
    cfg = make_infra_config(tmp_path / "s", isolate=True)
    args = [f"--{k.replace('_', '-')}={getattr(cfg, k)}" for k in (*infra.WEED_PORTS, "mlflow_port")]
    assert cli.main(["infra", "up", "--state-dir", str(cfg.state_dir), *args]) == 2
    err = capsys.readouterr().err
    assert "cannot give SeaweedFS a private network namespace (Operation not permitted)" in err
    assert "--no-isolation" in err and not (cfg.state_dir / "stack.json").exists()


def test_sandbox_port_taken(capsys, free_port):
    port = free_port()
    with _listen(port):
        args = ["--host", "127.0.0.1", "--port", str(port), "--socket", "/nonexistent/s3.sock", "--", "weed", "mini"]
        assert weed_sandbox.main(args) == weed_sandbox.EXIT_BIND
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
