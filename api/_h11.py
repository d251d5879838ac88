"""A lean HTTP/1.1 server and client on trio and h11, for the api -> agent hop.

The API and the agent talk over a private, token-authenticated link where every
millisecond of a run's path counts (docs/scale-out.md section 5: the hop's budget
is 1 ms).  Quart on Hypercorn and httpx cost about 4-5 ms per call here, most of
it in their generality (ASGI scopes, routing, middlewares, request and response
wrappers).  This module is HTTP/1.1 and nothing else: h11 parses and frames, trio
moves the bytes, and the caller gets the request's bytes and answers with bytes
or an async iterator of chunks (sent chunked, each as soon as it exists).

Server (:func:`serve`): keep-alive connections, a header time-out from the
first byte of each request, a body limit (413), a cap on open connections (the
rest wait in the listen backlog), and a handler's exception answered as a JSON
500 (and logged), never a dropped connection.  While a streamed answer is being
sent, the connection is watched: the client hanging up calls the answer's
``on_disconnect`` at once (a run nobody will read stops).

Client (:class:`Client`): a pool of keep-alive connections to one host and
port, TCP_NODELAY, an idle connection checked for the peer's hang-up before it
is reused (so a restarted agent costs no failed call), bounded connect and
read times.
"""

from __future__ import annotations

import json
import logging
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

log = logging.getLogger("cinch.h11")

RECEIVE_BYTES = 65536
MAX_HEADER_BYTES = 64 * 1024
MAX_IDLE_S = 30.0  # a client's idle connection is not reused after this (servers keep 75 s)


class HttpError(Exception):
    """A client call failed: ``connected`` says whether the request may have reached
    the server (False: nothing was sent)."""

    def __init__(self, message: str, *, connected: bool) -> None:
        super().__init__(message)
        self.connected = connected


@dataclass
class Request:
    method: str
    path: str  # the target without its query string
    query: str
    headers: dict[str, str]  # lower-case names; a repeated name keeps the last
    body: bytes


@dataclass
class Response:
    """An answer: ``body`` is bytes (sent with Content-Length) or an async iterator
    of chunks (sent chunked). ``on_disconnect`` runs if the client hangs up before a
    streamed answer ends."""

    status: int
    body: bytes | AsyncIterator[bytes] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    on_disconnect: Callable[[], None] | None = None


def json_response(
    body: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    return Response(status, data, list(headers))


class Last(bytes):
    """A streamed answer's final chunk: sent in one write with the end of the answer."""


Handler = Callable[[Request], Awaitable[Response]]


# -- server ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float = 5.0
    max_body_bytes: int = 1 << 20
    max_connections: int = 1024
    keep_alive_s: float = 75.0  # an idle connection is closed after this


async def serve(
    handler: Handler,
    host: str,
    port: int,
    limits: ServerLimits = ServerLimits(),
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host:port`` until cancelled or ``shutdown_trigger``
    returns (then the listeners close and open connections are cut).

    ``task_status.started`` gets the bound addresses as ``http://host:port``.
    """
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound = [_url(lst.socket.getsockname()) for lst in listeners]
    slots = trio.CapacityLimiter(limits.max_connections)

    async def accept_loop(listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                token = object()  # this connection's slot, held from before its accept
                await slots.acquire_on_behalf_of(token)
                try:
                    stream = await listener.accept()
                except BaseException:
                    slots.release_on_behalf_of(token)
                    raise
                nursery.start_soon(_connection, stream, handler, limits, slots, token)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener)
        task_status.started(bound)
        if shutdown_trigger is not None:
            await shutdown_trigger()
            nursery.cancel_scope.cancel()


def _url(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _connection(
    stream: trio.SocketStream,
    handler: Handler,
    limits: ServerLimits,
    slots: trio.CapacityLimiter,
    token: object,
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        async with stream:
            while True:
                if not await _serve_one(stream, conn, handler, limits):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception:
        # A bug in one connection (a streamed body that raised, a framing error of
        # ours) closes that connection, never the server.
        log.exception("HTTP connection failed")
    finally:
        slots.release_on_behalf_of(token)


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(RECEIVE_BYTES)
        conn.receive_data(data)  # b"" is the peer's EOF


async def _serve_one(
    stream: trio.SocketStream, conn: h11.Connection, handler: Handler, limits: ServerLimits
) -> bool:
    """One request and its answer; False when the connection is over."""
    # Idle between requests up to keep_alive_s; then the header time-out runs from
    # the request's first byte (h11 buffers what arrived with the last request).
    if not conn.trailing_data[0]:
        with trio.move_on_after(limits.keep_alive_s) as idle:
            data = await stream.receive_some(RECEIVE_BYTES)
            conn.receive_data(data)
        if idle.cancelled_caught or not data:
            return False
    try:
        # The head within the time-out; then the body may take as long as it keeps
        # arriving (each piece within the time-out: a big upload on a slow link is fine).
        with trio.fail_after(limits.header_timeout_s):
            event = await _next_event(stream, conn)
        if isinstance(event, h11.ConnectionClosed):
            return False
        if not isinstance(event, h11.Request):
            return False
        head = event
        length = _content_length(head)
        if length is not None and length > limits.max_body_bytes:
            await _send_simple(stream, conn, 413, {"error": "request body too large"}, close=True)
            return False
        chunks: list[bytes] = []
        size = 0
        while True:
            with trio.fail_after(limits.header_timeout_s):
                event = await _next_event(stream, conn)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limits.max_body_bytes:
                    await _send_simple(
                        stream, conn, 413, {"error": "request body too large"}, close=True
                    )
                    return False
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
    except h11.RemoteProtocolError as exc:
        with suppress(h11.LocalProtocolError):
            await _send_simple(stream, conn, exc.error_status_hint, {"error": str(exc)}, close=True)
        return False
    except trio.TooSlowError:
        with suppress(h11.LocalProtocolError):
            await _send_simple(stream, conn, 408, {"error": "request timed out"}, close=True)
        return False

    target = head.target.decode("latin-1")
    path, _, query = target.partition("?")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
    request = Request(head.method.decode("ascii"), path, query, headers, b"".join(chunks))
    try:
        response = await handler(request)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = json_response({"error": "internal error"}, 500)
    await _send_response(stream, conn, response)
    return True


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            with suppress(ValueError):
                return int(value)
    return None


async def _send(stream: trio.SocketStream, conn: h11.Connection, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _send_simple(
    stream: trio.SocketStream, conn: h11.Connection, status: int, body: Any, *, close: bool
) -> None:
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    if close:
        headers.append(("Connection", "close"))
    if conn.our_state is not h11.SEND_RESPONSE:
        # No whole request head yet (a time-out mid-headers): h11 will not frame an
        # answer, so write it by hand; the connection closes after it.
        reason = {408: "Request Timeout", 413: "Content Too Large"}.get(status, "Error")
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        await stream.send_all(head.encode("latin-1") + b"\r\n" + data)
        return
    await _send(stream, conn, h11.Response(status_code=status, headers=headers))
    await _send(stream, conn, h11.Data(data=data))
    await _send(stream, conn, h11.EndOfMessage())


async def _send_response(
    stream: trio.SocketStream, conn: h11.Connection, response: Response
) -> None:
    headers = [("Content-Type", response.content_type), *response.headers]
    body = response.body
    if isinstance(body, bytes | bytearray):
        headers.append(("Content-Length", str(len(body))))
        # Head and body in one write: one segment for a small answer.
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        return
    headers.append(("Transfer-Encoding", "chunked"))
    await _send(stream, conn, h11.Response(status_code=response.status, headers=headers))
    hung_up = False

    async def watch(cancel: trio.CancelScope) -> None:
        # The client sends nothing until the answer ends (no pipelining here): EOF
        # or an error now means it went away.
        nonlocal hung_up
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if data:
            conn.receive_data(data)  # a pipelined request: h11 keeps it for later
            return
        hung_up = True
        cancel.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                ended = False
                async for chunk in body:
                    if isinstance(chunk, Last):
                        data = conn.send(h11.Data(data=chunk)) if chunk else b""
                        await stream.send_all(data + conn.send(h11.EndOfMessage()))
                        ended = True
                        break
                    if chunk:
                        await _send(stream, conn, h11.Data(data=chunk))
                if not ended:
                    await _send(stream, conn, h11.EndOfMessage())
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                hung_up = True
            nursery.cancel_scope.cancel()
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()
        if hung_up and response.on_disconnect is not None:
            response.on_disconnect()
    if hung_up:
        raise trio.BrokenResourceError("the client hung up mid-answer")


# -- client ---------------------------------------------------------------------------------


class ClientResponse:
    """An answer being read: ``status``, ``headers`` (lower-case names), then the body."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        conn: h11.Connection,
        stream: trio.SocketStream,
        timeout_s: float,
    ) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._stream = stream
        self._timeout_s = timeout_s
        self.complete = False

    async def next_chunk(self) -> bytes | None:
        """The body's next chunk as it arrives (None at its end), within ``timeout_s``."""
        while not self.complete:
            try:
                with trio.fail_after(self._timeout_s):
                    event = await _next_event(self._stream, self._conn)
            except trio.TooSlowError as exc:
                raise HttpError(f"no data in {self._timeout_s}s", connected=True) from exc
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                self.complete = True
            else:
                raise HttpError(f"the answer broke off ({type(event).__name__})", connected=True)
        return None

    def lines(self) -> _Lines:
        """The body's lines (without their newline), each as soon as it is whole."""
        return _Lines(self)

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)


class _Lines:
    """An async iterator of a body's lines (a class, not a generator: nothing to
    finalize when the caller stops early)."""

    def __init__(self, response: ClientResponse) -> None:
        self._response = response
        self._buffer = b""

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self._response.next_chunk()
            if chunk is None:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line
                raise StopAsyncIteration
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


class Client:
    """Keep-alive HTTP/1.1 connections to ``host:port``; ``headers`` go on every call."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        headers: Iterable[tuple[str, str]] = (),
        connect_timeout_s: float = 0.5,
        max_idle: int = 128,
    ) -> None:
        self.host = host
        self.port = port
        self._host_header = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self._headers = list(headers)
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        self._idle: list[tuple[trio.SocketStream, float]] = []  # (stream, idle since)
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for stream, _ in idle:
            await stream.aclose()

    async def _connection(self) -> tuple[trio.SocketStream, bool]:
        while self._idle:
            stream, since = self._idle.pop()
            # Well before the server's own keep-alive time-out, so that it never closes
            # a connection just as a request goes out on it.
            if trio.current_time() - since < MAX_IDLE_S and _still_open(stream):
                return stream, True
            await stream.aclose()
        try:
            with trio.fail_after(self._connect_timeout_s):
                stream = await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            raise HttpError(f"connect to {self._host_header}: {exc!r}", connected=False) from exc
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream, False

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: Iterable[tuple[str, str]] = (),
        timeout_s: float = 10.0,
    ) -> AsyncIterator[ClientResponse]:
        """Send a request; the answer's head is read, its body is the caller's to read.

        ``timeout_s`` bounds the wait for each read (the head, then each chunk).  The
        connection goes back to the pool only if the body was read to its end.
        """
        stream, reused = await self._connection()
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        all_headers = [
            ("Host", self._host_header),
            *self._headers,
            *headers,
            ("Content-Length", str(len(body))),
        ]
        keep = False
        try:
            try:
                data = (
                    conn.send(h11.Request(method=method, target=path, headers=all_headers))
                    + conn.send(h11.Data(data=body))
                    + conn.send(h11.EndOfMessage())
                )
                await stream.send_all(data)
            except (trio.BrokenResourceError, OSError) as exc:
                raise HttpError(f"send to {self._host_header}: {exc!r}", connected=reused) from exc
            try:
                with trio.fail_after(timeout_s):
                    event = await _next_event(stream, conn)
            except (trio.BrokenResourceError, OSError, h11.RemoteProtocolError) as exc:
                raise HttpError(f"{self._host_header}: {exc!r}", connected=True) from exc
            except trio.TooSlowError as exc:
                raise HttpError(
                    f"{self._host_header}: no answer in {timeout_s}s", connected=True
                ) from exc
            if not isinstance(event, h11.Response):
                raise HttpError(
                    f"{self._host_header}: the connection closed before the answer", connected=True
                )
            response = ClientResponse(
                event.status_code,
                {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers},
                conn,
                stream,
                timeout_s,
            )
            try:
                yield response
            except (trio.BrokenResourceError, OSError, h11.RemoteProtocolError) as exc:
                raise HttpError(f"{self._host_header}: {exc!r}", connected=True) from exc
            keep = (
                response.complete
                and conn.our_state is h11.DONE
                and conn.their_state is h11.DONE
                and not self._closed
                and len(self._idle) < self._max_idle
            )
        finally:
            if keep:
                self._idle.append((stream, trio.current_time()))
            else:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: Iterable[tuple[str, str]] = (),
        timeout_s: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """A whole call within ``timeout_s``: ``(status, headers, body)``."""
        try:
            with trio.fail_after(timeout_s):
                async with self.stream(
                    method, path, body, headers=headers, timeout_s=timeout_s
                ) as r:
                    data = await r.read()
        except trio.TooSlowError as exc:
            raise HttpError(
                f"{self._host_header}: no whole answer in {timeout_s}s", connected=True
            ) from exc
        return r.status, r.headers, data


def _still_open(stream: trio.SocketStream) -> bool:
    """An idle keep-alive connection the peer has not closed (nothing to read, no hang-up)."""
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    return not poller.poll(0)
