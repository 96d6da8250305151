"""The study report: what a finished study found, gathered once and rendered as text.

`gather(name, storage)` collects everything from the study folder (study.json, the
selection's `selection/selection.json`, `slice_estimate.json` when the study ran with the
unsupervised estimate) into a `StudyReport`: search counts and timing, ASHA's savings, the
validation table with intervals, the chosen slice count beside the estimate, the winner's
test score and registry entry, and where to look in MLflow. `render_text`
turns it into rich renderables (the `report` and `run` commands print them); an HTML
page can be built from the same `StudyReport`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from ..config import TARGETS
from ..engine.evaluate import backend_label
from ..errors import ConfigError
from ..search import identity, warm_start
from ..search.cost import cost_lines
from ..search.estimate_step import ARTIFACT as ESTIMATE_FILE
from ..search.estimate_step import load_estimate
from ..search.identity import Manifest
from ..search.importance import slices_line
from ..search.pareto import front_table
from ..search.select import COLUMNS, SelectionResult, SelectionTable, load_selection
from ..search.study import resolve_storage
from ..services.tracking import TrackingTarget

log = logging.getLogger(__name__)


@dataclass
class StudyReport:
    manifest: Manifest
    search: dict[str, Any]  # the search summary: trials, counts, seconds, epochs_run/full, fraction_saved, best
    selection: SelectionResult | None
    where: str  # how to open the MLflow UI on this study
    estimate: dict[str, Any] | None = None  # the slice estimate's summary (estimate_summary), if the study ran it
    warm_start: dict[str, int] | None = None  # earlier study -> trials the searcher was told of

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.search.get("counts", {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.manifest.name,
            "state": self.manifest.state,
            "storage": identity.display_uri(self.manifest.path),
            "search": self.search,
            "selection": self.selection.to_dict() if self.selection else None,
            "where": self.where,
            "estimate": self.estimate,
        }

    @property
    def optimum(self) -> int | None:
        """The searched optimum: the selection's chosen slice count (None before the selection)."""
        return self.selection.table.winner if self.selection else None


def gather(name_or_path: str, storage: str = "./runs", base_dir=None) -> StudyReport:
    """Everything the report shows, read from the study folder (`StudyNotFound` if unknown)."""
    manifest = identity.find_study(name_or_path, resolve_storage(storage, Path(base_dir or Path.cwd())))
    selection = load_selection(manifest.path)
    target = TrackingTarget(manifest.tracking_uri, manifest.artifact_root)
    estimate = estimate_summary(load_estimate(manifest.path))
    warm = (identity.read_study_json(manifest.path, warm_start.ARTIFACT) or {}).get("sources")
    return StudyReport(
        manifest, dict(manifest.summary or {}), selection, target.where(manifest.experiment_id), estimate, warm
    )


# Summary keys kept from the estimate JSON: its per-segment lists stay in the file.
ESTIMATE_KEYS = (
    "slices_estimate",
    "median_slices",
    "median_parts",
    "iqr",
    "histogram",
    "allowed_slices",
    "segment_seconds",
    "n_tracks",
    "hypothesis",
    "action",
)


def estimate_summary(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report's view of `slice_estimate.json`: its summary numbers, the method and the
    number of segments (None when the study ran without the estimate)."""
    if data is None:
        return None
    missing = [k for k in ("slices_estimate", "median_slices", "iqr") if k not in data]
    if missing:
        raise ConfigError(f"{ESTIMATE_FILE}: not a slice estimate (missing {', '.join(missing)})")
    out = {k: data[k] for k in ESTIMATE_KEYS if k in data}
    out["method"] = (data.get("params") or {}).get("method", "novelty")
    out["segments"] = len(data.get("segments") or [])
    return out


def estimate_line(report: StudyReport) -> str | None:
    """One line: the unsupervised estimate, its spread and hypothesis, against the searched optimum."""
    est = report.estimate
    if est is None:
        return None
    value, (low, high) = int(est["slices_estimate"]), est["iqr"]
    line = (
        f"  slice estimate (unsupervised, training mixtures): {value} (median {est['median_slices']:g}, "
        f"IQR {low:g}-{high:g}; hypothesis: one slice per contiguous part)"
    )
    optimum = report.optimum
    if optimum is None:
        return line + "; searched optimum: not chosen yet"
    if optimum == value:
        return line + f"; searched optimum: {optimum} (agrees)"
    side = "inside" if low <= optimum <= high else "outside"
    return line + f"; searched optimum: {optimum} (differs by {optimum - value:+d}; {side} the estimate's IQR)"


# --- text ----------------------------------------------------------------------------


def table_renderable(table: SelectionTable):
    """The Table-2-style validation table as a rich Table."""
    pct = round(100 * table.confidence)
    out = Table(title=f"VALIDATION: {table.label()}", title_justify="left")
    out.add_column("slices", justify="right")
    for col in COLUMNS:
        out.add_column(col, justify="right")
    out.add_column(f"{pct}% interval (avg)", justify="right")
    out.add_column("pairs", justify="right")
    out.add_column("vs winner")
    for rec, row in zip(table.records(), table.rows):
        style = "bold green" if row.slices == table.winner else None
        out.add_row(
            str(rec["slices"]),
            *(f"{rec[c]:.2f}" for c in COLUMNS),
            f"[{rec['avg_low']:.2f}, {rec['avg_high']:.2f}]",
            f"{rec['pairs']} ({row.tracks} tracks x {row.seeds} seeds)",
            rec["vs_winner"],
            style=style,
        )
    return out


def search_lines(report: StudyReport) -> list[str]:
    s, m = report.search, report.manifest
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts.items())) or "none recorded"
    lines = [
        f"study {m.name} ({m.state}): {identity.display_uri(m.path)}",
        f"  search: {s.get('trials', 0)} trials ({counts})",
    ]
    if s.get("epochs_full"):
        lines.append(
            f"  trial-epochs: {s['epochs_run']} of {s['epochs_full']} "
            f"({100 * s.get('fraction_saved', 0):.0f}% saved by pruning and early stopping)"
        )
    if s.get("seconds") is not None:
        lines.append(f"  search wall time: {float(s['seconds']):.0f} s")
    if report.warm_start:
        lines.append(
            "  warm start: "
            + ", ".join(f"{n} trials from study {name}" for name, n in report.warm_start.items())
            + f" (told to the searcher, not run again); {s.get('trials', 0)} new trials"
        )
    lines += [f"  {line}" for line in importance_lines(s.get("importance"))]
    lines += [f"  {line}" for line in cost_lines(s.get("cost"), report.selection.cost if report.selection else None)]
    return lines


def importance_lines(found: dict[str, Any] | None) -> list[str]:
    """The slice-count answer, then each objective's parameters by fANOVA importance."""
    if not found:
        return []
    objectives = list(found.get("objectives") or {})
    lines = [slices_line(found, objectives[0] if objectives else "the study metric")]
    for name in objectives:
        shares = found["objectives"][name]["fanova"]
        lines.append(f"importance for {name} (fANOVA): " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    return lines


def selection_lines(sel: SelectionResult) -> list[str]:
    """The verdict, the winner's test score and registry entry, and the phase timings."""
    test = sel.test
    summary = test["summary"]
    per_target = " ".join(f"{t} {summary[t]:.2f}" for t in TARGETS)
    winner = sel.winner_job
    reg = sel.registered
    timing = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in sel.seconds.items())
    filtered = test.get("wiener")  # the same test set after the Wiener post-filter, when the study scored it
    return [
        sel.table.verdict(),
        f"  TEST ({test['data']}, {len(test['tracks'])} tracks, {backend_label(test['backend'])}), winner only "
        f"(slices={sel.table.winner}, seed {winner['seed']}), {test.get('post_filter', 'plain masks (paper)')}: "
        f"avg {summary['avg']:.2f} dB ({per_target})",
        *(
            [
                f"  TEST, same winner, {filtered['post_filter']}: avg {filtered['summary']['avg']:.2f} dB ("
                + " ".join(f"{t} {filtered['summary'][t]:.2f}" for t in TARGETS)
                + ")"
            ]
            if filtered
            else []
        ),
        f"  registered: models:/{reg['name']}@{reg['alias']} (version {reg['version']})",
        f"  selection wall time: {timing}",
    ]


def render_text(report: StudyReport) -> list[Any]:
    """Rich renderables (strings and a Table) in reading order."""
    out: list[Any] = list(search_lines(report))
    if report.search.get("pareto"):  # a multi-objective study: quality against cost
        out.append(front_table(report.search["pareto"]))
    out.extend(selection_renderables(report))
    out.append(f"  where to look: {report.where}")
    return out


def selection_renderables(report: StudyReport) -> list[Any]:
    """The validation table, the choice with the slice estimate beside it, the test score."""
    estimate = estimate_line(report)
    if report.selection is None:
        hint = (
            "the search is not finished" if report.manifest.state != "finished" else "run the study again to choose it"
        )
        return [f"  slice count: not chosen yet ({hint})", *([estimate] if estimate else [])]
    verdict, *rest = selection_lines(report.selection)  # the verdict names the chosen slice count
    return [table_renderable(report.selection.table), verdict, *([estimate] if estimate else []), *rest]


def print_report(report: StudyReport, console) -> None:
    for item in render_text(report):
        console.print(item, highlight=False, soft_wrap=isinstance(item, str))
