"""The warm pool over the fake backend, on a virtual clock: faults in the background.

Time passes only on ``autojump_clock``.  The test waits on the backend's own
operations (each wakes it), never on sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio.testing

from pool import LiveSandboxes, StartSlots, WarmPool
from pool.testing import FakeBackend, FakeSandbox


@dataclass
class NotifyingBackend(FakeBackend):
    """A fake backend that wakes :meth:`wait_until` after every operation it ends."""

    pauses: int = 0
    _done: trio.Event = field(default_factory=trio.Event)

    def _notify(self) -> None:
        self._done.set()
        self._done = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 30) -> None:
        with trio.fail_after(timeout_s):
            while not predicate():
                await self._done.wait()

    async def start_sandbox(self, language: str, image: str) -> FakeSandbox:
        try:
            return await super().start_sandbox(language, image)
        finally:
            self._notify()

    async def pause(self, sandbox: FakeSandbox) -> None:
        try:
            await super().pause(sandbox)
            self.pauses += 1
        finally:
            self._notify()

    async def unpause(self, sandbox: FakeSandbox) -> None:
        try:
            await super().unpause(sandbox)
        finally:
            self._notify()

    async def destroy(self, sandbox: FakeSandbox) -> None:
        try:
            await super().destroy(sandbox)
        finally:
            self._notify()


@asynccontextmanager
async def full_pool(backend: NotifyingBackend, size: int = 3) -> AsyncIterator[WarmPool]:
    """A running, full pool of ``size`` (the head unpaused, the rest paused); on exit,
    the pool is shut down and every sandbox it made must be gone."""
    pool = WarmPool(
        backend,
        language="python",
        image="img:1",
        size=size,
        live=LiveSandboxes(24),
        start_limiter=StartSlots(2),
        pause_idle=True,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await backend.wait_until(lambda: backend.pauses == size - 1)
        assert (pool.statistics().ready, pool.statistics().paused) == (size, size - 1)
        yield pool
        nursery.cancel_scope.cancel()
    assert [s.id for s in backend.live] == []


async def test_failed_background_unpause_destroys_that_sandbox_and_refills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = NotifyingBackend()
    async with full_pool(backend) as pool:
        backend.fail_unpauses = 1
        first = await pool.take(timeout_s=1)  # the head; the next head unpauses behind it
        await backend.wait_until(lambda: len(backend.destroyed) == 1)

        (failed,) = [s for s in backend.created if s.destroyed]
        assert failed is not first
        assert pool.statistics().unpause_failures_total == 1
        # The pool is still running and refills to its size: one left + two new.
        await backend.wait_until(lambda: pool.statistics().ready == 3)
        assert pool.statistics().started_total == 5

        second = await pool.take(timeout_s=1)
        assert second is not failed
        assert not second.paused
        await pool.release(first)
        await pool.release(second)


async def test_take_waiting_on_a_failed_background_unpause_destroys_it_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = NotifyingBackend()
    async with full_pool(backend) as pool:
        backend.fail_unpauses = 1
        first = await pool.take(timeout_s=1)
        # This take finds the next head being unpaused in the background, waits for
        # that unpause, sees it fail and moves on to the one after.
        second = await pool.take(timeout_s=1)
        (failed,) = [s for s in backend.created[:3] if s not in (first, second)]
        await backend.wait_until(lambda: failed.destroyed)

        assert not second.paused
        assert backend.destroyed.count(failed.id) == 1
        assert pool.statistics().unpause_failures_total == 1
        await pool.release(first)
        await pool.release(second)
