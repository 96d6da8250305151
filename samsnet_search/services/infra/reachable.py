"""Does a storage URI and a tracking URI answer? Bounded checks for clients of the stack."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from pyarrow import fs as pafs

from .. import storage as storage_io
from .processes import http_status


def _run_bounded(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """(finished, result or exception) of `fn` run in a daemon thread for at most `timeout` s.

    pyarrow's S3 client retries a dead endpoint for longer than a quick check may take.
    """
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the caller, who words it
            out["value"] = e

    t = threading.Thread(target=target, daemon=True, name="samsnet-reachable")
    t.start()
    t.join(timeout)
    return ("value" in out), out.get("value")


def _tcp_problem(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


def s3_endpoint_of(uri: str) -> tuple[str, str, int]:
    """(shown endpoint, host, port) an `s3://` URI goes to, as pyarrow resolves it."""
    query = dict(parse_qsl(urlsplit(uri).query))
    if query.get("endpoint_override"):
        override = query["endpoint_override"]
        url = override if "://" in override else f"{query.get('scheme', 'https')}://{override}"
    else:
        region = (
            query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        )
        aws = f"https://s3.{region}.amazonaws.com"
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or aws
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return url, parts.hostname or "", parts.port or default


def _storage_problems(storage: str, timeout: float) -> list[str]:
    if "://" not in storage or storage.startswith("file://"):
        folder = Path(storage.removeprefix("file://")).expanduser()
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            return [f"storage {storage}: {existing or folder} is not a folder this user can write"]
        return []
    if not storage.startswith("s3://"):
        return []  # gs://, hdfs://...: left to pyarrow at run time
    try:
        storage_io.check_s3_configured(storage)
    except storage_io.StorageError as e:
        return [str(e)]
    endpoint, host, port = s3_endpoint_of(storage)
    down = _tcp_problem(host, port, timeout)
    if down:
        return [
            f"storage {storage}: cannot reach the S3 endpoint {endpoint} ({down}); start the local stack "
            '(`samsnet-search infra up`, then `eval "$(samsnet-search infra env)"`) or fix the endpoint'
        ]
    custom = "amazonaws.com" not in host
    if custom and not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        return [f"storage {storage}: no S3 keys for {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"]

    def probe() -> Any:
        filesystem, path = storage_io.filesystem(storage)
        return filesystem.get_file_info(path.split("/", 1)[0])

    finished, result = _run_bounded(probe, timeout)
    if not finished:
        return [f"storage {storage}: the S3 endpoint {endpoint} did not answer within {timeout:g} s"]
    if isinstance(result, Exception):
        text = str(result)
        if any(code in text for code in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")):
            return [f"storage {storage}: {endpoint} refused the keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"]
        return [f"storage {storage}: {endpoint}: {text.splitlines()[0] if text else type(result).__name__}"]
    if result.type == pafs.FileType.NotFound:
        bucket = urlsplit(storage).netloc
        return [f"storage {storage}: bucket {bucket!r} does not exist at {endpoint}"]
    return []


def _tracking_problems(uri: str, timeout: float) -> list[str]:
    if not uri.startswith(("http://", "https://")):
        return []  # a local store (file:, sqlite:, a folder) or a scheme MLflow resolves itself
    base = uri.rstrip("/")
    health = http_status(base + "/health", timeout=timeout)
    if health != 200:
        return [
            f"tracking server {uri} does not answer ({health}); start it (`samsnet-search infra up`) or fix tracking.uri"
        ]
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    login = (user, password) if user and password else None
    got = http_status(base + "/api/2.0/mlflow/experiments/search?max_results=1", login, timeout)
    if got == 401 and login is None:
        return [
            f"tracking server {uri} requires a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            '(for the local stack: eval "$(samsnet-search infra env)")'
        ]
    if got in (401, 403):
        return [
            f"tracking server {uri} refused the login in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD ({got})"
        ]
    if got != 200:
        return [f"tracking server {uri}: the MLflow API answered {got}"]
    return []


def check_reachable(storage: str | None, tracking_uri: str | None, timeout: float = 3.0) -> list[str]:
    """Problems (one line each, empty if none) reaching `storage` and the tracking server.

    A local storage folder must be writable; an `s3://` URI's endpoint (from its query, or
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS) must accept a connection and the keys,
    and its bucket must exist; an http(s) tracking URI must answer /health and the MLflow API
    with the login in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. Each check gives up
    after about `timeout` seconds.
    """
    problems = _storage_problems(str(storage), timeout) if storage else []
    return problems + (_tracking_problems(str(tracking_uri), timeout) if tracking_uri else [])
