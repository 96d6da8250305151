"""A study across a two-node Ray cluster on this machine, surviving the loss of a node.

The cluster is real: `ray start --head` and `ray start --address` as separate process
trees on 127.0.0.1 (each with its own temp dir and ports, so other Ray instances on the
machine are untouched). Each node offers one `trial_slot`; the study asks for one per
trial (`resources.custom`), so two concurrent trials must run on different nodes.

The driver (`samsnet-search run --address ...`) runs in its own process. Once a trial has
finished and another is checkpointed half way on the worker node, the test kills the
worker node's whole process tree (SIGKILL: a lost machine, not a clean shutdown). Tune
retries the trial on the head node from its last checkpoint (`max_failures`).

The unit tests at the end check the resource translation (fractional GPUs, custom
resources) without any cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from samsnet_search.errors import ConfigError
from samsnet_search.search import identity
from samsnet_search.search.runner import trainable, trial_resources
from samsnet_search.search.study import load_study, parse_study
from samsnet_search.search.trial import HOST_TAG, NODE_TAG, NODES_TAG, TrialContext
from samsnet_search.services import tracking

STUDY = "multinode"
EPOCHS = 6
TRIALS = 4
# Ray 2.60 turns on token authentication when ~/.ray/auth_token exists; this cluster is
# private to the test (127.0.0.1, its own ports), so it runs without.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Ports for Ray's fixed-default services and worker ranges: above the integration
# fixtures' range (15000-22700) and below Linux's ephemeral ports (32768+).
_RAY_PORTS = (23000, 32600)
_WORKER_PORTS = 24  # per node


def _env() -> dict[str, str]:
    return {**os.environ, **RAY_ENV}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortPool:
    """Hands out free ports (and free contiguous ranges) from _RAY_PORTS, each once."""

    def __init__(self, seed: int):
        import random

        self.rng = random.Random(seed)
        self.used: set[int] = set()

    def range(self, n: int) -> int:
        for _ in range(500):
            start = self.rng.randrange(_RAY_PORTS[0], _RAY_PORTS[1] - n)
            ports = range(start, start + n)
            if not self.used.intersection(ports) and all(_port_free(p) for p in ports):
                self.used.update(ports)
                return start
        raise RuntimeError(f"no {n} free consecutive ports in {_RAY_PORTS}")

    def one(self) -> int:
        return self.range(1)


def _node_ports(pool: PortPool) -> list[str]:
    """Every port a node would otherwise take from a default shared by all nodes on the host."""
    lo = pool.range(_WORKER_PORTS)
    flags = {
        "--node-manager-port": pool.one(),
        "--object-manager-port": pool.one(),
        "--dashboard-agent-listen-port": pool.one(),
        "--dashboard-agent-grpc-port": pool.one(),
        "--runtime-env-agent-port": pool.one(),
        "--metrics-export-port": pool.one(),
        "--min-worker-port": lo,
        "--max-worker-port": lo + _WORKER_PORTS - 1,
    }
    return [x for k, v in flags.items() for x in (k, str(v))]


class Node:
    """One `ray start --block` process tree, in its own session so it can be killed whole."""

    def __init__(self, name: str, args: list[str], temp_dir: Path, log_dir: Path):
        self.name = name
        self.log = log_dir / f"ray-{name}.log"
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "1",
            "--object-store-memory",
            str(200 * 1024**2),
            "--temp-dir",
            str(temp_dir),
            "--disable-usage-stats",
            *args,
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the tree: `ray start`, raylet, agents, workers (workers have their own process groups)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=15)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _alive_nodes(address: str) -> dict[str, dict]:
    """{node_id: resources} of the live nodes, asked from a separate driver process."""
    code = (
        "import json, ray\n"
        f"ray.init(address={address!r}, include_dashboard=False, configure_logging=False, log_to_driver=False)\n"
        "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:  # the GCS is not answering yet
        return {}
    if out.returncode != 0:
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """(address, {"head": node_id, "worker": node_id}, {"head": Node, "worker": Node}).

    Temp dirs are short paths under /tmp: Ray's unix sockets live there (108-byte limit).
    """
    logs = tmp_path_factory.mktemp("ray-logs")
    temp = Path(tempfile.mkdtemp(prefix="snmn-", dir="/tmp"))
    pool = PortPool(os.getpid())
    port = pool.one()
    address = f"127.0.0.1:{port}"
    nodes: dict[str, Node] = {}
    try:
        nodes["head"] = Node(
            "head",
            [
                "--head",
                "--port",
                str(port),
                "--include-dashboard",
                "false",
                "--dashboard-port",
                str(pool.one()),
                "--resources",
                json.dumps({"trial_slot": 1, "head_marker": 1}),
                *_node_ports(pool),
            ],
            temp / "h",
            logs,
        )
        ids = _wait_nodes(address, 1, nodes)
        nodes["worker"] = Node(
            "worker",
            [
                "--address",
                address,
                "--resources",
                json.dumps({"trial_slot": 1, "worker_marker": 1}),
                *_node_ports(pool),
            ],
            temp / "w",
            logs,
        )
        ids = _wait_nodes(address, 2, nodes)
        by_role = {role: next(i for i, r in ids.items() if f"{role}_marker" in r) for role in ("head", "worker")}
        yield address, by_role, nodes
    finally:
        for node in reversed(list(nodes.values())):
            node.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _gcs_listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def _wait_nodes(address: str, n: int, nodes: dict[str, Node], timeout: float = 180) -> dict[str, dict]:
    """Bounded wait until `n` nodes are alive (generous: other tests may load the machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes.values():
            if node.proc.poll() is not None:
                pytest.fail(f"ray {node.name} node exited ({node.proc.returncode}):\n{node.tail()}")
        # A driver started before the GCS listens blocks for a long time: ask only then.
        ids = _alive_nodes(address) if _gcs_listening(address) else {}
        if len(ids) >= n:
            return ids
        time.sleep(1)
    pytest.fail(f"{n} Ray nodes not up within {timeout:.0f} s:\n" + "\n".join(x.tail() for x in nodes.values()))


def _study_file(tmp_path: Path, data_root: Path) -> Path:
    """Tiny trials that run long enough to be caught half way (fifo: none is pruned)."""
    study = {
        "name": STUDY,
        "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}, "heads": 1, "channels": 2, "depth": 1},
        "data": {"root": str(data_root), "segment_seconds": 0.5, "samples_per_track": 4, "valid_seconds": 1.0},
        "train": {
            "lr": {"loguniform": [1e-3, 1e-2]},
            "batch_size": 2,
            "epochs": EPOCHS,
            "patience": EPOCHS,
            "valid_sdr_every": 0,
            "device": "cpu",
        },
        "search": {
            "num_samples": TRIALS,
            "seed": 0,
            "searcher": "random",
            "scheduler": "fifo",
            "max_concurrent_trials": 2,
            "max_failures": 2,
        },
        "resources": {"cpu": 1, "custom": {"trial_slot": 1}},
        "selection": {"enabled": False},  # the search is under test here, not the retraining after it
        "storage": str(tmp_path / "runs"),
        "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics": False},
    }
    path = tmp_path / f"{STUDY}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _trial_state(tmp_path: Path):
    """(manifest, {trial_id: child run}) as far as the study has got, or (None, {})."""
    manifest = identity.read_manifest(identity.study_uri(str(tmp_path / "runs"), STUDY))
    if manifest is None:
        return None, {}
    target = tracking.resolve_tracking(manifest.tracking_uri)
    runs = tracking.find_child_runs(target, manifest.experiment_id, manifest.parent_run_id)
    return manifest, {r.data.tags[tracking.TRIAL_TAG]: r for r in runs}


def _epochs(target, run_id: str) -> list[tuple[int, int]]:
    """[(epoch, logged at ms)] of a trial's valid_loss, in logging order."""
    history = tracking.client(target).get_metric_history(run_id, "valid_loss")
    return sorted(((m.step, m.timestamp) for m in history), key=lambda x: x[1])


def _checkpoints(tmp_path: Path, trial_id: str) -> list[Path]:
    return sorted((tmp_path / "runs" / STUDY / f"trial_{trial_id}").glob("checkpoint_*"))


def _wait_for_victim(tmp_path: Path, worker: str, driver: subprocess.Popen, timeout: float = 240):
    """A trial running on the worker node with at least one complete checkpoint, once another has finished.

    Epoch 2 logged to MLflow means epoch 1's `tune.report` (and its checkpoint) returned.
    Returns (trial id, {trial id: (status, last valid_loss)} of the finished trials).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            pytest.fail(f"the study ended ({driver.returncode}) before a trial could be caught on the worker node")
        manifest, runs = _trial_state(tmp_path)
        if runs:
            target = tracking.resolve_tracking(manifest.tracking_uri)
            done = {t: r for t, r in runs.items() if r.data.tags.get(tracking.STATUS_TAG) == "completed"}
            for trial_id, run in runs.items():
                tags = run.data.tags
                if done and tags.get(NODE_TAG) == worker and tags.get(tracking.STATUS_TAG) == "running":
                    epochs = [e for e, _ in _epochs(target, run.info.run_id)]
                    if epochs and 2 <= max(epochs) < EPOCHS - 1 and _checkpoints(tmp_path, trial_id):
                        finished = {t: (r.data.tags[NODE_TAG], r.data.metrics["valid_loss"]) for t, r in done.items()}
                        return trial_id, finished
        time.sleep(0.3)
    pytest.fail(f"no trial was caught half way on the worker node within {timeout:.0f} s")


@pytest.mark.servers
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_study_survives_losing_a_worker_node(tmp_path, synth_root, two_nodes):
    address, node_ids, nodes = two_nodes
    study_file = _study_file(tmp_path, synth_root)
    log = tmp_path / "driver.log"
    code = "import sys; from samsnet_search.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "run", str(study_file), "--address", address, "--no-live"]
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            cmd, cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        victim, finished = _wait_for_victim(tmp_path, node_ids["worker"], driver)
        kill_ms = time.time() * 1000
        nodes["worker"].kill()
        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
    output = log.read_text(errors="replace")
    assert rc == 0, output[-4000:]

    manifest, runs = _trial_state(tmp_path)
    target = tracking.resolve_tracking(manifest.tracking_uri)
    # the study finished with every trial completed, on both nodes
    assert manifest.state == "finished", output[-4000:]
    assert manifest.summary["counts"] == {"completed": TRIALS}, manifest.summary
    assert len(runs) == TRIALS
    used = {n for r in runs.values() for n in r.data.tags[NODES_TAG].split()}
    assert used == set(node_ids.values())
    for run in runs.values():
        assert run.data.tags[HOST_TAG].startswith(socket.gethostname())
        assert run.data.tags[NODE_TAG] == run.data.tags[NODES_TAG].split()[-1]

    # the killed trial moved to the head node and continued from its checkpoint
    run = runs[victim]
    assert run.data.tags[NODES_TAG].split() == [node_ids["worker"], node_ids["head"]]
    epochs = _epochs(target, run.info.run_id)
    before = [e for e, t in epochs if t < kill_ms]
    after = [e for e, t in epochs if t >= kill_ms]
    assert before[: len(before)] == list(range(1, len(before) + 1)) and len(before) >= 2
    # Retried from the last checkpoint: epoch 1 is not trained again. (The epoch that
    # was logged but not yet checkpointed when the node died is trained again.)
    assert after and 2 <= after[0] <= before[-1] + 1, (before, after)
    assert after == list(range(after[0], EPOCHS + 1)), after
    result_rows = _result_rows(tmp_path, victim)
    assert [r["epoch"] for r in result_rows][-len(after) :] == after
    assert max(r["training_iteration"] for r in result_rows) == EPOCHS

    # nothing finished before the loss is lost (checkpoints live in the storage, not on a node)
    for trial_id, (node, valid_loss) in finished.items():
        final = runs[trial_id]
        assert final.data.tags[tracking.STATUS_TAG] == "completed"
        assert final.data.tags[NODES_TAG] == node  # not run again
        assert final.data.metrics["valid_loss"] == valid_loss
        assert _checkpoints(tmp_path, trial_id), f"trial {trial_id} lost its checkpoints"
        assert _result_rows(tmp_path, trial_id)[-1]["epoch"] == EPOCHS


def _result_rows(tmp_path: Path, trial_id: str) -> list[dict]:
    """The trial's Tune results (one JSON line per reported epoch)."""
    path = tmp_path / "runs" / STUDY / f"trial_{trial_id}" / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- resource translation (no cluster) ----------------------------------------------


def _study(tmp_path: Path, resources: dict):
    spec = {
        "name": "res",
        "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}, "heads": 1, "channels": 2, "depth": 1},
        "data": {"root": str(tmp_path / "data")},
        "train": {"epochs": 1},
        "resources": resources,
        "storage": str(tmp_path / "runs"),
    }
    text = yaml.safe_dump(spec)
    return parse_study(spec, text, tmp_path / "res.yaml", tmp_path, check_data=False)


def _placement(study) -> dict[str, float]:
    """The resources Tune will reserve per trial (the placement group of the wrapped trainable)."""
    ctx = TrialContext(study_name=study.name, base=study.base, tracking=None, cpus=study.spec.resources.cpu)
    return dict(trainable(study, ctx)._resources.required_resources)


def test_fractional_gpu_passes_through_to_tune(tmp_path):
    study = _study(tmp_path, {"cpu": 2, "gpu": 0.5})
    assert trial_resources(study) == {"cpu": 2, "gpu": 0.5}
    assert _placement(study) == {"CPU": 2.0, "GPU": 0.5}  # two such trials fit one GPU


def test_custom_resources_pass_through_to_tune(tmp_path):
    study = _study(tmp_path, {"cpu": 1, "custom": {"trial_slot": 1, "accelerator_type:A10G": 0.01}})
    assert _placement(study) == {"CPU": 1.0, "trial_slot": 1.0, "accelerator_type:A10G": 0.01}
    assert _placement(_study(tmp_path, {"cpu": 1})) == {"CPU": 1.0}


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"gpu": 1.5}, "gpu: fractions are only possible below 1"),
        ({"custom": {"GPU": 1}}, "custom: 'GPU' is not a custom resource name"),
        ({"custom": {"slot": 0}}, "custom.slot: amount must be > 0"),
        ({"custom": {"slot": "many"}}, "resources.custom.slot"),
    ],
)
def test_bad_resources_are_named(tmp_path, resources, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"slices": {"choice": [1, 2]}}, "resources": resources}))
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert message in str(e.value)
    assert "bad.yaml" in str(e.value)
