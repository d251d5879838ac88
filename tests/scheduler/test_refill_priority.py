"""Runs before refills: a replacement waits for the taken sandbox's run, unless runs wait."""

from __future__ import annotations

import trio
import trio.testing

from pool import LiveSandboxes, StartSlots, WarmPool
from pool.testing import FakeBackend


async def _pool(nursery: trio.Nursery, backend: FakeBackend, **kw: object) -> WarmPool:
    pool = WarmPool(
        backend,
        language="python",
        image="fake",
        size=1,
        live=LiveSandboxes(8),
        start_limiter=StartSlots(2),
        pause_idle=False,
        **kw,  # type: ignore[arg-type]
    )
    await nursery.start(pool.run)
    await pool.wait_ready()
    return pool


def _sharing(
    backend: FakeBackend, slots: StartSlots, live: LiveSandboxes, language: str, size: int
) -> WarmPool:
    """A pool of ``size`` (minimum and maximum) sharing ``slots`` and ``live`` with others."""
    return WarmPool(
        backend,
        language=language,
        image="fake",
        size=size,
        max_size=size,
        live=live,
        start_limiter=slots,
        pause_idle=False,
    )


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


async def test_a_freed_start_slot_goes_to_the_emptiest_pool_not_the_first_in_line(
    autojump_clock,
):
    """One slot: the Node pool asked for 4 starts first, then the Python pool for 1.
    First in, first out, Python's would come fifth (t = 5 s); by urgency it comes second."""
    backend = FakeBackend(start_delay_s=1.0)
    slots = StartSlots(1)
    live = LiveSandboxes(16)
    pools = {
        name: _sharing(backend, slots, live, name, size)
        for name, size in (("javascript", 4), ("python", 1))
    }
    async with trio.open_nursery() as nursery:
        await nursery.start(pools["javascript"].run)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(pools["python"].run)
        t0 = trio.current_time()
        await pools["python"].wait_ready()
        assert trio.current_time() - t0 <= 2.0 + 1e-6
        await trio.sleep_until(t0 + 5.0 + 1e-3)  # five starts, one at a time
        assert pools["javascript"].statistics().ready == 4
        assert slots.borrowed_tokens == 0
        assert slots.waiting == 0
        nursery.cancel_scope.cancel()


async def test_a_start_a_run_waits_for_outranks_another_pools_refill(autojump_clock):
    backend = FakeBackend(start_delay_s=1.0)
    slots = StartSlots(1)
    live = LiveSandboxes(16)
    python = _sharing(backend, slots, live, "python", 1)
    node = _sharing(backend, slots, live, "javascript", 2)
    async with trio.open_nursery() as nursery:
        await nursery.start(python.run)
        await nursery.start(node.run)
        await python.wait_ready()
        await node.wait_ready()
        # Node's two takes queue two refills; then a Python run finds its pool empty
        # after its own take and waits: first in, first out, its start would come
        # third (ready at t = 3 s); by urgency it comes second.
        await node.take(1)
        await node.take(2)
        await trio.testing.wait_all_tasks_blocked()
        await python.take(3)
        t0 = trio.current_time()
        await python.take(4)  # waits for a start
        assert trio.current_time() - t0 <= 2.0 + 1e-6
        nursery.cancel_scope.cancel()


async def test_a_cancelled_wait_for_a_start_slot_leaks_nothing(autojump_clock):
    slots = StartSlots(1)
    order: list[str] = []

    async def hold(name: str, seconds: float) -> None:
        async with slots.slot(lambda: (0.0,)):
            order.append(name)
            await trio.sleep(seconds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "a", 1.0)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.5):
            await hold("cancelled", 1.0)
        nursery.start_soon(hold, "b", 0.1)
    assert order == ["a", "b"]
    assert slots.borrowed_tokens == 0
    assert slots.waiting == 0


async def test_a_start_cancelled_before_it_takes_a_free_slot_leaks_nothing() -> None:
    slots = StartSlots(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        async with slots.slot(lambda: (0.0,)):
            raise AssertionError("a cancelled start must not get a slot")
    assert slots.borrowed_tokens == 0
    async with slots.slot(lambda: (0.0,)):
        assert slots.borrowed_tokens == 1
    assert slots.borrowed_tokens == 0
