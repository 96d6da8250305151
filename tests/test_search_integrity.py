"""Ray state files of a study are signed by the driver and refused when someone else wrote them.

A tiny real study writes the files Tune unpickles on restore; then each is tampered with (a
real pickle payload that would create a file, an edited JSON, an added trial error.pkl) and
`resume` refuses it with one line naming the file, before Tune reads it.
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import yaml

from samsnet_search.cli import main
from samsnet_search.search import integrity
from samsnet_search.search.runner import run_study
from samsnet_search.search.study import load_study
from samsnet_search.search.trial import trial_workdir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config_home(tmp_path_factory, local_ray):
    """The user's config folder (key and signatures) in a temporary HOME; one small Ray."""
    home = tmp_path_factory.mktemp("home")
    with local_ray({"XDG_CONFIG_HOME": str(home / ".config")}):
        yield home / ".config" / "samsnet"


class CreatesAFile:
    """Unpickling this opens (creates) `path`: what a planted state file could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_tampered_ray_state_is_refused(tmp_path, synth_root, config_home, capsys):
    storage = tmp_path / "runs"
    path = tmp_path / "signed.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "signed",
                "model": {
                    "n_fft": 256,
                    "hop_length": 128,
                    "slices": {"choice": [1, 2]},
                    "heads": 1,
                    "channels": 2,
                    "depth": 1,
                },
                "data": {"root": str(synth_root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
                "train": {
                    "lr": 1e-3,
                    "batch_size": 2,
                    "epochs": 1,
                    "patience": 1,
                    "valid_sdr_every": 0,
                    "device": "cpu",
                },
                "search": {"num_samples": 2, "seed": 0, "scheduler": "fifo", "max_concurrent_trials": 2},
                "resources": {"cpu": 1},
                "storage": str(storage),
                "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics": False},
            }
        )
    )
    study = load_study(path, base_dir=tmp_path)
    result = run_study(study)
    assert not result.interrupted
    folder = storage / "signed"
    key = config_home / "state-hmac.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    files = integrity.stored_state_files(str(folder))
    assert {"tuner.pkl"} <= set(files)
    assert any(f.startswith("experiment_state-") for f in files) and any(f.startswith("searcher-state-") for f in files)
    assert integrity.verify(str(folder)) == len(files)
    assert run_study(study).manifest.state == "finished"  # restored (verified) as Tune left it

    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(CreatesAFile(marker))
    pickle.loads(payload)  # the payload is real: loading it creates the file
    assert marker.exists()
    marker.unlink()

    searcher_state = folder / next(f for f in files if f.startswith("searcher-state-"))
    original = searcher_state.read_bytes()
    searcher_state.write_bytes(payload)
    rc = main(["resume", "signed", "--storage", str(storage), "--no-live", "--no-select"])
    err = capsys.readouterr().err
    assert rc == 2 and searcher_state.name in err and "not resumed" in err, err
    assert not marker.exists()
    searcher_state.write_bytes(original)
    integrity.verify(str(folder))

    tuner = folder / "tuner.pkl"
    original = tuner.read_bytes()
    tuner.write_bytes(payload)
    with pytest.raises(integrity.StateTampered, match="tuner.pkl: Ray state file changed"):
        integrity.verify(str(folder))
    tuner.write_bytes(original)

    state = folder / next(f for f in files if f.startswith("experiment_state-"))
    original = state.read_bytes()
    state.write_bytes(original + b" ")  # valid JSON still, one byte more
    with pytest.raises(integrity.StateTampered, match=state.name):
        integrity.verify(str(folder))
    state.write_bytes(original)

    trial = next(p for p in folder.iterdir() if p.name.startswith("trial_"))
    (trial / "error.pkl").write_bytes(payload)  # a file Tune unpickles that no driver wrote
    with pytest.raises(integrity.StateTampered, match=f"{trial.name}/error.pkl: Ray state file was not written"):
        integrity.verify(str(folder))
    (trial / "error.pkl").unlink()
    integrity.verify(str(folder))

    os.chmod(key, 0o644)
    try:
        with pytest.raises(integrity.StateTampered, match="chmod 600"):
            integrity.verify(str(folder))
    finally:
        os.chmod(key, 0o600)


def tiny_study(tmp_path: Path, synth_root: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "model": {
                    "n_fft": 256,
                    "hop_length": 128,
                    "slices": {"choice": [1]},
                    "heads": 1,
                    "channels": 2,
                    "depth": 1,
                },
                "data": {"root": str(synth_root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
                "train": {"lr": 1e-3, "batch_size": 2, "epochs": 1, "patience": 1, "valid_sdr_every": 0},
                "search": {"num_samples": 1, "seed": 0, "scheduler": "fifo"},
                "resources": {"cpu": 1},
                "storage": str(tmp_path / "runs"),
                "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics": False},
            }
        )
    )
    return path


def test_a_study_moved_to_another_machine_resumes_after_trust(tmp_path, synth_root, config_home, capsys, monkeypatch):
    """Machine B (another config folder: no key, no signatures) refuses the study naming --trust and
    creates no key; `resume --trust` signs what is there, prints it, and resumes."""
    killed = trial_workdir("moved", "0badc0de")  # what a killed trial leaves behind
    (killed / "checkpoint").mkdir(parents=True, exist_ok=True)
    run_study(load_study(tiny_study(tmp_path, synth_root, "moved"), base_dir=tmp_path))
    assert not killed.exists()  # the finished search removed it
    machine_b = tmp_path / "machine-b"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(machine_b))
    args = ["resume", "moved", "--storage", str(tmp_path / "runs"), "--no-live", "--no-select"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--trust" in err and "another machine" in err and "Resume on the machine" not in err, err
    assert not (machine_b / "samsnet" / "state-hmac.key").exists()
    assert main([*args, "--trust"]) == 0
    out = capsys.readouterr().out
    assert "tuner.pkl" in out and "signed" in out, out
    assert (machine_b / "samsnet" / "state-hmac.key").exists()


def test_state_files_of_a_failed_write_are_set_aside_and_resume_goes_on(tmp_path, synth_root, config_home, caplog):
    """What a full disk leaves (a 0-byte error.pkl, an empty newer experiment state): resume sets
    them aside in one line instead of refusing the study as tampered, and finishes it."""
    study = load_study(tiny_study(tmp_path, synth_root, "full"), base_dir=tmp_path)
    run_study(study)
    folder = tmp_path / "runs" / "full"
    trial = next(p for p in folder.iterdir() if p.name.startswith("trial_"))
    (trial / "error.pkl").write_bytes(b"")
    (folder / "experiment_state-2099-01-01_00-00-00.json").write_bytes(b"")
    with caplog.at_level("WARNING", logger="samsnet_search.search.integrity"):
        assert run_study(study).manifest.state == "finished"
    assert sorted(p.name for p in (folder / "set-aside").iterdir()) == [
        "experiment_state-2099-01-01_00-00-00.json",
        f"{trial.name}.error.pkl",
    ]
    assert "set aside 2 state file(s)" in caplog.text
