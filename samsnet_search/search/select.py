"""Choosing the slice count after the search.

1. Contenders: for each slice value the search tried, its best trial by the study metric.
2. Retraining: each contender is trained to the full budget (`selection.epochs`) with
   `selection.seeds` seeds (`train.seed + k`, k = 0..n-1), as plain Ray tasks with the
   trial resources and the training path of a search trial (`trial.train_tracked`). A trial
   that already ran its full budget with seed k = 0 counts as seed 0 (its best checkpoint,
   as `checkpoints.best_checkpoint` finds it, is reused). Every retraining is an MLflow
   child run of the study's parent run, tagged `samsnet.phase=selection`.
3. Scoring: every model is scored on the FULL validation tracks (per track and target).
   Each finished job writes `<study>/selection/jobs/<key>.json` (and its best weights
   beside it), so an interrupted selection never redoes finished jobs.
4. Bootstrap over (track x seed) pairs gives each slice value a confidence interval of
   its median SDR; the winner has the best median; an overlapping interval means "not
   significantly different" from the winner. The table is labelled *validation*.
5. Only then the winner (its best seed) is scored on the TEST set and published by the
   caller's `register` (the CLI's one exports it and registers it as `samsnet-<study>`, alias
   `champion`: delivery's job, so the search never imports delivery); a few seconds of its
   separated test stems are logged as wav files. Test data cannot influence steps 1-4: they
   never load it.

The statistics (`bootstrap_table`) are pure functions of the scores, testable alone.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import ray
import soundfile as sf
from mlflow.entities import Metric

from ..config import SAMPLE_RATE, TARGETS, ExperimentConfig, validate_model
from ..data import load_splits, load_subset
from ..engine.checkpoint import BEST, LAST, load_model
from ..engine.evaluate import backend_label, evaluate_tracks, model_estimator
from ..engine.separate import separate
from ..engine.wiener import PostFilter
from ..errors import DamagedFile, SamsNetError, one_line
from ..files import exclusive
from ..services import stop, storage, tracking
from ..services.tracking import PHASE_TAG
from . import cost, identity, lease
from .checkpoints import local_copy
from .objectives import better
from .placement import job_device
from .racing import pair_statistic
from .runner import ray_session, trial_context
from .trial import train_tracked

log = logging.getLogger(__name__)

CHOSEN_TAG = "samsnet.chosen_slices"
SELECTION_FOLDER = "selection"
RESULT_FILE = "selection.json"  # the finished selection, in <study>/selection/
PROGRESS_FILE = "progress.json"  # a running job's last epoch, in <study>/selection/jobs/<key>.progress.json
COLUMNS = (*TARGETS, "avg")
# Statuses of a search trial that trained to its own budget (not cut short by ASHA or a stop).
FULL_BUDGET = ("completed", "stopped_early")
WAIT_S = 1.0  # the job loop looks at stop requests at least this often
PROGRESS_S = 5.0  # and at the running jobs' progress files at most this often (one small read per job)

Progress = Callable[[str], None]
# Publishes the winner: (its checkpoint folder, model card info, study name, tracking URI, the run
# that trained it) -> {"name", "version", "alias"} of its registered version. Given by the caller
# (the CLI passes delivery.winner.register_winner): the search does not import delivery.
Register = Callable[[Path, dict[str, Any], str, str, "str | None"], dict[str, Any]]


class SelectionError(SamsNetError):
    """The slice-count selection cannot run (no scored trials, no finished retraining, ...)."""


# --- statistics ----------------------------------------------------------------------


@dataclass
class SliceRow:
    """One slice value: median SDR over (track x seed) pairs per target and avg, with intervals."""

    slices: int
    median: dict[str, float]  # COLUMNS -> dB
    interval: dict[str, tuple[float, float]]  # COLUMNS -> (low, high) bootstrap interval
    pairs: int
    tracks: int
    seeds: int
    significant: bool | None = None  # vs the winner: False = "not significantly different"; None: the winner
    info: dict[str, Any] = field(default_factory=dict)  # trial id, config, runs, best seed


@dataclass
class SelectionTable:
    """The Table-2-style validation table and its verdict."""

    rows: list[SliceRow]
    winner: int
    confidence: float
    resamples: int
    backend: str
    data: str
    subset: str = "validation"

    def row(self, slices: int) -> SliceRow:
        return next(r for r in self.rows if r.slices == slices)

    @property
    def tied(self) -> list[int]:
        """Slice values whose interval overlaps the winner's (not significantly different)."""
        return [r.slices for r in self.rows if r.significant is False]

    def verdict(self) -> str:
        w = self.row(self.winner)
        low, high = w.interval["avg"]
        pct = round(100 * self.confidence)
        text = f"chosen slices: {self.winner} (validation avg SDR {w.median['avg']:.2f} dB, {pct}% interval [{low:.2f}, {high:.2f}])"
        if self.tied:
            text += f"; not significantly different from slices {', '.join(map(str, self.tied))} (intervals overlap)"
        elif len(self.rows) > 1:
            text += "; its interval overlaps no other slice value's"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SelectionTable":
        rows = [SliceRow(**{**r, "interval": {k: tuple(v) for k, v in r["interval"].items()}}) for r in d["rows"]]
        return cls(rows=rows, **{k: d[k] for k in ("winner", "confidence", "resamples", "backend", "data", "subset")})

    def label(self) -> str:
        return (
            f"SDR (dB) on the {self.subset} set of {self.data}, median over tracks and seeds, {self.backend} "
            f"BSSEval v4; interval: {round(100 * self.confidence)}% bootstrap over (track x seed), "
            f"{self.resamples} resamples"
        )

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per row (CSV / markdown / the export's model card)."""
        out = []
        for r in self.rows:
            low, high = r.interval["avg"]
            rec = {"slices": r.slices, **{c: round(r.median[c], 3) for c in COLUMNS}}
            rec.update(
                {"avg_low": round(low, 3), "avg_high": round(high, 3), "pairs": r.pairs, "vs_winner": _versus(r)}
            )
            out.append(rec)
        return out

    def markdown(self) -> str:
        recs = self.records()
        head = ["slices", *COLUMNS, "interval (avg)", "vs winner"]
        lines = [f"**{self.label()}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for rec in recs:
            cells = [
                str(rec["slices"]),
                *(f"{rec[c]:.2f}" for c in COLUMNS),
                f"[{rec['avg_low']:.2f}, {rec['avg_high']:.2f}]",
                rec["vs_winner"],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines + ["", self.verdict()]) + "\n"

    def csv(self) -> str:
        recs = self.records()
        keys = list(recs[0])
        return "\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in recs]) + "\n"


def _versus(row: SliceRow) -> str:
    if row.significant is None:
        return "winner"
    return "significantly worse" if row.significant else "not significantly different"


def bootstrap_row(values: np.ndarray, resamples: int, confidence: float, rng: np.random.Generator):
    """values (P, S): one row's pairs. Returns (point (S+1,), low (S+1,), high (S+1,))."""
    P = values.shape[0]
    idx = rng.integers(0, P, size=(resamples, P))  # resample pairs with replacement
    stats = pair_statistic(values[idx])  # (R, S + 1)
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(stats, [alpha, 1 - alpha], axis=0)
    return pair_statistic(values), low, high


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def bootstrap_table(
    scores: dict[int, list[dict[str, Any]]],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    backend: str = "fast",
    data: str = "",
    info: dict[int, dict[str, Any]] | None = None,
) -> SelectionTable:
    """The validation table from per-pair scores.

    scores: slices -> list of pairs `{"track": str, "seed": int, "scores": {target: dB}}`.
    The winner has the best median avg (ties: fewer slices); a row whose avg interval
    overlaps the winner's is "not significantly different".
    """
    if not scores:
        raise SelectionError("no slice value has any scored (track x seed) pair: nothing to choose from")
    rng = np.random.default_rng(seed)
    rows = []
    for slices in sorted(scores):
        pairs = scores[slices]
        if not pairs:
            raise SelectionError(f"slices={slices}: no scored (track x seed) pair")
        values = np.array([[p["scores"][t] for t in TARGETS] for p in pairs], dtype=np.float64)  # (P, S)
        point, low, high = bootstrap_row(values, resamples, confidence, rng)
        rows.append(
            SliceRow(
                slices=slices,
                median={c: float(point[i]) for i, c in enumerate(COLUMNS)},
                interval={c: (float(low[i]), float(high[i])) for i, c in enumerate(COLUMNS)},
                pairs=len(pairs),
                tracks=len({p["track"] for p in pairs}),
                seeds=len({p["seed"] for p in pairs}),
                info=dict((info or {}).get(slices, {})),
            )
        )
    # NaN medians (a target silent everywhere) never win.
    winner = max(rows, key=lambda r: (_finite(r.median["avg"]), -r.slices))
    for r in rows:
        r.significant = None if r is winner else not overlaps(r.interval["avg"], winner.interval["avg"])
    return SelectionTable(rows, winner.slices, confidence, resamples, backend, data)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


# --- retraining jobs -----------------------------------------------------------------


@dataclass
class Job:
    """One (slice value, seed) retraining: what a Ray task needs (picklable)."""

    key: str  # slices_<n>_seed_<k>
    slices: int
    seed_index: int
    seed: int
    trial_id: str  # the search trial whose configuration this is
    config: dict[str, Any]  # the trial's sampled values
    experiment: dict[str, Any]  # ExperimentConfig (JSON form) with the selection budget and seed
    reuse_checkpoint: Any = None  # ray.tune.Checkpoint of a full-budget trial (seed 0), else None
    reuse_run_id: str | None = None


def contenders(trials: list, metric: str, mode: str) -> dict[int, Any]:
    """slices -> the best TrialRecord of that slice value by the study metric (failed trials excluded)."""
    best: dict[int, Any] = {}
    for t in trials:
        value = (t.best or {}).get(metric)
        slices = t.experiment.get("model", {}).get("slices")
        if value is None or slices is None or t.status == "failed" or not math.isfinite(value):
            continue
        if slices not in best or better(value, best[slices].best[metric], mode):
            best[slices] = t
    return best


def plan_jobs(trials: list, metric: str, mode: str, seeds: int, epochs: int) -> list[Job]:
    """Every (contender, seed) job; seed 0 reuses a trial that already trained its full budget."""
    jobs = []
    for slices, trial in sorted(contenders(trials, metric, mode).items()):
        base_seed = int(trial.experiment["train"]["seed"])
        full = (
            trial.status in FULL_BUDGET
            and int(trial.experiment["train"]["epochs"]) == epochs
            and trial.best_checkpoint is not None
        )
        for k in range(seeds):
            experiment = json.loads(json.dumps(trial.experiment))
            experiment["train"].update(epochs=epochs, seed=base_seed + k)
            reuse = full and k == 0
            jobs.append(
                Job(
                    key=f"slices_{slices}_seed_{k}",
                    slices=slices,
                    seed_index=k,
                    seed=base_seed + k,
                    trial_id=trial.trial_id,
                    config=dict(trial.config),
                    experiment=experiment,
                    reuse_checkpoint=trial.best_checkpoint if reuse else None,
                    reuse_run_id=trial.mlflow_run_id if reuse else None,
                )
            )
    return jobs


def selection_uri(study_path: str) -> str:
    return storage.join(study_path, SELECTION_FOLDER)


def _job_uri(store: str, key: str, name: str) -> str:
    return storage.join(storage.join(store, "jobs"), f"{key}.{name}")


def retrain_and_score(
    job: Job, spec: tracking.ChildRunSpec, store: str, backend: str, fence: tuple[str, str] = ("", "")
) -> dict[str, Any]:
    """Runs in a Ray worker: train (or reuse) one job, score it on the full validation tracks.

    fence: (study folder, the driver's lease token): the job stops, recording nothing, once its
    driver lost the study. Returns the job's record (what `<store>/jobs/<key>.json` holds).
    """
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    start, start_cpu = time.perf_counter(), time.process_time()
    cfg = validate_model(ExperimentConfig, job.experiment, f"selection job {job.key}")
    if job.reuse_checkpoint is not None:
        with local_copy(job.reuse_checkpoint) as ckpt_dir:
            report, state = _score_valid(job, cfg, ckpt_dir, backend, store)
        run_id, epochs = job.reuse_run_id, None
    else:
        progress = functools.partial(_report_progress, _job_uri(store, job.key, PROGRESS_FILE), cfg.train.epochs)
        ckpt_dir, run_id, epochs = _retrain(job, cfg, spec, functools.partial(lease.assert_token, *fence), progress)
        progress({"stage": "scoring"})
        report, state = _score_valid(job, cfg, ckpt_dir, backend, store)
        shutil.rmtree(job_workdir(spec, job), ignore_errors=True)  # the best weights are stored
    if run_id:
        summary = report.summary
        tracking.client(spec.target).log_batch(
            run_id, metrics=_metrics({f"selection.valid_sdr_{k}": v for k, v in summary.items()})
        )
    return {
        "key": job.key,
        "slices": job.slices,
        "seed_index": job.seed_index,
        "seed": job.seed,
        "trial_id": job.trial_id,
        "config": job.config,
        "run_id": run_id,
        "reused": job.reuse_checkpoint is not None,
        "epochs": epochs if epochs is not None else state.get("epoch"),
        "best_epoch": state.get("epoch"),
        "tracks": report.tracks,
        "summary": report.summary,
        "data": report.data,
        "backend": backend,
        "checkpoint": _job_uri(store, job.key, BEST),
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - start_cpu,
    }


def _score_valid(job: Job, cfg: ExperimentConfig, ckpt_dir: Path, backend: str, store: str):
    """(EvalReport on the full validation tracks, checkpoint state); the best weights are stored
    beside the job's record."""
    model, state = load_model(ckpt_dir)
    splits = load_splits(cfg.data)  # only .valid is used: test data never reaches the choice
    report = evaluate_tracks(
        model_estimator(model, job_device(cfg.train.device)),  # a Ray task: the GPU it was assigned
        splits.valid,
        name=f"slices={job.slices} seed={job.seed}",
        backend=backend,
        data_kind=splits.kind,
        subset="valid",
    )
    storage.put_file(_job_uri(store, job.key, BEST), ckpt_dir / BEST)
    return report, state


def _metrics(values: dict[str, float]) -> list:
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None and math.isfinite(float(v))]


def job_workdir(spec: tracking.ChildRunSpec, job: Job) -> Path:
    """A local work folder: an interrupted job continues from its last epoch on this node.

    Named by the parent run too, so a new study with the same name never resumes a stale one.
    """
    return Path(tempfile.gettempdir()) / "samsnet-selection" / f"{spec.study_name}_{spec.parent_run_id[:12]}_{job.key}"


def _report_progress(uri: str, epochs: int, what: dict[str, Any]) -> None:
    """The job's progress for the driver's screen (`_JobProgress`): best effort, never the job's failure."""
    try:
        storage.write_json(uri, {"epochs": epochs, **what})
    except Exception as e:
        log.warning("could not record the progress of a selection job in %s: %s", storage.display_uri(uri), e)


def _retrain(
    job: Job, cfg: ExperimentConfig, spec: tracking.ChildRunSpec, fence, progress=None
) -> tuple[Path, str, int]:
    """Train one seed to the full budget as a child run tagged samsnet.phase=selection: the same
    path as a search trial (`trial.train_tracked`), continuing from this node's last epoch.

    The work folder is locked for the job: a job of a driver that lost the study may still be
    finishing its epoch on this node; the new driver's job waits for it instead of sharing it."""
    workdir = job_workdir(spec, job)
    with exclusive(workdir.with_name(workdir.name + ".lock")):
        fence()
        run = tracking.TrialRun(spec, f"selection-{job.key}", f"selection slices={job.slices} seed={job.seed}")
        run.client.set_tag(run.run_id, PHASE_TAG, "selection")
        run.client.set_tag(run.run_id, "samsnet.search_trial", job.trial_id)
        folder = workdir / "checkpoint"
        resume = (lambda: (folder, str(folder))) if (folder / LAST).is_file() else None
        publish = None
        if progress is not None:

            def publish(result, metrics: dict[str, Any]) -> None:
                progress({"stage": "training", "epoch": result.epoch, "valid_loss": metrics["valid_loss"]})

        summary = train_tracked(cfg, run, workdir, resume=resume, fence=fence, publish=publish)
    return summary.checkpoint_dir, run.run_id, summary.epochs


# --- the selection -------------------------------------------------------------------


@dataclass
class SelectionResult:
    table: SelectionTable
    jobs: list[dict[str, Any]]  # every job's record
    trained: list[
        str
    ]  # job keys run by this call (retrained, or scored for a reused trial); others were found finished
    winner_job: dict[str, Any]
    test: dict[str, Any]  # EvalReport.to_dict() of the winner on the test set
    registered: dict[str, Any]  # {"name", "version", "alias"}
    seconds: dict[str, float]  # wall time per phase
    where: str  # MLflow UI line
    cost: dict[str, Any] = field(default_factory=dict)  # search.cost.selection_cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table.to_dict(),
            "jobs": self.jobs,
            "winner_job": self.winner_job,
            "test": self.test,
            "registered": self.registered,
            "seconds": self.seconds,
            "where": self.where,
            "cost": self.cost,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], trained: list[str] | None = None) -> "SelectionResult":
        return cls(
            SelectionTable.from_dict(d["table"]),
            d["jobs"],
            trained or [],
            d["winner_job"],
            d["test"],
            d["registered"],
            d["seconds"],
            d["where"],
            d.get("cost") or {},
        )


def run_selection(
    result,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    progress: Progress | None = None,
    quiet: bool = False,
    register: Register,
) -> SelectionResult:
    """The whole selection for a finished search (`runner.StudyResult`); resumable, idempotent.

    register: publishes the winner (see `Register`). The study's parent run is open while it
    runs and ends with it (FINISHED, or FAILED / KILLED)."""
    with stop.watch(), parent_run_open(result.target, result.manifest.parent_run_id):
        return _run_selection(result, address, num_cpus, num_gpus, progress, quiet, register)


@contextmanager
def parent_run_open(target, run_id: str) -> Iterator[None]:
    c = tracking.client(target)
    c.update_run(run_id, status="RUNNING")
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "" if stop.fenced() else "KILLED"  # fenced: another driver owns the study (and this run)
        raise
    finally:
        _end_run(c, run_id, status)


def _end_run(c, run_id: str, status: str) -> None:
    if not status:
        return
    try:
        c.set_terminated(run_id, status)
    except Exception as e:  # the selection's results are stored; the run's end is cosmetic
        log.warning("could not end the study's parent run: %s", e)


def _run_selection(result, address, num_cpus, num_gpus, progress, quiet, register: Register) -> SelectionResult:
    study, manifest = result.study, result.manifest
    store = selection_uri(manifest.path)
    say = _checked(progress or (lambda msg: log.info("%s", msg)))
    done = storage.read_json(storage.join(store, RESULT_FILE))
    if done is not None:
        say(f"selection of study {study.name} is already finished; loading it")
        return SelectionResult.from_dict(done)
    sel = study.spec.selection
    epochs = sel.epochs or study.max_epochs
    jobs = plan_jobs(result.trials, study.metric, study.mode, sel.seeds, epochs)
    if not jobs:
        raise SelectionError(f"study {study.name}: no trial has a {study.metric}; nothing to retrain")
    start = time.monotonic()
    stop.phase("selection.jobs", say)
    try:
        with ray_session(address, num_cpus, num_gpus, quiet):  # jobs and the test scoring are Ray tasks
            records, trained = _run_jobs(jobs, result, store, say)
            seconds = {"retrain_and_validate": time.monotonic() - start}
            table = _table(records, study, result.study.spec.selection)
            say(table.verdict())
            start, start_cpu = time.monotonic(), time.process_time()
            final = _finish(table, records, trained, result, seconds, say, register)
    except KeyboardInterrupt:
        if stop.fenced():
            raise
        _close_unfinished_runs(result)  # Ray is down: the stopped jobs' runs end KILLED, not RUNNING
        raise
    final.seconds["test_and_register"] = time.monotonic() - start
    final.cost = cost.selection_cost(records, final.seconds, {"cpu_s": round(time.process_time() - start_cpu, 2)})
    _log_cost(result.target, manifest.parent_run_id, final.cost)
    stop.check_fences()
    storage.write_json(storage.join(store, RESULT_FILE), final.to_dict())
    _update_manifest(manifest, final)
    return final


def _checked(say: Progress) -> Progress:
    """Progress that is also a stop point: long phases report often (per job, per test track)."""

    def checked(msg: str) -> None:
        stop.check()
        say(msg)

    return checked


def _close_unfinished_runs(result) -> None:
    """Selection runs left open by jobs that a stop ended: tagged stopped, ended KILLED."""
    manifest = result.manifest
    try:
        for run in tracking.find_child_runs(result.target, manifest.experiment_id, manifest.parent_run_id):
            if PHASE_TAG in run.data.tags and run.info.status == "RUNNING":
                tracking.set_status(result.target, run.info.run_id, "stopped", error="the selection was interrupted")
    except Exception as e:  # the stop goes on; a resume runs these jobs again
        log.warning("could not close the interrupted selection runs: %s", e)


def _run_jobs(jobs: list[Job], result, store: str, say: Progress) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the unfinished jobs as Ray tasks (at most max_concurrent_trials at once); records in job order."""
    study, manifest = result.study, result.manifest
    ctx = trial_context(study, manifest)
    spec, fence = ctx.tracking, (manifest.path, ctx.lease_token)
    records = {j.key: storage.read_json(_job_uri(store, j.key, "json")) for j in jobs}
    todo = [j for j in jobs if records[j.key] is None]
    if len(todo) < len(jobs):
        say(f"selection: {len(jobs) - len(todo)} of {len(jobs)} jobs already finished (not run again)")
    task = _as_task(retrain_and_score, study)
    limit = study.search.max_concurrent_trials or len(todo) or 1
    backend = study.spec.selection.valid_backend
    pending: dict[Any, Job] = {}
    failures = []
    queue = list(todo)
    say(f"selection: {len(todo)} jobs to run (retrain to the full budget + validation scoring), up to {limit} at once")
    start, finished = time.monotonic(), 0
    watch = _JobProgress(store, say, start)
    while queue or pending:
        while queue and len(pending) < limit:
            job = queue.pop(0)
            watch.forget(job)
            pending[task.remote(job, spec, store, backend, fence)] = job
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
        stop.check()  # a stop signal whose exception a blocking call swallowed still counts
        if not ready:
            watch.poll(pending.values())
            continue
        job = pending.pop(ready[0])
        finished += 1
        try:
            record = ray.get(ready[0])
        except Exception as e:  # one failed retraining: recorded, the others go on
            failures.append(f"{job.key}: {one_line(e)}")
            log.warning("selection job %s failed: %s", job.key, failures[-1])
            continue
        storage.write_json(_job_uri(store, job.key, "json"), record)
        records[job.key] = record
        avg = record["summary"]["avg"]
        reused = "(search trial reused) " if record["reused"] else ""
        say(
            f"selection [{finished}/{len(todo)}, {_eta(start, finished, len(todo))}]: {job.key} {reused}valid avg SDR {avg:.2f} dB"
        )
        stop.phase("selection.job_done", say)
    if failures:
        say("selection: failed jobs (run again to retry them): " + "; ".join(failures))
    return [records[j.key] for j in jobs if records[j.key] is not None], [
        j.key for j in todo if records[j.key] is not None
    ]


class _JobProgress:
    """The running jobs' epochs on the driver's screen before they finish: each job writes
    `<store>/jobs/<key>.progress.json` per epoch (`_report_progress`); the job loop reads those of
    the running jobs at most every PROGRESS_S and says each new epoch once."""

    def __init__(self, store: str, say: Progress, start: float):
        self.store, self.say, self.start = store, say, start
        self.seen: dict[str, tuple] = {}
        self.last = -math.inf

    def forget(self, job: Job) -> None:
        """A job about to start: a progress file of an earlier, interrupted driver is not its."""
        self.seen.pop(job.key, None)
        try:
            storage.delete_file(_job_uri(self.store, job.key, PROGRESS_FILE))
        except Exception as e:  # an outage: the job's first epoch overwrites it anyway
            log.warning("could not remove the old progress of selection job %s: %s", job.key, e)

    def poll(self, jobs) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_S:
            return
        self.last = now
        for job in jobs:
            try:
                p = storage.read_json(_job_uri(self.store, job.key, PROGRESS_FILE))
            except Exception:  # being written, or storage trouble: the next look, or the job's end, says it
                continue
            mark = (p.get("stage"), p.get("epoch")) if isinstance(p, dict) else None
            if mark is None or mark == self.seen.get(job.key):
                continue
            self.seen[job.key] = mark
            if p.get("stage") == "scoring":
                what = "trained; scoring the validation tracks"
            else:
                what = f"epoch {p.get('epoch')}/{p.get('epochs')} valid_loss {float(p.get('valid_loss', math.nan)):.4g}"
            self.say(f"selection [{now - self.start:.0f} s]: {job.key} {what}")


def _as_task(fn, study):
    """`fn` as a Ray task with a trial's resources: it runs where a trial would, on the devices Ray
    assigns it (the driver, often a CPU-only head node, never needs a GPU)."""
    res = study.spec.resources
    return ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, resources=res.custom or None, max_retries=0)(fn)


def _get(ref):
    """ray.get, looking at stop requests meanwhile (a stop must not wait for a long task)."""
    while not ray.wait([ref], timeout=WAIT_S)[0]:
        stop.check()
    stop.check()
    return ray.get(ref)


def _eta(start: float, done: int, total: int) -> str:
    """Elapsed time and a naive remaining-time estimate (jobs are of similar size)."""
    elapsed = time.monotonic() - start
    left = elapsed / done * (total - done) if done else float("nan")
    return f"{elapsed:.0f} s, about {left:.0f} s left" if done < total else f"{elapsed:.0f} s"


def _table(records: list[dict[str, Any]], study, sel) -> SelectionTable:
    scores: dict[int, list[dict[str, Any]]] = {}
    info: dict[int, dict[str, Any]] = {}
    for rec in records:
        for track, sdr in rec["tracks"].items():
            scores.setdefault(rec["slices"], []).append({"track": track, "seed": rec["seed"], "scores": sdr})
        best = info.setdefault(rec["slices"], {"trial_id": rec["trial_id"], "config": rec["config"], "runs": {}})
        best["runs"][str(rec["seed"])] = rec["run_id"]
    backend = records[0]["backend"] if records else sel.valid_backend
    data = records[0]["data"] if records else ""
    # The bootstrap is seeded by the study seed: the same scores give the same intervals.
    return bootstrap_table(
        scores,
        resamples=sel.bootstrap,
        confidence=sel.confidence,
        seed=study.search.seed,
        backend=backend,
        data=data,
        info=info,
    )


def _finish(
    table: SelectionTable, records, trained, result, seconds, say: Progress, register: Register
) -> SelectionResult:
    """Log the table, score the winner on the test set, publish it (`register`)."""
    study, manifest, target = result.study, result.manifest, result.target
    winner_jobs = [r for r in records if r["slices"] == table.winner]
    best = max(winner_jobs, key=lambda r: _finite(r["summary"]["avg"]))
    _log_table(target, manifest.parent_run_id, table, best)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = storage.get_file(best["checkpoint"], Path(tmp) / "checkpoint" / BEST).parent
        sel = study.spec.selection
        stop.phase("selection.test", say)
        say(
            f"scoring the winner (slices={table.winner}, seed {best['seed']}) on the test set: "
            f"{backend_label(sel.test_backend)} (a Ray task with the trials' resources) ..."
        )
        spec = trial_context(study, manifest).tracking
        scoring = _as_task(score_winner, study).remote(
            best["checkpoint"], spec, sel.test_backend, sel.listen_seconds, sel.wiener, sel.wiener_start
        )
        test = _get(scoring)
        for line in test.pop("progress"):
            say(line)
        say(f"test scoring ran on {test['ran_on']['device']} (Ray assigned {test['ran_on']['resources']})")
        say(
            f"test avg SDR {test['summary']['avg']:.2f} dB ({test['data']}; {backend_label(test['backend'])})"
            + (
                f"; {test['wiener']['post_filter']}: {test['wiener']['summary']['avg']:.2f} dB"
                if "wiener" in test
                else ""
            )
        )
        info = {
            "title": f"Sams-Net chosen by study {study.name} (slices={table.winner})",
            "source": f"study {study.name}, selection winner slices={table.winner}",
            "data_kind": test["data"],
            "test_sdr": test["summary"],
            "test_wiener": (
                {"post_filter": test["wiener"]["post_filter"], "summary": test["wiener"]["summary"]}
                if "wiener" in test
                else None
            ),
            "selection_table": table.records(),
        }
        registered = register(ckpt, info, study.name, manifest.tracking_uri, best.get("run_id"))
    stop.check()  # registration is idempotent (same weights, same version): a resume finds this one
    say(f"registered {registered['name']} version {registered['version']} (alias {registered['alias']})")
    return SelectionResult(
        table, records, trained, best, test, registered, dict(seconds), target.where(manifest.experiment_id)
    )


def _log_cost(target, parent_run_id: str, spent: dict[str, Any]) -> None:
    flat = {f"cost.selection.{k}": v for k, v in spent.items() if k != "test"}
    flat |= {f"cost.test.{k}": v for k, v in spent["test"].items()}
    tracking.client(target).log_batch(parent_run_id, metrics=_metrics(flat))


def _log_table(target, parent_run_id: str, table: SelectionTable, best: dict[str, Any]) -> None:
    c = tracking.client(target)
    metrics = {}
    for r in table.rows:
        for col in COLUMNS:
            metrics[f"selection.slices_{r.slices}.{col}"] = r.median[col]
        metrics[f"selection.slices_{r.slices}.avg_low"], metrics[f"selection.slices_{r.slices}.avg_high"] = r.interval[
            "avg"
        ]
    c.log_batch(parent_run_id, metrics=_metrics(metrics))
    c.set_tag(parent_run_id, CHOSEN_TAG, str(table.winner))
    if best.get("run_id"):
        c.set_tag(parent_run_id, tracking.BEST_RUN_TAG, best["run_id"])
    tracking.log_json(target, parent_run_id, table.to_dict(), "selection/table.json")
    c.log_text(parent_run_id, table.markdown(), "selection/table.md")
    c.log_text(parent_run_id, table.csv(), "selection/table.csv")


def score_winner(
    checkpoint_uri: str,
    spec: tracking.ChildRunSpec,
    backend: str,
    listen_seconds: float,
    wiener: int,
    wiener_start: str = "softmask",
) -> dict[str, Any]:
    """Runs in a Ray task: `_score_test` of the stored winner on the device Ray assigned the task.
    Its progress lines are logged here (Ray shows them on the driver's terminal) and returned."""
    said: list[str] = []

    def say(msg: str) -> None:
        log.info("%s", msg)
        said.append(msg)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = storage.get_file(checkpoint_uri, Path(tmp) / "checkpoint" / BEST).parent
        test = _score_test(ckpt, spec.target, spec.parent_run_id, backend, listen_seconds, wiener, say, wiener_start)
    assigned = ray.get_runtime_context().get_assigned_resources()
    return {**test, "ran_on": {**test["ran_on"], "resources": assigned}, "progress": said}


def _score_test(
    ckpt: Path,
    target,
    parent_run_id: str,
    backend: str,
    listen_seconds: float,
    wiener: int = 0,
    say: Progress | None = None,
    wiener_start: str = "softmask",
) -> dict[str, Any]:
    """The winner on the test split (the first and only time test data is read).

    Scored as the paper separates (plain masks) and, with `wiener` > 0, again after the Wiener
    post-filter (started from `wiener_start`, `wiener.STARTS`); the filtered report rides along as
    `test["wiener"]`, labelled by its post-filter.
    """
    model, state = load_model(ckpt)
    cfg = validate_model(ExperimentConfig, state["experiment"], f"{ckpt}: experiment")
    tests, kind = load_subset(cfg.data, "test")  # the test split alone
    if not tests:
        raise SelectionError(f"{cfg.data.root}: no test tracks; the winner cannot be scored on the test set")
    device = job_device(cfg.train.device)  # what Ray assigned this task: CPU when no GPU
    c = tracking.client(target)
    posts = [PostFilter()] + ([PostFilter(wiener=wiener, start=wiener_start)] if wiener > 0 else [])
    scored = []
    for post, prefix, artifact in zip(posts, ("test", "test_wiener"), ("test/scores.json", "test/scores_wiener.json")):
        report = evaluate_tracks(
            model_estimator(model, device, post=post),
            tests,
            name=f"winner, {post.label}",
            backend=backend,
            data_kind=kind,
            subset="test",
            progress=say,
        )
        c.log_batch(parent_run_id, metrics=_metrics({f"{prefix}.{k}": v for k, v in report.summary.items()}))
        scored.append({**report.to_dict(), "post_filter": post.label})
        tracking.log_json(target, parent_run_id, scored[-1], artifact)
    if listen_seconds > 0:
        _log_listening(model, tests[0], listen_seconds, device, target, parent_run_id, posts[1:])
    return {**scored[0], **({"wiener": scored[1]} if len(scored) > 1 else {}), "ran_on": {"device": str(device)}}


def _log_listening(model, track, seconds: float, device, target, run_id: str, posts=()) -> None:
    """`listen/<track>/`: the first seconds of the mixture, each reference stem (`<target>.reference.wav`),
    the winner's estimate (`<target>.wav`) and, per post-filter, its filtered estimate (`<target>.wiener.wav`)."""
    n = int(seconds * SAMPLE_RATE)
    audio = track.audio()  # (1 + S, C, N): mixture, then the references in TARGETS order
    mixture = np.ascontiguousarray(audio[0][:, :n])  # (C, N)
    clips = {
        "mixture": mixture,
        **{f"{t}.reference": np.asarray(audio[1 + i][:, :n]) for i, t in enumerate(TARGETS)},
        **separate(model, mixture, device),
    }
    for post in posts:
        clips.update({f"{t}.wiener": est for t, est in separate(model, mixture, device, post=post).items()})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / track.name.replace("/", "_")
        folder.mkdir()
        for name, clip in clips.items():
            sf.write(folder / f"{name}.wav", np.clip(clip, -1.0, 1.0).T, SAMPLE_RATE, subtype="PCM_16")
        tracking.client(target).log_artifacts(run_id, str(folder), f"listen/{folder.name}")


def _update_manifest(manifest, final: SelectionResult) -> None:
    """study.json: the choice, for `ls`, `report` and `export` (which exports `best_run`)."""
    fresh = identity.read_manifest(manifest.path) or manifest
    fresh.state = "finished"  # search and selection (a resumed selection starts from "interrupted")
    fresh.summary = {
        **fresh.summary,
        "selection": final.table.records(),
        "chosen_slices": final.table.winner,
        "test": final.test["summary"],
        "registered": final.registered,
    }
    if final.winner_job.get("run_id"):
        fresh.summary["best_run"] = final.winner_job["run_id"]
    identity.write_manifest(fresh)


def load_selection(study_path: str) -> SelectionResult | None:
    """A finished selection from the study folder, or None."""
    uri = storage.join(selection_uri(study_path), RESULT_FILE)
    done = storage.read_json(uri)
    try:
        return None if done is None else SelectionResult.from_dict(done)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # wrong fields or types
        raise DamagedFile(f"{storage.display_uri(uri)}: damaged selection result ({type(e).__name__}: {e})") from None
