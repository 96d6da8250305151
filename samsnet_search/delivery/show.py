"""Plain-text views of a study for the CLI: the resolved space, a finished search, `ls`."""

from __future__ import annotations

import time

from ..search import identity, schedulers
from ..search.identity import Manifest
from ..search.runner import StudyResult
from ..search.space import describe, num_trials, space_size
from ..search.study import Study


def format_space(study: Study) -> str:
    """What `validate` prints: identity, searched keys, fixed values, settings."""
    s = study.search
    size = space_size(study)
    lines = [
        f"study {study.name} ({study.source}): valid",
        f"  storage:  {identity.display_uri(identity.study_uri(study.storage, study.name))}",
        f"  tracking: {study.tracking_uri} (experiment {study.name}, registered model samsnet-{study.name})",
        f"  search:   {num_trials(study)} trials, {s.searcher} (seed {s.seed}), "
        + schedulers.get(s.scheduler).describe(s, study.max_t)
        + (
            f", objectives {', '.join(f'{k} ({v})' for k, v in s.objective_modes.items())}"
            if s.multi_objective
            else f", {study.metric} ({study.mode})"
        ),
        f"  trial:    {study.spec.resources.cpu:g} CPU, {study.spec.resources.gpu:g} GPU"
        + (f", at most {s.max_concurrent_trials} at once" if s.max_concurrent_trials else "")
        + (f", time budget {s.time_budget_s:g} s" if s.time_budget_s else ""),
        f"  selection: {study.spec.selection.seeds} seeds per slice value",
        f"searched ({len(study.space)} keys, {size if size is not None else 'continuous'} configurations):",
    ]
    rows = describe(study)
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows[: len(study.space)]]
    lines.append("fixed:")
    lines += [f"  {k:<{width}}  {v}" for k, v in rows[len(study.space) :]]
    return "\n".join(lines)


def format_result(result: StudyResult) -> str:
    """What `run` / `resume` print at the end of the search."""
    summary = result.summary()
    study = result.study
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["counts"].items()))
    lines = [
        f"study {study.name}: {'INTERRUPTED (resume with: samsnet-search resume ' + study.name + ')' if result.interrupted else 'search finished'}"
        f" in {summary['seconds']:.0f} s",
        f"  trials: {summary['trials']} ({counts or 'none'})",
        _epochs_line(summary, result.interrupted),
    ]
    best = result.best
    if best is not None:
        config = " ".join(f"{k}={v}" for k, v in best.config.items())
        lines.append(
            f"  best: trial {best.trial_id} {study.metric}={best.best[study.metric]:.4g} at epoch "
            f"{best.best.get('epoch')}: {config}"
        )
    failed = [t for t in result.trials if t.status == "failed"]
    for t in failed[:5]:
        lines.append(f"  failed: trial {t.trial_id}: {t.error}")
    lines.append(f"  results: {identity.display_uri(result.manifest.path)}")
    lines.append(f"  {result.target.where(result.manifest.experiment_id)}")
    return "\n".join(lines)


def _epochs_line(summary: dict, interrupted: bool) -> str:
    run, full = summary["epochs_run"], summary["epochs_full"]
    if interrupted:  # the unfinished trials' epochs are neither saved nor spent yet
        return (
            f"  trial-epochs so far: {run}; pruning and early stopping saved {full - run} more "
            "in the trials that ended (the unfinished ones count when the study is resumed)"
        )
    return (
        f"  trial-epochs: {run} of {full} if every pruned or early-stopped trial had run to the end "
        f"({100 * summary['fraction_saved']:.0f}% saved by pruning and early stopping)"
    )


def format_studies(manifests: list[Manifest]) -> str:
    """What `ls` prints: one line per study."""
    if not manifests:
        return "no studies"
    rows = [("NAME", "STATE", "TRIALS", "BEST", "UPDATED", "MLFLOW EXPERIMENT")]
    for m in manifests:
        if m.damaged:
            rows.append((m.name, m.state, "-", "-", "-", "-"))
            continue
        counts = m.summary.get("counts", {})
        trials = " ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-"
        best_key = next(
            (k for k in m.summary if k.startswith("best_") and k not in ("best_trial", "best_run", "best_config")), None
        )
        best = m.summary.get(best_key) if best_key else None
        best_text = f"{best_key.removeprefix('best_')} {best:.4g}" if isinstance(best, (int, float)) else "-"
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.updated))
        rows.append((m.name, m.state, trials, best_text, updated, f"{m.experiment_name} ({m.tracking_uri})"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
