"""The MLflow Model Registry: register an export folder as `samsnet-<name>`, find it again, load it.

A version is an MLflow pyfunc ("model from code": the export's `mlflow_model.py`, which runs
`separate.pt2` with torch alone, so no pickle is stored) logged under the run that produced the
weights, with the export folder as its artifact. Its tags record the sha256 of the weights (the
same weights are never registered twice) and of `export.json` itself, kept in the tracking
database, so that an export replaced as a whole in the artifact store is refused too.
`load_separator` turns what a user names (an export folder, `models:/NAME@ALIAS`, a checkpoint)
into a model for `engine.separate`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from ..config import TARGETS
from ..engine import checkpoint
from ..errors import SamsNetError, one_line
from ..services import tracking
from .export_folder import (
    FORMAT,
    MANIFEST,
    ExportedModel,
    ExportError,
    is_export,
    load_exported,
    sha256_file,
    verified_file,
    verify_export,
)

log = logging.getLogger(__name__)

# Registry tags of a version: what it was registered from, checked when it is loaded back.
MANIFEST_SHA_TAG, WEIGHTS_SHA_TAG = "samsnet.export_sha256", "samsnet.weights_sha256"
MODEL_ARTIFACT = "registered_model"  # run artifact folder of the pyfunc (a trial run keeps model/ for best.pt)
DEFAULT_ALIAS = "champion"
REGISTRY_PREFIX = "models:/"


@dataclass(frozen=True)
class Registration:
    """What `register_export` did: a new version, or an existing one with the same weights."""

    name: str  # samsnet-<study>
    version: str
    reused: bool  # True: these weights were registered before; no new version was made
    alias: str
    alias_version: str | None  # the version the alias points to after the call

    def describe(self) -> str:
        if not self.reused:
            return f"registered {self.name} version {self.version} with alias {self.alias}"
        where = "on it" if self.alias_version == self.version else f"stays on version {self.alias_version}"
        return f"{self.name} version {self.version} already holds these weights (not registered again; alias {self.alias} {where})"


def register(
    export_dir: str | Path, name: str, tracking_uri: str, run_id: str | None = None, alias: str = DEFAULT_ALIAS
) -> str:
    """`register_export`, returning the version only."""
    return register_export(export_dir, name, tracking_uri, run_id=run_id, alias=alias).version


def register_export(
    export_dir: str | Path,
    name: str,
    tracking_uri: str,
    run_id: str | None = None,
    alias: str = DEFAULT_ALIAS,
) -> Registration:
    """Log the export as an MLflow pyfunc model and register it as `samsnet-<name>` with `alias`.

    `run_id` is the run that produced the weights (a trial or selection run); the model is logged
    under its `registered_model/` so that the version links to it. Without one, a run named
    "export" is made in the experiment `name`. If a version of `samsnet-<name>` already holds these
    weights (same sha256), that version is returned and nothing is registered or moved: exporting
    the same winner twice must not make a second version or take the alias from a newer one (the
    alias is set only if the model has none of that name). The pyfunc is "model from code"
    (`mlflow_model.py`, which runs separate.pt2), so no pickle is stored in the registry.
    """
    folder = Path(export_dir)
    manifest = verify_export(folder)
    weights_sha = manifest["files"]["weights"]["sha256"]
    target = tracking.resolve_tracking(tracking_uri)
    c = tracking.client(target)
    registered = tracking.registered_model_name(name)
    try:
        existing = _version_with_weights(c, registered, weights_sha)
        if existing is not None:
            aliases = dict(c.get_registered_model(registered).aliases or {})
            if alias not in aliases:
                c.set_registered_model_alias(registered, alias, existing)
                aliases[alias] = existing
            log.info(
                "%s version %s already holds weights %s...; not registered again",
                registered,
                existing,
                weights_sha[:12],
            )
            return Registration(registered, existing, True, alias, str(aliases[alias]))
        if run_id is None:
            experiment_id = tracking.ensure_experiment(target, name)
            run_id = c.create_run(
                experiment_id, run_name="export", tags={tracking.STUDY_TAG: name, tracking.ROLE_TAG: "export"}
            ).info.run_id
            c.set_terminated(run_id, "FINISHED")
        config = json.loads(verified_file(folder, manifest, "model_config").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            channels = int(config["audio_channels"])
            # The example (0.1 s of silence) documents the input in the UI; MLflow also runs it once.
            mlflow.pyfunc.save_model(
                str(model_dir),
                python_model=str(verified_file(folder, manifest, "pyfunc")),
                artifacts={"export": str(folder)},
                pip_requirements=_requirements(),
                signature=pyfunc_signature(channels),
                input_example=np.zeros((1, channels, 4410), dtype=np.float32),
            )
            c.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
        tags = {
            "samsnet.export": FORMAT,
            MANIFEST_SHA_TAG: sha256_file(folder / MANIFEST),
            WEIGHTS_SHA_TAG: weights_sha,
        }
        version = tracking.register_model(
            target, name, run_id, MODEL_ARTIFACT, tags=tags, description=f"Sams-Net export from {manifest['source']}"
        )
        c.set_registered_model_alias(registered, alias, version)
    except SamsNetError:
        raise
    except Exception as e:  # server down, permissions, ...: one clear line
        raise ExportError(f"cannot register {folder} as {registered} at {target.uri}: {one_line(e)}") from None
    log.info("registered %s version %s (alias %s)", registered, version, alias)
    return Registration(registered, version, False, alias, version)


def _version_with_weights(c, registered: str, weights_sha: str) -> str | None:
    """The oldest version of `registered` whose weights have this sha256, or None."""
    try:
        versions = c.search_model_versions(f"name = '{registered}'")
    except MlflowException:
        return None
    same = sorted(int(v.version) for v in versions if (v.tags or {}).get(WEIGHTS_SHA_TAG) == weights_sha)
    return str(same[0]) if same else None


def pyfunc_signature(audio_channels: int):
    """audio float32 (B, C, N) at 44.1 kHz -> stems (B, 4, C, N); batch and length free."""
    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, audio_channels, -1))]),
        outputs=Schema([TensorSpec(f32, (-1, len(TARGETS), audio_channels, -1))]),
    )


def _requirements() -> list[str]:
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


def download_registered(uri: str, tracking_uri: str | None, dest: str | Path) -> Path:
    """Download `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) and return the export folder in it."""
    target = tracking.resolve_tracking(tracking_uri or "./mlruns")
    version = _model_version(uri, target)
    try:
        # The version's own source, resolved against this server: `models:/` URIs would go to
        # MLflow's default registry (a local database), not to `tracking_uri`.
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(dest), tracking_uri=target.uri
        )
    except MlflowException as e:
        raise ExportError(f"{uri}: cannot download {version.source} from {target.uri}: {one_line(e)}") from None
    found = sorted(Path(local).rglob(MANIFEST))
    if not found:
        raise ExportError(f"{uri}: the registered model holds no samsnet export ({MANIFEST} not found)")
    folder = found[0].parent
    _check_registered_manifest(uri, version, folder / MANIFEST)
    verify_export(folder)
    return folder


def _check_registered_manifest(uri: str, version, path: Path) -> None:
    """The export.json in the artifact store is the one registered: its sha256 is a registry tag, kept
    in the tracking database, so replacing the whole export in the artifact store is caught too."""
    expected = (version.tags or {}).get(MANIFEST_SHA_TAG)
    if expected is None:
        raise ExportError(
            f"{uri}: version {version.version} was registered without a checksum of its {MANIFEST} "
            "(an older samsnet-search); export and register it again"
        )
    if sha256_file(path) != expected:
        raise ExportError(
            f"{uri}: {MANIFEST} of version {version.version} in the artifact store differs from the "
            "checksum recorded in the registry: the stored model was changed after registration; "
            "refusing to load it"
        )


def _model_version(uri: str, target):
    """The registry entry `models:/NAME@ALIAS` or `models:/NAME/VERSION` names; clear errors when unknown."""
    ref = uri[len(REGISTRY_PREFIX) :] if uri.startswith(REGISTRY_PREFIX) else ""
    name, sep, rest = ref.partition("@") if "@" in ref else ref.partition("/")
    if not name or not rest:
        raise ExportError(f"{uri}: not a registry URI (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    c = tracking.client(target)
    try:
        model = c.get_registered_model(name)
    except MlflowException:
        raise ExportError(f"{uri}: no registered model {name!r} at {target.uri}") from None
    except Exception as e:
        raise ExportError(f"{uri}: cannot reach the MLflow registry at {target.uri} ({type(e).__name__})") from None
    if sep == "@":
        if rest not in (model.aliases or {}):
            known = ", ".join(sorted(model.aliases or {})) or "none"
            raise ExportError(f"{uri}: registered model {name!r} has no alias {rest!r} (aliases: {known})")
        return c.get_model_version_by_alias(name, rest)
    try:
        return c.get_model_version(name, rest)
    except MlflowException:
        raise ExportError(f"{uri}: registered model {name!r} has no version {rest!r}") from None


def load_separator(
    model_ref: str | Path, tracking_uri: str | None = None, map_location: str = "cpu"
) -> ExportedModel | torch.nn.Module:
    """A model for `engine.separate.separate` / `separate_file` from any of:

    - an export folder (`samsnet-search export`): its torch.export programs, so no SamsNet
      Python code runs; every file of the folder must match the sha256 its export.json
      records, or nothing is loaded;
    - an MLflow registry URI `models:/NAME@ALIAS` or `models:/NAME/VERSION`: the export
      folder stored in that model version, downloaded, checked against the checksum the
      registry recorded, and loaded the same way (the pyfunc wrapper is not unpickled or
      executed); `tracking_uri` (default `$MLFLOW_TRACKING_URI`, else ./mlruns) names the server;
    - a checkpoint folder or .pt file: the Python SamsNet with the best weights.
    """
    ref = str(model_ref)
    if ref.startswith(REGISTRY_PREFIX):
        with tempfile.TemporaryDirectory() as tmp:
            folder = download_registered(ref, tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), tmp)
            return load_exported(folder, map_location)
    if is_export(ref):
        verify_export(ref)  # the whole folder, not only the programs: a changed file is named
        return load_exported(ref, map_location)
    path = Path(ref)
    if not path.exists():
        raise ExportError(
            f"{ref}: no such file or folder (expected an export folder, a checkpoint "
            "folder or .pt file, or models:/NAME@ALIAS)"
        )
    if path.is_dir() and not any((path / name).is_file() for name in (checkpoint.BEST, checkpoint.LAST)):
        raise ExportError(
            f"{ref}: neither an export folder (no {MANIFEST}) nor a checkpoint "
            f"folder (no {checkpoint.BEST} / {checkpoint.LAST})"
        )
    return checkpoint.load_model(ref, map_location)[0]
