"""Benchmark 2: training-step throughput and the share of step time spent waiting on data.

Uses the real Trainer's model, optimizer and DataLoader on a synthetic dataset written to a
temporary folder. A quickstart trial-epoch (`train_epoch` + `validate`, at the largest
model search_spaces/quickstart.yaml can draw) is timed with the model's attention and with
the previous SDPA implementation (`attention.ReferenceAttention`), epochs interleaved. Each step is timed in two parts: `next(iterator)` (waiting on the
DataLoader: reading memmaps, augmentation, collation) and the compute (STFT, forward,
loss, backward, optimizer step), the same work as `Trainer.train_epoch`.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ..config import ExperimentConfig, load_experiment, read_yaml, validate_model
from ..data.synth import synthesize
from ..engine.train import Trainer, magnitude_loss
from .attention import QUICKSTART, reference_attention
from .common import BenchError, sync, timed_side_by_side

log = logging.getLogger(__name__)

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _cases(quick: bool, smoke: bool, device: str) -> list[dict[str, Any]]:
    """(label, experiment overrides, warm-up steps, timed steps) per case."""
    if smoke:
        exp = {
            "model": {"n_fft": 256, "hop_length": 128, "channels": 2, "heads": 1, "depth": 1, "slices": 2},
            "data": {"segment_seconds": 0.5},
            "train": {"batch_size": 2},
        }
        return [{"label": "smoke (256-point STFT, 2 maps, 0.5 s)", "experiment": exp, "warmup": 1, "steps": 2}]
    if not TINY_CONFIG.is_file():
        raise BenchError(f"{TINY_CONFIG}: the quickstart-size config is missing (run from a source checkout)")
    tiny = load_experiment(TINY_CONFIG).model_dump(mode="json")
    tiny["data"].pop("root", None)
    cases = [
        {"label": "quickstart size (configs/tiny.yaml)", "experiment": tiny, "warmup": 1, "steps": 2 if quick else 5}
    ]
    if not quick:
        on_gpu = device.startswith("cuda")
        paper = {"model": {}, "data": {"segment_seconds": 6.0}, "train": {"batch_size": 8 if on_gpu else 1}}
        # CPU: one step of the paper config takes tens of seconds here, so batch 1 and a single step.
        cases.append(
            {"label": "paper config", "experiment": paper, "warmup": 2 if on_gpu else 0, "steps": 5 if on_gpu else 1}
        )
    return cases


def _batches(loader) -> Iterator[Any]:
    """Endless batches: a new epoch (and shuffle) whenever the loader runs out."""
    epoch = 0
    while True:
        loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_steps(trainer, warmup: int, steps: int) -> dict[str, float]:
    device = str(trainer.device)
    model, opt = trainer.model, trainer.optimizer
    model.train()
    batches = _batches(trainer.loader)
    data_s, compute_s, samples = [], [], 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        mixture, targets = next(batches)
        t1 = time.perf_counter()
        loss = magnitude_loss(model, mixture.to(trainer.device), targets.to(trainer.device), trainer.amp)
        opt.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(opt)
        trainer.scaler.update()
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            data_s.append(t1 - t0)
            compute_s.append(t2 - t1)
            samples += mixture.shape[0]
    total = sum(data_s) + sum(compute_s)
    return {
        "samples_per_s": samples / total,
        "step_ms": statistics.median(d + c for d, c in zip(data_s, compute_s)) * 1e3,
        "data_wait_share": sum(data_s) / total,
        "data_ms": statistics.median(data_s) * 1e3,
    }


def quickstart_experiment(smoke: bool) -> dict[str, Any]:
    """The quickstart study's experiment with every searched value at its largest choice
    (the slowest trial it can draw); smoke: a tiny model on the same data path."""
    space = read_yaml(QUICKSTART)
    pick = {}
    for section in ("model", "data", "train"):
        pick[section] = {
            k: (max(v["choice"]) if "choice" in v else v.get("int", v.get("loguniform", [0]))[-1])
            if isinstance(v, dict)
            else v
            for k, v in space[section].items()
        }
    pick["data"].pop("root", None)
    if smoke:
        pick["model"].update(n_fft=256, hop_length=128, channels=2, heads=1, depth=1, slices=2)
        pick["data"].update(segment_seconds=0.5, valid_seconds=1.0)
    return pick


def _trial_epochs(trainer, repeats: int) -> dict[str, float]:
    """A trial-epoch (train_epoch + validate without SDR) with the model's attention and the reference."""

    def epoch() -> None:
        trainer.train_epoch()
        trainer.validate(with_sdr=False)

    def reference_epoch() -> None:
        with reference_attention(trainer.model):
            epoch()

    times = timed_side_by_side({"new": epoch, "ref": reference_epoch}, repeats=repeats, device=str(trainer.device))
    return {
        "epoch_s": times["new"]["median_s"],
        "epoch_ref_s": times["ref"]["median_s"],
        "epoch_speedup": times["ref"]["median_s"] / times["new"]["median_s"],
        "epoch_cpu_speedup": times["ref"]["cpu_s"] / max(times["new"]["cpu_s"], 1e-9),
    }


def run(quick: bool, device: str, threads: int, smoke: bool = False) -> dict[str, Any]:
    figures: dict[str, float] = {}
    sizes = []
    with tempfile.TemporaryDirectory(prefix="samsnet-bench-") as tmp:
        # 7 s tracks: longer than the paper's 6 s segment, so every case reads real audio.
        root = synthesize(Path(tmp) / "data", n_train=4, n_valid=1, n_test=1, seconds=7.0, seed=0)
        for index, case in enumerate(_cases(quick, smoke, device)):
            exp = case["experiment"]
            exp["data"] = {**exp.get("data", {}), "root": str(root), "valid_seconds": 1.0}
            exp["train"] = {**exp.get("train", {}), "device": device, "threads": threads, "seed": 0}
            cfg = validate_model(ExperimentConfig, exp, f"bench case {case['label']}")
            trainer = Trainer(cfg, Path(tmp) / f"work{index}")
            result = time_steps(trainer, case["warmup"], case["steps"])
            prefix = "quick_" if index == 0 else "paper_"
            figures.update({prefix + k: v for k, v in result.items()})
            sizes.append(
                {
                    "label": case["label"],
                    "model": cfg.resolved_model().model_dump(mode="json"),
                    "batch_size": cfg.train.batch_size,
                    "segment_seconds": cfg.data.segment_seconds,
                    "num_workers": cfg.data.num_workers,
                    "warmup": case["warmup"],
                    "steps": case["steps"],
                    "amp": trainer.amp,
                }
            )
            del trainer
        exp = quickstart_experiment(smoke)
        exp["data"].update(root=str(root))
        exp["train"].update(device=device, threads=threads, seed=0)
        cfg = validate_model(ExperimentConfig, exp, "bench quickstart trial-epoch")
        trainer = Trainer(cfg, Path(tmp) / "epochs")
        figures.update({"quickstart_" + k: v for k, v in _trial_epochs(trainer, 1 if smoke else 3).items()})
        sizes.append(
            {
                "label": "quickstart trial-epoch (largest choices)",
                "model": cfg.resolved_model().model_dump(mode="json"),
                "batch_size": cfg.train.batch_size,
                "segment_seconds": cfg.data.segment_seconds,
                "samples_per_track": cfg.data.samples_per_track,
                "train_tracks": 4,
            }
        )
    notes = [
        "data wait: time in next(DataLoader iterator); compute: STFT + forward + loss + backward + Adam step",
        "quickstart trial-epoch: train_epoch + validate (valid_loss), model's attention vs the previous "
        "SDPA implementation, interleaved; medians",
    ]
    return {"sizes": sizes, "figures": figures, "notes": notes}
