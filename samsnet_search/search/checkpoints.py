"""Where a trial's files are in the study's storage, and which checkpoint holds its best weights.

The study's storage is the source of truth for weights: Ray Tune keeps each trial's checkpoints
in `<study>/trial_<id>/checkpoint_<n>/` (the trainer's `last.pt` and `best.pt`), the selection
keeps each retraining's best weights in `<study>/selection/jobs/`. The `model/best.pt` artifact
of a trial's MLflow run is the published copy (what the UI shows and a bare run id exports).

A trial's best checkpoint is the one of its best reported epoch by the study metric among the
checkpoints Tune still keeps: read from Tune's per-trial results (`result.json`, JSON lines that
name each epoch's checkpoint folder), so the driver, `export` and `report` find the same folder
with or without Ray running. The worker records the trial's full configuration once
(`experiment.json` in the trial folder), so nothing has to rebuild it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ray import tune

from ..errors import ConfigError, DamagedFile
from ..services import storage
from . import identity, tune_internals
from .objectives import better
from .study import load_stored

log = logging.getLogger(__name__)

TRIAL_PREFIX = "trial_"  # Tune's trial folders: trial_<id> (runner.trial_dirname)
CHECKPOINT_PREFIX = tune_internals.CHECKPOINT_PREFIX  # Tune's checkpoint folders in a trial folder
RESULTS_FILE = tune_internals.RESULTS_FILE  # Tune: one JSON line per reported result
EXPERIMENT_FILE = "experiment.json"  # the worker: the trial's ExperimentConfig (JSON form)
CHECKPOINT_KEY = tune_internals.CHECKPOINT_KEY  # Tune's result key naming the epoch's checkpoint folder


def trial_uri(study_path: str, trial_id: str) -> str:
    """`<study>/trial_<id>`: the trial's folder in the storage."""
    return storage.join(study_path, f"{TRIAL_PREFIX}{trial_id}")


def write_experiment(study_path: str, trial_id: str, experiment: dict[str, Any]) -> None:
    """Record the trial's configuration in its folder (done once, by the worker that builds it)."""
    storage.write_json(storage.join(trial_uri(study_path, trial_id), EXPERIMENT_FILE), experiment)


def read_experiment(study_path: str, trial_id: str) -> dict[str, Any] | None:
    """The trial's configuration as its worker recorded it, or None: the trial never started, or
    the file is damaged (garbage, cut short, not an object; one warning names it). Callers fall back
    for both alike (the runner rebuilds the configuration from the trial's config)."""
    uri = storage.join(trial_uri(study_path, trial_id), EXPERIMENT_FILE)
    try:
        experiment = storage.read_json(uri)
    except DamagedFile as e:
        log.warning("%s; read as missing", e)
        return None
    if experiment is not None and not isinstance(experiment, dict):
        log.warning("%s: damaged: a JSON %s, not an object; read as missing", uri, type(experiment).__name__)
        return None
    return experiment


def read_results(trial_path: str) -> list[dict[str, Any]]:
    """The trial's reported results in order, from Tune's `result.json` (one JSON object per line).

    A line that is not JSON was cut short by a driver killed while Tune appended it, and is
    skipped; a file that is not text, or a line that is JSON but not an object, is damage
    (DamagedFile naming the file and line)."""
    uri = storage.join(trial_path, RESULTS_FILE)
    rows = []
    for number, line in enumerate((storage.read_text(uri) or "").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            raise DamagedFile(
                f"{storage.display_uri(uri)}: damaged: line {number} is a JSON {type(row).__name__}, "
                "expected one object per reported result"
            )
        rows.append(row)
    return rows


def best_checkpoint(trial_path: str, metric: str, mode: str) -> tune.Checkpoint | None:
    """The checkpoint folder of the trial's best epoch by `metric` (mode min/max) among the ones
    kept in the storage, or None when no kept checkpoint has a finite value of it."""
    fs, path = storage.filesystem(trial_path)
    kept = {p.rsplit("/", 1)[-1]: p for p in storage.subfolders(fs, path, CHECKPOINT_PREFIX)}
    if not kept:
        return None
    best: tuple[float, str] | None = None
    for row in read_results(trial_path):
        value, folder = row.get(metric), row.get(CHECKPOINT_KEY)
        if folder in kept and better(value, None if best is None else best[0], mode):  # the first of equals
            best = (float(value), folder)
    return None if best is None else tune.Checkpoint(path=kept[best[1]], filesystem=fs)


def study_best_checkpoint(manifest: identity.Manifest, trial_id: str) -> tune.Checkpoint | None:
    """`best_checkpoint` of a trial of a stored study, by the metric its study file names (read
    without checking the data: the study may be exported where its data is not)."""
    study = load_stored(manifest, check_data=False)
    if study is None:
        raise ConfigError(
            f"{storage.display_uri(manifest.path)}: the study file copy ({identity.STUDY_COPY}) is missing"
        )
    return best_checkpoint(trial_uri(manifest.path, trial_id), study.metric, study.mode)


def stored_name(checkpoint: tune.Checkpoint) -> str:
    """Where a Tune checkpoint is stored, as a person finds it (`s3://bucket/...` or a folder)."""
    return storage.uri_of(checkpoint.filesystem, checkpoint.path)


@contextmanager
def local_copy(checkpoint: tune.Checkpoint) -> Iterator[Path]:
    """A Tune checkpoint as a local folder for the `with` block, removed afterwards
    (`Checkpoint.to_directory()` alone leaves a temp folder per call behind)."""
    folder = Path(tempfile.mkdtemp(prefix="samsnet-checkpoint-"))
    try:
        checkpoint.to_directory(str(folder))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def kept_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other checkpoints Tune keeps beside `checkpoint`, newest first."""
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    folders = storage.subfolders(fs, path.rsplit("/", 1)[0], CHECKPOINT_PREFIX)
    return [tune.Checkpoint(path=d, filesystem=fs) for d in reversed(folders) if d != path]
