"""The SDPA attention path as CUDA wants it (issue 21, item 4): never a mask, the same numbers.

A boolean mask rules out CUDA's flash kernel and is expanded to a full (S, h, L, L) tensor kept
for backward. These tests watch every `scaled_dot_product_attention` call the model makes, and
compare outputs and gradients with a copy of the masked implementation the model used before.
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from samsnet_search.delivery import export
from samsnet_search.model import SamsNet, SlicedMultiHeadAttention, sams_net

ABS_TOL = 1e-5


def masked_reference(att: SlicedMultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """The model's SDPA path before issue 21: padded slices, one call, a full-size boolean key mask."""
    B, d, Fq, T = x.shape
    h, L = att.heads, att.slice_frames
    i = (T + L - 1) // L
    rows = F.pad(x, (0, i * L - T)).permute(0, 2, 3, 1)  # (B, F, iL, d)
    qkv = F.linear(rows, att.qkv.weight.view(3 * h * d, d), att.qkv.bias).view(B * Fq * i, L, 3, h, d)
    keep = (torch.arange(i * L) < T).view(1, i, 1, L).repeat(B * Fq, 1, 1, 1).view(-1, 1, L)  # (S, 1, L)
    S = qkv.shape[0]
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (S, h, L, d)
    mask = keep.view(S, 1, 1, L).expand(S, h, L, L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(d)).transpose(1, 2)
    return out.reshape(B, Fq, i * L, h * d).narrow(2, 0, T).permute(0, 3, 1, 2)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every SDPA call's (q shape, attn_mask) while the test runs."""
    calls = []
    real = F.scaled_dot_product_attention

    def watched(q, k, v, attn_mask=None, **kw):
        calls.append((tuple(q.shape), attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", watched)
    return calls


def outputs_and_grads(att, forward, x, grad_out):
    x = x.clone().requires_grad_()
    att.zero_grad(set_to_none=True)
    out = forward(x)
    out.backward(grad_out)
    return [out.detach(), x.grad, att.qkv.weight.grad, att.qkv.bias.grad]


@pytest.mark.parametrize("slices", [1, 2, 3, 4, 5, 8, 12, 16])
@pytest.mark.parametrize("frames", [7, 11, 24, 37])  # odd lengths; most leave the last slice padded
@pytest.mark.parametrize("heads,channels", [(1, 4), (2, 8), (3, 5)])
def test_sdpa_path_equals_the_masked_one_without_a_mask(slices, frames, heads, channels, sdpa_calls):
    if slices > frames:
        pytest.skip("more slices than frames is a validation error")
    torch.manual_seed(slices * 100 + frames)
    L = math.ceil(frames / slices)
    att = SlicedMultiHeadAttention(channels, heads, L, kernel="sdpa")
    x = torch.randn(2, channels, 5, frames)
    grad_out = torch.randn(2, heads * channels, 5, frames)
    got = outputs_and_grads(att, att, x, grad_out)
    assert sdpa_calls and all(mask is None for _, mask in sdpa_calls), "the model passed SDPA a mask"
    want = outputs_and_grads(att, lambda t: masked_reference(att, t), x, grad_out)
    for name, a, b in zip(("output", "grad x", "grad W_qkv", "grad b_qkv"), got, want):
        diff = (a - b).abs().max().item()
        assert diff < ABS_TOL, f"{name} differs by {diff:.2e} at {slices} slices, {frames} frames"


@pytest.mark.parametrize("frames,calls", [(24, 1), (23, 2)])
def test_one_call_unless_the_last_slice_is_padded(frames, calls, sdpa_calls):
    """Full slices only: one call. A padded last slice: a second call on its own frames only."""
    att = SlicedMultiHeadAttention(4, 2, 6, kernel="sdpa")  # 4 slices of 6 frames
    with torch.no_grad():
        att(torch.randn(1, 4, 3, frames))
    assert len(sdpa_calls) == calls
    assert sdpa_calls[0][0] == (3 * 4, 2, 6, 4)  # (B F i, h, L, d): every slice in one batch
    if calls == 2:
        assert sdpa_calls[1][0] == (3, 2, 23 - 3 * 6, 4)  # (B F, h, frames of the last slice, d)


def test_torch_floor_admits_no_sdpa_that_fails_on_large_batches():
    """S = batch x bins x slices is 98k-393k sequences in a paper trial; CUDA's memory-efficient SDPA
    failed above 65,535 until about torch 2.8 (pytorch#146704), so the floor is the validated version.
    The flash kernel still does: the model splits the batch for it (`sams_net.SDPA_MAX_BATCH`)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as f:
        deps = [Requirement(d) for d in tomllib.load(f)["project"]["dependencies"]]
    (torch_req,) = [r for r in deps if r.name == "torch"]
    floors = [Version(s.version) for s in torch_req.specifier if s.operator == ">="]
    assert floors and min(floors) >= Version("2.8"), f"pyproject.toml: {torch_req} admits torch < 2.8"
    assert Version(torch.__version__.split("+")[0]) in torch_req.specifier


@pytest.fixture
def sdpa_limit(monkeypatch):
    """set(limit): SDPA calls on the CPU take at most `limit` sequences, as on CUDA at 65,535."""

    def set_limit(limit: int | None) -> None:
        monkeypatch.setattr(sams_net, "SDPA_MAX_BATCH", {} if limit is None else {"cpu": limit})

    return set_limit


@pytest.mark.parametrize("frames", [24, 23])  # full slices; a padded last slice (a second, shorter call)
def test_a_batch_above_the_limit_is_split_with_the_same_outputs_and_gradients(frames, sdpa_calls, sdpa_limit):
    """S = B F i = 2 x 5 x 4 = 40 sequences (and a tail call of B F = 10) in slices of at most 7."""
    torch.manual_seed(frames)
    att = SlicedMultiHeadAttention(4, 2, 6, kernel="sdpa")  # 4 slices of 6 frames
    x = torch.randn(2, 4, 5, frames)
    grad_out = torch.randn(2, 2 * 4, 5, frames)
    sdpa_limit(None)
    whole = outputs_and_grads(att, att, x, grad_out)
    assert max(shape[0] for shape, _ in sdpa_calls) == 40
    sdpa_calls.clear()
    sdpa_limit(7)
    split = outputs_and_grads(att, att, x, grad_out)
    batches = [shape[0] for shape, _ in sdpa_calls]
    assert max(batches) <= 7 and sum(batches) == 40 + (10 if frames % 6 else 0)
    for name, a, b in zip(("output", "grad x", "grad W_qkv", "grad b_qkv"), split, whole):
        torch.testing.assert_close(a, b, rtol=0, atol=ABS_TOL, msg=name)


def test_the_cpu_takes_any_batch_in_one_call(sdpa_calls):
    """The limit is CUDA's: on the CPU a batch above 65,535 sequences is one call."""
    att = SlicedMultiHeadAttention(1, 1, 2, kernel="sdpa")
    with torch.no_grad():
        att(torch.randn(1, 1, 33_000, 4))  # S = B F i = 66,000 sequences of 2 frames
    assert [shape[0] for shape, _ in sdpa_calls] == [66_000]


def test_export_traces_one_call_where_eager_would_split(sdpa_limit):
    """The number of slices depends on the frame count, which an exported program keeps dynamic:
    torch.export traces the single call even where the device has a limit."""
    net = SamsNet(slice_frames=11, n_fft=256, hop_length=128, channels=4, heads=2, depth=1).eval()
    audio = torch.randn(2, 2, 128 * 40)
    with torch.no_grad():
        mag = net.spectrogram(audio).abs()
    sdpa_limit(5)  # far below the example's B F i sequences
    programs = export.export_programs(net, mag, audio)
    calls = [sum("scaled_dot_product_attention" in str(n.target) for n in p.graph.nodes) for p in programs]
    assert calls == [2, 2]  # one Sams module: every slice, then the padded last slice (a symbolic T takes both)
