"""The last intact copy of Ray Tune's experiment state, for a save that a full disk cut short.

Tune rewrites its state files in place (Ray 2.60). When the study's storage fills up during
that upload, the only `experiment_state-*.json` is left empty or truncated, and the search can
no longer be continued even after the disk is freed: resume finds no experiment state.

So each time Tune saves, the driver first looks at what the previous save left in the storage.
When those files are complete (the experiment state parses) and carry this driver's signatures,
they become the study's last good copy: one file, `last-good-state.json`, written whole (a new
file renamed into place, or one S3 PUT), so a write that fails keeps the older copy. It is
signed like the files it holds. Resume restores it only when no experiment state survived; the
trials then continue from the checkpoints that state names (epochs MLflow has already are not
logged again), so nothing is trained twice beyond the epochs since that save.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging

from ray.tune import Callback

from ..errors import one_line
from ..services import storage
from ..services.storage import display_uri
from . import integrity

log = logging.getLogger(__name__)

NAME = "last-good-state.json"


def keep(study_path: str, last_digest: str | None = None) -> str | None:
    """Make the study's stored state files its last good copy if they are complete and signed.

    Returns the digest of the copy kept (or of the one already kept, `last_digest`, when nothing
    changed); None when the stored files are not a complete signed state (an upload in progress,
    a failed write). A failed write of the copy (a full disk) is logged, never raised: Tune is
    saving its state when this runs.
    """
    files = _complete_state(study_path)
    if files is None:
        return None
    digest = hashlib.sha256(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode())
    if digest.hexdigest() == last_digest:
        return last_digest
    bundle = json.dumps({name: base64.b64encode(data).decode() for name, data in sorted(files.items())}).encode()
    try:
        integrity.sign(study_path, {NAME: bundle})
        storage.write_bytes(storage.join(study_path, NAME), bundle)
    except OSError as e:
        log.warning("study state: could not keep a copy of Ray's state (%s); the previous copy stays", e)
        return last_digest
    return digest.hexdigest()


def _complete_state(study_path: str) -> dict[str, bytes] | None:
    """The stored state files (trials' error files included), if they are a complete state this
    driver signed."""
    names = integrity.stored_state_files(study_path)
    files = {n: storage.read_bytes(storage.join(study_path, n)) for n in names}
    if not any(integrity.is_experiment_state(n) for n in names):
        return None
    for name, data in files.items():
        if data is None or integrity.is_damaged(name, data) or not integrity.is_signed(study_path, name, data):
            return None
    return files


def restore(study_path: str) -> list[str]:
    """Put the last good copy back in place of the study's state files. Those left are set aside
    first: a newer searcher state, or a trial's error file cut short, must not meet an older
    experiment state. Returns the files restored; [] when there is no signed copy."""
    bundle = storage.read_bytes(storage.join(study_path, NAME))
    if bundle is None or not integrity.is_signed(study_path, NAME, bundle):
        return []
    try:
        files = {name: base64.b64decode(data) for name, data in json.loads(bundle).items()}
    except ValueError:
        return []  # a signed copy always parses; this one is not ours
    integrity.set_aside(integrity.stored_state_files(study_path), study_path)
    # The copy is signed as a whole; its files' own signatures may have aged out since.
    integrity.sign(study_path, files)
    for name, data in files.items():
        storage.write_bytes(storage.join(study_path, name), data)
    log.warning(
        "study %s: Ray's experiment state was lost in a failed write; restored its last good copy (%s): "
        "trials continue from the checkpoints it names",
        study_path.rstrip("/").rsplit("/", 1)[-1],
        display_uri(storage.join(study_path, NAME)),
    )
    return sorted(files)


class StateCopier(Callback):
    """Keeps the last good copy each time Tune saves (Tune asks callbacks for their state right
    before it uploads its new files). Holds only the study path (it is pickled into tuner.pkl)."""

    def __init__(self, study_path: str) -> None:
        self.study_path = study_path
        self._digest: str | None = None

    def get_state(self):
        try:
            self._digest = keep(self.study_path, self._digest) or self._digest
        except Exception as e:  # a safety net never fails Tune's save (a storage outage: next save)
            log.warning("study state: no copy of Ray's state this time (%s)", one_line(e, typed=True))
        return None  # no callback state: Tune then writes no callback-states file

    def __getstate__(self):
        return {"study_path": self.study_path, "_digest": None}
