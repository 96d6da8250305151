"""The one way to write a local file whole (`write_atomic`) and the one lock between processes (`exclusive`).

A unique temporary file beside the target (two writers never share one), written and fsynced,
then renamed over the target: a reader, a crash or a full disk never leaves a half-written file,
and a failed write keeps the previous one. Temporary files are created 0600 (mkstemp), so a file
that holds credentials is private from its first byte. S3 objects are written whole by one PUT
(services.storage).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_atomic(path: str | Path, data: bytes) -> Path:
    """`data` into `path` (mode 0600, its folder created), whole or not at all; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- one exclusive lock between processes of a host: `with exclusive(path):` -----------------
# An flock on `path`, removed when released, so that lock files do not pile up. Removing a lock
# file is safe only with a check: a process that waited on the old file could otherwise hold a lock
# on an unlinked file while a third one locks the new file. After taking the flock the holder
# checks that `path` still names the file it locked, and tries again when it does not.


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # still the file at `path`: the lock is ours
        except FileNotFoundError:  # its holder removed it meanwhile
            pass
        os.close(fd)
    try:
        yield
    finally:
        Path(path).unlink(missing_ok=True)  # while still holding it: waiters see the change
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
