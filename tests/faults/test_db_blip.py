"""A database blip during runs: PostgreSQL restarts for about a second while runs are in flight.

A run whose hold extension cannot reach the database goes on (billed when the
database is back, capped by the account's free credits); its settlement is
retried until it gets through, and then the result is delivered. The drill ends
with the ledger invariants: every balance is the sum of its ledger rows, no hold
is left, and each delivered result has exactly one charge row.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import fresh_database, start_live_server
from tests.faults.test_drills import (
    SMALL_POOLS,
    OwnPostgres,
    assert_charged_exactly,
    end_of_drill,
    engine,
    outcome,
    send_runs,
    sleeper,
    wait_in_flight,
    wait_warm,
)
from tests.live_checks import Answer, instance_id, post_run

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]
__all__ = ["engine"]  # the fixture, imported for this module's tests


def test_database_restart_during_runs_delivers_and_charges_once(
    engine: None, tmp_path: Path
) -> None:
    pg = OwnPostgres(tmp_path / "pg")
    uri = pg.start()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    since = time.time()
    try:
        database_url = fresh_database(uri)
        server = start_live_server(
            database_url, data_dir, **{**SMALL_POOLS, "CINCH_POOL_PYTHON": "3"}
        )
        owner = instance_id(data_dir)
        try:
            rich = server.new_key(1_000_000)
            poor = server.new_key(1_500)  # less than the run lasts: capped at its balance
            first = post_run(server.base_url, rich, "print(1)")
            assert first.status == 200, first.body
            wait_warm(server, 3)
            with ThreadPoolExecutor(3) as pool:
                futures = send_runs(pool, server, rich, sleeper(3), 2)
                futures += send_runs(pool, server, poor, sleeper(3), 1)
                wait_in_flight(server, 3)
                time.sleep(0.3)
                t_down = time.monotonic()
                pg.stop()
                time.sleep(1.0)
                assert pg.start() == uri
                outage_s = time.monotonic() - t_down
                answers = [outcome(f) for f in futures]
            assert outage_s < 10, outage_s
            for a in answers:
                assert isinstance(a, Answer), a
                assert a.status == 200, (a.status, a.body, server.log_tail())
            rich_runs, (poor_run,) = answers[:2], answers[2:]
            for a in rich_runs:
                # The code ran to its end and is billed exactly its duration.
                assert a.body["stdout"] == "started\nwoke\n", a.body
                assert a.body["termination"] == "exited", a.body
                assert a.body["creditsCharged"] == a.body["durationMs"], a.body
            assert poor_run.body["termination"] == "credit_limit", poor_run.body
            assert poor_run.body["creditsCharged"] == 1_500, poor_run.body

            assert_charged_exactly(server, rich, [first, *rich_runs])
            assert_charged_exactly(server, poor, [poor_run])
            assert server.query("SELECT count(*) AS n FROM holds")[0]["n"] == 0
            # One run row per delivered result, and no other.
            ids = {a.headers["X-Request-Id"] for a in [first, *answers]}
            rows = server.query("SELECT id FROM runs")
            assert sorted(r["id"] for r in rows) == sorted(ids)
            from api._store import hash_key

            (row,) = server.query(
                "SELECT a.balance FROM accounts a JOIN api_keys k ON k.account_id = a.id "
                "WHERE k.key_hash = $1",
                hash_key(poor),
            )
            assert row["balance"] == 0
        finally:
            end_of_drill(server, owner, since)
    finally:
        pg.stop()
