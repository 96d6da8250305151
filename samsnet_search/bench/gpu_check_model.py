"""gpu-check's model sections: the training step, SDPA backends, data wait, validation, resume.

Each `check_*` takes the run's `Check` and returns its figures; a figure that contradicts what
the platform promises goes into a "problems" list (the section is then reported as wrong).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.autograd import DeviceType
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import PAPER_SLICES, TARGETS, ExperimentConfig, validate_model
from ..engine.device import amp_dtype
from ..engine.loss import magnitude_loss
from ..engine.train import Trainer
from ..errors import one_line
from ..model import SlicedMultiHeadAttention, memory
from .attention import AttentionSizes, measure, paper_sizes
from .common import MiB, machine_roofline, sync, timed
from .train_step import time_steps

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
SDPA_SLICES = (1, 12, 24)
# Forced one at a time by name; "auto" is the model's own choice (no backend forced).
SDPA_BACKENDS = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


@dataclass
class Check:
    """One gpu-check run: where, how big, and what the sections share (data, a Ray session)."""

    device: str  # "cuda" or "cpu" (dry run)
    dry: bool
    work: Path
    root: Path  # synthetic data (2 train tracks, 1 valid, 1 test)
    threads: int
    enter_ray: Callable[[], None] = field(default=lambda: None)  # starts the shared local Ray once

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def experiment(self, train: dict[str, Any] | None = None, **data: Any) -> ExperimentConfig:
        """The paper's training configuration (dry run: a tiny one), overrides on top."""
        if self.dry:
            model = {"n_fft": 256, "hop_length": 128, "channels": 2, "heads": 1, "depth": 1, "slices": 4}
            base, batch = {"segment_seconds": 0.5, "valid_chunk_seconds": 2.0}, 2
        else:
            model, base, batch = {"slices": 12}, {"segment_seconds": 6.0, "valid_chunk_seconds": 10.0}, 8
        raw = {
            "model": model,
            "data": {**base, "root": str(self.root), "valid_seconds": 1.0, **data},
            "train": {
                "batch_size": batch,
                "device": self.device,
                "amp": True,
                "seed": 0,
                "threads": self.threads,
                **(train or {}),
            },
        }
        return validate_model(ExperimentConfig, raw, "gpu-check")

    def trainer(self, name: str, train: dict[str, Any] | None = None, **data: Any) -> Trainer:
        return Trainer(self.experiment(train, **data), self.work / name)

    def reset_peak(self) -> None:
        if self.cuda:
            sync(self.device)
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        """CUDA allocator peak since `reset_peak`; None on CPU (measured per call there)."""
        return torch.cuda.max_memory_allocated() / MiB if self.cuda else None


def _dtype_name(trainer: Trainer) -> str:
    return DTYPE_NAMES[amp_dtype()] if trainer.amp else "fp32"


# --- train: batch 8 at the paper shape ----------------------------------------------------


def _random_batch(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """A full batch of random stems (B, 4, C, N) and their mixture, built here: the step's size
    must not depend on how many synthetic tracks the loader has."""
    cfg, m = trainer.cfg, trainer.model_config
    gen = torch.Generator().manual_seed(0)
    shape = (cfg.train.batch_size, len(TARGETS), m.audio_channels, cfg.data.segment_samples)
    targets = 0.1 * torch.randn(shape, generator=gen)
    return targets.sum(1).to(trainer.device), targets.to(trainer.device)


def _step_fn(trainer: Trainer, mixture: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    """One optimizer step as `Trainer.train_epoch` takes it (AMP and loss scaling included)."""

    def step() -> None:
        loss = magnitude_loss(trainer.model, mixture, targets, trainer.amp)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()

    return step


def check_train(c: Check) -> dict[str, Any]:
    trainer = c.trainer("train")
    trainer.model.train()
    step = _step_fn(trainer, *_random_batch(trainer))
    step()  # Adam's moments and cuDNN's autotuning happen here, not in the timed steps
    c.reset_peak()
    steps = 2 if c.dry else 5
    step_s = timed(step, repeats=steps, warmup=0, device=c.device)["median_s"]
    measured = c.peak_mib()  # None on CPU: its allocator keeps freed pages, no honest peak there
    shape = memory.training_shape(trainer.cfg, _dtype_name(trainer) if trainer.amp else "bf16")
    # CUDA: tensors plus the allocator's overheads; CPU allocates the tensors only.
    predicted = (memory.peak_bytes(shape) if c.cuda else memory.tensor_bytes(shape)) / MiB
    batch = trainer.cfg.train.batch_size
    out = {
        "batch": batch,
        "amp": _dtype_name(trainer),
        "step_ms": step_s * 1e3,
        "samples_per_s": batch / step_s,
        "peak_mib": measured,
        "predicted_peak_mib": predicted,
        "prediction_rel_error": measured / predicted - 1 if measured else None,
        "attention_share": _attention_share(c, trainer, step_s),
    }
    if measured and abs(out["prediction_rel_error"]) > 0.15:
        out["problems"] = [f"memory model off by {out['prediction_rel_error']:+.0%} (issue 21 asks within 15 %)"]
    return out


def _attention_share(c: Check, trainer: Trainer, step_s: float) -> float:
    """depth x (one attention + W^O, fwd+bwd, at the training step's batch and shape) / the step."""
    cfg, m = trainer.cfg, trainer.model_config
    B, d, F, T = cfg.train.batch_size, m.channels, m.bins, m.frames(cfg.data.segment_samples)
    att = SlicedMultiHeadAttention(d, m.heads, m.slice_frames).to(c.device)
    w_o = torch.nn.Conv2d(m.heads * d, d, m.kernel_size, padding=m.kernel_size // 2).to(c.device)
    x = torch.randn(B, d, F, T, device=c.device, requires_grad=True)

    def attention_step() -> None:
        with torch.autocast(c.device, dtype=amp_dtype(), enabled=trainer.amp):
            y = w_o(att(x))
        y.float().sum().backward()

    att_s = timed(attention_step, repeats=3, device=c.device)["median_s"]
    return min(1.0, m.depth * att_s / step_s)


# --- data wait: real loader, real steps ---------------------------------------------------


def check_data_wait(c: Check) -> dict[str, Any]:
    batch = c.experiment().train.batch_size
    # Enough segments per track for a few full batches per epoch from the 2 training tracks.
    trainer = c.trainer("data_wait", samples_per_track=2 * batch)
    steps = time_steps(trainer, warmup=1, steps=2 if c.dry else 6)
    out = {**steps, "num_workers": trainer.cfg.data.num_workers, "pin_memory": trainer.cfg.data.pin_memory}
    if c.cuda and steps["data_wait_share"] > 0.2:
        out["problems"] = [f"the GPU waits on data {steps['data_wait_share']:.0%} of the time"]
    return out


# --- SDPA: which kernel actually runs -----------------------------------------------------


def classify(names: list[str]) -> list[str]:
    """SDPA backends named by profiler op and kernel names (ATen ops and CUDA kernels alike)."""
    found = set()
    for name in (n.lower() for n in names):
        if "flash" in name:
            found.add("flash")
        elif "efficient_attention" in name or "fmha" in name:
            found.add("efficient")
        elif "cudnn" in name and ("sdpa" in name or "attention" in name):
            found.add("cudnn")
        elif "attention_math" in name:
            found.add("math")
    return sorted(found)


def _profiled_names(step: Callable[[], None], cuda: bool) -> tuple[list[str], list[str]]:
    """(ATen op names, GPU kernel names) of one call."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        step()
        sync("cuda" if cuda else "cpu")
    ops, kernels = set(), set()
    for e in prof.events():
        (kernels if e.device_type == DeviceType.CUDA else ops).add(e.name)
    return sorted(ops), sorted(kernels)


def check_sdpa(c: Check) -> dict[str, Any]:
    cfg = c.experiment()
    m = cfg.resolved_model()
    B, d, F, T = cfg.train.batch_size, m.channels, m.bins, m.frames(cfg.data.segment_samples)
    x = torch.randn(B, d, F, T, device=c.device, requires_grad=True)
    out: dict[str, Any] = {"shape": [B, d, F, T]}
    for n in SDPA_SLICES:
        out[f"slices_{n}"] = {
            name: _backend_row(c, x, m.heads, math.ceil(T / n), b) for name, b in SDPA_BACKENDS.items()
        }
    return out


def _backend_row(c: Check, x: torch.Tensor, heads: int, slice_frames: int, backend) -> dict[str, Any]:
    # "auto" runs the model's own kernel choice; a forced backend needs the SDPA kernel.
    att = SlicedMultiHeadAttention(x.shape[1], heads, slice_frames, kernel=None if backend is None else "sdpa")
    att = att.to(c.device)

    def step() -> None:
        forced = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
        with forced, torch.autocast(c.device, dtype=amp_dtype(), enabled=c.cuda):  # flash / cuDNN need half
            y = att(x)
        y.float().sum().backward()

    try:
        step()  # warm-up, and the unsupported backends fail here
        ops, kernels = _profiled_names(step, c.cuda)
        ms = timed(step, repeats=1 if c.dry else 3, warmup=0, device=c.device)["median_s"] * 1e3
    except RuntimeError as e:  # a backend that does not take this shape / dtype / device
        return {"unsupported": one_line(e)[:100]}
    attention = [k for k in kernels if classify([k])][:3]
    return {
        "used": classify(kernels + ops) or ["no SDPA (model's own kernel)"],
        "kernels": attention,
        "ms": round(ms, 3),
    }


# --- attention: the model's kernel against the previous SDPA line -------------------------


def check_attention(c: Check) -> dict[str, Any]:
    if c.dry:
        sizes = AttentionSizes(
            256, 128, 0.5, 2, 1, 1, slices=(1, 4, 12), loop_slices=(12,), model_slices=(12,), repeats=1, label="dry run"
        )
    else:
        sizes = paper_sizes(repeats=3, slices=PAPER_SLICES)
        sizes.model_slices = (12,)
    roof = machine_roofline(c.device, quick=c.dry)
    figures = measure(sizes, c.device, c.threads, roof)
    keys = ("ref_ms", "attn_ms", "speedup", "attn_of_roofline")
    per_slices = {n: {k: figures[f"{k}_s{n}"] for k in keys} for n in sizes.slices}
    return {"sizes": asdict(sizes), "roofline": roof, "per_slices": per_slices}


# --- validation and resume ----------------------------------------------------------------


def check_validation(c: Check) -> dict[str, Any]:
    """Whole-track validation (valid_seconds null), which runs in chunks: its peak is the chunk's."""
    trainer = c.trainer("validation", valid_seconds=None)
    c.reset_peak()
    start = time.perf_counter()
    loss, sdr, _ = trainer.validate(with_sdr=True)
    return {
        "seconds": time.perf_counter() - start,
        "chunk_seconds": trainer.cfg.data.valid_chunk_seconds,
        "valid_loss": loss,
        "valid_sdr": (sdr or {}).get("avg"),
        "peak_mib": c.peak_mib(),
    }


def check_resume(c: Check) -> dict[str, Any]:
    """One epoch, then a fresh trainer continues from its checkpoint; then an enabled (fp16)
    GradScaler loads that checkpoint, as on a spot retry landing on a card without native bf16."""
    first = c.trainer("resume", train={"epochs": 1, "valid_sdr_every": 0})
    first.fit()
    cfg = first.cfg.model_copy(update={"train": first.cfg.train.model_copy(update={"epochs": 2})})
    second = Trainer(cfg, c.work / "resume2")
    second.restore(first.ckpt_dir)
    same = all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    summary = second.fit()
    out = {"amp": _dtype_name(first), "scaler_saved": bool(first.scaler.state_dict()), "weights_restored": same}
    out.update({"resumed_at_epoch": 1, "ended_at_epoch": summary.epochs, "fp16_scaler": _fp16_resume(c, cfg, first)})
    problems = [] if same and summary.epochs == 2 else ["resume did not continue from the checkpoint"]
    if isinstance(out["fp16_scaler"], str) and out["fp16_scaler"].startswith("failed"):
        problems.append(out["fp16_scaler"])
    return {**out, "problems": problems} if problems else out


def _fp16_resume(c: Check, cfg: ExperimentConfig, first: Trainer) -> Any:
    if not c.cuda:
        return "not exercised (a GradScaler needs CUDA)"
    third = Trainer(cfg, c.work / "resume3")
    third.scaler = torch.amp.GradScaler("cuda", enabled=True)  # what a float16-only card builds
    try:
        third.restore(first.ckpt_dir)
        third.train_epoch()
    except Exception as e:  # noqa: BLE001 - the figure to report is the failure itself
        return f"failed: {one_line(e, typed=True)}"
    return {"scale_after_epoch": float(third.scaler.get_scale())}
