"""`scripts/gpu-check.sh`: what a first CUDA GPU should tell us, in one run under 6 minutes.

Sections, in order, with their estimated seconds on one H100 (total about 300 s; the shell
script stops the run at 420 s, and every section done by then is in the JSON):

==========  ====  ==========================================================================
train         20  a training step at batch 8 at the paper shape (6 s, 2049 bins, 12 slices),
                  the batch built from random stems, AMP as the trainer picks it: samples/s,
                  peak memory (`max_memory_allocated`) beside `model.memory`'s prediction and
                  its relative error; the attention share (depth x attention + W^O at the same
                  batch and shape / the step)
data_wait     15  a few real training steps through the trainer's loader: loader wait / step
sdpa          25  the SDPA backend actually used, read from profiler op and kernel names
                  (flash / efficient / cudnn / math), for the model's choice and each backend
                  forced by name, at the paper shape for slices 1, 12 and 24
attention     40  the attention step for the paper's slice counts: the model's kernel against
                  the previous SDPA line, and its share of the roofline
validation    15  whole-track validation (`valid_seconds: null`) in chunks, with SDR: peak memory
resume        25  one epoch, a fresh trainer resumed from its checkpoint (weights, epoch), and an
                  enabled (fp16) GradScaler loading that checkpoint (a bf16 node's empty state)
placement     15  a local Ray with the real GPU count: a `gpu: 0` task and a `gpu: 0.5` task
                  report the device `search.placement.job_device` chose (only the second: CUDA)
study         60  two trials of a tiny study sharing the GPU (`resources.gpu: 0.5`)
export        40  masks and separate programs traced on CPU, moved to CUDA, parity with eager
mlflow_gpu    10  `services.gpu_metrics.GpuSampler` logging to a local MLflow file store while
                  the GPU is busy, read back: system/gpu_* metrics present, device tag
bsseval       15  the fast BSSEval v4 on CUDA against its CPU path: time, largest difference
separate      20  a 3-minute stereo track through the paper-config model
==========  ====  ==========================================================================

Each section is printed and the JSON rewritten as it finishes. A section that raises is recorded
("error", with its traceback) and the next one runs; one whose figures contradict what the
platform promises is "wrong" (its "problems" say what). `--only SECTION` (repeatable) runs
those alone. `--cpu-dry-run` runs every section on CPU at tiny sizes (batch 2, a few steps,
under a minute) so the script itself is tested where no GPU is; its figures say nothing of a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.synth import synthesize
from ..errors import one_line
from ..files import write_atomic
from ..search.runner import ray_session
from . import gpu_check_model as model_sections
from . import gpu_check_platform as platform
from .common import machine_info
from .gpu_check_model import Check

log = logging.getLogger(__name__)

Section = Callable[[Check], dict[str, Any]]
SECTIONS: dict[str, Section] = {
    "train": model_sections.check_train,
    "data_wait": model_sections.check_data_wait,
    "sdpa": model_sections.check_sdpa,
    "attention": model_sections.check_attention,
    "validation": model_sections.check_validation,
    "resume": model_sections.check_resume,
    "placement": platform.check_placement,
    "study": platform.check_study,
    "export": platform.check_export,
    "mlflow_gpu": platform.check_mlflow_gpu,
    "bsseval": platform.check_bsseval,
    "separate": platform.check_separate,
}


def run_gpu_check(
    device: str,
    dry: bool,
    work: Path,
    progress: Callable[[str], None] = print,
    on_section: Callable[[dict[str, Any], str], None] = lambda report, name: None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """The sections (all, or `only`); on_section(report, name) is called as each finishes, so a
    timeout keeps what was done."""
    threads = 2 if dry else 8
    torch.set_num_threads(threads)
    report: dict[str, Any] = {"machine": machine_info(device, threads), "dry_run": dry, "sections": {}, "failed": []}
    root = synthesize(work / "data", n_train=2, n_valid=1, n_test=1, seconds=7.0 if dry else 30.0, seed=0)
    with contextlib.ExitStack() as stack:
        check = Check(device, dry, work, root, threads, enter_ray=_ray_once(stack, device))
        for name, fn in SECTIONS.items():
            if only and name not in only:
                report["sections"][name] = {"status": "skipped"}
                continue
            progress(f"gpu-check: {name}...")
            report["sections"][name] = _run_section(fn, check)
            if report["sections"][name]["status"] != "ok":
                report["failed"].append(name)
            on_section(report, name)
    return report


def _run_section(fn: Section, check: Check) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = fn(check)
        result = {"status": "wrong" if result.get("problems") else "ok", **result}
    except Exception as e:  # noqa: BLE001 - one broken section must not hide the others' figures
        log.debug("section %s failed", fn.__name__, exc_info=True)
        result = {
            "status": "error",
            "error": one_line(e, typed=True),
            "traceback": traceback.format_exc(limit=4),
        }
    finally:
        if check.cuda:
            torch.cuda.empty_cache()  # the next section's peak starts from its own tensors
    return {**result, "section_s": round(time.perf_counter() - start, 2)}


def _ray_once(stack: contextlib.ExitStack, device: str) -> Callable[[], None]:
    """Starts one local Ray for the sections that need it (placement, study), with the real GPU
    count (dry run: one logical GPU, so a gpu 0.5 task can be placed); a failed start is retried
    by the next section that asks."""

    def enter() -> None:
        import ray  # lazy: only the placement and study sections start Ray

        if not ray.is_initialized():
            gpus = torch.cuda.device_count() if device == "cuda" else 1
            stack.enter_context(ray_session(num_cpus=2, num_gpus=gpus, quiet=True))

    return enter


def summary(report: dict[str, Any]) -> str:
    """The one summary: a line or a few per section."""
    m = report["machine"]
    lines = [
        f"gpu-check{' (CPU DRY RUN: tiny sizes, no GPU figures)' if report['dry_run'] else ''}: "
        f"{m.get('gpu', m['cpu'])}, torch {m['torch']}, load {m['load_average_1m']}"
    ]
    for name, result in report["sections"].items():
        lines += section_lines(name, result)
    failed = report["failed"]
    lines.append("gpu-check: " + (f"FAILED sections: {', '.join(failed)}" if failed else "all sections ran"))
    return "\n".join(lines)


def section_lines(name: str, result: dict[str, Any]) -> list[str]:
    status = result.get("status", "error" if "error" in result else "ok")
    if status == "skipped":
        return [f"  {name}: skipped"]
    took = f"({result.get('section_s')} s)"
    if status == "error":
        return [f"  {name}: FAILED {result['error']} {took}"]
    head = f"  {name}: " + ("WRONG: " + "; ".join(result["problems"]) + "; " if status == "wrong" else "")
    if name == "attention":
        return [head + _attention_head(result) + f" {took}"] + _attention_rows(result)
    if name == "sdpa":
        return [head + f"shape (B, d, F, T) {result['shape']} {took}"] + _sdpa_rows(result)
    skip = {"status", "section_s", "problems", "traceback"}
    return [head + ", ".join(f"{k} {_fmt(v)}" for k, v in result.items() if k not in skip) + f" {took}"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _attention_head(result: dict[str, Any]) -> str:
    roof = result["roofline"]
    return f"roofline {roof['matmul_gflops']:.0f} GFLOPS, {roof['copy_gbps']:.0f} GB/s"


def _attention_rows(result: dict[str, Any]) -> list[str]:
    return [
        f"    slices {n:>2}: ref {row['ref_ms']:.2f} ms, now {row['attn_ms']:.2f} ms "
        f"(x{row['speedup']:.2f}), {row['attn_of_roofline']:.1%} of roofline"
        for n, row in result["per_slices"].items()
    ]


def _sdpa_rows(result: dict[str, Any]) -> list[str]:
    """Per slice count: each forced backend -> the backend(s) the profiler saw, and its time."""
    lines = []
    for key, rows in result.items():
        if not key.startswith("slices_"):
            continue
        cells = [
            f"{b} unsupported" if "unsupported" in row else f"{b}->{'+'.join(row['used'])} {row['ms']:.3g} ms"
            for b, row in rows.items()
        ]
        lines.append(f"    slices {key[7:]:>2}: " + ", ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every section on CPU at tiny sizes (tests)")
    parser.add_argument("--out", type=Path, help="write the full report as JSON")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run this section alone (repeatable)")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu_dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (use --cpu-dry-run to check the script itself)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)

    def finished(report: dict[str, Any], name: str) -> None:
        # Each section is printed and the JSON rewritten as it finishes (flushed): a run cut off
        # by a timeout still leaves every section done so far.
        print("\n".join(section_lines(name, report["sections"][name])), flush=True)
        if args.out:
            _write(args.out, report)

    with tempfile.TemporaryDirectory(prefix="samsnet-gpu-check-") as tmp:
        report = run_gpu_check(device, args.cpu_dry_run, Path(tmp), on_section=finished, only=args.only)
    text = summary(report)
    print(text)
    if args.out:
        _write(args.out, {**report, "summary": text})
    return 1 if report["failed"] else 0


def _write(path: Path, report: dict[str, Any]) -> None:
    """The report so far, replacing the file whole (a reader never sees half a JSON)."""
    write_atomic(path, json.dumps(report, indent=2, default=str).encode())


if __name__ == "__main__":
    sys.exit(main())
