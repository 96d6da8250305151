"""The searcher registry (samsnet_search.search.searchers): proposals, spaces and each entry's checks."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import yaml
from ray.tune.experiment import Experiment
from ray.tune.search import Searcher

from samsnet_search.errors import ConfigError
from samsnet_search.search import searchers
from samsnet_search.search.study import load_study

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = {"model.channels": {"int": [2, 8]}, "train.lr": {"loguniform": [1e-4, 1e-2]}}


def write_study(tmp_path: Path, search: dict, model: dict | None = None, train: dict | None = None) -> Path:
    study = {
        "model": {"n_fft": 256, "hop_length": 128, "slices": 2, "channels": 2, "depth": 1, **(model or {})},
        "data": {"root": str(tmp_path), "segment_seconds": 0.5},
        "train": {"epochs": 2, "patience": 2, **(train or {})},
        "search": search,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def numeric_study(tmp_path: Path, **search):
    path = write_study(
        tmp_path, search, model={"channels": NUMERIC["model.channels"]}, train={"lr": NUMERIC["train.lr"]}
    )
    return load_study(path, base_dir=tmp_path, check_data=False)


def trainable(config: dict) -> None:
    pass


def proposals(study, n: int) -> list[dict]:
    """The first n configurations the study's searcher proposes, told no results."""
    searcher = searchers.build_searcher(study)
    space = searchers.param_space(study)
    if not isinstance(searcher, Searcher):  # Ray's variant generator: it expands an experiment
        searcher.add_configurations([Experiment("s", trainable, config=space, num_samples=study.search.num_samples)])
        return [t.config for t in iter(searcher.next_trial, None)][:n]
    searcher.set_search_properties(study.metric, study.mode, space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notes
        return [searcher.suggest(f"t{i}") for i in range(n)]


def rounded(config: dict) -> dict:
    return {k: round(v, 8) if isinstance(v, float) else v for k, v in config.items()}


def test_quickstart_proposes_what_it_always_proposed(tmp_path):
    """The quickstart's first trials for seed 0, as a real `run search_spaces/quickstart.yaml` drew
    them (its six trials, recorded after the space was re-tuned): the same study file, the same trials."""
    study = load_study(ROOT / "search_spaces" / "quickstart.yaml", base_dir=tmp_path, check_data=False)
    assert [rounded(c) for c in proposals(study, 6)] == [
        {"model.slices": 4, "model.heads": 1, "model.channels": 4, "train.lr": 0.00779423},
        {"model.slices": 1, "model.heads": 2, "model.channels": 4, "train.lr": 0.00122216},
        {"model.slices": 4, "model.heads": 2, "model.channels": 4, "train.lr": 0.00603294},
        {"model.slices": 4, "model.heads": 1, "model.channels": 4, "train.lr": 0.00594612},
        {"model.slices": 4, "model.heads": 1, "model.channels": 8, "train.lr": 0.0048064},
        {"model.slices": 16, "model.heads": 2, "model.channels": 4, "train.lr": 0.00134563},
    ]


@pytest.mark.parametrize("name", list(searchers.SEARCHERS))
def test_every_searcher_is_seeded_and_stays_in_its_space(tmp_path, name):
    model = {"channels": {"choice": [2, 4]}, "depth": {"int": [1, 2]}} if name == "grid" else None
    train = {"lr": 1e-3} if name == "grid" else None
    if name == "grid":
        path = write_study(tmp_path, {"searcher": "grid", "num_samples": 1}, model, train)
        study = load_study(path, base_dir=tmp_path, check_data=False)
    else:
        study = numeric_study(tmp_path, searcher=name, seed=3)
    first, again = proposals(study, 4), proposals(study, 4)
    assert len(first) == 4 and first == again  # the same seed proposes the same trials
    for config in first:
        assert set(config) == set(study.space)
        for key, value in config.items():
            dist = study.space[key]
            if dist.size is not None:
                assert value in dist.grid_values(), (key, value)
            else:
                low, high = dist.check_values()
                assert low <= value <= high, (key, value)
    if name == "grid":  # every combination once
        assert sorted((c["model.channels"], c["model.depth"]) for c in first) == [(2, 1), (2, 2), (4, 1), (4, 2)]
    else:  # another seed, other trials
        other = numeric_study(tmp_path, searcher=name, seed=4)
        assert proposals(other, 4) != first


def test_cmaes_proposes_numeric_ranges_through_optuna(tmp_path):
    study = numeric_study(tmp_path, searcher="cmaes", seed=0)
    configs = proposals(study, 3)
    assert all(isinstance(c["model.channels"], int) and isinstance(c["train.lr"], float) for c in configs)
    assert searchers.max_concurrent_trials(numeric_study(tmp_path, searcher="cmaes", max_concurrent_trials=2)) == 2


@pytest.mark.parametrize(
    "model, train, search, message",
    [
        (
            {"channels": {"choice": [2, 4]}},
            {"lr": NUMERIC["train.lr"]},
            {"searcher": "cmaes"},
            "s.yaml: search.searcher: cmaes samples numeric ranges only, but model.channels is a choice; "
            "valid: int, uniform or loguniform ranges, or searcher: optuna",
        ),
        (
            {"channels": NUMERIC["model.channels"]},
            {},
            {"searcher": "cmaes"},
            "s.yaml: search.searcher: cmaes needs at least 2 searched ranges, got 1 (model.channels); "
            "valid: search another field, or searcher: optuna",
        ),
        (
            {"channels": NUMERIC["model.channels"]},
            {"lr": NUMERIC["train.lr"], "valid_sdr_every": 1},
            {"searcher": "cmaes", "objectives": ["valid_sdr", "params"]},
            "s.yaml: search.searcher: cmaes optimises one objective, but search.objectives names 2; "
            "valid: searcher optuna, random, grid, or metric: instead of objectives",
        ),
        (
            {"channels": NUMERIC["model.channels"]},
            {"lr": NUMERIC["train.lr"]},
            {"searcher": "grid"},
            "s.yaml: search.searcher: grid needs discrete distributions (choice or int); ['train.lr'] are continuous",
        ),
        (
            {"channels": NUMERIC["model.channels"]},
            {},
            {"searcher": "bayes"},
            "s.yaml: search.searcher: not a searcher; valid: optuna, random, grid, cmaes (got 'bayes')",
        ),
    ],
)
def test_a_searcher_refuses_a_space_it_cannot_search(tmp_path, model, train, search, message):
    with pytest.raises(ConfigError) as err:
        load_study(write_study(tmp_path, search, model, train), base_dir=tmp_path, check_data=False)
    assert str(err.value).endswith(message) and len(str(err.value).splitlines()) == 1, str(err.value)


def test_only_searchers_that_take_the_limit_get_it_from_tune(tmp_path):
    """Tune ignores TuneConfig.max_concurrent_trials for a given BasicVariantGenerator: random
    and grid limit themselves, the Optuna searchers through Tune."""
    limits = {}
    for name in ("optuna", "random"):
        study = numeric_study(tmp_path, searcher=name, max_concurrent_trials=2)
        limits[name] = (
            searchers.max_concurrent_trials(study),
            getattr(searchers.build_searcher(study), "max_concurrent", None),
        )
    assert limits == {"optuna": (2, None), "random": (None, 2)}


def test_a_new_searcher_is_one_registry_entry(tmp_path, monkeypatch):
    """Optuna's GP sampler registered at run time, with its own refusal: the study file accepts
    the name, the entry's check runs at load time, and the searcher proposes the study's space."""
    import optuna

    def check_gp(study):
        too_many = [k for k, d in study.space.items() if d.categorical and d.size > 8]
        return f"search.searcher: gp takes choices of at most 8 values; {too_many} have more" if too_many else None

    entry = searchers.SearcherEntry(
        "gp",
        "Optuna's Gaussian-process sampler",
        lambda study: searchers.optuna_search(study, optuna.samplers.GPSampler(seed=study.search.seed)),
        check=check_gp,
    )
    monkeypatch.setitem(searchers.SEARCHERS, "gp", entry)
    study = numeric_study(tmp_path, searcher="gp", seed=0)
    configs = proposals(study, 3)
    assert len(configs) == 3 and all(2 <= c["model.channels"] <= 8 for c in configs)
    with pytest.raises(
        ConfigError, match=r"s.yaml: search.searcher: gp takes choices of at most 8 values; \['model.channels'\]"
    ):
        path = write_study(tmp_path, {"searcher": "gp"}, model={"channels": {"choice": list(range(2, 12))}})
        load_study(path, base_dir=tmp_path, check_data=False)


def test_optunas_lines_go_through_the_applications_logging(tmp_path, caplog):
    """No handler of Optuna's own prints "A new study created" to the screen; the record reaches the
    root logger, where the CLI keeps INFO in its log file."""
    study = load_study(ROOT / "search_spaces" / "quickstart.yaml", base_dir=tmp_path, check_data=False)
    caplog.set_level("INFO")
    proposals(study, 1)
    own = logging.getLogger("optuna")
    assert own.propagate and not [h for h in own.handlers if type(h) is logging.StreamHandler]
    assert any(r.name.startswith("optuna") and "A new study created" in r.getMessage() for r in caplog.records)
