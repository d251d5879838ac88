"""Configuration shared by :class:`~pangolin.Sandbox` and :class:`~pangolin.AsyncSandbox`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from ._http import RunRequest, prepare_run
from .models import InputFiles

#: The hosted service's API root, used when neither ``base_url`` nor
#: ``CINCH_BASE_URL`` is given. A self-hosted setup must set one of them, or
#: its key is sent here.
DEFAULT_BASE_URL = "https://api.cinch.codes"
#: Environment variable read when ``api_key`` is not passed.
API_KEY_ENV = "CINCH_API_KEY"
#: Environment variable read when ``base_url`` is not passed.
BASE_URL_ENV = "CINCH_BASE_URL"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2


class SandboxBase:
    """Holds the settings of a client; subclasses add the transport.

    The settings are plain attributes, as in 0.2.0, and may be changed
    between runs.

    Attributes:
        api_key: The bearer token sent with every request.
        base_url: The API root, without a trailing slash.
        timeout: Seconds to wait for the server on each attempt.
        max_retries: Extra attempts after a retryable failure.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        api_key = api_key or os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ValueError(f"api_key is required (pass it or set {API_KEY_ENV})")
        base_url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be a non-negative integer")
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, "
            f"api_key={_mask(self.api_key)!r}, timeout={self.timeout!r}, "
            f"max_retries={self.max_retries!r})"
        )

    def _prepare(
        self,
        code: str,
        language: str,
        stdin: str | None,
        idempotency_key: str | None,
        *,
        stream: bool = False,
        files: InputFiles | None = None,
        args: Iterable[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
        max_credits: int | None = None,
    ) -> RunRequest:
        return prepare_run(
            base_url=self.base_url,
            api_key=self.api_key,
            code=code,
            language=language,
            stdin=stdin,
            idempotency_key=idempotency_key,
            stream=stream,
            files=files,
            args=args,
            env=env,
            timeout_ms=timeout_ms,
            max_credits=max_credits,
        )


def _mask(api_key: str) -> str:
    """Keeps a key recognisable in logs without revealing it."""
    return f"{api_key[:11]}...{api_key[-4:]}" if len(api_key) > 19 else "..."
