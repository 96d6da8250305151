"""A study's own Ray, started as a study starts it (`runner.ray_session`): its network surface.

Every TCP socket that a process of that Ray cluster listens on (the driver's core worker, the
GCS, the raylet's node and object managers, the dashboard and runtime-env agents, the metrics
exporters, the workers) is listed with its bind address and sent one request without Ray's
token: a gRPC call of a method its service implements, or an HTTP GET. Each socket must refuse
it (UNAUTHENTICATED, 401/403, connection refused) or be bound to loopback; and, the study's Ray
being one node that takes no others, each must be bound to loopback (`tune_internals.loopback_node`).
docs/security.md has the table this test prints (`-s`), with and without ray[default]'s packages.

One Ray start for the module; waits are bounded and end on conditions.
"""

from __future__ import annotations

import ipaddress
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import ray

from samsnet_search.search import runner, tune_internals

grpc = pytest.importorskip("grpc", reason="grpcio (dev extra; ray[default] has it) sends the gRPC requests")

pytestmark = pytest.mark.servers

WAIT_S = 60.0
POLL_S = 0.1
REQUEST_S = 5.0
# One method of each gRPC service a local Ray serves (`ray/core/generated/*_grpc.py`, and the
# raylet binary for the object manager); read-only where the service has one. A server answers
# UNIMPLEMENTED for the services it does not serve, and UNAUTHENTICATED, before the method runs,
# for a call without the token.
GRPC_METHODS = (
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",  # gcs_server
    "/ray.rpc.NodeManagerService/GetNodeStats",  # raylet: node manager
    "/ray.rpc.ObjectManagerService/Pull",  # raylet: object manager
    "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",  # the driver and every worker
    "/ray.rpc.LogService/ListLogs",  # dashboard agent (ray[default])
)
GRPC_NOT_THERE = ("UNIMPLEMENTED", "UNAVAILABLE")  # no such service here / no gRPC server at all
REFUSED_HTTP = (401, 403)
# The processes a local Ray starts; workers have a `ray::` process title.
CLUSTER_PROCESSES = ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "log_monitor.py")


@dataclass
class Listener:
    pid: int
    process: str
    host: str
    port: int
    kind: str = ""  # gRPC / HTTP / ?
    answer: str = ""  # what the request without the token got
    refused: bool = False

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.host)
        mapped = getattr(address, "ipv4_mapped", None)
        return (mapped or address).is_loopback

    def row(self) -> str:
        return f"{self.process:<22} {self.pid:>7}  {self.host:<18} {self.port:>5}  {self.kind:<5} {self.answer}"


def _name(p: psutil.Process) -> str:
    if p.pid == os.getpid():
        return "driver"
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    scripts = [Path(a).name for a in cmd[1:3] if a.endswith(".py")]
    return scripts[0] if scripts else p.name()


def cluster_processes(session_dir: str) -> dict[int, psutil.Process]:
    """The driver, the processes started with this session's folder on their command line (GCS,
    raylet, monitor, dashboard, log monitor), and theirs (agents, workers). Not every child of the
    driver: this test process may run servers of other tests."""
    driver = psutil.Process()
    found = {driver.pid: driver}
    for p in psutil.process_iter():
        try:
            if p.pid != driver.pid and any(session_dir in a for a in p.cmdline()):
                found |= {q.pid: q for q in [p, *p.children(recursive=True)]}
        except psutil.Error:
            continue
    return found


def listeners(processes: dict[int, psutil.Process]) -> list[Listener]:
    out = []
    for pid, p in processes.items():
        try:
            sockets = p.net_connections("tcp")
            name = _name(p)
        except psutil.Error:
            continue
        out += [Listener(pid, name, c.laddr.ip, c.laddr.port) for c in sockets if c.status == psutil.CONN_LISTEN]
    return sorted(out, key=lambda s: (s.process, s.port))


def _target(host: str) -> str:
    """Where to connect to reach a socket bound to `host` from this host."""
    address = ipaddress.ip_address(host)
    if getattr(address, "ipv4_mapped", None):
        return str(address.ipv4_mapped)
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{host}]" if address.version == 6 else host


def probe(s: Listener) -> None:
    """One request without the token: gRPC first, HTTP when no gRPC server answers."""
    target = f"{_target(s.host)}:{s.port}"
    codes = {}
    with grpc.insecure_channel(target) as channel:
        for method in GRPC_METHODS:
            call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
            try:
                call(b"", timeout=REQUEST_S)
                codes[method] = "OK"
            except grpc.RpcError as e:
                codes[method] = e.code().name
            if codes[method] not in GRPC_NOT_THERE:
                break
    method, code = list(codes.items())[-1]
    if code not in GRPC_NOT_THERE:
        s.kind, s.answer, s.refused = "gRPC", f"{code} ({method.rsplit('/', 1)[1]})", code == "UNAUTHENTICATED"
        return
    if "UNIMPLEMENTED" in codes.values():
        s.kind, s.answer = "gRPC", "a service of none of GRPC_METHODS: add one of its methods"
        return
    try:
        with urllib.request.urlopen(f"http://{target}/", timeout=REQUEST_S) as r:
            s.kind, s.answer = "HTTP", f"{r.status} {r.read(60)!r}"
    except urllib.error.HTTPError as e:
        s.kind, s.answer, s.refused = "HTTP", f"{e.code} {e.read(60)!r}", e.code in REFUSED_HTTP
    except ConnectionRefusedError:
        s.kind, s.answer, s.refused = "?", "connection refused", True
    except (urllib.error.URLError, OSError) as e:
        s.kind, s.answer = "?", f"{type(e).__name__}: {e}"


def head_metrics_ports() -> set[int]:
    """The head's fixed Prometheus ports (autoscaler monitor, dashboard head): served where
    prometheus_client is installed (ray[default]) and the port is free when Ray starts."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return set()
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT  # noqa: PLC2701
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    taken = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    return {AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT} - taken


def expected_ports(node: dict) -> set[int]:
    """The ports this Ray announces: GCS, node and object managers, runtime-env agent, and the
    dashboard agent's three where ray[default] runs it in full (-1 otherwise)."""
    gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    keys = (
        "NodeManagerPort",
        "ObjectManagerPort",
        "RuntimeEnvAgentPort",
        "MetricsExportPort",
        "MetricsAgentPort",
        "DashboardAgentListenPort",
    )
    return {gcs_port} | {int(node[k]) for k in keys if int(node.get(k, -1)) > 0}


@ray.remote
def _pid() -> int:
    return os.getpid()


@pytest.fixture(scope="module")
def surface() -> dict:
    """Ray as a study starts it, one task run (a worker listens), then every listener probed."""
    assert not ray.is_initialized(), "a Ray of another test still runs: this test must start its own"
    fixed = head_metrics_ports()
    with runner.ray_session(num_cpus=1, quiet=True):
        worker_pid = ray.get(_pid.remote(), timeout=WAIT_S)
        node = ray.nodes()[0]
        session_dir = str(Path(node["ObjectStoreSocketName"]).parents[1])
        expected = expected_ports(node) | fixed
        deadline = time.monotonic() + WAIT_S
        while True:  # until every announced port and the worker listen (some agents start late)
            processes = cluster_processes(session_dir)
            found = listeners(processes)
            listening = {s.port for s in found}
            if (expected <= listening and worker_pid in {s.pid for s in found}) or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        for s in found:
            probe(s)
        names = {_name(p) for p in processes.values() if p.is_running()}
        table = "\n".join(s.row() for s in found)
        print(f"\nRay {ray.__version__}, node {node['NodeManagerAddress']}:\n{table}")
        return {
            "node": node,
            "names": names,
            "listeners": found,
            "missing": expected - listening,
            "worker_pid": worker_pid,
            "table": table,
        }


def test_the_cluster_processes_are_found(surface):
    assert not surface["missing"], f"ports Ray announced but no process of it listens on: {surface['missing']}"
    assert set(CLUSTER_PROCESSES) <= surface["names"], sorted(surface["names"])
    assert surface["worker_pid"] in {s.pid for s in surface["listeners"]}, surface["table"]
    assert {s.process for s in surface["listeners"]} >= {"gcs_server", "raylet"}, surface["table"]


def test_every_socket_refuses_a_request_without_the_token_or_is_loopback_only(surface):
    open_ = [s for s in surface["listeners"] if not s.refused and not s.loopback]
    assert not open_, "answered without Ray's token, on more than loopback:\n" + "\n".join(s.row() for s in open_)


def test_every_socket_is_bound_to_loopback(surface):
    """The study's Ray takes no other nodes: nothing of it listens beyond this host."""
    assert surface["node"]["NodeManagerAddress"] == runner.LOOPBACK, (
        f"Ray {ray.__version__} put the study's node on {surface['node']['NodeManagerAddress']}: "
        f"tune_internals.loopback_node (validated on Ray {tune_internals.VALIDATED['ray']}) no longer keeps it on loopback"
    )
    outward = [s for s in surface["listeners"] if not s.loopback]
    assert not outward, "listening beyond loopback:\n" + "\n".join(s.row() for s in outward)
