"""Warm start: earlier studies' trials reach the searcher as evaluated, not run again."""

from __future__ import annotations

import math

import pytest
import yaml
from test_search_e2e import tiny_study

from samsnet_search.delivery.report import gather, render_text
from samsnet_search.errors import ConfigError
from samsnet_search.search import identity, searchers, warm_start
from samsnet_search.search.runner import run_study
from samsnet_search.search.study import load_study
from samsnet_search.services import tracking

SPACE_YAML = """
name: {name}
model: {{n_fft: 256, hop_length: 128, slices: {{choice: [1, 2, 4, 8, 16, 32, 64]}}, heads: 1, channels: 2, depth: 1}}
data: {{root: {root}, segment_seconds: 0.5}}
train: {{lr: {{loguniform: [1.0e-5, 1.0e-1]}}, epochs: 1, device: cpu}}
search: {{num_samples: 40, seed: {seed}, searcher: {searcher}}}
storage: {storage}
"""


def _study(tmp_path, name="s", seed=0, searcher="optuna", **fmt):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        SPACE_YAML.format(
            name=name, root=tmp_path / "nodata", seed=seed, searcher=searcher, storage=tmp_path / "runs", **fmt
        )
    )
    return load_study(path, check_data=False)


def _loss(cfg) -> float:
    """A smooth problem with its optimum at slices=8, lr=1e-3."""
    return (math.log2(cfg["model.slices"]) - 3) ** 2 + (math.log10(cfg["train.lr"]) + 3) ** 2


def _drive(study, n: int) -> list[tuple[dict, float]]:
    """Ask the study's real searcher for n trials and tell it each result, as Tune does."""
    searcher = searchers.build_searcher(study)
    searcher.set_search_properties(study.metric, study.mode, searchers.param_space(study))
    out = []
    for i in range(n):
        cfg = searcher.suggest(f"t{i}")
        out.append((cfg, _loss(cfg)))
        searcher.on_trial_complete(f"t{i}", {study.metric: out[-1][1], "training_iteration": 1})
    return out


def _trials_to_reach(history, target: float) -> int:
    return next((i + 1 for i, (_, v) in enumerate(history) if v <= target), len(history) + 1)


def test_a_warm_started_searcher_needs_fewer_new_trials_to_reach_the_same_best(tmp_path):
    target = 0.05  # slices = 8 and lr within a factor 1.7 of 1e-3
    earlier = _drive(_study(tmp_path, seed=12), 15)  # the earlier study: 15 trials
    assert min(v for _, v in earlier) > target  # the earlier trials alone do not reach it
    cold = _drive(_study(tmp_path, seed=22), 40)
    warm_study = _study(tmp_path, seed=22)
    warm_study.warm_points = [cfg for cfg, _ in earlier]
    warm_study.warm_rewards = [v for _, v in earlier]
    warm = _drive(warm_study, 40)
    assert _trials_to_reach(warm, target) < _trials_to_reach(cold, target) <= 40


def test_searchers_that_cannot_be_warm_started_say_so(tmp_path):
    study = _study(tmp_path, searcher="random")
    study.spec.search.warm_start = ["earlier"]
    with pytest.raises(ConfigError, match="search.warm_start: searcher random cannot .* valid: searcher optuna, cmaes"):
        searchers.check(study)


@pytest.mark.slow
def test_a_study_warm_started_from_an_earlier_one_is_told_its_trials(tmp_path, synth_root, local_ray):
    with local_ray({}):
        first = run_study(
            load_study(tiny_study(tmp_path, synth_root, "first", search__num_samples=4, train__epochs=2)), num_cpus=2
        )
        done = [t for t in first.trials if t.status != "failed"]
        path = tiny_study(
            tmp_path, synth_root, "second", search__num_samples=1, train__epochs=1, search__warm_start=["first"]
        )
        second = run_study(load_study(path), num_cpus=2)
    assert len(second.trials) == 1  # only the new trial ran
    sources = identity.read_study_json(second.manifest.path, warm_start.ARTIFACT)["sources"]
    assert sources == {"first": len(done)} and len(done) == 4
    run = tracking.client(second.target).get_run(second.manifest.parent_run_id)
    assert run.data.metrics["warm_start.first"] == 4
    text = "\n".join(map(str, render_text(gather(second.manifest.path))))
    assert "warm start: 4 trials from study first (told to the searcher, not run again); 1 new trials" in text

    # The first study's cost and parameter importance: in study.json, the report and on its parent run.
    summary = identity.read_manifest(first.manifest.path).summary
    assert summary["cost"]["epochs"] == sum(t.epochs for t in first.trials) and summary["cost"]["cpu_s"] > 0
    assert set(summary["importance"]["objectives"]["valid_loss"]["fanova"]) <= {
        "model.slices",
        "model.channels",
        "train.lr",
    }
    metrics = tracking.client(first.target).get_run(first.manifest.parent_run_id).data.metrics
    assert metrics["cost.search.cpu_s"] == summary["cost"]["cpu_s"]
    assert any(k.startswith("importance.fanova.valid_loss.") for k in metrics)
    text = "\n".join(map(str, render_text(gather(first.manifest.path))))
    assert "does the slice count matter?" in text and "cost of the search:" in text

    # An incompatible earlier study: a parameter it did not search, or a value outside the new range.
    study = yaml.safe_load(path.read_text())
    study["model"]["heads"] = {"choice": [1, 2]}
    path.write_text(yaml.safe_dump(study | {"name": "third"}))
    with pytest.raises(ConfigError, match="study 'first' did not search model.heads"):
        warm_start.load(load_study(path), ["first"])
    study["model"]["heads"] = 1
    study["train"]["lr"] = {"loguniform": [9e-3, 1e-2]}
    path.write_text(yaml.safe_dump(study | {"name": "third"}))
    with pytest.raises(ConfigError, match=r"study 'first' has a trial with train.lr = .* outside this study's"):
        warm_start.load(load_study(path), ["first"])
