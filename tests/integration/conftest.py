"""Real local servers for integration tests, started once per session.

- `infra_config`: the `InfraConfig` of the session stack (free ports on 127.0.0.1, a
  temporary state folder); `samsnet_search.services.infra.client_env(infra_config)` gives the
  client environment.
- `s3_stack`: a running SeaweedFS S3 store with credentials; yields
  `S3Stack(endpoint_url, access_key, secret_key, bucket)` (a NamedTuple, so it unpacks).
- `mlflow_server`: a running `mlflow server` (basic auth on) whose artifacts go to that
  bucket; yields its tracking URI. While it runs, MLFLOW_TRACKING_USERNAME/PASSWORD of its
  admin are set in this process's environment, so MLflow clients in tests (and Ray workers
  started after it) log in as the platform does after `eval "$(samsnet-search infra env)"`.

- `stack_listeners`: `stack_listeners(cfg)` -> what the stack of `cfg` listens on, found with
  psutil: `outside` (the machine's network namespace) and `inside` (SeaweedFS's private one).

The servers are stopped when the session ends. XDG_STATE_HOME points into the session's
temporary folder, so a default `InfraConfig()` never touches the real home. The `free_port` and `make_infra_config`
fixtures (factories) give further ports and configs that clash neither with each other
nor with the session stack.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import psutil
import pytest

from samsnet_search.services import infra, weed_sandbox

NAMESPACE_PROBLEM = weed_sandbox.namespace_problem()

# Below Linux's ephemeral range (32768+), so outgoing connections never take our ports;
# weed's gRPC twins (port + 10000) stay below it too.
_PORT_RANGE = (15000, 22700)
_handed_out: set[int] = set()
_rng = random.Random()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on host:port (bind test with SO_REUSEADDR, as servers use it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(grpc_twin: bool = True) -> int:
    """A free port not handed out before in this session (and its +10000 twin free too)."""
    for _ in range(1000):
        port = _rng.randrange(*_PORT_RANGE)
        twins = (port, port + infra.GRPC_OFFSET) if grpc_twin else (port,)
        if not any(p in _handed_out for p in twins) and all(port_is_free(p) for p in twins):
            _handed_out.update(twins)
            return port
    raise RuntimeError(f"no free port pair found in {_PORT_RANGE}")


def free_infra_config(state_dir: Path, **overrides) -> infra.InfraConfig:
    """An InfraConfig on 127.0.0.1 with every port free; `overrides` replace fields."""
    ports = {key: free_port() for key in infra.WEED_PORTS}
    ports["mlflow_port"] = free_port(grpc_twin=False)
    # Short stop timeout: tests should not hang on a stuck server. Where the kernel allows no
    # private namespaces, stacks run --no-isolation so the tests that only need S3 still run
    # (test_infra_security skips, saying why).
    fields = dict(state_dir=state_dir, host="127.0.0.1", stop_timeout=15.0, isolate=NAMESPACE_PROBLEM is None, **ports)
    fields.update(overrides)
    return infra.InfraConfig(**fields)


class S3Stack(NamedTuple):
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str


@pytest.fixture(scope="session", autouse=True)
def _state_home_in_tmp(tmp_path_factory) -> Iterator[None]:
    """The stack's default state folder is user-level: keep it out of the real home."""
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set in os.environ for the block, the old values back afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def infra_config(tmp_path_factory) -> infra.InfraConfig:
    return free_infra_config(tmp_path_factory.mktemp("infra-session") / "state")


@pytest.fixture(scope="session")
def s3_stack(infra_config) -> Iterator[S3Stack]:
    try:
        info = infra.up(infra_config, services=("s3",))
        env = infra.client_env(infra_config)
        yield S3Stack(info.s3_endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], info.bucket)
    finally:
        infra.down(infra_config)


@pytest.fixture(scope="session")
def mlflow_server(infra_config, s3_stack) -> Iterator[str]:
    try:
        info = infra.up(infra_config, services=("mlflow",))
        env = infra.client_env(infra_config)
        login = {k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        with environment(login):
            yield info.tracking_uri
    finally:
        infra.down(infra_config, services=("mlflow",))


@pytest.fixture(scope="session")
def make_infra_config():
    """Factory: `make_infra_config(state_dir, **overrides)` -> InfraConfig on free ports."""
    return free_infra_config


@pytest.fixture(name="free_port", scope="session")
def free_port_fixture():
    """Factory: `free_port(grpc_twin=True)` -> a port (and port + 10000) free and unused this session."""
    return free_port


class Listeners(NamedTuple):
    outside: set[tuple[str, int]]  # (ip, port) listening in this machine's network namespace
    inside: set[tuple[str, int]]  # listening inside SeaweedFS's private namespace
    unix: set[str]  # path-bound unix sockets of the SeaweedFS processes
    weed_pid: int
    enter: list[str]  # command prefix that runs a command inside weed's network namespace


# Run inside the weed process's network namespace: psutil reads the namespace's own tables there.
_INSIDE = """
import json, sys, psutil
p = psutil.Process(int(sys.argv[1]))
inet = [(c.laddr.ip, c.laddr.port) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
unix = [c.laddr for c in p.net_connections("unix") if c.laddr and not c.laddr.startswith(("\\0", "@"))]
print(json.dumps({"inet": inet, "unix": unix}))
"""


def _stack_processes(cfg: infra.InfraConfig) -> list[psutil.Process]:
    state = json.loads((cfg.state_dir / "stack.json").read_text())
    procs = []
    for rec in state["services"].values():
        leader = psutil.Process(rec["pid"])
        procs += [leader, *leader.children(recursive=True)]
    return procs


def stack_listeners(cfg: infra.InfraConfig) -> Listeners:
    procs = _stack_processes(cfg)
    outside = {
        (c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN
    }
    weed = next(p for p in procs if p.name() == "weed")
    enter = ["nsenter", f"--target={weed.pid}", "--net"]
    if os.geteuid() != 0:  # the namespace belongs to the sandbox's own user namespace
        enter += ["--user", "--preserve-credentials"]
    out = subprocess.run(
        [*enter, sys.executable, "-c", _INSIDE, str(weed.pid)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    return Listeners(outside, {tuple(x) for x in found["inet"]}, set(found["unix"]), weed.pid, enter)


@pytest.fixture(name="stack_listeners", scope="session")
def stack_listeners_fixture():
    """Factory: `stack_listeners(cfg)` -> Listeners of the running stack of `cfg` (psutil, not by hand)."""
    return stack_listeners
