"""Stop signals as users and schedulers send them, and a driver that lost its study: the real CLI
in a pseudo-terminal.

Ctrl-C (SIGINT to the process group, as a terminal sends it), SIGTERM (to the driver, as Kubernetes,
Slurm and spot reclaims do) and SIGHUP (a closed terminal) at every phase of a study end it as
`interrupted`, exit code 128 + the signal, with the `samsnet-search resume NAME` hint, nothing
registered and no MLflow run left RUNNING. Meanwhile a second `run` of the same study is refused by
the lease. Each selection phase is hit deliberately: `SAMSNET_PAUSE_AT` makes the driver wait
there for the signal. The last `resume` finishes the study: every trial completed once, every
selection job stored once, one registered version. A driver paused until another one took its
lease over stops when it is continued, without writing (fencing).
"""

from __future__ import annotations

import json
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
from samsnet_search.search import identity, lease
from samsnet_search.search.select import PHASE_TAG
from samsnet_search.services import stop, tracking

pytestmark = pytest.mark.slow

NAME = "intr"


class Terminal:
    """`samsnet-search ARGS` with a pty as its terminal, in its own process group."""

    def __init__(self, args: list[str], cwd: Path, pause_at: str = "") -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", stop.PAUSE_ENV: pause_at}
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

    def send(self, sig: int) -> None:
        if sig == signal.SIGINT:
            self.ctrl_c()
        else:  # what a scheduler does: the driver process
            os.kill(self.proc.pid, sig)

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


def versions(target) -> list:
    return tracking.client(target).search_model_versions(f"name = '{tracking.registered_model_name(NAME)}'")


def assert_interrupted(term: Terminal, rc: int, sig: int, target, storage: str) -> None:
    out = term.text()
    assert rc == 128 + sig, out[-3000:]
    assert f"samsnet-search resume {NAME}" in out and signal.Signals(sig).name in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    manifest = identity.read_manifest(identity.study_uri(storage, NAME))
    assert manifest.state == "interrupted"
    parent = tracking.client(target).get_run(manifest.parent_run_id)
    assert parent.data.tags["samsnet.state"] == "interrupted" and parent.info.status == "KILLED"
    assert not [r.info.run_id for r in child_runs(target, storage) if r.info.status == "RUNNING"]
    assert not registered(target)


# Selection phases, each stopped by another signal; the resume after each goes on from there.
PHASES = [
    ("selection.job_done", signal.SIGINT),  # retraining: one job stored, the next one running
    ("selection.test", signal.SIGHUP),  # the winner's test scoring
    ("selection.export", signal.SIGINT),  # its export
    ("selection.register", signal.SIGTERM),  # its registration
]


def test_stop_signals_at_every_phase_end_the_study_as_interrupted(tmp_path, synth_root, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))  # the drivers' signing key
    study_file = write_study(tmp_path, synth_root)
    storage = str(tmp_path / "runs")
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    run_args = ["run", str(study_file), "--no-live", "--num-cpus", "2"]
    resume_args = ["resume", NAME, "--storage", storage, "--no-live", "--num-cpus", "2"]

    # 1. SIGTERM during the search, once the first trial finished (2 never started)
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
        term.send(signal.SIGTERM)
        rc = term.wait()
    finally:
        term.kill()
    assert_interrupted(term, rc, signal.SIGTERM, target, storage)
    assert not any(PHASE_TAG in r.data.tags for r in child_runs(target, storage))  # no selection started
    searched = {r.data.tags[tracking.TRIAL_TAG] for r in child_runs(target, storage)}
    assert len(searched) < 3

    # 2. resume: the search goes on to 3 trials, then the selection, stopped at each phase in turn
    for phase, sig in PHASES:
        term = Terminal(resume_args, tmp_path, pause_at=phase)
        try:
            wait_until(lambda t=term, p=phase: f"paused at {p}" in t.text(), term, f"the pause at {phase}")
            term.send(sig)
            rc = term.wait()
        finally:
            term.kill()
        assert_interrupted(term, rc, sig, target, storage)
        if phase == "selection.job_done":
            trials = {
                r.data.tags[tracking.TRIAL_TAG]: r.data.tags.get(tracking.STATUS_TAG)
                for r in child_runs(target, storage)
                if PHASE_TAG not in r.data.tags
            }
            assert len(trials) == 3 and searched <= set(trials)
            assert set(trials.values()) == {"completed"}, trials  # the trial SIGTERM stopped continued

    # 3. the last resume finishes: each job stored once, one registered version
    term = Terminal(resume_args, tmp_path)
    try:
        rc = term.wait()
    finally:
        term.kill()
    assert rc == 0, term.text()[-3000:]
    assert identity.read_manifest(identity.study_uri(storage, NAME)).state == "finished"
    assert len(versions(target)) == 1
    selection = json.loads((Path(storage) / NAME / "selection" / "selection.json").read_text())
    jobs = sorted(p.stem for p in (Path(storage) / NAME / "selection" / "jobs").glob("slices_*_seed_?.json"))
    assert sorted(r["key"] for r in selection["jobs"]) == jobs and len(jobs) == 3
    finished = [r for r in child_runs(target, storage) if PHASE_TAG in r.data.tags and r.info.status == "FINISHED"]
    assert len(finished) == 3  # each job trained to the end once (the interrupted one ended KILLED)


def lease_age(storage: str) -> float:
    """Seconds since the study lease's last heartbeat (inf when there is none)."""
    holder = lease.read_holder(identity.study_uri(storage, NAME))
    return float("inf") if holder is None else time.time() - holder.heartbeat


def test_a_paused_driver_that_lost_its_lease_stops_without_writing(tmp_path, synth_root, monkeypatch):
    """Driver A is paused (SIGSTOP) mid-search, driver B takes the stale lease over and resumes, A is
    continued (SIGCONT): A stops at once, writing nothing; B finishes the study alone."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("SAMSNET_LEASE_HEARTBEAT_S", "1")
    monkeypatch.setenv("SAMSNET_LEASE_TIMEOUT_S", "4")
    study_file = write_study(tmp_path, synth_root)
    storage = str(tmp_path / "runs")
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    a = Terminal(["run", str(study_file), "--no-live", "--num-cpus", "2"], tmp_path)
    b = None
    try:
        wait_until(
            lambda: any(r.data.tags.get(tracking.STATUS_TAG) == "completed" for r in child_runs(target, storage)),
            a,
            "a completed trial",
        )
        os.kill(a.proc.pid, signal.SIGSTOP)  # its Ray workers go on training meanwhile
        wait_until(lambda: lease_age(storage) > 5, a, "a stale lease")
        b = Terminal(["resume", NAME, "--storage", storage, "--no-live", "--num-cpus", "2"], tmp_path)
        wait_until(lambda: "taking over the lease" in b.text(), b, "B taking the lease over")
        os.kill(a.proc.pid, signal.SIGCONT)
        rc_a = a.wait(120)
        rc_b = b.wait(300)
    finally:
        if a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)
        a.kill()
        if b is not None:
            b.kill()
    assert rc_a == 2 and "stopped without writing" in a.text(), a.text()[-3000:]
    assert rc_b == 0, b.text()[-3000:]
    study = Path(storage) / NAME
    assert len(list(study.glob("trial_*"))) == 3  # one set of trials: none trained twice
    runs = child_runs(target, storage)
    client = tracking.client(target)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert len(steps) == len(set(steps)), (run.data.tags.get(tracking.TRIAL_TAG), steps)  # each epoch once
    trials = [r for r in runs if PHASE_TAG not in r.data.tags]
    assert sorted(r.data.tags.get(tracking.STATUS_TAG) for r in trials) == ["completed"] * 3
    assert len(versions(target)) == 1
    selection = json.loads((study / "selection" / "selection.json").read_text())
    jobs = sorted(p.stem for p in (study / "selection" / "jobs").glob("slices_*_seed_?.json"))
    assert sorted(r["key"] for r in selection["jobs"]) == jobs and len(jobs) == 3
    assert identity.read_manifest(str(study)).state == "finished"
