"""A full storage disk mid-study is an outage, not a crash: the real CLI, real Ray and MLflow.

The study's storage is a 4 MiB tmpfs. Once the first trial completed, the tmpfs is filled until
ENOSPC; the trials (and the driver) meet the full disk, then the filler is deleted within
`search.infra_retry_s`. The study finishes (or, if it ended, `resume` finishes it without hand
work): no traceback, every trial completed (an error tag, if any, says `infrastructure:`), every
epoch logged once. Tracking stays on the local disk, outside the tmpfs.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from samsnet_search.search import identity
from samsnet_search.services import tracking

pytestmark = pytest.mark.slow

NAME = "full"
EPOCHS = 3
BOUND_S = 300  # the whole study, both drivers together
ERROR_TAG = "samsnet.error"  # set by tracking on a failed trial


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs at tmp_path/runs (root only: skipped where mount is not permitted)."""
    where = tmp_path / "runs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def write_study(tmp_path: Path, data_root: Path, storage: Path, retry_s: float) -> Path:
    study = {
        "name": NAME,
        "model": {"n_fft": 256, "hop_length": 128, "slices": 1, "heads": 1, "channels": {"choice": [2, 3]}, "depth": 1},
        "data": {"root": str(data_root), "segment_seconds": 0.5, "samples_per_track": 1, "valid_seconds": 1.0},
        "train": {"lr": 3e-3, "batch_size": 2, "epochs": EPOCHS, "patience": EPOCHS, "valid_sdr_every": 0},
        "search": {
            "num_samples": 3,
            "seed": 0,
            "scheduler": "fifo",
            "max_concurrent_trials": 1,
            "infra_retry_s": retry_s,
        },
        "selection": {"enabled": False},
        "resources": {"cpu": 1},
        "storage": str(storage),
        "tracking": {"uri": str(tmp_path / "mlruns"), "system_metrics": False},
    }
    study["train"]["device"] = "cpu"
    path = tmp_path / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


class Driver:
    """`samsnet-search ARGS` in a subprocess of its own session, its output in a file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "samsnet_search.cli", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def wait(self, deadline: float) -> int:
        try:
            return self.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the driver ran past {BOUND_S} s:\n{self.text()[-4000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def wait_until(check, driver: Driver, what: str, deadline: float):
    while time.monotonic() < deadline and driver.proc.poll() is None:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"never saw {what}; driver rc={driver.proc.poll()}:\n{driver.text()[-4000:]}")


def fill(where: Path) -> Path:
    """Write into `where` until the disk is full; returns the filler file."""
    filler = where / "filler"
    block = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    with open(filler, "ab", buffering=0) as f:  # the last partial block: not one byte left
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def child_runs(target, storage: Path) -> list:
    m = identity.read_manifest(identity.study_uri(str(storage), NAME))
    return [] if m is None else tracking.find_child_runs(target, m.experiment_id, m.parent_run_id)


def second_trial_trained(target, storage: Path) -> bool:
    runs = child_runs(target, storage)
    done = [r for r in runs if r.data.tags.get(tracking.STATUS_TAG) == "completed"]
    client = tracking.client(target)
    return bool(done) and any(
        client.get_metric_history(r.info.run_id, "train_loss")
        for r in runs
        if r.data.tags.get(tracking.STATUS_TAG) == "running"
    )


def driver_lines(out: str) -> str:
    """The driver's own output. A trial worker's lines are left out: Ray's SIGTERM to a finished
    trial's idle worker at times prints an "Exception ignored ... SystemExit" traceback there,
    with or without a full disk (the trials' outcome is checked in MLflow instead)."""
    return "\n".join(line for line in out.splitlines() if "train_trial pid=" not in line)


def trial_met_full_disk(out: str) -> bool:
    """A trial worker's line (Ray prefixes them `(train_trial pid=...)`) about the full disk."""
    return any("train_trial pid=" in line and "No space left on device" in line for line in out.splitlines())


@pytest.mark.parametrize(
    "retry_s, freed",
    [
        (20, "within the retry window"),
        (4, "after the driver ended"),
    ],
    ids=["freed-in-time", "freed-after-the-study-ended"],
)
def test_a_full_storage_disk_is_waited_out(tmp_path, synth_root, small_disk, retry_s, freed):
    storage = small_disk
    study_file = write_study(tmp_path, synth_root, storage, retry_s)
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    deadline = time.monotonic() + BOUND_S
    run = Driver(["run", str(study_file), "--no-live", "--num-cpus", "2"], tmp_path, env, tmp_path / "run.log")
    filler = None
    try:
        # a trial completed and the next one trained an epoch: the full disk meets a checkpoint upload
        wait_until(lambda: second_trial_trained(target, storage), run, "a second trial's epoch", deadline)
        filler = fill(storage)
        # Full until a trial's write met it (a worker's retry line), then freed within the retry
        # window, or only once the driver gave up and ended.
        wait_until(lambda: trial_met_full_disk(run.text()), run, "a trial meeting the full disk", deadline)
        if freed == "after the driver ended":
            run.wait(deadline)
        else:
            time.sleep(3)  # a few failed writes, well within infra_retry_s (20 s)
        filler.unlink()
        filler = None
        rc = run.wait(deadline)
    finally:
        if filler is not None:
            filler.unlink(missing_ok=True)
        run.kill()
    outputs = [run.text()]
    if rc != 0:  # the study ended: a plain resume finishes it
        resume = Driver(
            ["resume", NAME, "--storage", str(storage), "--no-live", "--num-cpus", "2"],
            tmp_path,
            env,
            tmp_path / "resume.log",
        )
        try:
            rc = resume.wait(deadline)
        finally:
            resume.kill()
        outputs.append(resume.text())
    out = "\n".join(outputs)
    assert rc == 0, out[-6000:]
    assert "Traceback" not in driver_lines(out) and "EOFError" not in out, out[-6000:]
    runs = child_runs(target, storage)
    tags = {r.data.tags[tracking.TRIAL_TAG]: r.data.tags for r in runs}
    assert len(tags) == 3, tags.keys()
    assert [t.get(tracking.STATUS_TAG) for t in tags.values()] == ["completed"] * 3, tags
    errors = [t[ERROR_TAG] for t in tags.values() if ERROR_TAG in t]
    assert all(e.startswith("infrastructure:") for e in errors), errors
    client = tracking.client(target)
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (r.data.tags.get(tracking.TRIAL_TAG), steps)
    assert identity.read_manifest(identity.study_uri(str(storage), NAME)).state == "finished"
