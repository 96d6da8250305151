"""The one way to write a local file whole: `write_atomic`.

A unique temporary file beside the target (two writers never share one), written and fsynced,
then renamed over the target: a reader, a crash or a full disk never leaves a half-written file,
and a failed write keeps the previous one. Temporary files are created 0600 (mkstemp), so a file
that holds credentials is private from its first byte. S3 objects are written whole by one PUT
(services.storage).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
