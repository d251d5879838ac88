"""Exceptions raised by the Cinch SDK.

Every exception the SDK raises for a failed request derives from
:class:`CinchError`, so ``except CinchError`` keeps working exactly as it did
in 0.2.0. The subclasses let callers react to specific failures:

==========  ==================================================
HTTP        Exception
==========  ==================================================
400, 413    :class:`BadRequestError`
401         :class:`AuthenticationError`
402         :class:`InsufficientCreditsError`
409         :class:`ConflictError` (a :class:`BadRequestError`)
429         :class:`RateLimitError`
503         :class:`ServiceUnavailableError`
other       :class:`CinchError`
no reply    :class:`NetworkError` / :class:`RequestTimeoutError`
==========  ==================================================

A program that exits with a non-zero status is a normal result, never an
exception: inspect :attr:`pangolin.SandboxResult.exit_code` instead.
"""

from __future__ import annotations


class CinchError(Exception):
    """Base class for every error raised by the SDK for a failed request.

    Attributes:
        message: Human-readable description, usually the server's ``error``.
        status: HTTP status code, or ``None`` when no response was received.
        request_id: The server's ``X-Request-Id``, useful in support requests.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id


class NetworkError(CinchError):
    """No HTTP response was received (connection refused, reset, DNS failure)."""


class RequestTimeoutError(NetworkError):
    """The server did not answer within the client's ``timeout``.

    The run may still have completed on the server. It is not retried
    automatically; retrying with the same ``idempotency_key`` is safe.
    """


class BadRequestError(CinchError):
    """The server rejected the request as invalid (HTTP 400) or too large (HTTP 413)."""


class ConflictError(BadRequestError):
    """The idempotency key was already used with a different request body (HTTP 409)."""


class AuthenticationError(CinchError):
    """The API key is missing, malformed or revoked (HTTP 401)."""


class InsufficientCreditsError(CinchError):
    """The account has no credits left for this run (HTTP 402)."""


class _RetryAfterError(CinchError):
    """A transient refusal that carries the server's ``Retry-After`` hint.

    Attributes:
        retry_after: Seconds the server asked the client to wait, if it said.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status, request_id=request_id)
        self.retry_after = retry_after


class RateLimitError(_RetryAfterError):
    """Too many requests for this API key (HTTP 429). Retried automatically."""


class ServiceUnavailableError(_RetryAfterError):
    """No sandbox capacity right now (HTTP 503). Retried automatically."""


_ERRORS_BY_STATUS: dict[int, type[CinchError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    409: ConflictError,
    413: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_for_status(
    status: int,
    message: str,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> CinchError:
    """Builds the exception that matches an HTTP error status.

    Args:
        status: The HTTP status code of the response.
        message: The error message to carry.
        request_id: The response's ``X-Request-Id`` header, if any.
        retry_after: The parsed ``Retry-After`` header, if any.

    Returns:
        An instance of the most specific :class:`CinchError` subclass.
    """
    cls = _ERRORS_BY_STATUS.get(status, CinchError)
    if issubclass(cls, _RetryAfterError):
        return cls(message, status, request_id=request_id, retry_after=retry_after)
    return cls(message, status, request_id=request_id)
