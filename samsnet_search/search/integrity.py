"""Ray Tune's state files are signed by the driver and checked before a study is restored.

Tune unpickles files of the study folder on restore (Ray 2.60): `tuner.pkl`,
`experiment_state-*.json` (trials embed cloudpickle), `searcher-state-*.pkl`,
`search_gen_state-*.json`, `basic-variant-state-*.json`, `callback-states-*.pkl` (all
cloudpickle) and each trial's `error.pkl`. Whoever can write the study folder (an S3 bucket,
a shared disk) could otherwise run code in the next driver that resumes it.

The driver signs each such file with an HMAC-SHA256 whose key never leaves this machine (a
0600 file in the user's config folder) and keeps the signatures beside the key, not in the
study folder: Tune uploads its state files in the background, and a driver killed mid-upload
must still find every uploaded file signed. Signing happens where Tune writes: `StateSigner`
is a Tune callback, and Tune asks callbacks for their state right after it has written its
own files to the driver's local staging folder and before it uploads them. A few recent
signatures per file are kept, so that a partial upload (an older file next to a newer one)
verifies; an attacker can at most put back an older state this driver wrote.

Moving a study to another machine is explicit (`resume NAME --trust`, docs/security.md): there
the study has no signatures, and its current files are signed with that machine's key only
after the user says they trust them. A failed write (a full disk) leaves empty or unparseable
state files; those cannot run code (an empty file has no opcodes, Tune parses a JSON file before
it unpickles what it embeds), so they are set aside instead of refused.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from pathlib import Path

import pyarrow.fs as pafs
from ray.tune import Callback

from ..errors import SamsNetError, one_line
from ..files import write_atomic
from ..services import storage
from ..services.storage import display_uri
from . import identity, tune_internals

log = logging.getLogger(__name__)

# Files of the study folder that Tune unpickles on restore; trial folders: TRIAL_FILES.
STATE_FILES = tune_internals.STATE_FILES
TRIAL_FILES = tune_internals.TRIAL_STATE_FILES
KEEP = 8  # signatures kept per file: recent versions that a partial upload can leave behind
KEY_ENV = "SAMSNET_STATE_KEY_FILE"


class StateTampered(SamsNetError):
    """A Ray state file of a study is not one this machine's driver wrote."""


class StateForeign(StateTampered):
    """The study's state was signed on another machine (or by another key): `--trust` moves it here."""


def _home() -> Path:
    return identity.user_config_path().parent


def key_path() -> Path:
    return Path(os.environ.get(KEY_ENV) or _home() / "state-hmac.key")


def _key(create: bool = True) -> bytes | None:
    """The signing key: created on first use (0600, folder 0700) when `create`, else None when
    absent (a verify never creates one); refused if others may read it."""
    path = key_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise StateTampered(f"{path}: the study state key must be readable by its owner only (chmod 600), is {mode:o}")
    return bytes.fromhex(path.read_text().strip())


def _key_id(key: bytes) -> str:
    # Names the key in the signature store without revealing it: tells "another key" from "changed".
    return hashlib.sha256(b"samsnet-key-id\0" + key).hexdigest()[:16]


def _signatures_path(study_path: str) -> Path:
    name = hashlib.sha256(display_uri(study_path).encode()).hexdigest()[:24]
    return _home() / "signatures" / f"{name}.json"


def _load(study_path: str) -> dict:
    path = _signatures_path(study_path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"study": display_uri(study_path), "files": {}}
    except ValueError as e:
        raise StateTampered(f"{path}: unreadable signature store: {e}") from None


def _save(study_path: str, data: dict) -> None:
    path = _signatures_path(study_path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps(data, indent=1).encode())


def _mac(key: bytes, relpath: str, content: bytes) -> str:
    # The name is signed too: a signed file cannot stand in for another one.
    return hmac.new(key, relpath.encode() + b"\0" + content, hashlib.sha256).hexdigest()


def is_state_file(relpath: str) -> bool:
    parts = relpath.split("/")
    if len(parts) == 1:
        return any(fnmatch.fnmatch(parts[0], p) for p in STATE_FILES)
    return len(parts) == 2 and parts[0].startswith("trial_") and parts[1] in TRIAL_FILES


def sign(study_path: str, files: dict[str, bytes]) -> None:
    """Record signatures of `files` (path relative to the study folder -> content)."""
    if not files:
        return
    key = _key()
    data = _load(study_path)
    if data.get("key_id", _key_id(key)) != _key_id(key):
        data["files"] = {}  # signatures of a key this machine no longer has mean nothing
    data["key_id"] = _key_id(key)
    for relpath, content in files.items():
        macs = data["files"].setdefault(relpath, [])
        mac = _mac(key, relpath, content)
        if mac in macs:
            macs.remove(mac)
        macs.append(mac)
        del macs[:-KEEP]
    _save(study_path, data)


def sign_local_folder(study_path: str, folder: str | Path) -> None:
    """Sign the state files in a local copy of the study folder (Tune's driver staging folder)."""
    root = Path(folder)
    files = {}
    for path in [*root.iterdir(), *root.glob("trial_*/*")] if root.is_dir() else []:
        relpath = path.relative_to(root).as_posix()
        if path.is_file() and is_state_file(relpath):
            files[relpath] = path.read_bytes()
    sign(study_path, files)


def sign_stored(study_path: str, relpaths: list[str]) -> None:
    """Sign files as they are in the storage, right after this driver wrote them (tuner.pkl)."""
    sign(study_path, {relpath: _read_stored(study_path, relpath) for relpath in relpaths})


def _read_stored(study_path: str, relpath: str) -> bytes:
    data = storage.read_bytes(storage.join(study_path, relpath))
    if data is None:
        raise FileNotFoundError(f"{display_uri(study_path)}: {relpath} is missing")
    return data


def stored_state_files(study_path: str) -> list[str]:
    """The state files in the storage's study folder (relative paths)."""
    fs, root = storage.filesystem(study_path)
    out = []
    for entry in storage.list_dir(fs, root):
        if entry.type == pafs.FileType.File and is_state_file(entry.base_name):
            out.append(entry.base_name)
        elif entry.type == pafs.FileType.Directory and entry.base_name.startswith("trial_"):
            for name in TRIAL_FILES:
                if fs.get_file_info(f"{entry.path}/{name}").type == pafs.FileType.File:
                    out.append(f"{entry.base_name}/{name}")
    return sorted(out)


def is_signed(study_path: str, relpath: str, content: bytes) -> bool:
    """Whether `content` is a version of `relpath` this machine's driver signed."""
    key = _key(create=False)
    data = _load(study_path)
    if key is None or data.get("key_id", _key_id(key)) != _key_id(key):
        return False
    mac = _mac(key, relpath, content)
    return any(hmac.compare_digest(mac, k) for k in data["files"].get(relpath, []))


def verify(study_path: str) -> int:
    """Raise StateTampered unless every state file in the study folder carries a signature of
    this machine's driver (StateForeign when the study was signed elsewhere); returns the number
    of files checked."""
    relpaths = stored_state_files(study_path)
    if not relpaths:
        return 0
    data = _load(study_path)
    key = _key(create=False)
    if key is None or not data["files"] or data.get("key_id", _key_id(key)) != _key_id(key):
        raise _foreign(study_path, "has no signing key" if key is None else None, data)
    for relpath in relpaths:
        mac = _mac(key, relpath, _read_stored(study_path, relpath))
        known = data["files"].get(relpath)
        if known is None or not any(hmac.compare_digest(mac, k) for k in known):
            raise _tampered(study_path, relpath, known is None)
    log.info("study state: %d Ray files verified", len(relpaths))
    return len(relpaths)


def _study_name(study_path: str) -> str:
    return study_path.rstrip("/").rsplit("/", 1)[-1]


def _foreign(study_path: str, why: str | None, data: dict) -> StateForeign:
    why = why or ("has no signatures of this study" if not data["files"] else f"has another key ({key_path()})")
    return StateForeign(
        f"{display_uri(study_path)}: this machine {why}: the study was run on another machine (or its signatures "
        f"were removed), and its Ray state is unpickled on resume, so it is not resumed. If you trust the study's "
        f"files, sign them with this machine's key: samsnet-search resume {_study_name(study_path)} --trust "
        "(docs/security.md: moving a study between machines)"
    )


def _tampered(study_path: str, relpath: str, unknown: bool) -> StateTampered:
    why = "was not written by a driver of this machine" if unknown else "changed since this machine's driver wrote it"
    return StateTampered(
        f"{display_uri(f'{study_path.rstrip(chr(47))}/{relpath}')}: Ray state file {why} "
        f"(signatures: {_signatures_path(study_path)}); it is unpickled on resume, so the study is not "
        "resumed. Resume on the machine that ran the study, or restore the file from a trusted copy"
    )


def trust(study_path: str) -> list[str]:
    """Sign the study's current state files with this machine's key (the user vouched for them);
    earlier signatures of the study on this machine are replaced. Returns the files signed."""
    relpaths = stored_state_files(study_path)
    _save(study_path, {"study": display_uri(study_path), "files": {}})
    sign(study_path, {relpath: _read_stored(study_path, relpath) for relpath in relpaths})
    return relpaths


# --- files of a failed write -------------------------------------------------------------

SET_ASIDE = "set-aside"
JSON_STATE = tune_internals.EXPERIMENT_STATE


def is_experiment_state(relpath: str) -> bool:
    return fnmatch.fnmatch(relpath, JSON_STATE)


def is_damaged(relpath: str, content: bytes) -> bool:
    """A state file a failed write left: empty, or an experiment state that is not JSON. Neither
    can run code (Tune parses the JSON before it unpickles anything in it); a non-empty pickle can,
    however short, so it is never called damaged here."""
    if not content:
        return True
    if not is_experiment_state(relpath):  # search_gen_state-*.json etc. are cloudpickle
        return False
    try:
        json.loads(content)
    except ValueError:
        return True
    return False


def set_aside_damaged(study_path: str) -> list[str]:
    """Move damaged state files into `<study>/set-aside/` (Tune then restores from what is intact:
    an older experiment state, a trial's last checkpoint); one log line names them."""
    moved = [r for r in stored_state_files(study_path) if is_damaged(r, _read_stored(study_path, r))]
    set_aside(moved, study_path, "state file(s) left empty or truncated by a failed write")
    return moved


def set_aside_unsigned_errors(study_path: str) -> list[str]:
    """Move the trials' error files this driver did not sign into `<study>/set-aside/`.

    Tune unpickles them in the driver right after the experiment ends (its results name each
    trial's error), before any resume could check them: one cut short by a full disk ends the
    driver with UnpicklingError, one planted by another writer runs its code. Without it Tune
    reads the trial's error.txt instead.
    """
    moved = [
        r
        for r in stored_state_files(study_path)
        if "/" in r and not is_signed(study_path, r, _read_stored(study_path, r))
    ]
    why = "trial error file(s) not as this driver wrote them (cut short by a failed write, or written by someone else; each trial's error.txt still says what failed)"
    set_aside(moved, study_path, why)
    return moved


def set_aside(relpaths: list[str], study_path: str, why: str = "") -> None:
    """Move state files into `<study>/set-aside/` (kept for a person to look at, never restored);
    with `why`, one log line names them."""
    for relpath in relpaths:
        target = storage.join(study_path, f"{SET_ASIDE}/{relpath.replace('/', '.')}")
        storage.move_file(storage.join(study_path, relpath), target)
    if relpaths and why:
        log.warning(
            "study %s: set aside %d %s, into %s: %s",
            _study_name(study_path),
            len(relpaths),
            why,
            display_uri(storage.join(study_path, SET_ASIDE)),
            ", ".join(relpaths),
        )


class StateSigner(Callback):
    """Signs Tune's state files in the driver's staging folder each time Tune saves them, before
    they are uploaded to the study folder. Holds only the study path (it is pickled into tuner.pkl)."""

    def __init__(self, study_path: str) -> None:
        self.study_path = study_path
        self._staging: str | None = None

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._staging is None and trials:
            self._staging = tune_internals.staging_path(trials[0])

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._staging = self._staging or tune_internals.staging_path(trial)

    def on_experiment_end(self, trials, **info) -> None:
        # After Tune's final upload, before it unpickles the trials' errors for its results.
        try:
            set_aside_unsigned_errors(self.study_path)
        except Exception as e:  # the storage is out: the errors stay; resume checks them
            log.warning("study state: trial error files not checked (%s)", one_line(e, typed=True))

    def get_state(self):
        # Called by Tune right after it wrote its state files to the staging folder.
        if self._staging is not None:
            sign_local_folder(self.study_path, self._staging)
        return None  # no callback state: Tune then writes no callback-states file

    def __getstate__(self):
        return {"study_path": self.study_path, "_staging": None}
