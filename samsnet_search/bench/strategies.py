"""Benchmark `strategies`: ways to answer "how many slices?", replayed on the learning-curve table.

The paper's question: the slice values of the table at one configuration of the other settings
(heads, maps, lr), every configuration of the table in turn. Each strategy is replayed many
times (searcher seed, trial arrival order and the recorded seed each new run draws all vary
with the replay's number) and scored against the reference, the grid with every recorded seed:

- its cost: trial-epochs of the search and the selection, as a share of the 3-seed grid's;
- whether its pick is in the grid's best set: the grid's winner (`select.bootstrap_table`), or a
  slice value not significantly worse than it on paired evidence (`racing.decide` over every seed);
- its regret: the grid's statistic (median over seed x track pairs per target, mean of the
  targets, at the last epoch) of the grid's winner minus that of the pick, in dB.

Selections: `today` is the platform's selection (each slice value the search tried, best trial,
retrained with `SEEDS` seeds to the full budget; a trial that ran the full budget is seed 0);
`racing` continues each contender's best trial to the full budget from its checkpoint, then
adds seeds only where the leader's paired advantage is unresolved (`search.racing`); its `-top2`
variants race only the search's two best slice values and let one seed decide.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from ..config import TARGETS
from ..search import racing, searchers
from ..search.select import bootstrap_table
from . import curves as curve_table
from .common import BenchError
from .replay import Curves, GridProposals, SearchReplay, SimTrial, paper_question_study, replay_search

log = logging.getLogger(__name__)

SEEDS = 3  # the reference grid's seeds and today's selection.seeds
REPLAYS = 120  # per strategy: 10 per configuration of a 12-configuration table (at least 50 asked); about 2 min
SMOKE_REPLAYS = 3
PROPOSALS_PER_VALUE = 2  # as the search benchmark: TPE needs a few proposals per slice value
TARGET_SHARE, TARGET_CORRECT, TARGET_REGRET_DB = 0.25, 0.95, 0.05


@dataclass(frozen=True)
class Strategy:
    name: str
    label: str
    searcher: str | None  # None: no search (a grid)
    scheduler: str | None
    selection: str  # "grid" | "today" | "racing"
    grid_seeds: int = SEEDS
    default: bool = False  # the platform's default today
    top: int | None = None  # racing: only the search's `top` slice values by their best valid_loss
    min_seeds: int = 2  # racing: seeds before a slice value is decided


STRATEGIES = (
    Strategy("grid-3-seeds", "every slice value x 3 seeds to the full budget (reference)", None, None, "grid"),
    Strategy("grid-1-seed", "every slice value x 1 seed (what the paper ran)", None, None, "grid", grid_seeds=1),
    Strategy("random+today", "random search (Optuna's sampler), then today's selection", "random", "fifo", "today"),
    Strategy("tpe+asha+today", "TPE + ASHA, then today's selection", "optuna", "asha", "today", default=True),
    Strategy("tpe+asha+racing", "TPE + ASHA, then the racing selection", "optuna", "asha", "racing"),
    Strategy("tpe+median+racing", "TPE + median stopping, then the racing selection", "optuna", "median", "racing"),
    Strategy(
        "tpe+asha+racing-top2",
        "TPE + ASHA, then the racing selection among the search's 2 best slice values, 1 seed decides",
        "optuna",
        "asha",
        "racing",
        top=2,
        min_seeds=1,
    ),
    Strategy(
        "grid+asha+racing-top2",
        "each slice value proposed once (grid order), ASHA, then racing among the 2 best, 1 seed decides",
        "grid",
        "asha",
        "racing",
        top=2,
        min_seeds=1,
    ),
)


@dataclass
class Outcome:
    epochs: int
    pick: int


def run(quick: bool, device: str, threads: int, smoke: bool = False, table: Path | None = None) -> dict[str, Any]:
    path = table or curve_table.OUT / curve_table.TABLE
    if not path.is_file():
        raise BenchError(f"{path}: no learning-curve table; build it with: samsnet-search curves build")
    curves = Curves.load(path)
    reps = SMOKE_REPLAYS if smoke else REPLAYS
    start = time.perf_counter()
    results = [score(s, curves, reps) for s in STRATEGIES]
    figures = {f"{r['name']}.{k}": v for r in results for k, v in r.items() if isinstance(v, float)}
    return {
        "sizes": {
            "table": str(path),
            "runs": len(curves.runs),
            "slice_values": curves.slices,
            "settings": len(curves.settings),
            "seeds": curves.seeds,
            "epochs": curves.epochs,
            "replays_per_strategy": reps,
            "cores": os.cpu_count(),
        },
        "figures": figures,
        "strategies": results,
        "notes": [
            f"{reps} replays per strategy in {time.perf_counter() - start:.0f} s; the targets: at most "
            f"{TARGET_SHARE:.0%} of the 3-seed grid's trial-epochs (median), pick in the grid's best set in "
            f"{TARGET_CORRECT:.0%}, mean regret {TARGET_REGRET_DB} dB",
            "default: the platform's default today (TPE + ASHA, then today's selection)",
        ],
    }


def score(strategy: Strategy, curves: Curves, reps: int) -> dict[str, Any]:
    """The strategy over `reps` replays, against the 3-seed grid of each replay's setting."""
    shares, correct, regrets = [], [], []
    references: dict[tuple, Reference] = {}
    for rep in range(reps):
        setting = curves.settings[rep % len(curves.settings)]
        reference = references.setdefault(setting, Reference(curves, setting))
        outcome = replay(strategy, curves, setting, rep)
        shares.append(outcome.epochs / reference.epochs)
        correct.append(outcome.pick in reference.best_set)
        regrets.append(reference.regret(outcome.pick))
    return {
        "name": strategy.name,
        "label": strategy.label,
        "default": strategy.default,
        "share_of_grid_epochs_median": float(np.median(shares)),
        "share_of_grid_epochs_p90": float(np.quantile(shares, 0.9)),
        "correct_probability": float(np.mean(correct)),
        "mean_regret_db": float(np.mean(regrets)),
        "p95_regret_db": float(np.quantile(regrets, 0.95)),
        "replays": reps,
    }


class Reference:
    """The grid with every recorded seed at one setting: its winner, best set and statistics."""

    def __init__(self, curves: Curves, setting: tuple) -> None:
        evidence = {s: final_scores(curves, s, setting, curves.seeds) for s in curves.slices}
        self.winner = bootstrap_table(pairs(evidence), seed=0).winner
        # Not significantly worse than the winner on paired evidence (the same tracks): the
        # selection's unpaired intervals overlap whenever songs differ more than models do.
        step = racing.decide(evidence, min_seeds=1, seed=0)
        self.best_set = {self.winner} | {g.slices for g in step.gaps if g.state != "worse"}
        self.value = {s: float(racing.statistic(v)) for s, v in evidence.items()}
        self.epochs = len(curves.slices) * len(curves.seeds) * curves.epochs

    def regret(self, pick: int) -> float:
        return self.value[self.winner] - self.value[pick]


def final_scores(curves: Curves, slices: int, setting: tuple, seeds) -> np.ndarray:
    """(seeds, tracks, targets) at the last epoch."""
    return np.stack([curves.run(slices, setting, s).tracks[-1] for s in seeds])


def pairs(evidence: dict[int, np.ndarray]) -> dict[int, list[dict[str, Any]]]:
    """The selection's input form: slices -> (track x seed) pairs with per-target scores."""
    return {
        s: [
            {"track": str(t), "seed": k, "scores": dict(zip(TARGETS, v[k, t]))}
            for k in range(v.shape[0])
            for t in range(v.shape[1])
        ]
        for s, v in evidence.items()
    }


def replay(strategy: Strategy, curves: Curves, setting: tuple, rep: int) -> Outcome:
    rng = np.random.default_rng(rep)
    if strategy.selection == "grid":
        n = min(strategy.grid_seeds, len(curves.seeds))
        seeds = {s: list(rng.permutation(curves.seeds)[:n]) for s in curves.slices}
        evidence = {s: final_scores(curves, s, setting, seeds[s]) for s in curves.slices}
        pick = bootstrap_table(pairs(evidence), seed=rep).winner
        return Outcome(len(curves.slices) * n * curves.epochs, pick)
    proposals = (1 if strategy.searcher == "grid" else PROPOSALS_PER_VALUE) * len(curves.slices)
    study = paper_question_study(curves, setting, "optuna", strategy.scheduler, proposals, rep)
    searcher = None
    # The registry's `random` and `grid` are Ray's generator, not a Searcher: the same proposals.
    if strategy.searcher == "random":
        searcher = searchers.optuna_search(study, optuna.samplers.RandomSampler(seed=rep))
    elif strategy.searcher == "grid":
        searcher = GridProposals("model.slices", curves.slices)
    search = replay_search(study, curves, setting, rng, searcher)
    if strategy.selection == "today":
        epochs, pick = today(search, curves, setting, rng, rep)
    else:
        epochs, pick = race(search, curves, setting, rng, rep, strategy.top, strategy.min_seeds)
    return Outcome(search.epochs + epochs, pick)


def contenders(search: SearchReplay) -> dict[int, SimTrial]:
    """slices -> the trial with the best (lowest) validation loss at its best epoch."""
    best: dict[int, SimTrial] = {}
    for t in search.trials:
        value = float(np.min(t.run.valid_loss[: t.epochs]))
        if t.slices not in best or value < float(np.min(best[t.slices].run.valid_loss[: best[t.slices].epochs])):
            best[t.slices] = t
    return best


def _other_seeds(curves: Curves, first: int, rng: np.random.Generator) -> list[int]:
    return [first, *rng.permutation([s for s in curves.seeds if s != first])]


def today(search, curves, setting, rng, rep) -> tuple[int, int]:
    """Each contender retrained with SEEDS seeds to the full budget; a full-budget trial is seed 0."""
    epochs, evidence = 0, {}
    for slices, trial in contenders(search).items():
        seeds = _other_seeds(curves, trial.seed, rng)[:SEEDS]
        epochs += curves.epochs * (len(seeds) - (trial.epochs >= curves.epochs))
        evidence[slices] = final_scores(curves, slices, setting, seeds)
    return epochs, bootstrap_table(pairs(evidence), seed=rep).winner


def race(search, curves, setting, rng, rep, top: int | None = None, min_seeds: int = 2) -> tuple[int, int]:
    """Contenders (the `top` best by the search) continued to the full budget from their
    checkpoints, then seeds where the leader's paired advantage is unresolved."""
    epochs, seeds = 0, {}
    ranked = sorted(contenders(search).items(), key=lambda kv: float(np.min(kv[1].run.valid_loss[: kv[1].epochs])))
    for slices, trial in ranked[:top]:
        epochs += curves.epochs - trial.epochs
        seeds[slices] = _other_seeds(curves, trial.seed, rng)
    have = {s: 1 for s in seeds}
    while True:
        evidence = {s: final_scores(curves, s, setting, seeds[s][: have[s]]) for s in seeds}
        step = racing.decide(evidence, min_seeds=min_seeds, max_seeds=min(SEEDS, len(curves.seeds)), seed=rep)
        if step.stop:
            return epochs, step.leader
        for s in step.buy:
            have[s] += 1
            epochs += curves.epochs
