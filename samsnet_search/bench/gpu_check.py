"""`scripts/gpu-check.sh`: what a first CUDA GPU should tell us, in one run of a few minutes.

Five sections, each timed, one summary printed at the end (and written as JSON with --out):

1. train: a paper-config training step with AMP (samples/s, peak memory, and the share of
   the step spent in attention: depth x the attention step timed alone / the whole step).
2. attention: the attention step at the paper's 6 s shape for slices 1..24 (model's kernel
   vs the previous SDPA line, roofline), and the SDPA core at 12 slices under each CUDA SDPA
   backend (flash, memory-efficient, cuDNN, math), by name.
3. bsseval: the fast BSSEval v4 (`metrics.bsseval.sdr_v4`) on CUDA against its CPU path: time and
   the largest difference.
4. separate: a 3-minute stereo track through the paper-config model.
5. study: two trials of a tiny study sharing the GPU (`resources.gpu: 0.5`).

`--cpu-dry-run` runs every section on CPU at tiny sizes (a couple of minutes) so that the
script itself is tested where no GPU is; its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import PAPER_SLICES, SAMPLE_RATE, ExperimentConfig, validate_model
from ..data.synth import synthesize
from ..engine.separate import separate
from ..engine.train import Trainer
from ..metrics.bsseval import sdr_v4
from ..model import SamsNet, SlicedMultiHeadAttention
from ..search.runner import run_study
from ..search.study import load_study
from .attention import AttentionSizes, measure, paper_sizes, sdpa_backends
from .common import MiB, machine_info, machine_roofline, timed
from .train_step import time_steps

log = logging.getLogger(__name__)


def _peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: the process's peak so far


def _experiment(root: Path, device: str, dry: bool) -> dict[str, Any]:
    if dry:
        model = {"n_fft": 256, "hop_length": 128, "channels": 2, "heads": 1, "depth": 1, "slices": 4}
        data, batch = {"segment_seconds": 0.5}, 2
    else:
        model, data, batch = {"slices": 12}, {"segment_seconds": 6.0}, 8  # paper config (ModelConfig defaults)
    return {
        "model": model,
        "data": {**data, "root": str(root), "valid_seconds": 1.0},
        "train": {"batch_size": batch, "device": device, "amp": True, "seed": 0, "threads": 2 if dry else 8},
    }


def check_train(root: Path, work: Path, device: str, dry: bool) -> dict[str, Any]:
    cfg = validate_model(ExperimentConfig, _experiment(root, device, dry), "gpu-check train")
    trainer = Trainer(cfg, work / "train")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = time_steps(trainer, warmup=1 if dry else 2, steps=2 if dry else 5)
    m = cfg.resolved_model()
    B, d, h, Fq, T = cfg.train.batch_size, m.channels, m.heads, m.n_fft // 2 + 1, m.frames(cfg.data.segment_samples)
    att = SlicedMultiHeadAttention(d, h, m.slice_frames).to(device)
    w_o = torch.nn.Conv2d(h * d, d, m.kernel_size, padding=m.kernel_size // 2).to(device)
    x = torch.randn(B, d, Fq, T, device=device, requires_grad=True)

    def attention_step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=trainer.amp):
            y = w_o(att(x))
        y.float().sum().backward()

    att_s = timed(attention_step, repeats=3, device=device)["median_s"]
    return {
        "samples_per_s": steps["samples_per_s"],
        "step_ms": steps["step_ms"],
        "amp": trainer.amp,
        "peak_mib": _peak_mib(device),
        "batch": B,
        "attention_share": min(1.0, m.depth * att_s * 1e3 / steps["step_ms"]),
    }


def check_attention(device: str, dry: bool, threads: int) -> dict[str, Any]:
    if dry:
        sizes = AttentionSizes(
            256,
            128,
            0.5,
            2,
            1,
            1,
            slices=(1, 4, 12),
            loop_slices=(12,),
            model_slices=(12,),
            repeats=1,
            label="dry run (256-point STFT, 2 maps, 0.5 s)",
        )
    else:
        sizes = paper_sizes(repeats=5, slices=PAPER_SLICES)
        sizes.model_slices = (12,)
    roof = machine_roofline(device, quick=dry)
    figures = measure(sizes, device, threads, roof)
    out = {
        "sizes": asdict(sizes),
        "roofline": roof,
        "backends_enabled": sdpa_backends(device),
        "per_slices": {
            n: {k: figures[f"{k}_s{n}"] for k in ("ref_ms", "attn_ms", "speedup", "attn_of_roofline")}
            for n in sizes.slices
        },
    }
    out["sdpa_backend_ms_s12"] = _sdpa_backends_timed(sizes, device)
    return out


def _sdpa_backends_timed(sizes: AttentionSizes, device: str) -> dict[str, Any]:
    """fwd+bwd of the SDPA kernel at 12 slices under each backend, forced one at a time."""
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    att = SlicedMultiHeadAttention(sizes.channels, sizes.heads, math.ceil(sizes.frames / 12), kernel="sdpa").to(device)
    x = torch.randn(sizes.batch, sizes.channels, sizes.bins, sizes.frames, device=device, requires_grad=True)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # flash / cuDNN need half precision
    out: dict[str, Any] = {}
    for name, backend in backends.items():

        def step(backend=backend) -> None:  # bound now: timed() calls it within this iteration
            with sdpa_kernel([backend]), torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
                y = att(x)
            y.float().sum().backward()

        try:
            out[name] = round(timed(step, repeats=3, device=device)["median_s"] * 1e3, 3)
        except RuntimeError as e:  # a backend that does not support this shape / dtype / device
            out[name] = f"unsupported ({str(e).splitlines()[0][:80]})"
    return out


def check_bsseval(device: str, dry: bool) -> dict[str, Any]:
    seconds = 5.0 if dry else 180.0
    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    refs = rng.standard_normal((4, n, 2))
    ests = refs + 0.3 * rng.standard_normal((4, n, 2))
    cpu_t = timed(lambda: sdr_v4(refs, ests), repeats=1, warmup=0)
    cpu = sdr_v4(refs, ests)
    out: dict[str, Any] = {"seconds_of_audio": seconds, "cpu_s": cpu_t["median_s"]}
    if device == "cuda":
        r, e = torch.from_numpy(refs).cuda(), torch.from_numpy(ests).cuda()
        out["cuda_s"] = timed(lambda: sdr_v4(r, e), repeats=2, warmup=1, device="cuda")["median_s"]
        out["max_abs_diff_db"] = float(np.nanmax(np.abs(sdr_v4(r, e) - cpu)))
    else:
        out["cuda_s"] = "no CUDA here: CPU path only"
    return out


def check_separate(root: Path, work: Path, device: str, dry: bool) -> dict[str, Any]:
    cfg = validate_model(ExperimentConfig, _experiment(root, device, dry), "gpu-check separate")
    model = SamsNet(**cfg.resolved_model().model_dump())
    seconds = 10.0 if dry else 180.0
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    audio = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(np.float32) * 0.3
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stems = separate(model, audio, device)
    wall = time.perf_counter() - start
    assert all(s.shape == audio.shape and np.isfinite(s).all() for s in stems.values())
    return {"track_seconds": seconds, "wall_s": wall, "x_realtime": seconds / wall, "peak_mib": _peak_mib(device)}


def check_study(root: Path, work: Path, device: str, dry: bool) -> dict[str, Any]:
    study = {
        "name": "gpu-check",
        "model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 4]}, "heads": 1, "channels": 2, "depth": 1},
        "data": {"root": str(root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
        "train": {"lr": 1e-3, "batch_size": 2, "epochs": 2, "patience": 2, "valid_sdr_every": 0, "device": device},
        "search": {"num_samples": 2, "seed": 0, "grace_period": 2, "max_t": 2, "max_concurrent_trials": 2},
        "resources": {"cpu": 1, "gpu": 0.5 if device == "cuda" else 0},
        "storage": str(work / "runs"),
        "tracking": {"uri": str(work / "mlruns"), "system_metrics_interval_s": 5},
    }
    path = work / "gpu-check.yaml"
    path.write_text(yaml.safe_dump(study))
    start = time.perf_counter()
    result = run_study(load_study(path, base_dir=work), num_cpus=2, num_gpus=1 if device == "cuda" else 0, quiet=True)
    return {
        "wall_s": time.perf_counter() - start,
        "trials": result.counts(),
        "resources_gpu": study["resources"]["gpu"],
    }


def run_gpu_check(
    device: str,
    dry: bool,
    work: Path,
    progress: Callable[[str], None] = print,
    on_section: Callable[[dict[str, Any], str], None] = lambda report, name: None,
) -> dict[str, Any]:
    """All sections; a failing section is recorded (first line of its error) and the rest still run.
    on_section(report, name) is called as each section finishes, so a timeout keeps what was done."""
    threads = 2 if dry else 8
    torch.set_num_threads(threads)
    report: dict[str, Any] = {"machine": machine_info(device, threads), "dry_run": dry, "sections": {}, "failed": []}
    root = synthesize(work / "data", n_train=2, n_valid=1, n_test=1, seconds=7.0, seed=0)
    sections = {
        "train": lambda: check_train(root, work, device, dry),
        "attention": lambda: check_attention(device, dry, threads),
        "bsseval": lambda: check_bsseval(device, dry),
        "separate": lambda: check_separate(root, work, device, dry),
        "study": lambda: check_study(root, work, device, dry),
    }
    for name, fn in sections.items():
        progress(f"gpu-check: {name}...")
        start = time.perf_counter()
        try:
            report["sections"][name] = fn()
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others' figures
            log.debug("section %s failed", name, exc_info=True)
            report["sections"][name] = {
                "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                "traceback": traceback.format_exc(limit=4),
            }
            report["failed"].append(name)
        report["sections"][name]["section_s"] = round(time.perf_counter() - start, 2)
        on_section(report, name)
    return report


def summary(report: dict[str, Any]) -> str:
    """The one summary: a few lines per section."""
    m, s = report["machine"], report["sections"]
    lines = [
        f"gpu-check{' (CPU DRY RUN: tiny sizes, no GPU figures)' if report['dry_run'] else ''}: "
        f"{m.get('gpu', m['cpu'])}, torch {m['torch']}, load {m['load_average_1m']}"
    ]

    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    for name, result in s.items():
        if "error" in result:
            lines.append(f"  {name}: FAILED {result['error']} ({result['section_s']} s)")
            continue
        if name == "attention":
            roof = result["roofline"]
            lines.append(
                f"  attention: roofline {roof['matmul_gflops']:.0f} GFLOPS, {roof['copy_gbps']:.0f} GB/s; "
                f"backends enabled {', '.join(result['backends_enabled'])} ({result['section_s']} s)"
            )
            for n, row in result["per_slices"].items():
                lines.append(
                    f"    slices {n:>2}: ref {row['ref_ms']:.2f} ms, now {row['attn_ms']:.2f} ms "
                    f"(x{row['speedup']:.2f}), {row['attn_of_roofline']:.1%} of roofline"
                )
            lines.append(
                "    SDPA core at 12 slices by backend (ms): "
                + ", ".join(f"{k} {fmt(v)}" for k, v in result["sdpa_backend_ms_s12"].items())
            )
            continue
        lines.append(
            f"  {name}: "
            + ", ".join(f"{k} {fmt(v)}" for k, v in result.items() if k != "section_s")
            + f" ({result['section_s']} s)"
        )
    lines.append(
        "gpu-check: " + (f"FAILED sections: {', '.join(report['failed'])}" if report["failed"] else "all sections ran")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every section on CPU at tiny sizes (tests)")
    parser.add_argument("--out", type=Path, help="write the full report as JSON")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu_dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (use --cpu-dry-run to check the script itself)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)

    def finished(report: dict[str, Any], name: str) -> None:
        # Each section is printed and the JSON rewritten as it finishes (flushed): a run cut off
        # by a timeout still leaves every section done so far.
        print(
            "\n".join(summary({**report, "sections": {name: report["sections"][name]}}).splitlines()[1:-1]), flush=True
        )
        if args.out:
            _write(args.out, report)

    with tempfile.TemporaryDirectory(prefix="samsnet-gpu-check-") as tmp:
        report = run_gpu_check(device, args.cpu_dry_run, Path(tmp), on_section=finished)
    text = summary(report)
    print(text)
    if args.out:
        _write(args.out, {**report, "summary": text})
    return 1 if report["failed"] else 0


def _write(path: Path, report: dict[str, Any]) -> None:
    """The report so far, replacing the file whole (a reader never sees half a JSON)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(report, indent=2, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
