"""Warm start: the trials of earlier studies, given to the searcher as already evaluated.

Enlarging a space should not pay for the old trials again. An earlier study is compatible when
it searched the same parameter names with the same objectives and every one of its trials lies
inside the new ranges; anything else is an error naming the parameter. A trial counts with what
the searcher saw of it when it ended (its last reported result: a pruned trial at the rung it
was stopped at), as Ray's OptunaSearch hands it to Optuna; failed trials are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..services import storage
from . import identity, objectives, searchers
from .checkpoints import TRIAL_PREFIX, read_results
from .study import Distribution, Study, load_stored

ARTIFACT = "warm_start.json"  # in the study folder: {"sources": {earlier study: trials taken}}
ERROR_FILES = ("error.txt", "error.pkl")  # Tune writes these into the folder of a trial that failed


class WarmStartError(ConfigError):
    """An earlier study cannot warm-start this one."""


@dataclass
class WarmStart:
    points: list[dict[str, Any]] = field(default_factory=list)  # dotted keys, every searched key
    rewards: list[Any] = field(default_factory=list)  # one value, or one per searcher objective
    sources: dict[str, int] = field(default_factory=dict)  # earlier study -> trials taken from it


def extend(study: Study, names: list[str]) -> Study:
    """The study with more earlier studies to warm-start from (`run --warm-start NAME`), checked."""
    if names:
        study.spec.search.warm_start = [
            *study.spec.search.warm_start,
            *(n for n in names if n not in study.spec.search.warm_start),
        ]
        searchers.check(study)
    return study


def searcher_keys(study: Study) -> list[str]:
    """The result keys the searcher is told of each trial, in its order."""
    s = study.search
    return list(objectives.searcher_objectives(study.metric, s.objectives)) if s.multi_objective else [study.metric]


def load(study: Study, names: list[str]) -> WarmStart:
    """The earlier studies' trials for `study`'s searcher; WarmStartError names what does not fit."""
    warm = WarmStart()
    for name in names:
        earlier = _earlier_study(name, study)
        _check_compatible(study, earlier, name)
        taken = 0
        for config, last in _finished_trials(earlier):
            point = {k: config[k] for k in study.space}
            _check_inside(study.space, point, name)
            values = [last.get(k) for k in searcher_keys(study)]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):  # a diverged trial: left out
                warm.points.append(point)
                warm.rewards.append(values if len(values) > 1 else values[0])
                taken += 1
        warm.sources[name] = taken
    return warm


def _earlier_study(name: str, study: Study) -> Study:
    if name == study.name:
        raise WarmStartError(f"search.warm_start: {name!r} is this study itself (name an earlier study)")
    manifest = identity.find_study(name, study.storage)
    earlier = load_stored(manifest, check_data=False)
    if earlier is None:
        raise WarmStartError(f"search.warm_start: study {name!r} has no study file copy in {manifest.path}")
    return earlier


def _check_compatible(study: Study, earlier: Study, name: str) -> None:
    new, old = set(study.space), set(earlier.space)
    for key in sorted(old - new):
        raise WarmStartError(
            f"search.warm_start: study {name!r} searched {key}, which this study does not "
            f"(searched here: {', '.join(sorted(new))})"
        )
    for key in sorted(new - old):
        raise WarmStartError(
            f"search.warm_start: study {name!r} did not search {key}, which this study does "
            f"(it searched: {', '.join(sorted(old))})"
        )
    if searcher_keys(earlier) != searcher_keys(study) or earlier.mode != study.mode:
        raise WarmStartError(
            f"search.warm_start: study {name!r} optimised {searcher_keys(earlier)} ({earlier.mode}), "
            f"this study {searcher_keys(study)} ({study.mode}): the values are not comparable"
        )


def _check_inside(space: dict[str, Distribution], point: dict[str, Any], name: str) -> None:
    for key, dist in space.items():
        if not _contains(dist, point[key]):
            raise WarmStartError(
                f"search.warm_start: study {name!r} has a trial with {key} = {point[key]!r}, "
                f"outside this study's {dist.describe()}"
            )


def _contains(dist: Distribution, value: Any) -> bool:
    od = dist.to_optuna()
    if hasattr(od, "choices"):
        return value in od.choices
    if not isinstance(value, (int, float)) or not od.low <= value <= od.high:
        return False
    step = getattr(od, "step", None)
    return step is None or abs((value - od.low) / step - round((value - od.low) / step)) < 1e-9


def _finished_trials(earlier: Study) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(config, last reported result) of every trial of the earlier study that did not fail."""
    study_uri = identity.study_uri(earlier.storage, earlier.name)
    fs, root = storage.filesystem(study_uri)
    out = []
    for folder in storage.subfolders(fs, root, TRIAL_PREFIX):
        uri = storage.join(study_uri, folder.rsplit("/", 1)[-1])  # keeps an S3 URI's endpoint
        if any(storage.is_file(storage.join(uri, f)) for f in ERROR_FILES):
            continue
        rows = read_results(uri)
        if rows and set(earlier.space) <= set(rows[-1].get("config") or {}):
            out.append((rows[-1]["config"], rows[-1]))
    return out
