"""What the MLflow UI shows of a study: named trial runs, pruned trials not shown as failures,
the study's parent run open until the selection that follows the search has ended."""

from __future__ import annotations

import pytest

from samsnet_search import tracking
from samsnet_search.search import select
from samsnet_search.search.identity import Manifest
from samsnet_search.search.runner import _close
from samsnet_search.search.trial import run_name


def _parent(tmp_path):
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    experiment_id = tracking.ensure_experiment(target, "ui")
    return target, experiment_id, tracking.start_parent_run(target, experiment_id, "ui")


def test_trial_runs_are_named_by_trial_and_searched_values():
    name = run_name("3f2a_00001", {"model.slices": 4, "train.lr": 0.000312345, "model.heads": 2})
    assert name == "trial 3f2a_00001 heads=2 slices=4 lr=0.000312"  # model keys, then train keys
    assert run_name("3f2a_00002", {}) == "trial 3f2a_00002"


@pytest.mark.parametrize("status, run_status", [("pruned", "FINISHED"), ("stopped_early", "FINISHED"),
                                                ("completed", "FINISHED"), ("failed", "FAILED")])  # fmt: skip
def test_pruned_and_early_stopped_trials_finish(tmp_path, status, run_status):
    target, experiment_id, parent = _parent(tmp_path)
    run = tracking.client(target).create_run(experiment_id, tags={tracking.PARENT_TAG: parent}).info.run_id
    tracking.set_status(target, run, status)
    got = tracking.client(target).get_run(run)
    assert got.info.status == run_status and got.data.tags[tracking.STATUS_TAG] == status


def _manifest(target, experiment_id, parent, tmp_path) -> Manifest:
    return Manifest(name="ui", storage=str(tmp_path / "runs"), experiment_name="ui", experiment_id=experiment_id,
                    parent_run_id=parent, registered_model="samsnet-ui", tracking_uri=target.uri,
                    artifact_root=target.artifact_root, base_dir=str(tmp_path), source="ui.yaml")  # fmt: skip


def test_parent_run_spans_search_and_selection(tmp_path):
    target, experiment_id, parent = _parent(tmp_path)
    c = tracking.client(target)
    _close(_manifest(target, experiment_id, parent, tmp_path), target, "finished", None, keep_open=True)
    assert c.get_run(parent).info.status == "RUNNING"  # the search is done, the selection follows
    with select._parent_open(target, parent):
        assert c.get_run(parent).info.status == "RUNNING"
    assert c.get_run(parent).info.status == "FINISHED"
    with pytest.raises(RuntimeError), select._parent_open(target, parent):
        raise RuntimeError("a selection job crashed")
    assert c.get_run(parent).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt), select._parent_open(target, parent):
        raise KeyboardInterrupt
    assert c.get_run(parent).info.status == "KILLED"


def test_search_alone_ends_the_parent_run(tmp_path):
    target, experiment_id, parent = _parent(tmp_path)
    _close(_manifest(target, experiment_id, parent, tmp_path), target, "finished", None)
    assert tracking.client(target).get_run(parent).info.status == "FINISHED"
    _, experiment_id, other = _parent(tmp_path)
    _close(_manifest(target, experiment_id, other, tmp_path), target, "interrupted", None, keep_open=True)
    assert tracking.client(target).get_run(other).info.status == "RUNNING"  # keep_open is the caller's word
