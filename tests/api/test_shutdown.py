"""SIGTERM: runs in flight finish, nothing new starts, every sandbox is destroyed, exit < 15 s."""

from __future__ import annotations

import signal
import time

import docker
import httpx
import pytest
import trio

from tests.conftest import fresh_database, start_live_server

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]


async def test_sigterm_lets_runs_finish_then_leaves_nothing(engine_ready, pg_url, tmp_path):
    server = await trio.to_thread.run_sync(
        lambda: start_live_server(
            fresh_database(pg_url), tmp_path, CINCH_POOL_PYTHON="2", CINCH_POOL_JAVASCRIPT="1"
        )
    )
    instance = (tmp_path / "instance-id").read_text().strip()
    key = await trio.to_thread.run_sync(server.new_key)
    results: list[httpx.Response] = []
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:

            async def long_run() -> None:
                results.append(
                    await client.post(
                        "/run",
                        json={"code": "import time; time.sleep(2); print('finished')"},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_run)
                await trio.sleep(0.7)  # the run is in flight
                t0 = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                await trio.sleep(0.3)
                # During the drain: still listening, new runs answered 503 + Retry-After,
                # and /readyz says not ready (so a balancer moves traffic elsewhere).
                async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as fresh:
                    during = await fresh.post(
                        "/run",
                        json={"code": "print(1)"},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    ready = await fresh.get("/readyz")
            code = await trio.to_thread.run_sync(lambda: server.process.wait(30))
            elapsed = time.monotonic() - t0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
    assert results[0].status_code == 200, results[0].text
    assert results[0].json()["stdout"] == "finished\n"
    assert during.status_code == 503, during.text
    assert int(during.headers["Retry-After"]) >= 1
    assert "restarting" in during.json()["error"]
    assert ready.status_code == 503
    assert ready.json()["checks"]["scheduler"]["accepting"] is False
    assert code == 0
    assert elapsed < 15
    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters={"label": f"cinch.owner={instance}"}) == []
    finally:
        client.close()
