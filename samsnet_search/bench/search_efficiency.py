"""Benchmark `search`: the platform's slice-count choice against the paper's grid, and what each cost.

One CPU problem, three ways to choose the slice count, all with the same fixed non-slice settings:

- `grid`, the paper's protocol (Table 2): every slice count trained to the full budget with
  `selection.seeds` seeds and scored on the full validation tracks. It is a study with
  `searcher: grid`, `scheduler: fifo`, one trial per slice count (seed 0), followed by the
  selection step with `selection.epochs = train.epochs`, which reuses that trial as seed 0,
  trains seeds 1..n-1 to the same budget and builds the per-slice table with bootstrap intervals.
- `asha`, the platform: Optuna TPE + ASHA over the same slice counts, then its selection step.
- `median`, the platform with Ray Tune's median stopping rule in place of ASHA, when this
  version's study schema offers `search.scheduler: median` (else the arm is skipped, and a note says so).

Study files are derived in code from `search_spaces/quickstart.yaml` (`base_study`): its STFT,
segment, batch, epochs, patience, ASHA rungs, concurrency and selection settings, with
`model.slices` searched over the quickstart's choices and every other searched key fixed at
`FIXED`. Data: the synthetic tracks of `samsnet-search data synth` at its defaults. The test set
is scored once per arm (the selection step ends with it) with the fast BSSEval and no Wiener pass,
so that it costs little and the same in every arm.

Per arm: trial-epochs (search and selection), CPU-seconds of the whole process tree (this process,
Ray's processes and every trial and selection worker, sampled from /proc: `TreeCpu`) and wall time; the slice
count picked with its interval from the arm's own selection table; the regret = the grid's
validation avg SDR of the grid's best minus the grid's validation avg SDR of the arm's pick; whether
the pick is the grid's best or not significantly different from it (the grid's intervals overlap);
and whether the arm met the target: that, at no more than `TARGET_EPOCH_SHARE` of the grid's
trial-epochs. Everything runs through the public API: `runner.run_study`, `select.run_selection`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import ValidationError

from ..config import read_yaml
from ..data.synth import synthesize
from ..delivery.winner import register_winner
from ..errors import one_line
from ..search.runner import ray_session, run_study
from ..search.select import run_selection
from ..search.study import SearchSettings, load_study
from .common import BenchError

log = logging.getLogger(__name__)

QUICKSTART = Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml"
# The non-slice settings every arm shares: the paper's 2 heads, the quickstart's smallest maps and
# depth (its cheapest trials: the three arms then fit in about half an hour of a shared 2-core CPU),
# the geometric middle of its lr range.
FIXED: dict[str, Any] = {"model.heads": 2, "model.channels": 4, "model.depth": 1, "train.lr": 1.0e-3}
TARGET_EPOCH_SHARE = 0.25  # the platform's pick at no more than this share of the grid's trial-epochs
# Proposals of a platform arm per slice count: TPE starts with random proposals, so a few per
# value are needed for it to see each one.
PROPOSALS_PER_SLICE_VALUE = 2
# The tiny mode (the test): seconds per trial, figures not meaningful.
TINY_SLICES = [1, 2]
TINY_DATA: dict[str, Any] = {
    "n_train": 2,
    "n_valid": 1,
    "n_test": 1,
    "seconds": 3.0,
    "seed": 0,
    "section_range": (1.0, 2.0),
}
TINY = {
    "model": {"n_fft": 256, "hop_length": 128, "heads": 1, "channels": 2, "depth": 1},
    "data": {"segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
    "train": {"lr": 3.0e-3, "batch_size": 2, "epochs": 1, "patience": 1, "valid_sdr_every": 0},
    "search": {"max_t": 1},
    "selection": {"epochs": 1, "bootstrap": 200},
    "tracking": {"system_metrics": False},
}


@dataclass
class Arm:
    """One way of choosing the slice count: the study's search settings and what it is."""

    name: str
    label: str
    search: dict[str, Any]
    full_budget_selection: bool = False  # selection.epochs = train.epochs (the grid: its trials are seed 0)
    notes: list[str] = field(default_factory=list)


def arms(slice_values: list[int], per_value: int = PROPOSALS_PER_SLICE_VALUE) -> list[Arm]:
    """The grid, then the platform with ASHA, then with the median stopping rule where offered."""
    proposals = per_value * len(slice_values)
    out = [
        Arm(
            "grid",
            "paper: grid, every slice count to the full budget x seeds",
            {"searcher": "grid", "scheduler": "fifo", "num_samples": 1},
            full_budget_selection=True,
        ),
        Arm(
            "asha",
            "platform: TPE + ASHA, then selection",
            {"searcher": "optuna", "scheduler": "asha", "num_samples": proposals},
        ),
    ]
    if scheduler_available("median"):
        # max_t: None, as the median rule requires (it never ends a trial at max_t; trials run train.epochs).
        out.append(
            Arm(
                "median",
                "platform: TPE + median stopping, then selection",
                {"searcher": "optuna", "scheduler": "median", "num_samples": proposals, "max_t": None},
            )
        )
    return out


def scheduler_available(name: str) -> bool:
    """Whether this version's study schema accepts `search.scheduler: name`."""
    try:
        SearchSettings.model_validate({"scheduler": name})
    except ValidationError:
        return False
    return True


# --- the study files -----------------------------------------------------------------


def base_study(root: Path, data_root: Path, tiny: bool = False) -> dict[str, Any]:
    """The shared study, from quickstart.yaml: slices searched over its choices, FIXED for the rest."""
    spec = read_yaml(QUICKSTART)
    slices = spec["model"]["slices"]
    if not (isinstance(slices, dict) and "choice" in slices):
        raise BenchError(f"{QUICKSTART}: model.slices must be a choice for the grid, got {slices!r}")
    for key, value in FIXED.items():
        section, leaf = key.split(".")
        spec[section][leaf] = _fixed_within(spec[section].get(leaf), value, key)
    spec["data"]["root"] = str(data_root)
    spec["estimate"] = {"enabled": False}  # report-only in the quickstart: it does not change the pick
    spec["selection"] = {**spec.get("selection", {}), "test_backend": "fast", "wiener": 0, "listen_seconds": 0}
    spec["storage"] = str(root / "runs")
    spec["tracking"] = {**spec.get("tracking", {}), "uri": str(root / "mlruns")}
    if tiny:
        spec["model"]["slices"] = {"choice": TINY_SLICES}
        for section, values in TINY.items():
            spec[section] = {**spec.get(section, {}), **values}
    return spec


def _fixed_within(quickstart_value: Any, value: Any, key: str) -> Any:
    """FIXED values lie inside the quickstart's distribution (a changed quickstart is noticed here)."""
    if isinstance(quickstart_value, dict):
        if "choice" in quickstart_value:
            ok = value in quickstart_value["choice"]
        else:
            low, high = next(v for k, v in quickstart_value.items() if k in ("int", "uniform", "loguniform"))
            ok = low <= value <= high
    else:
        ok = quickstart_value is None or quickstart_value == value
    if not ok:
        raise BenchError(
            f"{QUICKSTART}: {key}: {quickstart_value!r} no longer contains the benchmark's fixed value {value!r}"
        )
    return value


def arm_study(base: dict[str, Any], arm: Arm) -> dict[str, Any]:
    spec = {**base, "name": f"bench-{arm.name}", "search": {**base["search"], **arm.search}}
    if arm.full_budget_selection:
        spec["selection"] = {**base["selection"], "epochs": base["train"]["epochs"]}
    return spec


# --- measuring -----------------------------------------------------------------------


class TreeCpu:
    """CPU seconds (user + system) of this process and all its descendants, sampled from /proc.

    A process's own time is read while it lives and its last reading kept once it has ended:
    Ray's raylet does not add the times of the workers it ends to its own `cutime`, so neither
    `getrusage(RUSAGE_CHILDREN)` nor a parent's `cutime` sees them. A process loses at most the
    CPU of its last `interval`; one that lives shorter than that can be missed (Ray's workers
    live for a whole trial or selection job).
    """

    def __init__(self, interval: float = 0.5, root: int | None = None) -> None:
        self.interval, self.root = interval, root or os.getpid()
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[int, int], int] = {}  # (pid, start time) -> utime + stime, in ticks
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tree-cpu", daemon=True)

    def __enter__(self) -> Self:
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        cpu: dict[int, tuple[int, int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
            pid = int(entry.name)
            children.setdefault(int(fields[1]), []).append(pid)
            cpu[pid] = (int(fields[19]), int(fields[11]) + int(fields[12]))  # start time; utime + stime
        todo = [self.root]
        with self.lock:
            while todo:
                pid = todo.pop()
                if pid in cpu:
                    start, ticks = cpu[pid]
                    self.seen[(pid, start)] = max(ticks, self.seen.get((pid, start), 0))
                todo.extend(children.get(pid, []))

    def seconds(self) -> float:
        """CPU seconds so far (sampled now)."""
        self.sample()
        with self.lock:
            return sum(self.seen.values()) / self.ticks


class Meter:
    """Wall and process-tree CPU seconds of a block."""

    def __init__(self, tree: TreeCpu) -> None:
        self.tree = tree

    def __enter__(self) -> Self:
        self.wall, self.cpu = time.monotonic(), self.tree.seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.monotonic() - self.wall, self.tree.seconds() - self.cpu


# --- running an arm ------------------------------------------------------------------


def run_arm(arm: Arm, base: dict[str, Any], root: Path, tree: TreeCpu, say=None) -> dict[str, Any]:
    """Search, then selection, of one arm; its costs and its selection table."""
    spec = arm_study(base, arm)
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    study = load_study(path, base_dir=root)
    with Meter(tree) as search_cost:
        result = run_study(study, quiet=True, selection_follows=True)
    if result.interrupted:
        raise BenchError(f"search benchmark, arm {arm.name}: the search was interrupted")
    with Meter(tree) as selection_cost:
        selection = run_selection(result, progress=say, quiet=True, register=register_winner)  # as `run` does
    table = selection.table
    selection_epochs = sum(int(j.get("epochs") or 0) for j in selection.jobs if not j["reused"])
    search_epochs = int(result.epoch_savings()["epochs_run"])
    best = result.best
    return {
        "label": arm.label,
        "study": {k: spec[k] for k in ("search", "selection")},
        "trials": len(result.trials),
        "counts": result.counts(),
        "search_trial_epochs": search_epochs,
        "selection_trial_epochs": selection_epochs,
        "trial_epochs": search_epochs + selection_epochs,
        "selection_jobs": len(selection.jobs),
        "selection_jobs_reused": sum(1 for j in selection.jobs if j["reused"]),
        "search_cpu_s": search_cost.cpu,
        "selection_cpu_s": selection_cost.cpu,
        "cpu_s": search_cost.cpu + selection_cost.cpu,
        "search_wall_s": search_cost.wall,
        "selection_wall_s": selection_cost.wall,
        "wall_s": search_cost.wall + selection_cost.wall,
        "search_best_slices": best.experiment["model"]["slices"] if best else None,
        "pick": table.winner,
        "pick_interval": list(table.row(table.winner).interval["avg"]),
        "pick_avg_db": table.row(table.winner).median["avg"],
        "slices_tried": sorted(r.slices for r in table.rows),
        "table": table.records(),
        "table_label": table.label(),
        "verdict": table.verdict(),
        "test_avg_db": selection.test["summary"]["avg"],
    }


def compare(results: dict[str, dict[str, Any]]) -> None:
    """Add each arm's regret and verdicts against the grid (its own table), in place."""
    grid = results["grid"]
    rows = {r["slices"]: r for r in grid["table"]}
    best = rows[grid["pick"]]
    for name, arm in results.items():
        for key, slices in (("", arm["pick"]), ("search_", arm["search_best_slices"])):
            row = rows.get(slices)
            if row is None:
                raise BenchError(
                    f"search benchmark, arm {name}: slices={slices} is not in the grid's table {sorted(rows)}"
                )
            arm[f"{key}regret_db"] = best["avg"] - row["avg"]
            arm[f"{key}grid_avg_db"] = row["avg"]
            arm[f"{key}grid_interval"] = [row["avg_low"], row["avg_high"]]
            arm[f"{key}matches_grid"] = row["vs_winner"] in ("winner", "not significantly different")
        arm["grid_best"] = arm["pick"] == grid["pick"]
        arm["epoch_share"] = arm["trial_epochs"] / grid["trial_epochs"]
        arm["search_epoch_share"] = arm["search_trial_epochs"] / grid["trial_epochs"]
        arm["cpu_share"] = arm["cpu_s"] / grid["cpu_s"] if grid["cpu_s"] > 0 else float("nan")
        arm["target_met"] = arm["matches_grid"] and arm["epoch_share"] <= TARGET_EPOCH_SHARE


def verdict_line(name: str, arm: dict[str, Any]) -> str:
    """One plain sentence: did the arm meet the target, and if not, which half failed."""
    quality = (
        "the grid's best"
        if arm["grid_best"]
        else "not significantly different from the grid's best"
        if arm["matches_grid"]
        else "significantly worse than the grid's best"
    )
    cost = f"{100 * arm['epoch_share']:.0f}% of the grid's trial-epochs"
    head = "target MET" if arm["target_met"] else "target NOT met"
    return (
        f"{name}: {head}: picked slices {arm['pick']} (regret {arm['regret_db']:.2f} dB, {quality}) at {cost} "
        f"(target <= {100 * TARGET_EPOCH_SHARE:.0f}%; search alone {100 * arm['search_epoch_share']:.0f}%, "
        f"its best trial had slices {arm['search_best_slices']}, regret {arm['search_regret_db']:.2f} dB)"
    )


FIGURE_KEYS = (
    "trial_epochs",
    "search_trial_epochs",
    "selection_trial_epochs",
    "cpu_s",
    "search_cpu_s",
    "selection_cpu_s",
    "wall_s",
    "pick",
    "pick_avg_db",
    "grid_avg_db",
    "regret_db",
    "search_best_slices",
    "search_regret_db",
    "epoch_share",
    "cpu_share",
)


def run_arms(
    plan: list[Arm], base: dict[str, Any], root: Path, tree: TreeCpu, notes: list[str]
) -> dict[str, dict[str, Any]]:
    """Each arm in turn; a failed platform arm is noted and the others go on (the grid is needed)."""
    results: dict[str, dict[str, Any]] = {}
    for arm in plan:
        log.info("search benchmark: arm %s (%s)", arm.name, arm.label)
        try:
            results[arm.name] = run_arm(arm, base, root, tree, say=_say(arm.name))
        except Exception as e:
            if arm.name == "grid":
                raise
            log.exception("search benchmark: arm %s failed", arm.name)
            notes.append(f"search: arm {arm.name} FAILED: {one_line(e, typed=True)}")
            continue
        log.info("search benchmark: arm %s done: %s", arm.name, _one_line(results[arm.name]))
    return results


def _one_line(arm: dict[str, Any]) -> str:
    """An arm's figures in one log line (the numbers survive in the log if a later arm fails)."""
    low, high = arm["pick_interval"]
    return (
        f"trial-epochs {arm['trial_epochs']} (search {arm['search_trial_epochs']} + selection "
        f"{arm['selection_trial_epochs']}), CPU {arm['cpu_s']:.0f} s, wall {arm['wall_s']:.0f} s, picked slices "
        f"{arm['pick']} [{low:.2f}, {high:.2f}] dB; table {arm['table']}"
    )


def _say(arm: str):
    return lambda msg: log.info("%s: %s", arm, msg)


def run(
    quick: bool,
    device: str,
    threads: int,
    tiny: bool = False,
    workdir: str | Path | None = None,
    only_arms: list[str] | None = None,
) -> dict[str, Any]:
    """The benchmark; `tiny`: 2 slice values, 1 epoch, tiny model and data (figures not meaningful).

    workdir: where data, studies, Ray storage and the MLflow store go (default: a temporary folder).
    only_arms: run these arms only (the grid always: the others are measured against it).
    """

    notes = []
    if device != "cpu":
        notes.append(f"search: trains on the CPU whatever --device says (asked: {device}): the quickstart's problem")
    with tempfile.TemporaryDirectory(prefix="samsnet-bench-efficiency-") as tmp, TreeCpu() as tree:
        root = Path(workdir or tmp).resolve()
        if (root / "runs").exists():  # run_study would resume those studies: their costs would be partial
            raise BenchError(f"search benchmark: {root} already holds studies (runs/); use an empty folder")
        data = synthesize(root / "data", **(TINY_DATA if tiny else {}))
        base = base_study(root, data, tiny=tiny)
        slice_values = list(base["model"]["slices"]["choice"])
        plan = [
            a
            for a in arms(slice_values, 1 if tiny else PROPOSALS_PER_SLICE_VALUE)
            if a.name == "grid" or only_arms is None or a.name in only_arms
        ]
        if not scheduler_available("median"):
            notes.append("search: arm median skipped: this version's study schema has no search.scheduler: median")
        concurrency = base["search"].get("max_concurrent_trials") or 1
        # One local Ray for every arm (run_study and run_selection reuse it), as large as the trials use.
        with Meter(tree) as total, ray_session(num_cpus=int(concurrency * base["resources"]["cpu"]), quiet=True):
            results = run_arms(plan, base, root, tree, notes)
    compare(results)
    notes += [verdict_line(name, arm) for name, arm in results.items() if name != "grid"]
    notes.append(
        "trial-epochs: search + selection retraining (a reused search trial counts once); CPU-s: the whole "
        "process tree (driver, Ray, trial workers); regret: grid's avg SDR of its best - of the pick (validation)"
    )
    figures = {f"{name}_{key}": float(arm[key]) for name, arm in results.items() for key in FIGURE_KEYS}
    figures.update({f"{name}_target_met": float(arm["target_met"]) for name, arm in results.items() if name != "grid"})
    figures.update(total_cpu_s=total.cpu, total_wall_s=total.wall)
    sizes = {
        "tiny": tiny,
        "slices": slice_values,
        "fixed": TINY if tiny else FIXED,
        "data": TINY_DATA if tiny else "samsnet-search data synth defaults",
        "study": {k: v for k, v in base.items() if k not in ("storage", "tracking", "search", "selection")},
        "from": str(QUICKSTART),
        "target_epoch_share": TARGET_EPOCH_SHARE,
        "ray_cpus": concurrency,
    }
    return {"sizes": sizes, "figures": figures, "arms": results, "notes": notes}
