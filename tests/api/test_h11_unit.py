"""The lean HTTP/1.1 server and client of the api -> agent hop (``api._h11``), on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from api._h11 import Client, HttpError, Last, Request, Response, ServerLimits, json_response, serve


async def _start(
    nursery: trio.Nursery, handler: Any, limits: ServerLimits | None = None
) -> tuple[str, int]:
    bound = await nursery.start(serve, handler, "127.0.0.1", 0, limits or ServerLimits())
    host, port = bound[0].removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def echo(request: Request) -> Response:
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "n": len(request.body),
            "auth": request.headers.get("authorization"),
        }
    )


async def test_keep_alive_calls_reuse_one_connection() -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, echo)
        client = Client(host, port, headers=[("Authorization", "Bearer t")])
        for i in range(5):
            status, headers, body = await client.request("POST", f"/x?i={i}", b"a" * i)
            assert status == 200
            assert headers["content-type"] == "application/json"
            assert json.loads(body) == {
                "method": "POST",
                "path": "/x",
                "query": f"i={i}",
                "n": i,
                "auth": "Bearer t",
            }
            assert len(client._idle) == 1
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_streamed_answer_arrives_chunk_by_chunk() -> None:
    gate = trio.Event()

    async def handler(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b'{"n":1}\n'
            await gate.wait()
            yield Last(b'{"n":2}\n')

        return Response(200, body(), content_type="application/x-ndjson")

    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, handler)
        client = Client(host, port)
        async with client.stream("GET", "/") as response:
            lines = response.lines()
            assert await lines.__anext__() == b'{"n":1}'  # before the rest exists
            gate.set()
            assert [x async for x in lines] == [b'{"n":2}']
        assert len(client._idle) == 1  # read to the end: reusable
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_client_hanging_up_mid_answer_calls_on_disconnect() -> None:
    hung_up = trio.Event()
    closed = trio.Event()

    async def handler(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"first\n"
                await trio.sleep_forever()
            finally:
                closed.set()

        return Response(200, body(), on_disconnect=hung_up.set)

    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, handler)
        client = Client(host, port)
        async with client.stream("GET", "/") as response:
            assert await response.lines().__anext__() == b"first"
        # Left unread: the connection is closed, not pooled.
        assert client._idle == []
        with trio.fail_after(5):
            await hung_up.wait()
            await closed.wait()
        nursery.cancel_scope.cancel()


async def test_body_over_the_limit_is_413_and_a_handler_error_is_a_json_500() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("bug")
        return await echo(request)

    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, handler, ServerLimits(max_body_bytes=100))
        client = Client(host, port)
        status, _, body = await client.request("POST", "/", b"x" * 101)
        assert status == 413
        assert "too large" in json.loads(body)["error"]
        status, _, body = await client.request("GET", "/boom")
        assert status == 500
        assert json.loads(body) == {"error": "internal error"}
        status, _, _ = await client.request("GET", "/fine")
        assert status == 200
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_slow_headers_get_408_and_the_connection_closes() -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, echo, ServerLimits(header_timeout_s=0.3))
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end
        with trio.fail_after(5):
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 408")
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_restarted_server_costs_no_failed_call() -> None:
    """An idle pooled connection the server closed is noticed before it is reused."""
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def first(task_status: Any) -> None:
            with scope:
                await serve(echo, "127.0.0.1", 0, task_status=task_status)

        bound = await nursery.start(first)
        port = int(bound[0].rsplit(":", 1)[1])
        client = Client("127.0.0.1", port)
        assert (await client.request("GET", "/"))[0] == 200
        scope.cancel()  # the server goes, and with it the pooled connection's peer
        await trio.sleep(0.1)
        await nursery.start(serve, echo, "127.0.0.1", port)
        assert (await client.request("GET", "/"))[0] == 200
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_nothing_listening_is_a_failure_before_anything_was_sent() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        client = Client("127.0.0.1", port)
        with pytest.raises(HttpError) as info:
            await client.request("GET", "/")
        assert info.value.connected is False


async def test_a_server_that_never_answers_times_out_as_connected() -> None:
    async def handler(request: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError

    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, handler)
        client = Client(host, port)
        with pytest.raises(HttpError) as info:
            await client.request("GET", "/", timeout_s=0.3)
        assert info.value.connected is True
        nursery.cancel_scope.cancel()


async def test_a_body_that_keeps_arriving_may_take_longer_than_the_header_time_out() -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, echo, ServerLimits(header_timeout_s=0.3))
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        for _ in range(5):  # 1 s in all, never 0.3 s without a byte
            await trio.sleep(0.2)
            await stream.send_all(b"x" * 10)
        with trio.fail_after(5):
            data = await stream.receive_some(4096)
        assert data.startswith(b"HTTP/1.1 200")
        assert b'"n":50' in data
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_streamed_answer_that_raises_closes_its_connection_not_the_server() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/bad":

            async def body() -> AsyncIterator[bytes]:
                yield b"part\n"
                raise RuntimeError("bug in a body")

            return Response(200, body())
        return await echo(request)

    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, handler)
        client = Client(host, port)
        with pytest.raises(HttpError):
            async with client.stream("GET", "/bad") as response:
                await response.read()
        status, _, _ = await client.request("GET", "/fine")
        assert status == 200
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_connections_past_the_cap_wait_for_a_free_one() -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, echo, ServerLimits(max_connections=1))
        first, second = Client(host, port), Client(host, port)
        assert (await first.request("GET", "/"))[0] == 200  # its connection stays open
        with trio.move_on_after(0.3) as waited:
            await second.request("GET", "/")
        assert waited.cancelled_caught  # not accepted while the first holds the slot
        await first.aclose()
        assert (await second.request("GET", "/"))[0] == 200
        await second.aclose()
        nursery.cancel_scope.cancel()


async def test_a_connection_idle_too_long_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    import api._h11

    async with trio.open_nursery() as nursery:
        host, port = await _start(nursery, echo)
        client = Client(host, port)
        await client.request("GET", "/")
        ((first, _),) = client._idle
        await client.request("GET", "/")
        assert client._idle[0][0] is first  # fresh: reused
        monkeypatch.setattr(api._h11, "MAX_IDLE_S", 0.0)
        await client.request("GET", "/")
        ((second, _),) = client._idle
        assert second is not first  # too old: closed, and a new one made
        await client.aclose()
        nursery.cancel_scope.cancel()
