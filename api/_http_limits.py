"""HTTP/1.1 connection limits Hypercorn lacks: header time-out, per-address cap, JSON errors.

Hypercorn 0.18's Trio worker (``hypercorn.trio.run.worker_serve``) gives a
connection only its keep-alive time-out, so a client dribbling its headers a
byte a second keeps it for 75 s, and any number of them can.  Its own error
answers (400, 431 from h11) have empty bodies.  And Quart-Trio sends a
response while the request body may still be unread (its automatic OPTIONS
answer, an early error), leaving the keep-alive connection in a state where the
client's next request can go unanswered.

This module is the one place that knows Hypercorn's internals (pinned in
pyproject.toml):

* :func:`serve` is ``worker_serve`` cut down to what Cinch uses (plain TCP
  listeners, the lifespan, the shutdown trigger, the graceful time-out), with
  our own connection handler in place of Hypercorn's.
* The handler turns away a client address past ``max_connections_per_ip``
  open connections with a JSON ``429`` (and ``Retry-After``).
* :class:`_LimitedTCPServer` (a subclass of Hypercorn's ``TCPServer``) cuts
  a connection whose request headers are not complete ``header_timeout_s``
  after its first byte (or after the connection opened), or whose body stops
  arriving for that long, with a JSON ``408``; and makes h11's own error
  answers (400, 431) JSON ``{"error"}``.
* :class:`DrainBody` (ASGI middleware) holds every response until its
  request's body has been read to the end, so every answer consumes its body.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

log = logging.getLogger("cinch.http")

# How long a response waits for the rest of its request's body before the
# connection is marked to close instead.
DRAIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = 5.0
    max_connections_per_ip: int = 256


@dataclass
class HttpStatistics:
    """Counters of the limits at work (read by /metrics)."""

    open_connections: int = 0
    header_timeouts_total: int = 0
    refused_per_ip_total: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)


def error_bytes(
    status: int, reason: str, message: str, extra: dict[str, str] | None = None
) -> bytes:
    """A whole HTTP/1.1 answer with a JSON ``{"error"}`` body that closes the connection."""
    body = json.dumps({"error": message}).encode()
    headers = {
        "content-type": "application/json; charset=utf-8",
        "content-length": str(len(body)),
        "connection": "close",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


_H11_ERRORS = {
    431: ("Request Header Fields Too Large", "the request headers are too large"),
    400: ("Bad Request", "malformed HTTP request"),
}


async def _json_h11_error(protocol: H11Protocol, status_code: int) -> None:
    """Replaces ``H11Protocol._send_error_response``: the same answer, with a JSON body."""
    reason, message = _H11_ERRORS.get(status_code, ("Error", "bad request"))
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *protocol.config.response_headers("h11"),
    ]
    await protocol._send_h11_event(
        h11.Response(status_code=status_code, headers=headers, reason=reason.encode())
    )
    await protocol._send_h11_event(h11.Data(data=body))
    await protocol._send_h11_event(h11.EndOfMessage())


class _LimitedTCPServer(TCPServer):
    """Hypercorn's connection handler plus a header/body read time-out."""

    def __init__(self, *args: Any, limits: HttpLimits, stats: HttpStatistics) -> None:
        super().__init__(*args)
        self._limits = limits
        self._stats = stats
        # Headers must be complete by then (inf while a request is being handled
        # and while the connection idles between requests: keep-alive applies).
        self._header_deadline = trio.current_time() + limits.header_timeout_s
        self._in_request = False

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            self._in_request = not event.idle
            self._header_deadline = math.inf
        await super().protocol_send(event)

    def _their_body_pending(self) -> bool:
        inner = getattr(self.protocol, "protocol", None)
        connection = getattr(inner, "connection", None)
        return isinstance(connection, h11.Connection) and connection.their_state is h11.SEND_BODY

    async def _read_data(self) -> None:
        inner = getattr(self.protocol, "protocol", None)
        if isinstance(inner, H11Protocol):
            inner._send_error_response = partial(_json_h11_error, inner)  # type: ignore[method-assign]
        timeout_s = self._limits.header_timeout_s
        while True:
            deadline = self._header_deadline
            if self._in_request and self._their_body_pending():
                deadline = trio.current_time() + timeout_s  # the body keeps coming
            try:
                with trio.fail_at(deadline):
                    data = await self.stream.receive_some(MAX_RECV)
            except trio.TooSlowError:
                self._stats.header_timeouts_total += 1
                if not self._in_request:
                    await self._send_raw(
                        error_bytes(
                            408,
                            "Request Timeout",
                            f"the request was not received within {timeout_s:g} s",
                        )
                    )
                break
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            else:
                if data and not self._in_request and self._header_deadline == math.inf:
                    # The first byte of the next request on a kept-alive connection.
                    self._header_deadline = trio.current_time() + timeout_s
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
        await self.protocol.handle(Closed())

    async def _send_raw(self, data: bytes) -> None:
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def _refuse(stream: trio.SocketStream, data: bytes) -> None:
    """Answer ``data`` and close without a reset: read what the client sent, briefly."""
    with trio.move_on_after(1):
        try:
            await stream.send_all(data)
            await stream.send_eof()
            while await stream.receive_some(MAX_RECV):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await stream.aclose()


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "unknown"
    return str(peer[0]) if isinstance(peer, tuple) else "unix"


async def serve(
    app: Any,
    config: HypercornConfig,
    limits: HttpLimits,
    *,
    stats: HttpStatistics | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over plain HTTP on ``config.bind`` until ``shutdown_trigger`` returns."""
    stats = stats if stats is not None else HttpStatistics()
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)

    async def handle(server_nursery: trio.Nursery, stream: trio.SocketStream) -> None:
        host = _peer_host(stream)
        if stats.per_ip.get(host, 0) >= limits.max_connections_per_ip:
            stats.refused_per_ip_total += 1
            message = (
                f"too many open connections from this address (limit "
                f"{limits.max_connections_per_ip}); close some or retry shortly"
            )
            await _refuse(
                stream, error_bytes(429, "Too Many Requests", message, {"retry-after": "1"})
            )
            return
        stats.per_ip[host] = stats.per_ip.get(host, 0) + 1
        stats.open_connections += 1
        try:
            await _LimitedTCPServer(
                asgi,
                config,
                context,
                ConnectionState(lifespan_state.copy()),
                stream,
                limits=limits,
                stats=stats,
            )
        finally:
            stats.open_connections -= 1
            left = stats.per_ip[host] - 1
            if left:
                stats.per_ip[host] = left
            else:
                del stats.per_ip[host]

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            partial(handle, server_nursery),
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split(ShutdownError)
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class DrainBody:
    """ASGI middleware: a response starts only once its request's body has been read.

    Quart-Trio may answer (its automatic OPTIONS, an early error) while the body
    is still arriving, and then stops reading it.  Its own reader task keeps
    reading until the response is sent, so waiting here lets it finish.  A
    body that does not end within ``DRAIN_TIMEOUT_S`` gets the answer with
    ``connection: close``.
    """

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or not _has_body(scope):
            await self._app(scope, receive, send)
            return
        done = trio.Event()

        async def receive_() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect" or (
                message["type"] == "http.request" and not message.get("more_body", False)
            ):
                done.set()
            return message

        async def send_(message: Any) -> None:
            if message["type"] == "http.response.start" and not done.is_set():
                if message.get("status") != 413:  # too large: not worth reading
                    with trio.move_on_after(DRAIN_TIMEOUT_S):
                        await done.wait()
                if not done.is_set():
                    message = {
                        **message,
                        "headers": [*message.get("headers", []), (b"connection", b"close")],
                    }
            await send(message)

        await self._app(scope, receive_, send_)


def _has_body(scope: Any) -> bool:
    for name, value in scope.get("headers", []):
        lowered = name.lower()
        if lowered == b"content-length":
            return value.strip() not in (b"0", b"")
        if lowered == b"transfer-encoding":
            return True
    return False
