"""Slow and odd clients against a real ``cinch serve`` over loopback, on raw sockets.

An OPTIONS with a body on a kept-alive connection, headers dribbled a byte a
second, too many connections from one address, a 100 KB header, and 1,000 idle
connections held while /healthz is measured.  Every loop is bounded in count
and time; every error answer must be JSON ``{"error"}``.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, fresh_database, start_live_server
from tests.faults.test_drills import end_of_drill, engine
from tests.live_checks import instance_id, post_run

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]
__all__ = ["engine"]

HEADER_TIMEOUT_S = 2.0
PER_IP = 300


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from tests.conftest import _engine_state, need

    ok, reason = _engine_state()
    need(ok, reason)
    data_dir: Path = tmp_path_factory.mktemp("slow-clients")
    since = time.time()
    live = start_live_server(
        fresh_database(pg_url),
        data_dir,
        CINCH_POOL_PYTHON="1",
        CINCH_POOL_JAVASCRIPT="0",
        CINCH_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        CINCH_MAX_CONNECTIONS_PER_IP=str(PER_IP),
    )
    owner = instance_id(data_dir)
    try:
        key = live.new_key(100_000)
        # The server still runs code; the ledger ends balanced (checked at the end).
        assert post_run(live.base_url, key, "print(1)").status == 200
        yield live
    finally:
        end_of_drill(live, owner, since)


def connect(server: LiveServer, source: str = "127.0.0.1", timeout_s: float = 5.0) -> socket.socket:
    port = int(server.base_url.rsplit(":", 1)[1])
    s = socket.socket()
    s.settimeout(timeout_s)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body (raises on timeout or EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("connection closed in the body")
        body += chunk
    return status, headers, body[:length]


def assert_json_error(headers: dict[str, str], body: bytes) -> str:
    assert headers.get("content-type", "").startswith("application/json"), headers
    message = json.loads(body)["error"]
    assert isinstance(message, str)
    assert message
    return message


def test_options_with_a_body_then_healthz_on_one_connection(server: LiveServer) -> None:
    body = json.dumps({"code": "print(1)", "language": "python"}).encode()
    options = (
        b"OPTIONS /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    deadline = time.monotonic() + 60
    with connect(server) as s:
        for i in range(200):
            assert time.monotonic() < deadline, f"too slow at loop {i}"
            s.sendall(options)
            status, headers, _ = read_response(s)
            assert status in (200, 204), (i, status)
            assert headers.get("connection") != "close", (i, headers)
            s.sendall(healthz)
            status, _, answer = read_response(s)
            assert (status, json.loads(answer)) == (200, {"status": "ok"}), i


def test_headers_dribbled_a_byte_a_second_are_cut(server: LiveServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 50 + b"\r\n\r\n"
    t0 = time.monotonic()
    with connect(server, timeout_s=HEADER_TIMEOUT_S + 5) as s:
        received = b""
        for byte in request:  # at most len(request) s, cut well before
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            s.settimeout(1.0)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            received += chunk
            if not chunk or b"\r\n\r\n" in received:
                break
            assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 5
    elapsed = time.monotonic() - t0
    assert HEADER_TIMEOUT_S - 0.5 < elapsed < HEADER_TIMEOUT_S + 3, elapsed
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), received
    assert "not received" in json.loads(body)["error"]


def test_a_silent_connection_is_closed_after_the_header_timeout(server: LiveServer) -> None:
    t0 = time.monotonic()
    with connect(server, timeout_s=HEADER_TIMEOUT_S + 5) as s:
        status, headers, body = read_response(s)
    assert status == 408
    assert_json_error(headers, body)
    assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 3


def test_a_100_kb_header_gets_a_json_431(server: LiveServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    with connect(server) as s:
        try:
            s.sendall(request)
        except OSError:
            pass  # the server may answer and close before reading it all
        status, headers, body = read_response(s)
    assert status == 431
    assert "too large" in assert_json_error(headers, body)


def test_too_many_connections_from_one_address_get_a_json_429(server: LiveServer) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(PER_IP):
            held.append(connect(server, "127.0.0.3"))
        # Each of them reached the server (it counts accepted connections).
        time.sleep(0.3)
        with connect(server, "127.0.0.3") as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(extra)
        assert status == 429
        assert headers.get("retry-after") == "1"
        assert "too many open connections" in assert_json_error(headers, body)
        # Another address is not affected.
        with connect(server, "127.0.0.4") as other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(other)[0] == 200
    finally:
        for s in held:
            s.close()


def test_a_thousand_idle_connections_do_not_slow_healthz(server: LiveServer) -> None:
    """Idle kept-alive connections (each answered once) from four addresses, then /healthz."""
    held: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        for i in range(1000):
            s = connect(server, f"127.0.1.{1 + i % 4}")
            held.append(s)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in held:
            assert read_response(s)[0] == 200
        opened_s = time.monotonic() - t0
        assert len(held) == 1000
        samples = []
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            for _ in range(50):
                t = time.monotonic()
                assert client.get("/healthz").status_code == 200
                samples.append(time.monotonic() - t)
        p50 = statistics.median(samples)
        print(
            f"1000 idle connections (opened in {opened_s:.1f} s): /healthz p50 {p50 * 1000:.1f} ms, "
            f"max {max(samples) * 1000:.1f} ms"
        )
        # Generous: a loaded shared machine; the point is "not seconds".
        assert p50 < 0.25, samples
        metrics = httpx.get(server.base_url + "/metrics", timeout=5).text
        open_now = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("cinch_http_connections_open ")
        )
        assert open_now >= 1000
    finally:
        for s in held:
            s.close()
