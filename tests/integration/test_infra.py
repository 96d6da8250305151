"""The local stack against real servers: SeaweedFS S3 (keys required) and MLflow with S3 artifacts."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import boto3
import psutil
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from mlflow.tracking import MlflowClient
from pyarrow import fs as pafs

from samsnet_search import cli
from samsnet_search.services import infra

pytestmark = pytest.mark.servers


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


# ---------------------------------------------------------------- S3: keys are required


def test_unsigned_request_is_denied(s3_stack):
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(f"{s3_stack.endpoint_url}/{s3_stack.bucket}?list-type=2", timeout=10)
    assert raw.value.code == 403

    anon = boto3.client(
        "s3",
        endpoint_url=s3_stack.endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError) as put:
        anon.put_object(Bucket=s3_stack.bucket, Key="anon.txt", Body=b"x")
    assert error_code(put) == "AccessDenied"


def test_wrong_secret_and_unknown_key_are_denied(s3_stack):
    wrong = infra.s3_client(s3_stack.endpoint_url, s3_stack.access_key, s3_stack.secret_key + "x")
    with pytest.raises(ClientError) as bad_secret:
        wrong.list_objects_v2(Bucket=s3_stack.bucket)
    assert error_code(bad_secret) == "SignatureDoesNotMatch"

    stranger = infra.s3_client(s3_stack.endpoint_url, "AKNOTAKEY0000000", s3_stack.secret_key)
    with pytest.raises(ClientError) as bad_key:
        stranger.put_object(Bucket=s3_stack.bucket, Key="x.txt", Body=b"x")
    assert error_code(bad_key) == "InvalidAccessKeyId"


def test_right_keys_put_list_get(s3_stack):
    s3 = infra.s3_client(*s3_stack[:3])
    s3.put_object(Bucket=s3_stack.bucket, Key="tests/hello.txt", Body=b"hello sams-net")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_stack.bucket, Prefix="tests/")["Contents"]]
    assert keys == ["tests/hello.txt"]
    assert s3.get_object(Bucket=s3_stack.bucket, Key="tests/hello.txt")["Body"].read() == b"hello sams-net"


def test_pyarrow_filesystem_and_storage_uri(s3_stack, monkeypatch):
    s3fs = infra.s3_filesystem(*s3_stack[:3])
    with s3fs.open_output_stream(f"{s3_stack.bucket}/ray/study/marker.json") as f:
        f.write(b'{"trial": 1}')

    # The URI form carries no keys: pyarrow takes them from the environment, as Ray workers will.
    uri = infra.storage_uri(s3_stack.bucket, "ray/study", s3_stack.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_stack.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_stack.secret_key)
    from_uri, path = pafs.FileSystem.from_uri(uri)
    assert path == f"{s3_stack.bucket}/ray/study"
    with from_uri.open_input_stream(f"{path}/marker.json") as f:
        assert json.loads(f.read()) == {"trial": 1}


# ---------------------------------------------------------------- MLflow: artifacts go to the bucket


def test_mlflow_artifact_lands_in_the_bucket(mlflow_server, s3_stack, tmp_path):
    client = MlflowClient(tracking_uri=mlflow_server)
    exp_id = client.create_experiment("infra-test")
    run = client.create_run(exp_id)
    client.log_param(run.info.run_id, "slices", 12)
    weights = tmp_path / "weights.txt"
    weights.write_text("not really weights")
    client.log_artifact(run.info.run_id, str(weights), artifact_path="model")
    client.set_terminated(run.info.run_id)

    s3 = infra.s3_client(*s3_stack[:3])
    listed = s3.list_objects_v2(Bucket=s3_stack.bucket, Prefix=f"{infra.ARTIFACT_PREFIX}/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/model/weights.txt") for k in keys), keys

    # Downloads come back through the server / presigned S3 URLs.
    got = client.download_artifacts(run.info.run_id, "model/weights.txt", str(tmp_path / "dl"))
    assert open(got).read() == "not really weights"

    logged = client.get_run(run.info.run_id).data
    assert s3_stack.secret_key not in json.dumps({"params": logged.params, "tags": logged.tags})


# ---------------------------------------------------------------- the CLI: up, status, env, down


def test_plain_s3_uri_works_with_infra_env(infra_config, s3_stack, monkeypatch):
    """`storage: s3://BUCKET/PATH` (no query) reaches the stack once `infra env` is in the environment."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in infra.client_env(infra_config).items():
        monkeypatch.setenv(name, value)
    filesystem, path = pafs.FileSystem.from_uri(f"s3://{s3_stack.bucket}/plain/study")  # as Ray Tune opens storage
    assert path == f"{s3_stack.bucket}/plain/study"
    with filesystem.open_output_stream(f"{path}/marker.json") as f:
        f.write(b'{"plain": true}')
    s3 = infra.s3_client(*s3_stack[:3])
    assert s3.get_object(Bucket=s3_stack.bucket, Key="plain/study/marker.json")["Body"].read() == b'{"plain": true}'


def test_ls_finds_a_study_on_the_stack_with_only_what_infra_env_prints(
    infra_config, s3_stack, tmp_path, monkeypatch, capsys
):
    """`eval "$(samsnet-search infra env)"`, then `ls` in any folder lists the stack's studies (s3://BUCKET/ray)."""
    import os
    import shlex

    from samsnet_search.search import identity

    for name in list(os.environ):
        if name.startswith(("AWS_", "MLFLOW_")) or name == "SAMSNET_STORAGE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws, no user config
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["infra", "env", "--state-dir", str(infra_config.state_dir)]) == 0
    exported = dict(shlex.split(line)[1].split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert exported["SAMSNET_STORAGE"] == f"s3://{s3_stack.bucket}/ray"
    for name, value in exported.items():
        monkeypatch.setenv(name, value)

    stored = exported["SAMSNET_STORAGE"]
    m = identity.Manifest(
        "on-the-stack", stored, "on-the-stack", "1", "p", "samsnet-on-the-stack", "x", None, ".", "s.yaml"
    )
    m.state = "finished"
    identity.write_manifest(m)
    assert cli.main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "on-the-stack" in out and "finished" in out


def test_cli_lifecycle(make_infra_config, free_port, tmp_path, capsys, stack_listeners):
    cfg = make_infra_config(tmp_path / "stack")
    state = str(cfg.state_dir)
    # A stale option file from an earlier run must not win over today's flags.
    stale_grpc = free_port(grpc_twin=False)
    (cfg.state_dir / "seaweedfs").mkdir(parents=True)
    (cfg.state_dir / "seaweedfs" / "mini.options").write_text(f"s3.port.grpc={stale_grpc}\n")
    ports = [f"--{k.replace('_', '-')}={getattr(cfg, k)}" for k in (*infra.WEED_PORTS, "mlflow_port")]
    try:
        assert cli.main(["infra", "up", "--state-dir", state, *ports]) == 0
        up_out, progress = capsys.readouterr()
        assert f"http://127.0.0.1:{cfg.s3_port}" in up_out and "(started)" in up_out
        assert f"login: MLflow user {infra.MLFLOW_ADMIN}" in up_out
        steps = (
            "s3: starting SeaweedFS",
            "s3: healthy after",
            "mlflow: starting the MLflow server",
            "mlflow: healthy after",
        )
        assert all(step in progress for step in steps), progress
        inside = {port for _, port in stack_listeners(cfg).inside}
        assert cfg.s3_port + infra.GRPC_OFFSET in inside and stale_grpc not in inside
        assert not listening(cfg.filer_port) and not listening(cfg.master_port)  # only inside weed's namespace

        secret = json.loads((cfg.state_dir / "credentials.json").read_text())["secret_key"]
        assert (cfg.state_dir / "credentials.json").stat().st_mode & 0o777 == 0o600

        assert cli.main(["infra", "status", "--state-dir", state]) == 0
        status_out = capsys.readouterr().out
        assert status_out.count("healthy") == 2, status_out

        assert cli.main(["infra", "up", "--state-dir", state, *ports]) == 0
        again, again_progress = capsys.readouterr()
        assert again.count("(already running)") == 2, again
        assert "s3: already running at" in again_progress and "starting" not in again_progress

        assert cli.main(["infra", "env", "--state-dir", state]) == 0
        env_out = capsys.readouterr().out
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{cfg.mlflow_port}" in env_out
        assert f"export AWS_SECRET_ACCESS_KEY={secret}" in env_out  # the one place it is printed
        password = json.loads((cfg.state_dir / "credentials.json").read_text())["mlflow_password"]
        assert f"export MLFLOW_TRACKING_PASSWORD={password}" in env_out

        stack_json = (cfg.state_dir / "stack.json").read_text()
        logs = [(cfg.state_dir / "logs" / name).read_text() for name in ("mlflow.log", "seaweedfs.log")]
        for text in (up_out, progress, status_out, again, again_progress, stack_json, *logs):
            assert secret not in text and password not in text
        pids = json.loads(stack_json)["services"]
        keys = json.loads((cfg.state_dir / "credentials.json").read_text())
        s3 = infra.s3_client(f"http://127.0.0.1:{cfg.s3_port}", keys["access_key"], secret)
        s3.put_object(Bucket=cfg.bucket, Key="kept.txt", Body=b"survives restarts")
    finally:
        assert cli.main(["infra", "down", "--state-dir", state]) == 0
    assert "stopped: mlflow, s3" in capsys.readouterr().out

    for port, label in cfg.ports():
        assert not listening(port), f"{label} port {port} still open after down"
    for rec in pids.values():
        assert not infra.processes.alive(rec)
    assert not (cfg.state_dir / "stack.json").exists()
    assert cli.main(["infra", "status", "--state-dir", state]) == 1
    assert capsys.readouterr().out.count("down") == 2

    # A second `up` reuses keys, data and the MLflow store.
    try:
        assert cli.main(["infra", "up", "--state-dir", state, *ports]) == 0
        assert s3.get_object(Bucket=cfg.bucket, Key="kept.txt")["Body"].read() == b"survives restarts"
        assert cli.main(["infra", "status", "--state-dir", state]) == 0
    finally:
        assert cli.main(["infra", "down", "--state-dir", state]) == 0


def test_sigkill_of_the_store_takes_weed_along_and_up_restarts_it(make_infra_config, tmp_path):
    """A SIGKILLed sandbox must not leave weed running unreachable, holding the data and sockets."""
    cfg = make_infra_config(tmp_path / "killed")
    try:
        info = infra.up(cfg, services=("s3",))
        creds = infra.load_credentials(cfg)
        s3 = infra.s3_client(info.s3_endpoint, creds.access_key, creds.secret_key)
        s3.put_object(Bucket=cfg.bucket, Key="before-kill.txt", Body=b"kept")
        sandbox = psutil.Process(info.pids["s3"])
        [weed] = [p for p in sandbox.children() if p.name() == "weed"]
        sandbox.kill()
        weed.wait(timeout=30)  # returns once weed is gone; raises TimeoutExpired if it outlives the sandbox

        again = infra.up(cfg, services=("s3",))
        assert again.started == ["s3"]
        assert s3.get_object(Bucket=cfg.bucket, Key="before-kill.txt")["Body"].read() == b"kept"
    finally:
        infra.down(cfg)
