"""One driver per study: a lease object in the study folder (`<storage>/<name>/driver.lease`).

The lease names its holder (host, pid, process start time) and carries a heartbeat that a
background thread refreshes every `heartbeat_s`. A second `run`/`resume` of the study finds a
live lease and stops with `StudyLocked`, naming the holder. A lease is stale, and taken over
with a warning, when its heartbeat is older than `timeout_s`, or at once when its holder is a
process of this host that no longer runs (a killed driver).

Taking a lease is safe against a second driver starting at the same moment:
- local folders: look and take happen under an flock held by one process of this host at a time;
- S3 (no create-if-absent in pyarrow): write, wait `settle_s`, read back; of two drivers
  writing at once the last write wins and the other sees a foreign token and stops.
Staleness compares the holder's wall clock with ours: drivers of one study need clocks
within a few seconds of each other (NTP), far below the timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from ..errors import SamsNetError
from ..files import exclusive
from ..services import stop, storage
from ..services.storage import display_uri, is_s3

log = logging.getLogger(__name__)

LEASE_FILE = "driver.lease"
HEARTBEAT_S = float(os.environ.get("SAMSNET_LEASE_HEARTBEAT_S", "10"))
TIMEOUT_S = float(os.environ.get("SAMSNET_LEASE_TIMEOUT_S", "60"))
SETTLE_S = 1.0  # S3: time for a concurrent writer's PUT to land before reading back


class StudyLocked(SamsNetError):
    """Another driver holds the study's lease."""


def _lost(study_path: str, current: "Holder | None") -> str:
    who = current.describe() if current else "nobody"
    return f"the lease of {display_uri(study_path)} is now held by {who}"


@dataclass
class Holder:
    host: str
    pid: int
    started: float  # the process's start time: tells a reused pid from the holder
    token: str
    heartbeat: float  # wall clock of the last refresh
    acquired: float

    @classmethod
    def me(cls) -> "Holder":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), _start_time(os.getpid()) or 0.0, uuid.uuid4().hex, now, now)

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.heartbeat
        return f"host {self.host}, pid {self.pid}, last heartbeat {max(age, 0):.0f} s ago"

    def stale_reason(self, timeout_s: float, now: float | None = None) -> str | None:
        """Why this lease may be taken over, or None while its holder looks alive."""
        age = (now or time.time()) - self.heartbeat
        if age > timeout_s:
            return f"no heartbeat for {age:.0f} s (timeout {timeout_s:g} s)"
        if self.host == socket.gethostname():
            started = _start_time(self.pid)
            if started is None or (self.started and abs(started - self.started) > 1.0):
                return f"its process {self.pid} no longer runs on this host"
        return None


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def lease_uri(study_path: str) -> str:
    return storage.join(study_path, LEASE_FILE)


def read_holder(study_path: str) -> Holder | None:
    """The current lease of a study, or None. An unreadable lease counts as absent (and is overwritten)."""
    text = storage.read_text(lease_uri(study_path))
    if text is None:
        return None
    try:
        return Holder(**json.loads(text))
    except (TypeError, ValueError):
        log.warning("%s: not a lease; replacing it", display_uri(lease_uri(study_path)))
        return None


class Lease:
    """A held lease; `release()` (or leaving the `hold` block) gives it up."""

    def __init__(self, study_path: str, holder: Holder, heartbeat_s: float) -> None:
        self.study_path = study_path
        self.holder = holder
        self.heartbeat_s = heartbeat_s
        self.lost: str | None = None  # set when another driver took the lease over
        self._confirmed = time.monotonic()  # when the lease was last seen to be ours
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), daemon=True, name=f"lease-{Path(study_path).name}"
        )
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not self._still_mine():
                    log.error("%s; this driver stops without writing anything more", self.lost)
                    stop.fence_lost(self.lost)  # the main thread stops where it is
                    return
                self.holder.heartbeat = time.time()
                _write(self.study_path, self.holder)
            except Exception as e:  # a storage hiccup: the next beat tries again
                log.warning("lease heartbeat of %s failed: %s", display_uri(self.study_path), e)

    def _still_mine(self) -> bool:
        current = read_holder(self.study_path)
        if current is None or current.token != self.holder.token:
            self.lost = self.lost or _lost(self.study_path, current)
            return False
        self._confirmed = time.monotonic()
        return True

    def assert_owner(self) -> None:
        """Raise `stop.Fenced` unless this driver still holds the lease: the fence before a write.

        A lease confirmed within two heartbeats is trusted; an older one (the driver was paused,
        or its heartbeats failed) is read back first, so a driver resumed after SIGSTOP finds out
        that it was taken over before it writes, not at its next heartbeat."""
        if self.lost is None and time.monotonic() - self._confirmed < 2 * self.heartbeat_s:
            return
        if self.lost is not None or not self._still_mine():
            raise stop.Fenced(self.lost)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            current = read_holder(self.study_path)
            if current is not None and current.token == self.holder.token:
                storage.delete_file(lease_uri(self.study_path))
            if not is_s3(self.study_path):
                with contextlib.suppress(OSError):  # only an empty folder: a study that never started
                    os.rmdir(self.study_path)
        except Exception as e:  # the lease then goes stale and is taken over later
            log.warning("could not remove the lease of %s: %s", display_uri(self.study_path), e)


def _write(study_path: str, holder: Holder) -> None:
    storage.write_text(lease_uri(study_path), json.dumps(asdict(holder)))


class LockFolderUnsafe(SamsNetError):
    """The per-user folder of lease lock files is not this user's private folder."""


def _lock_dir() -> Path:
    """A 0700 folder of this user's lock files: in the shared temp folder another user could
    otherwise plant or hold a study's lock file."""
    folder = Path(tempfile.gettempdir()) / f"samsnet-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) != 0o700:
        raise LockFolderUnsafe(
            f"{folder}: the lease lock folder must be a directory owned by uid {os.getuid()} with mode 0700, "
            f"is uid {info.st_uid} mode {stat.S_IMODE(info.st_mode):o}; remove it and try again"
        )
    return folder


def _local_mutex(study_path: str):
    """Serialize look-and-take of one local study's lease among this host's processes.

    The lock file lives in a per-user folder, keyed by the study's path, so the study folder of a
    study that never started stays empty (and is removed); `files.exclusive` removes it when done."""
    key = hashlib.sha256(str(Path(study_path).resolve()).encode()).hexdigest()[:24]
    return exclusive(_lock_dir() / f"samsnet-lease-{key}.lock")


def acquire(
    study_path: str,
    name: str,
    *,
    timeout_s: float = TIMEOUT_S,
    heartbeat_s: float = HEARTBEAT_S,
    settle_s: float = SETTLE_S,
) -> Lease:
    """Take the study's lease, or raise StudyLocked naming the driver that holds it."""
    me = Holder.me()
    if not is_s3(study_path):
        with _local_mutex(study_path):
            _check_free(name, study_path, read_holder(study_path), timeout_s)
            Path(study_path).mkdir(parents=True, exist_ok=True)
            _write(study_path, me)
        return Lease(study_path, me, heartbeat_s)
    for _ in range(3):  # a lost S3 race is looked at again
        _check_free(name, study_path, read_holder(study_path), timeout_s)
        _write(study_path, me)
        time.sleep(settle_s)
        back = read_holder(study_path)
        if back is not None and back.token == me.token:
            return Lease(study_path, me, heartbeat_s)
        if back is not None and back.stale_reason(timeout_s) is None:
            raise _locked(name, study_path, back, timeout_s)
    current = read_holder(study_path)
    raise (
        _locked(name, study_path, current, timeout_s)
        if current
        else StudyLocked(f"study {name}: could not take the lease {display_uri(lease_uri(study_path))}; try again")
    )


def _check_free(name: str, study_path: str, current: Holder | None, timeout_s: float) -> None:
    """Raise StudyLocked if a live driver holds the lease; say so when a stale one is taken over."""
    if current is None:
        return
    reason = current.stale_reason(timeout_s)
    if reason is None:
        raise _locked(name, study_path, current, timeout_s)
    log.warning(
        "study %s: taking over the lease of the driver on %s pid %d: %s", name, current.host, current.pid, reason
    )


def _locked(name: str, study_path: str, holder: Holder, timeout_s: float) -> StudyLocked:
    return StudyLocked(
        f"study {name} is in use by another driver ({holder.describe()}; lease "
        f"{display_uri(lease_uri(study_path))}): wait for it to end or stop it; a lease whose "
        f"heartbeat is older than {timeout_s:g} s (SAMSNET_LEASE_TIMEOUT_S) is taken over"
    )


def driver_gone(study_path: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """Why no driver runs the study any more (no lease, or a stale one), or None while one does:
    a study whose manifest says `running` without one was left by a driver that died."""
    try:
        holder = read_holder(study_path)
    except Exception as e:  # unreadable storage: do not guess
        log.debug("could not read the lease of %s: %s", display_uri(study_path), e)
        return None
    if holder is None:
        return "no driver holds its lease"
    reason = holder.stale_reason(timeout_s)
    return None if reason is None else f"its driver (host {holder.host}, pid {holder.pid}) is gone: {reason}"


def assert_token(study_path: str, token: str) -> None:
    """In a trial or selection worker: raise `stop.Fenced` unless the driver that started it
    (`token`) still holds the study's lease (after a takeover its work is the new driver's)."""
    if not token:
        return
    try:
        current = read_holder(study_path)
    except Exception as e:  # the storage is away: the next epoch checks again
        log.warning("could not read the lease of %s: %s", display_uri(study_path), e)
        return
    if current is None or current.token != token:
        raise stop.Fenced(_lost(study_path, current))


def assert_writer(study_path: str) -> None:
    """Before this process writes a study's files: raise `stop.Fenced` if it held the study's
    lease and lost it (a process that holds no lease of the study, e.g. `report`, is not fenced)."""
    with _held_lock:
        entry = _held.get(study_path)
    if entry is not None:
        entry[0].assert_owner()


def held_token(study_path: str) -> str:
    """The token of this process's lease of the study ("" when it holds none): workers check it."""
    with _held_lock:
        entry = _held.get(study_path)
    return entry[0].holder.token if entry is not None else ""


# This process's leases: run_study and the CLI (search, then selection) both hold one, and the
# inner `hold` reuses the outer lease instead of finding itself as the holder.
_held: dict[str, list] = {}
_held_lock = threading.Lock()


class hold:
    """`with hold(study_path, name):` the study's lease for the block (re-entrant in one process)."""

    def __init__(self, study_path: str, name: str) -> None:
        self.study_path, self.name = study_path, name

    def __enter__(self) -> Lease:
        with _held_lock:
            entry = _held.get(self.study_path)
            if entry is not None:
                entry[1] += 1
                return entry[0]
        lease = acquire(self.study_path, self.name)
        self._fence = stop.fence(lease.assert_owner)
        self._fence.__enter__()  # every stop.check() of the driver is a fence
        with _held_lock:
            _held[self.study_path] = [lease, 1]
        return lease

    def __exit__(self, *exc) -> None:
        with _held_lock:
            entry = _held[self.study_path]
            entry[1] -= 1
            if entry[1]:
                return
            del _held[self.study_path]
        self._fence.__exit__(None, None, None)
        entry[0].release()
