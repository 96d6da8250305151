"""The live view: on a terminal a table of counts and the best so far; off a terminal (a log file,
CI) one plain line per trial change, with counts and time."""

from __future__ import annotations

import io
import logging

import yaml
from rich.console import Console

from samsnet_search.delivery.live import LiveView
from samsnet_search.search.callbacks import TrialEvent
from samsnet_search.search.study import load_study


def _study(tmp_path, num_samples: int = 2):
    (tmp_path / "d").mkdir()
    path = tmp_path / "v.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"n_fft": 512, "hop_length": 128, "slices": {"choice": [1, 2]}},
                "data": {"root": str(tmp_path / "d")},
                "train": {"epochs": 2, "patience": 2},
                "search": {"num_samples": num_samples},
            }
        )
    )
    return load_study(path, base_dir=tmp_path, check_data=False)


def test_live_view_shows_counts_and_best(tmp_path):
    study = _study(tmp_path, num_samples=3)
    console = Console(record=True, width=120, file=open(tmp_path / "out.txt", "w"), force_terminal=True)
    with LiveView(study, console) as view:
        statuses = {"t1": "completed", "t2": "pruned", "t3": "running"}
        best = {"trial_id": "t1", "epoch": 2, "valid_loss": 0.125, "config": {"model.slices": 2}}
        view.on_event(
            TrialEvent(
                "complete",
                "t1",
                "completed",
                {"epoch": 2, "valid_loss": 0.125, "config": {"model.slices": 2}},
                statuses,
                best,
            )
        )
        view.on_event(
            TrialEvent(
                "complete",
                "t2",
                "pruned",
                {"epoch": 1, "valid_loss": 0.9, "config": {"model.slices": 1}},
                statuses,
                best,
            )
        )
    text = console.export_text()
    assert "3/3 trials" in text
    assert "completed 1" in text and "pruned 1" in text and "running 1" in text
    assert "best so far: valid_loss 0.125 (trial t1, epoch 2) slices=2" in text
    assert "t2" in text and "pruned" in text


def test_plain_lines_when_not_a_terminal(tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    with LiveView(_study(tmp_path), console) as view:
        assert view.live is None
        running = {"t1": "running"}
        view.on_event(TrialEvent("start", "t1", "running", {"config": {"model.slices": 2}}, running, None))
        for epoch in (1, 2):  # results of a running trial: no new line each epoch
            view.on_event(TrialEvent("result", "t1", "running", {"epoch": epoch, "valid_loss": 0.5}, running, None))
        one_done = {"t1": "completed"}
        view.on_event(TrialEvent("complete", "t1", "completed", {"epoch": 2, "valid_loss": 0.25}, one_done, None))
        both = {"t1": "completed", "t2": "pruned"}
        view.on_event(TrialEvent("complete", "t2", "pruned", {"epoch": 1, "valid_loss": 0.9}, both, None))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert "trial t1 running" in lines[0] and "slices=2" in lines[0] and "(0/2 trials done)" in lines[0]
    assert "trial t1 completed epoch 2 valid_loss 0.25" in lines[1] and "(1/2 trials done)" in lines[1]
    assert "trial t2 pruned epoch 1" in lines[2] and "(2/2 trials done)" in lines[2]
    assert "\x1b[" not in out.getvalue()  # no terminal escapes in a log file


def test_elapsed_time_moves_without_events(tmp_path):
    view = LiveView(_study(tmp_path), Console(file=io.StringIO(), force_terminal=True, width=120))
    first = Console(file=io.StringIO(), width=120, record=True)
    first.print(view.render())
    view.start -= 42  # as if 42 s passed with no trial event
    later = Console(file=io.StringIO(), width=120, record=True)
    later.print(view.render())
    assert " 0 s" in first.export_text() and "42 s" in later.export_text()
    assert view.live is not None and view.live.get_renderable() is not None


def test_a_resumed_study_shows_a_row_for_each_trial_it_counts(tmp_path):
    """Trials that ended before the resume send no event; the table still lists them (6/6 over 6 rows)."""
    study = _study(tmp_path, num_samples=6)
    view = LiveView(study, Console(file=io.StringIO(), force_terminal=True, width=120))
    earlier = {f"t{k}": "completed" if k % 2 else "pruned" for k in range(1, 6)}  # from MLflow at restore
    statuses = {**earlier, "t6": "running"}
    view.on_event(TrialEvent("start", "t6", "running", {"config": {"model.slices": 2}}, statuses, None))
    shown = Console(file=io.StringIO(), width=120, record=True)
    shown.print(view.render())
    text = shown.export_text()
    assert "6/6 trials" in text
    rows = [line.split()[:2] for line in text.splitlines() if line.split()[:1] and line.split()[0] in statuses]
    assert rows == [[k, s] for k, s in statuses.items()]


def test_a_log_line_under_the_live_table_is_a_whole_line_above_it(tmp_path):
    """The CLI's screen handler writes to the stderr of the moment: under the table that is rich's
    proxy, which prints the line above the table (a handler holding the original stderr wrote it
    into the table's last row: `...channels  lrINFO samsnet_search...`)."""
    from samsnet_search.cli import SCREEN_FORMAT, ScreenHandler

    out = io.StringIO()
    log = logging.getLogger("samsnet_search.test_live")
    handler = ScreenHandler()
    handler.setFormatter(logging.Formatter(SCREEN_FORMAT))
    log.addHandler(handler)
    try:
        with LiveView(_study(tmp_path), Console(file=out, width=120, force_terminal=True)):
            log.warning("slice estimate: 1")
    finally:
        log.removeHandler(handler)
    assert "\x1b[?25lWARNING samsnet_search.test_live: slice estimate: 1\nstudy v " in out.getvalue()
