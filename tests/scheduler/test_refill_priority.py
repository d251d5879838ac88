"""Runs before refills: a replacement waits for the taken sandbox's run, unless runs wait."""

from __future__ import annotations

import trio
import trio.testing

from pool import LiveSandboxes, WarmPool
from pool.testing import FakeBackend


async def _pool(nursery: trio.Nursery, backend: FakeBackend, **kw: object) -> WarmPool:
    pool = WarmPool(
        backend,
        language="python",
        image="fake",
        size=1,
        live=LiveSandboxes(8),
        start_limiter=trio.CapacityLimiter(2),
        pause_idle=False,
        **kw,  # type: ignore[arg-type]
    )
    await nursery.start(pool.run)
    await pool.wait_ready()
    return pool


async def test_replacement_waits_for_the_run_to_end(autojump_clock):
    backend = FakeBackend(start_delay_s=0.3)
    async with trio.open_nursery() as nursery:
        pool = await _pool(nursery, backend, refill_delay_s=0.5)
        sandbox = await pool.take(1)
        await trio.sleep(0.2)  # the run is going on
        assert pool.statistics().starting == 0
        await pool.release(sandbox)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().starting == 1
        nursery.cancel_scope.cancel()


async def test_replacement_starts_after_the_delay_even_if_the_run_goes_on(autojump_clock):
    backend = FakeBackend(start_delay_s=0.3)
    async with trio.open_nursery() as nursery:
        pool = await _pool(nursery, backend, refill_delay_s=0.5)
        await pool.take(1)
        await trio.sleep(0.45)
        assert pool.statistics().starting == 0
        await trio.sleep(0.1)
        assert pool.statistics().starting == 1
        nursery.cancel_scope.cancel()


async def test_a_waiting_run_is_not_delayed(autojump_clock):
    backend = FakeBackend(start_delay_s=0.3)
    async with trio.open_nursery() as nursery:
        pool = await _pool(nursery, backend, refill_delay_s=5.0)
        await pool.take(1)
        t0 = trio.current_time()
        await pool.take(2)  # the pool is empty: this one waits for a start at once
        assert trio.current_time() - t0 < 0.5
        nursery.cancel_scope.cancel()


async def test_without_a_delay_the_replacement_starts_at_once(autojump_clock):
    backend = FakeBackend(start_delay_s=0.3)
    async with trio.open_nursery() as nursery:
        pool = await _pool(nursery, backend)
        await pool.take(1)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().starting == 1
        nursery.cancel_scope.cancel()
