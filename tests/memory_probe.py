"""Measured CPU peak of Sams-Net training steps against `model.memory` (the table of docs/gpu-memory.md).

Run as a script (`python tests/memory_probe.py`), in a process of its own: glibc is told to map
every block above 16 KiB separately (MALLOC_MMAP_THRESHOLD_, set before Python starts), so that
freed tensors leave the resident set, and the peak resident set of one step (VmHWM, reset through
/proc/self/clear_refs) is the peak of live tensors. The attention runs through SDPA (the folded
path CUDA takes), with the key mask (today's code) or without it (no padding: the CUDA path once
issue 21 item 3 lands), and float32 (CPU autocast runs LayerNorm in bfloat16, CUDA's in float32,
so AMP is not measured here). Prints one JSON object per shape.
"""

from __future__ import annotations

import gc
import json
import re
import sys

import torch

from samsnet_search.engine.train import magnitude_loss
from samsnet_search.model import SamsNet, sams_net
from samsnet_search.model.memory import TrainingShape, tensor_bytes

# (batch, n_fft, frames, channels, heads, depth, slice_frames, grad_checkpoint, full_mask)
SHAPES = [
    (2, 128, 64, 16, 2, 2, 16, False, True),
    (2, 128, 64, 16, 2, 2, 16, False, False),
    (2, 128, 64, 16, 2, 2, 12, False, True),  # padded last slice
    (2, 256, 64, 32, 2, 2, 64, False, False),  # one slice
    (1, 256, 48, 32, 1, 3, 12, False, False),
    (2, 128, 66, 24, 3, 2, 11, False, True),
    (2, 128, 64, 16, 2, 2, 16, True, False),  # gradient checkpointing
    (2, 128, 64, 16, 2, 3, 12, True, True),
]


def _status(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def measure(batch, n_fft, frames, channels, heads, depth, slice_frames, checkpoint, full_mask) -> dict:
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
    )
    for block in model.blocks:
        block.attention.kernel = "sdpa"
    sdpa = sams_net.FOLDED_KERNELS["sdpa"]
    if not full_mask:  # nothing is padded in these shapes: no mask at all
        sams_net.FOLDED_KERNELS["sdpa"] = lambda qkv, keep, scale: sdpa(qkv, None, scale)
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
    )
    predicted = tensor_bytes(shape) - 3 * 4 * parameters  # weights and Adam's moments: in the baseline
    return {"shape": shape.__dict__, "measured": measured, "predicted": predicted, "error": predicted / measured - 1}


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)
    for s in SHAPES:
        print(json.dumps(measure(*s)), flush=True)
    sys.exit(0)
