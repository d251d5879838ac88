"""The embedded PostgreSQL's life under ``cinch serve``: killed owners, a killed server.

No ``CINCH_DATABASE_URL``: the server runs its own PostgreSQL under the data
dir.  Drills: ``cinch serve``, kill -9, ``cinch serve`` again, SIGTERM, and no
``postgres -D <data dir>`` may be left (pgserver's handle bookkeeping used to
leave it running forever); and the postmaster killed under a running server
is started again by it, with the restart visible in /readyz and /metrics.
Each ends with the ledger invariants.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, start_live_server, stop_live_server
from tests.faults.test_drills import assert_charged_exactly, engine
from tests.live_checks import (
    assert_no_leftovers,
    container_ids_seen,
    instance_id,
    ledger_mismatches,
    post_run,
    wait_until,
)

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]
__all__ = ["engine"]

POOLS = {"CINCH_POOL_PYTHON": "1", "CINCH_POOL_JAVASCRIPT": "0"}


def postgres_processes(pgdata: Path) -> list[int]:
    """Pids of ``postgres`` processes whose command line names ``pgdata``."""
    found = []
    needle = str(pgdata).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"postgres") and needle in argv:
            found.append(int(entry))
    return found


def embedded_url(data_dir: Path) -> str:
    lines = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres:@/postgres?host={lines[4].strip()}&port={lines[3].strip()}"


def serve_embedded(data_dir: Path) -> LiveServer:
    server = start_live_server("", data_dir, **POOLS)
    server.database_url = embedded_url(data_dir)
    return server


def end_embedded(server: LiveServer, owner: str, since: float) -> None:
    """The ledger first (the embedded database stops with the server), then SIGTERM."""
    try:
        assert ledger_mismatches(server) == []
    finally:
        code = stop_live_server(server)
    assert code == 0, f"cinch serve exited {code}:\n{server.log_tail()}"
    assert_no_leftovers(owner, container_ids_seen(owner, since))


def readyz(server: LiveServer) -> dict:
    return httpx.get(server.base_url + "/readyz", timeout=5).json()


def test_kill_9_then_sigterm_leaves_no_postgres(engine: None, tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    server = serve_embedded(tmp_path)
    try:
        (postmaster,) = [p for p in postgres_processes(pgdata) if p == _postmaster_pid(pgdata)]
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        # A killed owner leaves its server running: the next one adopts it.
        assert postmaster in postgres_processes(pgdata)
    finally:
        stop_live_server(server)

    since = time.time()
    server = serve_embedded(tmp_path)
    owner = instance_id(tmp_path)
    key = server.new_key(10_000)
    answer = post_run(server.base_url, key, "print(2)", retry_503=3)
    assert answer.status == 200, answer.body
    assert_charged_exactly(server, key, [answer])
    assert server.query("SELECT count(*) AS n FROM holds")[0]["n"] == 0
    end_embedded(server, owner, since)
    assert wait_until(lambda: not postgres_processes(pgdata), 20), postgres_processes(pgdata)


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def test_the_owner_restarts_a_killed_postgres(engine: None, tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    since = time.time()
    server = serve_embedded(tmp_path)
    owner = instance_id(tmp_path)
    try:
        key = server.new_key(10_000)
        first = post_run(server.base_url, key, "print(1)")
        assert first.status == 200, first.body
        database = readyz(server)["checks"]["database"]
        assert database["embedded"] is True
        assert database["restarts"] == 0
        old = _postmaster_pid(pgdata)
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()

        def restarted() -> bool:
            d = readyz(server)["checks"]["database"]
            return d["ok"] and d["restarts"] >= 1 and d["server"] == "up"

        assert wait_until(restarted, 60), readyz(server)
        print(f"embedded PostgreSQL back after {time.monotonic() - t0:.1f} s")
        assert _postmaster_pid(pgdata) != old
        metrics = httpx.get(server.base_url + "/metrics", timeout=5).text
        assert "cinch_database_restarts_total 1.0" in metrics, metrics[-2000:]
        assert "cinch_database_up 1.0" in metrics
        server.database_url = embedded_url(tmp_path)
        again = post_run(server.base_url, key, "print(3)", retry_503=5)
        assert again.status == 200, again.body
        assert again.body["stdout"] == "3\n"
        assert_charged_exactly(server, key, [first, again])
        assert server.query("SELECT count(*) AS n FROM holds")[0]["n"] == 0
    finally:
        end_embedded(server, owner, since)
    assert wait_until(lambda: not postgres_processes(pgdata), 20), postgres_processes(pgdata)
