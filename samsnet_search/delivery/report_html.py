"""The study report as ONE self-contained HTML page (plotly.js inlined once, audio as FLAC data: URIs).

`write_html(report, path)` renders a `report.StudyReport` plus what only MLflow holds:
every trial's learning curve (the trial child runs' `valid_loss` history), its resolved
model config (`model/model_config.json`, for parameter count and MACs) and the winner's
listening excerpts (`listen/<track>/*.wav` on the parent run). Sections:

1. SDR vs slices (the Table-2 view: median per target + avg, bootstrap intervals), with the
   unsupervised slice estimate marked beside the chosen count when the study ran it,
2. learning curves of the study metric (pruned trials dashed grey),
3. where trials stopped (each trial's last epoch vs its last metric value; ASHA's rung epochs marked),
4. parallel coordinates over hyperparameters -> best metric,
5. best metric against parameter count and MACs per second,
6. audio players for one test track: the mixture, then per target its reference stem beside the
   winner's estimate (and the Wiener-filtered estimate when the study scored one).

A part that is missing (no selection yet, MLflow unreachable, no excerpts) becomes a
note on the page instead of an error. The page never loads anything over the network.
"""

from __future__ import annotations

import base64
import gzip
import html
import io
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import soundfile as sf
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from ..config import TARGETS, ExperimentConfig, ModelConfig, parse_yaml, validate_model
from ..engine.checkpoint import build_model
from ..errors import one_line
from ..files import write_atomic
from ..model.info import model_cost as count
from ..search import checkpoints, identity, schedulers
from ..search.objectives import best_of, mode_of
from ..search.pareto import front_rows, title
from ..search.select import COLUMNS
from ..search.study import SearchSettings
from ..services import tracking
from ..services.tracking import ROLE_TAG, STATUS_TAG, TRIAL_TAG, TrackingTarget
from .report import StudyReport, estimate_line, search_lines, selection_lines

log = logging.getLogger(__name__)

# Hyperparameters shown on the parallel-coordinates plot, when the trials logged them.
HYPERPARAMETERS = ("model.slices", "model.heads", "model.channels", "model.depth", "train.lr")
STATUS_COLORS = {
    "completed": "#2ca02c",
    "stopped_early": "#1f77b4",
    "pruned": "#999999",
    "stopped": "#ff7f0e",
    "does_not_fit": "#9467bd",
    "failed": "#d62728",
    "running": "#000000",
}
LISTEN_FOLDER = "listen"
DEFAULT_LISTEN_SECONDS = 3.0  # each excerpt is cut to this: 13 stereo 16-bit wavs of 3 s are ~9 MB as base64
# Excerpts go into the page as FLAC: lossless (what is heard is what was scored), about half of WAV
# for music, and every current browser plays it in <audio>.
CLIP_FORMAT, CLIP_MIME = "FLAC", "audio/flac"
# What `select._log_listening` writes per target: `<target>.wav` is the estimate, a suffix names the others.
CLIP_KINDS = {"reference": "reference", "": "estimate (plain masks)", "wiener": "estimate (Wiener filter)"}
DODGE = 0.08  # x offset between neighbouring columns on the SDR-vs-slices plot, in slice-category units


@dataclass
class Trial:
    """One search trial as read back from its MLflow child run."""

    trial_id: str
    run_id: str
    status: str
    params: dict[str, str]
    curve: list[tuple[int, float]]  # (epoch, value of the study metric), epoch order
    metric: float | None = None  # best value of the study metric
    cost: dict[str, float] = field(
        default_factory=dict
    )  # model.info.model_cost: {"params", "gmacs_per_second"} when known

    @property
    def last(self) -> tuple[int, float] | None:
        return self.curve[-1] if self.curve else None


@dataclass
class PageData:
    """Everything the page shows, with a note for each part that could not be read."""

    report: StudyReport
    trials: list[Trial]
    metric: str = "valid_loss"
    mode: str = "min"
    scheduler: dict[str, Any] | None = None  # name, label, settings ({grace_period, ...}), metric, mode
    clips: list[tuple[str, str, str]] = field(default_factory=list)  # (track, stem, base64 FLAC)
    notes: dict[str, str] = field(default_factory=dict)  # section -> why it is missing


# --- reading -------------------------------------------------------------------------


def _client(report: StudyReport):

    m = report.manifest
    return tracking.client(TrackingTarget(m.tracking_uri, m.artifact_root))


def read_trials(report: StudyReport, metric: str, mode: str) -> list[Trial]:
    """The study's trial runs (selection retrainings excluded), oldest first."""

    m = report.manifest
    target = TrackingTarget(m.tracking_uri, m.artifact_root)
    c = tracking.client(target)
    out = []
    for run in tracking.find_child_runs(target, m.experiment_id, m.parent_run_id):
        tags = run.data.tags
        if tags.get(ROLE_TAG) != "trial" or "samsnet.phase" in tags:
            continue
        rid = run.info.run_id
        history = sorted((h.step, h.value) for h in c.get_metric_history(rid, metric))
        best = best_of([v for _, v in history], mode)
        trial = Trial(
            tags.get(TRIAL_TAG, rid[:8]), rid, tags.get(STATUS_TAG, "running"), dict(run.data.params), history, best
        )
        trial.cost = model_cost(m.path, trial.trial_id, c, rid)
        out.append(trial)
    return out


_COST_CACHE: dict[str, dict[str, float]] = {}


def model_cost(study_path: str, trial_id: str, client, run_id: str) -> dict[str, float]:
    """Parameter count and GMACs per second of a trial's resolved model (empty if unknown): from the
    configuration its worker recorded in the study's storage (`search.checkpoints`), else (a study
    of an older version) from the model config its MLflow run logged."""

    experiment = checkpoints.read_experiment(study_path, trial_id)
    if experiment:
        cfg = validate_model(ExperimentConfig, experiment, f"trial {trial_id}").resolved_model().model_dump(mode="json")
    else:
        cfg = _download_json(client, run_id, "model/model_config.json")
    if not cfg:
        return {}
    key = json.dumps(cfg, sort_keys=True)
    if key not in _COST_CACHE:  # trials share configs; building a model costs real time
        _COST_CACHE[key] = count(build_model(ModelConfig(**cfg)))
    return _COST_CACHE[key]


def _download_json(client, run_id: str, artifact: str) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, artifact, tmp)
        except Exception as e:  # an older run without the artifact
            log.debug("run %s has no %s: %s", run_id, artifact, e)
            return None
        return json.loads(Path(local).read_text())


def read_scheduler(report: StudyReport) -> dict[str, Any] | None:
    """The study's metric, its direction and its scheduler with that scheduler's settings, from the
    study file copy, whatever the scheduler (None for a missing copy)."""

    text = identity.read_study_copy(report.manifest.path)
    if text is None:
        return None
    raw = parse_yaml(text, f"{report.manifest.path}/{identity.STUDY_COPY}")
    s = validate_model(SearchSettings, raw.get("search") or {}, f"{report.manifest.path}/{identity.STUDY_COPY}: search")
    epochs = (raw.get("train") or {}).get("epochs")
    entry = schedulers.get(s.scheduler)
    max_t = s.max_t or (int(epochs) if isinstance(epochs, int) else None)
    return {
        "name": entry.name,
        "label": entry.label,
        "settings": entry.settings_of(s, max_t),
        "described": entry.describe(s, max_t),
        "metric": s.metric,
        "mode": s.resolved_mode,
    }


def rung_epochs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which ASHA compares trials: grace * rf^k below max_t."""
    out, t = [], float(grace_period)
    while t < max_t and len(out) < 64:  # bounded: rf > 1 always, the cap guards odd inputs
        out.append(int(t))
        t *= reduction_factor
    return out


def clip_name(stem: str) -> tuple[str, str]:
    """`vocals.reference` -> ("vocals", "reference"); `vocals` -> ("vocals", "") (the estimate)."""
    target, _, kind = stem.partition(".")
    return target, kind


def _clip_order(stem: str) -> tuple[int, int, str]:
    target, kind = clip_name(stem)
    targets = ("mixture", *TARGETS)
    kinds = list(CLIP_KINDS)
    return (targets.index(target) if target in targets else 99, kinds.index(kind) if kind in kinds else 99, stem)


def read_clips(report: StudyReport, seconds: float = DEFAULT_LISTEN_SECONDS) -> list[tuple[str, str, str]]:
    """The excerpts of the first track under `listen/` on the parent run, cut to `seconds`, as base64 FLAC:
    (track, stem, data) with stem `mixture`, `<target>.reference`, `<target>` or `<target>.wiener`."""

    c = _client(report)
    run_id = report.manifest.parent_run_id
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = sorted((f for f in c.list_artifacts(run_id, LISTEN_FOLDER) if f.is_dir), key=lambda f: f.path)
        for folder in folders[:1]:  # one track: the page is for listening closely, not for every track
            local = Path(c.download_artifacts(run_id, folder.path, tmp))
            for wav in sorted(local.glob("*.wav"), key=lambda p: _clip_order(p.stem)):
                audio, rate = sf.read(wav, dtype="int16", always_2d=True)  # (N, C)
                buf = io.BytesIO()
                sf.write(buf, audio[: int(seconds * rate)], rate, format=CLIP_FORMAT, subtype="PCM_16")
                clips.append((local.name, wav.stem, base64.b64encode(buf.getvalue()).decode("ascii")))
    return clips


def _attempt(notes: dict[str, str], section: str, fn, default):
    """Run one reader; a failure becomes a note on the page (the rest still renders)."""
    try:
        return fn()
    except Exception as e:
        log.warning("report section %s: %s", section, e)
        notes[section] = f"could not be read: {one_line(e)}"
        return default


def collect(report: StudyReport, listen_seconds: float = DEFAULT_LISTEN_SECONDS) -> PageData:
    notes: dict[str, str] = {}
    scheduler = _attempt(notes, "scheduler", lambda: read_scheduler(report), None)
    metric = (scheduler or {}).get("metric", "valid_loss")
    mode = (scheduler or {}).get("mode", mode_of(metric))
    trials = _attempt(notes, "trials", lambda: read_trials(report, metric, mode), [])
    clips = _attempt(notes, "listen", lambda: read_clips(report, listen_seconds), [])
    return PageData(report, trials, metric, mode, scheduler, clips, notes)


# --- figures -------------------------------------------------------------------------


def category_position(value: float, slices: list[int]) -> float:
    """Where a slice count (possibly fractional, e.g. an IQR bound) sits on the categorical axis whose
    category k is slices[k]: linear between neighbouring categories, clamped to the ends."""
    if value <= slices[0] or len(slices) == 1:
        return 0.0
    for k in range(1, len(slices)):
        if value <= slices[k]:
            return k - 1 + (value - slices[k - 1]) / (slices[k] - slices[k - 1])
    return float(len(slices) - 1)


def fig_sdr_vs_slices(report: StudyReport):
    """Median validation SDR per target and avg against slices, with bootstrap intervals.

    The slice counts are categories (the searched values, evenly spaced, no 1.5 ticks); each
    column is offset a little (dodged) so that the five error bars at one slice count stay apart.
    """

    table = report.selection.table
    rows = sorted(table.rows, key=lambda r: r.slices)
    slices = [r.slices for r in rows]
    fig = go.Figure()
    for k, col in enumerate(COLUMNS):
        offset = (k - (len(COLUMNS) - 1) / 2) * DODGE
        y = [r.median[col] for r in rows]
        hi = [r.interval[col][1] - r.median[col] for r in rows]
        lo = [r.median[col] - r.interval[col][0] for r in rows]
        fig.add_trace(
            go.Scatter(
                x=[i + offset for i in range(len(rows))],
                y=y,
                name=col,
                mode="lines+markers",
                customdata=slices,
                hovertemplate=f"{col}, slices %{{customdata}}: %{{y:.2f}} dB<extra></extra>",
                error_y=dict(type="data", array=hi, arrayminus=lo, visible=True),
                line=dict(width=4 if col == "avg" else 2),
            )
        )
    fig.add_vline(x=category_position(table.winner, slices), line_dash="dot", annotation_text=f"chosen: {table.winner}")
    if report.estimate is not None:
        # The estimate and its IQR, from the training mixtures alone: where it sits against the
        # searched curve is the test of its hypothesis. Annotated at the bottom, apart from "chosen".
        value, (low, high) = int(report.estimate["slices_estimate"]), report.estimate["iqr"]
        fig.add_vrect(
            x0=category_position(low, slices),
            x1=category_position(high, slices),
            fillcolor="#9467bd",
            opacity=0.08,
            line_width=0,
        )
        fig.add_vline(
            x=category_position(value, slices),
            line_dash="dash",
            line_color="#9467bd",
            annotation_position="bottom right",
            annotation_text=f"estimate: {value} (IQR {low:g}-{high:g})",
        )
    fig.update_layout(
        title=f"Validation SDR vs slices ({round(100 * table.confidence)}% bootstrap intervals)", yaxis_title="SDR (dB)"
    )
    # A linear axis showing only the category ticks: the dodge offsets and the estimate's fractional
    # position need numbers, which a plotly "category" axis would read as category names.
    fig.update_xaxes(
        title_text="slices (searched values)",
        tickmode="array",
        tickvals=list(range(len(slices))),
        ticktext=[str(v) for v in slices],
        range=[-0.5, len(slices) - 0.5],
        zeroline=False,
    )
    return fig


def fig_learning_curves(trials: list[Trial], metric: str = "valid_loss"):

    fig = go.Figure()
    for t in trials:
        if not t.curve:
            continue
        pruned = t.status == "pruned"
        fig.add_trace(
            go.Scatter(
                x=[e for e, _ in t.curve],
                y=[v for _, v in t.curve],
                mode="lines+markers",
                name=f"{t.trial_id} ({t.status})",
                line=dict(dash="dash" if pruned else "solid", color=STATUS_COLORS["pruned"] if pruned else None),
                opacity=0.6 if pruned else 1.0,
            )
        )
    fig.update_layout(title="Learning curves (pruned trials dashed grey)", xaxis_title="epoch", yaxis_title=metric)
    return fig


def fig_stops(trials: list[Trial], scheduler: dict[str, Any] | None, metric: str = "valid_loss"):
    """Each trial's last epoch against its last metric value; ASHA's rung epochs as vertical lines."""

    fig = go.Figure()
    by_status: dict[str, list[Trial]] = {}
    for t in trials:
        if t.last is not None:
            by_status.setdefault(t.status, []).append(t)
    for status, group in sorted(by_status.items()):
        fig.add_trace(
            go.Scatter(
                x=[t.last[0] for t in group],
                y=[t.last[1] for t in group],
                mode="markers",
                name=status,
                text=[t.trial_id for t in group],
                marker=dict(size=11, color=STATUS_COLORS.get(status)),
            )
        )
    title = "Where each trial stopped"
    if scheduler:
        title = f"{scheduler['label']}: where each trial stopped ({scheduler['described']})"
        asha = scheduler["settings"]
        if scheduler["name"] == "asha" and asha.get("max_t"):
            for r in rung_epochs(asha["grace_period"], asha["reduction_factor"], asha["max_t"]):
                fig.add_vline(x=r, line_dash="dot", line_color="#888", annotation_text=f"rung {r}")
    fig.update_layout(title=title, xaxis_title="last epoch", yaxis_title=f"last {metric}")
    return fig


def _number(value: str | None) -> float | None:
    try:
        x = float(value) if value is not None else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def fig_parallel(trials: list[Trial], metric: str):
    """Parallel coordinates: hyperparameters -> best metric (lr on a log10 axis). A parameter every
    trial shares is no axis: a constant tells nothing and squeezes the others."""

    scored = [t for t in trials if t.metric is not None]
    dims = []
    for key in HYPERPARAMETERS:
        values = [_number(t.params.get(key)) for t in scored]
        if not values or any(v is None for v in values) or len(set(values)) == 1:
            continue
        if key == "train.lr" and all(v > 0 for v in values):
            dims.append(dict(label="log10 lr", values=[math.log10(v) for v in values]))
        else:
            dims.append(dict(label=key.split(".")[-1], values=values))
    metric_values = [t.metric for t in scored]
    dims.append(dict(label=metric, values=metric_values))
    fig = go.Figure(go.Parcoords(dimensions=dims, line=dict(color=metric_values, colorscale="Viridis", showscale=True)))
    fig.update_layout(title=f"Hyperparameters -> best {metric} ({len(scored)} scored trials)")
    return fig


def fig_cost(trials: list[Trial], metric: str):
    """Best metric against parameter count and MACs per second of audio (two panels)."""

    known = [t for t in trials if t.metric is not None and t.cost]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("parameters", "GMACs per second of audio"))
    for col, key in ((1, "params"), (2, "gmacs_per_second")):
        fig.add_trace(
            go.Scatter(
                x=[t.cost[key] for t in known],
                y=[t.metric for t in known],
                mode="markers",
                text=[f"{t.trial_id} slices={t.params.get('model.slices', '?')}" for t in known],
                marker=dict(size=10, color=[STATUS_COLORS.get(t.status) for t in known]),
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(type="log", title_text=key, row=1, col=col)
        fig.update_yaxes(title_text=f"best {metric}", row=1, col=col)
    fig.update_layout(title=f"Best {metric} against model size and cost")
    return fig


def fig_importance(found: dict[str, Any]):
    """Each objective's fANOVA (and PED-ANOVA) importance per parameter, as grouped bars."""
    import plotly.graph_objects as go  # lazy: plotly loads in a second; only the HTML report draws

    fig = go.Figure()
    for name, by_evaluator in found["objectives"].items():
        for evaluator, shares in by_evaluator.items():
            fig.add_trace(go.Bar(x=list(shares), y=list(shares.values()), name=f"{name}, {evaluator}"))
    fig.update_layout(
        title=f"Which hyperparameters matter ({found['trials']} trials at their last epoch)",
        barmode="group",
        yaxis=dict(title="share of importance", tickformat=".0%"),
    )
    return fig


def _cost_html(search: dict[str, Any] | None, selection: dict[str, Any] | None) -> str:
    rows = (
        [("search", search.get("wall_s"), search.get("trial_seconds"), search.get("cpu_s"), search.get("epochs"))]
        if search
        else []
    )
    if selection:
        rows.append(
            ("selection", selection["wall_s"], selection["job_seconds"], selection["cpu_s"], selection["epochs"])
        )
        test = selection.get("test") or {}
        rows.append(("test scoring and registering", test.get("wall_s"), None, test.get("cpu_s"), None))
    cells = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(
            f"<td>{'' if v is None else html.escape(f'{v:.0f}' if isinstance(v, float) else str(v))}</td>" for v in vals
        )
        + "</tr>"
        for name, *vals in rows
    )
    saved = (
        (
            f"<p>Saved by pruning and early stopping: {search['saved_epochs']} trial-epochs, about "
            f"{search['saved_s']:.0f} trial-seconds.</p>"
        )
        if search
        else ""
    )
    return (
        '<table class="cost"><tr><th>phase</th><th>wall s</th><th>trial/job s</th><th>CPU s</th>'
        f"<th>epochs</th></tr>{cells}</table>{saved}"
    )


def fig_pareto(pareto: dict[str, Any]):
    """Quality against each cost objective: every scored trial, the front's members joined up."""

    quality, *costs = list(pareto["objectives"])
    fig = make_subplots(rows=1, cols=len(costs), subplot_titles=costs)
    for col, cost in enumerate(costs, start=1):
        for on_front in (False, True):
            pts = sorted((p for p in pareto["points"] if p["on_front"] == on_front), key=lambda p: p["values"][cost])
            fig.add_trace(
                go.Scatter(
                    x=[p["values"][cost] for p in pts],
                    y=[p["values"][quality] for p in pts],
                    mode="lines+markers" if on_front else "markers",
                    name="Pareto front" if on_front else "other trials",
                    text=[
                        f"{p['trial_id']} " + " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in p["config"].items())
                        for p in pts
                    ],
                    marker=dict(size=11 if on_front else 8, color="#d62728" if on_front else "#999999"),
                    line=dict(dash="dot"),
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(type="log", title_text=cost, row=1, col=col)
        fig.update_yaxes(title_text=f"best {quality}", row=1, col=col)
    fig.update_layout(
        title=f"Quality against cost: {len(pareto['front'])} of {len(pareto['points'])} trials on the front"
    )
    return fig


def _pareto_html(pareto: dict[str, Any]) -> str:

    header, rows = front_rows(pareto)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        _plot(fig_pareto(pareto), "pareto")
        + f"<table><caption>{html.escape(title(pareto))}</caption><tr>{head}</tr>{body}</table>"
    )


# --- page ----------------------------------------------------------------------------


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _plot(fig, div_id: str) -> str:
    """The figure's div and script; the script waits for the page's one copy of plotly.js (`_plotly_js`)."""
    part = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})
    if part.count("<script>") != 1 or part.count("</script>") != 1:
        raise RuntimeError(f"plotly's figure HTML changed: expected one <script> in {part[:200]!r}")
    return part.replace("<script>", "<script>window.plotlyReady.then(() => {").replace("</script>", "});</script>")


def _plotly_js() -> str:
    """plotly.js once for the page, gzip-compressed and base64 (2 MB instead of 4.8 MB): the browser
    unpacks it with its own DecompressionStream (Chrome 80, Firefox 113, Safari 16.4) and every
    figure's script runs when `window.plotlyReady` resolves. Nothing is fetched."""
    packed = base64.b64encode(gzip.compress(get_plotlyjs().encode(), mtime=0)).decode("ascii")
    return (
        '<script>window.plotlyReady = (async () => {const z = Uint8Array.from(atob("'
        + packed
        + '"), c => c.charCodeAt(0)); const s = new Blob([z]).stream().pipeThrough(new DecompressionStream("gzip"));'
        " (0, eval)(await new Response(s).text());})();</script>"
    )


def _table_html(report: StudyReport) -> str:
    table = report.selection.table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["slices", *COLUMNS, "interval (avg)", "vs winner"])
    rows = []
    for rec in table.records():
        cls = ' class="winner"' if rec["slices"] == table.winner else ""
        cells = [
            str(rec["slices"]),
            *(f"{rec[c]:.2f}" for c in COLUMNS),
            f"[{rec['avg_low']:.2f}, {rec['avg_high']:.2f}]",
            html.escape(rec["vs_winner"]),
        ]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><caption>{html.escape(table.label())}</caption><tr>{head}</tr>{''.join(rows)}</table>" + "".join(
        f"<p>{html.escape(line)}</p>" for line in selection_lines(report.selection)
    )


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _trials_note(data: PageData) -> str | None:
    if "trials" in data.notes:
        return f"Trial runs {data.notes['trials']}"
    if not data.trials:
        return "No trial runs recorded in MLflow yet."
    return None


def _sections(data: PageData) -> list[str]:
    r = data.report
    out = [
        _section(
            "Study",
            "".join(f"<pre>{html.escape(line)}</pre>" for line in search_lines(r))
            + f'<pre class="command">{html.escape(r.where)}</pre>',
        )
    ]
    estimate = estimate_line(r)
    estimate_html = f'<p class="estimate">{html.escape(estimate.strip())}</p>' if estimate else ""
    if r.selection is None:
        hint = "the search is not finished" if r.manifest.state != "finished" else "run the study again to choose it"
        out.append(
            _section(
                "SDR vs slices", _note(f"Slice count not chosen yet ({hint}): no validation table.") + estimate_html
            )
        )
    else:
        out.append(
            _section("SDR vs slices", _plot(fig_sdr_vs_slices(r), "sdr-vs-slices") + estimate_html + _table_html(r))
        )
    missing = _trials_note(data)
    curved = [t for t in data.trials if t.curve]
    if missing or not curved:
        why = missing or f"No trial reported a {data.metric} yet."
        for title in ("Learning curves", "Where trials stopped", "Hyperparameters", "Size and cost"):
            out.append(_section(title, _note(why)))
    else:
        out.append(_section("Learning curves", _plot(fig_learning_curves(data.trials, data.metric), "learning-curves")))
        name = (data.scheduler or {}).get("name")
        stop_note = (
            ""
            if name == "asha"
            else _note(f"Scheduler {name}: no ASHA rungs to mark.")
            if name
            else _note("No study file copy: the scheduler's settings are unknown.")
        )
        out.append(
            _section(
                "Where trials stopped", _plot(fig_stops(data.trials, data.scheduler, data.metric), "stops") + stop_note
            )
        )
        out.append(_section("Hyperparameters", _plot(fig_parallel(data.trials, data.metric), "parallel")))
        if any(t.cost for t in data.trials):
            out.append(_section("Size and cost", _plot(fig_cost(data.trials, data.metric), "cost")))
        else:
            out.append(_section("Size and cost", _note("No trial logged its model config (model/model_config.json).")))
    if r.search.get("pareto"):
        out.append(_section("Quality against cost (Pareto front)", _pareto_html(r.search["pareto"])))
    found = r.search.get("importance")
    if found and found.get("objectives"):
        out.append(_section("Which hyperparameters matter", _plot(fig_importance(found), "importance")))
    else:
        why = (found or {}).get("skipped", "the search did not finish")
        out.append(_section("Which hyperparameters matter", _note(f"No importance computed ({why}).")))
    if r.search.get("cost") or r.selection:
        out.append(
            _section("What the study cost", _cost_html(r.search.get("cost"), r.selection.cost if r.selection else None))
        )
    out.append(_section("Listen: references and the winner's estimates", _audio_html(data)))
    return out


def _player(track: str, stem: str, b64: str) -> str:
    target, kind = clip_name(stem)
    return (
        f'<audio controls preload="none" data-track="{html.escape(track)}" data-target="{html.escape(target)}" '
        f'data-kind="{html.escape(kind or "estimate")}" src="data:{CLIP_MIME};base64,{b64}"></audio>'
    )


def _audio_html(data: PageData) -> str:
    """One track: the mixture, then a row per target with its reference beside the estimate(s)."""
    if "listen" in data.notes:
        return _note(f"Excerpts {data.notes['listen']}")
    if not data.clips:
        return _note("No excerpts logged (the selection step logs them under listen/ on the parent run).")
    track = data.clips[0][0]
    by_name = {stem: b64 for t, stem, b64 in data.clips if t == track}
    kinds = [k for k in CLIP_KINDS if any(clip_name(s)[1] == k and clip_name(s)[0] in TARGETS for s in by_name)]
    head = "".join(f"<th>{html.escape(CLIP_KINDS[k])}</th>" for k in kinds)
    rows = []
    if "mixture" in by_name:
        rows.append(
            f'<tr><th>mixture</th><td colspan="{max(1, len(kinds))}">{_player(track, "mixture", by_name["mixture"])}</td></tr>'
        )
    for target in TARGETS:
        cells = []
        for kind in kinds:
            stem = f"{target}.{kind}" if kind else target
            cells.append(f"<td>{_player(track, stem, by_name[stem]) if stem in by_name else ''}</td>")
        rows.append(f"<tr><th>{html.escape(target)}</th>{''.join(cells)}</tr>")
    caption = f"test track {track}: each target's reference stem beside the winner's estimate"
    return f'<table class="listen"><caption>{html.escape(caption)}</caption><tr><th></th>{head}</tr>{"".join(rows)}</table>'


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1300px}section{margin-bottom:2em}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:.5em 1em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}tr.winner{font-weight:bold;background:#e8f5e9}
caption{text-align:left;font-style:italic}.estimate{border-left:4px solid #9467bd;padding:.3em 1em}pre{margin:.2em 0;white-space:pre-wrap;overflow-wrap:break-word}pre.command{white-space:pre;overflow-x:auto}table.listen td,table.listen th{text-align:left}"""


def render_html(data: PageData) -> str:
    """The whole page as one string; plotly.js is inlined, packed (no network needed to view it)."""

    title = f"Study {data.report.manifest.name}: Sams-Net search report"
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"{_plotly_js()}</head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(_sections(data))}</body></html>\n"
    )


def write_html(report: StudyReport, path: str | Path, listen_seconds: float = DEFAULT_LISTEN_SECONDS) -> Path:
    """Collect the MLflow data of `report`'s study and write the page to `path`."""
    page = render_html(collect(report, listen_seconds))
    path = write_atomic(path, page.encode())  # a half-written page never replaces a good one
    log.info("wrote %s (%.1f MB)", path, len(page) / 1e6)
    return path
