"""Cluster configs: Dockerfile, Ray launcher, KubeRay, compose, Prometheus and Grafana.

Docker cannot pull images on the test machines, so the image itself is not built here;
these tests check what can be checked without it: the launcher config against Ray's own
schema, the manifests' structure, one image name everywhere, no secrets in committed
files, the cluster study against search_spaces/paper.yaml, and every metric the Grafana
dashboard queries against the metrics a real Ray head exports.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/samsnet/samsnet-search:{VERSION}"
LAUNCHER = ROOT / "infra/ray/aws-gpu.yaml"
K8S = sorted((ROOT / "infra/k8s").glob("*.yaml"))
COMPOSE = ROOT / "infra/compose.yaml"
DASHBOARD = ROOT / "dashboards/grafana/samsnet-ray.json"
CLUSTER_STUDY = ROOT / "infra/studies/paper.yaml"
# Images that are not ours: Prometheus and Grafana themselves.
THIRD_PARTY = ("prom/prometheus:", "grafana/grafana:")


def _walk(node):
    """Every dict in a parsed YAML/JSON tree."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _k8s_docs() -> list[dict]:
    return [d for f in K8S for d in yaml.safe_load_all(f.read_text()) if d]


def _images(tree) -> list[str]:
    return [d["image"] for d in _walk(tree) if isinstance(d.get("image"), str)]


# --- the image -------------------------------------------------------------------------


def test_dockerfile_builds_the_tagged_image_from_existing_paths():
    text = (ROOT / "Dockerfile").read_text()
    assert f"docker build -t {IMAGE} ." in text
    assert f'org.opencontainers.image.version="{VERSION}"' in text
    for src in re.findall(r"^COPY (?!--)(\S+)", text, flags=re.M):
        if "*" not in src:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    import ray

    # Cluster nodes must run the Ray version of the machine that runs `ray up`.
    assert f"ARG RAY_VERSION={ray.__version__}" in text
    assert "ray[default" in text  # dashboard, job submission and metrics need it
    # The package pins the same minor: resume and pruning read Tune's internals (issue 24).
    minor = ".".join(ray.__version__.split(".")[:2])
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[tune]=={minor}.*" in deps, deps
    # The dev install has ray[default] as the image does: the live metrics test below runs, never skips.
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert f"ray[default]=={minor}.*" in dev, dev


def test_dockerfile_has_a_compiler_and_builds_the_cpu_kernel():
    text = (ROOT / "Dockerfile").read_text()
    apt = next(line for line in text.splitlines() if "apt-get install" in line)
    assert re.search(r"\bgcc\b", apt), apt  # the fused CPU kernel and torch.compile need a C compiler
    from samsnet_search.model import cpu_attention

    assert hasattr(cpu_attention, "library")  # the entry the image calls
    build = re.search(r"^RUN python -c .*cpu_attention\.library\(\)", text, flags=re.M)
    assert build and text.index("USER ray") < build.start(), "the kernel is built into the runtime user's cache"


def test_setup_script_has_a_documented_cuda_switch_and_keeps_the_cpu_default():
    script = (ROOT / "scripts/setup.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts/setup.sh")]).returncode == 0
    assert "--cuda)" in script and "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}" in script
    assert re.search(r"CUDA_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", script)
    assert re.search(r'pip" install -q torch==2\.13\.0 --index-url "\$TORCH_INDEX_URL"', script)
    assert re.search(r'^    "\$VENV/bin/pip" install -q torch==2\.13\.0$', script, flags=re.M)  # CPU default as it was
    assert "torch.version.cuda" in script and "torch.cuda.is_available()" in script
    readme = (ROOT / "README.md").read_text()
    assert "scripts/setup.sh --cuda" in readme and "TORCH_INDEX_URL=" in readme


def test_dockerignore_keeps_local_state_and_secrets_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", ".samsnet", "**/.env"):
        assert entry in ignored


def test_every_config_runs_the_same_image():
    trees = [yaml.safe_load(LAUNCHER.read_text())["docker"], _k8s_docs(), yaml.safe_load(COMPOSE.read_text())]
    images = [i for t in trees for i in _images(t)]
    ours = [i for i in images if not i.startswith(THIRD_PARTY)]
    assert len(ours) >= 9  # launcher, 2 k8s services x1, RayCluster x2, RayJob x2, compose x4
    assert set(ours) == {IMAGE}


# --- Ray cluster launcher --------------------------------------------------------------


def _validate_launcher(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: PLC2701  (Ray's own config check)

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_launcher_config_passes_rays_schema():
    cfg = yaml.safe_load(LAUNCHER.read_text())
    _validate_launcher(cfg)
    assert cfg["provider"]["type"] == "aws"
    workers = cfg["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0  # idle clusters cost nothing but the head
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}


def test_launcher_workers_can_run_the_cluster_studys_trials():
    """A trial asks for the study's `resources`; Ray schedules it only on a node that declares as
    much, so a worker must hold at least one trial, expose its GPUs to the container, and the
    cluster must hold every slice value of the grid at once."""
    cfg = yaml.safe_load(LAUNCHER.read_text())
    study = yaml.safe_load(CLUSTER_STUDY.read_text())
    want = study["resources"]
    workers = cfg["available_node_types"]["gpu_worker"]
    have = workers["resources"]
    assert want["gpu"] > 0 and have.get("GPU", 0) >= want["gpu"], (want, have)
    assert have.get("CPU", 0) >= want["cpu"], (want, have)
    assert "--gpus all" in cfg["docker"]["worker_run_options"]
    trials_per_worker = min(have["GPU"] // want["gpu"], have["CPU"] // want["cpu"])
    grid = study["model"]["slices"]["choice"]
    assert workers["max_workers"] * trials_per_worker >= len(grid), (workers["max_workers"], grid)
    assert cfg["max_workers"] >= workers["max_workers"]


def test_launcher_schema_check_rejects_a_broken_config():
    """The validator used above does bite: unknown keys and wrong types fail."""
    from jsonschema.exceptions import ValidationError

    cfg = yaml.safe_load(LAUNCHER.read_text())
    unknown = copy.deepcopy(cfg)
    unknown["docker"]["imagee"] = IMAGE
    wrong_type = copy.deepcopy(cfg)
    wrong_type["max_workers"] = "eight"
    for bad in (unknown, wrong_type):
        with pytest.raises(ValidationError):
            _validate_launcher(bad)


def test_launcher_workers_reach_the_services_the_study_names():
    cfg = yaml.safe_load(LAUNCHER.read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert "samsnet-search infra up --host 0.0.0.0 --no-isolation" in head  # no namespaces inside Docker
    assert "$RAY_HEAD_IP seaweedfs mlflow" in worker
    assert "--metrics-export-port=8080" in head and "--metrics-export-port=8080" in worker


def test_launcher_nodes_get_the_keys_from_a_local_env_file_not_from_ray():
    cfg = yaml.safe_load(LAUNCHER.read_text())
    assert cfg["file_mounts"]["/home/ray/cluster.env"] == "~/.config/samsnet/cluster.env"
    source = "set -a; . /home/ray/cluster.env; set +a;"
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.lstrip().startswith(source) for c in starts)  # trials inherit the raylet's env
    up = next(c for c in cfg["head_start_ray_commands"] if "infra up" in c)
    assert up.lstrip().startswith(source) and "SAMSNET_MLFLOW_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD" in up


def test_cluster_mlflow_requires_a_login_and_seaweedfs_serves_only_s3():
    mlflow_sh = (ROOT / "infra/services/mlflow.sh").read_text()
    assert "--app-name basic-auth" in mlflow_sh and "default_permission = NO_PERMISSIONS" in mlflow_sh
    assert ': "${MLFLOW_TRACKING_PASSWORD:?' in mlflow_sh
    weed_sh = (ROOT / "infra/services/seaweedfs.sh").read_text()
    assert "-ip.bind=127.0.0.1" in weed_sh and "0.0.0.0" not in weed_sh.split("weed mini", 1)[1]
    assert "samsnet_search.services.weed_sandbox --host 0.0.0.0 --port 8333" in weed_sh
    mlflow_pod = next(d for d in _k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    env = {e["name"]: e for e in mlflow_pod["spec"]["template"]["spec"]["containers"][0]["env"]}
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "samsnet-s3", "key": key}


# --- Kubernetes (KubeRay) --------------------------------------------------------------


def test_k8s_manifests_parse_and_have_the_expected_kinds():
    kinds = sorted(d["kind"] for d in _k8s_docs())
    assert kinds == sorted(
        [
            "ConfigMap",
            "PersistentVolumeClaim",
            "PersistentVolumeClaim",
            "Deployment",
            "Deployment",
            "Service",
            "Service",
            "RayCluster",
            "RayJob",
        ]
    )
    for d in _k8s_docs():
        assert d["apiVersion"] and d["metadata"]["name"]
    # No Secret object is committed: it is created with kubectl from values kept elsewhere.
    assert "Secret" not in kinds


def _ray_specs():
    docs = {d["kind"]: d for d in _k8s_docs()}
    return {"RayCluster": docs["RayCluster"]["spec"], "RayJob": docs["RayJob"]["spec"]["rayClusterSpec"]}


def test_ray_pods_get_keys_from_the_secret_and_addresses_from_the_configmap():
    import ray

    for kind, spec in _ray_specs().items():
        assert spec["rayVersion"] == ray.__version__, kind
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            for c in group["template"]["spec"]["containers"]:
                refs = {(next(iter(r)), r[next(iter(r))]["name"]) for r in c["envFrom"]}
                assert refs == {("secretRef", "samsnet-s3"), ("configMapRef", "samsnet-endpoints")}, kind
                assert "env" not in c  # nothing set inline: no room for a literal key
        gpu = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu["nvidia.com/gpu"] == "1"
    endpoints = next(d for d in _k8s_docs() if d["kind"] == "ConfigMap")["data"]
    assert endpoints["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert endpoints["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"


def test_services_read_their_keys_through_secret_key_refs():
    for d in _k8s_docs():
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "samsnet-s3", "key": key}
                assert "value" not in env[key]


def test_rayjob_runs_the_cluster_study_on_the_existing_ray():
    job = next(d for d in _k8s_docs() if d["kind"] == "RayJob")
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["samsnet-search", "run"]
    assert "--address" in entry and entry[entry.index("--address") + 1] == "auto"
    study = entry[2]
    assert study.startswith("/app/") and (ROOT / study.removeprefix("/app/")).is_file()


# --- docker compose --------------------------------------------------------------------


def test_compose_services_use_the_image_and_an_uncommitted_env_file():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"seaweedfs", "mlflow", "ray-head", "ray-worker"} <= set(services)
    for name in ("seaweedfs", "mlflow", "ray-head", "ray-worker"):
        assert services[name]["image"] == IMAGE
        assert services[name]["env_file"] == [".env"]
    head, worker = services["ray-head"]["command"], services["ray-worker"]["command"]
    assert "ray start --head" in head and "--address=ray-head:6379" in worker
    # Every published port listens on 127.0.0.1 only.
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    # The env file with the keys is ignored by git; the committed example holds placeholders.
    rc = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT).returncode
    assert rc == 0, "infra/.env must be git-ignored"
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "infra/.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert (
        example["AWS_ACCESS_KEY_ID"]
        == example["AWS_SECRET_ACCESS_KEY"]
        == example["MLFLOW_TRACKING_PASSWORD"]
        == "replace-me"
    )


def test_service_scripts_exist_and_are_executable():
    used = re.findall(r"infra/services/[\w.-]+\.sh", COMPOSE.read_text() + "".join(f.read_text() for f in K8S))
    assert used
    for path in set(used):
        assert os.access(ROOT / path, os.X_OK), path


# --- secrets ---------------------------------------------------------------------------

_SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"(?i)(secret|password|token)[\w-]*\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}"),  # a long literal value
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def _committed_config_files() -> list[Path]:
    files = [ROOT / "Dockerfile", ROOT / ".dockerignore", ROOT / "docs/cluster.md"]
    for folder in ("infra", "dashboards"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.name != ".env"]
    return files


def test_no_literal_secrets_in_cluster_files():
    files = _committed_config_files()
    assert len(files) >= 12
    for path in files:
        text = path.read_text()
        for pattern in _SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(ROOT)} looks like it holds a secret: {pattern.pattern}"


def test_secret_scan_catches_a_planted_key():
    planted = "AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY\nid: AKIAIOSFODNN7EXAMPLE\n"
    assert all(p.search(planted) for p in _SECRET_PATTERNS[:2])


# --- the cluster study -----------------------------------------------------------------


def test_cluster_study_is_the_paper_search_with_shared_storage():
    from samsnet_search.search.study import load_study

    study = load_study(CLUSTER_STUDY, check_data=False)
    assert study.name == "paper"
    assert study.spec.storage.startswith("s3://") and "endpoint_override=seaweedfs:8333" in study.spec.storage
    assert study.tracking_uri == "http://mlflow:5000"
    cluster = yaml.safe_load(CLUSTER_STUDY.read_text())
    paper = yaml.safe_load((ROOT / "search_spaces/paper.yaml").read_text())
    assert cluster["data"].pop("cache_dir") == "/tmp/samsnet-cache"
    for section in ("model", "data", "train", "search", "resources", "selection"):
        assert cluster[section] == paper[section], (
            f"infra/studies/paper.yaml: {section} differs from search_spaces/paper.yaml"
        )


# --- Prometheus and Grafana ------------------------------------------------------------

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "sum",
    "avg",
    "max",
    "min",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "or",
    "and",
    "unless",
    "vector",
    "rate",
    "irate",
    "increase",
    "clamp_min",
    "clamp_max",
    "max_over_time",
    "bool",
    "group_left",
    "group_right",
    "label_replace",
    "histogram_quantile",
}


def queried_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, groupings and functions removed)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {n for n in names if n not in _PROMQL_WORDS}


def _dashboard_metrics() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    return set().union(*(queried_metrics(e) for e in exprs))


def test_promql_metric_extraction():
    expr = (
        'sum(ray_resources{Name="GPU",State="USED"}) by (instance) / on() sum(rate(ray_tasks_total[5m])) or vector(0)'
    )
    assert queried_metrics(expr) == {"ray_resources", "ray_tasks_total"}


def test_dashboard_parses_and_covers_trials_gpu_cpu_and_object_store():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert {t["name"] for t in dash["templating"]["list"]} == {"datasource"}
    metrics = _dashboard_metrics()
    for needed in ("ray_actors", "ray_node_gpus_utilization", "ray_node_cpu_utilization", "ray_object_store_memory"):
        assert needed in metrics


def _ray_defined_metric_names() -> set[str]:
    """Metric names in the installed Ray's own sources: its shipped Grafana panels, the
    reporter agent's gauges and the autoscaler's Prometheus metrics."""
    import ray

    pkg = Path(ray.__file__).parent
    names: set[str] = set()
    for panels in (pkg / "dashboard/modules/metrics/dashboards").glob("*_panels.py"):
        names |= set(re.findall(r"\b(ray_[a-z0-9_]+|autoscaler_[a-z0-9_]+)\b", panels.read_text()))
    agent = (pkg / "dashboard/modules/reporter/reporter_agent.py").read_text()
    names |= {f"ray_{n}" for n in re.findall(r'^\s*"(\w+)": Gauge\(', agent, flags=re.M)}
    prom = (pkg / "autoscaler/_private/prom_metrics.py").read_text()
    names |= {f"autoscaler_{n}" for n in re.findall(r'(?:Gauge|Counter|Histogram)\(\s*"(\w+)"', prom)}
    return names


def test_every_dashboard_metric_is_defined_by_ray():
    defined = _ray_defined_metric_names()
    assert "ray_node_gpus_utilization" in defined and "autoscaler_pending_nodes" in defined
    missing = _dashboard_metrics() - defined
    assert not missing, f"{DASHBOARD.name} queries metrics the installed Ray does not define: {sorted(missing)}"


def test_prometheus_scrapes_rays_discovery_file():
    cfg = yaml.safe_load((ROOT / "dashboards/prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["file_sd_configs"] == [{"files": ["/tmp/ray/prom_metrics_service_discovery.json"]}]


# --- a live Ray head: what it really exports ----------------------------------------------

_RAY_DEFAULT_MODULES = ("aiohttp_cors", "grpc", "opencensus", "prometheus_client")
# Exported only by nodes with NVIDIA GPUs; checked against Ray's source above.
_GPU_ONLY = re.compile(r"gpu|gram")


def _has_ray_default() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in _RAY_DEFAULT_MODULES)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stop_processes_under(marker: str) -> None:
    """Stop the Ray processes this test started: those whose command line names its temp dir."""
    import psutil

    procs = {}
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in (p.info["cmdline"] or [])):
            procs[p.pid] = p
            for child in p.children(recursive=True):
                procs[child.pid] = child
    for p in procs.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for p in alive:
        p.kill()


_TUNE_DRIVER = textwrap.dedent(
    """
    import sys, time
    import ray
    from ray import tune

    def trial(config):
        for i in range(60):
            time.sleep(0.5)
            tune.report({"step": i})

    ray.init(address=sys.argv[1], include_dashboard=False, configure_logging=False, log_to_driver=False)
    tune.Tuner(tune.with_resources(trial, {"cpu": 1}),
               run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0)).fit()
    """
)


@pytest.mark.servers
@pytest.mark.timeout(240)
@pytest.mark.skipif(not _has_ray_default(), reason="metrics export needs ray[default] (as in the Dockerfile)")
def test_live_ray_head_exports_every_dashboard_metric():
    """Start a Ray head with metrics export on 127.0.0.1, run one Tune trial, scrape every
    target of its discovery file and compare with the dashboard's queries."""
    tmp = tempfile.mkdtemp(prefix="rm", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dash, metrics, agent, client, autoscaler, dash_metrics = _free_ports(7)
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        AUTOSCALER_METRIC_PORT=str(autoscaler),
        DASHBOARD_METRIC_PORT=str(dash_metrics),
        RAY_USAGE_STATS_ENABLED="0",
    )
    ray_bin = Path(sys.executable).with_name("ray")
    start = [
        str(ray_bin),
        "start",
        "--head",
        f"--temp-dir={tmp}",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        f"--metrics-export-port={metrics}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent}",
        f"--ray-client-server-port={client}",
    ]
    driver = None
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, timeout=90)
        address = (Path(tmp) / "ray_current_cluster").read_text().strip()
        driver = subprocess.Popen(
            [sys.executable, "-c", _TUNE_DRIVER, address, f"{tmp}/tune"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wanted = _dashboard_metrics()
        seen, trial_alive = set(), False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen, trial_alive = _scrape(Path(tmp) / "prom_metrics_service_discovery.json")
            if trial_alive and not {m for m in wanted if not _GPU_ONLY.search(m)} - seen:
                break
            time.sleep(3)
        missing = {m for m in wanted if not _GPU_ONLY.search(m)} - seen
        assert not missing, f"a live Ray head does not export: {sorted(missing)}"
        assert trial_alive, "no ALIVE ImplicitFunc actor seen: the dashboard's trial panels would stay empty"
    finally:
        if driver is not None:
            driver.kill()
            driver.wait(timeout=10)
        _stop_processes_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _scrape(discovery: Path) -> tuple[set[str], bool]:
    """(metric names, whether a Tune trial actor is alive) over every discovered target."""
    if not discovery.is_file():
        return set(), False
    names, trial_alive = set(), False
    for group in json.loads(discovery.read_text()):
        for target in group["targets"]:
            # Ray announces the node's own address; the exporters listen on every interface,
            # so the test reads them over loopback.
            port = target.rsplit(":", 1)[1]
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if not line or line.startswith("#"):
                    continue
                name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
                names.add(name)
                if (
                    name == "ray_actors"
                    and 'Name="ImplicitFunc"' in line
                    and 'Source="gcs"' in line
                    and 'State="ALIVE"' in line
                    and float(line.rsplit(" ", 1)[1]) > 0
                ):
                    trial_alive = True
    return names, trial_alive
