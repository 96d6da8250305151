"""One place says where a trial's best checkpoint is: the kept checkpoint folder of its best
reported epoch, read from the study's storage (Tune's result.json), with or without Ray running."""

from __future__ import annotations

import json
import math

from samsnet_search.search import checkpoints


def tune_trial(study, trial_id, rows, kept):
    """A trial folder as Tune leaves it: result.json (one line per epoch) and the kept checkpoints."""
    folder = study / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    lines = []
    for i, row in enumerate(rows):
        lines.append(json.dumps({"epoch": i + 1, **row, "checkpoint_dir_name": f"checkpoint_{i:06d}"}))
    (folder / "result.json").write_text("\n".join(lines) + "\n")
    for i in kept:
        (folder / f"checkpoint_{i:06d}").mkdir()
    return folder


def test_the_best_kept_epoch_by_the_study_metric(tmp_path):
    losses = [0.9, 0.4, 0.5, 0.3, 0.6]
    folder = tune_trial(tmp_path, "a", [{"valid_loss": v, "valid_sdr": -v} for v in losses], kept=[1, 2, 4])
    best = checkpoints.best_checkpoint(str(folder), "valid_loss", "min")
    # epoch 4 (index 3) was best but Tune no longer keeps it: the best kept one is index 1
    assert best.path == str(folder / "checkpoint_000001")
    assert checkpoints.best_checkpoint(str(folder), "valid_sdr", "max").path == str(folder / "checkpoint_000001")
    (folder / "checkpoint_000003").mkdir()
    assert checkpoints.best_checkpoint(str(folder), "valid_loss", "min").path == str(folder / "checkpoint_000003")


def test_epochs_without_the_metric_or_a_finite_value_never_win(tmp_path):
    rows = [{"valid_loss": 0.5}, {"valid_loss": math.nan}, {"valid_loss": 0.7, "valid_sdr": 1.0}]
    folder = tune_trial(tmp_path, "b", rows, kept=[0, 1, 2])
    (folder / "result.json").write_text((folder / "result.json").read_text() + '{"epoch": 4, "valid_lo')  # cut short
    assert checkpoints.best_checkpoint(str(folder), "valid_loss", "min").path == str(folder / "checkpoint_000000")
    assert checkpoints.best_checkpoint(str(folder), "valid_sdr", "max").path == str(folder / "checkpoint_000002")
    assert checkpoints.best_checkpoint(str(folder), "valid_sdr_vocals", "max") is None


def test_a_trial_without_checkpoints_has_none(tmp_path):
    assert checkpoints.best_checkpoint(str(tmp_path / "trial_gone"), "valid_loss", "min") is None


def test_the_workers_configuration_is_recorded_once_in_the_trial_folder(tmp_path):
    study = str(tmp_path / "study")
    assert checkpoints.read_experiment(study, "c") is None
    checkpoints.write_experiment(study, "c", {"model": {"slices": 4}})
    assert checkpoints.read_experiment(study, "c") == {"model": {"slices": 4}}
    assert (tmp_path / "study" / "trial_c" / checkpoints.EXPERIMENT_FILE).is_file()
    assert checkpoints.trial_uri(study, "c") == str(tmp_path / "study" / "trial_c")
