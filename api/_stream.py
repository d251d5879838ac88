"""Server-sent events for ``POST /run`` with ``Accept: text/event-stream``.

The wire format only; the run itself (admission, billing) is in ``_runs``::

    event: stdout            data: {"text": "..."}   output as it arrives
    event: stderr            data: {"text": "..."}
    event: result            data: the one-shot answer's JSON; the stream ends
    event: error             data: {"error": "..."}  our failure after the start

A stream's events travel from the task that drives the run to the response body
over an unbounded memory channel: the output cap bounds what it can hold, and a
slow client must never hold up the run (its deadline and its bill run on).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from quart import Response

EVENT_STREAM = "text/event-stream"
# No proxy (nginx: X-Accel-Buffering) or cache may hold the events back.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

StreamEvent = tuple[str, dict[str, Any]]


def wants_stream(accept: Any) -> bool:
    """Whether the request's ``Accept`` names ``text/event-stream`` itself (a
    wildcard such as ``*/*`` keeps the one-shot JSON answer)."""
    return any(value == EVENT_STREAM and quality > 0 for value, quality in accept)


# Not line breaks in SSE, but str.splitlines() and some readers split on them:
# escaped (as JSON allows), a client that splits lines naively still gets whole events.
_LINE_LIKE = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def encode_event(event: str, data: dict[str, Any]) -> bytes:
    """One event; JSON never holds a raw newline, so ``data`` is a single line."""
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        raw = text.translate(_LINE_LIKE).encode("utf-8")
    except UnicodeEncodeError:
        raw = json.dumps(data, separators=(",", ":")).encode("ascii")
    return b"event: " + event.encode("ascii") + b"\ndata: " + raw + b"\n\n"


def open_event_channel() -> tuple[
    trio.MemorySendChannel[StreamEvent], trio.MemoryReceiveChannel[StreamEvent]
]:
    return trio.open_memory_channel[StreamEvent](math.inf)


def send_event_nowait(channel: trio.MemorySendChannel[StreamEvent], event: str, data: Any) -> None:
    """Queue an event; dropped once the client is gone (nobody reads any more)."""
    try:
        channel.send_nowait((event, data))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def event_body(
    events: trio.MemoryReceiveChannel[StreamEvent], on_hang_up: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The response body: each event as it comes, until ``result`` or ``error``.

    Closed early (the client hung up, or the server is stopping the request),
    it calls ``on_hang_up``: the run must stop rather than go on unwatched.
    """
    finished = False
    try:
        with events:
            async for event, data in events:
                yield encode_event(event, data)
                if event in ("result", "error"):
                    finished = True
                    return
    finally:
        if not finished:
            on_hang_up()


def stream_response(body: AsyncIterator[bytes], headers: dict[str, str]) -> Response:
    response = Response(
        body,
        status=200,
        headers={**headers, **STREAM_HEADERS},
        content_type=EVENT_STREAM + "; charset=utf-8",
    )
    # Quart's default would cut a stream at 60 s; a run is bounded by its own limits.
    response.timeout = None
    return response


def single_event_response(event: str, data: dict[str, Any], headers: dict[str, str]) -> Response:
    """A whole stream of one event (an idempotent replay's ``result``)."""

    async def body() -> AsyncIterator[bytes]:
        yield encode_event(event, data)

    return stream_response(body(), headers)


class StartedOnce:
    """Wraps a ``task_status``: at ``started()``, first ``on_started()``, then the start.

    ``done`` says whether it happened: before it, errors are the caller's to
    answer (a plain JSON error); after it, the stream has begun.
    """

    def __init__(self, inner: trio.TaskStatus[None], on_started: Callable[[], None]) -> None:
        self._inner = inner
        self._on_started = on_started
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self._on_started()
        self._inner.started(value)
