"""Retry policy shared by the sync and async clients.

A run is retried when the server refused it without doing any work (HTTP 429
or 503) or when no response arrived because of a connection failure. Read
timeouts are not retried: the program may still be running on the server.
Every attempt of a run carries the same ``Idempotency-Key``, so a retry of a
run that did reach the server is answered from the stored result and charged
once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from .errors import (
    CinchError,
    NetworkError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
)

#: First back-off delay in seconds; doubled on every further attempt.
BASE_DELAY = 0.5
#: Upper bound of the exponential back-off, in seconds.
MAX_BACKOFF = 8.0
#: Longest ``Retry-After`` the client will honour, in seconds.
MAX_RETRY_AFTER = 30.0


def parse_retry_after(value: str | None) -> float | None:
    """Parses a ``Retry-After`` header.

    Args:
        value: The header value: delta-seconds or an HTTP date.

    Returns:
        The number of seconds to wait (never negative), or ``None`` if the
        header is absent or unparseable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def is_retryable(error: CinchError) -> bool:
    """Tells whether a failed attempt may be retried.

    Args:
        error: The exception the attempt raised.

    Returns:
        True for rate limiting, lack of capacity and connection failures.
    """
    if isinstance(error, (RateLimitError, ServiceUnavailableError)):
        return True
    return isinstance(error, NetworkError) and not isinstance(error, RequestTimeoutError)


def retry_delay(
    attempt: int,
    error: CinchError,
    rand: Callable[[], float] = random.random,
) -> float:
    """Computes how long to wait before the next attempt.

    The server's ``Retry-After`` wins when present (capped at
    :data:`MAX_RETRY_AFTER`); otherwise the delay is an exponential back-off
    with "equal jitter": half fixed, half random.

    Args:
        attempt: Zero-based number of the attempt that just failed.
        error: The exception the attempt raised.
        rand: Source of uniform randomness in [0, 1), replaceable in tests.

    Returns:
        The delay in seconds.
    """
    if (
        isinstance(error, (RateLimitError, ServiceUnavailableError))
        and error.retry_after is not None
    ):
        return min(error.retry_after, MAX_RETRY_AFTER)
    backoff = min(MAX_BACKOFF, BASE_DELAY * 2.0**attempt)
    return backoff / 2 + rand() * backoff / 2
