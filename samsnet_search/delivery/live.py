"""The terminal view of a running study (rich): trials running / pruned / done, best so far.

Used by the CLI only. It listens to `StudyCallback` events in the driver process
(see `callbacks.add_listener`) and redraws a small table. When the console is not a
terminal (a log file, CI, `nohup`) a table cannot be redrawn, so it prints one plain line
per trial event instead.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..search.callbacks import TrialEvent, add_listener, remove_listener
from ..search.space import num_trials
from ..search.study import Study

STATUS_STYLE = {
    "running": "cyan",
    "completed": "green",
    "stopped_early": "green",
    "pruned": "yellow",
    "stopped": "magenta",
    "does_not_fit": "bright_red",
    "failed": "red",
}
RECENT_ROWS = 12


class LiveView:
    """Context manager: shows the study's progress while `run_study` runs."""

    def __init__(self, study: Study, console: Console | None = None, refresh_per_second: float = 2.0):
        self.study = study
        self.console = console or Console(stderr=True)
        self.lock = threading.Lock()
        self.trials: dict[str, dict[str, Any]] = {}  # trial id -> {status, epoch, metric, config}
        self.statuses: dict[str, str] = {}
        self.best: dict[str, Any] | None = None
        self.start = time.monotonic()
        self.total = num_trials(self.study)
        # get_renderable: every refresh renders anew, so the elapsed time moves between events.
        self.live = (
            Live(console=self.console, get_renderable=self.render, refresh_per_second=refresh_per_second)
            if self.console.is_terminal
            else None
        )

    def __enter__(self) -> "LiveView":
        add_listener(self.study.name, self.on_event)
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        remove_listener(self.study.name, self.on_event)
        if self.live is not None:
            self.live.refresh()
            self.live.__exit__(*exc)
            self.console.line()

    def on_event(self, event: TrialEvent) -> None:
        with self.lock:
            # Trials this view has no event of (they ended before a resume) get a row from their
            # status, so that the table shows as many trials as the header counts.
            for trial_id, status in event.statuses.items():
                known = self.trials.setdefault(trial_id, {"status": status, "config": {}, "earlier": True})
                if known.get("earlier"):
                    known["status"] = status
            row = self.trials.setdefault(event.trial_id, {"status": "running", "config": {}})
            row.pop("earlier", None)
            row["status"] = event.status
            if "epoch" in event.result:
                row["epoch"] = event.result["epoch"]
            if self.study.metric in event.result:
                row["metric"] = event.result[self.study.metric]
            if event.result.get("config"):
                row["config"] = {k: event.result["config"].get(k) for k in self.study.space}
            changed = event.kind != "result" or row.get("logged") != row["status"]
            row["logged"] = row["status"]
            self.statuses = event.statuses
            self.best = event.best
        if self.live is None and changed:
            self.console.print(self.event_line(event.trial_id), highlight=False, soft_wrap=True)

    def event_line(self, trial_id: str) -> str:
        """One plain line for a trial's change, with the study's counts and elapsed time."""
        with self.lock:
            row = self.trials[trial_id]
            done = sum(s != "running" for s in self.statuses.values())
            metric = row.get("metric")
            value = f" {self.study.metric} {metric:.4g}" if isinstance(metric, (int, float)) else ""
            epoch = f" epoch {row['epoch']}" if "epoch" in row else ""
            return (
                f"[{time.monotonic() - self.start:6.0f} s] trial {trial_id} {row['status']}{epoch}{value}"
                f" {_short(row['config'])}  ({done}/{self.total} trials done)"
            )

    def render(self) -> Group:
        with self.lock:
            counts: dict[str, int] = {}
            for status in self.statuses.values():
                counts[status] = counts.get(status, 0) + 1
            header = Text(f"study {self.study.name}  ")
            header.append(f"{len(self.statuses)}/{self.total} trials  ")
            for status, style in STATUS_STYLE.items():
                if counts.get(status):
                    header.append(f"{status} {counts[status]}  ", style=style)
            header.append(f"{time.monotonic() - self.start:.0f} s")
            best = Text("best so far: -")
            if self.best:
                best = Text(
                    f"best so far: {self.study.metric} {self.best[self.study.metric]:.4g} "
                    f"(trial {self.best['trial_id']}, epoch {self.best.get('epoch', '?')}) "
                    f"{_short(self.best.get('config', {}))}",
                    style="bold",
                )
            table = Table(box=None, pad_edge=False)
            # short headers (slices, lr, ...): the table must fit an 80-column terminal
            for col in (
                "trial",
                "status",
                "epoch",
                self.study.metric,
                *(k.rsplit(".", 1)[-1] for k in self.study.space),
            ):
                table.add_column(col, no_wrap=True)
            for trial_id, row in list(self.trials.items())[-RECENT_ROWS:]:
                metric = row.get("metric")
                table.add_row(
                    trial_id,
                    Text(row["status"], style=STATUS_STYLE.get(row["status"], "")),
                    str(row.get("epoch", "")),
                    f"{metric:.4g}" if isinstance(metric, (int, float)) else "",
                    *(_fmt(row["config"].get(k)) for k in self.study.space),
                )
        return Group(header, best, table)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else ("" if value is None else str(value))


def _short(config: dict[str, Any]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in config.items())
