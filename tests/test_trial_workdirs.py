"""Killed trials' work folders (`$TMPDIR/samsnet-trials/<study>_<trial>`) go when the study ends."""

from __future__ import annotations

import tempfile

from samsnet_search.search import runner
from samsnet_search.search.trial import trial_workdir


def test_a_finished_studys_trial_folders_are_removed_and_no_others(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = [trial_workdir("s", "6d63903a"), trial_workdir("s", "6d639_00001")]
    others = [trial_workdir("s_b", "6d63903a"), trial_workdir("sx", "6d63903a"), trial_workdir("s", "notatrial")]
    for folder in mine + others:
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "checkpoint" / "last.pt").write_bytes(b"weights")
    assert runner.remove_trial_workdirs("s") == 2
    assert not any(f.exists() for f in mine) and all(f.exists() for f in others)
