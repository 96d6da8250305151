"""Benchmark 1: the sliced attention step at its real cost, against this machine's roofline.

The attention step is what one Sams module spends on attention: the Q/K/V projection (1x1
conv), scores, softmax, values and W^O (kxk conv back to d maps), forward + backward, on one
batch of segments. For each shape and slice count it is timed twice, side by side (runs
interleaved): the model's current attention (`attn_*`, kernel chosen by device) and the
implementation it replaced (`ref_*`: one SDPA call on strided views, kept verbatim below as
`ReferenceAttention`). Beside the times:

* FLOPs and bytes moved per call (analytic, fwd+bwd). FLOPs: the projection, q k^T, p v
  and W^O as 2 * multiply-adds, backward counted as twice the forward. Bytes: every tensor
  the step must write and read back at least once (x, q/k/v, the L x L probabilities, the
  heads' output, W^O's output), forward and the twice-as-large backward, float32.
* achieved GFLOPS and GB/s, and the roofline bound max(FLOPs / matmul peak, bytes / copy
  bandwidth) with both ceilings measured in the same run (`common.machine_roofline`).
* `convs_ms`: W^O alone (fwd+bwd), with the Q/K/V projection where the model's kernel leaves
  it outside (the fused CPU kernel projects in its loop). No attention kernel changes W^O, so
  ref_ms / convs_ms bounds the speed-up any kernel can give at that shape.

A Python loop over slices (`looped_attention`) checks that the batched call computes the
same attention. The whole model is timed at `model_slices`. Everything runs in one child
process (times) and again in one set up to read peak memory from the resident set (see `common`);
`python -m samsnet_search.bench.attention ARGS_JSON` is that child.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from ..config import SAMPLE_RATE, read_yaml
from ..model import SamsNet, SlicedMultiHeadAttention
from ..model.sams_net import kernel_for
from .common import MiB, machine_roofline, peak_bytes, run_child, timed_side_by_side

QUICKSTART = Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml"


@dataclass
class AttentionSizes:
    """Shapes of one benchmark run; recorded in the JSON output."""

    n_fft: int
    hop_length: int
    seconds: float  # segment length: frames = 1 + seconds * SAMPLE_RATE // hop
    channels: int  # d_k feature maps
    heads: int
    depth: int  # Sams modules of the whole model
    batch: int = 1
    slices: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24)
    loop_slices: tuple[int, ...] = (12,)  # batched vs loop comparison
    model_slices: tuple[int, ...] = (1, 12)
    repeats: int = 3  # timed runs per case and line (one warm-up each before them)
    kernel_size: int = 3  # W^O
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def frames(self) -> int:
        return 1 + int(round(self.seconds * SAMPLE_RATE)) // self.hop_length


def quickstart_sizes(repeats: int = 3) -> list[AttentionSizes]:
    """The quickstart study's trial shapes (read from search_spaces/quickstart.yaml, so they follow
    its tuning): its STFT, segment and batch, every slice choice, and the smallest and largest
    (maps, heads) it can draw."""
    space = read_yaml(QUICKSTART)
    model, data, train = space["model"], space["data"], space["train"]

    def choices(value: Any) -> list[int]:
        return sorted(value["choice"]) if isinstance(value, dict) else [value]

    slices = tuple(n for n in choices(model["slices"]) if n > 1) or (1,)
    pairs = [
        (min(choices(model["channels"])), min(choices(model["heads"]))),
        (max(choices(model["channels"])), max(choices(model["heads"]))),
    ]
    return [
        AttentionSizes(
            model["n_fft"],
            model["hop_length"],
            data["segment_seconds"],
            d,
            h,
            2,
            batch=train["batch_size"],
            slices=slices,
            loop_slices=(max(slices),),
            model_slices=(max(slices),),
            repeats=repeats,
            label=f"quickstart trial, {d} maps, {h} heads",
        )
        for d, h in dict.fromkeys(pairs)
    ]


def paper_sizes(repeats: int, slices: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24)) -> AttentionSizes:
    return AttentionSizes(
        4096,
        1024,
        6.0,
        64,
        2,
        3,
        slices=slices,
        repeats=repeats,
        model_slices=(12,),
        loop_slices=(12,),
        label="paper config, 6 s",
    )


def sizes_for(quick: bool, device: str, smoke: bool = False) -> list[AttentionSizes]:
    """The cases a run measures: smoke (seconds), quick (quickstart shapes), full (+ paper shapes)."""
    if smoke:
        # Smallest sizes that still cut 0.5 s (44 frames) into up to 8 slices: checks that it runs.
        return [
            AttentionSizes(
                256,
                128,
                0.5,
                2,
                1,
                1,
                slices=(1, 2, 8),
                loop_slices=(8,),
                model_slices=(2,),
                repeats=1,
                label="smoke (256-point STFT, 2 maps, 0.5 s)",
            )
        ]
    if quick:
        return quickstart_sizes()
    if device.startswith("cuda"):
        return [paper_sizes(repeats=10, slices=(1, 2, 4, 8, 12, 16, 24))]
    # CPU: one fwd+bwd of the paper-size step takes seconds here; one timed run per line.
    return [*quickstart_sizes(repeats=5), paper_sizes(repeats=1)]


class ReferenceAttention:
    """The sliced attention as it was before the CPU kernel (the bench's reference line):
    one SDPA call on strided views, with a full-shape boolean mask. Shares `module`'s weights.
    x: (B, d, F, T) -> (B, h d, F, T)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        m = self.module
        B, d, Fq, T = x.shape
        h, L = m.heads, m.slice_frames
        i = math.ceil(T / L)
        pad = i * L - T
        rows = F.pad(x, (0, pad)).permute(0, 2, 3, 1)  # (B, F, iL, d)
        qkv = F.linear(rows, m.qkv.weight.view(3 * h * d, d), m.qkv.bias)
        q, k, v = (t.transpose(1, 2) for t in qkv.view(B * Fq * i, L, 3, h, d).unbind(2))  # (B F i, h, L, d)
        mask = None
        if pad:
            keep = torch.ones(i, L, dtype=torch.bool, device=x.device)
            keep[-1, L - pad :] = False
            mask = keep.view(1, i, 1, 1, L).expand(B * Fq, i, 1, L, L).reshape(B * Fq * i, 1, L, L).expand(-1, h, L, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(d))
        out = out.transpose(1, 2).reshape(B, Fq, i * L, h * d)[:, :, :T]  # (B, F, T, h d)
        return out.permute(0, 3, 1, 2)


@contextlib.contextmanager
def reference_attention(model) -> Iterator[None]:
    """Within the block, every Sams module of `model` runs `ReferenceAttention` (same weights)."""
    saved = [block.attention.forward for block in model.blocks]
    try:
        for block in model.blocks:
            block.attention.forward = ReferenceAttention(block.attention)
        yield
    finally:
        for block, forward in zip(model.blocks, saved):
            block.attention.forward = forward


def looped_attention(module, x):
    """Reference: the same attention as `module(x)`, one SDPA call per slice in a Python loop.

    x: (B, d, F, T) -> (B, h d, F, T). Uses the module's own Q/K/V weights.
    """
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


def step_cost(sizes: AttentionSizes, slices: int) -> dict[str, float]:
    """Analytic FLOPs and bytes of one fwd+bwd attention step (see the module docstring)."""
    B, d, h, Fq, T, k = sizes.batch, sizes.channels, sizes.heads, sizes.bins, sizes.frames, sizes.kernel_size
    L = math.ceil(T / slices)
    Tp = math.ceil(T / L) * L  # frames padded to whole slices
    seqs = B * Fq * (Tp // L) * h  # sequences of L frames
    fwd_flops = 2 * B * Fq * Tp * d * 3 * h * d + 2 * 2 * seqs * L * L * d + 2 * B * Fq * T * h * d * k * k * d
    x, qkv, probs, heads_out, y = (
        B * d * Fq * T,
        3 * h * d * B * Fq * Tp,
        seqs * L * L,
        h * d * B * Fq * T,
        B * d * Fq * T,
    )
    fwd_bytes = 4 * (x + 2 * qkv + 2 * probs + 2 * heads_out + y)
    return {"flops": 3 * fwd_flops, "bytes": 3 * fwd_bytes}


def _fwd_bwd(forward, inputs: list, grad_out):
    """A closure running forward + backward with fresh gradients each call."""

    def step() -> None:
        for t in inputs:
            t.grad = None
        out = forward()
        out.backward(grad_out)

    return step


def _attention_cases(sizes: AttentionSizes, device: str, roof: dict[str, float], memory: bool) -> dict[str, float]:
    B, d, h, Fq, T = sizes.batch, sizes.channels, sizes.heads, sizes.bins, sizes.frames
    gen = torch.Generator().manual_seed(0)
    # In the layout a module's input has in the model (FrameLayerNorm's output: (B, T, d, F) memory).
    x = torch.randn(B, T, d, Fq, generator=gen).to(device).permute(0, 2, 3, 1).requires_grad_()
    grad_y = torch.randn(B, d, Fq, T, generator=gen).to(device)
    pad = sizes.kernel_size // 2
    figures: dict[str, float] = {}
    for n in sizes.slices:
        module = SlicedMultiHeadAttention(d, h, math.ceil(T / n)).to(device)
        w_o = torch.nn.Conv2d(h * d, d, sizes.kernel_size, padding=pad).to(device)
        reference = ReferenceAttention(module)
        rows = x.detach().permute(0, 2, 3, 1).requires_grad_()
        # W^O's input as the kernels hand it over: channels-last strides.
        heads_out = torch.randn(B, Fq, T, h * d, generator=gen).to(device).permute(0, 3, 1, 2).requires_grad_()
        grad_qkv = torch.randn(B, Fq, T, 3 * h * d, generator=gen).to(device)
        steps = _attention_steps(module, w_o, reference, x, grad_y, rows, heads_out, grad_qkv)
        if memory:
            figures[f"attn_peak_mib_s{n}"] = peak_bytes(steps["attn"], device) / MiB
            continue
        times = timed_side_by_side(steps, repeats=sizes.repeats, device=device)
        cost = step_cost(sizes, n)
        figures[f"gflop_s{n}"] = cost["flops"] / 1e9
        figures[f"mb_moved_s{n}"] = cost["bytes"] / 1e6
        bound_s = max(cost["flops"] / (roof["matmul_gflops"] * 1e9), cost["bytes"] / (roof["copy_gbps"] * 1e9))
        figures[f"roofline_ms_s{n}"] = bound_s * 1e3
        for line in ("ref", "attn", "convs"):
            figures[f"{line}_ms_s{n}"] = times[line]["median_s"] * 1e3
            figures[f"{line}_cpu_ms_s{n}"] = times[line]["cpu_s"] * 1e3
        for line in ("ref", "attn"):
            seconds = times[line]["median_s"]
            figures[f"{line}_gflops_s{n}"] = cost["flops"] / seconds / 1e9
            figures[f"{line}_gbps_s{n}"] = cost["bytes"] / seconds / 1e9
            figures[f"{line}_of_roofline_s{n}"] = bound_s / seconds
        figures[f"speedup_s{n}"] = times["ref"]["median_s"] / times["attn"]["median_s"]
        figures[f"cpu_speedup_s{n}"] = times["ref"]["cpu_s"] / max(times["attn"]["cpu_s"], 1e-9)
        figures[f"max_speedup_s{n}"] = times["ref"]["median_s"] / times["convs"]["median_s"]
        if n in sizes.loop_slices:
            figures.update(_loop_case(module, x, n))
        module = w_o = reference = steps = None  # freed before the next size allocates
    return figures


def convs(module, w_o, rows, x, heads_out, grad_qkv, grad_y) -> None:
    """Forward+backward of the part of the step no attention kernel changes: W^O, and the
    folded kernels' Q/K/V projection (a matmul over (B, F, T, d) rows; the fused kernel
    projects inside its loop)."""
    if kernel_for(x, module.slice_frames) != "fused":
        F.linear(rows, module.qkv.weight.view(-1, module.channels), module.qkv.bias).backward(grad_qkv)
    w_o(heads_out).backward(grad_y)


def _attention_steps(module, w_o, reference, x, grad_y, rows, heads_out, grad_qkv) -> dict[str, Callable[[], None]]:
    """Forward+backward of the attention step, its reference, and the convolutions alone."""
    params = [x, *module.parameters(), *w_o.parameters()]
    return {
        "attn": _fwd_bwd(lambda: w_o(module(x)), params, grad_y),
        "ref": _fwd_bwd(lambda: w_o(reference(x)), params, grad_y),
        # The part no attention kernel changes: the projection and W^O on their own.
        "convs": lambda: convs(module, w_o, rows, x, heads_out, grad_qkv, grad_y),
    }


def _loop_case(module, x, n) -> dict[str, float]:
    """Loop reference: same output and input gradient as the batched call?"""
    with torch.no_grad():
        diff = (module(x) - looped_attention(module, x)).abs().max().item()
    grad_out = torch.randn(x.shape[0], module.heads * module.channels, *x.shape[2:], device=x.device)
    grads = []
    for fn in (module, lambda t: looped_attention(module, t)):
        x.grad = None
        fn(x).backward(grad_out)
        grads.append(x.grad.clone())
    x.grad = None
    return {f"loop_max_abs_diff_s{n}": diff, f"loop_grad_max_abs_diff_s{n}": (grads[0] - grads[1]).abs().max().item()}


def _model_cases(sizes: AttentionSizes, device: str, memory: bool) -> dict[str, float]:
    B, Fq, T, C = sizes.batch, sizes.bins, sizes.frames, 2
    gen = torch.Generator().manual_seed(1)
    mag = torch.rand(B, C, Fq, T, generator=gen).to(device)
    grad_out = torch.randn(B, 4, C, Fq, T, generator=gen).to(device)
    figures: dict[str, float] = {}
    for n in sizes.model_slices:
        model = SamsNet(
            slice_frames=math.ceil(T / n),
            n_fft=sizes.n_fft,
            hop_length=sizes.hop_length,
            audio_channels=C,
            channels=sizes.channels,
            heads=sizes.heads,
            depth=sizes.depth,
        ).to(device)
        new, old = _model_steps(model, mag, grad_out)

        if memory:
            figures[f"model_peak_mib_s{n}"] = peak_bytes(new, device) / MiB
            continue
        times = timed_side_by_side({"new": new, "ref": old}, repeats=sizes.repeats, device=device)
        figures[f"model_ms_s{n}"] = times["new"]["median_s"] * 1e3
        figures[f"model_ref_ms_s{n}"] = times["ref"]["median_s"] * 1e3
        figures[f"model_speedup_s{n}"] = times["ref"]["median_s"] / times["new"]["median_s"]
        model = new = old = None  # freed before the next size allocates
    return figures


def _model_steps(model, mag, grad_out) -> tuple[Callable[[], None], Callable[[], None]]:
    """Forward+backward of the whole model, and the same with the reference attention swapped in."""
    new = _fwd_bwd(lambda: model(mag), list(model.parameters()), grad_out)

    def old() -> None:
        with reference_attention(model):
            new()

    return new, old


def sdpa_backends(device: str) -> list[str]:
    """The SDPA backends this device has enabled (CUDA: flash, memory-efficient, cuDNN, math)."""
    if not device.startswith("cuda"):
        return ["cpu (flash attention for CPU / math)"]
    cuda = torch.backends.cuda
    enabled = {
        "flash": cuda.flash_sdp_enabled(),
        "mem_efficient": cuda.mem_efficient_sdp_enabled(),
        "cudnn": cuda.cudnn_sdp_enabled(),
        "math": cuda.math_sdp_enabled(),
    }
    return [name for name, on in enabled.items() if on]


def measure(
    sizes: AttentionSizes, device: str, threads: int, roof: dict[str, float], memory: bool = False
) -> dict[str, float]:
    """All figures of one size (runs in a child process): times, or (memory) peak memory only."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return {**_attention_cases(sizes, device, roof, memory), **_model_cases(sizes, device, memory)}


def _sizes_record(sizes: AttentionSizes) -> dict[str, Any]:
    out = asdict(sizes)
    out.update(
        bins=sizes.bins, frames=sizes.frames, slice_frames={n: math.ceil(sizes.frames / n) for n in sizes.slices}
    )
    return out


def run(quick: bool, device: str, threads: int, smoke: bool = False) -> dict[str, Any]:
    """Benchmark entry: {"sizes": [...], "figures": {...}, "notes": [...]}. Figures of the
    second and later sizes carry a `c<index>_` prefix (`c1_attn_ms_s12`); the machine's
    ceilings are `machine_matmul_gflops` and `machine_copy_gbps`."""
    figures: dict[str, float] = {}
    records = []
    for index, sizes in enumerate(sizes_for(quick, device, smoke)):
        args = {"sizes": asdict(sizes), "device": device, "threads": threads, "quick": quick or smoke}
        # A guard against a hung child, not a budget: the paper-size cases take minutes on a busy CPU.
        # Times come from a child with the ordinary allocator, peak memory from one with CHILD_MALLOC_ENV.
        result = run_child(__name__, {**args, "memory": False}, timeout=7200, malloc_env=False)
        result.update(run_child(__name__, {**args, "memory": True}, timeout=7200)["figures"])
        if index == 0:
            figures.update({f"machine_{k}": v for k, v in result.pop("roofline").items()})
        else:
            result.pop("roofline")
        prefix = "" if index == 0 else f"c{index}_"
        figures.update({prefix + k: v for k, v in result.items()})
        records.append(_sizes_record(sizes))
    memory = (
        "torch.cuda.max_memory_allocated delta (tensor bytes)"
        if device.startswith("cuda")
        else "resident-set high-water-mark delta in a child process (VmHWM, glibc mmap threshold 64 KiB)"
    )
    notes = [
        "attention step: Q/K/V projection + scores + softmax + values + W^O, forward + backward",
        "ref: the previous implementation (one SDPA call); attn: the model's kernel now; runs interleaved",
        f"SDPA backends enabled: {', '.join(sdpa_backends(device))}",
        "roofline: max(FLOPs / measured matmul GFLOPS, bytes / measured copy GB/s); "
        "max speed-up: ref / (projection + W^O alone), the part no attention kernel changes",
        f"peak memory: {memory}",
        "times: median of interleaved fwd+bwd runs after one warm-up each; cpu: process CPU time (all threads)",
    ]
    return {"sizes": records, "figures": figures, "notes": notes}


def _child_main(argv: list[str]) -> None:
    args = json.loads(argv[0])
    raw = args["sizes"]
    for key in ("slices", "loop_slices", "model_slices"):
        raw[key] = tuple(raw[key])
    sizes = AttentionSizes(**raw)
    torch.set_num_threads(int(args["threads"]))
    if args["memory"]:
        print(json.dumps({"figures": measure(sizes, args["device"], int(args["threads"]), {}, memory=True)}))
        return
    roof = machine_roofline(args["device"], quick=bool(args.get("quick")))
    print(json.dumps({"roofline": roof, **measure(sizes, args["device"], int(args["threads"]), roof)}))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
