"""Measured CPU peak of Sams-Net training steps against `model.memory` (the table of docs/gpu-memory.md).

Run as a script (`python tests/memory_probe.py`), in a process of its own: glibc is told to map
every block above 16 KiB separately (MALLOC_MMAP_THRESHOLD_, set before Python starts), so that
freed tensors leave the resident set, and the peak resident set of one step (VmHWM, reset through
/proc/self/clear_refs) is the peak of live tensors. The attention runs through SDPA (the folded
path CUDA takes), with the full-size key mask the attention passed before issue 21 item 3
(`_masked_sdpa`, what `memory.SDPA_FULL_MASK = True` counts) or without it (the model's own
kernel, which passes none), and float32 (CPU autocast runs LayerNorm in bfloat16, CUDA's in float32,
so AMP is not measured here). Prints one JSON object per shape.
"""

from __future__ import annotations

import gc
import json
import re
import sys

import torch
import torch.nn.functional as F

from samsnet_search.engine.train import magnitude_loss
from samsnet_search.model import SamsNet, sams_net
from samsnet_search.model.memory import TrainingShape, tensor_bytes

# (batch, n_fft, frames, channels, heads, depth, slice_frames, grad_checkpoint, full_mask[, w_o_scope])
SHAPES = [
    (2, 128, 64, 16, 2, 2, 16, False, True),
    (2, 128, 64, 16, 2, 2, 16, False, False),
    (2, 128, 64, 16, 2, 2, 12, False, True),  # padded last slice
    (2, 128, 64, 16, 2, 2, 12, False, False),  # padded, no mask: the last slice in a second call
    (2, 256, 64, 32, 2, 2, 64, False, False),  # one slice
    (1, 256, 48, 32, 1, 3, 12, False, False),
    (2, 128, 66, 24, 3, 2, 11, False, True),
    (2, 128, 64, 16, 2, 2, 16, True, False),  # gradient checkpointing
    (2, 128, 64, 16, 2, 3, 12, True, True),
    (2, 128, 64, 16, 2, 2, 12, False, False, "slice"),  # W^O inside each slice: its masked copies
]


def _status(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def _masked_sdpa(qkv, frames, scale: float) -> torch.Tensor:
    """The attention as it was: one SDPA call over every slice with a boolean key mask at full
    (S, h, L, L) shape (a stride-0 expand over heads and queries). qkv (N, i, L, 3, h, d) -> (N, T, h, d)."""
    N, i, L, _, h, d = qkv.shape
    q, k, v = (t.transpose(1, 2) for t in qkv.view(N * i, L, 3, h, d).unbind(2))  # (S, h, L, d)
    keep = (torch.arange(i * L) < frames).view(1, i, 1, 1, L).repeat(N, 1, 1, 1, 1).view(N * i, 1, 1, L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep.expand(N * i, h, L, L), scale=scale)
    return out.transpose(1, 2).reshape(N, i * L, h, d).narrow(1, 0, frames)


def measure(
    batch, n_fft, frames, channels, heads, depth, slice_frames, checkpoint, full_mask, w_o_scope="joined"
) -> dict:
    hop = n_fft // 4
    samples = (frames - 1) * hop  # torch.stft (center=True): `frames` frames
    model = SamsNet(
        slice_frames=slice_frames,
        n_fft=n_fft,
        hop_length=hop,
        channels=channels,
        heads=heads,
        depth=depth,
        grad_checkpoint=checkpoint,
        w_o_scope=w_o_scope,
    )
    for block in model.blocks:
        block.attention.kernel = "sdpa"
    sdpa = sams_net.FOLDED_KERNELS["sdpa"]
    if full_mask:  # the attention before issue 21 item 3; without it, the model's own kernel (no mask)
        sams_net.FOLDED_KERNELS["sdpa"] = _masked_sdpa
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        mixture, targets = torch.rand(batch, 2, samples), torch.rand(batch, 4, 2, samples)
        loss = magnitude_loss(model, mixture, targets, amp=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # Adam's moments exist from here on: they are in the baseline
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    step()
    measured = _status("VmHWM") - base
    sams_net.FOLDED_KERNELS["sdpa"] = sdpa
    parameters = sum(p.numel() for p in model.parameters())
    shape = TrainingShape(
        bins=n_fft // 2 + 1,
        frames=frames,
        batch=batch,
        channels=channels,
        heads=heads,
        depth=depth,
        slice_frames=slice_frames,
        parameters=parameters,
        samples=samples,
        grad_checkpoint=checkpoint,
        full_mask=full_mask,
        lse_align=1,  # CPU SDPA keeps exactly L logsumexp rows
        w_o_copies=model.kernel_size - 1 if w_o_scope == "slice" else 0,
    )
    predicted = tensor_bytes(shape) - 3 * 4 * parameters  # weights and Adam's moments: in the baseline
    return {"shape": shape.__dict__, "measured": measured, "predicted": predicted, "error": predicted / measured - 1}


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)
    for s in SHAPES:
        print(json.dumps(measure(*s)), flush=True)
    sys.exit(0)
