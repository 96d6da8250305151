"""Benchmark 1: sliced attention cost against slices, and the batched call against a loop.

For each slice count the attention step (`SlicedMultiHeadAttention`: Q/K/V 1x1 conv,
slicing, one batched SDPA call, un-slicing) runs forward+backward on one segment; its
median time and peak memory are reported beside the time at 1 slice and the ideal
1/slices (the score matrix, (B h F, i, L, L), shrinks by 1/slices; the convolutions and
layout copies do not). The whole model is measured the same way at `model_slices`.
A plain Python loop over slices (kept here only, as the reference) is checked to give the
same output and input gradient, and timed against the batched call.

Everything runs in one child process so that peak memory can be read from the resident
set (see `common`); `python -m samsnet_search.bench.attention ARGS_JSON` is that child.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from .common import MiB, peak_bytes, run_child, timed

SAMPLE_RATE = 44100


@dataclass
class AttentionSizes:
    """Shapes of one benchmark run; recorded in the JSON output."""

    n_fft: int
    hop_length: int
    seconds: float  # segment length: frames = 1 + seconds * 44100 // hop
    channels: int  # d_k feature maps
    heads: int
    depth: int  # Sams modules of the whole model
    batch: int = 1
    slices: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24)
    loop_slices: tuple[int, ...] = (12,)  # batched vs loop comparison
    model_slices: tuple[int, ...] = (1, 12)
    repeats: int = 3  # timed runs per case (the memory run before them is the warm-up)
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def frames(self) -> int:
        return 1 + int(round(self.seconds * SAMPLE_RATE)) // self.hop_length


def sizes_for(quick: bool, device: str, smoke: bool = False) -> list[AttentionSizes]:
    """The cases a run measures: smoke (seconds), quick (configs/tiny.yaml's sizes), full CPU (paper), CUDA (+60 s)."""
    if smoke:
        # Smallest sizes that still cut 0.5 s (44 frames) into up to 8 slices: checks that it runs.
        return [AttentionSizes(256, 128, 0.5, 2, 1, 1, slices=(1, 2, 8), loop_slices=(8,), model_slices=(2,),
                               repeats=1, label="smoke (256-point STFT, 2 maps, 0.5 s)")]
    if quick:
        # NON-PAPER: tiny.yaml's model (512-point STFT, 8 maps, 2 modules); 1.5 s at hop 256 gives
        # 259 frames, the frame count of the paper's 6 s segment at hop 1024.
        return [AttentionSizes(512, 256, 1.5, 8, 2, 2, label="quick (tiny.yaml sizes, 259 frames)")]
    if device.startswith("cuda"):
        return [
            AttentionSizes(4096, 1024, 6.0, 64, 2, 3, repeats=5, model_slices=(1, 4, 12, 24),
                           loop_slices=(4, 12, 24), label="paper config, 6 s"),
            AttentionSizes(4096, 1024, 60.0, 64, 2, 3, repeats=3, slices=(1, 4, 12, 24), model_slices=(12,),
                           loop_slices=(12,), label="paper config, 60 s"),
        ]  # fmt: skip
    # CPU, paper config at 6 s: one fwd+bwd of the attention step takes tens of seconds here,
    # of the whole model about a minute; one timed run each keeps the full bench under 15 min.
    return [AttentionSizes(4096, 1024, 6.0, 64, 2, 3, repeats=1, model_slices=(12,), label="paper config, 6 s")]


def looped_attention(module, x):
    """Reference: the same attention as `module(x)`, one SDPA call per slice in a Python loop.

    x: (B, d, F, T) -> (B, h d, F, T). Uses the module's own Q/K/V weights.
    """
    import torch
    import torch.nn.functional as F

    B, d, Fq, T = x.shape
    h, L = module.heads, module.slice_frames
    qkv = module.qkv(x).view(B, 3, h, d, Fq, T)  # (B, 3, h, d, F, T)
    outs = []
    for start in range(0, T, L):
        part = qkv[..., start : start + L]  # (B, 3, h, d, F, l), l <= L: the last slice is shorter
        q, k, v = part.permute(1, 0, 2, 4, 5, 3).reshape(3, B * h * Fq, part.shape[-1], d).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(d))  # (B h F, l, d)
        outs.append(out.view(B, h, Fq, -1, d))
    out = torch.cat(outs, dim=3)  # (B, h, F, T, d)
    return out.permute(0, 1, 4, 2, 3).reshape(B, h * d, Fq, T)


def _fwd_bwd(forward, inputs: list, grad_out):
    """A closure running forward + backward with fresh gradients each call."""

    def step() -> None:
        for t in inputs:
            t.grad = None
        out = forward()
        out.backward(grad_out)

    return step


def _measure(step, sizes: AttentionSizes, device: str) -> tuple[float, float]:
    """(median ms, peak MiB) of one fwd+bwd step; the memory run doubles as the warm-up."""
    peak = peak_bytes(step, device)
    t = timed(step, repeats=sizes.repeats, warmup=0, device=device)
    return t["median_s"] * 1e3, peak / MiB


def _attention_cases(sizes: AttentionSizes, device: str) -> dict[str, float]:
    import torch

    from ..model import SlicedMultiHeadAttention

    B, d, Fq, T = sizes.batch, sizes.channels, sizes.bins, sizes.frames
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, Fq, T, generator=gen).to(device).requires_grad_()
    grad_out = torch.randn(B, sizes.heads * d, Fq, T, generator=gen).to(device)
    figures: dict[str, float] = {}
    for n in sizes.slices:
        L = math.ceil(T / n)
        module = SlicedMultiHeadAttention(d, sizes.heads, L).to(device)
        params = [x, *module.parameters()]
        ms, mb = _measure(_fwd_bwd(lambda: module(x), params, grad_out), sizes, device)
        figures[f"attn_ms_s{n}"] = ms
        figures[f"attn_peak_mib_s{n}"] = mb
        # Score matrix of one head if materialized: (B h F, i, L, L) float32.
        figures[f"attn_scores_mib_s{n}"] = B * sizes.heads * Fq * math.ceil(T / L) * L * L * 4 / MiB
        if n in sizes.loop_slices:
            figures.update(_loop_case(module, x, grad_out, params, sizes, device, n, ms))
        del module, params
    base_ms, base_mb = figures[f"attn_ms_s{sizes.slices[0]}"], figures[f"attn_peak_mib_s{sizes.slices[0]}"]
    for n in sizes.slices:
        figures[f"attn_time_ratio_s{n}"] = figures[f"attn_ms_s{n}"] / base_ms
        figures[f"attn_mem_ratio_s{n}"] = figures[f"attn_peak_mib_s{n}"] / base_mb if base_mb > 0 else 0.0
        figures[f"ideal_ratio_s{n}"] = sizes.slices[0] / n
    return figures


def _loop_case(module, x, grad_out, params, sizes, device, n, batched_ms) -> dict[str, float]:
    """Loop reference: same output and input gradient as the batched call? and its time."""
    import torch

    with torch.no_grad():
        diff = (module(x) - looped_attention(module, x)).abs().max().item()
    grads = []
    for fn in (module, lambda t: looped_attention(module, t)):
        x.grad = None
        fn(x).backward(grad_out)
        grads.append(x.grad.clone())
    grad_diff = (grads[0] - grads[1]).abs().max().item()
    loop_ms, _ = _measure(_fwd_bwd(lambda: looped_attention(module, x), params, grad_out), sizes, device)
    return {
        f"loop_ms_s{n}": loop_ms,
        f"loop_over_batched_s{n}": loop_ms / batched_ms,
        f"loop_max_abs_diff_s{n}": diff,
        f"loop_grad_max_abs_diff_s{n}": grad_diff,
    }


def _model_cases(sizes: AttentionSizes, device: str) -> dict[str, float]:
    import torch

    from ..model import SamsNet

    B, Fq, T, C = sizes.batch, sizes.bins, sizes.frames, 2
    gen = torch.Generator().manual_seed(1)
    mag = torch.rand(B, C, Fq, T, generator=gen).to(device)
    grad_out = torch.randn(B, 4, C, Fq, T, generator=gen).to(device)
    figures: dict[str, float] = {}
    for n in sizes.model_slices:
        model = SamsNet(slice_frames=math.ceil(T / n), n_fft=sizes.n_fft, hop_length=sizes.hop_length,
                        audio_channels=C, channels=sizes.channels, heads=sizes.heads, depth=sizes.depth).to(device)  # fmt: skip
        params = list(model.parameters())
        ms, mb = _measure(_fwd_bwd(lambda: model(mag), params, grad_out), sizes, device)
        figures[f"model_ms_s{n}"] = ms
        figures[f"model_peak_mib_s{n}"] = mb
        del model, params
    return figures


def measure(sizes: AttentionSizes, device: str, threads: int) -> dict[str, float]:
    """All figures of one size (runs in the child process)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return {**_attention_cases(sizes, device), **_model_cases(sizes, device)}


def _sizes_record(sizes: AttentionSizes) -> dict[str, Any]:
    out = asdict(sizes)
    out.update(bins=sizes.bins, frames=sizes.frames, slice_frames={n: math.ceil(sizes.frames / n) for n in sizes.slices})
    return out


def run(quick: bool, device: str, threads: int, smoke: bool = False) -> dict[str, Any]:
    """Benchmark entry: {"sizes": [...], "figures": {...}, "notes": [...]}. Figures of the
    second and later sizes carry a `c<index>_` prefix (`c1_attn_ms_s12`)."""
    figures: dict[str, float] = {}
    records = []
    for index, sizes in enumerate(sizes_for(quick, device, smoke)):
        args = {"sizes": asdict(sizes), "device": device, "threads": threads}
        # A guard against a hung child, not a budget: the paper-size cases take minutes on a busy CPU.
        result = run_child(__name__, args, timeout=7200)
        prefix = "" if index == 0 else f"c{index}_"
        figures.update({prefix + k: v for k, v in result.items()})
        records.append(_sizes_record(sizes))
    memory = ("torch.cuda.max_memory_allocated delta (tensor bytes)" if device.startswith("cuda")
              else "resident-set high-water-mark delta in a child process (VmHWM, glibc mmap threshold 64 KiB)")  # fmt: skip
    notes = [f"peak memory: {memory}", "times: median of fwd+bwd runs after one warm-up (the memory run)"]
    return {"sizes": records, "figures": figures, "notes": notes}


def _child_main(argv: list[str]) -> None:
    args = json.loads(argv[0])
    raw = args["sizes"]
    for key in ("slices", "loop_slices", "model_slices"):
        raw[key] = tuple(raw[key])
    sizes = AttentionSizes(**raw)
    print(json.dumps(measure(sizes, args["device"], int(args["threads"]))))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
