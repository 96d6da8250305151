"""scripts/gpu-check.sh --cpu-dry-run: every section runs at tiny sizes and the summary names them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from samsnet_search.bench.gpu_check import main, summary

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"train", "attention", "bsseval", "separate", "study"}


@pytest.mark.slow  # five sections incl. a 2-trial Ray study: about a minute idle, minutes under load
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
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and not report["failed"]
    assert set(report["sections"]) == SECTIONS
    s = report["sections"]
    assert s["train"]["samples_per_s"] > 0 and 0 < s["train"]["attention_share"] <= 1
    assert set(s["attention"]["per_slices"]) == {"1", "4", "12"}
    assert s["attention"]["sdpa_backend_ms_s12"]["math"] > 0  # the math backend runs everywhere
    assert set(s["attention"]["sdpa_backend_ms_s12"]) == {"flash", "mem_efficient", "cudnn", "math"}
    assert "CPU path only" in s["bsseval"]["cuda_s"]
    assert s["separate"]["x_realtime"] > 0
    assert s["study"]["trials"] and sum(s["study"]["trials"].values()) == 2
    printed = proc.stdout
    assert "CPU DRY RUN" in printed and "all sections ran" in printed
    for name in SECTIONS:
        assert f"  {name}:" in printed


def test_failed_section_is_named_in_the_summary():
    report = {
        "machine": {"cpu": "x", "torch": "t", "load_average_1m": 0.1},
        "dry_run": True,
        "failed": ["study"],
        "sections": {"study": {"error": "ConfigError: bad", "section_s": 0.1}},
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
    from samsnet_search.bench import gpu_check

    def cut_off(*args):
        raise KeyboardInterrupt  # what the shell's timeout leaves: no summary at the end

    monkeypatch.setattr(gpu_check, "synthesize", lambda *a, **k: tmp_path)
    monkeypatch.setattr(gpu_check, "check_train", lambda *a: {"samples_per_s": 1.5})
    monkeypatch.setattr(gpu_check, "check_attention", cut_off)
    out = tmp_path / "gpu-check.json"
    with pytest.raises(KeyboardInterrupt):
        main(["--cpu-dry-run", "--out", str(out)])
    assert json.loads(out.read_text())["sections"]["train"]["samples_per_s"] == 1.5
    assert "  train: samples_per_s 1.5" in capsys.readouterr().out
