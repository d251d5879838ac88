"""Streamed runs against a real `cinch serve`: real gVisor, real Postgres, real HTTP (issue 19).

One server with small pools serves the module; every run goes over loopback with
``Accept: text/event-stream`` and is read event by event as it arrives.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import (
    LiveServer,
    _engine_state,
    fresh_database,
    need,
    start_live_server,
    stop_live_server,
)

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]

MIB = 1024 * 1024
STREAM = {"Accept": "text/event-stream"}

TICKS = {
    "python": "import time\nfor i in range(5):\n    print(f'line {i}')\n    time.sleep(0.2)\n",
    "javascript": (
        "let i = 0;\n"
        "const tick = () => { console.log(`line ${i}`); if (++i < 5) setTimeout(tick, 200); };\n"
        "tick(); setTimeout(() => {}, 1000);\n"
    ),
}


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    ok, reason = _engine_state()
    need(ok, reason)
    data_dir = tmp_path_factory.mktemp("cinch-stream")
    # Small pools: the machine is shared; the tests run one at a time.
    live = start_live_server(
        fresh_database(pg_url),
        data_dir,
        CINCH_POOL_PYTHON="2",
        CINCH_POOL_JAVASCRIPT="2",
        CINCH_START_CONCURRENCY="2",
    )
    try:
        yield live
    finally:
        stop_live_server(live)


@dataclass
class Seen:
    event: str
    data: Any
    at_s: float  # since the request was sent


async def stream_run(
    server: LiveServer,
    key: str,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, list[Seen]]:
    """POST /run as a stream; the events with their arrival times."""
    seen: list[Seen] = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        t0 = time.monotonic()
        async with client.stream(
            "POST",
            "/run",
            json=body,
            headers={"Authorization": f"Bearer {key}", **STREAM, **(headers or {})},
        ) as response:
            if response.headers.get("content-type", "").startswith("application/json"):
                await response.aread()
                return response, seen
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: "):
                    seen.append(Seen(event, json.loads(line[6:]), time.monotonic() - t0))
    return response, seen


async def hang_up_after_first_event(server: LiveServer, key: str, body: dict[str, Any]) -> str:
    """POST /run as a stream over a bare socket, close it after the first event;
    returns the request id (a real client going away, no library in between)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST /run HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Accept: text/event-stream\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    stream = await trio.open_tcp_stream(host, int(port))
    try:
        await stream.send_all(head + payload)
        received = b""
        with trio.fail_after(10):
            while b"\ndata: " not in received:
                chunk = await stream.receive_some(65536)
                assert chunk, received
                received += chunk
    finally:
        await stream.aclose()
    headers = received.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert headers.startswith("http/1.1 200"), headers
    assert b"event: stdout" in received
    (request_id,) = [
        line.split(":", 1)[1].strip()
        for line in headers.split("\r\n")
        if line.startswith("x-request-id:")
    ]
    return request_id


def owner_containers(server: LiveServer) -> set[str]:
    owner = (server.data_dir / "instance-id").read_text().strip()
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=cinch.owner={owner}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


POOLS = 4  # the server's two warm pools of 2


async def settled_containers(server: LiveServer, gone_from: set[str] | None = None) -> set[str]:
    """The server's containers once earlier runs' sandboxes are gone and the pools
    full (and, with ``gone_from``, once one of those is gone: the run's own)."""
    for _ in range(300):
        found = owner_containers(server)
        if len(found) == POOLS and (gone_from is None or gone_from - found):
            return found
        await trio.sleep(0.1)
    raise AssertionError(f"{len(found)} containers, not the pools' {POOLS}, after 30 s")


def text_of(seen: list[Seen], stream: str) -> str:
    return "".join(s.data["text"] for s in seen if s.event == stream)


@pytest.mark.parametrize("language", ["python", "javascript"])
async def test_a_line_every_200_ms_arrives_as_it_is_printed(
    server: LiveServer, language: str
) -> None:
    key = server.new_key()
    response, seen = await stream_run(server, key, {"code": TICKS[language], "language": language})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    chunks = [s for s in seen if s.event == "stdout"]
    assert seen[-1].event == "result"
    assert len(chunks) >= 5, seen
    assert chunks[0].at_s < 0.3, [round(c.at_s, 3) for c in chunks]
    # Each line while the program still runs, not all at the end: they arrive spread
    # over the program's second, before the result. (Not each within a fixed bound of
    # its own 200 ms tick: on a loaded machine the program's own sleeps drift.)
    assert _line_times(chunks)[4] - _line_times(chunks)[0] > 0.6
    result = seen[-1].data
    assert result["stdout"] == text_of(seen, "stdout") == "".join(f"line {i}\n" for i in range(5))
    assert result["exitCode"] == 0
    assert result["termination"] == "exited"
    assert result["creditsCharged"] == result["durationMs"] > 700


def _line_times(chunks: list[Seen]) -> list[float]:
    """When each line's text had arrived in full."""
    times, text = [], ""
    for c in chunks:
        text += c.data["text"]
        times += [c.at_s] * (text.count("\n") - len(times))
    return times


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("python", "import sys\nsys.stdout.write('x' * 10_000_000)\n", "x" * MIB),
        # 3-byte characters: the cap falls inside one; it is cut before it.
        (
            "javascript",
            "process.stdout.write('\\u20ac'.repeat(3_500_000));\n",
            "\u20ac" * (MIB // 3),
        ),
    ],
)
async def test_a_10_mb_flood_streams_exactly_the_capped_output(
    server: LiveServer, language: str, code: str, expected: str
) -> None:
    key = server.new_key()
    response, seen = await stream_run(server, key, {"code": code, "language": language})
    assert response.status_code == 200
    assert seen[-1].event == "result"
    result = seen[-1].data
    streamed = text_of(seen, "stdout")
    assert len(streamed) == len(expected)
    assert streamed == expected == result["stdout"]
    assert "\ufffd" not in streamed
    assert result["truncated"] is True
    assert result["termination"] == "output_limit"
    assert len(seen) > 2  # in pieces, not one event at the end


@pytest.mark.parametrize("language", ["python", "javascript"])
async def test_hanging_up_stops_the_run_charges_what_it_used_and_removes_its_sandbox(
    server: LiveServer, language: str
) -> None:
    key = server.new_key(10_000)
    code = {
        "python": "import time\nprint('started', flush=True)\ntime.sleep(8)\nprint('never')\n",
        "javascript": "console.log('started'); setTimeout(() => console.log('never'), 8000);\n",
    }[language]
    before = await settled_containers(server)
    t0 = time.monotonic()
    request_id = await hang_up_after_first_event(server, key, {"code": code, "language": language})
    hung_up_after_s = time.monotonic() - t0
    # The run is settled soon after the hang-up, not after its 8 s.
    row = None
    for _ in range(50):
        rows = server.query(
            "SELECT termination, exit_code, duration_ms, credits_charged, account_id "
            "FROM runs WHERE id = $1",
            request_id,
        )
        if rows:
            row = rows[0]
            break
        await trio.sleep(0.1)
    assert row is not None, "the run was not settled within 5 s of the hang-up"
    assert row["termination"] == "cancelled"
    assert row["exit_code"] == 137
    assert 0 < row["duration_ms"] < (hung_up_after_s + 1.0) * 1000
    assert row["credits_charged"] == row["duration_ms"]
    account = row["account_id"]
    (money,) = server.query(
        "SELECT a.balance, (SELECT sum(amount) FROM ledger l WHERE l.account_id = a.id) AS total, "
        "(SELECT count(*) FROM holds h WHERE h.account_id = a.id) AS holds "
        "FROM accounts a WHERE a.id = $1",
        account,
    )
    assert money["balance"] == money["total"] == 10_000 - row["credits_charged"]
    assert money["holds"] == 0
    charge = server.query(
        "SELECT amount FROM ledger WHERE account_id = $1 AND kind <> 'grant'", account
    )
    assert [r["amount"] for r in charge] == [-row["credits_charged"]]
    # Its sandbox is gone: the one container taken from the warm pool was removed
    # (the pool's others stay, and replacements are new ids).
    after = await settled_containers(server, gone_from=before)
    assert len(before - after) == 1


async def test_errors_before_the_start_are_plain_json(server: LiveServer) -> None:
    key = server.new_key(0)
    response, _ = await stream_run(server, key, {"code": "print(1)"})
    assert response.status_code == 402
    assert response.json()["error"].startswith("out of credits")
    response, _ = await stream_run(server, "cinch_live_" + "x" * 43, {"code": "print(1)"})
    assert response.status_code == 401
    response, _ = await stream_run(server, server.new_key(), {"code": ""})
    assert response.status_code == 400


async def test_an_idempotent_replay_streams_the_stored_result_once(server: LiveServer) -> None:
    key = server.new_key()
    body = {"code": "print('once')"}
    headers = {"Idempotency-Key": "stream-replay-1"}
    _, first = await stream_run(server, key, body, headers=headers)
    response, again = await stream_run(server, key, body, headers=headers)
    assert response.status_code == 200
    assert response.headers["idempotent-replayed"] == "true"
    assert [s.event for s in again] == ["result"]
    assert again[0].data == first[-1].data
    assert again[0].data["stdout"] == "once\n"

