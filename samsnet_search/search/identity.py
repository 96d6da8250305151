"""Study identity: the name maps to the MLflow experiment, `<storage>/<name>` and the
registered model `samsnet-<name>`; `<storage>/<name>/study.json` records the mapping and
the study's state, next to a copy of the study file (`study.yaml`).

Storage is a local folder or an s3:// URI; every read and write goes through
`services.storage`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ..config import read_yaml
from ..errors import ConfigError, DamagedFile, SamsNetError
from ..services import storage as storage_io
from ..services import tracking
from ..services.infra import check_reachable
from ..services.storage import display_uri, is_s3, read_text, write_text
from . import lease

log = logging.getLogger(__name__)

MANIFEST = "study.json"
DEFAULT_STORAGE = "./runs"
STORAGE_ENV = "SAMSNET_STORAGE"
STORAGE_TAG = "samsnet.storage"  # on the parent run: the study folder (display form)
STUDY_COPY = "study.yaml"
STATES = ("created", "running", "interrupted", "finished", "failed")
DAMAGED = "damaged"  # the state `list_studies` gives a study whose manifest cannot be read


class StudyNotFound(SamsNetError):
    """No study with that name (or path) in the storage."""


@dataclass
class Manifest:
    name: str
    storage: str  # storage root as given (absolute when local)
    experiment_name: str
    experiment_id: str
    parent_run_id: str
    registered_model: str
    tracking_uri: str
    artifact_root: str | None
    base_dir: str  # the folder the study was first run from: relative paths in it resolve here
    source: str  # the study file as first given
    state: str = "created"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    summary: dict[str, Any] = field(default_factory=dict)  # trial counts, best trial, timings
    search_finished: bool = False  # its search ended (a resume loads it; only the selection may be left)

    @property
    def path(self) -> str:
        return study_uri(self.storage, self.name)

    @property
    def damaged(self) -> bool:
        """A stand-in `list_studies` makes for a study whose manifest cannot be read."""
        return self.state.startswith(DAMAGED)

    @classmethod
    def stand_in(cls, storage: str, name: str, error: DamagedFile) -> "Manifest":
        """What `ls` shows for a damaged study: its folder name and the one line saying why."""
        return cls(name, storage, "-", "-", "-", "-", "-", None, "-", "-", f"{DAMAGED}: {error}", updated=0.0)


def study_uri(storage: str, name: str) -> str:
    """`<storage>/<name>`: the study's folder (or a file in it)."""
    return storage_io.join(storage, name)


# Ray Tune copies the top-level JSON files of the study folder into its staging folder when it
# restores a study and syncs them back while it runs, truncating each before writing it: a reader
# can catch study.json empty or cut short for a moment.
MANIFEST_READS, MANIFEST_READ_PAUSE_S = 5, 0.2


def read_manifest(study_path: str) -> Manifest | None:
    """The study's manifest, or None when there is none; DamagedFile naming the file when it is
    garbage, cut short or has fields of the wrong type."""
    uri = study_uri(study_path, MANIFEST)
    for _ in range(MANIFEST_READS):
        try:
            text = read_text(uri)
            if text is None:
                return None
            return _found_here(_manifest_from(json.loads(text), uri), study_path)
        except (ValueError, DamagedFile) as e:  # empty or cut short: read again (see above)
            error: Exception = e
            time.sleep(MANIFEST_READ_PAUSE_S)
    why = str(error).removeprefix(f"{display_uri(uri)}: ")
    raise DamagedFile(
        f"{display_uri(uri)}: damaged study manifest ({why}); expected the JSON object `samsnet-search run` writes"
    ) from None


def _found_here(manifest: Manifest, study_path: str) -> Manifest:
    """A local study folder copied or moved elsewhere reads (and writes) itself: its storage is the
    folder it was found in, not the one recorded when it was made."""
    if is_s3(study_path) or Path(study_path).name != manifest.name:
        return manifest
    here = Path(study_path).resolve().parent
    if is_s3(manifest.storage) or Path(manifest.storage).resolve() != here:
        manifest.storage = str(here)
    return manifest


# Manifest field annotation -> the JSON types it may hold (annotations are strings: __future__).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "float": (int, float),
    "bool": (bool,),
    "dict[str, Any]": (dict,),
}


def _manifest_from(data: Any, uri: str) -> Manifest:
    """A Manifest from parsed JSON, each field's type checked (a dataclass checks none)."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    fields = {f.name: f for f in dataclasses.fields(Manifest)}
    required = {n for n, f in fields.items() if f.default is MISSING and f.default_factory is MISSING}
    if unknown := sorted(set(data) - set(fields)):
        raise ValueError(f"unknown fields {unknown}")
    if missing := sorted(required - set(data)):
        raise ValueError(f"missing fields {missing}")
    for key, value in data.items():
        kinds = _JSON_TYPES[str(fields[key].type)]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{key}: {type(value).__name__} {value!r:.40}, expected {fields[key].type}")
    if data.get("state", "created") not in STATES:
        raise ValueError(f"state: {data['state']!r:.40}, expected one of {', '.join(STATES)}")
    return Manifest(**data)


def write_manifest(manifest: Manifest) -> None:
    if manifest.state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {manifest.state!r}")
    lease.assert_writer(manifest.path)  # a driver that lost the study writes nothing more
    manifest.updated = time.time()
    write_text(study_uri(manifest.path, MANIFEST), json.dumps(asdict(manifest), indent=2, default=str))


def write_study_copy(study_path: str, text: str) -> None:
    write_text(study_uri(study_path, STUDY_COPY), text)


def read_study_copy(study_path: str) -> str | None:
    return read_text(study_uri(study_path, STUDY_COPY))


def write_study_json(study_path: str, name: str, data: dict[str, Any]) -> None:
    """`<study path>/<name>` as JSON (local or s3://), written whole or not at all."""
    lease.assert_writer(study_path)
    storage_io.write_json(study_uri(study_path, name), data, indent=1)


def read_study_json(study_path: str, name: str) -> dict[str, Any] | None:
    """`<study path>/<name>` parsed, or None when the file is absent."""
    return storage_io.read_json(study_uri(study_path, name))


def user_config_path() -> Path:
    """`$XDG_CONFIG_HOME/samsnet/config.yaml` (default `~/.config/...`): the user's defaults."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "samsnet" / "config.yaml"


def user_config() -> dict[str, Any]:
    """The user's defaults (`storage:`, `tracking_uri:`); {} when there is no file."""
    path = user_config_path()
    if not path.is_file():
        return {}
    data = read_yaml(path)  # the one YAML loader: size, encoding and alias limits
    unknown = set(data) - {"storage", "tracking_uri"} if isinstance(data, dict) else {"(not a mapping)"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; valid: storage, tracking_uri")
    return data


def default_storage() -> str:
    """Where studies are looked for without --storage: $SAMSNET_STORAGE, the user config, ./runs."""
    return os.environ.get(STORAGE_ENV) or user_config().get("storage") or DEFAULT_STORAGE


def find_study(name_or_path: str, storage: str) -> Manifest:
    """A study by name in `storage`, or by its folder (local path or s3:// URI).

    A name not found there is looked for in the user's default storage, then in ./runs (where a
    study file's default `storage:` puts it, also when `infra env` set $SAMSNET_STORAGE to the
    stack), and then through the MLflow tracking server ($MLFLOW_TRACKING_URI or the user
    config), whose study run records the study folder.
    """
    by_path = "/" in name_or_path or is_s3(name_or_path)
    candidates = [name_or_path] if by_path else []
    candidates.append(study_uri(storage, name_or_path))
    for root in () if by_path else (default_storage(), DEFAULT_STORAGE):
        path = study_uri(root if is_s3(root) else str(Path(root).expanduser().resolve()), name_or_path)
        if path not in candidates:
            candidates.append(path)
    for path in candidates:
        manifest = read_manifest(path)
        if manifest is not None:
            return manifest
    manifest = _find_through_tracking(name_or_path)
    if manifest is not None:
        return manifest
    known = ", ".join(m.name for m in list_studies(storage)) or "none"
    raise StudyNotFound(
        f"no study {name_or_path!r} in {display_uri(storage)} (known studies: {known}); "
        f"give the name, the study folder, or --storage (default: ${STORAGE_ENV}, `storage:` in "
        f"{user_config_path()}, or {DEFAULT_STORAGE})"
    )


def _find_through_tracking(name: str) -> Manifest | None:
    """The study's folder as its MLflow study run records it (tag samsnet.storage), if a tracking
    server is configured and reachable within a few seconds."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or user_config().get("tracking_uri")
    if not uri or "/" in name:
        return None
    if check_reachable(None, uri):
        log.info("tracking server %s not reachable: studies are not looked up there", uri)
        return None
    c = tracking.client(tracking.resolve_tracking(uri))
    try:
        experiment = c.get_experiment_by_name(name)
        if experiment is None:
            return None
        runs = c.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{tracking.ROLE_TAG}` = 'study'",
            order_by=["attributes.start_time DESC"],
            max_results=5,
        )
    except Exception as e:  # the lookup is a convenience: a failure leaves the plain "not found"
        log.info("looking up study %s in %s failed: %s", name, uri, e)
        return None
    for run in runs:
        path = run.data.tags.get(STORAGE_TAG)
        manifest = read_manifest(path) if path else None
        if manifest is not None:
            return manifest
    return None


def list_studies(storage: str) -> list[Manifest]:
    """Manifests of every study directly under `storage`, newest first; a study whose manifest is
    damaged is listed last as a stand-in (`Manifest.damaged`), so one bad file hides no other study."""
    fs, root = storage_io.filesystem(storage)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory and not (is_s3(storage) and info.type == pafs.FileType.NotFound):
        return []
    try:
        entries = storage_io.list_dir(fs, root)
    except OSError as e:
        raise ConfigError(f"storage: {display_uri(storage)}: cannot list: {e}") from None
    out = []
    for entry in entries:
        if entry.type != pafs.FileType.Directory:
            continue
        try:
            manifest = read_manifest(study_uri(storage, entry.base_name))
        except DamagedFile as e:
            manifest = Manifest.stand_in(storage, entry.base_name, e)
        if manifest is not None:
            out.append(_without_dead_driver(manifest))
    return sorted(out, key=lambda m: m.updated, reverse=True)


def _without_dead_driver(manifest: Manifest) -> Manifest:
    """A `running` study whose driver is gone shows as `interrupted`: the driver died where it
    could not write study.json (killed, a full disk), and `resume` continues it."""
    if manifest.state != "running":
        return manifest
    reason = lease.driver_gone(manifest.path)
    if reason is not None:
        log.warning(
            "study %s: study.json says running, but %s; shown as interrupted (continue with: samsnet-search resume %s)",
            manifest.name,
            reason,
            manifest.name,
        )
        manifest.state = "interrupted"
    return manifest
