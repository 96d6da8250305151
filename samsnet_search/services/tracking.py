"""MLflow: one experiment per study, a parent run for the study, a nested child run per trial.

Ray's and Optuna's MLflow integrations do not nest runs (ray-project/ray#19978,
optuna/optuna#5148), so the driver opens the parent run and every trial, in whatever
Ray worker it lands, opens its child run with the parent's id passed in explicitly
(`mlflow.parentRunId`). The MlflowClient API is used throughout, never the fluent
global "active run", because several runs are written from one process (the driver)
and a worker may resume a run it did not create.

Tracking targets: a plain folder (the default `./mlruns`) is an embedded store that
needs nothing started: an SQLite database `mlflow.db` plus an `artifacts/` folder in it.
(MLflow 3 refuses its old file store unless told otherwise; SQLite is its successor.)
Anything with a scheme (`http://`, `sqlite:///`, `postgresql://`) is used as given.

Nothing secret is logged: params are configuration values, tags are names and versions;
`secret_values()` lists what must never appear (checked by the tests).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from ..config import flatten
from ..errors import ConfigError, SamsNetError, one_line
from ..version import git_commit
from . import gpu_metrics
from .faults import DEFAULT_BUDGET_S, RetryingClient, retry
from .gpu_metrics import GpuId

log = logging.getLogger(__name__)

EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "artifacts"

# Tags (names are part of the interface: the selection step and reports read them).
STUDY_TAG = "samsnet.study"
ROLE_TAG = "samsnet.role"  # "study" (parent) or "trial" (child)
TRIAL_TAG = "samsnet.trial_id"
STATUS_TAG = "samsnet.status"
ERROR_TAG = "samsnet.error"  # a failed trial's error, one line ("infrastructure: ..." for outages)
PARENT_TAG = "mlflow.parentRunId"
BEST_RUN_TAG = "best_run"
DEVICE_TAG = "samsnet.device"  # on a trial's run: the GPU name(s) it trained on, or "cpu"
PHASE_TAG = "samsnet.phase"  # "selection" on a selection retraining's run (a child of the parent too)
# completed: ran its full budget; stopped_early: the trainer's patience ended it;
# pruned: ASHA stopped it at a rung; stopped: ended by the time budget or a shutdown;
# does_not_fit: out of GPU memory (not retried: it would fail the same way); failed: training raised.
STATUSES = ("running", "completed", "stopped_early", "pruned", "stopped", "does_not_fit", "failed")
FINAL_STATUSES = STATUSES[1:]
# MLflow run status per trial status. A pruned trial did what the search asked of it (the
# status tag says it was pruned): FINISHED, not the red cross of a killed or failed run.
RUN_STATUS = {
    "completed": "FINISHED",
    "stopped_early": "FINISHED",
    "pruned": "FINISHED",
    "stopped": "KILLED",
    "does_not_fit": "FAILED",
    "failed": "FAILED",
}
# Env var names whose values are credentials: never logged anywhere.
SECRET_NAME_RE = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
# MLflow limits a param value to 6000 characters; longer values are cut (with a marker).
MAX_PARAM_CHARS = 6000
# One look at the server before a study starts: a stopped server is one line after this,
# not minutes of urllib3 retries.
HEALTH_TIMEOUT_S = 5.0
# MLflow's own HTTP retries in trial workers: short, because `faults.retry` does the
# waiting there, bounded by the study's search.infra_retry_s.
WORKER_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
PACKAGES = ("samsnet-search", "torch", "numpy", "ray", "optuna", "mlflow", "museval", "pydantic")


class TrackingError(SamsNetError):
    """The MLflow tracking store cannot be reached or used."""


# The port `where()` gives `mlflow ui` for a local store: MLflow's default, 5000, is the one
# `infra up`'s server takes, and a second server there fails to bind or is the wrong one.
UI_PORT = 5001


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs go. `artifact_root` is set for the embedded store (experiments created here)."""

    uri: str
    artifact_root: str | None = None

    @property
    def embedded(self) -> bool:
        return self.artifact_root is not None

    def where(self, experiment_id: str | None = None) -> str:
        """A line telling a person where to look at the runs (the study's page, when its id is given)."""
        server = self.uri if self.uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"
        page = f" -> {experiment_page(server, experiment_id)}" if experiment_id else ""
        if self.uri.startswith(("http://", "https://")):
            return f"MLflow UI: {page.removeprefix(' -> ') or self.uri}"
        root = f" --default-artifact-root {self.artifact_root}" if self.artifact_root else ""
        return f"MLflow UI: mlflow ui --backend-store-uri {self.uri}{root} --port {UI_PORT}{page}"


def experiment_page(server: str, experiment_id: str) -> str:
    """The experiment's runs table. MLflow 3's UI opens experiments in its GenAI view (traces) unless
    the workflow type is named; the experiment's kind tag does not change that."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def resolve_tracking(uri: str, base_dir: Path | str | None = None) -> TrackingTarget:
    """A folder becomes the embedded SQLite store; URIs with a scheme are used as given."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ConfigError("tracking.uri: credentials in the URI would be logged; use MLFLOW_TRACKING_* env vars")
    if parts.scheme and len(parts.scheme) > 1:  # a one-letter scheme is a Windows drive
        if parts.scheme == "file":
            raise ConfigError(
                f"tracking.uri: {uri}: MLflow 3's file store is in maintenance mode; give a folder "
                "(embedded SQLite store) or an http(s):// server instead"
            )
        return TrackingTarget(uri=uri)
    folder = Path(uri).expanduser()
    if not folder.is_absolute():
        folder = Path(base_dir or Path.cwd()) / folder
    folder = folder.resolve()
    return TrackingTarget(uri=f"sqlite:///{folder / EMBEDDED_DB}", artifact_root=(folder / EMBEDDED_ARTIFACTS).as_uri())


def client(target: TrackingTarget):
    """An MlflowClient for the target (creating the embedded store's folder if needed)."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow (the CLI imports this module at start)

    if target.embedded:
        Path(target.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=target.uri)


def check_server(target: TrackingTarget, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Raise TrackingError (one line: the URI and what to do) when an http(s) tracking server
    does not answer or refuses the login; embedded stores pass. `infra.check_reachable` is the
    one reachability check (validate uses it too)."""
    from .infra import check_reachable  # lazy: psutil, pydantic; only where a server is checked

    problems = check_reachable(None, target.uri, timeout_s)
    if problems:
        raise TrackingError(problems[0])


def worker_http_settings() -> None:
    """Set MLflow's HTTP retry settings for a trial worker (where not set by the user)."""
    for key, value in WORKER_HTTP_ENV.items():
        os.environ.setdefault(key, value)


# MLflow 3's UI opens an experiment by its kind; untagged ones open on the (empty) GenAI traces page.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(target: TrackingTarget, name: str) -> str:
    """The experiment named `name` (created if missing; restored if deleted), marked as a training
    experiment unless it already has a kind. Returns its id."""
    c = client(target)
    try:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            location = f"{target.artifact_root}/{name}" if target.artifact_root else None
            return c.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # made by an older version, or by hand
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return exp.experiment_id
    except Exception as e:  # connection refused, bad URI, database errors: one clear line
        if isinstance(e, SamsNetError):
            raise
        raise TrackingError(
            f"tracking.uri {target.uri}: cannot open MLflow experiment {name!r}: {one_line(e, typed=True)}"
        ) from None


# --- params and secrets --------------------------------------------------------------


def flatten_params(d: Mapping[str, Any]) -> dict[str, str]:
    """Nested config -> `{"model.slices": "4", ...}`: the same names in every trial."""
    return {key: _param_text(v) for key, v in flatten(d).items()}


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of env vars whose names say they are credentials (KEY, SECRET, TOKEN, PASSWORD)."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if SECRET_NAME_RE.search(k) and len(v) >= 4]


def assert_no_secrets(values: Mapping[str, str], what: str) -> None:
    """Refuse to log a value that contains a credential from the environment."""
    secrets = secret_values()
    for key, value in values.items():
        if any(s in str(value) or s in key for s in secrets):
            raise TrackingError(f"refusing to log {what} {key!r}: its value contains a credential from the environment")


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# --- the study's parent run ----------------------------------------------------------


def start_parent_run(target: TrackingTarget, experiment_id: str, study_name: str, tags: Mapping[str, str] = ()) -> str:
    """Open the study's parent run; returns its id."""
    c = client(target)
    all_tags = {STUDY_TAG: study_name, ROLE_TAG: "study", "mlflow.runName": f"{study_name} (study)", **dict(tags)}
    assert_no_secrets(all_tags, "tag")
    return c.create_run(experiment_id, tags=all_tags, run_name=f"{study_name} (study)").info.run_id


def log_study_details(
    target: TrackingTarget,
    run_id: str,
    study_text: str,
    params: Mapping[str, Any],
    fingerprint: str | None = None,
    data_kind: str | None = None,
    study_file_name: str = "study.yaml",
) -> None:
    """Study YAML as artifact; settings as params; versions, commit and data fingerprint as tags."""
    c = client(target)
    flat = flatten_params(params)
    existing = c.get_run(run_id).data.params
    # Params are immutable in MLflow: on resume only new ones are logged.
    flat = {k: v for k, v in flat.items() if k not in existing}
    tags = {f"version.{k}": v for k, v in package_versions().items()}
    commit = git_commit()
    if commit:
        tags["samsnet.git_commit"] = commit
    if fingerprint:
        tags["samsnet.data_fingerprint"] = fingerprint
    if data_kind:
        tags["samsnet.data_kind"] = data_kind
    assert_no_secrets(flat, "param")
    assert_no_secrets(tags, "tag")
    assert_no_secrets({study_file_name: study_text}, "artifact")
    _log_batch(c, run_id, params=flat, tags=tags)
    c.log_text(run_id, study_text, study_file_name)


def _log_batch(c, run_id: str, params: Mapping[str, str] = (), tags: Mapping[str, str] = (), metrics=()) -> None:
    from mlflow.entities import Param, RunTag  # lazy: mlflow

    params, tags = dict(params), dict(tags)
    param_items = [Param(k, v) for k, v in params.items()]
    tag_items = [RunTag(k, str(v)) for k, v in tags.items()]
    # MLflow caps a batch at 100 params / 1000 entities: send in chunks.
    for i in range(0, max(len(param_items), 1), 100):
        c.log_batch(
            run_id,
            params=param_items[i : i + 100],
            tags=tag_items if i == 0 else [],
            metrics=list(metrics) if i == 0 else [],
        )


def set_status(target: TrackingTarget, run_id: str, status: str, error: str | None = None) -> None:
    """Tag a trial run with its final status and close it with the matching MLflow run status."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"status must be one of {FINAL_STATUSES}, got {status!r}")
    c = client(target)
    c.set_tag(run_id, STATUS_TAG, status)
    if error:
        c.set_tag(run_id, ERROR_TAG, _redact(error)[:4000])
    c.set_terminated(run_id, RUN_STATUS[status])


def _redact(text: str) -> str:
    for secret in secret_values():
        text = text.replace(secret, "***")
    return text


def find_child_runs(target: TrackingTarget, experiment_id: str, parent_run_id: str) -> list:
    """All trial runs of a study (any status), oldest first."""
    c = client(target)
    runs, token = [], None
    while True:
        page = c.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_trial_run(target: TrackingTarget, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    c = client(target)
    found = c.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


# --- a trial's child run (runs in the Ray worker) ------------------------------------


@dataclass(frozen=True)
class ChildRunSpec:
    """Everything a worker needs to open its run: passed explicitly, picklable."""

    tracking_uri: str
    artifact_root: str | None
    experiment_id: str
    parent_run_id: str
    study_name: str
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    infra_retry_s: float = DEFAULT_BUDGET_S  # how long a call waits out an unreachable server

    @property
    def target(self) -> TrackingTarget:
        return TrackingTarget(self.tracking_uri, self.artifact_root)


class TrialRun:
    """One trial's nested MLflow run: params once, metrics per epoch, best weights, status.

    A retried or resumed trial reopens the run it already has (found by its trial id),
    so a trial is one run however often it restarts.
    """

    def __init__(self, spec: ChildRunSpec, trial_id: str, trial_name: str | None = None):
        self.spec = spec
        self.trial_id = trial_id
        # Every call waits out a tracking server restart (up to spec.infra_retry_s).
        self.client = RetryingClient(client(spec.target), spec.infra_retry_s)
        self.run_id, self.resumed = retry(
            self._find_or_create, trial_name, budget_s=spec.infra_retry_s, what=f"MLflow run of trial {trial_id}"
        )
        # completed / stopped_early when this trial already finished (see `finished`)
        self.previous_status: str | None = None
        # The last epoch MLflow has (a resumed trial recomputes the epochs after the
        # checkpoint it resumes from; those MLflow already has are not logged again).
        self.logged_epoch = -1
        if self.resumed:
            self.previous_status = self.client.get_run(self.run_id).data.tags.get(STATUS_TAG)
            steps = [m.step for m in self.client.get_metric_history(self.run_id, "train_loss")]
            self.logged_epoch = max(steps, default=-1)
            if not self.finished:
                self.client.update_run(self.run_id, status="RUNNING")
                self.client.set_tag(self.run_id, STATUS_TAG, "running")
        self._monitor = None
        self._gpu_sampler: gpu_metrics.GpuSampler | None = None
        self._best_logged_epoch = -1

    def _find_or_create(self, trial_name: str | None) -> tuple[str, bool]:
        """(run id, found): the trial's run, created if missing. Retried as a whole, so a
        create whose answer was lost is found on the next attempt instead of made twice."""
        spec = self.spec
        found = find_trial_run(spec.target, spec.experiment_id, spec.parent_run_id, self.trial_id)
        if found is not None:
            return found, True
        tags = {
            PARENT_TAG: spec.parent_run_id,
            STUDY_TAG: spec.study_name,
            ROLE_TAG: "trial",
            TRIAL_TAG: self.trial_id,
            STATUS_TAG: "running",
        }
        run = self.client.raw.create_run(spec.experiment_id, tags=tags, run_name=trial_name or self.trial_id)
        return run.info.run_id, False

    @property
    def finished(self) -> bool:
        """The trial ran to its end before (a resumed study whose saved Tune state lagged behind)."""
        return self.previous_status in ("completed", "stopped_early")

    def last_metrics(self) -> dict[str, float]:
        """The latest value of every epoch metric, and the last epoch (for re-reporting a finished trial)."""
        run = self.client.get_run(self.run_id)
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")}
        steps = [m.step for m in self.client.get_metric_history(self.run_id, "train_loss")]
        metrics["epoch"] = max(steps, default=0)
        return metrics

    def start_system_metrics(self, gpu_ids: Sequence[GpuId] = ()) -> None:
        """CPU, disk and network through MLflow's monitor; utilization and memory of `gpu_ids`
        (the GPUs Ray assigned this trial) only, through `gpu_metrics.GpuSampler`."""
        if not self.spec.system_metrics:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # lazy: mlflow

            self._monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=self.spec.system_metrics_interval_s,
                resume_logging=self.resumed,
                tracking_uri=self.spec.tracking_uri,
            )
            gpu_metrics.without_gpu_monitors(self._monitor)  # it would log every GPU of the node
            self._monitor.start()
        except Exception as e:  # psutil missing or similar: metrics are optional, training is not
            log.warning("system metrics disabled: %s", one_line(e, typed=True))
            self._monitor = None
        if gpu_ids:
            self._gpu_sampler = gpu_metrics.GpuSampler(
                gpu_ids, self._log_system, self.spec.system_metrics_interval_s, self._next_system_step(gpu_ids[0])
            )
            self._gpu_sampler.start()

    def _log_system(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric  # lazy: mlflow

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def _next_system_step(self, gpu: GpuId) -> int:
        """A resumed trial's GPU metrics continue after the steps it logged."""
        if not self.resumed:
            return 0
        history = self.client.get_metric_history(self.run_id, f"system/gpu_{gpu}_utilization_percentage")
        return 1 + max((m.step for m in history), default=-1)

    def tag_device(self, gpu_ids: Sequence[GpuId]) -> None:
        """`samsnet.device`: the name of the GPU(s) the trial trains on, or "cpu"."""
        self.client.set_tag(self.run_id, DEVICE_TAG, gpu_metrics.device_name(gpu_ids))

    def log_config(self, experiment: Mapping[str, Any], model_config: Mapping[str, Any]) -> None:
        """All hyperparameters as params (dotted names), model config as an artifact."""
        params = flatten_params(experiment)
        existing = self.client.get_run(self.run_id).data.params
        new = {k: v for k, v in params.items() if k not in existing}
        assert_no_secrets(new, "param")
        if new:
            _log_batch(self.client, self.run_id, params=new)
        if not self.resumed:
            self.client.log_dict(self.run_id, dict(model_config), "model/model_config.json")
            self.client.log_dict(self.run_id, dict(experiment), "model/experiment.json")

    def log_epoch(self, metrics: Mapping[str, Any], epoch: int) -> None:
        from mlflow.entities import Metric  # lazy: mlflow

        if epoch <= self.logged_epoch:
            log.info("epoch %d of trial %s is in MLflow already; not logging it again", epoch, self.trial_id)
            return
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, epoch)
            for k, v in metrics.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)
        self.logged_epoch = max(self.logged_epoch, epoch)

    def log_best(self, path: Path, epoch: int) -> None:
        """Upload the best weights file (overwriting the previous best) under `model/`: the
        published copy; the study's storage keeps the checkpoints themselves."""
        path = Path(path)
        if epoch == self._best_logged_epoch or not path.is_file():
            return
        self.client.log_artifact(self.run_id, str(path), "model")
        self.client.set_tag(self.run_id, "samsnet.best_epoch", str(epoch))
        self._best_logged_epoch = epoch

    def finish(self, status: str, error: str | None = None) -> None:
        self.stop_system_metrics()
        retry(
            set_status,
            self.spec.target,
            self.run_id,
            status,
            error,
            budget_s=self.spec.infra_retry_s,
            what=f"MLflow status of trial {self.trial_id}",
        )

    def stop_system_metrics(self) -> None:
        if self._gpu_sampler is not None:
            self._gpu_sampler.stop()
            self._gpu_sampler = None
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as e:
                log.warning("system metrics monitor did not stop cleanly: %s", one_line(e, typed=True))
            self._monitor = None


# --- registry ------------------------------------------------------------------------


def registered_model_name(study_name: str) -> str:
    return f"samsnet-{study_name}"


def register_model(
    target: TrackingTarget,
    study_name: str,
    run_id: str,
    artifact_path: str = "model",
    tags: Mapping[str, str] = (),
    description: str | None = None,
) -> str:
    """Register `<run artifacts>/<artifact_path>` as a new version of `samsnet-<study>`; returns the version.

    `run_id` is the run that produced the weights (a trial or selection run, not the study's parent):
    the version links to it as its source run.
    """
    c = client(target)
    name = registered_model_name(study_name)
    from mlflow.exceptions import MlflowException  # lazy: mlflow

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description=f"Sams-Net chosen by study {study_name}")
    run = c.get_run(run_id)
    if run.data.tags.get(ROLE_TAG) == "study":
        raise TrackingError(f"run {run_id} is the study's parent run; register from the run that produced the weights")
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    tags = dict(tags)
    assert_no_secrets(tags, "tag")
    version = c.create_model_version(name, source, run_id=run_id, tags=tags, description=description)
    return str(version.version)


def log_json(target: TrackingTarget, run_id: str, payload: Any, artifact_file: str) -> None:
    """A JSON artifact (written via a temp file so that large payloads stream)."""
    text = json.dumps(payload, indent=2, default=str)
    assert_no_secrets({artifact_file: text}, "artifact")
    c = client(target)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_text(text)
        parent = str(Path(artifact_file).parent)
        c.log_artifact(run_id, str(path), None if parent == "." else parent)
