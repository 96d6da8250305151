"""What a study cost: per trial and in total, for the search, the selection and test scoring.

Wall seconds are Ray's `time_total_s` of a trial (start to its last report, across restores);
CPU-seconds are the trainer process's CPU time per epoch (`epoch_cpu_seconds`, every thread
of the process); GPU-seconds are what a trial held: its wall time times its GPU share. What
pruning and early stopping saved: the epochs each trial did not run up to its budget, and
those epochs at the trial's own mean epoch time (an estimate: the epochs never ran).
"""

from __future__ import annotations

from typing import Any, Sequence

KEYS = ("wall_s", "cpu_s", "gpu_s", "epochs", "saved_epochs", "saved_s")
# The trials whose unrun epochs pruning and early stopping saved: the search ended them. A failed
# trial's were lost, a stopped or interrupted one's (`running` after a Ctrl-C) are not run yet.
SAVING_STATUSES = ("completed", "stopped_early", "pruned")


def saved_epochs(trial: Any, budget: int) -> int:
    """The epochs of its budget that the search spared a trial (0 unless it ended by the search's choice)."""
    return max(int(budget) - int(trial.epochs), 0) if trial.status in SAVING_STATUSES else 0


def trial_cost(trial: Any, budget: int, cpus: float, gpus: float) -> dict[str, Any]:
    """One trial's cost from its record (`epochs`, `history`, `metrics`, `status`)."""
    rows = trial.history or []
    epoch_s = [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds") is not None]
    wall = float((trial.metrics or {}).get("time_total_s") or sum(epoch_s))
    saved = saved_epochs(trial, budget)
    mean_epoch = sum(epoch_s) / len(epoch_s) if epoch_s else 0.0
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(sum(float(r.get("epoch_cpu_seconds") or 0.0) for r in rows), 2),
        "gpu_s": round(wall * gpus, 2),
        "epochs": int(trial.epochs),
        "saved_epochs": saved,
        "saved_s": round(saved * mean_epoch, 2),
        "resources": {"cpu": cpus, "gpu": gpus},
    }


def search_cost(trials: Sequence[Any], budget_of, cpus: float, gpus: float, wall_s: float) -> dict[str, Any]:
    """Totals over the search's trials (`budget_of(trial)`: its epoch budget) and the study's wall time."""
    per_trial = {t.trial_id: trial_cost(t, budget_of(t), cpus, gpus) for t in trials}
    totals = {k: round(sum(c[k] for c in per_trial.values()), 2) for k in KEYS}
    return {"wall_s": round(wall_s, 2), "trial_seconds": totals.pop("wall_s"), **totals, "trials": per_trial}


def selection_cost(
    jobs: Sequence[dict[str, Any]], seconds: dict[str, float], test: dict[str, float] | None
) -> dict[str, Any]:
    """The selection's retraining jobs (their `wall_s`/`cpu_s`) and the test scoring's own measure."""
    return {
        "wall_s": round(float(seconds.get("retrain_and_validate", 0.0)), 2),
        "job_seconds": round(sum(float(j.get("wall_s") or 0.0) for j in jobs), 2),
        "cpu_s": round(sum(float(j.get("cpu_s") or 0.0) for j in jobs), 2),
        "epochs": sum(int(j.get("epochs") or 0) for j in jobs if not j.get("reused")),
        "test": {"wall_s": round(float(seconds.get("test_and_register", 0.0)), 2), **(test or {})},
    }


def cost_lines(search: dict[str, Any] | None, selection: dict[str, Any] | None) -> list[str]:
    """The report's lines on what the study cost."""
    out = []
    if search:
        out.append(
            f"cost of the search: {search['wall_s']:.0f} s wall, {search['trial_seconds']:.0f} trial-seconds, "
            f"{search['cpu_s']:.0f} CPU-s"
            + (f", {search['gpu_s']:.0f} GPU-s" if search.get("gpu_s") else "")
            + f", {search['epochs']} trial-epochs"
        )
        out.append(
            f"  saved by pruning and early stopping: {search['saved_epochs']} trial-epochs, "
            f"about {search['saved_s']:.0f} trial-seconds (at each trial's own epoch time)"
        )
    if selection:
        test = selection.get("test") or {}
        out.append(
            f"cost of the selection: {selection['wall_s']:.0f} s wall, {selection['job_seconds']:.0f} job-seconds, "
            f"{selection['cpu_s']:.0f} CPU-s, {selection['epochs']} epochs retrained; test scoring and "
            f"registering: {test.get('wall_s', 0):.0f} s wall"
            + (f", {test['cpu_s']:.0f} CPU-s" if "cpu_s" in test else "")
        )
    return out
