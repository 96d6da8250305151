"""scripts/gpu-check.sh --cpu-dry-run: every section runs at tiny sizes and the summary names them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from samsnet_search.bench import gpu_check, gpu_check_model
from samsnet_search.bench.gpu_check import main, summary

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = set(gpu_check.SECTIONS)


@pytest.mark.slow  # every section incl. a local Ray and a 2-trial study: about a minute idle
def test_gpu_check_cpu_dry_run(tmp_path):
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), "--cpu-dry-run", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    s = report["sections"]
    assert report["dry_run"] and set(s) == SECTIONS == {
        "train",
        "data_wait",
        "sdpa",
        "attention",
        "validation",
        "resume",
        "placement",
        "study",
        "export",
        "mlflow_gpu",
        "bsseval",
        "separate",
    }
    # every section ok: the export section found that batched-matmul programs refused whole-slice
    # lengths, which tracing with SDPA (delivery.export.EXPORT_KERNEL) fixed
    assert all(r["status"] == "ok" for r in s.values()), report["failed"]
    assert all(r["status"] in ("ok", "wrong") for r in s.values())  # no section raised
    assert proc.returncode == (1 if report["failed"] else 0), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert s["train"]["batch"] == 2 and s["train"]["samples_per_s"] > 0 and 0 < s["train"]["attention_share"] <= 1
    assert s["train"]["predicted_peak_mib"] > 0
    assert 0 <= s["data_wait"]["data_wait_share"] < 1
    assert s["sdpa"]["slices_12"]["math"]["used"] == ["math"]  # the math backend runs everywhere
    assert s["sdpa"]["slices_12"]["flash"]["used"] == ["flash"]  # CPU's flash kernel, named by the profiler
    assert set(s["sdpa"]["slices_1"]) == {"auto", "flash", "efficient", "cudnn", "math"}
    assert set(s["attention"]["per_slices"]) == {"1", "4", "12"}
    assert s["validation"]["valid_loss"] > 0
    assert s["resume"]["weights_restored"] and s["resume"]["ended_at_epoch"] == 2
    assert s["placement"]["gpu_0"]["device"] == "cpu" and s["placement"]["gpu_0.5"]["ray_gpu_ids"] == ["0"]
    assert s["placement"]["gpu_0"]["ray_gpu_ids"] == []
    assert sum(s["study"]["trials"].values()) == 2
    assert "no NVML" in s["mlflow_gpu"]["note"]
    assert "CPU path only" in s["bsseval"]["cuda_s"]
    assert s["separate"]["x_realtime"] > 0
    printed = proc.stdout
    assert "CPU DRY RUN" in printed
    for name in SECTIONS:
        assert f"  {name}:" in printed


def test_only_runs_the_named_section(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "synthesize", lambda *a, **k: tmp_path)
    monkeypatch.setitem(gpu_check.SECTIONS, "bsseval", lambda c: {"ran": True})
    out = tmp_path / "gpu-check.json"
    assert main(["--cpu-dry-run", "--only", "bsseval", "--out", str(out)]) == 0
    s = json.loads(out.read_text())["sections"]
    assert s["bsseval"] == {"status": "ok", "ran": True, "section_s": s["bsseval"]["section_s"]}
    assert {r["status"] for name, r in s.items() if name != "bsseval"} == {"skipped"}


def test_an_error_is_recorded_and_the_next_section_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "synthesize", lambda *a, **k: tmp_path)

    def broken(c):
        raise ValueError("boom")

    monkeypatch.setitem(gpu_check.SECTIONS, "train", broken)
    monkeypatch.setitem(gpu_check.SECTIONS, "data_wait", lambda c: {"problems": ["slow"]})
    report = gpu_check.run_gpu_check("cpu", True, tmp_path, progress=lambda m: None, only=["train", "data_wait"])
    assert report["sections"]["train"]["status"] == "error" and "boom" in report["sections"]["train"]["error"]
    assert report["sections"]["data_wait"]["status"] == "wrong"
    assert report["failed"] == ["train", "data_wait"]
    assert "data_wait: WRONG: slow" in gpu_check.summary(report)


def test_sdpa_backends_are_named_from_kernel_names():
    assert gpu_check_model.classify(["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>"]) == ["flash"]
    assert gpu_check_model.classify(["fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "aten::mm"]) == ["efficient"]
    assert gpu_check_model.classify(["cudnn_generated_fort_native_sdpa_sm90_knob_7"]) == ["cudnn"]
    assert gpu_check_model.classify(["aten::_scaled_dot_product_attention_math", "ampere_bf16_gemm"]) == ["math"]
    assert gpu_check_model.classify(["sm90_xmma_gemm_bf16bf16_bf16f32", "cutlass_80_tensorop_gemm"]) == []


def test_failed_section_is_named_in_the_summary():
    report = {
        "machine": {"cpu": "x", "torch": "t", "load_average_1m": 0.1},
        "dry_run": True,
        "failed": ["study"],
        "sections": {"study": {"status": "error", "error": "ConfigError: bad", "section_s": 0.1}},
    }
    text = summary(report)
    assert "study: FAILED ConfigError: bad" in text and "FAILED sections: study" in text


def test_without_cuda_the_real_run_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main([]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


def test_each_section_is_printed_and_saved_as_it_finishes(tmp_path, monkeypatch, capsys):
    """A run cut off mid-way (a timeout's signal) leaves the sections done so far in the JSON."""

    def cut_off(*args):
        raise KeyboardInterrupt  # what the shell's timeout leaves: no summary at the end

    monkeypatch.setattr(gpu_check, "synthesize", lambda *a, **k: tmp_path)
    monkeypatch.setitem(gpu_check.SECTIONS, "train", lambda c: {"samples_per_s": 1.5})
    monkeypatch.setitem(gpu_check.SECTIONS, "data_wait", cut_off)
    out = tmp_path / "gpu-check.json"
    with pytest.raises(KeyboardInterrupt):
        main(["--cpu-dry-run", "--out", str(out)])
    assert json.loads(out.read_text())["sections"]["train"]["samples_per_s"] == 1.5
    assert "  train: samples_per_s 1.5" in capsys.readouterr().out
