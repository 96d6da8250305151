"""Clients for an S3-compatible endpoint: a boto3 client, a pyarrow filesystem, a storage URI."""

from __future__ import annotations

from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from pyarrow import fs as pafs

from .config import InfraError


def s3_client(endpoint_url: str, access_key: str, secret_key: str, region: str = "us-east-1"):
    """A boto3 S3 client for an S3-compatible endpoint (path-style, SigV4, short timeouts)."""
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


def _split_endpoint(endpoint_url: str) -> tuple[str, str]:
    """'http://127.0.0.1:8333' -> ('http', '127.0.0.1:8333'); errors name the bad value."""
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InfraError(f"S3 endpoint {endpoint_url!r} must look like http://HOST:PORT or https://HOST:PORT")
    return parts.scheme, parts.netloc


def s3_filesystem(endpoint_url: str, access_key: str, secret_key: str, region: str = "us-east-1"):
    """A `pyarrow.fs.S3FileSystem` for an S3-compatible endpoint (Ray Tune `storage_filesystem`)."""
    scheme, netloc = _split_endpoint(endpoint_url)
    return pafs.S3FileSystem(
        endpoint_override=netloc, access_key=access_key, secret_key=secret_key, scheme=scheme, region=region
    )


def storage_uri(bucket: str, path: str, endpoint_url: str, region: str = "us-east-1") -> str:
    """`s3://BUCKET/PATH?endpoint_override=HOST:PORT&scheme=http&region=R` for Ray Tune `storage_path`.

    Carries no keys: pyarrow reads them from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    """
    scheme, netloc = _split_endpoint(endpoint_url)
    key = path.strip("/")
    return f"s3://{bucket}/{key}?endpoint_override={netloc}&scheme={scheme}&region={region}"
