"""One exclusive lock between processes of a host: `with exclusive(path):`.

An flock on `path`, removed when released, so that lock files do not pile up. Removing a lock
file is safe only with a check: a process that waited on the old file could otherwise hold a lock
on an unlinked file while a third one locks the new file. After taking the flock the holder
checks that `path` still names the file it locked, and tries again when it does not.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
