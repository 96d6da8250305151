"""The racing rules on constructed score tables (seeds x tracks x targets per slice value)."""

from __future__ import annotations

import numpy as np
import pytest

from samsnet_search.config import TARGETS as NAMES
from samsnet_search.search import racing
from samsnet_search.search.select import bootstrap_table

TRACKS, TARGETS = 8, 4


def scores(mean: float, seeds: int, *, track_effect=None, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """(seeds, tracks, targets): a mean, a per-track offset shared by every model (songs differ
    in difficulty), and independent noise."""
    rng = np.random.default_rng(seed)
    effect = np.zeros(TRACKS) if track_effect is None else track_effect
    return mean + effect[None, :, None] + noise * rng.standard_normal((seeds, TRACKS, TARGETS))


def test_a_clear_leader_clears_everyone_and_the_race_stops():
    step = racing.decide({1: scores(3.0, 2, seed=1), 4: scores(5.0, 2, seed=2), 16: scores(4.0, 2, seed=3)})
    assert step.leader == 4 and step.stop == "resolved" and step.buy == []
    assert [(g.slices, g.state) for g in step.gaps] == [(1, "worse"), (16, "worse")]
    assert step.gaps[0].point == pytest.approx(2.0, abs=0.1)


def test_equal_models_are_a_practical_tie_and_fewer_slices_lead():
    step = racing.decide({1: scores(4.0, 2, noise=0.01, seed=1), 4: scores(4.0, 2, noise=0.01, seed=2)})
    assert step.leader in (1, 4) and step.stop == "resolved"
    assert step.gaps[0].state == "tied"
    tie = racing.decide({4: scores(4.0, 2, noise=0.0), 1: scores(4.0, 2, noise=0.0)})
    assert tie.leader == 1  # an exact tie: the fewer slices


def test_an_unresolved_gap_buys_seeds_for_the_leader_and_that_contender_only():
    evidence = {1: scores(3.0, 2, seed=1), 4: scores(4.0, 2, noise=0.8, seed=2), 8: scores(3.9, 2, noise=0.8, seed=3)}
    step = racing.decide(evidence)
    assert step.leader == 4 and step.stop is None
    assert {g.slices: g.state for g in step.gaps} == {1: "worse", 8: "open"}
    assert step.buy == [4, 8]  # slices=1 is settled: it gets nothing more
    at_budget = racing.decide({s: np.concatenate([v, v[:1]]) for s, v in evidence.items()}, max_seeds=3)
    assert at_budget.stop == "budget" and at_budget.buy == []


def test_one_seed_never_decides():
    step = racing.decide({1: scores(3.0, 1), 4: scores(5.0, 1, seed=2)})
    assert step.gaps[0].low > 1.5 and step.gaps[0].state == "open"  # 2 dB apart, but one seed each
    assert step.buy == [4, 1]


def test_pairing_by_track_resolves_what_independent_intervals_cannot():
    """Songs differ by several dB; the model difference is a steady 0.5 dB on every track. The
    selection's unpaired intervals overlap; the paired race sees the difference."""
    effect = np.linspace(-5, 5, TRACKS)
    a, b = (
        scores(4.5, 3, track_effect=effect, noise=0.05, seed=1),
        scores(4.0, 3, track_effect=effect, noise=0.05, seed=2),
    )
    step = racing.decide({1: b, 4: a})
    assert step.leader == 4 and step.gaps[0].state == "worse"
    pairs = {
        s: [
            {"track": str(t), "seed": k, "scores": dict(zip(NAMES, v[k, t]))}
            for k in range(v.shape[0])
            for t in range(TRACKS)
        ]
        for s, v in ((1, b), (4, a))
    }
    table = bootstrap_table(pairs)
    loser = next(r for r in table.rows if r.slices == 1)
    assert table.winner == 4 and loser.significant is False  # unpaired: not significantly different


def test_mismatched_evidence_is_refused():
    with pytest.raises(ValueError, match="tracks, targets"):
        racing.decide({1: np.zeros((1, 8, 4)), 2: np.zeros((1, 7, 4))})
