"""All study I/O on local disk and S3: one module, one client (pyarrow's filesystems).

A storage location is a local path or `s3://bucket/prefix[?endpoint_override=host:port&scheme=http]`,
pyarrow's URI form, which Ray Tune's storage uses as well: the study files this package writes
and the checkpoints Ray writes then live behind the same filesystem object. S3 keys never
appear in a URI; pyarrow reads them from the AWS environment or credentials file.

Small files are written whole or not at all: locally a unique temporary file renamed into
place, on S3 a single PUT (an object appears only once its upload completed).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pyarrow.fs as pafs

from ..errors import ConfigError, DamagedFile
from ..files import write_atomic

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
# Query keys of an S3 URI that say where the store is, never who may use it.
SAFE_QUERY_KEYS = ("endpoint_override", "scheme", "region")


class StorageError(ConfigError):
    """A storage location is malformed or cannot be opened, or a file asked for is not there."""


def is_s3(uri: str) -> bool:
    return urlsplit(uri).scheme == "s3"


def join(uri: str, name: str) -> str:
    """`<uri>/<name>`, keeping an S3 URI's query (endpoint_override=...) at the end."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))
    return str(Path(uri) / name)


def display_uri(uri: str) -> str:
    """A storage URI safe to print and log (no query values that could carry keys)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.query:
        return uri
    query = "&".join(kv for kv in parts.query.split("&") if kv.split("=", 1)[0] in SAFE_QUERY_KEYS)
    return urlunsplit(parts._replace(query=query))


# Where the AWS SDK (so pyarrow) finds credentials without asking the network: environment, shared
# files. Without any of them, and off EC2, a plain s3:// URI can only be meant for a store whose
# endpoint was not set: pyarrow would spend ~14 s on AWS's DNS name and the instance metadata
# service before failing with `Could not resolve host`.
AWS_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
AWS_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# An EC2 instance (instance-profile credentials) says so in files; read, never asked over the network.
EC2_MARKERS = {
    "/sys/hypervisor/uuid": "ec2",
    "/sys/devices/virtual/dmi/id/board_asset_tag": "i-",
    "/sys/devices/virtual/dmi/id/sys_vendor": "Amazon",
}


def _aws_credentials_here() -> bool:
    """Credentials the AWS SDK could use for AWS itself: from the environment, shared files or EC2."""
    env = os.environ
    if any(env.get(k) for k in AWS_CREDENTIAL_ENV):
        return True
    home = Path.home() / ".aws"
    files = (
        env.get("AWS_SHARED_CREDENTIALS_FILE") or home / "credentials",
        env.get("AWS_CONFIG_FILE") or home / "config",
    )
    if any(Path(f).expanduser().is_file() for f in files):
        return True
    for path, prefix in EC2_MARKERS.items():
        try:
            if Path(path).read_text(errors="replace").strip().startswith(prefix):
                return True
        except OSError:
            continue
    return False


def check_s3_configured(uri: str) -> None:
    """StorageError at once, naming what to set, for an s3:// URI that has no endpoint (no
    `endpoint_override`, no AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) and no AWS credentials here:
    it cannot be meant for AWS, and the local stack needs `infra env`."""
    query = dict(parse_qsl(urlsplit(uri).query))
    if query.get("endpoint_override") or any(os.environ.get(k) for k in AWS_ENDPOINT_ENV):
        return
    if _aws_credentials_here():
        return
    raise StorageError(
        f"storage: {display_uri(uri)}: no S3 endpoint is set and there are no AWS credentials; for the local "
        'stack run `eval "$(samsnet-search infra env)"` (sets AWS_ENDPOINT_URL_S3 and the keys), else add '
        "?endpoint_override=HOST:PORT&scheme=http to the URI, or set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
        "(or AWS_PROFILE) for AWS S3"
    )


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or an s3:// URI; an s3:// URI with
    neither an endpoint nor AWS credentials fails at once (`check_s3_configured`)."""
    if is_s3(uri):
        check_s3_configured(uri)
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as e:
            raise StorageError(f"storage: {display_uri(uri)}: cannot open S3 storage: {e}") from None
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray Tune: a local folder (created), or a bucket
    path with its S3 filesystem."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        return path, fs
    Path(uri).mkdir(parents=True, exist_ok=True)
    return uri, None


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """Where a (filesystem, path) pair is, as a person finds it (`s3://bucket/...` or a folder)."""
    kind = getattr(fs, "type_name", "local")
    return path if kind == "local" else f"{kind}://{path}"


# --- small files -----------------------------------------------------------------------


def read_bytes(uri: str) -> bytes | None:
    """A file of the storage, or None when it is absent."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str | None:
    """A small file of the storage as UTF-8 text, or None when it is absent; DamagedFile when it is
    not text (binary garbage from a bad disk or a stray write)."""
    data = read_bytes(uri)
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise DamagedFile(f"{display_uri(uri)}: damaged: not UTF-8 text (byte {e.start} of {len(data)})") from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file of the storage whole (see the module docstring), creating its folder."""
    fs, path = filesystem(uri)
    if not is_s3(uri):
        write_atomic(path, data)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_json(uri: str) -> Any | None:
    """A JSON file of the storage parsed, or None when it is absent; DamagedFile when it is not
    JSON (garbage, or cut short)."""
    text = read_text(uri)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise DamagedFile(f"{display_uri(uri)}: damaged: not JSON ({e})") from None


def write_json(uri: str, payload: Any, indent: int = 2) -> None:
    write_text(uri, json.dumps(payload, indent=indent, default=str))


def delete_file(uri: str) -> None:
    """Remove one file of the storage; absent is fine."""
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def move_file(uri: str, target: str) -> None:
    """Rename a file within one storage (S3: copy, then delete), creating the target's folder."""
    fs, path = filesystem(uri)
    _, dest = filesystem(target)
    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
    fs.move(path, dest)


def put_file(uri: str, local: Path) -> None:
    """Copy a local file into the storage (whole or not at all)."""
    write_bytes(uri, Path(local).read_bytes())


def get_file(uri: str, local: Path) -> Path:
    """Copy a file of the storage to `local` (its folder is created); returns `local`."""
    data = read_bytes(uri)
    if data is None:
        raise StorageError(f"{display_uri(uri)}: no such file in the storage")
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    return local


# --- folders ---------------------------------------------------------------------------


def list_dir(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The entries directly in a folder of `fs` (none when it is absent)."""
    return fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=False, allow_not_found=True))


def subfolders(fs: pafs.FileSystem, path: str, prefix: str = "") -> list[str]:
    """Paths of the folders directly in `path` whose names start with `prefix`, sorted by name."""
    return sorted(
        i.path.rstrip("/")
        for i in list_dir(fs, path)
        if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)
    )


def is_file(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


# --- S3 endpoints of the local stack or a cluster ----------------------------------------


def split_endpoint(endpoint_url: str) -> tuple[str, str]:
    """'http://127.0.0.1:8333' -> ('http', '127.0.0.1:8333'); errors name the bad value."""
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StorageError(f"S3 endpoint {endpoint_url!r} must look like http://HOST:PORT or https://HOST:PORT")
    return parts.scheme, parts.netloc


def s3_filesystem(
    endpoint_url: str, access_key: str, secret_key: str, region: str = DEFAULT_REGION
) -> pafs.S3FileSystem:
    """A `pyarrow.fs.S3FileSystem` for an S3-compatible endpoint (Ray Tune `storage_filesystem`)."""
    scheme, netloc = split_endpoint(endpoint_url)
    return pafs.S3FileSystem(
        endpoint_override=netloc, access_key=access_key, secret_key=secret_key, scheme=scheme, region=region
    )


def storage_uri(bucket: str, path: str, endpoint_url: str, region: str = DEFAULT_REGION) -> str:
    """`s3://BUCKET/PATH?endpoint_override=HOST:PORT&scheme=http&region=R` for a study's storage.

    Carries no keys: pyarrow reads them from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    """
    scheme, netloc = split_endpoint(endpoint_url)
    key = path.strip("/")
    return f"s3://{bucket}/{key}?endpoint_override={netloc}&scheme={scheme}&region={region}"


def s3_client(endpoint_url: str, access_key: str, secret_key: str, region: str = DEFAULT_REGION):
    """A boto3 S3 client for an S3-compatible endpoint (path-style, SigV4, short timeouts).

    For the bucket administration of the local stack (create, health checks) only: study I/O
    goes through `filesystem`. MLflow's artifact uploads use boto3 too, configured by MLflow."""
    import boto3  # lazy: boto3; only bucket administration (infra up, tests) needs it
    from botocore.config import Config  # lazy: boto3

    conf = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},  # SeaweedFS has no per-bucket DNS names
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=3,
        read_timeout=30,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=conf,
    )
