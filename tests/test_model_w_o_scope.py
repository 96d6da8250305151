"""`model.w_o_scope`: W^O over the joined slices (default) or inside each slice (paper eqs. 6, 8).

The per-slice reading is the paper's order (each slice's heads compressed by W^O, then the slices
joined); the default keeps every existing checkpoint and export unchanged. Both have the same
parameters, chunk exactly, and export.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from samsnet_search.config import DataConfig, ExperimentConfig, ModelConfig
from samsnet_search.delivery import export, export_folder
from samsnet_search.engine import checkpoint
from samsnet_search.model import SamsNet
from samsnet_search.model.sams_net import SamsModule


def tiny(w_o_scope: str, slices: int = 4, seconds: float = 0.2) -> SamsNet:
    cfg = ModelConfig(n_fft=256, hop_length=64, channels=4, heads=2, depth=2, slices=slices, w_o_scope=w_o_scope)
    return SamsNet(**cfg.resolved(int(seconds * 44100)).model_dump())


def test_default_is_joined_and_both_scopes_have_the_same_parameters():
    assert ModelConfig().w_o_scope == "joined"
    assert all(m.w_o_scope == "joined" for m in SamsNet(slice_frames=5).modules() if isinstance(m, SamsModule))
    joined, per_slice = tiny("joined"), tiny("slice")
    shapes = {k: v.shape for k, v in joined.state_dict().items()}
    assert shapes == {k: v.shape for k, v in per_slice.state_dict().items()}  # old weights load either way


def test_unknown_scope_is_refused_by_the_config_and_the_model():
    with pytest.raises(ValidationError, match="w_o_scope"):
        ModelConfig(w_o_scope="heads")
    with pytest.raises(ValueError, match=r"w_o_scope must be one of \['joined', 'slice'\], got 'heads'"):
        SamsModule(4, 1, 3, 5, 3, "relu", w_o_scope="heads")


@pytest.mark.parametrize("frames", [5, 12, 17])
def test_slice_scope_is_w_o_on_each_slice_then_joined(frames):
    """The module with the attention stubbed out (identity: its input as the heads' output) against
    the paper's equations written as a loop: W^O on each slice alone, slices joined, then the rest."""
    torch.manual_seed(0)
    module = SamsModule(
        channels=4, heads=1, bins=3, slice_frames=5, kernel_size=3, activation="relu", w_o_scope="slice"
    )
    module.attention = nn.Identity()
    x = torch.randn(2, 4, 3, frames)  # the last slice partial for 12 and 17
    with torch.no_grad():
        w_o = torch.cat([module.w_o(x[..., s : s + 5]) for s in range(0, frames, 5)], dim=-1)
        h = module.norm1(x + w_o)
        want = module.norm2(h + module.activation(module.pointwise(module.depthwise(h))))
        torch.testing.assert_close(module(x), want)
        module.w_o_scope = "joined"
        joined = module(x)
    if frames > 5:  # W^O's kernel reaches across slice edges only when joined
        assert not torch.allclose(joined, want)
    else:
        torch.testing.assert_close(joined, want)


# Chunked separation equals whole for both scopes: tests/test_model.py::test_chunked_separation_equals_whole.


@pytest.fixture(scope="module")
def exported_per_slice(tmp_path_factory):
    """An untrained per-slice model (n_fft 256, hop 128, 3 slices of 1 s: 115 frames each) saved as a
    checkpoint and exported; export needs no training."""
    torch.manual_seed(0)
    experiment = ExperimentConfig.model_validate(
        {
            "model": {"n_fft": 256, "hop_length": 128, "channels": 4, "heads": 2, "depth": 1, "slices": 3},
            "data": {"segment_seconds": 1.0},
        }
    )
    cfg = experiment.resolved_model().model_copy(update={"w_o_scope": "slice"})
    net = checkpoint.build_model(cfg)
    folder = tmp_path_factory.mktemp("ckpt")
    checkpoint.save(
        folder / checkpoint.BEST,
        {
            "experiment": {"data": DataConfig().model_dump(mode="json")},
            "model_config": cfg.model_dump(mode="json"),
            "model": net.state_dict(),
            "epoch": 0,
            "metrics": {},
        },
    )
    return folder, export.export_checkpoint(folder, tmp_path_factory.mktemp("export") / "best")


@pytest.mark.parametrize("frames", [2, 115, 116, 231])
def test_per_slice_export_matches_the_checkpoint_model(exported_per_slice, frames):
    folder, out = exported_per_slice
    net, _ = checkpoint.load_model(folder)
    assert net.blocks[0].w_o_scope == "slice"
    mag = torch.rand(2, 2, 129, frames, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        want = net(mag)
        assert (export_folder.load_exported(out)(mag) - want).abs().max() <= 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["masks"], {"mag": mag.numpy()})[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4
