"""The slice estimate in a study: study-file option, seed / narrow, logging to the parent run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from samsnet_search.errors import ConfigError
from samsnet_search.search import identity
from samsnet_search.search.estimate_step import ARTIFACT, apply_estimate, before_search, load_estimate, study_estimate
from samsnet_search.search.study import Choice, load_study
from samsnet_search.services import tracking


def write_study(tmp_path: Path, data_root: Path, estimate: dict | None, slices=None) -> Path:
    study = {
        "name": "est",
        "model": {
            "n_fft": 256,
            "hop_length": 128,
            "slices": slices or {"choice": [1, 2, 4, 8]},
            "heads": 1,
            "channels": {"choice": [2, 3]},
            "depth": 1,
        },
        "data": {"root": str(data_root), "segment_seconds": 2.0, "samples_per_track": 1, "valid_seconds": 1.0},
        "train": {"lr": 1e-3, "batch_size": 2, "epochs": 1, "patience": 1, "valid_sdr_every": 0, "device": "cpu"},
        "search": {"num_samples": 2, "scheduler": "fifo"},
        "storage": str(tmp_path / "runs"),
        "tracking": {"uri": str(tmp_path / "mlruns")},
    }
    if estimate is not None:
        study["estimate"] = estimate
    path = tmp_path / "est.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_estimate_uses_the_studys_segment_stft_and_slice_values(synth_root, tmp_path):
    study = load_study(write_study(tmp_path, synth_root, {"enabled": True}))
    est = study_estimate(study)
    assert est.segment_seconds == 2.0 and (est.n_fft, est.hop) == (256, 128)
    assert est.allowed_slices == [1, 2, 4, 8]
    assert len(est.segments) == 8  # 2 training tracks of 8 s: validation tracks are never read
    assert est.slices_estimate in est.allowed_slices


def test_seed_puts_the_estimate_first_with_every_searched_key(synth_root, tmp_path):
    study = load_study(write_study(tmp_path, synth_root, {"enabled": True, "use": "seed"}))
    est = study_estimate(study)
    action = apply_estimate(study, est)
    assert study.points_to_evaluate == [{"model.slices": est.slices_estimate, "model.channels": 2}]
    assert action.startswith("seed")
    assert isinstance(study.space["model.slices"], Choice) and study.space["model.slices"].choice == [1, 2, 4, 8]


@pytest.mark.parametrize(
    "iqr, estimate, kept",
    [
        ((1.5, 4.0), 2, [2, 4]),  # the values inside the IQR, ends included
        ((1.0, 8.0), 4, [1, 2, 4, 8]),  # an IQR over everything keeps everything
        ((5.0, 9.0), 2, [2, 8]),
    ],  # the estimate itself stays even outside the IQR
)
def test_narrow_searches_only_the_iqr_and_the_estimate(synth_root, tmp_path, iqr, estimate, kept):
    study = load_study(write_study(tmp_path, synth_root, {"enabled": True, "use": "narrow"}))
    est = dataclasses.replace(study_estimate(study), iqr=iqr, slices_estimate=estimate)
    action = apply_estimate(study, est)
    assert study.space["model.slices"].choice == kept  # the study file searched over [1, 2, 4, 8]
    assert action == f"narrow: model.slices searched over {kept} (IQR {iqr[0]:g}-{iqr[1]:g})"
    assert study.points_to_evaluate == []


def test_before_search_logs_params_metrics_and_json_to_the_parent_run(synth_root, tmp_path):
    study = load_study(write_study(tmp_path, synth_root, {"enabled": True, "use": "narrow"}))
    target = tracking.resolve_tracking(study.tracking_uri, study.base_dir)
    exp = tracking.ensure_experiment(target, study.name)
    run_id = tracking.start_parent_run(target, exp, study.name)
    est = before_search(study, target, run_id)
    run = tracking.client(target).get_run(run_id)
    assert run.data.params["estimate.slices"] == str(est.slices_estimate)
    assert run.data.params["estimate.use"] == "narrow" and run.data.params["estimate.method"] == "novelty"
    assert run.data.metrics["estimate_slices"] == est.slices_estimate
    assert run.data.metrics["estimate_segments"] == 8
    assert run.data.tags["samsnet.estimate"].startswith("narrow")
    local = tracking.client(target).download_artifacts(run_id, ARTIFACT, str(tmp_path))
    data = json.loads(Path(local).read_text())
    assert data["slices_estimate"] == est.slices_estimate and len(data["segments"]) == 8
    assert "one slice per contiguous part" in data["hypothesis"]
    # ... and the same JSON in the study folder, for `samsnet-search report` without MLflow
    saved = load_estimate(identity.study_uri(study.storage, study.name))
    assert saved == data
    assert (Path(study.storage) / "est" / ARTIFACT).is_file()


def test_disabled_estimate_does_nothing(synth_root, tmp_path):
    study = load_study(write_study(tmp_path, synth_root, None))
    assert before_search(study, None, "unused") is None  # no tracking call either
    assert load_estimate(identity.study_uri(study.storage, study.name)) is None


def test_study_file_errors_name_the_key(synth_root, tmp_path):
    with pytest.raises(ConfigError, match=r"estimate.*use: seed needs enabled: true"):
        load_study(write_study(tmp_path, synth_root, {"use": "seed"}))
    with pytest.raises(ConfigError, match="estimate.use: narrow needs model.slices to be searched"):
        load_study(write_study(tmp_path, synth_root, {"enabled": True, "use": "narrow"}, slices=2))
    with pytest.raises(ConfigError, match="estimate"):
        load_study(write_study(tmp_path, synth_root, {"enabled": True, "use": "widen"}))
