"""A property test that hammers one account's ledger from every side at once.

Hypothesis draws a starting balance and a batch of operations: real runs on the
live server (short, long enough to extend their hold, or JavaScript), top-ups
through ``Store.credit`` (kind ``topup``, unique refs) and key regenerations
through ``Store.regenerate_key``.  They all start together.  While they run, a
watcher checks that the balance is the sum of the ledger and that nothing is
held beyond the balance; at the end every invariant is checked exactly.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api._store import Store, hash_key

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]

PROGRAMS = {
    "quick": ("python", "print(6 * 7)"),
    # Runs past two hold extensions (every half second): exercises extend and credit_limit.
    "busy": ("python", "import time\nt = time.time()\nwhile time.time() - t < 1.3:\n    pass\n"),
    "js": ("javascript", "console.log(6 * 7)"),
}

TOTALS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and TOTALS:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                "ledger property: " + ", ".join(f"{k} {v}" for k, v in sorted(TOTALS.items()))
            )


run_op = st.tuples(st.just("run"), st.sampled_from(sorted(PROGRAMS)), st.floats(0, 0.6))
topup_op = st.tuples(st.just("topup"), st.integers(1, 3000), st.floats(0, 0.6))
regen_op = st.tuples(st.just("regen"), st.just(0), st.floats(0, 0.6))
operations = st.lists(st.one_of(run_op, run_op, topup_op, regen_op), min_size=1, max_size=10)


@dataclass
class Tally:
    charged: int = 0
    topped_up: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    runs_200: int = 0


async def _state(store: Store, account_id: int) -> Any:
    # One statement, one snapshot: balance, its ledger and its live holds agree or not.
    return await store.fetchrow(
        "SELECT a.balance, "
        "(SELECT COALESCE(sum(amount), 0) FROM ledger l WHERE l.account_id = a.id) AS total, "
        "(SELECT COALESCE(sum(amount), 0) FROM holds h WHERE h.account_id = a.id "
        " AND h.expires_at > now()) AS held "
        "FROM accounts a WHERE a.id = $1",
        account_id,
    )


async def _scenario(
    live: Any, store_dir: Path, key: str, start: int, ops: list[tuple[str, Any, float]]
) -> Tally:
    tally = Tally()
    async with trio_asyncio.open_loop():
        store = await Store.open(live.database_url, store_dir, "ledger-property")
        try:
            row = await store.fetchrow(
                "SELECT id, account_id FROM api_keys WHERE key_hash = $1", hash_key(key)
            )
            key_id, account_id = int(row["id"]), int(row["account_id"])
            current = {"key": key, "key_id": key_id}
            regen_lock = trio.Lock()
            headers_of = lambda k: {"Authorization": f"Bearer {k}"}  # noqa: E731

            async with httpx.AsyncClient(base_url=live.base_url, timeout=90) as client:

                async def do(kind: str, arg: Any, delay: float) -> None:
                    await trio.sleep(delay)
                    if kind == "run":
                        language, code = PROGRAMS[arg]
                        r = await client.post(
                            "/run",
                            json={"code": code, "language": language},
                            headers=headers_of(current["key"]),
                        )
                        tally.statuses[r.status_code] = tally.statuses.get(r.status_code, 0) + 1
                        TOTALS[f"run {r.status_code}"] += 1
                        assert r.status_code in (200, 401, 402, 503), r.text
                        if r.status_code == 200:
                            body = r.json()
                            assert 0 <= body["creditsCharged"] <= body["durationMs"], body
                            if body["termination"] == "sandbox_error":
                                assert body["creditsCharged"] == 0
                            tally.charged += body["creditsCharged"]
                            tally.runs_200 += 1
                    elif kind == "topup":
                        ref = f"prop:{secrets.token_hex(8)}"
                        assert await store.credit(account_id, arg, "topup", ref)
                        # The same payment event again credits nothing.
                        assert not await store.credit(account_id, arg, "topup", ref)
                        tally.topped_up += arg
                        TOTALS["topups"] += 1
                    else:
                        async with regen_lock:  # one person clicking "regenerate" twice
                            new_key, new_id = await store.regenerate_key(
                                account_id, current["key_id"]
                            )
                            current["key"], current["key_id"] = new_key, new_id
                        TOTALS["regenerations"] += 1

                async def watch(
                    cancel: trio.CancelScope, task_status: Any = trio.TASK_STATUS_IGNORED
                ) -> None:
                    with cancel:
                        while True:
                            s = await _state(store, account_id)
                            assert s["balance"] == s["total"], dict(s)
                            assert s["balance"] >= 0, dict(s)
                            assert s["balance"] - s["held"] >= 0, dict(s)
                            tally.samples += 1
                            if tally.samples == 1:
                                task_status.started()
                            await trio.sleep(0.05)

                watcher = trio.CancelScope()
                async with trio.open_nursery() as nursery:
                    # One sample before the operations start: a lone 402 can answer
                    # before a first sample would otherwise have been taken.
                    await nursery.start(watch, watcher)
                    async with trio.open_nursery() as work:
                        for kind, arg, delay in ops:
                            work.start_soon(do, kind, arg, delay)
                    watcher.cancel()

            end = await _state(store, account_id)
            charges = await store.fetchval(
                "SELECT COALESCE(-sum(amount), 0) FROM ledger WHERE account_id = $1 "
                "AND kind = 'charge'",
                account_id,
            )
            topups = await store.fetchval(
                "SELECT COALESCE(sum(amount), 0) FROM ledger WHERE account_id = $1 "
                "AND kind = 'topup'",
                account_id,
            )
            run_charges = await store.fetchval(
                "SELECT COALESCE(sum(credits_charged), 0) FROM runs WHERE account_id = $1",
                account_id,
            )
        finally:
            await store.aclose()
    assert end["balance"] == end["total"]
    assert end["held"] == 0, "every hold is released once its run has answered"
    assert charges == tally.charged, "the ledger's charges are what the answers said"
    assert run_charges == tally.charged
    assert topups == tally.topped_up
    assert end["balance"] == start + tally.topped_up - tally.charged
    assert end["balance"] >= 0
    return tally


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(start=st.integers(0, 4000), ops=operations)
def test_ledger_invariants_under_concurrent_runs_topups_and_key_changes(
    cinch_live: Any, tmp_path: Path, start: int, ops: list[tuple[str, Any, float]]
) -> None:
    key = cinch_live.new_key(start)
    tally = trio.run(_scenario, cinch_live, tmp_path, key, start, ops)
    assert tally.samples > 0
    TOTALS["examples"] += 1
    TOTALS["invariant samples"] += tally.samples
