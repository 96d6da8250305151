"""Slice selection: bootstrap intervals, winner and significance on hand-made scores."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf
import yaml

from samsnet_search.cli import main
from samsnet_search.config import TARGETS
from samsnet_search.delivery.registry import WEIGHTS_SHA_TAG
from samsnet_search.delivery.winner import register_winner
from samsnet_search.engine import device as device_module
from samsnet_search.search import (
    checkpoints,
    identity,
    placement,
    select,
)
from samsnet_search.search.runner import run_study
from samsnet_search.search.select import (
    PHASE_TAG,
    Job,
    SelectionError,
    SelectionTable,
    bootstrap_row,
    bootstrap_table,
    contenders,
    overlaps,
    plan_jobs,
    run_selection,
    selection_uri,
)
from samsnet_search.search.study import load_study
from samsnet_search.search.trial import build_experiment
from samsnet_search.services import tracking


def pairs(avg: float, spread: float, tracks: int = 4, seeds: int = 3, seed: int = 0) -> list[dict]:
    """(track x seed) pairs whose per-target SDR scatter by `spread` around `avg`."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(tracks):
        for s in range(seeds):
            noise = rng.uniform(-spread, spread, size=len(TARGETS))
            out.append({"track": f"track{t}", "seed": s, "scores": {k: avg + n for k, n in zip(TARGETS, noise)}})
    return out


def test_interval_contains_median_and_shrinks_with_less_spread():
    rng = np.random.default_rng(0)
    wide = np.array([[p["scores"][t] for t in TARGETS] for p in pairs(5.0, 2.0)])
    narrow = np.array([[p["scores"][t] for t in TARGETS] for p in pairs(5.0, 0.2)])
    point, low, high = bootstrap_row(wide, 500, 0.95, rng)
    assert point.shape == low.shape == high.shape == (len(TARGETS) + 1,)
    assert np.all(low <= point) and np.all(point <= high)
    assert point[-1] == pytest.approx(np.median(wide, axis=0).mean())  # avg = mean of target medians
    _, nlow, nhigh = bootstrap_row(narrow, 500, 0.95, rng)
    assert (nhigh - nlow)[-1] < (high - low)[-1] / 3


def test_clear_winner_is_significant():
    table = bootstrap_table(
        {1: pairs(3.0, 0.3), 4: pairs(6.0, 0.3, seed=1), 8: pairs(4.0, 0.3, seed=2)},
        resamples=1000,
        seed=0,
        data="synthetic",
    )
    assert table.winner == 4
    assert table.row(4).significant is None
    assert table.row(1).significant is True and table.row(8).significant is True
    assert table.tied == []
    assert "chosen slices: 4" in table.verdict() and "overlaps no other" in table.verdict()
    assert not overlaps(table.row(4).interval["avg"], table.row(8).interval["avg"])


def test_overlapping_intervals_are_not_significant():
    table = bootstrap_table(
        {2: pairs(5.0, 3.0), 12: pairs(5.3, 3.0, seed=1), 24: pairs(-5.0, 0.5, seed=2)}, resamples=1000, seed=0
    )
    best = max(table.rows, key=lambda r: r.median["avg"])
    assert table.winner == best.slices
    other = 2 if table.winner == 12 else 12
    assert table.row(other).significant is False and table.tied == [other]
    assert table.row(24).significant is True
    assert f"not significantly different from slices {other}" in table.verdict()
    md = table.markdown()
    assert "validation" in md and "not significantly different" in md and "significantly worse" in md
    assert table.csv().splitlines()[0].startswith("slices,vocals,drums,bass,other,avg,avg_low,avg_high")


def test_same_scores_same_table_and_roundtrip():
    scores = {1: pairs(4.0, 1.0), 2: pairs(4.5, 1.0, seed=3)}
    a = bootstrap_table(scores, resamples=300, seed=7)
    b = bootstrap_table(scores, resamples=300, seed=7)
    assert a.to_dict() == b.to_dict()
    again = SelectionTable.from_dict(a.to_dict())
    assert again.to_dict() == a.to_dict() and again.winner == a.winner


def test_ties_go_to_fewer_slices_and_nan_never_wins():
    same = pairs(5.0, 0.0)
    assert bootstrap_table({8: same, 2: same}, resamples=50).winner == 2
    silent = [{**p, "scores": {**p["scores"], "vocals": float("nan")}} for p in pairs(9.0, 0.1)]
    assert bootstrap_table({1: silent, 2: pairs(1.0, 0.1)}, resamples=50).winner == 2


def test_empty_scores_are_an_error():
    with pytest.raises(SelectionError, match="nothing to choose"):
        bootstrap_table({})
    with pytest.raises(SelectionError, match="slices=4"):
        bootstrap_table({4: []})


def trial(tid, slices, loss, status="completed", epochs=4, seed=42, ckpt="ckpt"):
    return SimpleNamespace(
        trial_id=tid,
        config={"model.slices": slices},
        status=status,
        experiment={"model": {"slices": slices}, "train": {"epochs": epochs, "seed": seed}},
        best={"valid_loss": loss} if loss is not None else None,
        best_checkpoint=ckpt,
        mlflow_run_id=f"run-{tid}",
    )


def test_contenders_and_jobs():
    trials = [
        trial("a", 1, 0.5, "pruned", epochs=4),
        trial("b", 1, 0.4),
        trial("c", 2, 0.3, "pruned"),
        trial("d", 2, 0.1, "failed"),
        trial("e", 4, None),
    ]
    best = contenders(trials, "valid_loss", "min")
    assert {s: t.trial_id for s, t in best.items()} == {1: "b", 2: "c"}
    jobs = plan_jobs(trials, "valid_loss", "min", seeds=3, epochs=4)
    assert [j.key for j in jobs] == [f"slices_{s}_seed_{k}" for s in (1, 2) for k in range(3)]
    assert [j.seed for j in jobs[:3]] == [42, 43, 44]
    # b completed its full budget: it is seed 0; c was pruned: all three seeds retrain
    assert [j.reuse_checkpoint for j in jobs] == ["ckpt", None, None, None, None, None]
    assert all(j.experiment["train"]["epochs"] == 4 for j in jobs)
    # a longer selection budget than the search's: nothing is reused
    assert all(j.reuse_checkpoint is None for j in plan_jobs(trials, "valid_loss", "min", 3, 8))


# --- end to end: a tiny finished study, then the selection -------------------------------


@pytest.fixture(scope="module")
def ray_local(local_ray):
    with local_ray({}, num_gpus=1):  # one logical GPU: trials and selection tasks ask for half of it
        yield


def tiny_selection_study(tmp_path: Path, data_root: Path) -> Path:
    """2 slice values (grid, both trained to the end), 2 epochs, 3 seeds: seconds per job."""
    study = {
        "name": "sel",
        "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}, "heads": 1, "channels": 2, "depth": 1},
        "data": {"root": str(data_root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
        "train": {"lr": 3e-3, "batch_size": 2, "epochs": 2, "patience": 2, "valid_sdr_every": 0, "device": "auto"},
        "search": {"searcher": "grid", "scheduler": "fifo", "num_samples": 1, "max_concurrent_trials": 2},
        "selection": {"seeds": 3, "epochs": 2, "bootstrap": 500, "test_backend": "fast", "listen_seconds": 1.0},
        "resources": {"cpu": 1, "gpu": 0.5},
        "storage": str(tmp_path / "runs"),
        "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics": False},
    }
    path = tmp_path / "sel.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def garble_test_split(root: Path) -> None:
    """Replace every test stem with noise (same length and format): valid files, different content."""
    rng = np.random.default_rng(123)
    for folder in sorted((root / "test").iterdir()):
        stems = [0.1 * rng.standard_normal(sf.info(folder / f"{s}.wav").frames * 2).reshape(-1, 2) for s in TARGETS]
        for name, audio in zip(TARGETS, stems):
            sf.write(folder / f"{name}.wav", audio.astype(np.float32), 44100, subtype="FLOAT")
        sf.write(folder / "mixture.wav", sum(stems).astype(np.float32), 44100, subtype="FLOAT")


@pytest.mark.slow
def driver_must_not_pick_a_device(*args, **kwargs):
    raise AssertionError("the driver chose a device")


def test_selection_end_to_end(tmp_path, synth_root, ray_local, capsys, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data, ignore=shutil.ignore_patterns(".samsnet-cache"))
    study = load_study(tiny_selection_study(tmp_path, data), base_dir=tmp_path)
    result = run_study(study)
    assert sorted(t.status for t in result.trials) == ["completed", "completed"]
    # each worker recorded its trial's configuration once; the driver did not build it again
    for t, r in zip(result.trials, result.result_grid):
        assert t.experiment == checkpoints.read_experiment(result.manifest.path, t.trial_id)
        assert t.experiment == build_experiment(study.base, t.config, 1).model_dump(mode="json")
        # the one locator finds the checkpoint Tune itself calls best
        assert t.best_checkpoint.path == r.get_best_checkpoint("valid_loss", "min").path

    said: list[str] = []
    with monkeypatch.context() as m:  # the driver never chooses a device: its tasks use what Ray assigned
        for module in (device_module, placement):
            m.setattr(module, "pick_device", driver_must_not_pick_a_device)
        sel = run_selection(result, progress=said.append, register=register_winner)
    table = sel.table
    # the test scoring was a Ray task given the trials' share of the (logical) GPU; with no CUDA here
    # its device is the CPU (on a GPU node: cuda)
    assert sel.test["ran_on"] == {"device": "cpu", "resources": {"CPU": 1.0, "GPU": 0.5}}
    assert any(m.startswith("selection: 6 jobs to run") for m in said), said  # k of n, with a time estimate
    assert any(m.startswith("selection [1/6, ") and "left]" in m for m in said) and any("[6/6, " in m for m in said)
    assert any(m.startswith("test [2/2, ") and "avg SDR" in m for m in said), said  # the test set, track by track
    assert [r.slices for r in table.rows] == [1, 2] and table.subset == "validation"
    assert all(r.pairs == 6 and r.tracks == 2 and r.seeds == 3 for r in table.rows)  # 2 valid tracks x 3 seeds
    assert table.winner == max(table.rows, key=lambda r: r.median["avg"]).slices
    for r in table.rows:
        low, high = r.interval["avg"]
        assert low <= r.median["avg"] <= high
    # seed 0 of each slice value is its completed search trial (scored only); seeds 1 and 2 were retrained
    assert sorted(sel.trained) == [f"slices_{s}_seed_{k}" for s in (1, 2) for k in range(3)]
    assert [j["reused"] for j in sel.jobs] == [True, False, False, True, False, False]
    assert sel.test["subset"] == "test" and sel.test["backend"] == "fast" and len(sel.test["tracks"]) == 2
    # the test set is scored twice, labelled: the paper's plain masks and after the Wiener filter (selection.wiener: 1)
    assert sel.test["post_filter"] == "plain masks (paper)"
    assert sel.test["wiener"]["post_filter"] == "Wiener filter (1 EM iteration)"
    assert sel.test["wiener"]["tracks"].keys() == sel.test["tracks"].keys()
    assert sel.test["wiener"]["summary"] != sel.test["summary"]

    # MLflow: selection child runs, the parent's tags, metrics and artifacts, the registry
    target, m = result.target, result.manifest
    c = tracking.client(target)
    runs = tracking.find_child_runs(target, m.experiment_id, m.parent_run_id)
    selection_runs = [r for r in runs if r.data.tags.get(PHASE_TAG) == "selection"]
    assert len(selection_runs) == 4 and all(r.info.status == "FINISHED" for r in selection_runs)
    assert all("selection.valid_sdr_avg" in r.data.metrics for r in selection_runs)
    parent = c.get_run(m.parent_run_id)
    assert parent.data.tags["samsnet.chosen_slices"] == str(table.winner)
    assert parent.data.tags[tracking.BEST_RUN_TAG] == sel.winner_job["run_id"]
    assert parent.data.metrics[f"selection.slices_{table.winner}.avg"] == pytest.approx(
        table.row(table.winner).median["avg"]
    )
    assert parent.data.metrics["test.avg"] == pytest.approx(sel.test["summary"]["avg"])
    assert parent.data.metrics["test_wiener.avg"] == pytest.approx(sel.test["wiener"]["summary"]["avg"])
    artifacts = {a.path for a in c.list_artifacts(m.parent_run_id, "selection")}
    assert artifacts == {"selection/table.json", "selection/table.md", "selection/table.csv"}
    listen = c.list_artifacts(m.parent_run_id, "listen")
    wavs = {Path(a.path).name for a in c.list_artifacts(m.parent_run_id, listen[0].path)}
    assert wavs == {"mixture.wav", *(f"{t}{kind}.wav" for t in TARGETS for kind in ("", ".reference", ".wiener"))}
    version = c.get_model_version_by_alias("samsnet-sel", "champion")
    # registered from the run that trained the winner's weights, not from the study's parent run
    assert str(version.version) == sel.registered["version"] == "1" and version.run_id == sel.winner_job["run_id"]
    manifest = identity.read_manifest(m.path)
    assert (
        manifest.summary["chosen_slices"] == table.winner and manifest.summary["best_run"] == sel.winner_job["run_id"]
    )

    # report: the same table, the counts, the choice, where to look
    assert main(["report", "sel", "--storage", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "2 trials (2 completed)" in out and "VALIDATION" in out and f"chosen slices: {table.winner}" in out
    assert "mlflow ui --backend-store-uri" in out and "models:/samsnet-sel@champion" in out
    assert "plain masks (paper): avg" in out and "TEST, same winner, Wiener filter (1 EM iteration): avg" in out

    # `export NAME` takes the winner's weights from the study's storage, where the selection found
    # them, not from MLflow's copy: the registered version is found again, not a new one made
    winner_artifacts = Path(urlsplit(c.get_run(sel.winner_job["run_id"]).info.artifact_uri).path)
    copies = list(winner_artifacts.rglob("best.pt*"))
    assert copies
    for copy in copies:
        copy.unlink()
    assert main(["export", "sel", "--storage", str(tmp_path / "runs"), "--out", str(tmp_path / "exported")]) == 0
    assert "samsnet-sel version 1 already holds these weights" in capsys.readouterr().out

    # a finished selection is loaded, not run again
    assert run_selection(result, register=register_winner).table.to_dict() == table.to_dict()

    # interrupted: one job's record and the final result are missing -> only that job runs again
    store = selection_uri(m.path)
    Path(store, "jobs", "slices_2_seed_2.json").unlink()
    Path(store, "selection.json").unlink()
    ends = {r.info.run_id: r.info.end_time for r in selection_runs}
    again = run_selection(result, register=register_winner)
    assert again.trained == ["slices_2_seed_2"]
    rerun = c.get_run(again.jobs[5]["run_id"])
    for run_id, end in ends.items():
        if run_id != rerun.info.run_id:
            assert c.get_run(run_id).info.end_time == end  # finished retrainings untouched
    # the same weights keep their version (retraining is deterministic); new weights get a new one
    versions = c.search_model_versions("name = 'samsnet-sel'")
    assert len({v.tags[WEIGHTS_SHA_TAG] for v in versions}) == len(versions)

    # test data never influences the choice: garbage test stems, everything retrained, same table
    shutil.rmtree(store)
    garble_test_split(data)
    third = run_selection(result, register=register_winner)
    assert len(third.trained) == 6 and third.table.winner == table.winner
    for a, b in zip(third.table.rows, table.rows):
        assert a.median == pytest.approx(b.median, abs=1e-4) and a.interval["avg"] == pytest.approx(
            b.interval["avg"], abs=1e-4
        )
    assert third.test["summary"]["avg"] != pytest.approx(sel.test["summary"]["avg"], abs=1e-3)
    # the retrainings' local work folders are removed once their best weights are stored
    import tempfile

    assert not list((Path(tempfile.gettempdir()) / "samsnet-selection").glob(f"sel_{m.parent_run_id[:12]}_*"))


def test_selection_says_each_jobs_epochs_before_the_first_job_ends(tmp_path, monkeypatch):
    """The job loop reads the running jobs' progress files while it waits (no Ray here: a fake
    task writes them as a retraining would, epoch by epoch)."""
    store = str(tmp_path / "selection")
    jobs = [Job(f"slices_{n}_seed_0", n, 0, 42, "t1", {}, {}) for n in (1, 4)]
    reports = iter(range(1, 5))

    class FakeTask:
        def remote(self, job, *args):
            return job.key

    def wait(refs, num_returns, timeout):
        epoch = next(reports, None)
        if epoch is None:  # every epoch reported: the first job ends
            return refs[:1], refs[1:]
        for key in refs:
            select._report_progress(
                select._job_uri(store, key, select.PROGRESS_FILE), 4, {"epoch": epoch, "valid_loss": 1 / epoch}
            )
        return [], refs

    record = {"summary": {"avg": 1.5}, "reused": False}
    monkeypatch.setattr(select, "PROGRESS_S", 0.0)
    monkeypatch.setattr(select, "trial_context", lambda study, manifest: SimpleNamespace(tracking=None, lease_token=""))
    monkeypatch.setattr(select, "_as_task", lambda fn, study: FakeTask())
    monkeypatch.setattr(select.ray, "wait", wait)
    monkeypatch.setattr(select.ray, "get", lambda ref: record)
    study = SimpleNamespace(
        search=SimpleNamespace(max_concurrent_trials=2),
        spec=SimpleNamespace(selection=SimpleNamespace(valid_backend="fast")),
    )
    said: list[str] = []
    select._run_jobs(
        jobs, SimpleNamespace(study=study, manifest=SimpleNamespace(path=str(tmp_path))), store, said.append
    )
    first_end = next(i for i, line in enumerate(said) if line.startswith("selection [1/2"))
    epochs = [line.split(": ", 1)[1] for line in said[:first_end] if "epoch" in line]
    assert epochs == [f"slices_{n}_seed_0 epoch {e}/4 valid_loss {1 / e:.4g}" for e in (1, 2, 3, 4) for n in (1, 4)]
