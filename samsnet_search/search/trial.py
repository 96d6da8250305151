"""The Ray Tune trainable: one trial = one `Trainer.fit` with a reporting callback.

`train_tracked` is the one training path of a search trial and of a selection retraining:
the configuration's MLflow run gets params, cost, metrics per epoch, best weights and the final
status from it. Runs inside a Ray worker. The trial config holds only the searched keys
(`{"model.slices": 4, ...}`); the fixed parts and the MLflow parent run id arrive in a
`TrialContext` (through `tune.with_parameters`). Every epoch the callback logs metrics to
the trial's MLflow child run and calls `tune.report(metrics, checkpoint=...)` with the
trainer's checkpoint folder, the one checkpoint format (so a resumed or retried trial
continues from `tune.get_checkpoint()`). The worker records the trial's full configuration
once in the study's storage (`checkpoints.write_experiment`), where the driver reads it.

Storage and tracking outages are waited out (`faults.retry`, up to `search.infra_retry_s`),
never counted as the trial's failure. A resumed trial checks the checkpoint it continues
from against its checksum; a corrupt one is named by its stored path and the newest intact
one (Tune's other kept checkpoints, or the trainer's local work copy) is used instead.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import socket
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
from mlflow.entities import RunTag
from ray import tune

from ..config import ExperimentConfig, validate_model
from ..engine import checkpoint as ckpt_format
from ..engine.checkpoint import build_model
from ..engine.gpu_share import cap_to_share, is_out_of_memory
from ..engine.train import EpochResult, Trainer, TrainSummary
from ..errors import CheckpointError, one_line
from ..model.info import model_cost
from ..services.faults import DEFAULT_BUDGET_S, is_infra_error, retry
from ..services.tracking import ERROR_TAG, ChildRunSpec, TrialRun, worker_http_settings
from . import lease, tune_internals
from .checkpoints import kept_checkpoints, stored_name, write_experiment
from .objectives import best_of, better
from .placement import assigned_gpu_ids, place
from .study import merge

log = logging.getLogger(__name__)

# Extra keys in every Tune result (beside the trainer's metrics).
RUN_ID_KEY = "mlflow_run_id"
# Where a trial runs: the Ray node of its latest attempt, and every attempt's node in order
# (a trial retried after losing its node moves to another one).
NODE_TAG = "samsnet.node"
NODES_TAG = "samsnet.nodes"
HOST_TAG = "samsnet.host"
OWN_FAILURES_TAG = "samsnet.own_failures"  # errors of the trial's own code (not lost workers, not outages)


class TrialFailed(RuntimeError):
    """A retried trial whose own errors already used up search.max_failures."""


def trial_workdir(study_name: str, trial_id: str) -> Path:
    """The trainer's folder for a trial: its checkpoints before Tune copies them.

    Outside Ray's trial folders on purpose: Ray syncs some of those to the storage, which
    would store every checkpoint twice.
    """
    return Path(tempfile.gettempdir()) / "samsnet-trials" / f"{study_name}_{trial_id}"


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares: fixed config, tracking target, per-trial CPUs."""

    study_name: str
    base: dict[str, Any]
    tracking: ChildRunSpec
    cpus: float = 1.0
    metric: str = "valid_loss"  # the study metric and its direction (for best_<metric>)
    mode: str = "min"
    infra_retry_s: float = DEFAULT_BUDGET_S  # how long storage/tracking outages are waited out
    max_failures: int = 0  # Tune's retries of the trial's own errors
    study_path: str = ""  # the study's folder in the storage: the worker records the trial's config there
    lease_token: str = ""  # the driver's lease: a worker whose driver lost the study stops (lease.assert_token)


def build_experiment(base: dict[str, Any], config: dict[str, Any], cpus: float = 1.0) -> ExperimentConfig:
    """The trial's ExperimentConfig: fixed parts + sampled values.

    torch's default thread count is every core of the node; trials share the node, so
    unless the study sets train.threads a trial uses the CPUs it reserved.
    """
    data = merge(base, config)
    train = data.setdefault("train", {})
    if train.get("threads") is None:
        train["threads"] = max(1, int(math.floor(cpus)))
    return validate_model(ExperimentConfig, data, "trial config")


def _tune_metrics(metrics: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Tune results: the trainer's flat metrics (None dropped) plus the MLflow run id."""
    out = {k: v for k, v in metrics.items() if v is not None}
    out[RUN_ID_KEY] = run_id
    return out


def model_cost_metrics(cfg: ExperimentConfig) -> dict[str, float]:
    """Parameter count and GMACs per second of the trial's model: cost objectives, known before training."""
    return model_cost(build_model(cfg.resolved_model()))


class BestSoFar:
    """The best value of the study metric over a trial's epochs, reported as `best_<metric>`.

    A multi-objective searcher judges a trial by its final result only; it should see the
    trial's best epoch (the one its best checkpoint holds), not its last.
    """

    def __init__(self, metric: str, mode: str, earlier: list[float]):
        self.key, self.metric, self.mode = f"best_{metric}", metric, mode
        self.value = best_of(earlier, mode)

    def include(self, earlier: list[float]) -> None:
        """Count values of epochs before a resume (as MLflow has them)."""
        self.value = best_of([*earlier, *([] if self.value is None else [self.value])], self.mode)

    def update(self, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.metric)
        if better(value, self.value, self.mode):
            self.value = float(value)
        # Always present (Tune checks that every result has the searcher's metrics); NaN until a
        # finite value arrives. The trainer's own best_valid_loss wins.
        metrics.setdefault(self.key, math.nan if self.value is None else self.value)


def record_node(run: TrialRun) -> str:
    """Tag the trial's MLflow run with the Ray node this attempt runs on; returns the node id."""
    node = ray.get_runtime_context().get_node_id()
    earlier = run.client.get_run(run.run_id).data.tags.get(NODES_TAG)
    nodes = f"{earlier} {node}" if earlier else node
    host = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    run.client.log_batch(run.run_id, tags=[RunTag(NODE_TAG, node), RunTag(NODES_TAG, nodes), RunTag(HOST_TAG, host)])
    return node


def _intact_epoch(folder: Path, origin: str) -> int:
    """The epoch of an intact checkpoint folder; CheckpointError (naming `origin`) otherwise."""
    if (folder / ckpt_format.BEST).is_file():
        ckpt_format.verify(folder / ckpt_format.BEST, f"{origin}/{ckpt_format.BEST}")
    return int(ckpt_format.load(folder, origin=origin)["epoch"])


def resume_point(checkpoint, workdir: Path, budget_s: float = DEFAULT_BUDGET_S) -> tuple[Path, str] | None:
    """(local folder, stored name) of the newest intact checkpoint to continue from, or None.

    Tune's checkpoint comes first; when it is corrupt, the newer of the trainer's work copy
    (`workdir/checkpoint`, on this node) and Tune's newest intact kept checkpoint. Downloads
    go to `workdir/restore` (the caller removes it once restored), never to a temp folder
    that outlives the trial.
    """
    if checkpoint is None:
        return None
    into = workdir / "restore"

    def fetch(c) -> tuple[Path, str, int]:
        shutil.rmtree(into, ignore_errors=True)
        name = stored_name(c)
        retry(c.to_directory, str(into), budget_s=budget_s, what=f"download of checkpoint {name}")
        return into, name, _intact_epoch(into, name)

    try:
        folder, name, _ = fetch(checkpoint)
        return folder, name
    except CheckpointError as e:
        log.error("%s; falling back to the newest intact checkpoint", e)
    found: list[tuple[int, Path, str]] = []
    local = workdir / "checkpoint"
    if (local / ckpt_format.LAST).is_file():
        try:
            found.append((_intact_epoch(local, str(local)), local, str(local)))
        except CheckpointError as e:
            log.error("%s", e)
    kept = retry(kept_checkpoints, checkpoint, budget_s=budget_s, what="listing the trial's checkpoints")
    for c in kept:
        try:
            folder, name, epoch = fetch(c)
        except CheckpointError as e:
            log.error("%s", e)
            continue
        if not found or epoch > found[0][0]:
            found = [(epoch, folder, name)]  # keep the download only if it is the newer one
        break
    if not found:
        raise CheckpointError(
            f"{stored_name(checkpoint)}: corrupt, and the trial has no intact checkpoint to fall back to"
        )
    epoch, folder, name = max(found, key=lambda f: f[0])
    log.warning("continuing from %s (epoch %d)", name, epoch)
    return folder, name


def run_name(trial_id: str, config: dict[str, Any]) -> str:
    """What the MLflow UI lists: the trial and its searched values (`trial 3f2a_00001 slices=4 lr=0.0003`), sorted by dotted key."""
    values = " ".join(
        f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
        for k, v in sorted(config.items())
    )
    return f"trial {trial_id} {values}".strip()


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Function trainable for `tune.Tuner` (wrap with `tune.with_parameters(train_trial, ctx=...)`)."""
    # The monitor's start/stop lines and Ray's "Checkpoint successfully created" (one per
    # epoch) are noise in a study with many trials.
    for chatty in ("mlflow.system_metrics", tune_internals.STORAGE_LOGGER):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    worker_http_settings()
    trial_id = tune.get_context().get_trial_id()
    cfg = build_experiment(ctx.base, config, ctx.cpus)
    if ctx.study_path:  # recorded once here: the driver reads it instead of building it again
        retry(
            write_experiment,
            ctx.study_path,
            trial_id,
            cfg.model_dump(mode="json"),
            budget_s=ctx.infra_retry_s,
            what=f"recording the configuration of trial {trial_id}",
        )
    run = TrialRun(ctx.tracking, trial_id, run_name(trial_id, config))
    log.info("trial %s runs on node %s", trial_id, record_node(run))
    _refuse_beyond_own_failures(run, ctx.max_failures)
    if run.finished:
        # Tune's saved state lagged behind this trial's end (the driver stopped in between):
        # report what the trial recorded instead of training it again.
        log.info("trial %s already %s; not training it again", trial_id, run.previous_status)
        tune.report(_tune_metrics(run.last_metrics(), run.run_id))
        return
    workdir = trial_workdir(ctx.study_name, trial_id)
    best = BestSoFar(ctx.metric, ctx.mode, [])

    def resume() -> tuple[Path, str] | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            shutil.rmtree(workdir, ignore_errors=True)  # a stale copy from an earlier attempt
        point = resume_point(checkpoint, workdir, ctx.infra_retry_s)
        if point is not None:
            best.include([m.value for m in run.client.get_metric_history(run.run_id, ctx.metric)])
        return point

    def publish(result: EpochResult, metrics: dict[str, Any]) -> None:
        # Safe to repeat: Tune counts results it received, not calls; a failed upload
        # only skips one checkpoint folder index.
        retry(
            tune.report,
            _tune_metrics(metrics, run.run_id),
            checkpoint=tune.Checkpoint.from_directory(str(result.checkpoint_dir)),
            budget_s=ctx.infra_retry_s,
            what=f"storing the checkpoint of epoch {result.epoch}",
        )

    cap_to_share(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0), cfg.train.device)
    try:
        fence = functools.partial(lease.assert_token, ctx.study_path, ctx.lease_token)
        train_tracked(cfg, run, workdir, resume=resume, enrich=best.update, publish=publish, fence=fence)
    except Exception as e:
        last = is_out_of_memory(e) or (not is_infra_error(e) and _count_own_failure(run) > ctx.max_failures)
        if last:  # no retry will continue from the local copy
            shutil.rmtree(workdir, ignore_errors=True)
        if not is_out_of_memory(e):
            raise
        # Recorded as does_not_fit (`_record_failure`); ending normally keeps Tune from retrying it.
        log.error("trial %s does not fit its GPU share: %s", trial_id, one_line(e, typed=True))
        return
    # Tune holds the reported checkpoints; the trainer's own copy is not needed any more.
    shutil.rmtree(workdir, ignore_errors=True)


def train_tracked(
    cfg: ExperimentConfig,
    run: TrialRun,
    workdir: Path,
    *,
    resume: Callable[[], tuple[Path, str] | None] | None = None,
    enrich: Callable[[dict[str, Any]], None] | None = None,
    publish: Callable[[EpochResult, dict[str, Any]], None] | None = None,
    fence: Callable[[], None] | None = None,
) -> TrainSummary:
    """Train one configuration in its MLflow run: the one path of a search trial and a selection
    retraining. Params and configs once, the model's cost, metrics per epoch, the best weights
    whenever they improve, and the final status (completed / stopped_early; does_not_fit out of GPU memory; failed on another error).

    resume: returns the (folder, stored name) to continue from, or None (called once the run's
    system metrics are on, so a slow download counts); enrich: adds metrics to an epoch's before
    they are logged; publish: gets each epoch's result and metrics (with the cost) once logged;
    fence: raises (a KeyboardInterrupt: nothing is recorded) when the driver lost the study, before
    an epoch is logged or published.
    """
    gpus = assigned_gpu_ids() or []  # NVML sees every GPU of the node: log only these
    run.start_system_metrics(gpus)
    try:
        cfg, device = place(cfg)  # the GPU Ray assigned (CPU if none), loader defaults for it
        run.tag_device(gpus if device.type == "cuda" else [])
        run.log_config(cfg.model_dump(mode="json"), cfg.resolved_model().model_dump(mode="json"))
        cost = model_cost_metrics(cfg)
        run.log_epoch(cost, 0)
        point = resume() if resume is not None else None

        def report(result: EpochResult) -> None:
            if fence is not None:
                fence()
            metrics = result.metrics()
            if enrich is not None:
                enrich(metrics)
            run.log_epoch(metrics, result.epoch)
            if result.is_best:
                run.log_best(result.checkpoint_dir / ckpt_format.BEST, result.epoch)
            if publish is not None:
                publish(result, metrics | cost)

        trainer = Trainer(cfg, workdir, callbacks=[report], device=device)
        if point is not None:
            trainer.restore(*point)
            shutil.rmtree(workdir / "restore", ignore_errors=True)  # restored: a download is not needed
        summary = trainer.fit()
    except BaseException as e:
        # Recorded as failed here; the caller (Tune, the selection) records the error and goes
        # on. (ASHA's pruning does not pass through here: Ray ends the actor instead.)
        if isinstance(e, Exception):
            _record_failure(run, e)
        else:
            run.stop_system_metrics()
        raise
    run.finish("stopped_early" if summary.stopped_early else "completed")
    return summary


def _count_own_failure(run: TrialRun) -> int:
    """One more failure of the trial's own code (a lost worker never gets here): the count so far.
    Where it cannot be recorded, the trial is not retried (its count is unknown)."""
    try:
        count = int(run.client.get_run(run.run_id).data.tags.get(OWN_FAILURES_TAG, 0)) + 1
        run.client.set_tag(run.run_id, OWN_FAILURES_TAG, str(count))
    except Exception as e:
        log.warning("could not count trial %s's failure: %s", run.trial_id, one_line(e, typed=True))
        return 1 << 30
    return count


def _refuse_beyond_own_failures(run: TrialRun, max_failures: int) -> None:
    """Tune's retries cover lost workers too (max_failures + worker_retries): an attempt that Tune
    started after the trial's own errors used up max_failures ends at once, recording nothing."""
    tags = run.client.get_run(run.run_id).data.tags
    count = int(tags.get(OWN_FAILURES_TAG, 0))
    if count > max_failures:
        run.finish("failed", error=tags.get(ERROR_TAG))  # reopened for this attempt: failed again, same error
        raise TrialFailed(
            f"trial {run.trial_id} failed {count} times (search.max_failures: {max_failures}); "
            f"last: {tags.get(ERROR_TAG, 'unknown error')}"
        )


def _record_failure(run: TrialRun, e: Exception) -> None:
    """Tag the run failed with its error (an outage says so: `--restart-errored` continues it)."""
    error = "".join(traceback.format_exception_only(type(e), e)).strip()
    if is_infra_error(e):
        error = f"infrastructure: {error}"
    try:
        run.finish("does_not_fit" if is_out_of_memory(e) else "failed", error=error)
    except Exception as tag_error:  # the tracking server may be what failed
        log.warning("could not record trial %s as failed: %s", run.trial_id, one_line(tag_error, typed=True))
        run.stop_system_metrics()
