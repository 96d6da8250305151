"""Searchers a study can name (`search.searcher`): one registry, each entry owning its space and checks.

An entry says how the study's distributions become Tune's `param_space` (`space`), which
search algorithm proposes trials (`build`), what it cannot handle (`check`: one
`key: what is wrong (what is valid)` line, or None), how many trials a study then runs
(`trials`) and whether it takes several objectives. Adding a searcher is one entry here
and its tests; `runner` and `study` only call the public functions at the bottom.

Optuna-based entries build with `optuna_search(study, sampler)`: Ray's `OptunaSearch`
(tolerant of trials it does not know, told every objective), which converts the Tune domains to
Optuna distributions with the same inclusive bounds (`Distribution.to_tune`/`to_optuna`).
Every searcher is seeded by `search.seed`: the same study file proposes the same trials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError
from .objectives import searcher_objectives

# A search.study.Study: not imported, since the study module imports this registry to check a study.
Study = Any


def tune_space(study: Study) -> dict[str, Any]:
    """Each searched key as the Tune domain of its distribution."""
    return {key: dist.to_tune() for key, dist in study.space.items()}


def _no_problem(study: Study) -> str | None:
    return None


def _num_samples(study: Study) -> int:
    return study.search.num_samples


@dataclass(frozen=True)
class SearcherEntry:
    name: str
    description: str
    build: Callable[[Study], Any]  # the Tune search algorithm
    space: Callable[[Study], dict[str, Any]] = tune_space
    check: Callable[[Study], str | None] = _no_problem
    trials: Callable[[Study], int] = _num_samples
    multi_objective: bool = False  # takes search.objectives (several directions)
    # Tune applies TuneConfig.max_concurrent_trials to a Searcher only (for a given
    # BasicVariantGenerator it warns and ignores it): False means the entry limits it itself.
    tune_limits_concurrency: bool = True
    warm_start: bool = False  # can be told earlier studies' trials as already evaluated (search.warm_start)


# --- Optuna ---------------------------------------------------------------------------


def optuna_search(study: Study, sampler: Any):
    """Ray's OptunaSearch over `sampler`. One objective: metric/mode come from TuneConfig;
    several: the searcher gets them all (the quality at each trial's best epoch first)."""
    import optuna  # lazy: heavy; loading a study must not pay for it

    from .adapters import RestartTolerantOptuna  # lazy: imports ray.tune; loading a study must not

    # Optuna's lines ("A new study created in memory") through the application's logging, not a
    # handler of its own: the CLI keeps INFO in its log file, off the screen.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    s = study.search
    objectives = searcher_objectives(study.metric, s.objectives) if s.multi_objective else {}
    # Warm start: the earlier studies' trials enter Optuna as evaluated (`evaluated_rewards`), so
    # they are not run again; Ray takes either those or the points to try first, not both.
    points = study.warm_points or study.points_to_evaluate
    return RestartTolerantOptuna(
        sampler=sampler,
        metric=list(objectives) or None,
        mode=list(objectives.values()) or None,
        points_to_evaluate=points or None,
        evaluated_rewards=study.warm_rewards or None,
    )


def _tpe(study: Study):
    import optuna  # lazy: heavy; loading a study must not pay for it

    # TPE seeded: the same study file proposes the same first configurations; with several
    # objectives Optuna's TPE is its multi-objective variant.
    return optuna_search(study, optuna.samplers.TPESampler(seed=study.search.seed))


def _cmaes(study: Study):
    import optuna  # lazy: heavy; loading a study must not pay for it

    # Its first trial (n_startup_trials) comes from a RandomSampler seeded alike.
    return optuna_search(study, optuna.samplers.CmaEsSampler(seed=study.search.seed))


def _check_cmaes(study: Study) -> str | None:
    """CMA-ES models a continuous space: Optuna samples choices, and a space of one dimension,
    with its independent (random) sampler instead, which would silently be a random search."""
    choices = [k for k, d in study.space.items() if d.categorical]
    if choices:
        return (
            f"search.searcher: cmaes samples numeric ranges only, but {', '.join(choices)} "
            f"{'is a choice' if len(choices) == 1 else 'are choices'}; valid: int, uniform or loguniform "
            f"ranges, or searcher: optuna"
        )
    if len(study.space) < 2:
        return (
            f"search.searcher: cmaes needs at least 2 searched ranges, got {len(study.space)} "
            f"({', '.join(study.space)}); valid: search another field, or searcher: optuna"
        )
    return None


# --- Ray's own sampling ---------------------------------------------------------------


def _variant_generator(study: Study):
    from ray.tune.search.basic_variant import BasicVariantGenerator  # lazy: imports ray

    s = study.search
    return BasicVariantGenerator(
        random_state=s.seed,
        points_to_evaluate=study.points_to_evaluate or None,
        max_concurrent=s.max_concurrent_trials or 0,
    )


def _grid_space(study: Study) -> dict[str, Any]:
    from ray import tune  # lazy: loading a study must not pay for Ray

    return {key: tune.grid_search(dist.grid_values()) for key, dist in study.space.items()}


def _check_grid(study: Study) -> str | None:
    continuous = [k for k, d in study.space.items() if d.size is None]
    if continuous:
        return f"search.searcher: grid needs discrete distributions (choice or int); {continuous} are continuous"
    return None


def _grid_trials(study: Study) -> int:
    """num_samples passes over the whole grid."""
    size = 1
    for dist in study.space.values():
        size *= dist.size or 1
    return study.search.num_samples * size


SEARCHERS: dict[str, SearcherEntry] = {
    e.name: e
    for e in (
        SearcherEntry(
            "optuna",
            "Optuna TPE (multi-objective TPE with search.objectives)",
            _tpe,
            multi_objective=True,
            warm_start=True,
        ),
        SearcherEntry(
            "random", "Ray's random sampling", _variant_generator, multi_objective=True, tune_limits_concurrency=False
        ),
        SearcherEntry(
            "grid",
            "every value of every choice / int range, num_samples times",
            _variant_generator,
            space=_grid_space,
            check=_check_grid,
            trials=_grid_trials,
            multi_objective=True,
            tune_limits_concurrency=False,
        ),
        SearcherEntry(
            "cmaes", "Optuna's CMA-ES (numeric ranges only, at least 2)", _cmaes, check=_check_cmaes, warm_start=True
        ),
    )
}


# --- what the rest of the search calls --------------------------------------------------


def get(name: str) -> SearcherEntry:
    try:
        return SEARCHERS[name]
    except KeyError:
        raise ConfigError(f"search.searcher: {name!r} is not a searcher; valid: {', '.join(SEARCHERS)}") from None


def check(study: Study) -> None:
    """The searcher's own checks: ConfigError `FILE: key: ...`."""
    entry = get(study.search.searcher)
    problem = entry.check(study)
    if problem is None and study.search.multi_objective and not entry.multi_objective:
        takes = ", ".join(n for n, e in SEARCHERS.items() if e.multi_objective)
        problem = (
            f"search.searcher: {entry.name} optimises one objective, but search.objectives names "
            f"{len(study.search.objectives)}; valid: searcher {takes}, or metric: instead of objectives"
        )
    if problem is None and study.search.warm_start and not entry.warm_start:
        takes = ", ".join(n for n, e in SEARCHERS.items() if e.warm_start)
        problem = f"search.warm_start: searcher {entry.name} cannot be told earlier trials; valid: searcher {takes}"
    if (
        problem is None
        and study.search.warm_start
        and study.spec.estimate.enabled
        and study.spec.estimate.use == "seed"
    ):
        problem = "search.warm_start: cannot be combined with points to try first (estimate.use: seed)"
    if problem:
        raise ConfigError(f"{study.source}: {problem}")


def build_searcher(study: Study):
    """The Tune search algorithm (TuneConfig.search_alg) of the study's searcher."""
    return get(study.search.searcher).build(study)


def param_space(study: Study) -> dict[str, Any]:
    """Tune's `param_space`: flat, dotted keys (`model.slices`) -> domains.

    Only the searched keys travel as trial config; the fixed parts reach the trainable
    through its context, so trial configs (and MLflow's compare view) show what varies.
    """
    return get(study.search.searcher).space(study)


def num_trials(study: Study) -> int:
    """Trials the study will run (num_samples, times the grid for `searcher: grid`)."""
    return get(study.search.searcher).trials(study)


def max_concurrent_trials(study: Study) -> int | None:
    """TuneConfig.max_concurrent_trials: the study's limit where Tune applies it (see SearcherEntry)."""
    return study.search.max_concurrent_trials if get(study.search.searcher).tune_limits_concurrency else None


def tune_metric(study: Study) -> dict[str, Any]:
    """TuneConfig's metric/mode: the study metric, or none when several objectives are searched
    (Tune would pass its single metric on to the searcher and the scheduler, which have their own)."""
    if study.search.multi_objective:
        return {"metric": None, "mode": None}
    return {"metric": study.metric, "mode": study.mode}
