"""The asynchronous client, for asyncio and Trio alike (through httpx and anyio)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType

import anyio
import httpx

from ._base import SandboxBase
from ._http import (
    EventReader,
    RunRequest,
    is_event_stream,
    parse_response,
    stream_event,
    transport_error,
)
from ._retry import is_retryable, retry_delay
from .errors import CinchError
from .models import InputFiles, OutputChunk, SandboxResult, StreamEvent

__all__ = ["AsyncSandbox"]


class AsyncSandbox(SandboxBase):
    """Runs code in Cinch sandboxes without blocking the event loop.

    Works under asyncio and Trio. Used directly, every :meth:`run` opens and
    closes its own connection; used as an async context manager, runs share a
    connection pool until the block exits::

        async with AsyncSandbox() as box:
            result = await box.run("print(2 + 2)")

    Args:
        api_key: A ``cinch_live_...`` key; defaults to ``$CINCH_API_KEY``.
        base_url: The API root, e.g. ``http://127.0.0.1:8080`` for a server of
            your own; defaults to ``$CINCH_BASE_URL``, and without it to the
            hosted service, ``https://api.cinch.codes`` (which then gets the key).
        timeout: Seconds to wait for the server on each attempt.
        max_retries: Extra attempts after HTTP 429, HTTP 503 or a connection
            failure (0 disables retries).

    Raises:
        ValueError: If no API key is given or found in the environment.
    """

    _client: httpx.AsyncClient | None = None

    async def run(
        self,
        code: str,
        language: str = "python",
        *,
        stdin: str | None = None,
        files: InputFiles | None = None,
        args: Iterable[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
        max_credits: int | None = None,
        idempotency_key: str | None = None,
    ) -> SandboxResult:
        """Runs ``code`` in a fresh sandbox and returns its output.

        See :meth:`pangolin.Sandbox.run`; the arguments, result and errors
        are the same.
        """
        request = self._prepare(
            code,
            language,
            stdin,
            idempotency_key,
            files=files,
            args=args,
            env=env,
            timeout_ms=timeout_ms,
            max_credits=max_credits,
        )
        async with self._session() as client:
            attempt = 0
            while True:
                try:
                    return await self._attempt(client, request)
                except CinchError as error:
                    if attempt >= self.max_retries or not is_retryable(error):
                        raise
                    await anyio.sleep(retry_delay(attempt, error))
                    attempt += 1

    async def stream(
        self,
        code: str,
        language: str = "python",
        *,
        stdin: str | None = None,
        files: InputFiles | None = None,
        args: Iterable[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
        max_credits: int | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Runs ``code``, yielding its output as it is written, then its result.

        See :meth:`pangolin.Sandbox.stream`; use it with ``async for``. Leaving
        the loop early hangs up, which stops the run.
        """
        request = self._prepare(
            code,
            language,
            stdin,
            idempotency_key,
            stream=True,
            files=files,
            args=args,
            env=env,
            timeout_ms=timeout_ms,
            max_credits=max_credits,
        )
        async with self._session() as client:
            attempt = 0
            while True:
                began = False
                try:
                    async with client.stream(
                        "POST",
                        request.url,
                        headers=request.headers,
                        content=request.content,
                        timeout=self.timeout,
                    ) as response:
                        if not is_event_stream(response):
                            await response.aread()
                            yield parse_response(response)
                            return
                        began = True
                        reader = EventReader()
                        final: StreamEvent | None = None
                        async for chunk in response.aiter_raw():
                            if final is not None:
                                continue
                            for name, data in reader.feed(chunk):
                                event = stream_event(name, data, response)
                                if event is None:
                                    continue
                                if not isinstance(event, OutputChunk):
                                    final = event
                                    break
                                yield event
                        if final is not None:
                            # The stream ends right after the result: read it to
                            # its end first, so no half-read generator of the HTTP
                            # client is left to the garbage collector (trio warns).
                            yield final
                            return
                    raise CinchError("the stream ended without a result", 200)
                except (httpx.TransportError, httpx.InvalidURL) as exc:
                    failure = transport_error(exc)
                    if began or attempt >= self.max_retries or not is_retryable(failure):
                        raise failure from exc
                except CinchError as error:
                    failure = error
                    if began or attempt >= self.max_retries or not is_retryable(failure):
                        raise
                await anyio.sleep(retry_delay(attempt, failure))
                attempt += 1

    async def aclose(self) -> None:
        """Closes the pooled connections opened by ``async with``."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> AsyncSandbox:
        if self._client is None:
            self._client = httpx.AsyncClient()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
        else:
            async with httpx.AsyncClient() as client:
                yield client

    async def _attempt(self, client: httpx.AsyncClient, request: RunRequest) -> SandboxResult:
        try:
            response = await client.post(
                request.url,
                headers=request.headers,
                content=request.content,
                timeout=self.timeout,
            )
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise transport_error(exc) from exc
        return parse_response(response)
