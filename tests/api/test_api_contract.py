"""The HTTP contract of /run and friends: statuses, JSON errors, credits, idempotency.

Real PostgreSQL, real Scheduler; the sandboxes are the fake backend's scripted
programs (see pool/testing.py), so these run in seconds.
"""

from __future__ import annotations

import json

import pytest
import trio

pytestmark = pytest.mark.postgres


async def test_run_returns_the_contract_fields(app_env):
    key, account = await app_env.new_key()
    r = await app_env.post_run(key, {"code": "out:4\n"})
    assert r.status_code == 200
    body = await r.get_json()
    assert body["stdout"] == "4\n"
    assert body["stderr"] == ""
    assert body["exitCode"] == 0
    assert body["timedOut"] is False
    assert isinstance(body["durationMs"], int)
    assert body["termination"] == "exited"
    assert body["truncated"] is False
    assert body["creditsCharged"] == body["durationMs"]
    assert r.headers["X-Request-Id"]
    steps = dict(part.strip().split(";dur=") for part in r.headers["Server-Timing"].split(","))
    assert list(steps) == ["parse", "auth", "run", "settle"]
    assert all(float(ms) >= 0 for ms in steps.values())
    balance, available = await app_env.store.balance(account)
    assert int(r.headers["X-Credits-Remaining"]) == available == 10_000 - body["creditsCharged"]
    assert balance == available


@pytest.mark.parametrize(
    ("language", "expected"),
    [("python", "python"), ("PYTHON3", "python"), (" js ", "javascript"), ("Node", "javascript")],
)
async def test_language_aliases(app_env, language, expected):
    key, _ = await app_env.new_key()
    r = await app_env.post_run(key, {"code": "out:x", "language": language})
    assert r.status_code == 200
    assert (await r.get_json())["language"] == expected


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        {"code": ""},
        {"code": 5},
        {"language": "python"},
        {"code": "out:x", "language": ""},
        {"code": "out:x", "language": None},
        {"code": "out:x", "language": 3},
        {"code": "out:x", "language": "ruby"},
        {"code": "out:x", "stdin": 5},
    ],
)
async def test_bad_bodies_get_400_json(app_env, body):
    key, account = await app_env.new_key()
    r = await app_env.post_run(key, body)
    assert r.status_code == 400
    assert set(await r.get_json()) == {"error"}
    assert await app_env.store.balance(account) == (10_000, 10_000)


async def test_unknown_fields_are_ignored(app_env):
    key, _ = await app_env.new_key()
    r = await app_env.post_run(
        key, {"code": "out:ok", "timeout": 999, "memory": "8g", "network": "host", "user": "root"}
    )
    assert r.status_code == 200
    assert (await r.get_json())["stdout"] == "ok"


@pytest.mark.parametrize(
    "auth", [None, "", "Bearer", "Basic abc", "Bearer nope", "Bearer cinch_live_unknown"]
)
async def test_bad_keys_get_401(app_env, auth):
    headers = {} if auth is None else {"Authorization": auth}
    r = await app_env.client.post("/run", json={"code": "out:x"}, headers=headers)
    assert r.status_code == 401
    assert "error" in await r.get_json()


async def test_revoked_key_fails_on_the_very_next_request(app_env):
    key, account = await app_env.new_key()
    assert (await app_env.post_run(key, {"code": "out:x"})).status_code == 200
    keys = await app_env.store.list_keys(account)
    new_key, _ = await app_env.store.regenerate_key(account, keys[0]["id"])
    assert (await app_env.post_run(key, {"code": "out:x"})).status_code == 401
    assert (await app_env.post_run(new_key, {"code": "out:x"})).status_code == 200


async def test_out_of_credits_is_402_and_nothing_runs(app_env):
    key, account = await app_env.new_key(credits=0)
    before = app_env.scheduler.statistics()
    r = await app_env.post_run(key, {"code": "out:x"})
    assert r.status_code == 402
    assert "credits" in (await r.get_json())["error"]
    # No sandbox was taken and no run recorded: the scheduler was never asked.
    after = app_env.scheduler.statistics()
    assert sum(after.runs_total.values()) == sum(before.runs_total.values())
    assert after.warm_hits_total == before.warm_hits_total
    assert after.queued_runs_total == before.queued_runs_total
    assert all(not s.stdin and not s.destroyed for s in app_env.backend.created)
    assert (
        await app_env.store.fetchval("SELECT count(*) FROM runs WHERE account_id = $1", account)
        == 0
    )


async def test_credit_limit_stops_a_long_run_and_never_goes_negative(app_env):
    key, account = await app_env.new_key(credits=700)
    r = await app_env.post_run(key, {"code": "sleep:5"})
    body = await r.get_json()
    assert r.status_code == 200
    assert body["termination"] == "credit_limit"
    assert body["exitCode"] == 137
    assert 0 < body["creditsCharged"] <= 700
    balance, _available = await app_env.store.balance(account)
    assert balance == 700 - body["creditsCharged"] >= 0
    assert not await app_env.store.ledger_mismatches()


async def test_code_too_large_is_413(app_env):
    key, _ = await app_env.new_key()
    r = await app_env.post_run(key, {"code": "x" * 1001})
    assert r.status_code == 413
    r = await app_env.post_run(key, {"code": "out:x", "stdin": "y" * 101})
    assert r.status_code == 413
    r = await app_env.post_run(key, b'{"code": "' + b"x" * 100_000 + b'"}')
    assert r.status_code == 413
    assert "error" in await r.get_json()


async def test_framework_errors_are_json(app_env):
    r = await app_env.client.get("/nowhere")
    assert r.status_code == 404
    assert "error" in await r.get_json()
    r = await app_env.client.get("/run")
    assert r.status_code == 405
    assert "POST" in (await r.get_json())["error"]


async def test_rate_limit_is_429_with_headers(app_env):
    key, _ = await app_env.new_key()
    statuses = []
    for _ in range(8):
        r = await app_env.post_run(key, {"code": "out:x"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.headers["RateLimit-Limit"] == "5"
            assert r.headers["RateLimit-Remaining"] == "0"
            assert "rate limited" in (await r.get_json())["error"]
    assert statuses[:5] == [200] * 5
    assert 429 in statuses[5:]


async def test_no_capacity_is_503_with_retry_after_and_costs_nothing(app_env):
    # Twelve 2-second runs at once (three per key) on a machine that keeps at most
    # eight sandboxes alive and lets runs queue 0.5 s: some must be turned away.
    keys = [(await app_env.new_key())[0] for _ in range(4)]
    results = []

    async def one(k):
        r = await app_env.post_run(k, {"code": "sleep:2"})
        results.append((r.status_code, r.headers.get("Retry-After")))

    async with trio.open_nursery() as nursery:
        for k in keys * 3:
            nursery.start_soon(one, k)
    codes = sorted(c for c, _ in results)
    assert 503 in codes
    assert all(ra and int(ra) >= 1 for c, ra in results if c == 503)
    assert not await app_env.store.ledger_mismatches()
    rows = await app_env.store.fetch("SELECT count(*) AS n FROM holds")
    assert rows[0]["n"] == 0


async def test_idempotent_replay_is_charged_once(app_env):
    key, account = await app_env.new_key()
    h = {"Idempotency-Key": "abc-1"}
    r1 = await app_env.post_run(key, {"code": "out:once"}, **h)
    r2 = await app_env.post_run(key, {"code": "out:once"}, **h)
    b1, b2 = await r1.get_json(), await r2.get_json()
    assert b1 == b2
    assert r2.headers["Idempotent-Replayed"] == "true"
    balance, _ = await app_env.store.balance(account)
    assert balance == 10_000 - b1["creditsCharged"]
    runs = await app_env.store.fetch(
        "SELECT count(*) AS n FROM runs WHERE account_id = $1", account
    )
    assert runs[0]["n"] == 1


async def test_idempotency_key_with_another_body_is_409(app_env):
    key, _ = await app_env.new_key()
    h = {"Idempotency-Key": "abc-2"}
    assert (await app_env.post_run(key, {"code": "out:a"}, **h)).status_code == 200
    r = await app_env.post_run(key, {"code": "out:b"}, **h)
    assert r.status_code == 409
    assert "Idempotency-Key" in (await r.get_json())["error"]


async def test_idempotency_keys_are_scoped_per_account(app_env):
    key1, _ = await app_env.new_key()
    key2, _ = await app_env.new_key()
    h = {"Idempotency-Key": "shared"}
    assert (await app_env.post_run(key1, {"code": "out:a"}, **h)).status_code == 200
    r = await app_env.post_run(key2, {"code": "out:b"}, **h)
    assert r.status_code == 200
    assert (await r.get_json())["stdout"] == "b"


async def test_in_flight_duplicate_waits_for_the_first(app_env):
    key, account = await app_env.new_key()
    h = {"Idempotency-Key": "slow-1"}
    bodies = []

    async def one():
        r = await app_env.post_run(key, {"code": "sleep:1;out:done"}, **h)
        assert r.status_code == 200
        bodies.append(await r.get_json())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        await trio.sleep(0.2)
        nursery.start_soon(one)
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    assert bodies[0]["stdout"] == "done"
    runs = await app_env.store.fetch(
        "SELECT count(*) AS n FROM runs WHERE account_id = $1", account
    )
    assert runs[0]["n"] == 1


async def test_output_is_utf8_without_ascii_escapes(app_env):
    key, _ = await app_env.new_key()
    r = await app_env.post_run(key, {"code": "out:héllo ✓"})
    raw = await r.get_data()
    assert "héllo ✓".encode() in raw
    assert json.loads(raw)["stdout"] == "héllo ✓"


async def test_death_from_inside_is_charged(app_env):
    key, _account = await app_env.new_key()
    r = await app_env.post_run(key, {"code": "out:x;sleep:0.05;die"})
    body = await r.get_json()
    assert body["termination"] == "signal"
    assert body["exitCode"] == 137
    assert body["signal"] == "SIGKILL"
    assert body["creditsCharged"] == body["durationMs"] > 0
    assert not await app_env.store.ledger_mismatches()


async def test_sandbox_error_is_not_charged(app_env):
    key, account = await app_env.new_key()
    r = await app_env.post_run(key, {"code": "out:x;sleep:0.05;killed"})
    body = await r.get_json()
    assert body["termination"] == "sandbox_error"
    assert body["exitCode"] == -1
    assert body["creditsCharged"] == 0
    assert await app_env.store.balance(account) == (10_000, 10_000)


async def test_health_languages_openapi_metrics(app_env):
    assert (await app_env.client.get("/healthz")).status_code == 200
    r = await app_env.client.get("/languages")
    names = [lang["name"] for lang in (await r.get_json())["languages"]]
    assert names == ["python", "javascript"]
    doc = await (await app_env.client.get("/openapi.json")).get_json()
    assert doc["openapi"].startswith("3.1")
    assert "/run" in doc["paths"]
    key, _ = await app_env.new_key()
    await app_env.post_run(key, {"code": "out:x"})
    text = (await (await app_env.client.get("/metrics")).get_data()).decode()
    assert 'cinch_runs_total{language="python",termination="exited"} 1.0' in text
    assert "cinch_pool_ready" in text
    assert "cinch_http_requests_total" in text
