"""The study report: what a finished study found, gathered once and rendered as text.

`gather(name, storage)` collects everything from the study folder (study.json, the
selection's `selection/selection.json`) into a `StudyReport`: search counts and timing,
ASHA's savings, the validation table with intervals, the chosen slice count, the
winner's test score and registry entry, and where to look in MLflow. `render_text`
turns it into rich renderables (the `report` and `run` commands print them); an HTML
page can be built from the same `StudyReport`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .config import TARGETS
from .search import identity
from .search.identity import Manifest
from .search.select import COLUMNS, SelectionResult, SelectionTable, load_selection
from .search.study import resolve_storage
from .tracking import TrackingTarget

log = logging.getLogger(__name__)


@dataclass
class StudyReport:
    manifest: Manifest
    search: dict[str, Any]  # the search summary: trials, counts, seconds, epochs_run/full, fraction_saved, best
    selection: SelectionResult | None
    where: str  # how to open the MLflow UI on this study

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.search.get("counts", {}))

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.manifest.name, "state": self.manifest.state, "storage": identity.display_uri(self.manifest.path),
                "search": self.search, "selection": self.selection.to_dict() if self.selection else None,
                "where": self.where}  # fmt: skip


def gather(name_or_path: str, storage: str = "./runs", base_dir=None) -> StudyReport:
    """Everything the report shows, read from the study folder (`StudyNotFound` if unknown)."""
    from pathlib import Path

    manifest = identity.find_study(name_or_path, resolve_storage(storage, Path(base_dir or Path.cwd())))
    selection = load_selection(manifest.path)
    target = TrackingTarget(manifest.tracking_uri, manifest.artifact_root)
    return StudyReport(manifest, dict(manifest.summary or {}), selection, target.where())


# --- text ----------------------------------------------------------------------------


def table_renderable(table: SelectionTable):
    """The Table-2-style validation table as a rich Table."""
    from rich.table import Table

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
        out.add_row(str(rec["slices"]), *(f"{rec[c]:.2f}" for c in COLUMNS), f"[{rec['avg_low']:.2f}, {rec['avg_high']:.2f}]",
                    f"{rec['pairs']} ({row.tracks} tracks x {row.seeds} seeds)", rec["vs_winner"], style=style)  # fmt: skip
    return out


def search_lines(report: StudyReport) -> list[str]:
    s, m = report.search, report.manifest
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts.items())) or "none recorded"
    lines = [f"study {m.name} ({m.state}): {identity.display_uri(m.path)}",
             f"  search: {s.get('trials', 0)} trials ({counts})"]  # fmt: skip
    if s.get("epochs_full"):
        lines.append(f"  trial-epochs: {s['epochs_run']} of {s['epochs_full']} "
                     f"({100 * s.get('fraction_saved', 0):.0f}% saved by pruning and early stopping)")  # fmt: skip
    if s.get("seconds") is not None:
        lines.append(f"  search wall time: {float(s['seconds']):.0f} s")
    return lines


def selection_lines(sel: SelectionResult) -> list[str]:
    """The verdict, the winner's test score and registry entry, and the phase timings."""
    test = sel.test
    summary = test["summary"]
    per_target = " ".join(f"{t} {summary[t]:.2f}" for t in TARGETS)
    winner = sel.winner_job
    reg = sel.registered
    timing = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in sel.seconds.items())
    return [
        sel.table.verdict(),
        f"  TEST ({test['data']}, {len(test['tracks'])} tracks, {test['backend']} BSSEval v4), winner only "
        f"(slices={sel.table.winner}, seed {winner['seed']}): avg {summary['avg']:.2f} dB ({per_target})",
        f"  registered: models:/{reg['name']}@{reg['alias']} (version {reg['version']})",
        f"  selection wall time: {timing}",
    ]


def render_text(report: StudyReport) -> list[Any]:
    """Rich renderables (strings and a Table) in reading order."""
    out: list[Any] = list(search_lines(report))
    if report.selection is None:
        hint = "the search is not finished" if report.manifest.state != "finished" else "run the study again to choose it"
        out.append(f"  slice count: not chosen yet ({hint})")
    else:
        out.append(table_renderable(report.selection.table))
        out.extend(selection_lines(report.selection))
    out.append(f"  where to look: {report.where}")
    return out


def print_report(report: StudyReport, console) -> None:
    for item in render_text(report):
        console.print(item, highlight=False, soft_wrap=isinstance(item, str))
