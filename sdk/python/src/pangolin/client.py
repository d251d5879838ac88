"""The synchronous client.

This module keeps the names 0.2.0 exported from it (``Sandbox``,
``SandboxResult``, ``CinchError``, ``DEFAULT_BASE_URL``), so imports such as
``from pangolin.client import Sandbox`` keep working.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType

import httpx

from ._base import DEFAULT_BASE_URL, SandboxBase
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

__all__ = ["DEFAULT_BASE_URL", "CinchError", "Sandbox", "SandboxResult"]


class Sandbox(SandboxBase):
    """Runs code in Cinch sandboxes, blocking until each run finishes.

    Used directly, every :meth:`run` opens and closes its own connection,
    exactly like 0.2.0. Used as a context manager, runs share a connection
    pool until the block exits::

        with Sandbox() as box:
            for snippet in snippets:
                print(box.run(snippet).stdout)

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

    _client: httpx.Client | None = None

    def run(
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

        A program that fails (non-zero exit, timeout, killed) is still a
        result; only a failed request raises.

        Args:
            code: The source code to run.
            language: ``"python"`` or ``"javascript"`` (aliases ``python3``,
                ``js``, ``node``).
            stdin: Text fed to the program's standard input.
            files: Files written into the program's working directory before
                it starts: ``{"data.csv": text, "logo.png": png_bytes}``, or a
                list of :class:`~pangolin.File` and ``(path, content)`` pairs.
                ``str`` content is sent as UTF-8, ``bytes`` as base64. Paths
                are relative (no ``..``, NUL or leading ``/``, at most 255
                bytes); by default at most 64 files and 10 MiB in all.
            args: Command-line arguments: ``sys.argv[1:]`` in Python,
                ``process.argv.slice(2)`` in JavaScript (at most 64, each at
                most 4 KiB).
            env: Extra environment variables (names ``[A-Za-z_][A-Za-z0-9_]*``,
                at most 64 and 64 KiB in all). ``PATH``, ``HOME``, ``LANG``,
                ``PYTHON*``, ``NODE_*`` and ``LD_*`` are refused.
            timeout_ms: A wall-clock limit for this run, in milliseconds,
                from 1 to the server's limit, which it can only lower. A run
                that hits it has ``timed_out`` set. (``timeout`` on the client
                is how long to wait for the answer; keep it above this.)
            max_credits: The most this run may cost: it is stopped with
                ``termination == "credit_limit"`` before it would cost more,
                and charged at most this.
            idempotency_key: Makes the run idempotent for 24 hours: the same
                key with the same body returns the stored result and is
                charged once. A random key is generated when omitted, and
                reused across this call's retries.

        Arguments left at ``None`` are not sent, so a server that predates
        them keeps working. Only their types are checked here; the server
        enforces the limits and answers a bad path, encoding, variable or
        limit with HTTP 400 (:class:`~pangolin.BadRequestError`, naming the
        file or field), and files over a size limit with HTTP 413 (also a
        ``BadRequestError``).

        Returns:
            The program's output and exit status, and the files it left under
            ``out/`` (:attr:`~pangolin.SandboxResult.files`).

        Raises:
            ValueError: If ``code`` is empty or not a string, or a file's
                ``encoding`` does not fit its content.
            TypeError: If another argument has the wrong type.
            CinchError: Or a subclass, if the request failed after retries.
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
        with self._session() as client:
            attempt = 0
            while True:
                try:
                    return self._attempt(client, request)
                except CinchError as error:
                    if attempt >= self.max_retries or not is_retryable(error):
                        raise
                    time.sleep(retry_delay(attempt, error))
                    attempt += 1

    def stream(
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
    ) -> Iterator[StreamEvent]:
        """Runs ``code`` like :meth:`run`, yielding its output as it is written.

        Yields :class:`~pangolin.OutputChunk` values (``stream`` and ``text``)
        while the program runs, then one :class:`~pangolin.SandboxResult` (with
        the whole output again) as the last item::

            for event in box.stream(code):
                if isinstance(event, OutputChunk):
                    print(event.text, end="")
                else:
                    result = event

        Python's ``print`` is flushed at each line in a streamed run. Stopping
        early (``break``, or closing the iterator) hangs up: the server stops
        the run and charges what it used. Failures before the run starts are
        retried as in :meth:`run`; once output has arrived, nothing is retried.

        The arguments are those of :meth:`run`; the output files come in the
        final result.

        Raises:
            ValueError: If ``code`` is empty or not a string, or a file's
                ``encoding`` does not fit its content.
            TypeError: If another argument has the wrong type.
            CinchError: Or a subclass, if the request failed, or the run failed
                on the server's side after it began.
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
        with self._session() as client:
            attempt = 0
            while True:
                began = False
                try:
                    with client.stream(
                        "POST",
                        request.url,
                        headers=request.headers,
                        content=request.content,
                        timeout=self.timeout,
                    ) as response:
                        if not is_event_stream(response):
                            response.read()
                            yield parse_response(response)
                            return
                        began = True
                        reader = EventReader()
                        for chunk in response.iter_raw():
                            for name, data in reader.feed(chunk):
                                event = stream_event(name, data, response)
                                if event is not None:
                                    yield event
                                    if not isinstance(event, OutputChunk):
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
                time.sleep(retry_delay(attempt, failure))
                attempt += 1

    def close(self) -> None:
        """Closes the pooled connections opened by ``with Sandbox() as box``."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Sandbox:
        if self._client is None:
            self._client = httpx.Client()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _session(self) -> Iterator[httpx.Client]:
        if self._client is not None:
            yield self._client
        else:
            with httpx.Client() as client:
                yield client

    def _attempt(self, client: httpx.Client, request: RunRequest) -> SandboxResult:
        try:
            response = client.post(
                request.url,
                headers=request.headers,
                content=request.content,
                timeout=self.timeout,
            )
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise transport_error(exc) from exc
        return parse_response(response)
