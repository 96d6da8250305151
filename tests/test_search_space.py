"""Study distributions -> Ray Tune domains -> Optuna distributions, with inclusive bounds."""

from __future__ import annotations

import random

import pytest
import yaml
from ray.tune.search.optuna import OptunaSearch

from samsnet_search.search.space import num_trials, space_size, tune_space
from samsnet_search.search.study import Choice, IntRange, LogUniform, Uniform, load_study


def _samples(domain, n=400):
    random.seed(0)
    return [domain.sample() for _ in range(n)]


def test_int_range_is_inclusive_in_tune_and_optuna():
    values = set(_samples(IntRange(int=(2, 4)).to_tune()))
    assert values == {2, 3, 4}  # Ray's randint excludes its upper bound: shifted here
    assert set(_samples(IntRange(int=(4, 12), step=4).to_tune())) == {4, 8, 12}
    logs = _samples(IntRange(int=(1, 8), log=True).to_tune())
    assert min(logs) == 1 and max(logs) == 8
    # OptunaSearch converts the Tune domains to the same inclusive ranges
    converted = OptunaSearch.convert_search_space(
        {
            "a": IntRange(int=(2, 4)).to_tune(),
            "b": IntRange(int=(4, 12), step=4).to_tune(),
            "c": IntRange(int=(1, 8), log=True).to_tune(),
        }
    )
    assert (converted["a"].low, converted["a"].high, converted["a"].step) == (2, 4, 1)
    assert (converted["b"].low, converted["b"].high, converted["b"].step) == (4, 12, 4)
    assert (converted["c"].low, converted["c"].high, converted["c"].log) == (1, 8, True)
    direct = IntRange(int=(2, 4)).to_optuna()
    assert (direct.low, direct.high) == (2, 4)


def test_float_and_choice_domains():
    u = _samples(Uniform(uniform=(0.5, 1.5)).to_tune())
    assert 0.5 <= min(u) and max(u) <= 1.5
    lu = _samples(LogUniform(loguniform=(1e-4, 1e-2)).to_tune())
    assert 1e-4 <= min(lu) and max(lu) <= 1e-2
    assert min(lu) < 3e-4 and max(lu) > 3e-3  # spread over decades, not only near the top
    assert set(_samples(Choice(choice=[1, 2, 4]).to_tune())) == {1, 2, 4}
    converted = OptunaSearch.convert_search_space(
        {"lr": LogUniform(loguniform=(1e-4, 1e-2)).to_tune(), "s": Choice(choice=[1, 2, 4]).to_tune()}
    )
    assert converted["lr"].log and converted["lr"].low == 1e-4
    assert list(converted["s"].choices) == [1, 2, 4]
    assert LogUniform(loguniform=(1e-4, 1e-2)).to_optuna().log


def _study(tmp_path, **search):
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    data = {
        "model": {"n_fft": 512, "hop_length": 128, "slices": {"choice": [1, 2, 4]}, "depth": {"int": [1, 2]}},
        "data": {"root": str(root), "segment_seconds": 1.0},
        "train": {"lr": {"loguniform": [1e-4, 1e-2]}, "epochs": 2, "patience": 2},
        "search": search,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_study(path, base_dir=tmp_path, check_data=False)  # the space, not the data, is tested


def test_study_space_has_dotted_keys_and_samples_build_configs(tmp_path):
    study = _study(tmp_path)
    space = tune_space(study)
    assert set(space) == {"model.slices", "model.depth", "train.lr"}
    assert {k: type(d.to_optuna()).__name__ for k, d in study.space.items()} == {
        "model.slices": "CategoricalDistribution",
        "model.depth": "IntDistribution",
        "train.lr": "FloatDistribution",
    }
    assert space_size(study) is None  # lr is continuous
    random.seed(1)
    for _ in range(20):  # every sample is a valid ExperimentConfig
        sample = {k: d.sample() for k, d in space.items()}
        exp = study.experiment(sample)
        assert exp.model.slices == sample["model.slices"] and exp.train.lr == sample["train.lr"]


def test_grid_searcher(tmp_path):
    with pytest.raises(Exception, match="grid needs discrete distributions"):
        _study(tmp_path, searcher="grid")
    # lr is continuous -> refused above; with lr fixed, every key is a grid over all its values
    data = yaml.safe_load((tmp_path / "s.yaml").read_text())
    data["train"]["lr"] = 1e-3
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data | {"search": {"searcher": "grid", "num_samples": 2}}))
    study = load_study(tmp_path / "d.yaml", base_dir=tmp_path, check_data=False)
    space = tune_space(study)
    assert space["model.slices"] == {"grid_search": [1, 2, 4]}
    assert space["model.depth"] == {"grid_search": [1, 2]}
    assert space_size(study) == 6 and num_trials(study) == 12
