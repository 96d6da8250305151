"""Checkpoints carry a sha256 sidecar; a damaged one is named by where it is stored, and a
resumed trial continues from the newest intact checkpoint instead of failing."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest

from samsnet_search.engine import checkpoint
from samsnet_search.errors import CheckpointError
from samsnet_search.search.trial import resume_point


def write_checkpoint(folder: Path, epoch: int) -> Path:
    """A checkpoint folder as the trainer writes it (small states: the format, not a model)."""
    checkpoint.save(folder / checkpoint.LAST, {"epoch": epoch, "history": [{"epoch": e} for e in range(1, epoch + 1)]})
    checkpoint.save(folder / checkpoint.BEST, {"epoch": epoch, "metrics": {}})
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bytes(path: Path) -> None:
    """Same size, different content: only a checksum notices."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8])
    path.write_bytes(bytes(data))


def test_every_checkpoint_file_has_its_checksum(tmp_path):
    folder = write_checkpoint(tmp_path / "ckpt", 3)
    for name in (checkpoint.LAST, checkpoint.BEST):
        sidecar = json.loads((folder / (name + checkpoint.CHECKSUM_SUFFIX)).read_text())
        assert sidecar == checkpoint.file_digest(folder / name) and len(sidecar["sha256"]) == 64
        checkpoint.verify(folder / name)
    assert checkpoint.load(folder)["epoch"] == 3
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("damage", [truncate, flip_bytes], ids=["truncated", "same-size"])
def test_a_damaged_checkpoint_is_refused_naming_where_it_is_stored(tmp_path, damage):
    folder = write_checkpoint(tmp_path / "copy", 2)
    damage(folder / checkpoint.LAST)
    stored = "s3://bucket/studies/x/trial_1/checkpoint_000001"
    with pytest.raises(CheckpointError, match=f"^{stored}/last.pt: corrupt checkpoint"):
        checkpoint.load(folder, origin=stored)
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        checkpoint.verify(folder / checkpoint.LAST)


def test_a_checkpoint_without_sidecar_still_loads(tmp_path):
    folder = write_checkpoint(tmp_path / "old", 1)
    (folder / (checkpoint.LAST + checkpoint.CHECKSUM_SUFFIX)).unlink()
    assert checkpoint.load(folder)["epoch"] == 1


# --- a resumed trial falls back to the newest intact checkpoint ------------------------


@pytest.fixture
def trial_storage(tmp_path, monkeypatch):
    """A trial folder as Tune keeps it (checkpoint_000000..2 = epochs 1..3), an empty work
    folder, and a private temp folder that must stay empty (no stray copies)."""
    from ray import tune

    trial = tmp_path / "storage" / "study" / "trial_t1"
    for i in range(3):
        write_checkpoint(trial / f"checkpoint_{i:06d}", i + 1)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    latest = tune.Checkpoint.from_directory(str(trial / "checkpoint_000002"))
    return trial, latest, tmp_path / "work", temp


@pytest.mark.parametrize("damage", [truncate, flip_bytes], ids=["truncated", "same-size"])
def test_resume_falls_back_to_the_newest_intact_kept_checkpoint(trial_storage, damage, caplog):
    trial, latest, work, temp = trial_storage
    damage(trial / "checkpoint_000002" / checkpoint.LAST)
    with caplog.at_level(logging.ERROR):
        folder, name = resume_point(latest, work)
    assert name == str(trial / "checkpoint_000001") and checkpoint.load(folder)["epoch"] == 2
    assert folder.is_relative_to(work)  # downloads go to the trial's work folder, which is removed with it
    # the error names the stored file, not the copy that was checked
    assert f"{trial / 'checkpoint_000002' / checkpoint.LAST}: corrupt checkpoint" in caplog.text
    assert str(folder) not in caplog.text
    assert list(temp.iterdir()) == []


def test_resume_uses_the_local_work_copy_when_it_is_newer(trial_storage):
    trial, latest, work, _ = trial_storage
    truncate(trial / "checkpoint_000002" / checkpoint.LAST)
    write_checkpoint(work / "checkpoint", 3)  # the trainer's own copy of epoch 3
    folder, name = resume_point(latest, work)
    assert folder == work / "checkpoint" and checkpoint.load(folder)["epoch"] == 3


def test_resume_takes_an_intact_latest_checkpoint_as_it_is(trial_storage):
    trial, latest, work, temp = trial_storage
    folder, name = resume_point(latest, work)
    assert name == str(trial / "checkpoint_000002") and checkpoint.load(folder)["epoch"] == 3
    assert list(temp.iterdir()) == []


def test_resume_with_nothing_intact_is_a_clear_error(trial_storage):
    trial, latest, work, _ = trial_storage
    for i in range(3):
        flip_bytes(trial / f"checkpoint_{i:06d}" / checkpoint.LAST)
    with pytest.raises(CheckpointError, match="checkpoint_000002: corrupt, and the trial has no intact checkpoint"):
        resume_point(latest, work)


def test_a_local_copy_of_a_tune_checkpoint_is_removed_after_use(trial_storage):
    from samsnet_search.search.checkpoints import local_copy

    trial, latest, _, temp = trial_storage
    with local_copy(latest) as folder:
        assert checkpoint.load(folder)["epoch"] == 3
    assert not folder.exists() and list(temp.iterdir()) == []
