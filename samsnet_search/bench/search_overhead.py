"""Benchmark 4: per-trial time spent outside training on a tiny real study.

Runs a small study (local Ray, OptunaSearch + ASHA, embedded MLflow store, checkpoints
every epoch) in a temporary folder. Per trial, Ray's `time_total_s` (trainable start to its
last report) is compared with the trainer's own `epoch_seconds` (training + validation):
the rest is trial set-up, MLflow logging, checkpoint writes and `tune.report`. At the study
level the wall time times the concurrency is compared with the summed epoch time, which
adds Ray start-up, scheduling and actor start-up.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..data.synth import synthesize
from ..search.runner import run_study
from ..search.study import load_study
from .common import BenchError


def study_dict(root: Path, data_root: Path, trials: int) -> dict[str, Any]:
    """A study small enough for seconds per trial (the end-to-end test's sizes)."""
    return {
        "name": "bench-overhead",
        "model": {
            "n_fft": 256,
            "hop_length": 128,
            "slices": {"choice": [1, 2, 4]},
            "heads": 1,
            "channels": {"choice": [2, 4]},
            "depth": 1,
        },
        "data": {"root": str(data_root), "segment_seconds": 0.5, "samples_per_track": 2, "valid_seconds": 1.0},
        "train": {
            "lr": {"loguniform": [1e-3, 1e-2]},
            "batch_size": 2,
            "epochs": 3,
            "patience": 3,
            "valid_sdr_every": 0,
            "device": "cpu",
        },
        "search": {
            "num_samples": trials,
            "seed": 0,
            "grace_period": 1,
            "reduction_factor": 2,
            "max_concurrent_trials": 2,
        },
        "resources": {"cpu": 1},
        "storage": str(root / "runs"),
        "tracking": {"uri": str(root / "mlruns"), "system_metrics_interval_s": 5},
    }


def _trial_times(result_grid) -> tuple[list[float], list[float]]:
    """(Ray time_total_s, summed epoch_seconds) per trial that reported at least once."""
    trial_s, train_s = [], []
    for r in result_grid:
        df = r.metrics_dataframe
        if df is None or df.empty or "epoch_seconds" not in df:
            continue
        trial_s.append(float(r.metrics["time_total_s"]))
        train_s.append(float(df["epoch_seconds"].sum()))
    return trial_s, train_s


def run(quick: bool, device: str, threads: int, trials: int = 4) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="samsnet-bench-search-") as tmp:
        root = Path(tmp)
        data = synthesize(root / "data", n_train=2, n_valid=1, n_test=1, seconds=4.0, seed=0)
        spec = study_dict(root, data, trials)
        path = root / "bench-overhead.yaml"
        path.write_text(yaml.safe_dump(spec))
        result = run_study(load_study(path, base_dir=root), num_cpus=2, quiet=True)
        trial_s, train_s = _trial_times(result.result_grid)
    if not trial_s:
        raise BenchError("search overhead: no trial of the tiny study reported a result")
    concurrency = spec["search"]["max_concurrent_trials"]
    figures = {
        "trials": float(len(trial_s)),
        "study_wall_s": result.seconds,
        "trial_s_mean": sum(trial_s) / len(trial_s),
        "train_s_mean": sum(train_s) / len(train_s),
        "per_trial_overhead_s": (sum(trial_s) - sum(train_s)) / len(trial_s),
        "per_trial_overhead_share": 1 - sum(train_s) / sum(trial_s),
        "study_overhead_share": 1 - sum(train_s) / (result.seconds * concurrency),
    }
    sizes = {
        "study": {k: v for k, v in spec.items() if k not in ("storage", "tracking")},
        "concurrency": concurrency,
        "tracking": "embedded MLflow file store",
        "storage": "local folder",
    }
    notes = [
        "per trial: 1 - sum(epoch_seconds) / Ray time_total_s; study: 1 - sum(epoch_seconds) / (wall x concurrency)"
    ]
    return {"sizes": sizes, "figures": figures, "notes": notes}
