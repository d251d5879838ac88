"""The API against a real `cinch serve`: real gVisor sandboxes, real Postgres, real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import httpx
import pytest
import trio

from tests.conftest import CI, REPO

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]


async def _run(client: httpx.AsyncClient, key: str, body: dict, **headers: str) -> httpx.Response:
    return await client.post(
        "/run", json=body, headers={"Authorization": f"Bearer {key}", **headers}
    )


async def test_sixteen_concurrent_runs_on_a_new_account_all_succeed(cinch_live):
    key = cinch_live.new_key(10_000)
    results: dict[int, httpx.Response] = {}
    async with httpx.AsyncClient(base_url=cinch_live.base_url, timeout=60) as client:

        async def one(i: int) -> None:
            lang = "python" if i % 2 else "javascript"
            code = f"print({i} * 3)" if lang == "python" else f"console.log({i} * 3)"
            results[i] = await _run(client, key, {"code": code, "language": lang})

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(one, i)
    for i, r in results.items():
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == f"{i * 3}\n"
    charged = sum(r.json()["creditsCharged"] for r in results.values())
    rows = cinch_live.query(
        "SELECT a.balance, (SELECT sum(amount) FROM ledger l WHERE l.account_id = a.id) AS total "
        "FROM accounts a JOIN api_keys k ON k.account_id = a.id WHERE k.last4 = $1",
        key[-4:],
    )
    assert rows[0]["balance"] == rows[0]["total"] == 10_000 - charged
    # Each run records the sandbox that served it, a container id, and none served two.
    served = cinch_live.query(
        "SELECT r.sandbox_id FROM runs r JOIN api_keys k ON k.account_id = r.account_id "
        "WHERE k.last4 = $1",
        key[-4:],
    )
    ids = [row["sandbox_id"] for row in served]
    assert len(ids) == 16
    assert all(i and len(i) == 64 for i in ids), ids
    assert len(set(ids)) == 16


async def test_concurrent_runs_and_top_ups_keep_the_ledger_exact(cinch_live):
    key = cinch_live.new_key(3_000)
    account = cinch_live.query("SELECT account_id FROM api_keys WHERE last4 = $1", key[-4:])[0][
        "account_id"
    ]
    statuses: list[int] = []
    charged: list[int] = []
    async with httpx.AsyncClient(base_url=cinch_live.base_url, timeout=60) as client:

        async def runner(i: int) -> None:
            for _ in range(3):
                r = await _run(client, key, {"code": "import time; time.sleep(0.3); print(1)"})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    charged.append(r.json()["creditsCharged"])

        async def top_up(i: int) -> None:
            await trio.to_thread.run_sync(
                cinch_live.query,
                "WITH l AS (INSERT INTO ledger (account_id, amount, kind, ref) "
                "VALUES ($1, 100, 'topup', $2) RETURNING amount) "
                "UPDATE accounts SET balance = balance + (SELECT amount FROM l) WHERE id = $1 "
                "RETURNING balance",
                account,
                f"test-topup-{i}-{os.getpid()}-{key[-6:]}",
            )

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(runner, i)
            for i in range(5):
                nursery.start_soon(top_up, i)
    assert set(statuses) <= {200, 402, 429, 503}
    assert statuses.count(200) > 0
    row = cinch_live.query(
        "SELECT a.balance, (SELECT sum(amount) FROM ledger l WHERE l.account_id = a.id) AS total, "
        "(SELECT coalesce(sum(-amount), 0) FROM ledger l WHERE l.account_id = a.id "
        " AND kind = 'charge') AS charges FROM accounts a WHERE a.id = $1",
        account,
    )[0]
    assert row["balance"] == row["total"] >= 0
    assert row["charges"] == sum(charged)
    assert row["balance"] == 3_000 + 500 - sum(charged)


def test_published_pangolin_sdk_works_unchanged(cinch_live):
    """pangolin-sdk 0.2.0 as published (installed in the venv), in a clean interpreter."""
    key = cinch_live.new_key(10_000)
    broke = cinch_live.new_key(0)
    script = textwrap.dedent(
        f"""
        import pangolin
        from pangolin import Sandbox, CinchError
        assert pangolin.__version__ == "0.2.0", pangolin.__version__
        box = Sandbox(api_key={key!r}, base_url={cinch_live.base_url!r})
        r = box.run("print(2 + 2)")
        assert r.stdout == "4\\n" and r.ok and r.exit_code == 0, r
        r = box.run("console.log(2 + 2)", language="javascript")
        assert r.stdout == "4\\n" and r.ok, r
        r = box.run("import sys; sys.exit(3)")
        assert r.exit_code == 3 and not r.ok and not r.timed_out, r
        for bad, status in ((Sandbox(api_key="cinch_live_nope", base_url={cinch_live.base_url!r}), 401),
                            (Sandbox(api_key={broke!r}, base_url={cinch_live.base_url!r}), 402)):
            try:
                bad.run("print(1)")
            except CinchError as e:
                assert e.status == status, (e.status, str(e))
                assert str(e), "error message must not be empty"
            else:
                raise AssertionError("expected CinchError")
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"


def test_metrics_pass_promtool(cinch_live, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if CI:
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    key = cinch_live.new_key()
    httpx.post(
        cinch_live.base_url + "/run",
        json={"code": "print(1)"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    text = httpx.get(cinch_live.base_url + "/metrics", timeout=10).text
    for name in (
        "cinch_runs_total",
        "cinch_run_duration_seconds_bucket",
        "cinch_run_queue_wait_seconds_bucket",
        "cinch_pool_ready",
        "cinch_pool_paused",
        "cinch_pool_starting",
        "cinch_sandbox_starts_total",
        "cinch_sandbox_start_failures_total",
        "cinch_credits_charged_total",
        "cinch_http_requests_total",
        "cinch_http_requests_in_flight",
    ):
        assert name in text, name
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_doctor_checks_everything_for_real(cinch_live):
    env = {
        **os.environ,
        "CINCH_DATABASE_URL": cinch_live.database_url,
        "CINCH_DATA_DIR": str(cinch_live.data_dir / "doctor"),
        "CINCH_PUBLIC_URL": cinch_live.base_url,
    }
    out = subprocess.run(
        [sys.executable, "-m", "api", "doctor"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for line in (
        "OK    runsc",
        "OK    engine reachable",
        "OK    runtime registered",
        "OK    images present and current",
        "OK    a sandbox starts",
        "OK    ls / works inside",
        "OK    node 20 with ES modules",
        "OK    database",
        f"OK    server answers: {cinch_live.base_url}/healthz",
    ):
        assert line in out.stdout, out.stdout


async def test_errors_over_real_http_are_json(cinch_live):
    async with httpx.AsyncClient(base_url=cinch_live.base_url, timeout=30) as client:
        for method, path, status in (("GET", "/nope", 404), ("DELETE", "/run", 405)):
            r = await client.request(method, path)
            assert r.status_code == status
            assert r.headers["content-type"].startswith("application/json")
            assert "error" in r.json()
    # A 32 MiB body (over code, stdin and files, escaped) is refused before it is
    # read. Over a plain socket: httpx's body generator, cut short by the early
    # answer, warns when it is garbage collected.
    host, port = cinch_live.base_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"POST /run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer cinch_live_x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 33554432\r\n\r\n" + b"x" * 65536
        )
        answer = b""
        with trio.fail_after(30):
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b"application/json" in head.lower()
    assert "error" in json.loads(body)


async def test_a_client_that_hangs_up_still_pays_for_its_run(cinch_live):
    key = cinch_live.new_key(10_000)
    async with httpx.AsyncClient(base_url=cinch_live.base_url, timeout=0.8) as client:
        with pytest.raises(httpx.ReadTimeout):
            await _run(client, key, {"code": "import time; time.sleep(2); print('done')"})
    charged = 0
    with trio.move_on_after(30):
        while not charged:
            await trio.sleep(0.25)
            rows = await trio.to_thread.run_sync(
                cinch_live.query,
                "SELECT coalesce(sum(-l.amount), 0) AS c FROM ledger l JOIN api_keys k "
                "ON k.account_id = l.account_id WHERE k.last4 = $1 AND l.kind = 'charge'",
                key[-4:],
            )
            charged = rows[0]["c"]
    assert charged >= 1900, "the run went on after the client left and was charged in full"


async def test_rejected_requests_do_not_stall_a_keep_alive_connection(cinch_live):
    """An answer sent before the body was read once left the connection stuck."""
    async with httpx.AsyncClient(base_url=cinch_live.base_url, timeout=5) as client:
        for path, status in (("/run", 401), ("/nowhere", 404), ("/run", 401)):
            for _ in range(5):
                r = await client.post(path, json={"code": "print(1)"},
                                      headers={"Authorization": "Bearer nope"})
                assert r.status_code == status
        assert (await client.get("/healthz")).status_code == 200


async def test_unknown_fields_change_nothing_in_a_real_sandbox(cinch_live):
    # Fields a caller might hope would loosen the sandbox are ignored: still uid
    # 1000, no network, the default time limit, a read-only root.
    key = cinch_live.new_key(10_000)
    code = textwrap.dedent(
        """
        import os, socket
        print(os.getuid())
        try:
            socket.create_connection(("127.0.0.1", 80), timeout=1)
            print("network")
        except OSError:
            print("no network")
        try:
            open("/etc/owned", "w")
            print("writable root")
        except OSError:
            print("read-only root")
        """
    )
    body = {
        "code": code,
        "timeout": 999,
        "timeoutSeconds": 999,
        "memory": "8g",
        "network": "host",
        "user": "root",
        "privileged": True,
    }
    async with httpx.AsyncClient(base_url=cinch_live.base_url, timeout=30) as client:
        r = await _run(client, key, body)
    assert r.status_code == 200, r.text
    assert r.json()["stdout"].split("\n")[:3] == ["1000", "no network", "read-only root"]
    assert r.json()["exitCode"] == 0
