"""`samsnet-search bench`: runs end to end and writes a well-formed report (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest

from samsnet_search.bench import NAMES, check_options
from samsnet_search.bench.attention import (
    AttentionSizes,
    ReferenceAttention,
    looped_attention,
    quickstart_sizes,
    sizes_for,
    step_cost,
)
from samsnet_search.bench.common import BenchError
from samsnet_search.cli import main


@pytest.mark.slow  # runs every benchmark at its smallest size: about 20 s idle, minutes under load
def test_bench_smoke_writes_finite_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    smoke_sizes = sizes_for(quick=True, device="cpu", smoke=True)[0]
    assert main(["bench", "--quick", "--smoke", "--threads", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "numpy", "ray", "device", "torch_threads"} <= set(report["machine"])
    assert report["machine"]["torch_threads"] == 2
    assert set(report["benchmarks"]) == {"attention", "train", "sdr", "export"}
    assert "search" in report["skipped"]  # a Ray study is full mode only
    for name, result in report["benchmarks"].items():
        assert result["sizes"], name
        assert result["figures"], name
        for key, value in result["figures"].items():
            assert isinstance(value, (int, float)) and math.isfinite(value), f"{name}.{key} = {value!r}"
    att = report["benchmarks"]["attention"]["figures"]
    for n in (1, 2, 8):
        wanted = {
            "attn_ms",
            "ref_ms",
            "speedup",
            "gflop",
            "mb_moved",
            "attn_gflops",
            "attn_gbps",
            "roofline_ms",
            "attn_of_roofline",
            "max_speedup",
            "attn_peak_mib",
        }
        assert {f"{w}_s{n}" for w in wanted} <= set(att)
        assert not any(k.startswith("ideal_ratio") for k in att)  # 1/slices is not the limit
    assert att["machine_matmul_gflops"] > 0 and att["machine_copy_gbps"] > 0
    assert att["gflop_s8"] == pytest.approx(step_cost(smoke_sizes, 8)["flops"] / 1e9)
    # The loop reference computes the same attention as the batched call.
    assert att["loop_max_abs_diff_s8"] < 1e-4 and att["loop_grad_max_abs_diff_s8"] < 1e-4
    assert 0 <= report["benchmarks"]["train"]["figures"]["quick_data_wait_share"] <= 1
    sdr = report["benchmarks"]["sdr"]["figures"]
    assert sdr["SDR_max_target_diff_db"] < 0.01 and sdr["SDR_nan_frames_match"] == 1.0
    printed = capsys.readouterr().out
    assert "attention step fwd+bwd" in printed and "roofline" in printed and "wrote" in printed


@pytest.mark.parametrize("slices", [1, 3, 5])
def test_looped_attention_matches_the_module(slices):
    import torch

    from samsnet_search.model import SlicedMultiHeadAttention

    torch.manual_seed(0)
    T = 23  # not a multiple of most slice lengths: the last slice is padded (module) / shorter (loop)
    module = SlicedMultiHeadAttention(channels=3, heads=2, slice_frames=math.ceil(T / slices))
    x = torch.randn(2, 3, 5, T)
    assert torch.allclose(module(x), looped_attention(module, x), atol=1e-5)


def test_reference_line_is_the_same_attention():
    import torch

    from samsnet_search.model import SlicedMultiHeadAttention

    torch.manual_seed(0)
    module = SlicedMultiHeadAttention(channels=4, heads=2, slice_frames=6)
    x = torch.randn(1, 4, 5, 23)  # last slice padded
    torch.testing.assert_close(ReferenceAttention(module)(x), module(x), atol=1e-5, rtol=1e-5)


def test_step_cost_counts_the_paper_shape():
    """FLOPs of the 12-slice paper step: projection, q k^T and p v, W^O; backward = 2x forward."""
    sizes = AttentionSizes(4096, 1024, 6.0, 64, 2, 3)
    rows = 2049 * 264  # 259 frames padded to 12 slices of 22
    seqs = 2049 * 12 * 2
    fwd = 2 * rows * 64 * 384 + 4 * seqs * 22 * 22 * 64 + 2 * 2049 * 259 * 128 * 9 * 64
    assert step_cost(sizes, 12)["flops"] == 3 * fwd


def test_quickstart_sizes_follow_the_study_file():
    import yaml

    from samsnet_search.bench.attention import QUICKSTART

    space = yaml.safe_load(QUICKSTART.read_text())
    sizes = quickstart_sizes()
    assert {s.bins for s in sizes} == {space["model"]["n_fft"] // 2 + 1}
    assert {s.batch for s in sizes} == {space["train"]["batch_size"]}
    assert set(sizes[0].slices) == {n for n in space["model"]["slices"]["choice"] if n > 1}


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
