"""One driver per study: the lease in the study folder, on local storage and on S3.

(S3: tests/integration/test_search_s3.py.) The other driver is a real second process (a subprocess that takes the lease and waits), so
the holder's host, pid and liveness are real; its death is a SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from samsnet_search.search import lease

HOLDER = """
import sys, time
from samsnet_search.search import lease
held = lease.acquire(sys.argv[1], "study", heartbeat_s=0.2)
print("held", flush=True)
time.sleep(600)
"""


def start_holder(study_path: str, env=None) -> subprocess.Popen:
    """A second driver process holding the lease (its heartbeat every 0.2 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, study_path], stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    line = proc.stdout.readline()
    assert line.strip() == "held", line
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def test_a_live_driver_holds_the_study(tmp_path):
    study_path = str(tmp_path / "runs" / "s")
    other = start_holder(study_path)
    try:
        with pytest.raises(lease.StudyLocked) as e:
            lease.acquire(study_path, "s")
        msg = str(e.value)
        assert f"pid {other.pid}" in msg and socket.gethostname() in msg and "in use by another driver" in msg
        assert lease.read_holder(study_path).pid == other.pid  # untouched by the refused driver
        # the holder's heartbeat moves (bounded wait; the refresh runs every 0.2 s)
        first = lease.read_holder(study_path).heartbeat
        for _ in range(100):
            if lease.read_holder(study_path).heartbeat != first:
                break
            time.sleep(0.05)
        assert lease.read_holder(study_path).heartbeat != first
    finally:
        stop(other)


def test_a_killed_drivers_lease_is_taken_over_with_a_message(tmp_path, caplog):
    study_path = str(tmp_path / "runs" / "s")
    other = start_holder(study_path)
    stop(other)  # SIGKILL: the lease stays, its process is gone
    assert lease.read_holder(study_path).pid == other.pid
    with caplog.at_level(logging.WARNING, logger="samsnet_search.search.lease"):
        held = lease.acquire(study_path, "s")
    try:
        assert lease.read_holder(study_path).pid == os.getpid()
        assert f"pid {other.pid}" in caplog.text and "no longer runs" in caplog.text
    finally:
        held.release()
    assert lease.read_holder(study_path) is None


def write_lease(study_path: str, host: str, age_s: float) -> None:
    Path(study_path).mkdir(parents=True, exist_ok=True)
    now = time.time()
    holder = lease.Holder(host=host, pid=4242, started=1.0, token="t", heartbeat=now - age_s, acquired=now - age_s)
    Path(lease.lease_uri(study_path)).write_text(json.dumps(holder.__dict__))


def test_another_hosts_lease_counts_until_its_heartbeat_times_out(tmp_path, caplog):
    study_path = str(tmp_path / "s")
    write_lease(study_path, "gpu-node-7", age_s=5)
    with pytest.raises(lease.StudyLocked, match="host gpu-node-7, pid 4242"):
        lease.acquire(study_path, "s", timeout_s=60)
    write_lease(study_path, "gpu-node-7", age_s=120)
    with caplog.at_level(logging.WARNING, logger="samsnet_search.search.lease"):
        lease.acquire(study_path, "s", timeout_s=60).release()
    assert "gpu-node-7" in caplog.text and "no heartbeat for 120 s" in caplog.text


def race(study_path: str, n: int = 4, **kw) -> tuple[list, list]:
    """n drivers try to take the lease at the same moment."""
    won, refused = [], []
    start = threading.Barrier(n)

    def one():
        start.wait()
        try:
            won.append(lease.acquire(study_path, "s", **kw))
        except lease.StudyLocked as e:
            refused.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return won, refused


def test_drivers_starting_together_get_one_lease(tmp_path):
    won, refused = race(str(tmp_path / "s"))
    assert len(won) == 1 and len(refused) == 3
    won[0].release()


def test_hold_is_reentrant_and_releases_at_the_outer_end(tmp_path):
    study_path = str(tmp_path / "s")
    with lease.hold(study_path, "s") as outer:
        with lease.hold(study_path, "s") as inner:  # run_study inside the CLI's hold
            assert inner is outer
        assert lease.read_holder(study_path).token == outer.holder.token
    assert lease.read_holder(study_path) is None
    assert not Path(study_path).exists()  # a study that never started leaves no folder


def test_an_unreadable_lease_is_replaced(tmp_path, caplog):
    study_path = tmp_path / "s"
    study_path.mkdir()
    Path(lease.lease_uri(str(study_path))).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="samsnet_search.search.lease"):
        held = lease.acquire(str(study_path), "s")
    assert "not a lease; replacing it" in caplog.text
    assert lease.read_holder(str(study_path)).token == held.holder.token
    held.release()


def lock_files(root: Path) -> list[Path]:
    return sorted(root.rglob("samsnet-lease-*.lock"))


def test_a_released_lease_leaves_no_lock_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    lease.acquire(str(tmp_path / "s"), "s").release()
    assert lock_files(tmp_path / "tmp") == []


def test_the_lock_folder_is_the_users_own(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with lease._local_mutex(str(tmp_path / "s")):
        (held,) = lock_files(tmp_path / "tmp")
        assert held.parent != tmp_path / "tmp"  # a per-user folder, not the shared temp folder
        assert held.parent.stat().st_uid == os.getuid() and stat.S_IMODE(held.parent.stat().st_mode) == 0o700


def test_the_lock_folder_of_someone_else_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = lease._lock_dir()
    folder.chmod(0o777)  # as if another user had made it first
    with pytest.raises(lease.LockFolderUnsafe, match="0700"):
        lease.acquire(str(tmp_path / "s"), "s")


def test_the_local_mutex_excludes_while_lock_files_come_and_go(tmp_path, monkeypatch):
    """Removing the lock file on release must not let a waiter lock a file nobody else sees."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    study_path = str(tmp_path / "s")
    inside, most, lock = [0], [0], threading.Lock()
    start = threading.Barrier(4)

    def worker():
        start.wait()
        for _ in range(40):
            with lease._local_mutex(study_path):
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.001)
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most[0] == 1 and lock_files(tmp_path / "tmp") == []


def running_manifest(storage: Path, name: str) -> None:
    from samsnet_search.search import identity

    m = identity.Manifest(name, str(storage), name, "1", "r", f"samsnet-{name}", "file:x", None, "/", "s.yaml")
    m.state = "running"
    identity.write_manifest(m)


def test_a_running_study_whose_driver_is_gone_lists_as_interrupted(tmp_path, caplog):
    """A driver that died where it could not write study.json (a full disk) left it `running`."""
    from samsnet_search.search import identity

    running_manifest(tmp_path, "dead")
    dead = start_holder(str(tmp_path / "dead"))
    stop(dead)  # SIGKILL: lease and `running` stay behind
    running_manifest(tmp_path, "alive")
    alive = start_holder(str(tmp_path / "alive"))
    try:
        with caplog.at_level(logging.WARNING, logger="samsnet_search.search.identity"):
            states = {m.name: m.state for m in identity.list_studies(str(tmp_path))}
        assert states == {"dead": "interrupted", "alive": "running"}
        (line,) = [r.getMessage() for r in caplog.records if "dead" in r.getMessage()]
        assert "no longer runs" in line and "interrupted" in line
    finally:
        stop(alive)
