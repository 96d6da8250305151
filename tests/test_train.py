"""Trainer: it learns, resumes exactly, stops early, refuses to continue on NaN; checkpoints load safely."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from samsnet_search import __version__
from samsnet_search.cli import main
from samsnet_search.config import TARGETS, ExperimentConfig, load_experiment
from samsnet_search.engine import checkpoint
from samsnet_search.engine.train import TRACK_SDR, Trainer, TrainingDiverged
from samsnet_search.errors import ConfigError
from samsnet_search.version import git_commit


def tiny_experiment(root: Path, **train) -> ExperimentConfig:
    """A model small enough for a few CPU epochs in seconds (non-paper sizes)."""
    return ExperimentConfig.model_validate(
        {
            "model": {"n_fft": 256, "hop_length": 128, "channels": 4, "heads": 2, "depth": 1, "slices": 2},
            "data": {"root": str(root), "segment_seconds": 1.0, "samples_per_track": 4, "valid_seconds": 4.0},
            "train": {
                "lr": 0.01,
                "batch_size": 4,
                "epochs": 2,
                "patience": 50,
                "valid_sdr_every": 0,
                "seed": 3,
                "threads": 2,
                **train,
            },
        }
    )


def test_training_improves_validation_sdr(synth_root, tmp_path):
    trainer = Trainer(tiny_experiment(synth_root, epochs=8), tmp_path)
    _, before, _ = trainer.validate(with_sdr=True)
    trainer.fit()
    _, after, _ = trainer.validate(with_sdr=True)
    assert after["avg"] > before["avg"] + 1.0, (before, after)


def test_resume_continues_the_same_trajectory(synth_root, tmp_path):
    full = Trainer(tiny_experiment(synth_root, epochs=3), tmp_path / "full").fit()
    Trainer(tiny_experiment(synth_root, epochs=2), tmp_path / "cut").fit()
    resumed = Trainer(tiny_experiment(synth_root, epochs=3), tmp_path / "resumed").fit(
        resume=tmp_path / "cut" / "checkpoint"
    )
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-6)
    assert (tmp_path / "resumed" / "checkpoint" / "best.pt").is_file()


def test_every_epoch_reports_and_early_stopping_ends_the_run(synth_root, tmp_path):
    seen = []
    summary = Trainer(
        tiny_experiment(synth_root, epochs=6, patience=1, lr=1e-9), tmp_path, callbacks=[seen.append]
    ).fit()
    assert [r.epoch for r in seen] == list(range(1, summary.epochs + 1))
    for r in seen:
        assert r.stop == (r.epochs_without_improvement >= 1)
        assert (r.checkpoint_dir / "last.pt").is_file()
    assert summary.stopped_early == seen[-1].stop
    assert summary.stopped_early or summary.epochs == 6


def test_valid_sdr_is_reported_every_n_epochs(synth_root, tmp_path):
    seen = []
    Trainer(tiny_experiment(synth_root, epochs=3, valid_sdr_every=2), tmp_path, callbacks=[seen.append]).fit()
    assert [r.valid_sdr is not None for r in seen] == [False, True, True]  # epoch 2, and the last
    assert set(seen[1].valid_sdr_targets) == {"vocals", "drums", "bass", "other"}
    assert "valid_sdr_vocals" in seen[1].metrics()


def test_diverging_loss_stops_with_a_clear_error(synth_root, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"train_loss became (nan|inf).*lower train.lr"):
        Trainer(tiny_experiment(synth_root, epochs=3, lr=1e30), tmp_path).fit()


def test_checkpoint_is_self_describing_and_loads_weights_only(synth_root, tmp_path):
    Trainer(tiny_experiment(synth_root, epochs=1), tmp_path).fit()
    state = torch.load(tmp_path / "checkpoint" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "rng", "epoch", "history", "model_config", "experiment", "code_version"} <= set(state)
    model, best = checkpoint.load_model(tmp_path / "checkpoint")
    assert best["epoch"] == 1 and not model.training
    # the checkpoint names the commit the study's MLflow run records (tracking uses git_commit)
    commit = git_commit()
    assert state["code_version"] == (
        f"{__version__}+{commit[:7]}" + (".dirty" if commit.endswith("+dirty") else "") if commit else __version__
    )


def test_cli_train_and_bad_config(synth_root, tmp_path, capsys):
    cfg = tiny_experiment(synth_root, epochs=1).model_dump(mode="json")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(good), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoint" / "best.pt").is_file()

    cfg["model"]["heds"] = 2
    cfg["train"]["lr"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: model.heds: unknown key" in err
    assert "train.lr: Input should be greater than 0" in err
    assert "Traceback" not in err


def test_removed_sdr_backend_key_is_refused_by_name(tmp_path):
    # valid_sdr always uses the package's BSSEval v4; a file that still chooses a backend is told so.
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  sdr_backend: museval\n")
    with pytest.raises(ConfigError, match=r"old\.yaml: train\.sdr_backend: unknown key"):
        load_experiment(path)


def test_per_track_validation_sdr_is_reported_on_request_and_agrees_with_the_median(synth_root, tmp_path):
    """train.valid_sdr_per_track: each validation track's SDR per target, the paired evidence of
    the learning-curve table; the per-target median over those tracks is valid_sdr's."""
    seen = []
    train = {"valid_sdr_every": 1, "valid_sdr_per_track": True}
    Trainer(tiny_experiment(synth_root, epochs=1, **train), tmp_path, callbacks=[seen.append]).fit()
    metrics = seen[0].metrics()
    tracks = seen[0].valid_sdr_tracks
    assert tracks and all(set(scores) == set(TARGETS) for scores in tracks.values())
    for target in TARGETS:
        values = [metrics[f"{TRACK_SDR}.{track}.{target}"] for track in tracks]
        assert metrics[f"valid_sdr_{target}"] == pytest.approx(float(np.nanmedian(values)))
    plain = []
    Trainer(
        tiny_experiment(synth_root, epochs=1, valid_sdr_every=1), tmp_path / "plain", callbacks=[plain.append]
    ).fit()
    assert not any(k.startswith(TRACK_SDR) for k in plain[0].metrics())  # off by default: MLflow stays small
