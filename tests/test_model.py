"""Sams-Net model: shapes, slicing semantics, exact chunked inference, gradients, parameter count."""

import math

import pytest
import torch
import torch.nn.functional as F

from samsnet_search.bench.attention import looped_attention
from samsnet_search.config import DataConfig, ModelConfig
from samsnet_search.engine.separate import separate
from samsnet_search.model import SamsNet, SlicedMultiHeadAttention
from samsnet_search.model.info import macs_per_second, parameter_breakdown


def tiny(slices=4, seconds=1.0, **kw) -> SamsNet:
    cfg = ModelConfig(n_fft=256, hop_length=64, channels=4, heads=2, depth=2, slices=slices, **kw)
    return SamsNet(**cfg.resolved(int(seconds * 44100)).model_dump())


@pytest.mark.parametrize("slices", [1, 2, 3, 7])
@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("frames", [12, 13, 29])
def test_sliced_attention_matches_loop_over_slices(slices, heads, frames):
    torch.manual_seed(0)
    att = SlicedMultiHeadAttention(channels=5, heads=heads, slice_frames=math.ceil(12 / slices))
    x = torch.randn(2, 5, 6, frames)
    torch.testing.assert_close(att(x), looped_attention(att, x), atol=1e-5, rtol=1e-5)


def test_one_slice_is_plain_full_attention():
    torch.manual_seed(0)
    T = 20
    att = SlicedMultiHeadAttention(channels=4, heads=2, slice_frames=T)
    x = torch.randn(1, 4, 3, T)
    q, k, v = att.qkv(x).view(1, 3, 2, 4, 3, T).unbind(1)
    q, k, v = (t.permute(0, 1, 3, 4, 2) for t in (q, k, v))  # (B, h, F, T, d)
    full = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(d)
    torch.testing.assert_close(att(x), full.permute(0, 1, 4, 2, 3).reshape(1, 8, 3, T))


def test_changing_one_slice_leaves_other_slices_untouched():
    torch.manual_seed(0)
    att = SlicedMultiHeadAttention(channels=4, heads=2, slice_frames=5)
    x = torch.randn(1, 4, 3, 17)  # slices [0,5) [5,10) [10,15) [15,17)+pad
    y = x.clone()
    y[..., 5:10] = torch.randn(1, 4, 3, 5)
    a, b = att(x), att(y)
    torch.testing.assert_close(a[..., :5], b[..., :5])
    torch.testing.assert_close(a[..., 10:], b[..., 10:])
    assert not torch.allclose(a[..., 5:10], b[..., 5:10])


def test_padded_last_slice_ignores_padding():
    """A partial last slice gives the same output as attention over just its real frames."""
    torch.manual_seed(0)
    att = SlicedMultiHeadAttention(channels=4, heads=1, slice_frames=8)
    x = torch.randn(1, 4, 2, 11)  # last slice has 3 real frames, 5 padded
    short = SlicedMultiHeadAttention(channels=4, heads=1, slice_frames=3)
    short.load_state_dict(att.state_dict())
    torch.testing.assert_close(att(x)[..., 8:], short(x[..., 8:]))


@pytest.mark.parametrize("frames", [10, 16, 23, 64])
def test_shapes_and_mask_range(frames):
    model = tiny().eval()
    mag = torch.rand(2, 2, 129, frames)
    masks = model(mag)
    assert masks.shape == (2, 4, 2, 129, frames)
    assert masks.min() >= 0 and masks.max() <= 1


def test_separate_returns_audio_per_target():
    model = tiny().eval()
    audio = torch.randn(1, 2, 10_000)
    with torch.no_grad():
        est = model.separate(audio)
    assert est.shape == (1, 4, 2, 10_000)
    assert torch.isfinite(est).all()


def test_unit_masks_reconstruct_the_mixture():
    """mask = 1 with the mixture phase is the identity through STFT/ISTFT."""
    model = tiny()
    audio = torch.randn(1, 2, 8000)
    spec = model.spectrogram(audio)
    back = model.spectrogram.inverse(spec, 8000)
    torch.testing.assert_close(back, audio, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("w_o_scope", ["joined", "slice"])
@pytest.mark.parametrize("slices,chunk_slices", [(4, 1), (4, 3), (1, 1), (8, 2)])
def test_chunked_separation_equals_whole(slices, chunk_slices, w_o_scope):
    """`context_frames()` covers the receptive field (W^O per slice too): chunks cut by
    `engine.apply` give the whole result."""
    torch.manual_seed(0)
    model = tiny(slices=slices, seconds=0.2, w_o_scope=w_o_scope).eval()  # slice_frames = ceil(138 / slices)
    audio = torch.randn(1, 2, 44100 + 123)  # several slices and a partial last one
    with torch.no_grad():
        whole = model.separate(audio)[0].numpy()
    seconds = chunk_slices * model.slice_frames * model.spectrogram.hop_length / 44100
    chunked = separate(model, audio[0].numpy(), chunk_seconds=seconds)
    for k, target in enumerate(chunked):
        assert abs(chunked[target] - whole[k]).max() <= 1e-4, target


def test_gradients_flow_to_every_parameter():
    model = tiny(grad_checkpoint=True).train()
    mag = torch.rand(1, 2, 129, 30)
    model(mag).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain, ckpt = tiny(), tiny(grad_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    mag = torch.rand(1, 2, 129, 30)
    for m in (plain, ckpt):
        m.train()
        m(mag).square().mean().backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)


def test_slice_frames_fixed_from_training_segment():
    cfg = ModelConfig(slices=12).resolved(DataConfig().segment_samples)  # 6 s at hop 1024: 259 frames
    assert cfg.slice_frames == math.ceil(259 / 12) == 22


def test_slices_larger_than_segment_frames_is_an_error():
    with pytest.raises(ValueError, match="slices=300 is larger than the 259 STFT frames"):
        ModelConfig(slices=300).resolved(DataConfig().segment_samples)


def test_paper_config_parameter_count():
    """3 modules, 2 heads, 64 maps: our reading gives 1,886,024 (paper: 3.70M; see README)."""
    cfg = ModelConfig().resolved(DataConfig().segment_samples)
    info = parameter_breakdown(SamsNet(**cfg.model_dump()))
    assert info["parameters"] == 1_886_024
    assert info["layernorm_parameters"] == 6 * 2 * 64 * 2049
    assert macs_per_second(SamsNet(**cfg.model_dump())) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_forward_backward():
    model = tiny().cuda().train()
    mag = torch.rand(2, 2, 129, 40, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        masks = model(mag)
    masks.float().mean().backward()
    assert masks.shape == (2, 4, 2, 129, 40)
