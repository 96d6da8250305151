"""`validate` predicts each trial's GPU peak and refuses a study whose largest trial cannot fit its share."""

from __future__ import annotations

import pytest
from test_study import good, write

from samsnet_search.cli import main
from samsnet_search.search import gpu_fit
from samsnet_search.search.study import load_study


def _gpu_study(data_root, gpu: float, card_gb: float | None, batch: int = 16) -> dict:
    data = good(data_root)
    data["train"].update(device="cuda", batch_size=batch, amp=False)
    data["resources"] = {"gpu": gpu} | ({"gpu_memory_gb": card_gb} if card_gb is not None else {})
    return data


def test_validate_prints_the_largest_and_smallest_predicted_peaks(synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, _gpu_study(synth_root, 0.5, 80.0))
    assert main(["validate", str(path), "--offline"]) == 0
    out = capsys.readouterr().out
    assert "predicted GPU peak per trial" in out and "share 40 GB" in out
    # The most channels and heads, and a slice count that pads its last slice (its second SDPA
    # call keeps more than one unpadded slice would: docs/gpu-memory.md), is the largest.
    largest = out.split("largest ", 1)[1].split("]", 1)[0]
    for value in ("model.slices=2", "model.channels=8", "model.heads=2", "data.segment_seconds=1.5"):
        assert value in largest, out


def test_cpu_study_has_no_gpu_prediction(synth_root, tmp_path):
    assert load_study(write(tmp_path, good(synth_root)), base_dir=tmp_path).memory is None


def test_largest_trial_over_its_share_is_refused_naming_what_fits(synth_root, tmp_path, monkeypatch, capsys):
    study = load_study(write(tmp_path, _gpu_study(synth_root, 1, None)), base_dir=tmp_path)
    largest, smallest = study.memory.largest.peak, study.memory.smallest.peak
    card_gb = (largest - 1) / gpu_fit.GB  # one byte short
    path = write(tmp_path, _gpu_study(synth_root, 1, card_gb))
    with pytest.raises(gpu_fit.DoesNotFit) as err:
        load_study(path, base_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert f"resources.gpu_memory_gb: the largest trial needs {largest / gpu_fit.GB:.1f} GB" in message
    assert "would fit: train.amp: true (" in message
    assert message.endswith("or train.batch_size: 15")  # one byte short: one sample fewer is enough
    assert smallest < largest
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(path), "--offline"]) == 2
    assert "resources.gpu_memory_gb" in capsys.readouterr().err


def test_nothing_fits_says_so(synth_root, tmp_path):
    # half of a 1 GB card: less than the CUDA context alone
    with pytest.raises(gpu_fit.DoesNotFit, match="nothing fits: batch 1 with AMP and gradient checkpointing needs"):
        load_study(write(tmp_path, _gpu_study(synth_root, 0.5, 1.0)), base_dir=tmp_path)


def test_run_refuses_before_creating_anything(synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, _gpu_study(synth_root, 0.5, 1.0))
    assert main(["run", str(path), "--no-live"]) == 2
    assert "resources.gpu_memory_gb" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()
