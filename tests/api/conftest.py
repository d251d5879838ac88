"""An app over a real Postgres and a real Scheduler whose pools use the fake backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio

from api import Config, create_app
from api._store import Store
from pool import LiveSandboxes, StartSlots, WarmPool
from pool.testing import FakeBackend
from scheduler import Scheduler, SchedulerConfig


@dataclass
class AppEnv:
    app: Any
    client: Any
    store: Store
    scheduler: Scheduler
    backend: FakeBackend
    config: Config

    async def new_key(self, credits: int = 10_000) -> tuple[str, int]:
        account_id = await self.store.create_account(None, None, credits)
        key, _ = await self.store.create_key(account_id)
        return key, account_id

    async def post_run(self, key: str | None, body: Any, **headers: str) -> Any:
        h = dict(headers)
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        if isinstance(body, (bytes, str)):
            return await self.client.post("/run", data=body, headers=h)
        return await self.client.post("/run", json=body, headers=h)


@pytest.fixture
async def app_env(database_url: str, tmp_path: Path) -> AsyncIterator[AppEnv]:
    config = Config.from_env(
        {},
        data_dir=tmp_path,
        database_url=database_url,
        queue_timeout_s=0.5,
        queue_max=2,
        rate_limit_rps=5.0,
        rate_limit_burst=5,
        max_concurrent_per_key=3,
        max_code_bytes=1000,
        max_stdin_bytes=100,
    )
    backend = FakeBackend(start_delay_s=0.01)
    live = LiveSandboxes(8)
    limiter = StartSlots(2)
    pools = {
        name: WarmPool(
            backend,
            language=name,
            image="fake",
            size=1,
            live=live,
            start_limiter=limiter,
            pause_idle=False,
        )
        for name in ("python", "javascript")
    }
    scheduler = Scheduler(pools, SchedulerConfig(queue_timeout_s=0.5, queue_max=2))
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url, tmp_path, "test-instance")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(scheduler.serve)
                for p in pools.values():
                    await nursery.start(p.run)
                app = create_app(config, scheduler=scheduler, store=store)
                async with app.test_app() as test_app:
                    yield AppEnv(app, test_app.test_client(), store, scheduler, backend, config)
                nursery.cancel_scope.cancel()
        finally:
            await store.aclose()
