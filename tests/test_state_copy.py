"""The last good copy of Ray's experiment state: kept while the stored state is complete and
signed, never replaced by a failed write, restored only when no experiment state survived.

No Ray here: a study folder with Tune's state files, as in test_state_trust.py. The end-to-end
case (a disk freed only after the driver ended) is in test_disk_full_e2e.py.
"""

from __future__ import annotations

import json
import pickle

import pytest

from samsnet_search.search import integrity, state_copy

STATE = "experiment_state-2026.json"


@pytest.fixture(autouse=True)
def machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(integrity.KEY_ENV, raising=False)


@pytest.fixture
def study(tmp_path):
    folder = tmp_path / "runs" / "s"
    folder.mkdir(parents=True)
    save(folder, 1)
    return folder


def save(folder, step: int) -> dict[str, bytes]:
    """What one Tune save leaves in the folder, signed as the driver signs it."""
    files = {
        "tuner.pkl": pickle.dumps({"tuner": 1}),
        STATE: json.dumps({"step": step}).encode(),
        "searcher-state-2026.pkl": pickle.dumps({"step": step}),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    integrity.sign_local_folder(str(folder), folder)
    return files


def test_a_complete_signed_state_is_kept_and_restored_when_the_experiment_state_is_lost(study):
    digest = state_copy.keep(str(study))
    assert digest and (study / state_copy.NAME).is_file()
    assert state_copy.keep(str(study), digest) == digest  # unchanged: not written again
    kept = (study / STATE).read_bytes()
    (study / STATE).write_bytes(b"")  # a full disk met the next upload
    (study / "searcher-state-2026.pkl").write_bytes(pickle.dumps({"step": 2}))  # newer, intact
    (study / "trial_1").mkdir()
    (study / "trial_1" / "error.pkl").write_bytes(pickle.dumps(ValueError("x"))[:-4])  # cut short
    integrity.set_aside_damaged(str(study))
    assert state_copy.restore(str(study)) == ["experiment_state-2026.json", "searcher-state-2026.pkl", "tuner.pkl"]
    assert (study / STATE).read_bytes() == kept
    assert pickle.loads((study / "searcher-state-2026.pkl").read_bytes()) == {"step": 1}  # one consistent save
    assert not (study / "trial_1" / "error.pkl").exists()  # set aside with the rest
    assert integrity.verify(str(study)) == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / STATE).write_bytes(b'{"step": '),  # an upload cut short
        lambda f: (f / "searcher-state-2026.pkl").write_bytes(pickle.dumps({"step": 9})),  # not signed
        lambda f: (f / STATE).unlink(),  # no experiment state
    ],
    ids=["truncated", "unsigned", "missing"],
)
def test_an_incomplete_or_unsigned_state_does_not_replace_the_copy(study, damage):
    state_copy.keep(str(study))
    kept = (study / state_copy.NAME).read_bytes()
    save(study, 2)
    damage(study)
    assert state_copy.keep(str(study)) is None
    assert (study / state_copy.NAME).read_bytes() == kept


def test_a_full_disk_keeps_the_previous_copy_and_does_not_raise(study, monkeypatch, caplog):
    digest = state_copy.keep(str(study))
    kept = (study / state_copy.NAME).read_bytes()
    save(study, 2)

    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_copy.storage, "write_bytes", full)
    with caplog.at_level("WARNING", logger="samsnet_search.search.state_copy"):
        assert state_copy.keep(str(study), digest) == digest
    assert "could not keep a copy" in caplog.text
    assert (study / state_copy.NAME).read_bytes() == kept


def test_the_copy_outlives_the_signatures_of_its_files(study):
    """A long outage: Tune signs many newer saves; the copy (signed as a whole) still restores."""
    state_copy.keep(str(study))
    for step in range(2, 2 + integrity.KEEP + 1):
        save(study, step)
    (study / STATE).write_bytes(b"")
    integrity.set_aside_damaged(str(study))
    assert state_copy.restore(str(study))
    assert json.loads((study / STATE).read_bytes()) == {"step": 1}
    assert integrity.verify(str(study)) == 3


@pytest.mark.parametrize("garbage", [b"", b"not json", json.dumps({STATE: "!!"}).encode()])
def test_a_copy_this_driver_did_not_write_is_never_restored(study, garbage):
    (study / state_copy.NAME).write_bytes(garbage)
    (study / STATE).unlink()
    assert state_copy.restore(str(study)) == []
    assert not (study / STATE).exists()


def test_an_unreachable_storage_never_fails_tunes_save(study, monkeypatch, caplog):
    """Tune asks for the callback's state while it saves: an outage there is a warning, not a crash."""
    copier = state_copy.StateCopier(str(study))

    def unreachable(*_args, **_kwargs):
        raise OSError("AWS Error NETWORK_CONNECTION during ListObjectsV2 operation")

    monkeypatch.setattr(state_copy.integrity, "stored_state_files", unreachable)
    with caplog.at_level("WARNING", logger="samsnet_search.search.state_copy"):
        assert copier.get_state() is None
    assert "no copy of Ray's state this time" in caplog.text


def test_an_error_file_cut_short_by_the_last_upload_is_set_aside_before_tune_reads_it(study, caplog):
    """A trial failed while the disk was full: Tune's final upload left its error.pkl cut short,
    and Tune unpickles it right after the experiment ends (to build its results), which ended the
    driver with UnpicklingError (CI, test_disk_full_e2e). The signer sets aside every trial error
    file this driver did not sign (cut short, or planted) when the experiment ends; an intact one
    stays for Tune."""
    for trial in ("trial_cut", "trial_whole", "trial_planted"):
        (study / trial).mkdir()
        (study / trial / "error.pkl").write_bytes(pickle.dumps(ValueError(trial)))
    integrity.sign_local_folder(str(study), study)
    (study / "trial_cut" / "error.pkl").write_bytes(pickle.dumps(ValueError("trial_cut"))[:-4])
    (study / "trial_planted" / "error.pkl").write_bytes(pickle.dumps(ValueError("someone else's")))
    with caplog.at_level("WARNING", logger="samsnet_search.search.integrity"):
        integrity.StateSigner(str(study)).on_experiment_end(trials=[])
    assert sorted(p.name for p in (study / integrity.SET_ASIDE).iterdir()) == [
        "trial_cut.error.pkl",
        "trial_planted.error.pkl",
    ]
    assert pickle.loads((study / "trial_whole" / "error.pkl").read_bytes()).args == ("trial_whole",)
    assert "trial_cut/error.pkl" in caplog.text and "error.txt" in caplog.text
    assert (study / "tuner.pkl").is_file()  # the study's own state files are left to resume's checks
