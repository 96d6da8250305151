"""Ctrl-C as a user presses it: the real CLI in a pseudo-terminal, SIGINT to its process group.

One Ctrl-C during the search stops the study as `interrupted` (exit 130, no selection, nothing
registered, the message names `samsnet-search resume NAME`); meanwhile a second `run` of the
same study is refused by the lease. `resume` continues the search and starts the selection; a
Ctrl-C there leaves the study `interrupted` too (not `finished`), with nothing registered.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from samsnet_search.cli import main
from samsnet_search.search import identity
from samsnet_search.search.select import PHASE_TAG
from samsnet_search.services import tracking

pytestmark = pytest.mark.slow

NAME = "intr"


class Terminal:
    """`samsnet-search ARGS` with a pty as its terminal, in its own process group."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samsnet_search.cli", *args],
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.out = bytearray()
        self._reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            self.out += chunk
        os.close(fd)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground group

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(10)

    def text(self) -> str:
        return self.out.decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def write_study(tmp_path: Path, data_root: Path) -> Path:
    study = {
        "name": NAME,
        "model": {"n_fft": 256, "hop_length": 128, "slices": 1, "heads": 1, "channels": {"choice": [2, 3]}, "depth": 1},
        "data": {"root": str(data_root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
        "train": {
            "lr": {"loguniform": [1e-3, 1e-2]},
            "batch_size": 2,
            "epochs": 3,
            "patience": 3,
            "valid_sdr_every": 0,
            "device": "cpu",
        },
        "search": {"num_samples": 3, "seed": 0, "scheduler": "fifo", "max_concurrent_trials": 1},
        "selection": {"seeds": 3, "epochs": 1, "bootstrap": 100, "test_backend": "fast", "listen_seconds": 0},
        "resources": {"cpu": 1},
        "storage": str(tmp_path / "runs"),
        "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics": False},
    }
    path = tmp_path / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def wait_until(check, proc: Terminal, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.proc.poll() is None:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"never saw {what}; driver rc={proc.proc.poll()}:\n{proc.text()[-3000:]}")


def child_runs(target, storage: str) -> list:
    m = identity.read_manifest(identity.study_uri(storage, NAME))
    return [] if m is None else tracking.find_child_runs(target, m.experiment_id, m.parent_run_id)


def registered(target) -> bool:
    return any(
        m.name == tracking.registered_model_name(NAME) for m in tracking.client(target).search_registered_models()
    )


def test_ctrl_c_stops_the_study_and_resume_continues_it(tmp_path, synth_root, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))  # the drivers' signing key
    study_file = write_study(tmp_path, synth_root)
    storage = str(tmp_path / "runs")
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    run_args = ["run", str(study_file), "--no-live", "--num-cpus", "2"]

    # 1. Ctrl-C during the search, once the first trial finished (2 never started)
    term = Terminal(run_args, tmp_path)
    try:
        wait_until(
            lambda: any(r.data.tags.get(tracking.STATUS_TAG) == "completed" for r in child_runs(target, storage)),
            term,
            "a completed trial",
        )
        # a second driver of the same study is refused while this one runs, naming it
        assert main(run_args) == 2
        err = capsys.readouterr().err
        assert "in use by another driver" in err and f"pid {term.proc.pid}" in err, err
        term.ctrl_c()
        rc = term.wait()
    finally:
        term.kill()
    out = term.text()
    assert rc == 130, out[-3000:]
    assert f"samsnet-search resume {NAME}" in out and "INTERRUPTED" in out
    manifest = identity.read_manifest(identity.study_uri(storage, NAME))
    assert manifest.state == "interrupted"
    assert tracking.client(target).get_run(manifest.parent_run_id).data.tags["samsnet.state"] == "interrupted"
    assert not any(PHASE_TAG in r.data.tags for r in child_runs(target, storage))  # no selection started
    assert not registered(target)
    searched = {r.data.tags[tracking.TRIAL_TAG] for r in child_runs(target, storage)}
    assert len(searched) < 3

    # 2. resume: the search goes on to 3 trials, then the selection starts; Ctrl-C there
    term = Terminal(["resume", NAME, "--storage", storage, "--no-live", "--num-cpus", "2"], tmp_path)
    try:
        wait_until(lambda: any(PHASE_TAG in r.data.tags for r in child_runs(target, storage)), term, "a selection run")
        term.ctrl_c()
        rc = term.wait()
    finally:
        term.kill()
    assert rc == 130, term.text()[-3000:]
    assert f"samsnet-search resume {NAME}" in term.text()
    manifest = identity.read_manifest(identity.study_uri(storage, NAME))
    assert manifest.state == "interrupted"
    assert tracking.client(target).get_run(manifest.parent_run_id).data.tags["samsnet.state"] == "interrupted"
    trials = {
        r.data.tags[tracking.TRIAL_TAG]: r.data.tags.get(tracking.STATUS_TAG)
        for r in child_runs(target, storage)
        if PHASE_TAG not in r.data.tags
    }
    assert len(trials) == 3 and searched <= set(trials)
    assert set(trials.values()) == {"completed"}, trials  # the trial Ctrl-C stopped continued, not failed
    assert not registered(target)
