"""Infrastructure faults: tell a storage or tracking outage from a trial's own error, and wait it out.

A trial talks to two services it does not own: the study storage (pyarrow's S3 filesystem,
through Ray Tune) and the MLflow server. When one of them restarts, its errors (connection
refused or reset, timeouts, HTTP 5xx), and a full disk or quota (ENOSPC, EDQUOT) on the storage
or the local work folder, say nothing about the configuration being trained, so
the trial retries the call with backoff for a bounded time (`search.infra_retry_s`) instead
of failing; only when the service stays away that long does the trial fail, with an
`InfraUnavailable` error that names what it waited for.
"""

from __future__ import annotations

import errno
import functools
import logging
import re
import time
from typing import Any, Callable, TypeVar

from ..errors import SamsNetError, one_line

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BUDGET_S = 300.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0  # poll at least this often: a service that is back is used within seconds
# Phrases of transient network trouble in error messages: pyarrow's S3 errors are plain
# OSErrors (`AWS Error NETWORK_CONNECTION ... curlCode: 7`), MLflow wraps urllib3's errors
# in an MlflowException ("Max retries exceeded ... Connection refused").
_TRANSIENT = re.compile(
    r"NETWORK_CONNECTION|SERVICE_UNAVAILABLE|SLOW_DOWN|REQUEST_TIMEOUT|INTERNAL_FAILURE|curlCode: (?:7|28|52|55|56)"
    r"|connection (?:refused|reset|aborted)|could not connect|failed to connect|max retries exceeded"
    r"|timed out|remote ?disconnected|remote end closed|broken pipe|temporarily unavailable"
    r"|service unavailable|bad gateway|gateway time-?out|(?:error|status) code:? 5\d\d|\bHTTP 5\d\d",
    re.IGNORECASE,
)
# A full disk or quota, on the storage or the local work folder, is an outage too: it says
# nothing of the configuration, and space can be freed while the trial waits. pyarrow and S3
# stores give it as text; torch.save on a full disk fails its writer without an errno.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL = re.compile(
    r"no space left on device|disk quota exceeded|\[errno (?:28|122)\]|quotaexceeded|insufficient ?storage"
    r"|PytorchStreamWriter failed writing file|inline_container\.cc:\d+\] \. unexpected pos",
    re.IGNORECASE,
)
# Exception classes of HTTP client libraries that mean "no answer" (matched by name, so
# that this module imports none of them).
_TRANSIENT_CLASSES = (
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "ProtocolError",
    "NewConnectionError",
    "MaxRetryError",
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
)
# MLflow error codes of a server that could not do the work right now (HTTP 5xx, 429).
_TRANSIENT_MLFLOW_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")


class InfraUnavailable(SamsNetError):
    """The study storage or the tracking server stayed unreachable for the whole retry budget."""


def is_infra_error(error: BaseException) -> bool:
    """True for errors of an unreachable or overloaded service, not of the work itself."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, InfraUnavailable):
            return True
        if isinstance(e, SamsNetError):  # our own errors are decisions, never outages
            return False
        if _looks_transient(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _looks_transient(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
        return True
    if any(cls.__name__ in _TRANSIENT_CLASSES for cls in type(e).__mro__ if cls.__module__ != "builtins"):
        return True
    # A server's answer (RestException) with a server-side code; a client-side MlflowException
    # carries INTERNAL_ERROR by default, so for those only the message counts.
    if type(e).__name__ == "RestException" and getattr(e, "error_code", None) in _TRANSIENT_MLFLOW_CODES:
        return True
    message_counts = isinstance(e, (OSError, RuntimeError)) or type(e).__name__ in ("MlflowException", "RestException")
    return message_counts and bool(_TRANSIENT.search(str(e)) or _DISK_FULL.search(str(e)))


def retry(
    fn: Callable[..., T],
    *args: Any,
    budget_s: float = DEFAULT_BUDGET_S,
    what: str = "call",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    **kwargs: Any,
) -> T:
    """`fn(*args, **kwargs)`, retried with exponential backoff while it fails for infrastructure
    reasons, for at most `budget_s` seconds from the first failure; other errors pass through."""
    deadline: float | None = None
    delay = FIRST_DELAY_S
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_infra_error(e) or isinstance(e, InfraUnavailable):
                raise
            now = clock()
            deadline = now + budget_s if deadline is None else deadline
            if now >= deadline:
                raise InfraUnavailable(
                    f"{what}: still failing after {budget_s:g} s of retries ({one_line(e, typed=True)})"
                ) from e
            log.warning("%s failed (%s); retrying in %.1f s", what, one_line(e, typed=True), min(delay, deadline - now))
            sleep(min(delay, deadline - now))
            delay = min(2 * delay, MAX_DELAY_S)


class RetryingClient:
    """An MlflowClient whose every call is `retry`-ed: a tracking server restart costs a
    trial a wait, not its life. Calls that create things (`create_run`) are retried by the
    caller as a find-or-create instead, so that a lost answer never makes two."""

    def __init__(self, client: Any, budget_s: float = DEFAULT_BUDGET_S):
        self._client = client
        self._budget_s = budget_s

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copy, unpickle): no recursion through _client
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return functools.partial(retry, attr, budget_s=self._budget_s, what=f"MLflow {name}")

    @property
    def raw(self) -> Any:
        """The client without retries (for calls whose retry the caller arranges)."""
        return self._client
