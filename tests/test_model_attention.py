"""Sliced attention kernels: every kernel equals the plain definition, outputs and gradients.

The definition is the bench's reference line `looped_attention`: one attention call per slice in
a Python loop (autograd through it); the model's kernels fold slices and heads into one batch.
Relative error = max |a - b| / max |b|.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from samsnet_search.bench.attention import looped_attention
from samsnet_search.model import SlicedMultiHeadAttention, cpu_attention
from samsnet_search.model.sams_net import BMM_MAX_SLICE_FRAMES, FUSED_MAX_MAPS, KERNELS, kernel_for

REL_TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def outputs_and_grads(att, forward, x, grad_out):
    x = x.clone().requires_grad_()
    att.zero_grad(set_to_none=True)
    out = forward(x)
    out.backward(grad_out.to(out.dtype))
    return [out.detach(), x.grad, att.qkv.weight.grad, att.qkv.bias.grad]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("slices", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("frames", [11, 17, 24])  # odd lengths, and lengths that leave the last slice padded
@pytest.mark.parametrize("heads,channels", [(1, 4), (2, 8), (3, 5)])
def test_kernel_matches_the_definition(kernel, slices, frames, heads, channels):
    if kernel == "fused" and not cpu_attention.supported(torch.zeros(1)):
        pytest.skip("no C compiler here: the fused kernel cannot be built")
    torch.manual_seed(slices * 100 + frames)
    L = math.ceil(frames / slices)
    att = SlicedMultiHeadAttention(channels, heads, L, kernel=kernel)
    x = torch.randn(2, channels, 7, frames)
    grad_out = torch.randn(2, heads * channels, 7, frames)
    got = outputs_and_grads(att, att, x, grad_out)
    want = outputs_and_grads(att, lambda t: looped_attention(att, t), x, grad_out)
    for name, a, b in zip(("output", "grad x", "grad W_qkv", "grad b_qkv"), got, want):
        assert rel_err(a, b) < REL_TOL, f"{kernel}: {name} differs by {rel_err(a, b):.2e} (relative)"


@pytest.mark.parametrize("frames", [173, 259])  # 1 s at hop 256 and the paper's 6 s segment
@pytest.mark.parametrize("slices", [2, 4, 12, 16, 24])
def test_kernels_agree_at_real_frame_counts(frames, slices):
    torch.manual_seed(0)
    L = math.ceil(frames / slices)
    x = torch.randn(1, 4, 3, frames)
    grad_out = torch.randn(1, 8, 3, frames)
    names = KERNELS if cpu_attention.supported(torch.zeros(1)) else ("bmm", "sdpa")
    modules = {name: SlicedMultiHeadAttention(4, 2, L, kernel=name) for name in names}
    for module in modules.values():
        module.load_state_dict(modules["sdpa"].state_dict())
    want = outputs_and_grads(modules["sdpa"], modules["sdpa"], x, grad_out)
    for name in set(names) - {"sdpa"}:
        for a, b in zip(outputs_and_grads(modules[name], modules[name], x, grad_out), want):
            assert rel_err(a, b) < REL_TOL, name


def test_cpu_does_not_use_sdpa(monkeypatch):
    """On CPU, slices do not go through SDPA (its per-sequence overhead on short rows)."""

    def refuse(*args, **kwargs):
        raise AssertionError("scaled_dot_product_attention called on CPU")

    monkeypatch.setattr(F, "scaled_dot_product_attention", refuse)
    att = SlicedMultiHeadAttention(4, 2, 5)
    att(torch.randn(1, 4, 3, 13, requires_grad=True)).sum().backward()


def test_kernel_is_chosen_by_device_dtype_and_slice_length():
    x = torch.zeros(1, 4, 3, 13)
    assert kernel_for(x, 22) == ("fused" if cpu_attention.supported(x) else "bmm")  # eager float32 on CPU
    assert kernel_for(torch.zeros(1, FUSED_MAX_MAPS + 1, 3, 13), 22) == "bmm"  # MKL's GEMM wins at many maps
    assert kernel_for(x.double(), 22) == "bmm"  # the fused loop is float32 only
    assert kernel_for(x.double(), BMM_MAX_SLICE_FRAMES + 1) == "sdpa"  # SDPA's flash kernel wins on long rows
    assert kernel_for(torch.zeros(1, 4, 3, 13, device="meta"), 22) == "sdpa"  # not CPU (CUDA: fused SDPA kernels)


def test_traced_programs_do_not_use_the_fused_loop():
    """torch.export cannot trace a call into the compiled C kernel (ctypes): while it traces, the folded kernels run."""
    att = SlicedMultiHeadAttention(4, 2, 5).eval()
    x = torch.randn(1, 4, 3, 13)
    program = torch.export.export(att, (x,))
    assert rel_err(program.module()(x), att(x)) < REL_TOL


def test_unknown_kernel_is_named():
    with pytest.raises(ValueError, match="kernel must be one of \\['bmm', 'fused', 'sdpa'\\]"):
        SlicedMultiHeadAttention(4, 2, 5, kernel="flash")


def test_fully_padded_rows_stay_finite():
    """A last slice with one real frame: every query still has a key, no NaN from -inf rows."""
    torch.manual_seed(0)
    att = SlicedMultiHeadAttention(4, 1, 8)
    x = torch.randn(1, 4, 2, 17, requires_grad=True)  # slices [0,8) [8,16) [16,17)+7 padded keys
    out = att(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
