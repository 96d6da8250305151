"""Which code produced a result: the package version and the git commit of the checkout.

Checkpoints record `code_version()`; the study's MLflow parent run records `git_commit()`.
Both come from here so a checkpoint and its run name the same commit.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from . import __version__


def git_commit(path: Path | str | None = None) -> str | None:
    """The commit of the checkout this code runs from (None outside git), `+dirty` if modified."""
    cwd = Path(path or Path(__file__).parent)
    try:
        head = _git(cwd, "rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = _git(cwd, "status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def code_version() -> str:
    """`0.1.0+<short commit>[.dirty]` from a checkout, `0.1.0` from an installed package."""
    commit = git_commit()
    if not commit:
        return __version__
    sha, _, dirty = commit.partition("+")
    return f"{__version__}+{sha[:7]}" + (".dirty" if dirty else "")


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
