"""Which hyperparameters matter: Optuna's importance evaluators over a finished search.

Every trial that reported counts (finished, stopped early or pruned), at its last reported
epoch: a pruned trial's value is what the scheduler judged it by. fANOVA (a random forest,
seeded, so a report is reproducible) always runs when there is something to explain;
PED-ANOVA asks which parameters separate the top trials from the rest, so it needs enough
trials for a top quantile of at least two.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import create_trial

log = logging.getLogger(__name__)

SLICES = "model.slices"
MIN_TRIALS = 4  # fewer points than that leave a forest nothing to split
PED_ANOVA_TOP = 0.25  # the top quarter; with PED_ANOVA_MIN_TRIALS trials that is at least two
PED_ANOVA_MIN_TRIALS = 8
SEED = 0


def last_values(trial: Any, objectives: dict[str, str]) -> dict[str, float] | None:
    """The trial's objective values at its last reported epoch, or None if one is missing."""
    history = getattr(trial, "history", None) or []
    last = getattr(trial, "metrics", None) or (history[-1] if history else {})  # Tune's last result: every key
    values = {}
    for name in objectives:
        value = last.get(name)
        if value is None or not math.isfinite(float(value)):
            return None
        values[name] = float(value)
    return values


def param_importance(
    trials: Sequence[Any], space: dict[str, BaseDistribution], objectives: dict[str, str]
) -> dict[str, Any]:
    """{"trials": n, "params": [...], "objectives": {name: {"fanova": {param: share}, "ped_anova": ...}}}.

    `trials` carry `.config` (dotted keys) and `.history` (per-epoch metrics); `space` maps the
    searched keys to Optuna distributions; `objectives` maps each objective to "min"/"max".
    Shares sum to 1 per evaluator; parameters that never varied are left out.
    """
    points = []
    for t in trials:
        values = last_values(t, objectives)
        params = {k: t.config[k] for k in space if k in (t.config or {})}
        if values is not None and len(params) == len(space):
            points.append((params, values))
    varied = [k for k in space if len({repr(p[k]) for p, _ in points}) > 1]
    out: dict[str, Any] = {"trials": len(points), "params": varied, "at": "last reported epoch", "objectives": {}}
    if len(points) < MIN_TRIALS or not varied:
        out["skipped"] = f"{len(points)} trials with values, {len(varied)} parameters that varied"
        return out
    for name, mode in objectives.items():
        if len({v[name] for _, v in points}) < 2:  # constant (every model the same size): nothing to explain,
            continue  # and fANOVA raises on zero variance
        study = _optuna_study([(p, v[name]) for p, v in points], {k: space[k] for k in varied}, mode)
        found = {"fanova": _shares(study, FanovaImportanceEvaluator(seed=SEED))}
        if len(points) >= PED_ANOVA_MIN_TRIALS:
            found["ped_anova"] = _shares(study, PedAnovaImportanceEvaluator(target_quantile=PED_ANOVA_TOP))
        out["objectives"][name] = found
    return out


def _optuna_study(points, space: dict[str, BaseDistribution], mode: str) -> optuna.Study:
    # Not one "study created" line per objective; Optuna's level is put back for the search's own lines.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials([create_trial(params={k: p[k] for k in space}, distributions=space, value=v) for p, v in points])
    return study


def _shares(study: optuna.Study, evaluator) -> dict[str, float]:
    shares = get_param_importances(study, evaluator=evaluator)  # normalized: they sum to 1
    return {k: round(v, 4) if math.isfinite(v) else 0.0 for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def slices_line(importance: dict[str, Any], metric: str) -> str:
    """One line: does the slice count matter for the study metric?"""
    found = importance.get("objectives", {}).get(metric, {}).get("fanova")
    if found is None:
        why = importance.get("skipped", f"no values for {metric}")
        return f"does the slice count matter? not computed ({why})"
    if SLICES not in found:
        return "does the slice count matter? it was not searched (or never varied)"
    ranked = list(found)
    share, rank = found[SLICES], ranked.index(SLICES) + 1
    verdict = "yes, the most" if rank == 1 else ("yes" if share >= 1 / len(ranked) else "little")
    return (
        f"does the slice count matter? {verdict}: {SLICES} has {share:.0%} of the importance for {metric} "
        f"(fANOVA over {importance['trials']} trials at their last epoch; rank {rank} of {len(ranked)})"
    )


def mlflow_metrics(importance: dict[str, Any]) -> dict[str, float]:
    """Flat metrics for the parent run: importance.<evaluator>.<objective>.<param>."""
    return {
        f"importance.{ev}.{obj}.{param}": share
        for obj, by_ev in importance.get("objectives", {}).items()
        for ev, shares in by_ev.items()
        for param, share in shares.items()
    }
