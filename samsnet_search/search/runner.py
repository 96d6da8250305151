"""Run or resume a study: Ray Tune (the study's searcher and scheduler) over the Sams-Net trainer, tracked in MLflow.

`run_study(study)` starts a study, or continues it when `<storage>/<name>` already holds
one started from the same file; `resume_study(name)` continues one by name. Either
returns a `StudyResult` whose `trials` are plain records (config, metrics history, best
and last checkpoints, MLflow child run id, status): the seam the slice-selection step
builds on.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import ray
from ray import tune

from ..data import load_splits
from ..engine.train import TRACK_SDR
from ..errors import ConfigError, SamsNetError, one_line
from ..services import stop, storage, tracking
from ..services.faults import is_infra_error, retry
from . import (
    checkpoints,
    cost,
    identity,
    importance,
    integrity,
    lease,
    pareto,
    schedulers,
    searchers,
    state_copy,
    tune_internals,
    warm_start,
)
from .callbacks import StudyCallback
from .estimate_step import before_search
from .identity import Manifest
from .integrity import StateSigner
from .objectives import best_of, per_epoch_keys
from .space import describe, num_trials, tune_space
from .study import Study, load_stored, resolve_storage
from .trial import RUN_ID_KEY, TrialContext, build_experiment, train_trial, trial_workdir

log = logging.getLogger(__name__)

# Ray reserves a large share of RAM for its object store by default; trials pass only
# configs and small results through it.
OBJECT_STORE_BYTES = 300 * 1024**2
# Forwarded to workers of an existing cluster (--address) in the job's runtime env. No secrets:
# Ray logs runtime envs (runtime_env_agent.log) and passes them on worker command lines, so
# cluster nodes get keys and passwords from their own environment (`ray start`, a Secret).
FORWARD_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MUSDB_PATH",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",  # the CLI's: no "View run" link per trial run
)
# Ray Tune copies these from the driver's environment into every trial's runtime env
# (ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE); while Ray runs here they are moved
# into a credentials file that AWS clients (pyarrow, boto3) find through AWS_SHARED_CREDENTIALS_FILE.
AWS_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
CHECKPOINT_MARGIN = 2
# A study's own Ray (no --address) is one node that takes no others: its servers listen on loopback
# only (`tune_internals.loopback_node`), and each one asks for Ray's token (Ray's default, RAY_AUTH_MODE=token), so
# that other users of the host cannot use it either. docs/security.md lists its sockets.
LOOPBACK = "127.0.0.1"
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Tune's hint on an interrupted fit names its own API (tune_internals.TUNE_LOGGER); the CLI prints
# `samsnet-search resume`.
RAY_RESUME_HINT = ("Resume experiment with:", "Resume training with:")
# Tune's uploads of the experiment state log a failed upload with its traceback (tune_internals.SYNC_LOGGERS).
RAY_SYNC_FAILURES = ("Last sync command failed", "Saving experiment state to storage")
# Tune logs each failed attempt of a trial with the worker's traceback (tune_internals.TRIAL_LOGGER).
RAY_TRIAL_FAILED = "Trial task failed"
# A trial's per-epoch history keeps these trainer keys, the per-target SDRs and every per-epoch
# objective of the objectives table (read when a history is made: an added objective is kept).
TRAINER_KEYS = (
    "epoch",
    "train_loss",
    "best_valid_loss",
    "epochs_without_improvement",
    "epoch_seconds",
    "epoch_cpu_seconds",
)
TARGET_SDR_PREFIX = "valid_sdr_"


class StudyError(SamsNetError):
    """A study cannot be started or resumed as asked."""


class StateLost(StudyError):
    """Every copy of Ray's experiment state was damaged (a write on a full disk): nothing to resume from."""


@dataclass
class TrialRecord:
    """One trial as the selection step and reports need it."""

    trial_id: str
    config: dict[str, Any]  # the sampled values, dotted keys
    experiment: dict[str, Any]  # the full ExperimentConfig (JSON form), as the worker recorded it
    status: str  # tracking.FINAL_STATUSES, or "running" for an interrupted trial
    epochs: int  # epochs trained
    metrics: dict[str, Any]  # last reported result
    history: list[dict[str, Any]]  # per-epoch metrics
    best: dict[str, Any] | None  # metrics of the best epoch by the study metric
    best_checkpoint: Any | None  # ray.tune.Checkpoint (best by metric: checkpoints.best_checkpoint) or None
    last_checkpoint: Any | None  # ray.tune.Checkpoint (latest) or None
    mlflow_run_id: str | None
    error: str | None
    path: str  # the trial's folder in the storage
    outage: bool = False  # failed for an outage that outlasted its retries: a plain resume continues it


@dataclass
class StudyResult:
    study: Study
    manifest: Manifest
    target: tracking.TrackingTarget
    trials: list[TrialRecord]
    seconds: float
    interrupted: bool = False
    result_grid: Any = None
    pareto: dict[str, Any] | None = None  # multi-objective studies: search.pareto.pareto_summary
    importance: dict[str, Any] | None = None  # search.importance.param_importance of a finished search

    @property
    def outages(self) -> list[TrialRecord]:
        """Trials that failed for an outage (not their own error): the study is not finished."""
        return [t for t in self.trials if t.outage]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    @property
    def best(self) -> TrialRecord | None:
        """The best trial by the study metric at its best epoch; never a failed trial."""
        metric = self.study.metric
        scored = [t for t in self.trials if t.status != "failed" and t.best]
        return best_of(scored, self.study.mode, key=lambda t: t.best.get(metric))

    def budget(self, trial: TrialRecord) -> int:
        """The epochs a trial would run if nothing stopped it."""
        return min(self.study.max_t, int(trial.experiment.get("train", {}).get("epochs", self.study.max_t)))

    def cost(self) -> dict[str, Any]:
        res = self.study.spec.resources
        return cost.search_cost(self.trials, self.budget, res.cpu, res.gpu, self.seconds)

    def epoch_savings(self) -> dict[str, float]:
        """Trial-epochs run vs. running the pruned and early-stopped trials to their full budget (what
        ASHA and patience saved); trials still unfinished (interrupted) or failed saved nothing."""
        run = sum(t.epochs for t in self.trials)
        full = run + sum(cost.saved_epochs(t, self.budget(t)) for t in self.trials)
        return {"epochs_run": run, "epochs_full": full, "fraction_saved": 1 - run / full if full else 0.0}

    def summary(self) -> dict[str, Any]:
        best = self.best
        return (
            {
                "trials": len(self.trials),
                "counts": self.counts(),
                "seconds": round(self.seconds, 1),
                **self.epoch_savings(),
                "best_trial": best.trial_id if best else None,
                "best_run": best.mlflow_run_id if best else None,
                f"best_{self.study.metric}": best.best[self.study.metric] if best else None,
                "best_config": best.config if best else None,
                "cost": {k: v for k, v in self.cost().items() if k != "trials"},
            }
            | ({"pareto": self.pareto} if self.pareto else {})
            | ({"importance": self.importance} if self.importance else {})
        )


# --- Ray -----------------------------------------------------------------------------


@contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None, quiet: bool = False
) -> Iterator[None]:
    """Connect to `address`, or start a small local Ray; reuse one already started in this process.

    quiet: keep worker output (per-epoch logs, Ray's checkpoint lines) out of the terminal,
    for the live view; errors still reach the driver through Tune.
    """
    with aws_keys_in_file():
        if ray.is_initialized():
            yield
            return
        common = dict(include_dashboard=False, configure_logging=False, log_to_driver=not quiet)
        tune_internals.warn_if_unvalidated()
        # The driver runs Tune, on a local Ray or a cluster alike.
        for name in tune_internals.SYNC_LOGGERS:
            logging.getLogger(name).addFilter(_sync_outage_one_line)
        logging.getLogger(tune_internals.TRIAL_LOGGER).addFilter(_trial_outage_one_line)
        logging.getLogger(tune_internals.TUNE_LOGGER).addFilter(_tune_resume_hint)
        if address:
            env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
            try:
                ray.init(address=address, runtime_env={"env_vars": env}, **common)
                stop.reinstall()  # Ray's core worker took SIGTERM over (abseil's handler aborts)
            except ConnectionError as e:  # no cluster there, or its auth token differs
                raise StudyError(f"--address {address}: cannot connect to a Ray cluster ({one_line(e)})") from None
        else:
            # Workers of a local Ray inherit this environment: the credentials file's path, no keys.
            # Token auth is Ray's default for a new local cluster (its ports then refuse requests
            # without ~/.ray/auth_token); Ray announces it at every start, which says nothing new.
            logging.getLogger(tune_internals.AUTH_LOGGER).addFilter(_token_auth_banner)
            _warn_without_token_auth()
            with tune_internals.loopback_node():
                ray.init(
                    num_cpus=num_cpus or os.cpu_count() or 1,
                    num_gpus=num_gpus,
                    object_store_memory=OBJECT_STORE_BYTES,
                    _node_ip_address=LOOPBACK,
                    **common,
                )
            stop.reinstall()  # Ray's core worker took SIGTERM over (abseil's handler aborts)
            tune_internals.keep_token_private()
        try:
            yield
        finally:
            ray.shutdown()
            stop.reinstall()  # ray.shutdown leaves SIGTERM at its default (the process dies)


def _token_auth_banner(record: logging.LogRecord) -> bool:
    """Drop Ray's "token authentication is enabled" notice (its warnings otherwise pass)."""
    return not record.getMessage().startswith("Token authentication is enabled")


def _warn_without_token_auth() -> None:
    """Ray turns token authentication on for a new local cluster unless RAY_AUTH_MODE says otherwise
    (set in the driver, it must be set before Ray is imported: Ray reads it into its C++ config)."""
    mode = os.environ.get(RAY_AUTH_MODE_ENV, "token")
    if mode.lower() != "token":
        log.warning(
            "%s=%s: this study's Ray answers requests without its token, from any user of this host",
            RAY_AUTH_MODE_ENV,
            mode,
        )


def _tune_resume_hint(record: logging.LogRecord) -> bool:
    """Drop Tune's "Resume experiment with: Tuner.restore(...)" (the study's own resume hint follows)."""
    return not any(hint in record.getMessage() for hint in RAY_RESUME_HINT)


def quiet_tune_output() -> None:
    """Tune's legacy output engine, silent at verbose=0. The new one (Ray 2.x default) prints an
    experiment table, a local "View detailed results here" path (without s3://) and a TensorBoard
    hint whether TensorBoard is installed or not; the study shows its own table and paths."""
    os.environ.setdefault(tune_internals.NEW_OUTPUT_ENV, "0")


def _sync_outage_one_line(record: logging.LogRecord) -> bool:
    """A failed upload of the experiment state for an outage (a full disk, an unreachable store)
    is one line: Ray uploads it again at its next sync, so the traceback says nothing useful."""
    # Ray logs these inside its `except` block, some with exc_info, some with the traceback as text.
    error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    if error is not None and is_infra_error(error) and record.getMessage().startswith(RAY_SYNC_FAILURES):
        record.msg, record.args = (
            "storing the experiment state failed (%s); Ray tries again",
            (one_line(error, typed=True),),
        )
        record.exc_info, record.exc_text = None, None
    return True


def _trial_outage_one_line(record: logging.LogRecord) -> bool:
    """A trial that failed for an outage outlasting its retries (search.infra_retry_s) is one line:
    the worker's traceback only says where it waited, and stays in the trial's error.txt (Tune
    writes it there); a trial's own error keeps its traceback."""
    error = record.exc_info[1] if record.exc_info else None
    cause = getattr(error, "cause", error)  # a RayTaskError carries the trial's exception as `cause`
    if cause is not None and is_infra_error(cause) and record.getMessage().startswith(RAY_TRIAL_FAILED):
        message = record.getMessage()
        record.msg, record.args = (
            "%s: %s (traceback: error.txt in the trial's folder)",
            (message, one_line(cause, typed=True)),
        )
        record.exc_info, record.exc_text = None, None
    return True


@contextmanager
def aws_keys_in_file() -> Iterator[None]:
    """AWS keys of the environment moved into a 0600 credentials file for the block.

    Tune would copy them into each trial's runtime env, which Ray writes to its session logs
    and puts on worker command lines. The file lives in memory (/dev/shm) where there is one,
    in a 0700 folder, and is removed at the end; AWS_SHARED_CREDENTIALS_FILE names it.
    """
    keys = {k: os.environ[k] for k in AWS_SECRET_ENV if k in os.environ}
    if (
        "AWS_ACCESS_KEY_ID" not in keys
        or "AWS_SECRET_ACCESS_KEY" not in keys
        or "AWS_SHARED_CREDENTIALS_FILE" in os.environ
    ):
        yield
        return
    folder = tempfile.mkdtemp(prefix="samsnet-aws-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(folder, "credentials")
    lines = [
        "[default]",
        f"aws_access_key_id = {keys['AWS_ACCESS_KEY_ID']}",
        f"aws_secret_access_key = {keys['AWS_SECRET_ACCESS_KEY']}",
    ]
    token = keys.get("AWS_SESSION_TOKEN") or keys.get("AWS_SECURITY_TOKEN")  # the second: boto's old name
    if token:
        lines.append(f"aws_session_token = {token}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    profile = os.environ.pop("AWS_PROFILE", None)  # the file's [default] profile
    for k in keys:
        del os.environ[k]
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = path
    try:
        yield
    finally:
        os.environ.pop("AWS_SHARED_CREDENTIALS_FILE", None)
        os.environ.update(keys)
        if profile is not None:
            os.environ["AWS_PROFILE"] = profile
        shutil.rmtree(folder, ignore_errors=True)


def trial_dirname(trial) -> str:
    """Short trial folders named by trial id (the records parse it back; `checkpoints.trial_uri`)."""
    return f"{checkpoints.TRIAL_PREFIX}{trial.trial_id}"


def trial_resources(study: Study) -> dict[str, Any]:
    """What each trial reserves, in `tune.with_resources` form.

    Fractional GPUs pass through as they are (gpu: 0.5 lets two trials share one GPU);
    custom resources (resources.custom) pin trials to nodes that offer them.
    """
    r = study.spec.resources
    out: dict[str, Any] = {"cpu": r.cpu, "gpu": r.gpu}
    if r.custom:
        out["custom_resources"] = dict(r.custom)
    return out


def trainable(study: Study, ctx: TrialContext):
    return tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), trial_resources(study))


def _new_tuner(study: Study, ctx: TrialContext, callback) -> Any:
    s = study.search
    storage_path, fs = storage.ray_storage(study.storage)
    scheduler = callback.scheduler
    study_path = identity.study_uri(study.storage, study.name)
    tune_config = tune.TuneConfig(
        **searchers.tune_metric(study),
        search_alg=searchers.build_searcher(study),
        scheduler=scheduler,
        num_samples=s.num_samples,
        max_concurrent_trials=searchers.max_concurrent_trials(study),
        time_budget_s=s.time_budget_s,
        trial_dirname_creator=trial_dirname,
        # Each trial in a fresh worker: a reused one must first end the previous trial's
        # thread, which a stopped trial may still run (waiting out a tracking outage); Tune
        # then fails the next trial instead ("reuse requires reset_config()").
        reuse_actors=False,
    )
    run_config = tune.RunConfig(
        name=study.name,
        storage_path=storage_path,
        storage_filesystem=fs,
        checkpoint_config=tune.CheckpointConfig(
            # The best N by metric (Ray keeps the latest as well), plus a margin: Tune saves
            # its experiment state asynchronously, and a study resumed after a crash must
            # still find the checkpoint that state points to.
            num_to_keep=s.checkpoints_to_keep + CHECKPOINT_MARGIN,
            checkpoint_score_attribute=study.metric,
            checkpoint_score_order=study.mode,
        ),
        # Tune retries every failure alike; the trial counts its own errors against max_failures
        # (trial.train_trial), so a lost worker uses the rest: worker_retries.
        failure_config=tune.FailureConfig(max_failures=s.max_failures + s.worker_retries),
        callbacks=[callback, StateSigner(study_path), state_copy.StateCopier(study_path)],
        verbose=0,
    )
    return tune.Tuner(
        trainable(study, ctx), param_space=tune_space(study), tune_config=tune_config, run_config=run_config
    )


def _restore_tuner(study: Study, ctx: TrialContext) -> Any:
    storage_path, fs = storage.ray_storage(study.storage)
    path = f"{storage_path.rstrip('/')}/{study.name}"
    tuner = tune.Tuner.restore(
        path,
        trainable(study, ctx),
        resume_unfinished=True,  # unfinished trials continue from their last checkpoint
        # So do failed ones (Tune's own restart_errored would train them from scratch): one that
        # failed in an outage loses nothing, and one whose own error used up search.max_failures
        # (counted in its MLflow run) ends at once, failed again (trial._refuse_beyond_own_failures).
        resume_errored=True,
        restart_errored=False,
        storage_filesystem=fs,
    )
    # Studies started with actor reuse keep it in their saved TuneConfig, and restore takes no
    # new one: turn it off there (Ray's attribute; see _new_tuner for why).
    saved = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    if saved is not None:
        saved.reuse_actors = False
    return tuner


def _can_restore(study: Study) -> bool:
    storage_path, fs = storage.ray_storage(study.storage)
    return tune.Tuner.can_restore(f"{storage_path.rstrip('/')}/{study.name}", storage_filesystem=fs)


# --- the study -----------------------------------------------------------------------


def _fingerprint(study: Study) -> tuple[str | None, str | None]:
    """Load the data once in the driver: bad data fails here, before any trial starts."""
    splits = load_splits(study.representative().data)
    log.info("data: %s, %d train / %d valid tracks", splits.kind, len(splits.train), len(splits.valid))
    return splits.fingerprint, splits.kind


def _parent_params(study: Study) -> dict[str, Any]:
    spec = study.spec
    return {
        "study": {"name": study.name, "storage": identity.display_uri(study.storage)},
        "search": spec.search.model_dump(mode="json") | {"max_t": study.max_t, "mode": study.mode},
        "resources": spec.resources.model_dump(mode="json"),
        "selection": spec.selection.model_dump(mode="json"),
        "space": dict(describe(study)[: len(study.space)]),
    }


def open_study(study: Study, check_same_file: bool = True) -> tuple[Manifest, tracking.TrackingTarget, bool]:
    """The study's manifest, MLflow experiment and parent run: created, or found to resume.

    Returns (manifest, tracking target, resuming).
    """
    study_path = identity.study_uri(study.storage, study.name)
    manifest = identity.read_manifest(study_path)
    if manifest is not None and check_same_file:
        stored = identity.read_study_copy(study_path)
        if stored is not None and stored != study.text:
            raise StudyError(
                f"{study.source}: a study named {study.name!r} already exists in "
                f"{identity.display_uri(study.storage)} with a different study file; resume it with "
                f"`samsnet-search resume {study.name}`, or set another name: in the file"
            )
    target = tracking.resolve_tracking(study.tracking_uri, study.base_dir)
    tracking.check_server(target)  # a stopped server: one line now, not minutes of retries
    experiment_id = tracking.ensure_experiment(target, study.name)
    if manifest is None:
        parent = tracking.start_parent_run(
            target, experiment_id, study.name, {identity.STORAGE_TAG: identity.display_uri(study_path)}
        )
        manifest = Manifest(
            name=study.name,
            storage=study.storage,
            experiment_name=study.name,
            experiment_id=experiment_id,
            parent_run_id=parent,
            registered_model=tracking.registered_model_name(study.name),
            tracking_uri=target.uri,
            artifact_root=target.artifact_root,
            base_dir=str(study.base_dir),
            source=str(study.source),
        )
        identity.write_study_copy(study_path, study.text)
        identity.write_manifest(manifest)
        return manifest, target, False
    return manifest, target, True


def run_study(
    study: Study,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    restart_errored: bool = False,
    quiet: bool = False,
    selection_follows: bool = False,
) -> StudyResult:
    """Run a study to the end (or continue it); returns the per-trial records.

    Holds the study's lease throughout: a second driver of the same study stops with
    `lease.StudyLocked` before it touches anything. selection_follows: the caller runs the
    selection next, so a finished search leaves the parent run open (the selection closes it:
    in the MLflow UI the study run spans the whole study).
    """
    with stop.watch(), lease.hold(identity.study_uri(study.storage, study.name), study.name):
        return _run_study(study, address, num_cpus, num_gpus, restart_errored, quiet, selection_follows)


def _run_study(
    study: Study, address, num_cpus, num_gpus, restart_errored: bool, quiet: bool, selection_follows: bool = False
) -> StudyResult:
    start = time.monotonic()
    # Every epoch checkpoints, so Tune snapshots its state often; that is intended here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet_tune_output()
    manifest, target, resuming = open_study(study)
    if resuming:  # before anything starts: Tune's state is unpickled on restore
        _verify_state(study)
    if resuming and (manifest.search_finished or manifest.state == "finished") and not restart_errored:
        # Its search is over (the study finished, or stopped in the selection): the results are
        # loaded, never fitted again (a second fit writes a new Tune session for nothing).
        log.info("the search of study %s is finished; loading its results", study.name)
        with ray_session(address, num_cpus, num_gpus, quiet):
            grid = _restore_tuner(study, trial_context(study, manifest)).get_results()
            return _result(study, manifest, target, grid, manifest.summary.get("seconds", 0.0))
    fingerprint, kind = _fingerprint(study)
    tracking.client(target).update_run(manifest.parent_run_id, status="RUNNING")
    tracking.log_study_details(target, manifest.parent_run_id, study.text, _parent_params(study), fingerprint, kind)
    if not resuming:  # a restored Tuner keeps its own space and searcher
        before_search(study, target, manifest.parent_run_id)
        _warm_start(study, target, manifest)
    manifest.state, manifest.search_finished = "running", False
    identity.write_manifest(manifest)
    ctx = trial_context(study, manifest)
    callback = _callback(study, manifest, target)
    state = "failed"
    result = None
    try:
        with ray_session(address, num_cpus, num_gpus, quiet):
            if resuming and _can_restore(study):
                tuner = _restore_tuner(study, ctx)
                log.info("resuming study %s from %s", study.name, identity.display_uri(manifest.path))
            else:
                tuner = _new_tuner(study, ctx, callback)
                _sign_tuner(study)
            with stop.tune_loop():
                grid = tuner.fit()
            seconds = seconds_before(manifest, resuming) + time.monotonic() - start
            result = _result(study, manifest, target, grid, seconds, stop.requested() is not None)
            state = "interrupted" if result.interrupted else "finished"
            if study.search.multi_objective and not result.interrupted:
                result.pareto = _pareto(study, result)
            if not result.interrupted:
                result.importance = _importance(study, result)
    except KeyboardInterrupt:
        state = "fenced" if stop.fenced() else "interrupted"  # fenced: another driver owns it, no writes
        raise
    finally:
        if state != "fenced":
            close_study(
                manifest,
                target,
                state,
                result,
                keep_open=selection_follows and state == "finished",
                budget_s=study.search.infra_retry_s,
            )
    return result


def seconds_before(manifest: Manifest, resuming: bool) -> float:
    """The search's wall time in the sessions before this one (a resumed study's summary keeps it)."""
    return float((manifest.summary or {}).get("seconds") or 0.0) if resuming else 0.0


def _warm_start(study: Study, target, manifest: Manifest) -> None:
    """Tell the searcher the earlier studies' trials; the study folder and the parent run say how many."""
    if not study.search.warm_start:
        return
    warm = warm_start.load(study, study.search.warm_start)
    study.warm_points, study.warm_rewards = warm.points, warm.rewards
    identity.write_study_json(manifest.path, warm_start.ARTIFACT, {"sources": warm.sources})
    c = tracking.client(target)
    for name, n in warm.sources.items():
        c.log_metric(manifest.parent_run_id, f"warm_start.{name}", n)
    log.info("warm start: %s", ", ".join(f"{n} trials from study {name}" for name, n in warm.sources.items()))


def _importance(study: Study, result: StudyResult) -> dict[str, Any]:
    """Parameter importance of the finished search; a failure is reported, never fatal (the
    results are on disk already)."""
    space = {k: d.to_optuna() for k, d in study.space.items()}
    try:
        return importance.param_importance(result.trials, space, study.search.objective_modes)
    except Exception as e:
        log.warning("could not compute parameter importance: %s", e)
        return {"trials": len(result.trials), "objectives": {}, "skipped": f"failed: {e}"}


def _verify_state(study: Study) -> None:
    """Before Tune unpickles the study's state: files a failed write left empty or truncated are
    set aside (they block Tune's restore, and cannot carry code); each other file must carry this
    driver's signature."""
    path = identity.study_uri(study.storage, study.name)
    moved = integrity.set_aside_damaged(path)
    left = integrity.stored_state_files(path)
    if "tuner.pkl" in left and not any(integrity.is_experiment_state(f) for f in left) and not state_copy.restore(path):
        # Without it Tune "restores" an empty search and then fails deep inside its searcher.
        raise StateLost(
            f"study {study.name}: Ray's experiment state was lost in a failed write "
            f"({', '.join(f for f in moved if integrity.is_experiment_state(f)) or 'none left'}; see {identity.display_uri(path)}/{integrity.SET_ASIDE}): "
            "its search cannot be continued; its trials' results are in MLflow"
        )
    integrity.verify(path)


def trust_state(study: Study) -> list[str]:
    """`resume --trust`: sign the study's current Ray state with this machine's key (after setting
    aside what a failed write left); returns the files signed."""
    integrity.set_aside_damaged(identity.study_uri(study.storage, study.name))
    return integrity.trust(identity.study_uri(study.storage, study.name))


def _sign_tuner(study: Study) -> None:
    """tuner.pkl is written once, when the Tuner is made (Tune's later files: integrity.StateSigner)."""
    integrity.sign_stored(identity.study_uri(study.storage, study.name), ["tuner.pkl"])


def trial_context(study: Study, manifest: Manifest) -> TrialContext:
    """What every trial of the study shares (and a selection retraining: its `tracking`)."""
    spec = tracking.ChildRunSpec(
        tracking_uri=manifest.tracking_uri,
        artifact_root=manifest.artifact_root,
        experiment_id=manifest.experiment_id,
        parent_run_id=manifest.parent_run_id,
        study_name=study.name,
        system_metrics=study.spec.tracking.system_metrics,
        system_metrics_interval_s=study.spec.tracking.system_metrics_interval_s,
        infra_retry_s=study.search.infra_retry_s,
    )
    return TrialContext(
        study_name=study.name,
        base=study.base,
        tracking=spec,
        cpus=study.spec.resources.cpu,
        metric=study.metric,
        mode=study.mode,
        infra_retry_s=study.search.infra_retry_s,
        max_failures=study.search.max_failures,
        study_path=manifest.path,
        lease_token=lease.held_token(manifest.path),
    )


def _callback(study: Study, manifest: Manifest, target: tracking.TrackingTarget):
    return StudyCallback(
        study_name=study.name,
        target=target,
        experiment_id=manifest.experiment_id,
        parent_run_id=manifest.parent_run_id,
        metric=study.metric,
        mode=study.mode,
        max_t=study.max_t,
        epochs=study.max_epochs,
        scheduler=schedulers.build_scheduler(study),
    )


def _pareto(study: Study, result: StudyResult) -> dict[str, Any]:
    """The Pareto front of a finished multi-objective search, with the front's CPU latency
    measured now that no trial competes for the CPU."""
    front = pareto.pareto_summary(result.trials, study.metric, study.search.objective_modes, study.search.scheduler)
    pareto.add_latency(front, result.trials, study.representative().data.segment_seconds)
    log.info("Pareto front: %d of %d scored trials", len(front["front"]), len(front["points"]))
    return front


def _log_pareto(target, run_id: str, front: dict[str, Any]) -> None:
    tracking.log_json(target, run_id, front, pareto.ARTIFACT_JSON)
    tracking.client(target).log_text(run_id, pareto.front_markdown(front), pareto.ARTIFACT_MD)
    tracking.client(target).log_metric(run_id, "pareto.size", float(len(front["front"])))


# Ray's trial ids: 8 hex digits (searcher trials) or 5 hex, "_" and a 5-digit number (variants).
_TRIAL_ID = r"(?:[0-9a-f]{8}|[0-9a-f]{5}_\d{5})"


def remove_trial_workdirs(study_name: str) -> int:
    """Remove the study's trial work folders on this machine (`trial_workdir`): a trial that ends
    removes its own, a killed one (worker lost, driver stopped) leaves it behind. Returns how many.
    Only this machine's: on a cluster each worker node's temp folder holds its trials' folders."""
    root = trial_workdir(study_name, "x").parent
    own = re.compile(rf"{re.escape(study_name)}_{_TRIAL_ID}")
    folders = [p for p in root.glob(f"{glob.escape(study_name)}_*") if own.fullmatch(p.name)]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return len(folders)


def close_study(
    manifest: Manifest,
    target,
    state: str,
    result: StudyResult | None,
    keep_open: bool = False,
    budget_s: float = 0.0,
) -> None:
    """Record the study's state in study.json and on the parent run; end the run unless keep_open.
    A finished search leaves no trial work folder behind. budget_s: how long a storage outage (a
    full disk) is waited out for study.json, as the trials wait (search.infra_retry_s)."""
    if state == "finished":
        remove_trial_workdirs(manifest.name)
    manifest.state = state
    manifest.search_finished = manifest.search_finished or state == "finished"
    summary = result.summary() if result is not None else None
    if summary is not None:
        manifest.summary = summary
    _write_final_manifest(manifest, budget_s)
    try:
        c = tracking.client(target)
        if result is not None:
            best = result.best
            if best and best.mlflow_run_id:
                c.set_tag(manifest.parent_run_id, tracking.BEST_RUN_TAG, best.mlflow_run_id)
            for key in ("epochs_run", "epochs_full", "fraction_saved"):
                c.log_metric(manifest.parent_run_id, f"search.{key}", float(summary[key]))
            for status, n in summary["counts"].items():
                c.log_metric(manifest.parent_run_id, f"trials.{status}", float(n))
            for key, value in summary["cost"].items():
                c.log_metric(manifest.parent_run_id, f"cost.search.{key}", float(value))
            for key, value in importance.mlflow_metrics(summary.get("importance") or {}).items():
                c.log_metric(manifest.parent_run_id, key, value)
            if summary.get("importance"):
                tracking.log_json(target, manifest.parent_run_id, summary["importance"], "importance.json")
                log.info(importance.slices_line(summary["importance"], result.study.metric))
            tracking.log_json(target, manifest.parent_run_id, summary, "search_summary.json")
            if result.pareto:
                _log_pareto(target, manifest.parent_run_id, result.pareto)
        c.set_tag(manifest.parent_run_id, "samsnet.state", manifest.state)
        if not keep_open:
            c.set_terminated(manifest.parent_run_id, {"finished": "FINISHED", "failed": "FAILED"}.get(state, "KILLED"))
    except Exception as e:  # the results are on disk already; tracking trouble is reported, not fatal
        log.warning("could not update the study's parent run: %s", e)


def _write_final_manifest(manifest: Manifest, budget_s: float = 0.0) -> None:
    """study.json with the study's end state; a full disk (or a storage outage) is one line, not
    a traceback: study.json then still says `running`, and with this driver's lease released
    `ls` and `resume` treat the study as interrupted (identity.list_studies)."""
    try:
        retry(identity.write_manifest, manifest, budget_s=budget_s, what="recording the study's end in study.json")
    except Exception as e:
        if not is_infra_error(e):
            raise
        log.error(
            "could not record state %s in %s (%s); free space, then: samsnet-search resume %s",
            manifest.state,
            identity.display_uri(identity.study_uri(manifest.path, identity.MANIFEST)),
            one_line(e),
            manifest.name,
        )


def mark_interrupted(manifest: Manifest, target) -> None:
    """A study stopped by Ctrl-C after its search (during the selection): not finished, so that
    `ls` says so and `resume` goes on with it."""
    fresh = identity.read_manifest(manifest.path) or manifest
    fresh.state = "interrupted"
    identity.write_manifest(fresh)
    try:
        tracking.client(target).set_tag(
            fresh.parent_run_id, "samsnet.state", "interrupted"
        )  # the run itself: select.parent_run_open
    except Exception as e:  # the manifest holds the state; the tag follows when it can
        log.warning("could not update the study's parent run: %s", e)


def resume_study(
    name_or_path: str,
    storage: str = "./runs",
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    restart_errored: bool = False,
    quiet: bool = False,
) -> StudyResult:
    """Continue a study by name (in `storage`) or by its folder."""
    manifest = identity.find_study(name_or_path, resolve_storage(storage, Path.cwd()))
    study = load_stored_study(manifest)
    return run_study(
        study, address=address, num_cpus=num_cpus, num_gpus=num_gpus, restart_errored=restart_errored, quiet=quiet
    )


def load_stored_study(manifest: Manifest) -> Study:
    """The study as it was started: its file copy, with paths resolved where it was first run."""
    study = load_stored(manifest)
    if study is None:
        raise StudyError(
            f"{identity.display_uri(manifest.path)}: the study file copy ({identity.STUDY_COPY}) is missing"
        )
    return study


# --- results -------------------------------------------------------------------------


def _result(study: Study, manifest: Manifest, target, grid, seconds: float, stopped: bool = False) -> StudyResult:
    """The records of a search; `interrupted` when Ctrl-C stopped it (`stopped`), when a trial is
    unfinished, or when the searcher had not yet proposed every trial."""
    runs = {
        r.data.tags.get(tracking.TRIAL_TAG): r
        for r in tracking.find_child_runs(target, manifest.experiment_id, manifest.parent_run_id)
    }
    trials = [_record(study, r, runs) for r in grid]
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    # A time budget ends a search with fewer trials than asked for; without one, missing trials
    # are trials a stopped search never started.
    if study.search.time_budget_s is None:
        unfinished += max(0, num_trials(study) - len(grid))
    # A trial failed by an outage is not done: `resume` continues it (_restore_tuner).
    interrupted = stopped or unfinished > 0 or any(t.outage for t in trials)
    if not interrupted:
        close_orphans(target, runs, {t.trial_id for t in trials})
    return StudyResult(study, manifest, target, trials, seconds, interrupted=interrupted, result_grid=grid)


def close_orphans(target, runs: dict, trial_ids: set[str]) -> None:
    """Runs of trials Tune never recorded (the driver died between starting a trial and
    saving its state; on resume Tune proposes a new trial instead): close them as stopped.
    Selection runs are children of the same parent but no search trial's: they are left alone."""
    for trial_id, run in runs.items():
        if tracking.PHASE_TAG in run.data.tags:
            continue
        if trial_id not in trial_ids and run.data.tags.get(tracking.STATUS_TAG) not in tracking.FINAL_STATUSES:
            log.info(
                "closing MLflow run %s of trial %s, which the resumed study does not contain", run.info.run_id, trial_id
            )
            tracking.set_status(
                target,
                run.info.run_id,
                "stopped",
                error="abandoned: the driver stopped before Tune recorded this trial",
            )


def _record(study: Study, result, runs: dict) -> TrialRecord:
    trial_id = Path(str(result.path)).name.removeprefix(checkpoints.TRIAL_PREFIX)
    metrics = dict(result.metrics or {})
    history = trial_history(result.metrics_dataframe)
    run = runs.get(trial_id)
    status = run.data.tags.get(tracking.STATUS_TAG) if run else None
    if result.error is not None and status not in ("completed", "stopped_early"):
        # (a trial that finished, but whose checkpoint Tune could not restore after a crash,
        # keeps the status it recorded)
        status = "failed"
    best = _best(history, study)
    study_path = identity.study_uri(study.storage, study.name)
    # As the worker built and recorded it; {} for a trial that never got that far.
    experiment = checkpoints.read_experiment(study_path, trial_id)
    if experiment is None:
        experiment = _unrecorded_experiment(study, result)
    best_ckpt = checkpoints.best_checkpoint(checkpoints.trial_uri(study_path, trial_id), study.metric, study.mode)
    error = error_line(result.error, run.data.tags if run else {})
    return TrialRecord(
        trial_id=trial_id,
        config=dict(result.config or {}),
        experiment=experiment,
        status=status or "running",
        epochs=int(metrics.get("epoch", len(history)) or 0),
        metrics=metrics,
        history=history,
        best=best,
        best_checkpoint=best_ckpt,
        last_checkpoint=result.checkpoint,
        mlflow_run_id=metrics.get(RUN_ID_KEY) or (run.info.run_id if run else None),
        error=error,
        path=str(result.path),
        outage=status == "failed" and is_outage(run.data.tags.get(tracking.ERROR_TAG) if run else None, result.error),
    )


def error_line(error, tags: dict[str, str]) -> str | None:
    """A failed trial's error, one line: as the trial recorded it in MLflow, else from Tune (an
    exception, or the text of the trial's error.txt when its error.pkl was set aside)."""
    if error is None:
        return None
    if isinstance(error, BaseException):
        return one_line(error)
    if tags.get(tracking.ERROR_TAG):
        return one_line(RuntimeError(tags[tracking.ERROR_TAG]))
    # error.txt: "Failure # N (occurred at ...)" then the error; a full disk can leave it empty.
    text = re.sub(r"^Failure # .*$", "", str(error), flags=re.MULTILINE)
    return one_line(RuntimeError(text)) if text.strip() else "unknown (the trial's error file is empty)"


def is_outage(line: str | None, error) -> bool:
    """Whether a trial failed for an outage that outlasted its retries (search.infra_retry_s)
    rather than for its own error: its MLflow run's line says so, or Tune's error is one. A
    trial whose error only Tune's text file holds (its error.pkl was cut short by a failed
    write) and that recorded no error of its own failed while the storage was failing: an outage."""
    if line:
        return line.startswith("infrastructure:")
    if isinstance(error, BaseException):
        return is_infra_error(getattr(error, "cause", None) or error)
    return error is not None


def _unrecorded_experiment(study: Study, result) -> dict[str, Any]:
    """The configuration of a trial whose worker did not record it: a trial of a study started by
    an older version, or one that failed before it started (then {})."""
    if (result.metrics or {}).get(RUN_ID_KEY) is None:
        return {}
    try:
        return build_experiment(study.base, dict(result.config or {}), study.spec.resources.cpu).model_dump(mode="json")
    except ConfigError:
        return {}


def trial_history(df) -> list[dict[str, Any]]:
    """A trial's per-epoch metrics from Tune's results (a DataFrame, one row per report)."""
    if df is None or df.empty:
        return []
    keep = {*TRAINER_KEYS, *per_epoch_keys()}
    cols = [c for c in df.columns if c in keep or c.startswith((TARGET_SDR_PREFIX, f"{TRACK_SDR}."))]
    rows = [{k: v for k, v in row.items() if v == v} for row in df[cols].to_dict("records")]  # drop NaN (no SDR)
    # A trial that continued from an older checkpoint (a corrupt newer one, or Tune's state
    # lagging behind a killed driver) reports some epochs again: the last report counts.
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in rows:
        by_epoch[row.get("epoch", len(by_epoch) + 1)] = row
    return list(by_epoch.values())


def _best(history: list[dict[str, Any]], study: Study) -> dict[str, Any] | None:
    return best_of(history, study.mode, key=lambda h: h.get(study.metric))
