"""Overload: 200 requests at once against pools of 4, over loopback.

Every request must end, within the queue time-out plus the run limit plus 2 s,
with either a result or a 429/503 carrying ``Retry-After``; the API's memory
stays bounded; nothing crashes; and every answered run is charged exactly once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import _engine_state, fresh_database, need, start_live_server, stop_live_server
from tests.live_checks import (
    assert_no_leftovers,
    container_ids_seen,
    instance_id,
    ledger_mismatches,
    post_run,
    rss_bytes,
)

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]

QUEUE_TIMEOUT_S = 3.0
RUN_TIMEOUT_S = 10.0
BOUND_S = QUEUE_TIMEOUT_S + RUN_TIMEOUT_S + 2
REQUESTS = 200
MIB = 1024 * 1024
# A short program most of the time, a second-long one now and then.
PROGRAMS = [
    ("print(sum(range(1000)))", "499500\n"),
    ("import time\ntime.sleep(1)\nprint('slept')", "slept\n"),
]


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]
    headers: httpx.Headers
    elapsed_s: float
    expected_stdout: str


async def _burst(base_url: str, keys: list[str], pid: int) -> tuple[list[Outcome], int]:
    """Send REQUESTS at once; return the outcomes and the server's peak RSS meanwhile."""
    outcomes: list[Outcome] = []
    peak = 0
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            code, expected = PROGRAMS[1 if i % 10 == 0 else 0]
            # The first key sends 40 at once (above its concurrency cap of 32).
            key = keys[0] if i < 40 else keys[1 + i % (len(keys) - 1)]
            t0 = trio.current_time()
            r = await client.post(
                "/run",
                json={"code": code, "language": "python"},
                headers={"Authorization": f"Bearer {key}"},
            )
            outcomes.append(
                Outcome(r.status_code, r.json(), r.headers, trio.current_time() - t0, expected)
            )

        async def watch_memory(cancel: trio.CancelScope) -> None:
            nonlocal peak
            with cancel:
                while True:
                    peak = max(peak, rss_bytes(pid))
                    await trio.sleep(0.1)

        watcher = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_memory, watcher)
            with trio.fail_after(BOUND_S + 60):
                async with trio.open_nursery() as requests:
                    for i in range(REQUESTS):
                        requests.start_soon(one, i)
            watcher.cancel()
    return outcomes, peak


def _wait_pools_full(base_url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        checks = httpx.get(base_url + "/readyz", timeout=10).json()["checks"]
        pools = [c for name, c in checks.items() if name.startswith("pool:")]
        if pools and all(c["ready"] >= c["minSize"] for c in pools):
            return
        time.sleep(0.5)
    raise AssertionError(f"pools not full again within {timeout_s:g} s: {checks}")


def _check(outcomes: list[Outcome]) -> dict[int, int]:
    assert len(outcomes) == REQUESTS
    counts: dict[int, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
        assert o.elapsed_s <= BOUND_S, (o.status, o.elapsed_s, o.body)
        if o.status == 200:
            assert o.body["stdout"] == o.expected_stdout, o.body
            assert o.body["termination"] == "exited"
            assert o.body["creditsCharged"] == o.body["durationMs"]
        else:
            assert o.status in (429, 503), (o.status, o.body)
            assert int(o.headers["Retry-After"]) >= 1
            assert o.body["error"]
    return counts


def test_two_hundred_requests_against_pools_of_four(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok, reason = _engine_state()
    need(ok, reason)
    server = start_live_server(
        fresh_database(pg_url),
        tmp_path,
        CINCH_POOL_PYTHON="4",
        CINCH_POOL_JAVASCRIPT="1",
        CINCH_QUEUE_TIMEOUT_S=str(QUEUE_TIMEOUT_S),
        CINCH_RUN_TIMEOUT_S=str(RUN_TIMEOUT_S),
    )
    owner = instance_id(tmp_path)
    since = time.time()
    try:
        keys = [server.new_key(1_000_000) for _ in range(9)]
        pid = server.process.pid
        baseline = rss_bytes(pid)
        first, peak1 = trio.run(_burst, server.base_url, keys, pid)
        counts1 = _check(first)
        # Again, once the pools are full again (as a user's next burst would find
        # them): a second burst must not need more memory than the first.
        _wait_pools_full(server.base_url)
        second, peak2 = trio.run(_burst, server.base_url, keys, pid)
        counts2 = _check(second)
        after = rss_bytes(pid)

        # Some ran, and the cap per key and the queue turned the rest away, cleanly.
        # (At least one: the second burst may find the pools not yet refilled, and a
        # run whose predicted wait exceeds the short queue budget is refused at once.)
        for counts in (counts1, counts2):
            assert counts.get(200, 0) >= 1, counts
            assert counts.get(429, 0) + counts.get(503, 0) >= REQUESTS // 2, counts  # overloaded
        assert peak1 - baseline < 150 * MIB, (baseline, peak1)
        assert peak2 < peak1 + 50 * MIB, (peak1, peak2)
        assert after < baseline + 150 * MIB, (baseline, after)

        # Nothing crashed: alive, healthy, no 5xx other than 503, a normal run works.
        assert server.process.poll() is None
        assert httpx.get(server.base_url + "/healthz", timeout=5).status_code == 200
        metrics = httpx.get(server.base_url + "/metrics", timeout=5).text
        server_errors = re.findall(r'cinch_http_requests_total\{[^}]*status="5(?!03)\d\d"', metrics)
        assert server_errors == [], server_errors
        assert "Traceback" not in server.log_path.read_text(errors="replace")
        normal = post_run(server.base_url, keys[1], "print('ok')", retry_503=3)
        assert normal.status == 200
        assert normal.body["stdout"] == "ok\n"

        # Every answered run was charged exactly once, and nothing else was.
        answered = [o for o in first + second if o.status == 200] + [normal]
        charged = sum(o.body["creditsCharged"] for o in answered)
        rows = server.query(
            "SELECT count(*) AS n, -sum(amount) AS total FROM ledger WHERE kind = 'charge'"
        )
        assert rows[0]["n"] == len([o for o in answered if o.body["creditsCharged"] > 0])
        assert int(rows[0]["total"] or 0) == charged
        with capsys.disabled():
            print(
                f"\noverload: burst 1 {dict(sorted(counts1.items()))}, burst 2 "
                f"{dict(sorted(counts2.items()))}; slowest "
                f"{max(o.elapsed_s for o in first + second):.1f}s (bound {BOUND_S:g}s); "
                f"RSS {baseline / MIB:.0f} -> peak {peak1 / MIB:.0f}/{peak2 / MIB:.0f} -> "
                f"{after / MIB:.0f} MiB"
            )
    finally:
        code = stop_live_server(server)
    assert code == 0, server.log_tail()
    assert ledger_mismatches(server) == []
    assert_no_leftovers(owner, container_ids_seen(owner, since))
