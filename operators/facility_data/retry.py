"""Bounded retries with exponential backoff, and the one classification of transient faults per service: S3, Rucio,
Butler registries and Globus (``is_transient_<service>``).

Today's tool loops forever on a repeated Rucio DatabaseException; here every call gets a fixed number of attempts,
then the last error propagates (and Airflow's own task retries take over).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Attempts per call and first delay; the delay doubles up to MAX_DELAY. Module-level so tests can shorten them.
ATTEMPTS = 4
BASE_DELAY = 0.5
MAX_DELAY = 8.0

_S3_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "503", "500",
                       "RequestTimeTooSkewed", "Throttling"}
#: Rucio's own exception names for a server that cannot be reached or answered with a server-side fault. The client
#: raises ServerConnectionException once its own immediate attempts against a stopped server are spent.
_RUCIO_TRANSIENT = {"DatabaseException", "ServiceUnavailable", "RucioException", "ServerConnectionException",
                    "ConnectionError", "ConnectTimeout", "ReadTimeout", "ChunkedEncodingError"}


def is_transient_s3(exc: BaseException) -> bool:
    """Network errors and 5xx/throttling answers of an S3 service (not 4xx such as NoSuchKey)."""
    try:
        from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - boto3 is in the lock
        return False
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return str(err.get("Code")) in _S3_TRANSIENT_CODES or status >= 500
    # builtin ConnectionError: reset, refused, aborted; HTTPClientError: botocore's wrapping of a broken stream
    return isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError | ConnectionError
                      | TimeoutError)


def is_transient_rucio(exc: BaseException) -> bool:
    """Rucio server/database hiccups and connection errors; not logical answers such as DataIdentifierNotFound."""
    return type(exc).__name__ in _RUCIO_TRANSIENT or isinstance(exc, ConnectionError | TimeoutError)


class Attempts:
    """The attempt budget of one operation, for callers that cannot simply call again (a stream resumed where it
    broke): ``failed(exc)`` re-raises a permanent error or the last one, else logs and waits the backoff."""

    def __init__(self, *, transient: Callable[[BaseException], bool], what: str, attempts: int | None = None):
        self.transient, self.what = transient, what
        self.attempts = attempts or ATTEMPTS
        self.attempt, self.delay = 1, BASE_DELAY

    def failed(self, exc: BaseException) -> None:
        if not self.transient(exc):
            raise exc
        if self.attempt >= self.attempts:
            log.error("%s: gave up after %d attempts: %s: %s", self.what, self.attempts, type(exc).__name__, exc)
            raise exc
        self.attempt += 1
        log.warning("%s: attempt %d/%d in %.1f s: %s: %s", self.what, self.attempt, self.attempts, self.delay,
                    type(exc).__name__, exc)
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, MAX_DELAY)


def is_transient_butler(exc: BaseException) -> bool:
    """A Butler registry that is locked or busy (SQLite: another connection holds a write transaction longer than
    the Butler's own busy wait) or whose database connection dropped; not schema or data errors."""
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError
    except ImportError:  # pragma: no cover - sqlalchemy comes with the Butler
        return False
    if isinstance(exc, OperationalError):
        text = str(exc.orig if exc.orig is not None else exc).lower()
        return "database is locked" in text or "database is busy" in text or bool(exc.connection_invalidated)
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


#: Globus answers worth another try; any other 4xx (404 no such task, 403 not allowed, ...) is final.
GLOBUS_TRANSIENT_STATUS = (429, 500, 502, 503, 504)


def is_transient_globus(exc: BaseException) -> bool:
    """A Globus 5xx/429 answer or a network error (globus_sdk.NetworkError); not 4xx such as 404 or 403."""
    import globus_sdk

    if isinstance(exc, globus_sdk.GlobusAPIError):
        return exc.http_status in GLOBUS_TRANSIENT_STATUS
    return isinstance(exc, globus_sdk.NetworkError)


def globus_retry_config():
    """The retry settings of every Globus client: globus_sdk's own retry loop (it also refreshes expired tokens)
    with this module's budget, transient statuses and backoff, each retry logged like call_with_retry's."""
    from globus_sdk.transport import RetryConfig

    def backoff(ctx) -> float:
        delay = ctx.backoff if ctx.backoff is not None else min(BASE_DELAY * 2 ** ctx.attempt, MAX_DELAY)
        if ctx.response is not None:
            what, why = ctx.response.request.url, f"HTTP {ctx.response.status_code}"
        else:
            what, why = getattr(getattr(ctx.exception, "request", None), "url", "?"), repr(ctx.exception)
        log.warning("globus %s: attempt %d/%d in %.1f s: %s", what, ctx.attempt + 2, ATTEMPTS, delay, why)
        return delay

    return RetryConfig(max_retries=ATTEMPTS - 1, max_sleep=MAX_DELAY, backoff=backoff,
                       transient_error_status_codes=GLOBUS_TRANSIENT_STATUS, retry_after_status_codes=(429, 503))


def call_with_retry(fn: Callable[[], T], *, transient: Callable[[BaseException], bool], what: str,
                    attempts: int | None = None) -> T:
    """Call ``fn``; on a transient error wait and try again, at most ``attempts`` times in all."""
    budget = Attempts(transient=transient, what=what, attempts=attempts)
    while True:
        try:
            return fn()
        except Exception as exc:
            budget.failed(exc)
