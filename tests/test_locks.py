"""files.exclusive: one holder at a time across processes, and no lock file left behind."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from samsnet_search.files import exclusive


def _hold(path: str, log: str, tag: str) -> None:
    with exclusive(Path(path)):
        with open(log, "a") as f:
            f.write(f"{tag}+\n")
        time.sleep(0.2)  # inside the lock: another holder would interleave its lines here
        with open(log, "a") as f:
            f.write(f"{tag}-\n")


def test_holders_take_turns_and_the_lock_file_is_removed(tmp_path):
    lock, log = tmp_path / "job.lock", tmp_path / "log"
    procs = [mp.get_context("spawn").Process(target=_hold, args=(str(lock), str(log), t)) for t in "abcd"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = log.read_text().split()
    assert len(lines) == 8
    assert all(lines[i][0] == lines[i + 1][0] and lines[i].endswith("+") for i in range(0, 8, 2)), lines
    assert not lock.exists()
