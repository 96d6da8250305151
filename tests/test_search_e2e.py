"""Tiny real studies on local Ray with the embedded MLflow store.

One Ray per module (2 CPUs, small object store). The resume test runs the driver in a
subprocess (with its own Ray), kills it once a trial has finished and another is half
way, and resumes in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from samsnet_search.cli import main
from samsnet_search.engine.checkpoint import load_model
from samsnet_search.search import identity
from samsnet_search.search.runner import resume_study, run_study
from samsnet_search.search.study import load_study
from samsnet_search.search.trial import trial_workdir
from samsnet_search.services import tracking

pytestmark = pytest.mark.slow

FAKE_SECRETS = {"AWS_SECRET_ACCESS_KEY": "fake-aws-secret-0123456789", "SAMSNET_TEST_API_TOKEN": "fake-token-abcdef"}


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(local_ray, tmp_path_factory):
    """Credentials in the environment (they must never reach MLflow), the user's config folder
    (the drivers' state-signing key) in a temporary HOME, then one local Ray."""
    home = tmp_path_factory.mktemp("home")
    with local_ray({**FAKE_SECRETS, "XDG_CONFIG_HOME": str(home / ".config")}):
        yield


def tiny_study(tmp_path: Path, data_root: Path, name: str, **overrides) -> Path:
    """A study small enough for seconds per trial: 256-point STFT, 2-3 maps, 0.5 s segments."""
    study = {
        "name": name,
        "model": {
            "n_fft": 256,
            "hop_length": 128,
            "slices": {"choice": [1, 2, 4]},
            "heads": 1,
            "channels": {"choice": [2, 3]},
            "depth": 1,
        },
        "data": {"root": str(data_root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
        "train": {
            "lr": {"loguniform": [1e-3, 1e-2]},
            "batch_size": 2,
            "epochs": 3,
            "patience": 3,
            "valid_sdr_every": 0,
            "device": "cpu",
        },
        "search": {"num_samples": 5, "seed": 0, "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 2},
        "resources": {"cpu": 1},
        "storage": str(tmp_path / "runs"),
        "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics_interval_s": 0.5},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            study[section][leaf] = value
        else:
            study[section] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def child_runs(result_or_manifest, target):
    m = getattr(result_or_manifest, "manifest", result_or_manifest)
    return tracking.find_child_runs(target, m.experiment_id, m.parent_run_id)


def assert_no_secrets(target, run_ids):
    """Params, tags and artifact files of every run: no credential from the environment."""
    c = tracking.client(target)
    secrets = list(FAKE_SECRETS.values())
    for run_id in run_ids:
        run = c.get_run(run_id)
        for k, v in {**run.data.params, **run.data.tags}.items():
            assert not any(s in v for s in secrets), f"secret in {k} of run {run_id}"
        root = Path(run.info.artifact_uri.removeprefix("file://"))
        for f in root.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert not any(s.encode() in data for s in secrets), f"secret in artifact {f}"


def test_tiny_study_end_to_end(tmp_path, synth_root, capsys):
    study = load_study(tiny_study(tmp_path, synth_root, "e2e"), base_dir=tmp_path)
    result = run_study(study)
    assert not result.interrupted
    assert len(result.trials) == 5
    statuses = {t.trial_id: t.status for t in result.trials}
    assert set(statuses.values()) <= {"completed", "pruned", "stopped_early"}, statuses
    target = result.target

    # MLflow: one parent run, one child per trial, nested by explicit parent id
    c = tracking.client(target)
    parent = c.get_run(result.manifest.parent_run_id)
    assert parent.data.tags[tracking.ROLE_TAG] == "study" and parent.info.status == "FINISHED"
    assert parent.data.tags["samsnet.data_fingerprint"] and parent.data.tags["samsnet.state"] == "finished"
    assert parent.data.params["space.model.slices"] == "choice [1, 2, 4]"
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} == {
        "study.yaml",
        "search_summary.json",
        "importance.json",
    }
    children = child_runs(result, target)
    assert sorted(r.data.tags[tracking.TRIAL_TAG] for r in children) == sorted(statuses)
    param_names = {frozenset(r.data.params) for r in children}
    assert len(param_names) == 1  # the same names in every trial: MLflow's compare view lines up
    assert {"model.slices", "model.channels", "train.lr", "data.segment_seconds"} <= set(next(iter(param_names)))
    for run in children:
        trial = next(t for t in result.trials if t.trial_id == run.data.tags[tracking.TRIAL_TAG])
        assert run.data.tags[tracking.STATUS_TAG] == trial.status
        assert run.info.status == tracking.RUN_STATUS[trial.status]
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "valid_loss")]
        assert steps == list(range(1, trial.epochs + 1))  # one value per epoch, step = epoch
        assert "train_loss" in run.data.metrics
        assert "model/best.pt" in {a.path for a in c.list_artifacts(run.info.run_id, "model")}
        assert run.data.params["model.slices"] == str(trial.config["model.slices"])
    assert parent.data.tags[tracking.BEST_RUN_TAG] == result.best.mlflow_run_id
    # system metrics (CPU, memory) are sampled while trials run (every 0.5 s here)
    assert any(any(k.startswith("system/cpu") for k in r.data.metrics) for r in children)

    # the seam for the selection step: records with configs, histories and checkpoints
    best = result.best
    assert best.best["valid_loss"] == min(t.best["valid_loss"] for t in result.trials)
    assert best.experiment["model"]["n_fft"] == 256 and best.experiment["train"]["threads"] == 1
    model, state = load_model(best.best_checkpoint.to_directory())
    assert state["model_config"]["slices"] == best.config["model.slices"]
    for t in result.trials:
        assert t.last_checkpoint is not None and len(t.history) == t.epochs
        assert not trial_workdir("e2e", t.trial_id).exists()  # the trainer's copy is cleaned up
        assert not (Path(t.path) / "work").exists()
    savings = result.epoch_savings()
    assert savings["epochs_full"] == 15 and savings["epochs_run"] == sum(t.epochs for t in result.trials)
    pruned = [t for t in result.trials if t.status == "pruned"]
    assert all(t.epochs < 3 for t in pruned)

    # identity: study.json maps the name, ls lists it
    manifest = identity.read_manifest(identity.study_uri(str(tmp_path / "runs"), "e2e"))
    assert manifest.state == "finished" and manifest.registered_model == "samsnet-e2e"
    assert manifest.experiment_name == "e2e" and manifest.summary["trials"] == 5
    assert main(["ls", "--storage", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "e2e" in out and "finished" in out
    assert_no_secrets(target, [parent.info.run_id] + [r.info.run_id for r in children])

    # run on the same file again: the study is finished, nothing re-runs
    again = run_study(study)
    assert sorted(t.trial_id for t in again.trials) == sorted(statuses)
    assert len(child_runs(again, target)) == 5

    # the same name with a different file is refused (before anything starts)
    changed = tiny_study(tmp_path, synth_root, "e2e", train__epochs=5, train__patience=5)
    assert main(["run", str(changed), "--no-live"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["resume", "nope", "--storage", str(tmp_path / "runs"), "--no-live"]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "known studies: e2e" in err


def test_failing_trial_is_isolated(tmp_path, synth_root):
    """lr=1e30 makes the loss NaN in epoch 2: that trial fails, the others finish."""
    path = tiny_study(
        tmp_path,
        synth_root,
        "fails",
        model__slices={"choice": [1, 2]},
        model__channels=2,
        train__lr={"choice": [1e-3, 1e30]},
        search={"searcher": "grid", "scheduler": "fifo", "num_samples": 1, "max_concurrent_trials": 2},
        train__epochs=2,
        train__patience=2,
    )
    result = run_study(load_study(path, base_dir=tmp_path))
    by_lr = {}
    for t in result.trials:
        by_lr.setdefault(t.config["train.lr"], []).append(t)
    assert [t.status for t in by_lr[1e30]] == ["failed", "failed"]
    assert [t.status for t in by_lr[1e-3]] == ["completed", "completed"]
    assert all("TrainingDiverged" in t.error or "nan" in t.error for t in by_lr[1e30])
    c = tracking.client(result.target)
    for t in by_lr[1e30]:
        run = c.get_run(t.mlflow_run_id)
        assert run.info.status == "FAILED" and run.data.tags[tracking.STATUS_TAG] == "failed"
        assert "became nan" in run.data.tags["samsnet.error"]
    assert result.manifest.state == "finished"
    assert result.best.config["train.lr"] == 1e-3


def test_grid_search_keeps_max_concurrent_trials(tmp_path, synth_root):
    """Tune ignores TuneConfig.max_concurrent_trials for a given BasicVariantGenerator (grid,
    random): one trial at a time although the local Ray has room for two."""
    path = tiny_study(
        tmp_path,
        synth_root,
        "one_at_a_time",
        model__slices={"choice": [1, 2]},
        model__channels=2,
        train__lr=1e-3,
        search={"searcher": "grid", "scheduler": "fifo", "num_samples": 1, "max_concurrent_trials": 1},
        train__epochs=2,
        train__patience=2,
    )
    result = run_study(load_study(path, base_dir=tmp_path))
    assert len(result.trials) == 2 and not result.interrupted
    runs = sorted(child_runs(result, result.target), key=lambda r: r.info.start_time)
    assert len(runs) == 2
    assert runs[0].info.end_time <= runs[1].info.start_time, [(r.info.start_time, r.info.end_time) for r in runs]


def _trial_progress(target, manifest) -> dict[str, tuple[str, int]]:
    """trial id -> (status tag, epochs logged) from MLflow, read while the driver runs."""
    c = tracking.client(target)
    out = {}
    for run in tracking.find_child_runs(target, manifest.experiment_id, manifest.parent_run_id):
        history = c.get_metric_history(run.info.run_id, "valid_loss")
        out[run.data.tags[tracking.TRIAL_TAG]] = (run.data.tags.get(tracking.STATUS_TAG), len(history))
    return out


def test_resume_after_killing_the_driver(tmp_path, synth_root):
    EPOCHS = 24  # tiny epochs take ~0.3 s: enough of them that a trial is still running after the wait below
    path = tiny_study(
        tmp_path,
        synth_root,
        "killed",
        search={"num_samples": 3, "seed": 1, "scheduler": "fifo", "max_concurrent_trials": 2},
        train__epochs=EPOCHS,
        train__patience=EPOCHS,
    )
    storage = str(tmp_path / "runs")
    cmd = [sys.executable, "-m", "samsnet_search.cli", "run", str(path), "--no-live", "--num-cpus", "2"]
    log = open(tmp_path / "driver.log", "w")
    # Tune saves its state every >= 10 s by default; 1 s keeps it close to what the trials did,
    # so that the trials this test watches are the ones a resume finds.
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    manifest, snapshot = None, {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
            manifest = manifest or identity.read_manifest(identity.study_uri(storage, "killed"))
            if manifest is None:
                continue
            snapshot = _trial_progress(target, manifest)
            done = [t for t, (s, _) in snapshot.items() if s == "completed"]
            halfway = [t for t, (s, n) in snapshot.items() if s == "running" and n >= 2]
            if done and halfway:
                # Tune's own state (what a resume restores) is saved every >= 1 s here: let it
                # record the halfway trial's checkpoint before the kill, which the trial's
                # remaining epochs leave time for.
                time.sleep(3)
                break
        assert driver.poll() is None, (
            "the driver ended before it could be killed:\n" + (tmp_path / "driver.log").read_text()
        )
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait(30)
    finished = {t for t, (s, _) in snapshot.items() if s == "completed"}
    halfway = {t: n for t, (s, n) in snapshot.items() if s == "running" and n >= 2}
    assert finished and halfway, snapshot
    assert identity.read_manifest(manifest.path).state == "running"  # killed: never closed

    c = tracking.client(target)
    before = {r.data.tags[tracking.TRIAL_TAG]: r for r in child_runs(manifest, target)}
    result = resume_study("killed", storage=storage)
    assert not result.interrupted and result.manifest.state == "finished"
    assert len(result.trials) == 3 and all(t.status == "completed" for t in result.trials)
    runs = child_runs(manifest, target)
    after = {r.data.tags[tracking.TRIAL_TAG]: r for r in runs}
    assert len(after) == len(runs)  # one run per trial id: a resumed trial reopens its run
    assert {t.trial_id for t in result.trials} <= set(after)
    for trial_id in set(after) - {t.trial_id for t in result.trials}:
        # a trial the killed driver started but had not yet saved in Tune's state: Tune
        # proposes a new one on resume, and the orphan run is closed as stopped
        assert after[trial_id].data.tags[tracking.STATUS_TAG] == "stopped"
        assert after[trial_id].data.tags["samsnet.error"].startswith("abandoned")
    for trial_id in finished:  # finished trials did not run again
        # The kill can land between the trial's final status tag and its end_run: then the
        # resume closes the run (end_time changes from None) without training it again.
        if before[trial_id].info.end_time is not None:
            assert after[trial_id].info.end_time == before[trial_id].info.end_time
        steps = [m.step for m in c.get_metric_history(after[trial_id].info.run_id, "train_loss")]
        assert steps == list(range(1, EPOCHS + 1))  # a second run of the trial would log its epochs again
    continued = [t for t in halfway if t in {r.trial_id for r in result.trials}]
    assert continued, (halfway, [t.trial_id for t in result.trials])
    for trial_id in continued:  # unfinished trials continued from their last checkpoint
        steps = [m.step for m in c.get_metric_history(after[trial_id].info.run_id, "train_loss")]
        assert steps.count(1) == 1 and sorted(set(steps)) == list(range(1, EPOCHS + 1)), steps


def test_multi_objective_study_finds_a_pareto_front(tmp_path, synth_root):
    """valid_sdr against parameter count: Optuna's multi-objective TPE, FIFO, a front on the parent run."""
    from ray.tune.search.optuna import OptunaSearch

    from samsnet_search.search import pareto
    from samsnet_search.search.objectives import dominates

    path = tiny_study(
        tmp_path,
        synth_root,
        "mo",
        model__channels={"choice": [2, 4]},
        data__valid_seconds=3.0,  # SDR needs active frames
        train__valid_sdr_every=1,
        train__epochs=2,
        train__patience=2,
        search={"objectives": ["valid_sdr", "params"], "num_samples": 4, "seed": 0, "max_concurrent_trials": 2},
    )
    study = load_study(path, base_dir=tmp_path)
    assert study.search.scheduler == "fifo" and study.metric == "valid_sdr"
    result = run_study(study)
    assert {t.status for t in result.trials} <= {"completed", "stopped_early"}  # FIFO: nothing pruned
    for t in result.trials:  # costs reported with every result, best_valid_sdr = the best epoch's
        assert t.metrics["params"] > 0 and t.metrics["gmacs_per_second"] > 0
        assert t.metrics["best_valid_sdr"] == pytest.approx(max(h["valid_sdr"] for h in t.history))

    front = result.pareto
    assert front["objectives"] == {"valid_sdr": "max", "params": "min"} and len(front["points"]) == 4
    values = {p["trial_id"]: (p["values"]["valid_sdr"], p["values"]["params"]) for p in front["points"]}
    on = [values[t] for t in front["front"]]
    off = [v for t, v in values.items() if t not in front["front"]]
    modes = ["max", "min"]
    assert on and not any(dominates(a, b, modes) for a in on for b in on)
    assert all(any(dominates(a, b, modes) for a in on) for b in off)
    assert all(p["latency_ms"] > 0 for p in pareto.front_points(front))

    # Optuna was told both objectives of every trial (its state is saved in the study folder)
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(tmp_path / "runs" / "mo"))
    told = [t for t in searcher._ot_study.trials if t.values is not None]
    assert len(searcher._ot_study.directions) == 2 and len(told) == 4
    assert sorted(tuple(t.values) for t in told) == sorted(
        (p["values"]["valid_sdr"], p["values"]["params"]) for p in front["points"]
    )

    c = tracking.client(result.target)
    parent = result.manifest.parent_run_id
    assert {pareto.ARTIFACT_JSON, pareto.ARTIFACT_MD} <= {a.path for a in c.list_artifacts(parent)}
    assert c.get_run(parent).data.metrics["pareto.size"] == len(front["front"])
    stored = identity.read_manifest(identity.study_uri(str(tmp_path / "runs"), "mo"))
    assert stored.summary["pareto"]["front"] == front["front"]


def test_cmaes_searcher_runs_a_study(tmp_path, synth_root):
    """searcher: cmaes (added through the searcher registry alone): Optuna's CMA-ES proposes every
    trial of a numeric space, told each trial's result."""
    from ray.tune.search.optuna import OptunaSearch

    path = tiny_study(
        tmp_path,
        synth_root,
        "cma",
        model__slices=2,
        model__channels={"int": [2, 3]},
        train__epochs=2,
        train__patience=2,
        search={"searcher": "cmaes", "scheduler": "fifo", "num_samples": 3, "seed": 0, "max_concurrent_trials": 2},
    )
    result = run_study(load_study(path, base_dir=tmp_path))
    assert not result.interrupted and len(result.trials) == 3
    assert {t.status for t in result.trials} <= {"completed", "stopped_early"}
    for t in result.trials:
        assert t.config["model.channels"] in (2, 3) and 1e-3 <= t.config["train.lr"] <= 1e-2
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(tmp_path / "runs" / "cma"))
    study = searcher._ot_study
    assert type(study.sampler).__name__ == "CmaEsSampler"
    told = sorted(t.value for t in study.trials if t.value is not None)
    assert told == sorted(t.metrics["valid_loss"] for t in result.trials)  # Optuna learnt every result


def assert_final_statuses(result, epochs: int) -> list[str]:
    """Every trial ended with a final status, its MLflow run agrees and holds one value per epoch."""
    statuses = [t.status for t in result.trials]
    assert set(statuses) <= {"completed", "pruned", "stopped_early"}, statuses
    c = tracking.client(result.target)
    for t in result.trials:
        run = c.get_run(t.mlflow_run_id)
        assert run.data.tags[tracking.STATUS_TAG] == t.status and run.info.status == tracking.RUN_STATUS[t.status]
        assert [m.step for m in c.get_metric_history(t.mlflow_run_id, "valid_loss")] == list(range(1, t.epochs + 1))
        assert (t.epochs < epochs) == (t.status == "pruned"), (t.trial_id, t.status, t.epochs)
    return statuses


def test_median_stopping_rule_runs_a_study(tmp_path, synth_root):
    path = tiny_study(
        tmp_path,
        synth_root,
        "median",
        model__channels=2,
        train__epochs=2,
        train__patience=2,
        search={"scheduler": "median", "num_samples": 4, "seed": 0, "grace_period": 1, "max_concurrent_trials": 2},
    )
    result = run_study(load_study(path, base_dir=tmp_path))
    assert not result.interrupted and len(result.trials) == 4
    assert_final_statuses(result, 2)


def test_hyperband_runs_a_study(tmp_path, synth_root):
    """max_t 2, reduction factor 2: every trial ends completed at max_t or pruned below it, and
    its run says so. Whether HyperBand's first bracket stops a trial here depends on when the two
    concurrent trials report (on an idle machine it stopped none, under load one); its pruning
    record itself is tested in test_search_schedulers."""
    path = tiny_study(
        tmp_path,
        synth_root,
        "hyperband",
        model__channels=2,
        train__epochs=2,
        train__patience=2,
        search={"scheduler": "hyperband", "num_samples": 4, "seed": 0, "reduction_factor": 2},
    )
    result = run_study(load_study(path, base_dir=tmp_path))
    assert not result.interrupted and len(result.trials) == 4
    assert assert_final_statuses(result, 2).count("completed") >= 2  # the max_t bracket runs to the end
