"""The study commands without a study run: exit codes, finding studies by name (hermetic HOME),
`validate` reaching storage and tracking, the orphan sweep."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from samsnet_search import cli
from samsnet_search.search import identity
from samsnet_search.search.identity import Manifest
from samsnet_search.services import tracking


def small_study_file(tmp_path, synth_root) -> Path:
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}},
                "data": {"root": str(synth_root), "segment_seconds": 0.5},
            }
        )
    )
    return study_file


def test_interrupted_search_exits_130_and_skips_selection(tmp_path, synth_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the study's storage (./runs) and its lease
    study_file = small_study_file(tmp_path, synth_root)
    selected = []
    # The search itself is replaced: Tune returns normally after a Ctrl-C, with unfinished trials.
    monkeypatch.setattr(
        cli,
        "_run_live",
        lambda study, live, **kw: SimpleNamespace(study=study, interrupted=True, pareto=None, outages=[]),
    )
    monkeypatch.setattr("samsnet_search.delivery.show.format_result", lambda result: "study s: INTERRUPTED")
    monkeypatch.setattr(cli, "_select", lambda *a, **kw: selected.append(a))
    assert cli.main(["run", str(study_file), "--no-live"]) == 130
    captured = capsys.readouterr()
    assert "INTERRUPTED" in captured.out and not selected
    assert "continue with: samsnet-search resume s" in captured.err


def test_trials_failed_by_an_outage_exit_75_with_the_resume_command(tmp_path, synth_root, monkeypatch, capsys):
    """No signal, but trials failed for an outage that outlasted search.infra_retry_s: the study
    is not finished; the shell sees EX_TEMPFAIL and the line names the trials and the command."""
    monkeypatch.chdir(tmp_path)
    study_file = small_study_file(tmp_path, synth_root)
    failed = [SimpleNamespace(trial_id="c7642445"), SimpleNamespace(trial_id="031152c7")]
    monkeypatch.setattr(
        cli,
        "_run_live",
        lambda study, live, **kw: SimpleNamespace(study=study, interrupted=True, pareto=None, outages=failed),
    )
    monkeypatch.setattr("samsnet_search.delivery.show.format_result", lambda result: "study s: INTERRUPTED")
    monkeypatch.setattr(cli, "_select", lambda *a, **kw: pytest.fail("no selection after an outage"))
    assert cli.main(["run", str(study_file), "--no-live"]) == 75
    err = capsys.readouterr().err
    assert "2 trial(s) failed for an outage" in err and "c7642445, 031152c7" in err
    assert "continue with: samsnet-search resume s" in err


# --- finding a study by name -----------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user with a HOME of their own, no storage defaults, working in an unrelated folder."""
    for var in ("SAMSNET_STORAGE", "MLFLOW_TRACKING_URI", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # S3 clients: keys from here, never from an instance metadata address
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "home"


def stored_study(storage: str, name: str, target=None, experiment_id="0", parent="p") -> Manifest:
    m = Manifest(
        name=name,
        storage=storage,
        experiment_name=name,
        experiment_id=experiment_id,
        parent_run_id=parent,
        registered_model=f"samsnet-{name}",
        tracking_uri="x",
        artifact_root=None,
        base_dir=storage,
        source=f"{name}.yaml",
        state="finished",
    )
    identity.write_manifest(m)
    return m


def test_studies_found_by_name_through_the_user_default(tmp_path, home, monkeypatch, capsys):
    storage = str(tmp_path / "studies")
    stored_study(storage, "far")
    with pytest.raises(identity.StudyNotFound) as e:
        identity.find_study("far", str(Path.cwd() / "runs"))
    assert "--storage" in str(e.value) and "$SAMSNET_STORAGE" in str(e.value) and str(home) in str(e.value)

    monkeypatch.setenv("SAMSNET_STORAGE", storage)
    assert identity.find_study("far", str(Path.cwd() / "runs")).storage == storage
    assert cli.main(["ls"]) == 0 and "far" in capsys.readouterr().out

    monkeypatch.delenv("SAMSNET_STORAGE")
    config = home / ".config" / "samsnet" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"storage": storage}))
    assert identity.find_study("far", str(Path.cwd() / "runs")).name == "far"
    assert cli.main(["ls"]) == 0 and "far" in capsys.readouterr().out
    config.write_text(yaml.safe_dump({"storge": storage}))
    assert cli.main(["ls"]) == 2
    assert "unknown keys ['storge']" in capsys.readouterr().err


def test_a_study_in_runs_is_found_by_name_when_samsnet_storage_points_elsewhere(tmp_path, home, monkeypatch):
    """After `eval "$(samsnet-search infra env)"` ($SAMSNET_STORAGE: the stack), a study run with the
    default `storage: ./runs` is still found by name from its folder."""
    stored_study(str(Path.cwd() / "runs"), "local")
    monkeypatch.setenv("SAMSNET_STORAGE", str(tmp_path / "stack"))
    assert identity.find_study("local", str(tmp_path / "stack")).name == "local"
    assert cli.main(["report", "local"]) == 0


def test_studies_found_by_name_through_the_tracking_server(tmp_path, home, monkeypatch):
    """The study run records the study folder (tag samsnet.storage); the tracking store here is
    the embedded one, the lookup is the same for a server."""
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    experiment_id = tracking.ensure_experiment(target, "tracked")
    storage = str(tmp_path / "studies")
    path = identity.study_uri(storage, "tracked")
    parent = tracking.start_parent_run(target, experiment_id, "tracked", {identity.STORAGE_TAG: path})
    stored_study(storage, "tracked", experiment_id=experiment_id, parent=parent)
    with pytest.raises(identity.StudyNotFound):
        identity.find_study("tracked", str(Path.cwd() / "runs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", target.uri)
    found = identity.find_study("tracked", str(Path.cwd() / "runs"))
    assert found.path == path and found.parent_run_id == parent


# --- validate reaches the storage and the tracking server ------------------------------


def test_validate_says_when_storage_and_tracking_server_cannot_be_reached(tmp_path, synth_root, home, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    study_file = tmp_path / "far.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}},
                "data": {"root": str(synth_root), "segment_seconds": 0.5},
                "storage": f"s3://samsnet/ray?endpoint_override=127.0.0.1:{port}&scheme=http",
                "tracking": {"uri": f"http://127.0.0.1:{port}"},
            }
        )
    )
    assert cli.main(["validate", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert (
        f"storage s3://samsnet/ray?endpoint_override=127.0.0.1:{port}&scheme=http: cannot reach the S3 endpoint" in err
    )
    assert f"tracking server http://127.0.0.1:{port} does not answer" in err and "infra up" in err
    assert cli.main(["validate", str(study_file), "--offline"]) == 0


# --- the orphan sweep ------------------------------------------------------------------


def test_orphan_sweep_closes_lost_trials_not_selection_runs(tmp_path):
    from samsnet_search.search.runner import close_orphans
    from samsnet_search.search.select import PHASE_TAG

    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    experiment_id = tracking.ensure_experiment(target, "sweep")
    parent = tracking.start_parent_run(target, experiment_id, "sweep")
    c = tracking.client(target)
    tags = {tracking.PARENT_TAG: parent, tracking.ROLE_TAG: "trial"}
    lost = c.create_run(experiment_id, tags={**tags, tracking.TRIAL_TAG: "lost1"}).info.run_id
    selecting = c.create_run(
        experiment_id, tags={**tags, tracking.TRIAL_TAG: "selection-s1-seed0", PHASE_TAG: "selection"}
    ).info.run_id
    runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.find_child_runs(target, experiment_id, parent)}
    close_orphans(target, runs, trial_ids=set())
    assert c.get_run(lost).data.tags[tracking.STATUS_TAG] == "stopped"
    sel = c.get_run(selecting)
    assert sel.info.status == "RUNNING" and tracking.STATUS_TAG not in sel.data.tags
    assert "samsnet.error" not in sel.data.tags
