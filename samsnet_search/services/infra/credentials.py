"""The stack's secrets: S3 keys (from the environment or generated once) and the MLflow admin login.

Generated secrets live in `<state>/credentials.json` (mode 0600); values from the environment
win and are never written.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ...files import write_atomic
from .config import InfraConfig, InfraError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    """S3 keys. The secret is left out of repr so a logged object never shows it."""

    access_key: str
    secret_key: str = field(repr=False)
    source: str = "file"  # "environment" or "file"


def credentials_path(cfg: InfraConfig) -> Path:
    return cfg.state_dir / "credentials.json"


def _env_credentials() -> Credentials | None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return Credentials(key, secret, "environment")
    if key or secret:
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise InfraError(
            f"only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set: set {missing} too, or unset both"
        )
    return None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the first byte on (files.write_atomic)."""
    write_atomic(path, text.encode())


def read_credentials_file(path: Path) -> dict[str, str]:
    """The stored secrets ({} if none yet); errors name the file."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return {str(k): str(v) for k, v in data.items()}
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise InfraError(
            f"{path}: not a credentials file ({e}); delete it to make new keys (and the MLflow login with "
            "mlflow-auth.db)"
        ) from None


def _update_credentials_file(path: Path, new: dict[str, str]) -> dict[str, str]:
    data = {**read_credentials_file(path), **new}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(data, indent=1))
    return data


def _file_credentials(path: Path) -> Credentials | None:
    data = read_credentials_file(path)
    if not data.get("access_key") and not data.get("secret_key"):
        return None  # the file may hold only the MLflow login (S3 keys from the environment)
    if not (data.get("access_key") and data.get("secret_key")):
        raise InfraError(f"{path}: has only one of access_key / secret_key; delete it to make new keys")
    return Credentials(data["access_key"], data["secret_key"], "file")


def _missing_stack_hint(cfg: InfraConfig) -> str:
    return (
        f"run `samsnet-search infra up` first, or point --state-dir (or $SAMSNET_INFRA_DIR) at the folder "
        f"the stack was started with (looked in {cfg.state_dir})"
    )


def load_credentials(cfg: InfraConfig, *, create: bool = False, source: str | None = None) -> Credentials:
    """S3 keys: from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else `<state>/credentials.json`.

    `source` ('environment' or 'file') forces where to read them (a running stack records
    which one it was started with). With `create`, missing file keys are generated once.
    """
    env = _env_credentials() if source in (None, "environment") else None
    if env:
        return env
    if source == "environment":
        raise InfraError(
            "the stack was started with keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: set them in this shell"
        )
    path = credentials_path(cfg)
    found = _file_credentials(path)
    if found:
        return found
    if not create:
        hint = _missing_stack_hint(cfg)
        raise InfraError(f"no S3 credentials: {path} does not exist and AWS_ACCESS_KEY_ID is not set; {hint}")
    creds = Credentials("SN" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30), "file")
    _update_credentials_file(path, {"access_key": creds.access_key, "secret_key": creds.secret_key})
    log.info("generated S3 credentials in %s (mode 0600)", path)
    return creds


@dataclass(frozen=True)
class MlflowLogin:
    """The MLflow server's admin login and its Flask session key. Secrets left out of repr."""

    username: str
    password: str = field(repr=False)
    session_key: str = field(repr=False)


MLFLOW_ADMIN = "samsnet-admin"
ADMIN_USERNAME_ENV, ADMIN_PASSWORD_ENV = "SAMSNET_MLFLOW_ADMIN_USERNAME", "SAMSNET_MLFLOW_ADMIN_PASSWORD"


def load_mlflow_login(cfg: InfraConfig, *, create: bool = False) -> MlflowLogin:
    """The MLflow admin login from `<state>/credentials.json`; with `create`, generated once.

    Generated, or on a cluster taken from SAMSNET_MLFLOW_ADMIN_USERNAME / _PASSWORD (set on
    every node from one env file, so the workers' trials can log in); never from
    MLFLOW_TRACKING_USERNAME/PASSWORD: those are a client's variables, and a shell still holding
    another stack's would silently set this server's admin.
    """
    path = credentials_path(cfg)
    data = read_credentials_file(path)
    if data.get("mlflow_username") and data.get("mlflow_password") and data.get("mlflow_session_key"):
        return MlflowLogin(data["mlflow_username"], data["mlflow_password"], data["mlflow_session_key"])
    if not create:
        raise InfraError(f"no MLflow login in {path}; " + _missing_stack_hint(cfg))
    given = os.environ.get(ADMIN_PASSWORD_ENV)
    user = os.environ.get(ADMIN_USERNAME_ENV) or MLFLOW_ADMIN
    login = MlflowLogin(user, given or secrets.token_urlsafe(24), secrets.token_hex(32))
    _update_credentials_file(
        path,
        {"mlflow_username": login.username, "mlflow_password": login.password, "mlflow_session_key": login.session_key},
    )
    log.info("%s the MLflow admin login in %s (mode 0600)", "stored" if given else "generated", path)
    return login


def write_identities(cfg: InfraConfig, creds: Credentials) -> Path:
    """SeaweedFS `-s3.config` file: one admin identity, no anonymous one (unsigned requests get 403)."""
    ident = {
        "identities": [
            {
                "name": "samsnet-admin",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path = cfg.state_dir / "s3-identities.json"
    write_private(path, json.dumps(ident, indent=1))
    return path
