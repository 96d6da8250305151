"""Study identity: the name maps to the MLflow experiment, `<storage>/<name>` and the
registered model `samsnet-<name>`; `<storage>/<name>/study.json` records the mapping and
the study's state, next to a copy of the study file (`study.yaml`).

Storage is a local folder or `s3://bucket/prefix[?endpoint_override=host:port&scheme=http]`
(pyarrow's URI form, which Ray Tune's storage uses as well).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import read_yaml
from ..errors import ConfigError, SamsNetError

log = logging.getLogger(__name__)

MANIFEST = "study.json"
DEFAULT_STORAGE = "./runs"
STORAGE_ENV = "SAMSNET_STORAGE"
STORAGE_TAG = "samsnet.storage"  # on the parent run: the study folder (display form)
STUDY_COPY = "study.yaml"
STATES = ("created", "running", "interrupted", "finished", "failed")


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

    @property
    def path(self) -> str:
        return study_uri(self.storage, self.name)


def is_s3(storage: str) -> bool:
    return urlsplit(storage).scheme == "s3"


def study_uri(storage: str, name: str) -> str:
    """`<storage>/<name>`, keeping an S3 URI's query (endpoint_override=...) at the end."""
    parts = urlsplit(storage)
    if parts.scheme == "s3":
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))
    return str(Path(storage) / name)


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a local path or an s3:// URI."""
    import pyarrow.fs as pafs

    if is_s3(uri):
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as e:
            raise ConfigError(f"storage: {display_uri(uri)}: cannot open S3 storage: {e}") from None
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def display_uri(uri: str) -> str:
    """A storage URI safe to print and log (no query values that could carry keys)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.query:
        return uri
    keys = [kv.split("=", 1)[0] for kv in parts.query.split("&")]
    safe = {"endpoint_override", "scheme", "region"}
    query = "&".join(kv for kv, k in zip(parts.query.split("&"), keys) if k in safe)
    return urlunsplit(parts._replace(query=query))


def read_text(uri: str) -> str | None:
    """A small file of the storage (local or s3://) as text, or None when it is absent."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(uri: str, text: str) -> None:
    """Write a small file of the storage whole (a temporary name, then moved into place)."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, path)  # atomic on local disks; a plain copy+delete on S3


def delete_file(uri: str) -> None:
    """Remove one file of the storage; absent is fine."""
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


# select.py reads and writes its job records through these names.
_read_text, _write_text = read_text, write_text


def _join(uri: str, name: str) -> str:
    return study_uri(uri, name)


def read_manifest(study_path: str) -> Manifest | None:
    text = read_text(_join(study_path, MANIFEST))
    if text is None:
        return None
    try:
        return Manifest(**json.loads(text))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{display_uri(_join(study_path, MANIFEST))}: not a study manifest: {e}") from None


def write_manifest(manifest: Manifest) -> None:
    if manifest.state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {manifest.state!r}")
    manifest.updated = time.time()
    write_text(_join(manifest.path, MANIFEST), json.dumps(asdict(manifest), indent=2, default=str))


def write_study_copy(study_path: str, text: str) -> None:
    write_text(_join(study_path, STUDY_COPY), text)


def read_study_copy(study_path: str) -> str | None:
    return read_text(_join(study_path, STUDY_COPY))


def write_study_json(study_path: str, name: str, data: dict[str, Any]) -> None:
    """`<study path>/<name>` as JSON (local or s3://), written whole or not at all."""
    write_text(_join(study_path, name), json.dumps(data, indent=1, default=str))


def read_study_json(study_path: str, name: str) -> dict[str, Any] | None:
    """`<study path>/<name>` parsed, or None when the file is absent."""
    text = read_text(_join(study_path, name))
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{display_uri(_join(study_path, name))}: not JSON: {e}") from None


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

    A name not found there is looked for in the user's default storage and then through the
    MLflow tracking server ($MLFLOW_TRACKING_URI or the user config), whose study run records
    the study folder.
    """
    by_path = "/" in name_or_path or is_s3(name_or_path)
    candidates = [name_or_path] if by_path else []
    candidates.append(study_uri(storage, name_or_path))
    fallback = default_storage()
    fallback = fallback if is_s3(fallback) else str(Path(fallback).expanduser().resolve())
    if not by_path and fallback != storage:
        candidates.append(study_uri(fallback, name_or_path))
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
    from ..services.infra import check_reachable

    if check_reachable(None, uri):
        log.info("tracking server %s not reachable: studies are not looked up there", uri)
        return None
    from ..services import tracking

    c = tracking.client(tracking.resolve_tracking(uri))
    try:
        experiment = c.get_experiment_by_name(name)
        if experiment is None:
            return None
        runs = c.search_runs([experiment.experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'study'",
                             order_by=["attributes.start_time DESC"], max_results=5)  # fmt: skip
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
    """Manifests of every study directly under `storage`, newest first."""
    import pyarrow.fs as pafs

    fs, root = filesystem(storage)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory and not (is_s3(storage) and info.type == pafs.FileType.NotFound):
        return []
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    except OSError as e:
        raise ConfigError(f"storage: {display_uri(storage)}: cannot list: {e}") from None
    out = []
    for entry in entries:
        if entry.type != pafs.FileType.Directory:
            continue
        try:
            manifest = read_manifest(study_uri(storage, entry.base_name))
        except ConfigError as e:
            log.warning("skipping %s", e)
            continue
        if manifest is not None:
            out.append(manifest)
    return sorted(out, key=lambda m: m.updated, reverse=True)
