"""Replay a study on the learning-curve table: the platform's searcher and scheduler decide, the
table trains.

A replayed trial does not train: for the configuration the searcher proposes it reads the
recorded epochs of one run of the table (which recorded seed it gets is drawn per trial), and
reports them epoch by epoch, as the trainer would, to the same Tune searcher and scheduler
objects the study would build (`searchers.build_searcher`, `schedulers.build_scheduler`). A
simulated clock orders the reports of concurrent trials by their recorded epoch seconds, so the
scheduler sees results in the order a real study of that concurrency would. Cost is counted in
recorded epochs and seconds.

Tune's actor machinery is not used (a Ray trial costs seconds to start; replays need thousands),
only its decision-making objects, through their public interface (`suggest`,
`on_trial_result`, `on_trial_complete`; `on_trial_add` for schedulers).
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..config import TARGETS, flatten
from ..engine.train import TRACK_SDR
from ..search import schedulers, searchers
from ..search.study import Study, parse_study

log = logging.getLogger(__name__)

SETTINGS = ("heads", "channels", "lr")  # the table's other settings: fixed in the paper's question
METRIC = "valid_loss"  # what the searcher and scheduler see each epoch (the study metric)


@dataclass(frozen=True)
class Run:
    """One recorded run: per epoch its validation loss, SDR, seconds and per-track scores."""

    slices: int
    setting: tuple  # (heads, channels, lr)
    seed: int
    valid_loss: np.ndarray  # (E,)
    valid_sdr: np.ndarray  # (E,)
    seconds: np.ndarray  # (E,)
    tracks: np.ndarray  # (E, tracks, targets): SDR per validation track and target


class Curves:
    """The table, indexed by (slices, setting, seed)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        names = sorted({c.split(".")[1] for c in rows[0] if c.startswith(f"{TRACK_SDR}.")})
        self.track_names = names
        by_run: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            by_run.setdefault((r["slices"], tuple(r[k] for k in SETTINGS), r["seed"]), []).append(r)
        self.runs: dict[tuple, Run] = {}
        for (slices, setting, seed), epochs in by_run.items():
            epochs.sort(key=lambda r: r["epoch"])
            self.runs[(slices, setting, seed)] = Run(
                slices,
                setting,
                seed,
                np.array([r["valid_loss"] for r in epochs]),
                np.array([r["valid_sdr"] for r in epochs]),
                np.array([r["epoch_seconds"] for r in epochs]),
                np.array([[[r[f"{TRACK_SDR}.{n}.{t}"] for t in TARGETS] for n in names] for r in epochs]),
            )
        self.slices = sorted({k[0] for k in self.runs})
        self.settings = sorted({k[1] for k in self.runs})
        self.seeds = sorted({k[2] for k in self.runs})
        self.epochs = min(len(r.valid_loss) for r in self.runs.values())

    @classmethod
    def load(cls, path: Path) -> "Curves":
        return cls(pq.read_table(path).to_pylist())

    def run(self, slices: int, setting: tuple, seed: int) -> Run:
        return self.runs[(slices, setting, seed)]


@dataclass(eq=False)
class SimTrial:
    """What Tune's schedulers read of a trial (hashable by identity, like Tune's Trial)."""

    trial_id: str
    slices: int
    seed: int
    run: Run
    epochs: int = 0  # epochs reported so far
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchReplay:
    trials: list[SimTrial]
    epochs: int
    seconds: float


class GridProposals:
    """The searcher of a study with `searcher: grid` over one key: each value once, in the listed
    order (what Ray's BasicVariantGenerator proposes for a grid_search), as a Tune Searcher."""

    def __init__(self, key: str, values: list[Any]) -> None:
        self.key, self.values = key, list(values)

    def set_search_properties(self, *args: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return {self.key: self.values.pop(0)} if self.values else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class _Controller:
    """The part of Tune's controller that schedulers consult."""

    def __init__(self) -> None:
        self.trials: list[SimTrial] = []

    def get_trials(self) -> list[SimTrial]:
        return self.trials

    def get_live_trials(self) -> list[SimTrial]:
        return [t for t in self.trials if t.status == "RUNNING"]


def paper_question_study(
    curves: Curves, setting: tuple, searcher: str, scheduler: str, proposals: int, seed: int, concurrency: int = 2
) -> Study:
    """The study of the paper's question (slice values, the other settings fixed) as the platform
    would read it: the searcher and scheduler come from its registries."""
    heads, channels, lr = setting
    raw = {
        "name": "replay",
        "model": {"slices": {"choice": curves.slices}, "heads": heads, "channels": channels},
        "data": {"root": "."},
        "train": {"lr": lr, "epochs": curves.epochs, "patience": curves.epochs},
        "search": {
            "searcher": searcher,
            "scheduler": scheduler,
            "metric": METRIC,
            "num_samples": proposals,
            "seed": seed,
            "grace_period": 1,
            "reduction_factor": 2,
            "max_t": curves.epochs,
            "max_concurrent_trials": concurrency,
        },
        "selection": {"enabled": False},
    }
    if scheduler == "median":
        raw["search"]["max_t"] = None
    return parse_study(raw, "", Path("replay.yaml"), Path("."), check_data=False)


def replay_search(
    study: Study, curves: Curves, setting: tuple, rng: np.random.Generator, searcher: Any = None
) -> SearchReplay:
    """The study's search on the table: the real searcher and scheduler objects, a simulated clock.
    searcher: a Tune Searcher to use instead of the study's own."""
    searcher = searcher or searchers.build_searcher(study)
    searcher.set_search_properties(METRIC, study.mode, searchers.param_space(study))
    scheduler = schedulers.build_scheduler(study)
    if scheduler is not None:
        scheduler.set_search_properties(METRIC, study.mode)
    controller = _Controller()
    events: list[tuple[float, int, SimTrial]] = []
    budget, slots, total = curves.epochs, study.search.max_concurrent_trials or 1, study.search.num_samples
    now, seconds, started, order = 0.0, 0.0, 0, 0
    while started < total or events:
        while started < total and len(controller.get_live_trials()) < slots:
            config = searcher.suggest(f"t{started:04d}")
            if config is None:
                total = started  # the searcher has nothing more to propose
                break
            slices = int(flatten(config)["model.slices"])
            seed = int(rng.choice(curves.seeds))
            trial = SimTrial(f"t{started:04d}", slices, seed, curves.run(slices, setting, seed))
            controller.trials.append(trial)
            if scheduler is not None:
                scheduler.on_trial_add(controller, trial)
            heapq.heappush(events, (now + trial.run.seconds[0], order := order + 1, trial))
            started += 1
        if not events:
            break
        now, _, trial = heapq.heappop(events)
        trial.epochs += 1
        seconds += float(trial.run.seconds[trial.epochs - 1])
        result = {
            "training_iteration": trial.epochs,
            "epoch": trial.epochs,
            METRIC: float(trial.run.valid_loss[trial.epochs - 1]),
        }
        trial.last_result = result
        searcher.on_trial_result(trial.trial_id, result)
        action = "CONTINUE" if scheduler is None else scheduler.on_trial_result(controller, trial, result)
        if action == "STOP" or trial.epochs >= budget:
            trial.status = "TERMINATED" if trial.epochs >= budget else "PRUNED"
            searcher.on_trial_complete(trial.trial_id, result)
            if scheduler is not None:
                scheduler.on_trial_complete(controller, trial, result)
        else:
            heapq.heappush(events, (now + trial.run.seconds[trial.epochs], order := order + 1, trial))
    epochs = sum(t.epochs for t in controller.trials)
    return SearchReplay(controller.trials, epochs, seconds)
