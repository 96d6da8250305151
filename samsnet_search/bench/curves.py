"""The learning-curve table of Sams-Net: recorded epochs that search strategies replay.

`samsnet-search curves build` runs the grid study of `search_spaces/curves.yaml` through the
platform's own runner (`runner.run_study`: real trials, Ray Tune, MLflow) on synthetic data it
generates (8 validation tracks: paired evidence), no pruning, every run to the full budget. Per
run and epoch it records train and validation loss, validation SDR (median over tracks per
target, their average) and each validation track's SDR per target, epoch wall and CPU seconds;
per run the test SDR of its final weights and its parameter count. It writes one Parquet file
(zstd) with its provenance in the schema metadata, and a datasheet beside it.

Building takes CPU-hours. The study is resumable: the same command continues it (trials from
their last checkpoints), and test scores already computed are kept in the work folder. Progress
(epochs recorded of the total, and an ETA at this session's rate) is printed every minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from ..config import TARGETS, ExperimentConfig, read_yaml
from ..data.splits import load_subset
from ..data.synth import synthesize
from ..engine.checkpoint import LAST, load_model
from ..engine.evaluate import evaluate_tracks, model_estimator
from ..engine.train import TRACK_SDR
from ..files import write_atomic
from ..search.runner import TrialRecord, run_study
from ..search.space import num_trials
from ..search.study import get_path, load_study
from ..version import git_commit
from .common import BenchError, machine_info

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "search_spaces" / "curves.yaml"
OUT = ROOT / "benchmarks" / "curves"
TABLE = "sams-net-curves.parquet"
DATASHEET = "README.md"
TEST_SCORES = "test-scores.json"  # in the work folder: a resumed build scores each run once
# The synthetic data of the table: 8 validation tracks (paired tests need several), 4 test tracks.
DATA: dict[str, Any] = {"n_train": 8, "n_valid": 8, "n_test": 4, "seconds": 20.0, "seed": 0}
# Keys of a run's configuration, as table columns (dotted study keys -> column).
CONFIG_COLUMNS = {
    "model.slices": "slices",
    "model.heads": "heads",
    "model.channels": "channels",
    "train.lr": "lr",
    "train.seed": "seed",
}
EPOCH_COLUMNS = ("train_loss", "valid_loss", "valid_sdr", "epoch_seconds", "epoch_cpu_seconds")
PROGRESS_EVERY_S = 60.0


@dataclass
class Built:
    table: Path
    datasheet: Path
    runs: int
    rows: int
    slice_effect: dict[str, Any]


def build(
    space: Path = SPACE,
    workdir: Path = Path("curves-build"),
    out: Path = OUT,
    say: Callable[[str], None] = print,
    data: dict[str, Any] | None = None,
) -> Built:
    """Run (or continue) the table's grid study, score each run on the test tracks, write the table."""
    workdir = workdir.resolve()
    data = {**DATA, **(data or {})}
    root = _data(workdir / "data", data, say)
    study = load_study(_study_file(space, workdir, root), base_dir=workdir)
    runs, epochs = num_trials(study), study.base["train"]["epochs"]
    say(f"curves: {runs} runs x {epochs} epochs in {study.storage}/{study.name}")
    start_load = machine_info("cpu", 1)["load_average_1m"]
    with _Progress(Path(study.storage) / study.name, runs * epochs, say):
        result = run_study(study, quiet=True)
    if result.interrupted:
        raise BenchError(f"the curve study stopped before its end; run the same command to continue ({workdir})")
    failed = [t.trial_id for t in result.trials if t.status != "completed"]
    if failed:
        raise BenchError(f"runs did not complete: {', '.join(failed)} (see the MLflow store in {workdir})")
    tests = _test_scores(result.trials, workdir / TEST_SCORES, say)
    tracks = [t.name for t in load_subset(study.representative().data, "valid")[0]]
    table = to_table(result.trials, tests, tracks)
    effect = slice_effect(table)
    provenance = _provenance(space, root, data, start_load)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TABLE
    write_table(table, provenance, path)
    sheet = out / DATASHEET
    write_atomic(sheet, datasheet(table, provenance, effect).encode())
    say(f"curves: {table.num_rows} rows ({len(result.trials)} runs) -> {path}")
    say(f"curves: slice effect {effect['summary']}")
    return Built(path, sheet, len(result.trials), table.num_rows, effect)


def _data(root: Path, data: dict[str, Any], say: Callable[[str], None]) -> Path:
    """The table's synthetic tracks (generated once; the same seed gives the same audio)."""
    if not (root / "train").is_dir():
        say(f"curves: generating synthetic tracks in {root}")
        synthesize(root, **data)
    return root


def _study_file(space: Path, workdir: Path, data_root: Path) -> Path:
    """The space file with its data, storage and tracking in the work folder."""
    spec = read_yaml(space)
    spec["data"]["root"] = str(data_root)
    spec["storage"] = str(workdir / "runs")
    spec["tracking"] = {**spec.get("tracking", {}), "uri": str(workdir / "mlruns")}
    path = workdir / space.name
    workdir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(spec, sort_keys=False).encode())
    return path


class _Progress:
    """Every minute: epochs recorded (Tune's result.json lines of every trial) of the total, with
    an ETA at this session's rate."""

    def __init__(self, study_dir: Path, total: int, say: Callable[[str], None]) -> None:
        self.study_dir, self.total, self.say = study_dir, total, say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "_Progress":
        self._start, self._first = time.monotonic(), self.done()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def done(self) -> int:
        return sum(len(p.read_bytes().splitlines()) for p in self.study_dir.glob("trial_*/result.json"))

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            self.say(progress_line(self.done(), self._first, self.total, time.monotonic() - self._start))


def progress_line(done: int, first: int, total: int, seconds: float) -> str:
    """`k of n epochs`, and the time left at the rate of this session (epochs since it started)."""
    rate = (done - first) / seconds if seconds > 0 else 0.0
    eta = f"{(total - done) / rate / 60:.0f} min left" if rate > 0 else "time left unknown yet"
    return f"curves: {done} of {total} epochs ({100 * done / max(total, 1):.0f} %), {eta}"


def _test_scores(trials: list[TrialRecord], path: Path, say: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Each run's final weights on the test tracks (fast BSSEval v4, plain masks), kept in `path`."""
    scores: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}
    todo = [t for t in trials if t.trial_id not in scores]
    for k, trial in enumerate(todo, 1):
        scores[trial.trial_id] = test_score(trial)
        write_atomic(path, json.dumps(scores, indent=1).encode())
        say(f"curves: test SDR {k}/{len(todo)}: run {trial.trial_id} {scores[trial.trial_id]['avg']:.2f} dB")
    return scores


def test_score(trial: TrialRecord) -> dict[str, float]:
    """Median over test tracks per target, and their average, of the run's last epoch."""
    if trial.last_checkpoint is None:
        raise BenchError(f"run {trial.trial_id} has no checkpoint to score")
    with trial.last_checkpoint.as_directory() as folder:
        model, state = load_model(Path(folder) / LAST)
    cfg = ExperimentConfig.model_validate(state["experiment"])
    tests, kind = load_subset(cfg.data, "test")
    report = evaluate_tracks(
        model_estimator(model, torch.device("cpu")),
        tests,
        name=trial.trial_id,
        backend="fast",
        data_kind=kind,
        subset="test",
    )
    return report.summary


def to_table(trials: list[TrialRecord], tests: dict[str, dict[str, float]], tracks: list[str]) -> pa.Table:
    """One row per run and epoch (long form), runs in trial order; a column per validation track
    and target (NaN where a stem is silent over the excerpt: Tune's history leaves those out)."""
    paired = [f"{TRACK_SDR}.{track}.{t}" for track in tracks for t in TARGETS]
    rows = []
    for trial in trials:
        # From the configuration the trial ran (searched and fixed keys alike).
        config = {col: get_path(trial.experiment, key) for key, col in CONFIG_COLUMNS.items()}
        run = {
            "run": trial.trial_id,
            **config,
            "params": float(trial.metrics.get("params", np.nan)),
            "test_sdr": tests[trial.trial_id]["avg"],
            **{f"test_sdr_{t}": tests[trial.trial_id][t] for t in TARGETS},
        }
        for epoch in trial.history:
            rows.append(
                {
                    **run,
                    "epoch": int(epoch["epoch"]),
                    **{c: float(epoch.get(c, np.nan)) for c in EPOCH_COLUMNS},
                    **{f"valid_sdr_{t}": float(epoch.get(f"valid_sdr_{t}", np.nan)) for t in TARGETS},
                    **{k: float(epoch.get(k, np.nan)) for k in paired},
                }
            )
    if not rows:
        raise BenchError("the curve study has no recorded epochs")
    return pa.Table.from_pylist(rows)


def write_table(table: pa.Table, provenance: dict[str, Any], path: Path) -> None:
    """Parquet (zstd) with the provenance as schema metadata, written whole or not at all."""
    meta = {**(table.schema.metadata or {}), b"samsnet.provenance": json.dumps(provenance).encode()}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink, compression="zstd")
    write_atomic(path, sink.getvalue().to_pybytes())


def read_table(path: Path) -> tuple[pa.Table, dict[str, Any]]:
    """The table and its provenance."""
    table = pq.read_table(path)
    return table, json.loads((table.schema.metadata or {}).get(b"samsnet.provenance", b"{}"))


def _provenance(space: Path, data_root: Path, data: dict[str, Any], start_load: float) -> dict[str, Any]:
    info = machine_info("cpu", 1)
    return {
        "code_commit": git_commit(ROOT),
        "space": space.read_text(),
        "data": {"generator": "samsnet-search data synth", **data, "fingerprint": data_fingerprint(data_root)},
        "cpu": info["cpu"],
        "cores": info["cores"],
        "load_average_1m": {"start": start_load, "end": info["load_average_1m"]},
        "torch": info["torch"],
        "ray": info["ray"],
        "python": info["python"],
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def data_fingerprint(root: Path) -> str:
    """SHA-256 over the dataset's file names and contents (the synthetic tracks are small)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def slice_effect(table: pa.Table) -> dict[str, Any]:
    """Does the slice count matter in the table? Per configuration of the other settings, the
    spread (best minus worst slice value) of the seed-mean validation SDR at the last epoch,
    beside the seeds' standard error there."""
    rows = table.to_pylist()
    last = max(r["epoch"] for r in rows)
    final = [r for r in rows if r["epoch"] == last]
    by_config: dict[tuple, dict[int, list[float]]] = {}
    for r in final:
        by_config.setdefault((r["heads"], r["channels"], r["lr"]), {}).setdefault(r["slices"], []).append(
            r["valid_sdr"]
        )
    configs = []
    for (heads, channels, lr), per_slice in sorted(by_config.items()):
        means = {s: float(np.mean(v)) for s, v in per_slice.items()}
        se = [float(np.std(v, ddof=1) / np.sqrt(len(v))) for v in per_slice.values() if len(v) > 1]
        best = max(means, key=means.get)
        configs.append(
            {
                "heads": heads,
                "channels": channels,
                "lr": lr,
                "best_slices": best,
                "spread_db": max(means.values()) - min(means.values()),
                "seed_se_db": float(np.mean(se)) if se else float("nan"),
            }
        )
    spreads = np.array([c["spread_db"] for c in configs])
    ses = np.array([c["seed_se_db"] for c in configs])
    clear = int(np.sum(spreads > 2 * np.nan_to_num(ses, nan=np.inf)))
    summary = (
        f"spread of the seed-mean valid SDR over slice values, per configuration of the other settings: "
        f"median {np.median(spreads):.2f} dB, max {spreads.max():.2f} dB; larger than twice the seeds' "
        f"standard error in {clear} of {len(configs)} configurations"
    )
    return {"epoch": last, "configs": configs, "clear": clear, "summary": summary}


def datasheet(table: pa.Table, provenance: dict[str, Any], effect: dict[str, Any]) -> str:
    """What was varied, how to rebuild it, how to read it."""
    runs = len(set(table.column("run").to_pylist()))
    tracks = sorted({c.split(".")[1] for c in table.column_names if c.startswith(f"{TRACK_SDR}.")})
    lines = [
        "# Sams-Net learning curves (synthetic MUSDB18-HQ-format data)",
        "",
        f"`{TABLE}`: {table.num_rows} rows, one per run and epoch; {runs} runs, each trained to the full "
        f"budget ({effect['epoch']} epochs) with no pruning, through the platform's own runner.",
        "",
        "## Rebuild",
        "",
        "    samsnet-search curves build          # resumable: run it again after an interruption",
        "",
        "## What was varied",
        "",
        "The grid of `search_spaces/curves.yaml` (its text is in the provenance below): slices, heads,",
        "feature maps (channels), learning rate and training seed; everything else fixed at the",
        "quickstart's problem.",
        "",
        "## Columns",
        "",
        "- run identity: `run`, `slices`, `heads`, `channels`, `lr`, `seed`, `params` (parameter count)",
        "- per epoch: `epoch` (1-based), `train_loss`, `valid_loss`, `valid_sdr` (dB: median over the",
        "  validation tracks per target, averaged over the four targets), `valid_sdr_<target>`,",
        "  `epoch_seconds` (wall), `epoch_cpu_seconds` (the trainer's process)",
        f"- paired evidence: `{TRACK_SDR}.<track>.<target>`, each of the {len(tracks)} validation tracks' SDR",
        "  (median over 1 s frames, fast BSSEval v4)",
        "- per run (repeated on its rows): `test_sdr`, `test_sdr_<target>`: the last epoch's weights on the",
        "  test tracks, plain masks",
        "",
        "Read it with `pyarrow.parquet.read_table` (or pandas); the provenance is the schema metadata",
        "key `samsnet.provenance` (`samsnet_search.bench.curves.read_table`).",
        "",
        "## Does the slice count matter here?",
        "",
        effect["summary"] + ".",
        "",
        "| heads | maps | lr | best slices | spread (dB) | seeds' SE (dB) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {c['heads']} | {c['channels']} | {c['lr']:g} | {c['best_slices']} | {c['spread_db']:.2f} | {c['seed_se_db']:.2f} |"
            for c in effect["configs"]
        ),
        "",
        "## Provenance",
        "",
        *(f"- {k}: {v}" for k, v in provenance.items() if k != "space"),
        "",
    ]
    return "\n".join(lines)
