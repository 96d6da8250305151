"""Moving a study between machines, and Ray state files damaged by a failed write.

No Ray here: a study folder with the files Tune unpickles, signed by one machine (a config folder
and key) and checked by another. The end-to-end `resume --trust` is in test_search_integrity.py.
"""

from __future__ import annotations

import json
import pickle

import pytest

from samsnet_search.search import integrity

STATE = {"tuner.pkl": pickle.dumps({"tuner": 1}), "experiment_state-2026.json": json.dumps({"trials": []}).encode()}


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """`machine("a")`: make this process the machine `a` (its own config folder and key)."""

    def switch(name: str):
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / name / "config"))
        monkeypatch.delenv(integrity.KEY_ENV, raising=False)
        return tmp_path / name / "config" / "samsnet"

    return switch


@pytest.fixture
def study(tmp_path):
    folder = tmp_path / "runs" / "s"
    (folder / "trial_0").mkdir(parents=True)
    for name, content in STATE.items():
        (folder / name).write_bytes(content)
    (folder / "trial_0" / "error.pkl").write_bytes(pickle.dumps(ValueError("bad lr")))
    return folder


def sign_all(folder) -> None:
    integrity.sign_local_folder(str(folder), folder)


def test_a_study_from_another_machine_is_refused_naming_trust_and_creates_no_key(machine, study):
    machine("a")
    sign_all(study)
    assert integrity.verify(str(study)) == 3
    home_b = machine("b")
    with pytest.raises(integrity.StateForeign, match="--trust") as e:
        integrity.verify(str(study))
    assert "another machine" in str(e.value) and "Resume on the machine that ran the study" not in str(e.value)
    assert not (home_b / "state-hmac.key").exists()  # a refused resume leaves no key behind


def test_trust_signs_the_current_state_with_this_machines_key(machine, study):
    machine("a")
    sign_all(study)
    machine("b")
    assert integrity.trust(str(study)) == ["experiment_state-2026.json", "trial_0/error.pkl", "tuner.pkl"]
    assert integrity.verify(str(study)) == 3


def test_signatures_of_another_key_are_refused_naming_trust(machine, study, tmp_path, monkeypatch):
    machine("a")
    sign_all(study)
    monkeypatch.setenv(integrity.KEY_ENV, str(tmp_path / "other.key"))  # same signatures, a new key
    with pytest.raises(integrity.StateForeign, match="--trust"):
        integrity.verify(str(study))
    assert not (tmp_path / "other.key").exists()


def test_a_changed_file_is_still_tampered_and_says_where_to_resume(machine, study):
    machine("a")
    sign_all(study)
    (study / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 2}))
    with pytest.raises(integrity.StateTampered, match="Resume on the machine that ran the study") as e:
        integrity.verify(str(study))
    assert not isinstance(e.value, integrity.StateForeign)


def test_files_of_a_failed_write_are_set_aside_not_refused(machine, study, caplog):
    machine("a")
    sign_all(study)
    (study / "trial_0" / "error.pkl").write_bytes(b"")  # Ray's write on a full disk
    (study / "experiment_state-2026.json").write_bytes(b'{"trials": [')  # truncated
    (study / "experiment_state-2025.json").write_bytes(b"")
    with caplog.at_level("WARNING", logger="samsnet_search.search.integrity"):
        moved = integrity.set_aside_damaged(str(study))
    assert moved == ["experiment_state-2025.json", "experiment_state-2026.json", "trial_0/error.pkl"]
    assert sorted(p.name for p in (study / "set-aside").iterdir()) == [
        "experiment_state-2025.json",
        "experiment_state-2026.json",
        "trial_0.error.pkl",
    ]
    assert "set aside" in caplog.text and "trial_0/error.pkl" in caplog.text
    assert integrity.verify(str(study)) == 1  # tuner.pkl: the rest is out of Tune's way


def test_a_non_empty_pickle_is_never_set_aside(machine, study):
    """A truncated pickle can still run code before it ends: it is a tampering question."""
    machine("a")
    sign_all(study)
    (study / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1})[:-3])
    assert integrity.set_aside_damaged(str(study)) == []
    with pytest.raises(integrity.StateTampered):
        integrity.verify(str(study))
