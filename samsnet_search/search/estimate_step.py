"""The unsupervised slice estimate inside a study: computed before the search, logged
to the parent MLflow run, and optionally used to seed or narrow the search over `model.slices`.

The estimate reads the study's training mixtures only (never validation or test data), with the
study's shortest training segment, its STFT, and the slice values its space allows. Its JSON also
goes into the study folder (`<storage>/<name>/slice_estimate.json`), so `samsnet-search report`
can show it beside the searched optimum without MLflow.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.entities import Metric, Param

from ..data import load_splits
from ..errors import ConfigError
from ..services import tracking
from . import identity
from .estimate import SliceEstimate, estimate_slices
from .study import Choice, Study

log = logging.getLogger(__name__)

SLICES_KEY = "model.slices"
ARTIFACT = "slice_estimate.json"


def study_estimate(study: Study) -> SliceEstimate:
    """The estimate for a study's training data, segment length, STFT and allowed slice values."""
    cfg = study.representative()
    seconds = min(study.values("data.segment_seconds"))
    allowed = sorted(set(study.values(SLICES_KEY)))
    splits = load_splits(cfg.data)
    return estimate_slices(
        splits, seconds, allowed, cfg.model.n_fft, cfg.model.hop_length, max_tracks=study.spec.estimate.max_tracks
    )


def seed_point(study: Study, est: SliceEstimate) -> dict[str, Any]:
    """A full configuration (every searched key) with the estimated slice count and the other keys
    at their representative value: Ray's searchers need every key in a point to evaluate."""
    point = {key: dist.representative() for key, dist in study.space.items()}
    point[SLICES_KEY] = est.slices_estimate
    return point


def narrowed_slices(study: Study, est: SliceEstimate) -> list[int]:
    """The study's slice values inside the estimate's IQR (always including the estimate itself)."""
    low, high = est.iqr
    values = sorted(set(study.values(SLICES_KEY)))
    kept = [v for v in values if low <= v <= high or v == est.slices_estimate]
    return kept


def apply_estimate(study: Study, est: SliceEstimate) -> str:
    """Seed or narrow the study's search in place, as `estimate.use` says; returns what was done."""
    use = study.spec.estimate.use
    if use == "seed":
        study.points_to_evaluate = [seed_point(study, est)]
        return f"seed: slices={est.slices_estimate} is tried first"
    if use == "narrow":
        kept = narrowed_slices(study, est)
        if not kept:  # cannot happen (the estimate is an allowed value), but never search nothing
            raise ConfigError(f"{study.source}: estimate.use: narrow left no model.slices value")
        study.space[SLICES_KEY] = Choice(choice=kept)
        return f"narrow: model.slices searched over {kept} (IQR {est.iqr[0]:g}-{est.iqr[1]:g})"
    return "none: reported only"


def log_estimate(target: tracking.TrackingTarget, run_id: str, est: SliceEstimate, action: str) -> None:
    """Params (estimate.*), metrics (the summary numbers) and the full JSON on the parent run."""
    c = tracking.client(target)
    existing = c.get_run(run_id).data.params
    params = {
        "estimate.slices": str(est.slices_estimate),
        "estimate.use": action.split(":")[0],
        "estimate.method": str(est.params.get("method", "eigengap")),
        "estimate.segment_seconds": f"{est.segment_seconds:g}",
    }
    params = {k: v for k, v in params.items() if k not in existing}  # params are immutable in MLflow
    metrics = [Metric(k, float(v), 0, 0) for k, v in est.summary().items()]
    c.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    c.set_tag(run_id, "samsnet.estimate", action)
    tracking.log_json(target, run_id, est.to_dict() | {"action": action}, ARTIFACT)


def before_search(study: Study, target: tracking.TrackingTarget, run_id: str) -> SliceEstimate | None:
    """Compute, log and apply the estimate when the study file enables it; None otherwise."""
    if not study.spec.estimate.enabled:
        return None
    est = study_estimate(study)
    action = apply_estimate(study, est)
    log.info(
        "slice estimate: %d (median %g, IQR %g-%g); %s",
        est.slices_estimate,
        est.median_slices,
        est.iqr[0],
        est.iqr[1],
        action,
    )
    log_estimate(target, run_id, est, action)
    save_estimate(identity.study_uri(study.storage, study.name), est, action)
    return est


def save_estimate(study_path: str, est: SliceEstimate, action: str) -> str:
    """The full estimate JSON (as logged to MLflow) into the study folder; returns its URI."""
    identity.write_study_json(study_path, ARTIFACT, est.to_dict() | {"action": action})
    return identity.study_uri(study_path, ARTIFACT)


def load_estimate(study_path: str) -> dict[str, Any] | None:
    """The study folder's estimate JSON, or None when the study ran without the estimate."""
    return identity.read_study_json(study_path, ARTIFACT)
