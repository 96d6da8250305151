"""Quality against cost: the Pareto front of a multi-objective study.

Every trial with a quality value is a point: its quality at its best epoch (the study
metric, as its best checkpoint holds it) and its model's costs (`params`,
`gmacs_per_second`, known before training). A point is on the front when no other point
is at least as good in every objective and better in one. Latency is not an objective (it
cannot be measured fairly while trials share the CPU); it is measured afterwards for the
front only, one model at a time (`measure_latency`).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Sequence

from rich.table import Table

from ..config import SAMPLE_RATE
from . import schedulers
from .objectives import OBJECTIVES, dominates

log = logging.getLogger(__name__)

ARTIFACT_JSON = "pareto_front.json"
ARTIFACT_MD = "pareto_front.md"
LATENCY_REPEATS = 5
LATENCY_THREADS = 1


def front_indices(values: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (ties: identical points are all kept)."""
    return [i for i, v in enumerate(values) if not any(dominates(w, v, modes) for j, w in enumerate(values) if j != i)]


def trial_points(trials: Sequence[Any], metric: str, objectives: dict[str, str]) -> list[dict[str, Any]]:
    """One point per trial that has every objective value (failed and unscored trials are left out)."""
    points = []
    for t in trials:
        if t.status == "failed" or not t.best or t.best.get(metric) is None:
            continue
        values = {name: (t.best[metric] if name == metric else t.metrics.get(name)) for name in objectives}
        if any(v is None for v in values.values()):
            continue
        points.append(
            {
                "trial_id": t.trial_id,
                "run_id": t.mlflow_run_id,
                "status": t.status,
                "epochs": t.epochs,
                "best_epoch": t.best.get("epoch"),
                "config": t.config,
                "values": {k: float(v) for k, v in values.items()},
            }
        )
    return points


def pareto_summary(trials: Sequence[Any], metric: str, objectives: dict[str, str], scheduler: str) -> dict[str, Any]:
    """The front (sorted by the first cost) and every scored point, as JSON-ready data."""
    points = trial_points(trials, metric, objectives)
    names = list(objectives)
    on_front = set(front_indices([[p["values"][n] for n in names] for p in points], [objectives[n] for n in names]))
    for i, p in enumerate(points):
        p["on_front"] = i in on_front
    front = sorted((p for p in points if p["on_front"]), key=lambda p: [p["values"][n] for n in names[1:]])
    caveat = schedulers.get(scheduler).caveat(metric)
    return {
        "objectives": objectives,
        "metric": metric,
        "scheduler": scheduler,
        "caveat": caveat,
        "front": [p["trial_id"] for p in front],
        "points": points,
    }


def front_points(pareto: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = {p["trial_id"]: p for p in pareto["points"]}
    return [by_id[t] for t in pareto["front"]]


# --- latency (after the search, one model at a time) ------------------------------------


def measure_latency(checkpoint_dir, seconds: float, seed: int = 0) -> float:
    """Milliseconds to separate `seconds` of fixed stereo noise with the best weights in
    `checkpoint_dir`, on CPU with LATENCY_THREADS threads (median of LATENCY_REPEATS after a warm-up)."""
    import torch  # lazy: torch (the CLI imports this module for its report table)

    from ..engine.checkpoint import load_model  # lazy: torch

    model, _ = load_model(checkpoint_dir)
    audio = torch.randn(1, 2, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(seed)) * 0.1
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        with torch.inference_mode():
            model.separate(audio)  # warm-up: first-call allocations are not latency
            times = []
            for _ in range(LATENCY_REPEATS):
                start = time.perf_counter()
                model.separate(audio)
                times.append(time.perf_counter() - start)
            return 1000 * statistics.median(times)
    finally:
        torch.set_num_threads(threads)


def add_latency(pareto: dict[str, Any], trials: Sequence[Any], seconds: float) -> None:
    """latency_ms on each front point (from its best checkpoint), measured one after another."""
    from .checkpoints import local_copy  # lazy: ray (the CLI imports this module for its report table)

    by_id = {t.trial_id: t for t in trials}
    for point in front_points(pareto):
        ckpt = by_id[point["trial_id"]].best_checkpoint
        if ckpt is None:
            continue
        try:
            with local_copy(ckpt) as folder:  # removed after (no temp folder per trial left behind)
                point["latency_ms"] = measure_latency(folder, seconds)
        except Exception as e:  # a missing checkpoint must not lose the front itself
            log.warning("latency of trial %s not measured: %s", point["trial_id"], e)
    pareto["latency"] = {
        "seconds_of_audio": seconds,
        "threads": LATENCY_THREADS,
        "repeats": LATENCY_REPEATS,
        "device": "cpu",
        "measured": "after the search, one model at a time",
    }


# --- rendering ---------------------------------------------------------------------------


def _header(name: str) -> str:
    return OBJECTIVES[name].label if name in OBJECTIVES else name


def _format(name: str, value: float) -> str:
    return OBJECTIVES[name].format(value) if name in OBJECTIVES else f"{value:.4g}"


def _searched_keys(pareto: dict[str, Any]) -> list[str]:
    return sorted({k for p in front_points(pareto) for k in p["config"]})


def front_rows(pareto: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the front table: trial, objectives, latency, epochs, searched values."""
    names, keys = list(pareto["objectives"]), _searched_keys(pareto)
    header = ["trial", *(_header(n) for n in names)]
    has_latency = any("latency_ms" in p for p in front_points(pareto))
    header += (["latency ms"] if has_latency else []) + ["epochs"] + [k.rsplit(".", 1)[-1] for k in keys]
    rows = []
    for p in front_points(pareto):
        row = [p["trial_id"], *(_format(n, p["values"][n]) for n in names)]
        if has_latency:
            row.append(f"{p['latency_ms']:.1f}" if "latency_ms" in p else "-")
        row.append(str(p["epochs"]) + ("" if p["status"] == "completed" else f" {p['status']}"))
        row += [_short(p["config"].get(k)) for k in keys]
        rows.append(row)
    return header, rows


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def title(pareto: dict[str, Any]) -> str:
    n, total = len(pareto["front"]), len(pareto["points"])
    goals = ", ".join(f"{mode} {name}" for name, mode in pareto["objectives"].items())
    return f"PARETO FRONT (validation; {goals}): {n} of {total} scored trials. {pareto['caveat']}"


def front_table(pareto: dict[str, Any]):
    """The front as a rich Table."""
    header, rows = front_rows(pareto)
    table = Table(title=title(pareto), title_justify="left")
    for h in header:
        table.add_column(h, justify="left" if h == "trial" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def front_markdown(pareto: dict[str, Any]) -> str:
    header, rows = front_rows(pareto)
    lines = [f"# {title(pareto)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if pareto.get("latency"):
        lat = pareto["latency"]
        lines += [
            "",
            f"Latency: {lat['seconds_of_audio']:g} s of audio, {lat['device']}, {lat['threads']} thread, "
            f"median of {lat['repeats']}, {lat['measured']}.",
        ]
    return "\n".join(lines) + "\n"
