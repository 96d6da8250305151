"""Can this machine reach a study's storage and tracking server? One short try each.

`validate` reports the answer, so that a study whose `storage: s3://...` goes to the wrong
endpoint, or whose tracking server is down, is caught before any trial starts instead of
minutes into the search (pyarrow and MLflow retry for a long time by default).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

from . import identity

TIMEOUT_S = 3.0


def storage_problem(storage: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when `storage` can be listed (S3: one request, no retries); else what went wrong."""
    if not identity.is_s3(storage):
        return None  # a local folder is created on first use
    import pyarrow.fs as pafs

    parts = urlsplit(storage)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    options = {k: query[k] for k in ("endpoint_override", "scheme", "region") if k in query}
    try:
        fs = pafs.S3FileSystem(connect_timeout=timeout_s, request_timeout=timeout_s,
                               retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1), **options)  # fmt: skip
        fs.get_file_info(parts.netloc + parts.path.rstrip("/"))
    except (OSError, ValueError) as e:
        where = options.get("endpoint_override", "the AWS endpoint (no endpoint_override= in the URI, no AWS_ENDPOINT_URL)")
        return f"cannot access storage {identity.display_uri(storage)} at {where}: {_first_line(e)}"
    return None


def tracking_problem(uri: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when an http(s) tracking server answers its /health within `timeout_s` (other
    URIs are local stores); else what went wrong."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:  # noqa: S310 (http only)
            if r.status == 200:
                return None
            return f"tracking server {uri} answered /health with HTTP {r.status}"
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):  # an authenticated server is up
            return None
        return f"tracking server {uri} answered /health with HTTP {e.code}"
    except (OSError, ValueError) as e:
        return f"cannot reach tracking server {uri}: {_first_line(e)} (is it started? `samsnet-search infra up`)"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
