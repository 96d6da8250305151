"""`samsnet-search report NAME --html FILE`: one self-contained page, checked in headless Chromium.

The study is made the cheap way: the project's own writers (manifest, study copy,
selection record, MLflow parent and trial runs with per-epoch metrics, listening wavs)
fill a study folder and an embedded MLflow store, without running a search.
"""

from __future__ import annotations

import base64
import gzip
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from plotly.offline import get_plotlyjs
from test_report import fake_estimate, write_study

from samsnet_search.cli import main
from samsnet_search.config import SAMPLE_RATE, TARGETS
from samsnet_search.delivery.report import gather
from samsnet_search.delivery.report_html import collect, read_scheduler, render_html, rung_epochs
from samsnet_search.search import identity
from samsnet_search.services import tracking

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOT_IDS = ("sdr-vs-slices", "learning-curves", "stops", "parallel", "cost", "pareto", "importance")
STUDY_YAML = """\
model: {n_fft: 256, hop_length: 128, channels: 2, depth: 1}
train: {epochs: 8}
search: {grace_period: 1, reduction_factor: 2, num_samples: 4}
"""
# (status, slices, heads, lr, epochs trained)
TRIALS = [
    ("completed", 4, 1, 1e-3, 8),
    ("pruned", 1, 2, 3e-4, 1),
    ("pruned", 8, 1, 1e-4, 2),
    ("stopped_early", 2, 2, 1e-3, 6),
]


def _log_trials(m: identity.Manifest, target: tracking.TrackingTarget) -> None:
    """Trial runs as the search writes them: params, resolved model config, metrics per epoch, status."""
    from samsnet_search.config import ExperimentConfig

    spec = tracking.ChildRunSpec(
        m.tracking_uri, m.artifact_root, m.experiment_id, m.parent_run_id, m.name, system_metrics=False
    )
    for i, (status, slices, heads, lr, epochs) in enumerate(TRIALS):
        cfg = ExperimentConfig.model_validate(
            {
                "model": {
                    "n_fft": 256,
                    "hop_length": 128,
                    "channels": 2 * heads,
                    "depth": 1,
                    "heads": heads,
                    "slices": slices,
                },
                "data": {"segment_seconds": 1.0},
                "train": {"lr": lr, "epochs": 8},
            }
        )
        run = tracking.TrialRun(spec, f"t{i:04d}")
        run.log_config(cfg.model_dump(mode="json"), cfg.resolved_model().model_dump(mode="json"))
        for epoch in range(1, epochs + 1):
            losses = {"train_loss": 1.0 / epoch, "valid_loss": 0.5 + 0.1 * i + 0.3 / epoch}
            run.log_epoch({**losses, "valid_sdr": 1.0 + i + 0.1 * epoch}, epoch)
        run.finish(status)


CLIP_STEMS = ("mixture", *(f"{t}{kind}" for t in TARGETS for kind in (".reference", "", ".wiener")))


def _log_listening(m: identity.Manifest, target: tracking.TrackingTarget, folder) -> None:
    """`listen/<track>/*.wav` on the parent run as the selection writes them (mixture, then per target
    reference, estimate, Wiener estimate), 6 s each (the page cuts them to 3 s)."""
    track = folder / "song_a"
    track.mkdir(parents=True)
    t = np.arange(6 * SAMPLE_RATE) / SAMPLE_RATE
    for k, name in enumerate(CLIP_STEMS):
        tone = 0.2 * np.sin(2 * np.pi * 110 * (k + 1) * t)
        sf.write(track / f"{name}.wav", np.stack([tone, tone], axis=1), SAMPLE_RATE, subtype="PCM_16")
    tracking.client(target).log_artifacts(m.parent_run_id, str(track), "listen/song_a")


def make_study(storage, with_selection=True, with_runs=True, estimate=None) -> identity.Manifest:
    """A finished study folder (manifest, study.yaml, selection, optionally the slice estimate) and
    its embedded MLflow store."""
    written = write_study(storage, with_selection=with_selection, estimate=estimate)
    target = tracking.resolve_tracking(str(storage / "mlruns"))
    m = written
    m.tracking_uri, m.artifact_root = target.uri, target.artifact_root
    if with_runs:
        m.experiment_id = tracking.ensure_experiment(target, m.experiment_name)
        m.parent_run_id = tracking.start_parent_run(target, m.experiment_id, m.name)
        _log_trials(m, target)
        _log_listening(m, target, storage / "wav")
    identity.write_manifest(m)
    identity.write_study_copy(m.path, STUDY_YAML)
    return m


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """The full study, built once for the module (MLflow's store is slow to create)."""
    root = tmp_path_factory.mktemp("html") / "runs"
    m = make_study(root, estimate=fake_estimate([1, 2, 2, 2]))  # estimate 2 (IQR 1.75-2); the selection chose 4
    m.summary["pareto"] = _pareto()  # as a multi-objective search leaves it in study.json
    m.summary["importance"], m.summary["cost"] = _importance_and_cost()  # as a finished search leaves them
    identity.write_manifest(m)
    return root


def _pareto() -> dict:
    """Three trials scored on valid_sdr, params and GMAC/s: t0002 is dominated by t0000."""
    from types import SimpleNamespace

    from samsnet_search.search.pareto import pareto_summary

    trials = [
        SimpleNamespace(
            trial_id=f"t{i:04d}",
            mlflow_run_id=None,
            status="completed",
            epochs=8,
            best={"epoch": 8, "valid_sdr": sdr},
            config={"model.slices": slices},
            metrics={"params": params, "gmacs_per_second": params / 1e5},
        )
        for i, (sdr, params, slices) in enumerate([(2.0, 1000.0, 4), (3.0, 4000.0, 2), (1.0, 2000.0, 8)])
    ]
    return pareto_summary(trials, "valid_sdr", {"valid_sdr": "max", "params": "min", "gmacs_per_second": "min"}, "fifo")


def _importance_and_cost() -> tuple[dict, dict]:
    """Twelve trials whose loss follows the slice count: the importance says so; their cost adds up."""
    from types import SimpleNamespace

    import optuna.distributions as od

    from samsnet_search.search.cost import search_cost
    from samsnet_search.search.importance import param_importance

    trials = [
        SimpleNamespace(
            trial_id=f"t{i:04d}",
            status="completed" if i % 3 else "pruned",
            epochs=8 if i % 3 else 2,
            config={"model.slices": [1, 2, 4, 8][i % 4], "train.lr": 1e-3 * (1 + i % 5)},
            history=[{"epoch": e, "epoch_seconds": 2.0, "epoch_cpu_seconds": 1.5} for e in range(1, 3)],
            metrics={"valid_loss": abs([1, 2, 4, 8][i % 4] - 4) + 0.01 * i, "time_total_s": 5.0},
        )
        for i in range(12)
    ]
    space = {"model.slices": od.CategoricalDistribution([1, 2, 4, 8]), "train.lr": od.FloatDistribution(1e-4, 1e-2)}
    spent = search_cost(trials, lambda t: 8, 1.0, 0.0, 30.0)
    return param_importance(trials, space, {"valid_loss": "min"}), {k: v for k, v in spent.items() if k != "trials"}


@pytest.fixture(scope="module")
def page(storage):
    """The full study written to HTML through the CLI."""
    out = storage.parent / "report.html"
    assert main(["report", "demo", "--storage", str(storage), "--html", str(out)]) == 0
    return out


def test_page_has_every_part_and_is_self_contained(page):
    text = page.read_text()
    for div in PLOT_IDS:
        assert f'id="{div}"' in text
    assert text.count("<audio") == len(CLIP_STEMS) and "data:audio/flac;base64," in text
    assert 'class="note"' not in text  # nothing missing
    assert "chosen slices: 4" in text and "models:/samsnet-demo@champion" in text
    # the estimate beside the searched optimum: marked on the SDR-vs-slices plot and said in words
    assert "estimate: 2 (IQR 1.75-2)" in text
    assert "slice estimate (unsupervised, training mixtures): 2" in text
    assert "searched optimum: 4 (differs by +2; outside the estimate&#x27;s IQR)" in text
    # a multi-objective study's front: plotted against each cost and listed
    # which hyperparameters matter, and what the study cost
    assert "does the slice count matter? yes, the most: model.slices has" in text
    assert '<table class="cost">' in text and "Saved by pruning and early stopping: 24 trial-epochs" in text
    assert "PARETO FRONT (validation; max valid_sdr, min params, min gmacs_per_second): 2 of 3 scored trials" in text
    # plotly.js is inlined once, gzip-packed (its own text holds credit links for map tiles, never loaded here)
    packed = re.findall(r'atob\("([A-Za-z0-9+/=]+)"\)', text)
    assert len(packed) == 1 and gzip.decompress(base64.b64decode(packed[0])).decode() == get_plotlyjs()
    assert text.count("window.plotlyReady.then(") == len(PLOT_IDS)
    # nothing is fetched: no external src/href, no script files, no CSS imports
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script src" not in text and "@import" not in text


def test_collected_data_match_the_runs(storage):
    data = collect(gather("demo", str(storage)), listen_seconds=1.0)
    assert data.notes == {}
    assert [t.status for t in data.trials] == [s for s, *_ in TRIALS]
    assert [len(t.curve) for t in data.trials] == [e for *_, e in TRIALS]
    assert data.trials[0].metric == pytest.approx(0.5 + 0.3 / 8)  # best (min) valid_loss of trial 0
    assert data.trials[1].params["model.slices"] == "1"
    # cost grows with heads (channels = 2 x heads here); MACs depend on slice length too
    small, big = data.trials[0].cost, data.trials[1].cost
    assert 0 < small["params"] < big["params"] and small["gmacs_per_second"] > 0
    assert data.scheduler["settings"] == {"grace_period": 1, "reduction_factor": 2.0, "max_t": 8}
    assert (data.metric, data.mode, data.trials[0].curve[0]) == ("valid_loss", "min", (1, pytest.approx(0.8)))
    assert [(track, stem) for track, stem, _ in data.clips] == [("song_a", s) for s in CLIP_STEMS]
    import io

    audio, rate = sf.read(io.BytesIO(base64.b64decode(data.clips[0][2])))
    assert rate == SAMPLE_RATE and audio.shape == (SAMPLE_RATE, 2)  # cut to 1 s


def test_model_cost_comes_from_the_configuration_recorded_in_the_study_storage(tmp_path):
    """The worker records each trial's configuration in its trial folder; the report reads it there
    (a study of an older version has only the MLflow run's model config: read as before)."""
    from samsnet_search.config import ExperimentConfig
    from samsnet_search.engine.checkpoint import build_model
    from samsnet_search.model.info import model_cost
    from samsnet_search.search import checkpoints

    m = make_study(tmp_path / "runs", with_selection=False)
    cfg = ExperimentConfig.model_validate(
        {
            "model": {"n_fft": 256, "hop_length": 128, "channels": 6, "depth": 2, "heads": 3, "slices": 4},
            "data": {"segment_seconds": 1.0},
        }
    )
    checkpoints.write_experiment(m.path, "t0000", cfg.model_dump(mode="json"))
    data = collect(gather("demo", str(tmp_path / "runs")), listen_seconds=0.0)
    assert data.trials[0].cost == model_cost(build_model(cfg.resolved_model()))
    assert 0 < data.trials[1].cost["params"] < data.trials[0].cost["params"]  # t0001: its MLflow model config


def test_each_target_row_has_its_reference_beside_the_estimates(page):
    text = page.read_text()
    rows = re.findall(r"<tr><th>(\w+)</th>(.*?)</tr>", text.split('class="listen"')[1].split("</table>")[0])
    assert [name for name, _ in rows] == ["mixture", *TARGETS]
    for target, cells in rows[1:]:
        kinds = re.findall(r'data-target="(\w+)" data-kind="(\w+)"', cells)
        assert kinds == [(target, "reference"), (target, "estimate"), (target, "wiener")], (target, kinds)
    for header in ("reference", "estimate (plain masks)", "estimate (Wiener filter)"):
        assert f"<th>{header}</th>" in text


def test_slices_axis_is_categorical_and_error_bars_are_dodged(storage):
    from samsnet_search.delivery.report_html import category_position, fig_sdr_vs_slices
    from samsnet_search.search.select import COLUMNS

    fig = fig_sdr_vs_slices(gather("demo", str(storage)))
    axis = fig.layout.xaxis
    assert list(axis.tickvals) == [0, 1, 2] and list(axis.ticktext) == ["1", "4", "8"]  # no 1.5, 2.5, ... ticks
    assert axis.tickmode == "array"
    xs = {trace.name: list(trace.x) for trace in fig.data}
    assert sorted(xs) == sorted(COLUMNS)
    at_first = sorted(x[0] for x in xs.values())
    assert len(set(at_first)) == len(COLUMNS) and all(abs(x) < 0.5 for x in at_first)  # apart, inside category 0
    assert all(b - a == pytest.approx(at_first[1] - at_first[0]) for a, b in zip(at_first, at_first[1:]))
    # markers sit at the category positions: the chosen count (4) is category 1, the estimate's IQR 1.75-2 between 0 and 1
    assert category_position(4, [1, 4, 8]) == 1.0 and category_position(6, [1, 4, 8]) == 1.5
    assert category_position(1.75, [1, 2, 4]) == pytest.approx(0.75) and category_position(99, [1, 2]) == 1.0


SCHEDULER_SETTINGS = {
    "asha": {"grace_period": 2, "reduction_factor": 3.0, "max_t": 8},
    "hyperband": {"reduction_factor": 3.0, "max_t": 8},
    "median": {"grace_period": 2},
    "fifo": {},
}


@pytest.mark.parametrize("scheduler", list(SCHEDULER_SETTINGS))
def test_the_study_metric_and_scheduler_settings_are_read_for_every_scheduler(tmp_path, scheduler):
    """A study on valid_sdr is read on valid_sdr (max), whatever its scheduler; each scheduler's own settings."""
    write_study(tmp_path / "runs", with_selection=False)
    search = "{scheduler: %s, metric: valid_sdr, grace_period: 2, reduction_factor: 3}" % scheduler
    identity.write_study_copy(str(tmp_path / "runs" / "demo"), f"train: {{epochs: 8}}\nsearch: {search}\n")
    got = read_scheduler(gather("demo", str(tmp_path / "runs")))
    assert (got["name"], got["metric"], got["mode"]) == (scheduler, "valid_sdr", "max")
    assert got["settings"] == SCHEDULER_SETTINGS[scheduler]


@pytest.mark.parametrize("scheduler", ["fifo", "median", "hyperband"])
def test_a_valid_sdr_study_is_plotted_on_valid_sdr_whatever_its_scheduler(storage, tmp_path, scheduler):
    """The runs of the module's study, read through a copy of its folder whose study file names another
    scheduler and valid_sdr: curves, best values and axes are valid_sdr's (maximised)."""
    shutil.copytree(storage / "demo", tmp_path / "runs" / "demo")
    search = f"{{scheduler: {scheduler}, metric: valid_sdr, num_samples: 4}}"
    identity.write_study_copy(str(tmp_path / "runs" / "demo"), f"train: {{epochs: 8}}\nsearch: {search}\n")
    data = collect(gather("demo", str(tmp_path / "runs")), listen_seconds=0.0)
    assert (data.metric, data.mode, data.scheduler["name"]) == ("valid_sdr", "max", scheduler)
    assert data.trials[0].metric == pytest.approx(1.8)  # the best (max) valid_sdr of trial 0, at epoch 8
    assert data.trials[0].curve[0] == (1, pytest.approx(1.1))
    text = render_html(data)
    assert "best valid_sdr" in text and "last valid_sdr" in text and "last valid_loss" not in text
    assert f"Scheduler {scheduler}: no ASHA rungs to mark." in text


def test_parallel_axes_leave_out_parameters_every_trial_shares():
    from samsnet_search.delivery.report_html import Trial, fig_parallel

    trials = [
        Trial(f"t{i}", "r", "completed", {"model.slices": str(s), "model.heads": "2", "train.lr": str(lr)}, [], m)
        for i, (s, lr, m) in enumerate([(1, 1e-3, 0.5), (4, 1e-4, 0.4), (8, 1e-3, 0.6)])
    ]
    labels = [d.label for d in fig_parallel(trials, "valid_loss").data[0].dimensions]
    assert labels == ["slices", "log10 lr", "valid_loss"]  # heads is 2 in every trial: no axis


def test_the_mlflow_command_is_not_broken_mid_word(page):
    """The `mlflow ui ...` line scrolls rather than wraps; other lines wrap at spaces, never inside a word."""
    from samsnet_search.delivery.report_html import STYLE

    text = page.read_text()
    assert '<pre class="command">MLflow UI: mlflow ui --backend-store-uri sqlite:///' in text
    assert "pre.command{white-space:pre;overflow-x:auto}" in STYLE and "break-all" not in STYLE


def test_rungs():
    assert rung_epochs(1, 2, 8) == [1, 2, 4]
    assert rung_epochs(10, 3, 100) == [10, 30, 90]
    assert rung_epochs(5, 2, 5) == []


def test_missing_parts_become_notes(tmp_path):
    make_study(tmp_path / "runs", with_selection=False, with_runs=False)
    text = render_html(collect(gather("demo", str(tmp_path / "runs"))))
    assert "Slice count not chosen yet" in text
    assert "slice estimate" not in text  # this study ran without the estimate
    assert "No trial runs recorded in MLflow yet." in text
    assert "Excerpts could not be read: Run with id=" in text  # the study's parent run is not in MLflow
    assert "<audio" not in text and 'id="learning-curves"' not in text


def test_unreachable_tracking_is_a_note_not_a_failure(tmp_path, monkeypatch):
    m = make_study(tmp_path / "runs", with_runs=False)
    m.tracking_uri, m.artifact_root = "http://127.0.0.1:9", None  # nothing listens on the discard port
    identity.write_manifest(m)
    report = gather("demo", str(tmp_path / "runs"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, no backoff
    text = render_html(collect(report))
    assert "Trial runs could not be read" in text and 'id="sdr-vs-slices"' in text


def _chromium(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # any network lookup fails: the page must not need one
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_page_renders_in_chromium_without_errors(page, tmp_path):
    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "ERROR:CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    # plotly rendered every figure: each plot div holds an svg of class main-svg
    for div in PLOT_IDS:
        start = dom.stdout.index(f'id="{div}"')
        assert 'class="main-svg"' in dom.stdout[start : start + 5000], div
    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri()], tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
    shutil.copy(shot, page.with_suffix(".png"))  # for a person to look at (pytest's basetemp)
