"""The local stack is closed by default: no port of it answers a request that has no credentials.

What listens is found with psutil (in this machine's network namespace and inside SeaweedFS's
private one), never listed by hand; each port is then sent unauthenticated reads and writes.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from samsnet_search.services import infra, weed_sandbox

pytestmark = pytest.mark.servers
if weed_sandbox.namespace_problem():  # `infra up` refuses to start isolated there, saying why
    pytest.skip(f"no private network namespaces here: {weed_sandbox.namespace_problem()}", allow_module_level=True)

# Reads and writes of both APIs, sent to every listening port: each must be refused, as
# 401/403, or 405 where that API has no such operation at all (nothing is done either way).
REFUSED = (401, 403, 405)
PROBES = [
    ("GET", "/"),
    ("GET", "/{bucket}/?list-type=2"),
    ("PUT", "/{bucket}/planted.txt"),
    ("DELETE", "/{bucket}/studies/study.json"),
    ("GET", "/api/2.0/mlflow/experiments/search?max_results=1"),
    ("POST", "/api/2.0/mlflow/experiments/create"),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/0/run/artifacts/model/model.ts"),
    ("GET", "/buckets/{bucket}/?pretty=y"),  # the filer's API, in case a filer answered here
]


def _request(host: str, port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection(infra.processes.connect_host(host), port, timeout=10)
    try:
        conn.request(method, path, body=b"payload" if method in ("PUT", "POST") else None)
        return conn.getresponse().status
    finally:
        conn.close()


def _refused_outside(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(3.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_only_s3_and_mlflow_listen_and_both_refuse_requests_without_credentials(
    infra_config, s3_stack, mlflow_server, stack_listeners
):
    found = stack_listeners(infra_config)
    assert {port for _, port in found.outside} == {infra_config.s3_port, infra_config.mlflow_port}, found.outside
    for host, port in sorted(found.outside):
        for method, path in PROBES:
            status = _request(host, port, method, path.format(bucket=s3_stack.bucket))
            assert status in REFUSED, f"{method} {path} on {host}:{port} answered {status} without credentials"


def test_seaweedfs_internal_ports_exist_only_inside_its_namespace(infra_config, s3_stack, stack_listeners):
    found = stack_listeners(infra_config)
    inside = {port for _, port in found.inside}
    internal = {getattr(infra_config, key) for key in infra.WEED_PORTS if key != "s3_port"}
    grpc = {getattr(infra_config, key) + infra.GRPC_OFFSET for key in infra.WEED_PORTS}
    assert internal | grpc <= inside, f"weed listens on {sorted(inside)}"
    assert all(ip == "127.0.0.1" for ip, _ in found.inside)
    # Inside, the filer answers anyone: the namespace is what keeps it closed.
    filer = f"http://127.0.0.1:{infra_config.filer_port}/buckets/{s3_stack.bucket}/?pretty=y"
    probe = f"import urllib.request; print(urllib.request.urlopen({filer!r}, timeout=10).status)"
    inside_get = subprocess.run([*found.enter, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert inside_get.stdout.strip() == "200", inside_get.stderr
    for port in sorted(inside - {infra_config.s3_port}):  # the S3 port outside is the sandbox's (tested above)
        assert _refused_outside(port), f"port {port} of weed's namespace answers outside it"


def test_seaweedfs_unix_sockets_admit_only_this_user(infra_config, s3_stack, stack_listeners):
    """Unix sockets cross network namespaces: each must be this user's alone (mode 0700 or stricter)."""
    found = stack_listeners(infra_config)
    paths = found.unix | {str(infra_config.state_dir / "s3.sock")}
    assert any(p.startswith("/tmp/seaweedfs-") for p in paths), paths  # weed's own gRPC sockets are seen
    for path in sorted(paths):
        st = os.stat(path)
        assert st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0, f"{path}: mode {st.st_mode & 0o777:o}"
    system_python = shutil.which("python3", path="/usr/bin:/bin")  # one that user nobody may run
    if os.geteuid() != 0 or not system_python:
        return
    # As another user (nobody), connecting to each is refused by the kernel.
    connect_all = (
        "import json, socket, sys\n"
        "out = {}\n"
        "for p in json.loads(sys.argv[1]):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    out[p] = s.connect_ex(p)\n"
        "print(json.dumps(out))"
    )

    def as_nobody() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    done = subprocess.run(
        [system_python, "-c", connect_all, json.dumps(sorted(paths))],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=as_nobody,
    )
    codes = json.loads(done.stdout)
    assert codes and all(code == errno.EACCES for code in codes.values()), codes


def test_mlflow_refuses_anonymous_clients_and_artifact_writes(infra_config, s3_stack, mlflow_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(tracking_uri=mlflow_server).search_experiments()
    host, port = infra_config.host, infra_config.mlflow_port
    key = "0/planted/artifacts/model/model.ts"
    assert _request(host, port, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{key}") == 401
    s3 = infra.s3_client(*s3_stack[:3])
    listed = s3.list_objects_v2(Bucket=s3_stack.bucket, Prefix=f"{infra.ARTIFACT_PREFIX}/{key}")
    assert not listed.get("Contents"), "an anonymous artifact write reached the bucket"

    wrong = infra.client_env(infra_config)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", wrong["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", wrong["MLFLOW_TRACKING_PASSWORD"] + "x")
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(tracking_uri=mlflow_server).search_experiments()


def test_the_login_of_infra_env_runs_the_platform_end_to_end(
    infra_config, s3_stack, mlflow_server, monkeypatch, tmp_path
):
    for name, value in infra.client_env(infra_config).items():  # what `eval "$(infra env)"` sets
        monkeypatch.setenv(name, value)
    client = MlflowClient(tracking_uri=mlflow_server)
    exp_id = client.create_experiment("infra-security-e2e")
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "valid_loss", 0.25, step=1)
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"\x00weights")
    client.log_artifact(run.info.run_id, str(weights), artifact_path="model")
    client.set_terminated(run.info.run_id)
    got = client.download_artifacts(run.info.run_id, "model/best.pt", str(tmp_path / "dl"))
    assert open(got, "rb").read() == b"\x00weights"
    assert client.get_metric_history(run.info.run_id, "valid_loss")[0].value == 0.25
    s3 = infra.s3_client(*s3_stack[:3])
    listed = s3.list_objects_v2(Bucket=s3_stack.bucket, Prefix=f"{infra.ARTIFACT_PREFIX}/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/model/best.pt") for k in keys)


def test_without_namespaces_internal_ports_stay_on_loopback(make_infra_config, tmp_path, stack_listeners):
    """--no-isolation (where namespaces are not allowed): --host gets the S3 API only, weed keeps to 127.0.0.1."""
    cfg = make_infra_config(tmp_path / "open", isolate=False, host="127.0.0.2")  # another local address
    try:
        info = infra.up(cfg, services=("s3",))
        found = stack_listeners(cfg)
        assert {(ip, port) for ip, port in found.outside if ip != "127.0.0.1"} == {("127.0.0.2", cfg.s3_port)}
        assert {getattr(cfg, key) for key in infra.WEED_PORTS if key != "s3_port"} <= {p for _, p in found.outside}
        assert _request("127.0.0.2", cfg.s3_port, "GET", f"/{cfg.bucket}/?list-type=2") == 403
        creds = infra.load_credentials(cfg)
        s3 = infra.s3_client(info.s3_endpoint, creds.access_key, creds.secret_key)
        s3.put_object(Bucket=cfg.bucket, Key="open.txt", Body=b"signed")
        assert s3.get_object(Bucket=cfg.bucket, Key="open.txt")["Body"].read() == b"signed"
    finally:
        infra.down(cfg)
