"""Start, stop and inspect the services: SeaweedFS's S3 gateway and the MLflow server."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

from .. import weed_sandbox
from ..storage import s3_client
from .config import (
    ARTIFACT_PREFIX,
    FOREIGN_AWS_VARS,
    GRPC_OFFSET,
    SERVICES,
    STUDY_PREFIX,
    WEED_PORTS,
    InfraConfig,
    InfraError,
)
from .credentials import (
    MLFLOW_ADMIN,
    Credentials,
    MlflowLogin,
    credentials_path,
    load_credentials,
    load_mlflow_login,
    read_credentials_file,
    write_identities,
    write_private,
)
from .processes import (
    alive,
    check_ports,
    find_weed,
    http_ok,
    http_status,
    locked,
    read_state,
    remove_weed_sockets,
    service_url,
    spawn,
    state_path,
    stop_process,
    wait_healthy,
    write_state,
)

log = logging.getLogger(__name__)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_command(cfg: InfraConfig, ident: Path) -> list[str]:
    """`weed_sandbox` running `weed mini`: every port explicit, extras (WebDAV, Iceberg, Lance, telemetry) off.

    weed binds 127.0.0.1 only; the sandbox forwards the S3 API from `cfg.host`. Isolated (the
    default), weed runs in a private network namespace and its ports exist only there. Not
    isolated, they are on this machine's loopback, and weed's own S3 TCP port (unused: the
    sandbox talks to its unix socket) moves to a free port so it does not clash with the sandbox's.
    """
    data = cfg.state_dir / "seaweedfs"
    weed_s3_port = cfg.s3_port if cfg.isolate else _free_loopback_port()
    weed = [
        find_weed(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",  # the address weed announces to itself
        "-ip.bind=127.0.0.1",  # without it weed binds 0.0.0.0
        f"-s3.config={ident}",
        f"-s3.port={weed_s3_port}",
        f"-s3.port.grpc={cfg.s3_port + GRPC_OFFSET}",
        f"-master.port={cfg.master_port}",
        f"-volume.port={cfg.volume_port}",
        f"-filer.port={cfg.filer_port}",
        f"-admin.port={cfg.admin_port}",
        # weed's default unix sockets are /tmp/seaweedfs-{s3,filer}-PORT.sock: keep them in the 0700 state folder
        f"-s3.localSocket={cfg.state_dir / 's3.sock'}",
        f"-filer.localSocket={cfg.state_dir / 'filer.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",  # one node: no peers to warn before stopping
    ]
    sandbox = [
        sys.executable,
        "-m",
        "samsnet_search.services.weed_sandbox",
        "--host",
        cfg.host,
        "--port",
        str(cfg.s3_port),
    ]
    sandbox += ["--socket", str(cfg.state_dir / "s3.sock"), "--stop-grace", str(cfg.stop_timeout)]
    if not cfg.isolate:
        sandbox.append("--no-namespace")
    return [*sandbox, "--", *weed]


def _ensure_bucket(client, bucket: str) -> bool:
    """Create `bucket` if missing; True when it exists afterwards. Raises InfraError if keys are refused."""
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise InfraError(f"the S3 store refused our keys ({code}) for bucket {bucket!r}") from None
        if code not in ("404", "NoSuchBucket", "NotFound"):
            log.debug("head_bucket %s: %s", bucket, code)
            return False
    except BotoCoreError as e:
        log.debug("head_bucket %s: %s", bucket, e)
        return False
    try:
        client.create_bucket(Bucket=bucket)
        log.info("created bucket %s", bucket)
        return True
    except (ClientError, BotoCoreError) as e:
        log.debug("create_bucket %s: %s", bucket, e)
        return False


def _s3_ready(client, bucket: str) -> bool:
    """Bucket exists and a small object round-trips (the volume server takes a moment to register)."""
    if not _ensure_bucket(client, bucket):
        return False
    try:
        client.put_object(Bucket=bucket, Key=".samsnet-probe", Body=b"ok")
        client.delete_object(Bucket=bucket, Key=".samsnet-probe")
        return True
    except (ClientError, BotoCoreError) as e:
        log.debug("S3 write probe: %s", e)
        return False


Progress = Callable[[str], None]


def _start_s3(cfg: InfraConfig, creds: Credentials, state: dict[str, Any], say: Progress) -> dict[str, Any]:
    ident = write_identities(cfg, creds)
    data = cfg.state_dir / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    # weed mini saves its options here and reloads any not given on the next command line
    # (a stale gRPC port would survive a port change): every option is given, so drop the file.
    (data / "mini.options").unlink(missing_ok=True)
    endpoint = service_url(cfg.host, cfg.s3_port)
    where = "internal ports in a private network namespace" if cfg.isolate else "internal ports OPEN on 127.0.0.1"
    say(f"s3: starting SeaweedFS (S3 API on {endpoint}, {where})")
    began = time.monotonic()
    rec = spawn(weed_command(cfg, ident), cfg.state_dir / "logs" / "seaweedfs.log")
    rec.update(endpoint=endpoint, ports={k: getattr(cfg, k) for k in WEED_PORTS}, isolated=cfg.isolate)
    state["services"]["s3"] = rec
    write_state(cfg, state)  # recorded before waiting, so `down` can stop a start that hangs
    deadline = time.monotonic() + cfg.start_timeout
    wait_healthy(lambda: http_ok(endpoint + "/healthz"), rec, "SeaweedFS", cfg.start_timeout)
    say(f"s3: answering after {time.monotonic() - began:.1f} s; waiting for bucket {cfg.bucket!r} to take writes")
    client = s3_client(endpoint, creds.access_key, creds.secret_key, cfg.region)
    left = max(1.0, deadline - time.monotonic())
    wait_healthy(lambda: _s3_ready(client, cfg.bucket), rec, "SeaweedFS S3 bucket", left)
    say(f"s3: healthy after {time.monotonic() - began:.1f} s (pid {rec['pid']})")
    log.info("SeaweedFS S3 at %s (pid %d), bucket %s", endpoint, rec["pid"], cfg.bucket)
    return rec


def mlflow_command(cfg: InfraConfig, bucket: str) -> list[str]:
    db = (cfg.state_dir / "mlflow.db").resolve()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        cfg.host,
        "--port",
        str(cfg.mlflow_port),
        "--workers",
        "1",  # 1 worker: about 430 MB instead of 2.3 GB (docs/infra.md)
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        f"s3://{bucket}/{ARTIFACT_PREFIX}",
    ]
    if cfg.auth:
        cmd += ["--app-name", "basic-auth"]  # users in mlflow-auth.db; config from MLFLOW_AUTH_CONFIG_PATH
    if cfg.allowed_hosts:
        cmd += ["--allowed-hosts", cfg.allowed_hosts]
    return cmd


def write_auth_config(cfg: InfraConfig, login: MlflowLogin) -> Path:
    """MLflow's basic-auth config: our admin, and no permission for anyone else by default."""
    db = (cfg.state_dir / "mlflow-auth.db").resolve()
    path = cfg.state_dir / "mlflow-auth.ini"
    write_private(
        path,
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{db}\n"
        f"admin_username = {login.username}\n"
        f"admin_password = {login.password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    return path


def mlflow_env(s3_endpoint: str, creds: Credentials, region: str, auth: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: the S3 keys and the auth settings go here only, never on its command line."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_AWS_VARS}
    env.update(
        MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID=creds.access_key,
        AWS_SECRET_ACCESS_KEY=creds.secret_key,
        AWS_DEFAULT_REGION=region,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no job-runner processes (memory)
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    env.update(auth or {})
    return env


def _start_mlflow(cfg: InfraConfig, creds: Credentials, state: dict[str, Any], say: Progress) -> dict[str, Any]:
    s3 = state["services"]["s3"]
    bucket = state["bucket"]
    auth_env = None
    if cfg.auth:
        login = load_mlflow_login(cfg, create=True)
        auth_env = {
            "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(cfg, login).resolve()),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": login.session_key,  # signs the UI's session and CSRF cookies
        }
    env = mlflow_env(s3["endpoint"], creds, state["region"], auth_env)
    endpoint = service_url(cfg.host, cfg.mlflow_port)
    say(f"mlflow: starting the MLflow server on {endpoint} ({'basic auth' if cfg.auth else 'NO authentication'})")
    began = time.monotonic()
    rec = spawn(mlflow_command(cfg, bucket), cfg.state_dir / "logs" / "mlflow.log", env)
    rec.update(endpoint=endpoint, ports={"mlflow_port": cfg.mlflow_port}, auth=cfg.auth)
    state["services"]["mlflow"] = rec
    write_state(cfg, state)
    # A new sqlite store runs its migrations first: about 20 s on 2 cores.
    wait_healthy(lambda: http_ok(endpoint + "/health"), rec, "MLflow server", cfg.start_timeout)
    if cfg.auth:
        probe = http_status(
            endpoint + "/api/2.0/mlflow/experiments/search?max_results=1", (login.username, login.password)
        )
        if probe != 200:
            raise InfraError(
                f"the MLflow server at {endpoint} refuses the admin login of {credentials_path(cfg)} ({probe}): its "
                f"user database {cfg.state_dir / 'mlflow-auth.db'} was made with another; delete that file "
                "(runs and models stay) and run `infra up` again"
            )
    say(f"mlflow: healthy after {time.monotonic() - began:.1f} s (pid {rec['pid']})")
    log.info("MLflow server at %s (pid %d), artifacts in s3://%s/%s", endpoint, rec["pid"], bucket, ARTIFACT_PREFIX)
    return rec


@dataclass
class StackInfo:
    """What `up` left running. Holds no secrets."""

    state_dir: Path
    host: str
    bucket: str
    region: str
    s3_endpoint: str | None
    tracking_uri: str | None
    pids: dict[str, int]
    started: list[str]
    already_running: list[str]
    mlflow_login: str | None = None  # the admin user name when the MLflow server wants a login

    @property
    def artifact_root(self) -> str:
        return f"s3://{self.bucket}/{ARTIFACT_PREFIX}"


def _info(cfg: InfraConfig, state: dict[str, Any], started: list[str], already: list[str]) -> StackInfo:
    svc = state["services"]
    return StackInfo(
        state_dir=cfg.state_dir,
        host=state.get("host", cfg.host),
        bucket=state.get("bucket", cfg.bucket),
        region=state.get("region", cfg.region),
        s3_endpoint=svc.get("s3", {}).get("endpoint"),
        tracking_uri=svc.get("mlflow", {}).get("endpoint"),
        pids={name: rec["pid"] for name, rec in svc.items()},
        started=started,
        already_running=already,
        mlflow_login=MLFLOW_ADMIN if svc.get("mlflow", {}).get("auth") else None,
    )


def _check_services(services: tuple[str, ...] | list[str]) -> None:
    bad = [s for s in services if s not in SERVICES]
    if bad:
        raise InfraError(f"unknown service(s) {bad}: valid are {list(SERVICES)}")


def up(cfg: InfraConfig, services: tuple[str, ...] = SERVICES, progress: Progress | None = None) -> StackInfo:
    """Start the services not yet running (S3 first: MLflow stores its artifacts there).

    Idempotent: services already running are reported in `already_running` and left as
    they are (with the ports they were started with). Raises InfraError on a taken port,
    a service that dies while starting, or one not healthy within `cfg.start_timeout`.
    `progress` gets one line per step (starting, answering, healthy with seconds).
    """
    say = progress or (lambda line: log.info("%s", line))
    _check_services(services)
    cfg = cfg.model_copy(update={"state_dir": cfg.state_dir.resolve()})
    started: list[str] = []
    with locked(cfg):
        state = read_state(cfg)
        live = {name: alive(rec) for name, rec in state["services"].items()}
        state["services"] = {name: rec for name, rec in state["services"].items() if live[name]}
        to_start = [n for n in SERVICES if n in services and n not in state["services"]]
        already = [n for n in SERVICES if n in services and n in state["services"]]
        for name in already:
            rec = state["services"][name]
            say(f"{name}: already running at {rec['endpoint']} (pid {rec['pid']})")
        if "mlflow" in to_start and "s3" not in state["services"] and "s3" not in to_start:
            raise InfraError("the MLflow server keeps its artifacts in S3: start the S3 store first (infra up)")
        for name in to_start:  # every port checked before anything starts
            check_ports(cfg, name)
        if "s3" in to_start and cfg.isolate:
            problem = weed_sandbox.namespace_problem()
            if problem:
                raise InfraError(
                    f"cannot give SeaweedFS a private network namespace ({problem}): {weed_sandbox.NAMESPACE_HELP}"
                )
        creds = load_credentials(cfg, create=True, source=state.get("credentials") if live.get("s3") else None)
        for name in to_start:
            if name == "s3":
                state.update(host=cfg.host, bucket=cfg.bucket, region=cfg.region, credentials=creds.source)
            try:
                (_start_s3 if name == "s3" else _start_mlflow)(cfg, creds, state, say)
            except BaseException:
                # A failed or interrupted `up` stops what it started (MLflow first).
                for done in reversed([*started, name]):
                    rec = state["services"].pop(done, None)
                    if rec:
                        stop_process(rec, cfg.stop_timeout)
                write_state(cfg, state)
                raise
            started.append(name)
        return _info(cfg, state, started, already)


def down(cfg: InfraConfig, services: tuple[str, ...] = SERVICES) -> list[str]:
    """Stop the running services among `services` (MLflow first); returns the names stopped."""
    _check_services(services)
    if not state_path(cfg).exists():
        return []
    stopped: list[str] = []
    with locked(cfg):
        state = read_state(cfg)
        for name in reversed(SERVICES):
            rec = state["services"].get(name)
            if name not in services or rec is None:
                continue
            if alive(rec):
                stop_process(rec, cfg.stop_timeout)
                stopped.append(name)
                log.info("stopped %s (pid %d)", name, rec["pid"])
            if name == "s3":
                remove_weed_sockets(rec.get("ports", {}))
            del state["services"][name]
        if state["services"]:
            write_state(cfg, state)
        else:
            state_path(cfg).unlink()
    return stopped


@dataclass
class ServiceStatus:
    """One service as `status` sees it."""

    name: str
    address: str
    running: bool
    healthy: bool
    pid: int | None = None
    log: str | None = None


def recorded(cfg: InfraConfig) -> bool:
    """Whether `cfg.state_dir` holds a stack that `up` started (and `down` has not removed)."""
    return state_path(cfg).exists()


def status(cfg: InfraConfig) -> list[ServiceStatus]:
    """Each service: recorded and alive (pid), and answering its health endpoint."""
    state = read_state(cfg) if cfg.state_dir.exists() else {"services": {}}
    out = []
    for name, health in (("s3", "/healthz"), ("mlflow", "/health")):
        rec = state["services"].get(name)
        default = service_url(cfg.host, cfg.s3_port if name == "s3" else cfg.mlflow_port)
        running = alive(rec)
        address = rec["endpoint"] if rec else default
        healthy = running and http_ok(address + health)
        pid = rec["pid"] if running else None
        out.append(ServiceStatus(name, address, running, healthy, pid, rec["log"] if rec else None))
    return out


def study_storage(cfg: InfraConfig) -> str:
    """`s3://BUCKET/ray`: where studies on this stack live (the bucket of the running stack, else of
    `cfg`). The plain form: AWS_ENDPOINT_URL_S3 from `client_env` sends it to this store."""
    state = read_state(cfg) if cfg.state_dir.exists() else {}
    return f"s3://{state.get('bucket') or cfg.bucket}/{STUDY_PREFIX}"


def client_env(cfg: InfraConfig) -> dict[str, str]:
    """Environment a client needs: MLflow tracking URI and login, S3 endpoint, keys and region.

    Addresses come from the running stack (stack.json), else from `cfg`. This is the one
    place that hands out the secrets: pass them to a process environment, never to a log.
    AWS_ENDPOINT_URL_S3 makes a plain `s3://BUCKET/PATH` go to this store (pyarrow, so Ray
    Tune's storage, and boto3 read it); MLflow reads MLFLOW_S3_ENDPOINT_URL.
    """
    state = read_state(cfg) if cfg.state_dir.exists() else {"services": {}}
    svc = state["services"]
    creds = load_credentials(cfg, source=state.get("credentials") if "s3" in svc else None)
    s3_endpoint = svc.get("s3", {}).get("endpoint") or service_url(cfg.host, cfg.s3_port)
    region = state.get("region", cfg.region)
    env = {
        "MLFLOW_TRACKING_URI": svc.get("mlflow", {}).get("endpoint") or service_url(cfg.host, cfg.mlflow_port),
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }
    if "mlflow" in svc:
        wants_login = svc["mlflow"].get("auth", False)  # as the running server was started
    else:  # the next `up` follows cfg.auth; before the first one there is no login yet
        wants_login = cfg.auth and "mlflow_password" in read_credentials_file(credentials_path(cfg))
    if wants_login:
        login = load_mlflow_login(cfg)
        env.update(MLFLOW_TRACKING_USERNAME=login.username, MLFLOW_TRACKING_PASSWORD=login.password)
    return env
