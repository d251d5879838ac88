"""Status lines carry reason phrases over real HTTP/1.1 from Hypercorn (api/_reasons.py)."""

from __future__ import annotations

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from api import Config, create_app
from api._reasons import install, reason_for


async def _status_line(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while b"\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


async def test_status_lines_carry_reason_phrases(tmp_path):
    install()
    install()  # idempotent: wrapped once
    app = create_app(Config.from_env({}, data_dir=tmp_path), scheduler=None, store=None)
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, hc, shutdown_trigger=shutdown.wait, task_status=task_status
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        get = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert await _status_line(port, get % b"/healthz") == b"HTTP/1.1 200 OK"
        assert await _status_line(port, get % b"/nothing") == b"HTTP/1.1 404 Not Found"
        assert await _status_line(port, get % b"/run") == b"HTTP/1.1 405 Method Not Allowed"
        post = b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        assert await _status_line(port, post) == b"HTTP/1.1 401 Unauthorized"
        shutdown.set()


def test_every_status_we_answer_has_a_phrase():
    for status in (200, 303, 400, 401, 402, 403, 404, 405, 409, 413, 429, 500, 503):
        assert reason_for(status), status
    assert reason_for(599) == b""
