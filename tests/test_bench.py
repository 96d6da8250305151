"""`samsnet-search bench`: runs end to end and writes a well-formed report (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest

from samsnet_search.bench import NAMES, check_options
from samsnet_search.bench.attention import AttentionSizes, looped_attention
from samsnet_search.bench.common import BenchError
from samsnet_search.cli import main


@pytest.mark.slow  # runs every benchmark at its smallest size: about 20 s idle, minutes under load
def test_bench_smoke_writes_finite_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--smoke", "--threads", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "numpy", "ray", "device", "torch_threads"} <= set(report["machine"])
    assert report["machine"]["torch_threads"] == 2
    assert set(report["benchmarks"]) == {"attention", "train", "sdr"}
    assert "search" in report["skipped"]  # a Ray study is full mode only
    for name, result in report["benchmarks"].items():
        assert result["sizes"], name
        assert result["figures"], name
        for key, value in result["figures"].items():
            assert isinstance(value, (int, float)) and math.isfinite(value), f"{name}.{key} = {value!r}"
    att = report["benchmarks"]["attention"]["figures"]
    for n in (1, 2, 8):
        assert {f"attn_ms_s{n}", f"attn_peak_mib_s{n}", f"ideal_ratio_s{n}", f"attn_time_ratio_s{n}"} <= set(att)
    assert att["ideal_ratio_s8"] == pytest.approx(1 / 8)
    # The loop reference computes the same attention as the batched call.
    assert att["loop_max_abs_diff_s8"] < 1e-4 and att["loop_grad_max_abs_diff_s8"] < 1e-4
    assert 0 <= report["benchmarks"]["train"]["figures"]["quick_data_wait_share"] <= 1
    sdr = report["benchmarks"]["sdr"]["figures"]
    assert sdr["SDR_max_target_diff_db"] < 0.01 and sdr["SDR_nan_frames_match"] == 1.0
    printed = capsys.readouterr().out
    assert "sliced attention fwd+bwd" in printed and "wrote" in printed


@pytest.mark.parametrize("slices", [1, 3, 5])
def test_looped_attention_matches_the_module(slices):
    import torch

    from samsnet_search.model import SlicedMultiHeadAttention

    torch.manual_seed(0)
    T = 23  # not a multiple of most slice lengths: the last slice is padded (module) / shorter (loop)
    module = SlicedMultiHeadAttention(channels=3, heads=2, slice_frames=math.ceil(T / slices))
    x = torch.randn(2, 3, 5, T)
    assert torch.allclose(module(x), looped_attention(module, x), atol=1e-5)


def test_sizes_record_frames():
    sizes = AttentionSizes(4096, 1024, 6.0, 64, 2, 3)
    assert (sizes.bins, sizes.frames) == (2049, 259)  # the paper's 6 s segment


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "tpu", "only": None, "threads": None}, "--device must be cpu or cuda"),
        ({"device": "cpu", "only": ["nope"], "threads": None}, "unknown benchmark nope"),
        ({"device": "cpu", "only": None, "threads": 0}, "--threads must be >= 1"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(BenchError, match=message):
        check_options(**kwargs)


def test_bad_option_exit_code(capsys):
    assert main(["bench", "--only", "nope"]) == 2
    assert "valid: " + ", ".join(NAMES) in capsys.readouterr().err
