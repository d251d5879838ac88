"""Random interleavings of the run ledger's calls keep every credit accounted for.

Two instances share one real PostgreSQL.  Hypothesis draws sequences of:
begin (with or without an Idempotency-Key, new or reused), finish (once, or
twice as after a lost acknowledgement), abort, top-up, key regeneration, an
instance crash and restart, an instance going silent (its claims then taken
over).  After every step: each balance equals the sum of its ledger rows and
is never negative; at the end, with every run ended, no hold is left, each
run is charged at most once, and the charges are exactly the first finishes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api._keys import hash_key
from api._ledger import Begin, Idempotency, RunLedger, RunOutcome
from api._store import Store

pytestmark = pytest.mark.postgres

ops = st.lists(
    st.one_of(
        st.tuples(st.just("begin"), st.integers(0, 1), st.sampled_from([None, "a", "b", "c"])),
        st.tuples(st.just("finish"), st.integers(0, 7), st.integers(0, 1500)),
        st.tuples(st.just("finish_twice"), st.integers(0, 7), st.integers(0, 1500)),
        st.tuples(st.just("abort"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("topup"), st.integers(1, 2000), st.just(0)),
        st.tuples(st.just("regenerate"), st.just(0), st.just(0)),
        st.tuples(st.just("crash"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("silence"), st.integers(0, 1), st.just(0)),
    ),
    min_size=1,
    max_size=30,
)


@dataclass
class Live:
    ledger: int
    run_id: str
    hold_id: int
    idem: str | None


@dataclass
class Model:
    key: str
    key_id: int
    account: int
    live: list[Live] = field(default_factory=list)
    first_finishes: dict[str, int] = field(default_factory=dict)


async def _check_balance(store: Store) -> None:
    assert await store.ledger_mismatches() == []


async def _scenario(url: str, data_dir: Path, start: int, steps: list[tuple[str, Any, Any]]) -> None:
    async with trio_asyncio.open_loop():
        store = await Store.open(url, data_dir, "prop-a")
        try:
            ledgers = [store.ledger, RunLedger(store, "prop-b", dead_after_s=10)]
            await ledgers[1].register_instance()
            account = await store.create_account(None, None, start)
            key, key_id = await store.create_key(account)
            m = Model(key, key_id, account)
            for op, a, b in steps:
                await _step(store, ledgers, m, op, a, b)
                await _check_balance(store)
            # End every run still alive: instance b finishes, a crashes.
            for run in list(m.live):
                await _finish(store, ledgers, m, run, 10)
            await _check_balance(store)
            assert await store.fetchval(
                "SELECT count(*) FROM holds WHERE account_id = $1", account
            ) == 0
            charges = await store.fetch(
                "SELECT ref, -amount AS amount FROM ledger WHERE account_id = $1 "
                "AND kind = 'charge'",
                account,
            )
            refs = [r["ref"] for r in charges]
            assert len(refs) == len(set(refs)), "a run was charged twice"
            assert {r["ref"]: r["amount"] for r in charges} == {
                k: v for k, v in m.first_finishes.items() if v > 0
            }
            balance, available = await store.balance(account)
            assert balance == available >= 0
        finally:
            await store.aclose()


async def _finish(
    store: Store, ledgers: list[RunLedger], m: Model, run: Live, duration_ms: int
) -> Any:
    m.live.remove(run)
    done = await ledgers[run.ledger].finish_run(
        run_id=run.run_id,
        hold_id=run.hold_id,
        account_id=m.account,
        key_id=m.key_id,
        outcome=RunOutcome("python", "exited", 0, duration_ms, 0, True),
        response={"stdout": run.run_id},
        idem_key=run.idem,
    )
    if done.first:
        assert run.run_id not in m.first_finishes
        m.first_finishes[run.run_id] = done.charged
    else:
        assert done.charged == m.first_finishes[run.run_id]
    return done


async def _step(
    store: Store, ledgers: list[RunLedger], m: Model, op: str, a: Any, b: Any
) -> None:
    if op == "begin":
        run_id = "r-" + secrets.token_hex(6)
        idem = Idempotency(b, b"same body", 3600, 60) if b else None
        start = await ledgers[a].begin_run(hash_key(m.key), run_id, 500, idem)
        if start.status is Begin.OK:
            assert start.hold_id is not None
            assert 0 < start.hold_amount <= 500
            # Taking over a claim drops the old owner's run from the model:
            # that instance is dead or its lease is past.
            if b:
                m.live = [r for r in m.live if r.idem != b]
            m.live.append(Live(a, run_id, start.hold_id, b))
        elif start.status is Begin.REPLAY:
            assert start.replay_body is not None
            assert start.replay_body["creditsCharged"] == m.first_finishes[
                start.replay_body["stdout"]
            ]
        elif start.status is Begin.RUNNING:
            assert any(r.idem == b for r in m.live)
        else:
            assert start.status is Begin.NO_CREDITS
    elif op in ("finish", "finish_twice", "abort") and m.live:
        run = m.live[a % len(m.live)]
        if op == "abort":
            m.live.remove(run)
            await ledgers[run.ledger].abort_run(run.run_id)
            return
        await _finish(store, ledgers, m, run, b)
        if op == "finish_twice":
            m.live.append(run)
            await _finish(store, ledgers, m, run, b + 1)
    elif op == "topup":
        assert await store.credit(m.account, a, "topup", "t-" + secrets.token_hex(6))
    elif op == "regenerate":
        keys = await store.list_keys(m.account)
        m.key, m.key_id = await store.regenerate_key(m.account, keys[0]["id"])
    elif op == "crash":
        # The instance restarts: its runs are gone, their holds and claims freed.
        m.live = [r for r in m.live if r.ledger != a]
        await ledgers[a].register_instance()
    elif op == "silence":
        await store.execute(
            "UPDATE instances SET seen_at = now() - interval '1 hour' WHERE id = $1",
            ledgers[a].instance_id,
        )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(start=st.integers(0, 3000), steps=ops)
def test_run_ledger_keeps_every_credit_under_random_interleavings(
    database_url: str, tmp_path: Path, start: int, steps: list[tuple[str, Any, Any]]
) -> None:
    trio.run(_scenario, database_url, tmp_path, start, steps)
