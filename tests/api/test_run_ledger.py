"""The money path against a real PostgreSQL: begin, extend, finish, abort, exactly once.

Each test here reproduces a defect the run ledger closes: an idempotency race,
a stuck claim after a crash, a replay refused at zero balance, a double charge
after a lost commit acknowledgement, made-up keys that reach the database, an
expired hold revived, a sign-up cap raced, a run stopped with credits left,
and an in-flight counter leaked by a client that hung up.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import trio
import trio_asyncio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from api._accounts import SignupLimited
from api._keys import hash_key
from api._ledger import Begin, Idempotency, RunLedger, RunOutcome
from api._runs import HoldBudget
from api._store import Store, StoreError

pytestmark = pytest.mark.postgres

OUTCOME = RunOutcome("python", "exited", 0, 40, 0, True)


async def _ledger_rows(store: Store, account: int) -> list[Any]:
    return await store.fetch(
        "SELECT kind, ref, amount FROM ledger WHERE account_id = $1 ORDER BY id", account
    )


async def _charges(store: Store, account: int) -> list[Any]:
    return [r for r in await _ledger_rows(store, account) if r["kind"] == "charge"]


async def _assert_invariants(store: Store) -> None:
    assert await store.ledger_mismatches() == []
    assert await store.fetchval("SELECT count(*) FROM holds") == 0
    # One charge per run, and every charge belongs to a recorded run.
    dup = await store.fetchval(
        "SELECT count(*) FROM (SELECT ref FROM ledger WHERE kind = 'charge' "
        "GROUP BY ref HAVING count(*) > 1) d"
    )
    assert dup == 0
    orphan = await store.fetchval(
        "SELECT count(*) FROM ledger l WHERE kind = 'charge' "
        "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = l.ref)"
    )
    assert orphan == 0


# -- over HTTP, with the fake sandbox backend --------------------------------------------


async def test_eight_concurrent_requests_with_one_key_run_once_and_charge_once(app_env):
    key, account = await app_env.new_key()
    idem = "order-" + secrets.token_hex(4)
    answers: list[Any] = []
    runs_before = sum(app_env.scheduler.statistics().runs_total.values())

    async def one() -> None:
        r = await app_env.post_run(key, {"code": "sleep:0.3;out:once"}, **{"Idempotency-Key": idem})
        answers.append((r.status_code, await r.get_json(), r.headers.get("Idempotent-Replayed")))

    # The app's limits allow 3 at once and 5 a second per key: lift them here.
    limiter = app_env.app.extensions["cinch"].limiter
    limiter.max_running, limiter.burst, limiter.rate = 16, 100, 100.0
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    assert [a[0] for a in answers] == [200] * 8
    bodies = {a[1]["stdout"] for a in answers}
    assert bodies == {"once"}
    assert sum(1 for a in answers if a[2] is None) == 1  # one ran, seven replayed
    assert sum(app_env.scheduler.statistics().runs_total.values()) - runs_before == 1
    charges = await _charges(app_env.store, account)
    assert len(charges) == 1
    assert {a[1]["creditsCharged"] for a in answers} == {-charges[0]["amount"]}
    await _assert_invariants(app_env.store)


async def test_replay_at_zero_balance_returns_the_stored_result(app_env):
    # The run spends the account's last credits; its retry must get the result, not 402.
    key, account = await app_env.new_key(credits=30)
    h = {"Idempotency-Key": "last-credits"}
    first = await app_env.post_run(key, {"code": "sleep:0.2;out:paid"}, **h)
    assert first.status_code == 200
    assert (await first.get_json())["creditsCharged"] == 30
    assert await app_env.store.balance(account) == (0, 0)
    again = await app_env.post_run(key, {"code": "sleep:0.2;out:paid"}, **h)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.get_json())["stdout"] == "paid"
    # A new request is refused: the account is empty.
    fresh = await app_env.post_run(key, {"code": "out:x"})
    assert fresh.status_code == 402
    await _assert_invariants(app_env.store)


async def test_claim_of_a_dead_instance_is_taken_over_by_the_retry(app_env):
    key, account = await app_env.new_key()
    body_hash = _body_hash("sleep:0.05;out:retried")
    # Another instance claimed the key and held credits, then died (no heartbeat since).
    dead = RunLedger(app_env.store, "dead-instance")
    await dead.register_instance()
    claim = await dead.begin_run(
        hash_key(key), "run-of-the-dead", 500, Idempotency("crash-key", body_hash, 3600, 60)
    )
    assert claim.status is Begin.OK
    await app_env.store.execute(
        "UPDATE instances SET seen_at = now() - interval '1 hour' WHERE id = 'dead-instance'"
    )
    t0 = trio.current_time()
    r = await app_env.post_run(
        key, {"code": "sleep:0.05;out:retried"}, **{"Idempotency-Key": "crash-key"}
    )
    assert r.status_code == 200
    assert (await r.get_json())["stdout"] == "retried"
    assert trio.current_time() - t0 < 5  # taken over at once, not after the key's TTL
    assert len(await _charges(app_env.store, account)) == 1
    await _assert_invariants(app_env.store)  # the dead run's hold was released too


async def test_claim_of_a_live_instance_is_waited_for(app_env):
    key, _account = await app_env.new_key()
    other = RunLedger(app_env.store, "live-instance")
    await other.register_instance()
    claim = await other.begin_run(
        hash_key(key), "run-elsewhere", 500, Idempotency("busy", _body_hash("out:x"), 3600, 60)
    )
    assert claim.status is Begin.OK
    result: list[Any] = []

    async def retry() -> None:
        r = await app_env.post_run(key, {"code": "out:x"}, **{"Idempotency-Key": "busy"})
        result.append((r.status_code, await r.get_json()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(retry)
        await trio.sleep(0.6)
        assert result == []  # still waiting for the first attempt
        assert claim.hold_id is not None
        assert claim.account_id is not None
        await other.finish_run(
            run_id="run-elsewhere",
            hold_id=claim.hold_id,
            account_id=claim.account_id,
            key_id=claim.key_id,
            outcome=OUTCOME,
            response={"stdout": "from elsewhere"},
            idem_key="busy",
        )
    assert result[0][0] == 200
    assert result[0][1]["stdout"] == "from elsewhere"
    await _assert_invariants(app_env.store)


async def test_a_restarted_instance_frees_its_own_claims(app_env):
    key, _ = await app_env.new_key()
    ledger = app_env.store.ledger
    claim = await ledger.begin_run(
        hash_key(key), "before-crash", 500, Idempotency("k", _body_hash("out:x"), 3600, 60)
    )
    assert claim.status is Begin.OK
    await ledger.register_instance()  # what start-up does after a crash
    assert await app_env.store.fetchval("SELECT count(*) FROM idempotency") == 0
    r = await app_env.post_run(key, {"code": "out:x"}, **{"Idempotency-Key": "k"})
    assert r.status_code == 200
    await _assert_invariants(app_env.store)


async def test_run_goes_on_until_the_last_credit(app_env):
    # 1,251 credits: once stopped at 1,000 ms with 251 left in the balance.
    key, account = await app_env.new_key(credits=1251)
    r = await app_env.post_run(key, {"code": "sleep:5"})
    body = await r.get_json()
    assert r.status_code == 200
    assert body["termination"] == "credit_limit"
    assert body["creditsCharged"] == 1251
    assert body["durationMs"] >= 1251
    assert await app_env.store.balance(account) == (0, 0)
    await _assert_invariants(app_env.store)


async def test_made_up_keys_are_limited_per_address_without_the_database(app_env, monkeypatch):
    state = app_env.app.extensions["cinch"]
    calls = 0
    real = state.store.ledger.begin_run

    async def counting(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(*args, **kw)

    monkeypatch.setattr(state.store.ledger, "begin_run", counting)
    key, _ = await app_env.new_key()
    assert (await app_env.post_run(key, {"code": "out:x"})).status_code == 200
    statuses = []
    for _ in range(60):
        fake = "cinch_live_" + secrets.token_urlsafe(32)
        statuses.append((await app_env.post_run(fake, {"code": "out:x"})).status_code)
    burst = app_env.config.auth_failures_burst
    assert statuses[:burst] == [401] * burst
    assert set(statuses[burst + 5 :]) == {429}
    # Past the burst, a made-up key costs no database query, and buckets exist
    # only for keys that authenticated: a flood cannot evict them.
    assert calls <= 1 + burst + 5
    assert len(state.limiter._buckets) == 1
    # The real key (seen before) still runs from the same address.
    assert (await app_env.post_run(key, {"code": "out:x"})).status_code == 200


async def test_concurrent_signups_from_one_address_respect_the_cap(app_env):
    store = app_env.store
    made: list[int] = []
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        try:
            made.append(
                await store.create_account(
                    f"u{i}-{secrets.token_hex(3)}@example.com",
                    None,
                    10_000,
                    signup_ip="198.51.100.7",
                    max_per_ip_per_hour=2,
                )
            )
        except SignupLimited:
            refused += 1

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(one, i)
    assert (len(made), refused) == (2, 6)
    granted = await store.fetchval(
        "SELECT count(*) FROM ledger l JOIN accounts a ON a.id = l.account_id "
        "WHERE a.signup_ip = '198.51.100.7' AND l.kind = 'grant'"
    )
    assert granted == 2


# -- the ledger's own calls --------------------------------------------------------------


def _body_hash(code: str) -> bytes:
    from api._runs import parse_run_body

    return parse_run_body(f'{{"code": "{code}"}}'.encode(), 10_000, 10_000).body_hash


@pytest.fixture
async def store(database_url: str, tmp_path: Path) -> Any:
    async with trio_asyncio.open_loop():
        s = await Store.open(database_url, tmp_path, "ledger-test")
        try:
            yield s
        finally:
            await s.aclose()


async def _account(store: Store, credits: int) -> tuple[int, bytes, int]:
    account = await store.create_account(None, None, credits)
    key, key_id = await store.create_key(account)
    return account, hash_key(key), key_id


async def test_finishing_a_run_twice_charges_once_and_returns_the_first_outcome(store):
    account, key_hash, key_id = await _account(store, 1000)
    start = await store.ledger.begin_run(key_hash, "run-twice", 500)
    assert start.hold_id is not None
    kw: dict[str, Any] = {
        "run_id": "run-twice",
        "hold_id": start.hold_id,
        "account_id": account,
        "key_id": key_id,
        "response": {"stdout": "x"},
    }
    first = await store.ledger.finish_run(outcome=OUTCOME, **kw)
    # The retry after a lost acknowledgement reports another duration: ignored.
    again = await store.ledger.finish_run(
        outcome=RunOutcome("python", "exited", 0, 900, 0, True), **kw
    )
    assert (first.charged, first.first) == (40, True)
    assert (again.charged, again.first, again.available) == (40, False, 960)
    assert await store.balance(account) == (960, 960)
    await _assert_invariants(store)


async def test_an_expired_hold_is_not_revived(store):
    account, key_hash, _ = await _account(store, 2000)
    start = await store.ledger.begin_run(key_hash, "old-run", 500)
    assert start.hold_id is not None
    await store.execute("UPDATE holds SET expires_at = now() - interval '1 second'")
    assert await store.ledger.extend_hold(start.hold_id, 500) is None
    assert await store.balance(account) == (2000, 2000)
    await store.ledger.abort_run("old-run")
    await _assert_invariants(store)


async def test_charge_is_the_exact_duration_but_never_another_runs_hold(store):
    account, key_hash, key_id = await _account(store, 2000)
    first = await store.ledger.begin_run(key_hash, "run-1", 500)
    second = await store.ledger.begin_run(key_hash, "run-2", 500)
    assert (first.hold_amount, second.hold_amount) == (500, 500)

    async def finish(start: Any, run_id: str, ms: int) -> Any:
        return await store.ledger.finish_run(
            run_id=run_id,
            hold_id=start.hold_id,
            account_id=account,
            key_id=key_id,
            outcome=RunOutcome("python", "exited", 0, ms, 0, True),
            response={},
        )

    # Past its own 500-credit hold: charged the exact duration from unheld credits.
    done = await finish(first, "run-1", 1200)
    assert (done.charged, done.available) == (1200, 2000 - 1200 - 500)
    # The last 800 credits pay for a 900 ms run: capped, never below zero.
    done = await finish(second, "run-2", 900)
    assert done.charged == 800
    assert await store.balance(account) == (0, 0)
    await _assert_invariants(store)


class _FakeLedger:
    def __init__(self, grants: list[int | Exception | None]) -> None:
        self.grants = grants
        self.asked: list[int] = []

    async def extend_hold(self, hold_id: int, add: int) -> int | None:
        self.asked.append(add)
        grant = self.grants.pop(0)
        if isinstance(grant, Exception):
            raise grant
        return grant


async def test_hold_budget_pays_what_is_left_and_rides_out_a_database_blip():
    ledger = _FakeLedger([751, 751, StoreError("down"), 2000])
    budget = HoldBudget(ledger, 1, 500)  # type: ignore[arg-type]
    assert await budget.extend(500) == 751  # only 251 more were available
    assert await budget.extend(751) == 751  # nothing more: the run stops at 751 ms
    # Database down: the run goes on, paid until after the next check (billed later).
    assert await budget.extend(751) == 751 + 1000
    assert budget.unreachable_checks == 1
    assert await budget.extend(760) == 2000
    assert await budget.extend(900) == 2000  # far enough ahead: no call
    assert len(ledger.asked) == 4


# -- a commit whose acknowledgement is lost ------------------------------------------------


class DropAfterCommit:
    """A loopback TCP proxy to PostgreSQL that, once armed, loses one reply.

    After the client sends a statement naming ``marker``, the server's reply
    is withheld from the point where it says the statement completed and the
    server is ready again (so its transaction committed), and both connections
    are closed: the client sees a broken connection for a call that did take
    effect.
    """

    def __init__(self, upstream: str, marker: bytes) -> None:
        self.upstream = upstream
        self.marker = marker
        self.armed = False
        self.dropped = 0
        self.port = 0

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _connect(self) -> trio.SocketStream:
        if self.upstream.startswith("/"):
            return await trio.open_unix_socket(self.upstream)
        host, _, port = self.upstream.rpartition(":")
        return await trio.open_tcp_stream(host, int(port))

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await self._connect()
        seen_marker = False

        async def up() -> None:
            nonlocal seen_marker
            with _quietly():
                while data := await client.receive_some(65536):
                    if self.armed and self.marker in data:
                        seen_marker = True
                    await server.send_all(data)
            nursery.cancel_scope.cancel()

        async def down() -> None:
            after = b""
            with _quietly():
                while data := await server.receive_some(65536):
                    if seen_marker and self.armed:
                        after += data
                    # BindComplete, a DataRow, then ReadyForQuery: it ran and committed.
                    if self.armed and _EXECUTED.search(after):
                        self.armed = False
                        self.dropped += 1
                        break
                    await client.send_all(data)
            nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(up)
                nursery.start_soon(down)
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
                await server.aclose()


_EXECUTED = re.compile(rb"2\x00\x00\x00\x04D.*Z\x00\x00\x00\x05", re.DOTALL)


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _proxied(url: str, port: int) -> tuple[str, str]:
    """The upstream address of ``url`` and the URL that goes through ``port`` instead."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    if "host" in query:  # pgserver: a unix socket directory
        upstream = f"{query['host'][0]}/.s.PGSQL.{parsed.port or 5432}"
    else:
        upstream = f"{parsed.hostname}:{parsed.port or 5432}"
    user = parsed.username or "postgres"
    auth = f"{user}:{parsed.password}@" if parsed.password else f"{user}@"
    return upstream, f"postgresql://{auth}127.0.0.1:{port}{parsed.path}"


async def test_a_lost_commit_acknowledgement_is_charged_once(database_url, tmp_path):
    from api import Config, create_app
    from pool import LiveSandboxes, StartSlots, WarmPool
    from pool.testing import FakeBackend
    from scheduler import Scheduler, SchedulerConfig

    upstream, _ = _proxied(database_url, 0)
    proxy = DropAfterCommit(upstream, b"cinch_finish_run")
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        _, url = _proxied(database_url, proxy.port)
        backend = FakeBackend(start_delay_s=0.01)
        pools = {
            name: WarmPool(
                backend,
                language=name,
                image="fake",
                size=1,
                live=LiveSandboxes(4),
                start_limiter=StartSlots(2),
            )
            for name in ("python", "javascript")
        }
        scheduler = Scheduler(pools, SchedulerConfig(queue_timeout_s=2))
        config = Config.from_env({}, data_dir=tmp_path, database_url=url)
        async with trio_asyncio.open_loop():
            store = await Store.open(url, tmp_path, "lost-ack")
            try:
                await nursery.start(scheduler.serve)
                for p in pools.values():
                    await nursery.start(p.run)
                account, _, _ = await _account(store, 5000)
                key = await _key_for(store, account)
                app = create_app(config, scheduler=scheduler, store=store)
                async with app.test_app() as test_app:
                    proxy.armed = True
                    r = await test_app.test_client().post(
                        "/run",
                        json={"code": "sleep:0.05;out:charged once"},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                assert proxy.dropped == 1
                assert r.status_code == 200
                body = await r.get_json()
                assert body["stdout"] == "charged once"
                charges = await _charges(store, account)
                assert len(charges) == 1
                assert -charges[0]["amount"] == body["creditsCharged"]
                await _assert_invariants(store)
            finally:
                await store.aclose()
        nursery.cancel_scope.cancel()


async def _key_for(store: Store, account: int) -> str:
    key, _ = await store.create_key(account, "proxy")
    return key


# -- a client that hangs up ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_client_that_hangs_up_leaves_no_request_counted_in_flight(app_env):
    """A waiting request cancelled by a disconnect used to skip ``after_request``."""
    key, _ = await app_env.new_key()
    state = app_env.app.extensions["cinch"]
    other = RunLedger(app_env.store, "slow-instance")
    await other.register_instance()
    claim = await other.begin_run(
        hash_key(key), "slow-run", 500, Idempotency("held", _body_hash("out:x"), 3600, 60)
    )
    assert claim.status is Begin.OK
    hc = HypercornConfig()
    hc.bind = [f"127.0.0.1:{_free_port()}"]
    hc.accesslog = None
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: hypercorn_serve(
                app_env.app, hc, shutdown_trigger=shutdown.wait, task_status=task_status
            )
        )
        with trio.move_on_after(1):  # the request waits on the other instance's claim
            async with httpx.AsyncClient(base_url=f"http://{hc.bind[0]}") as client:
                await client.post(
                    "/run",
                    json={"code": "out:x"},
                    headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "held"},
                )
        with trio.fail_after(5):
            await state.in_flight.wait_idle()
        assert state.metrics.in_flight._value.get() == 0
        shutdown.set()


async def test_per_key_concurrency_is_counted_across_replicas(app_env):
    """Two replicas (two instances on one database) together allow max_running runs of
    a key; a dead replica's holds stop counting once it is known dead."""
    key, account = await app_env.new_key()
    a = RunLedger(app_env.store, "replica-a")
    b = RunLedger(app_env.store, "replica-b")
    await a.register_instance()
    await b.register_instance()
    kh = hash_key(key)
    first = await a.begin_run(kh, "r1", 500, max_running=2)
    second = await b.begin_run(kh, "r2", 500, max_running=2)
    assert (first.status, second.status) == (Begin.OK, Begin.OK)
    assert (await a.begin_run(kh, "r3", 500, max_running=2)).status is Begin.LIMITED
    assert (await b.begin_run(kh, "r4", 500, max_running=2)).status is Begin.LIMITED
    # Another key of the same account has its own count.
    other, _ = await app_env.store.create_key(account, "other")
    assert (await b.begin_run(hash_key(other), "r5", 500, max_running=2)).status is Begin.OK
    await b.abort_run("r5")
    # One run ends: room for one more, from either replica.
    await a.finish_run(
        run_id="r1",
        hold_id=first.hold_id,
        account_id=account,
        key_id=first.key_id,
        outcome=OUTCOME,
        response={"stdout": ""},
        idem_key=None,
    )
    assert (await b.begin_run(kh, "r6", 500, max_running=2)).status is Begin.OK
    assert (await a.begin_run(kh, "r7", 500, max_running=2)).status is Begin.LIMITED
    # Replica b dies (no heartbeat): its holds no longer count against the key.
    await app_env.store.execute(
        "UPDATE instances SET seen_at = now() - interval '1 hour' WHERE id = 'replica-b'"
    )
    assert (await a.begin_run(kh, "r8", 500, max_running=2)).status is Begin.OK
    for ledger, run in ((a, "r8"), (b, "r2"), (b, "r6")):
        await ledger.abort_run(run)
    await _assert_invariants(app_env.store)
