"""Warm pools: pre-started sandboxes per language, the head kept ready.

A :class:`WarmPool` keeps ``size`` sandboxes of one language started, attached
and ready.  The oldest (the head) stays unpaused, so taking it costs nothing;
the others are paused when ``pause_idle`` is set.  Taking a sandbox unpauses the
next one and starts a replacement at once.  Starts are limited across pools by a
shared :class:`trio.CapacityLimiter`, back off after failures, and stop for a
while (the circuit breaker) after repeated failures.  Sandboxes older than
``max_age_s`` or made from an outdated image are drained and replaced.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from ._errors import NoCapacity, PoolError
from ._protocol import Backend, Sandbox

log = logging.getLogger("cinch.pool")


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of one pool (see :meth:`WarmPool.statistics`)."""

    language: str
    size: int
    ready: int
    paused: int
    starting: int
    waiting: int
    taken_total: int
    started_total: int
    start_failures_total: int
    consecutive_failures: int
    breaker_open: bool
    drained_total: int
    last_start_s: float | None
    start_seconds_sum: float
    unpause_failures_total: int


class LiveSandboxes:
    """The global cap on live sandboxes (warm and running) across every pool."""

    def __init__(self, total: int) -> None:
        self.limiter = trio.CapacityLimiter(total)

    @property
    def in_use(self) -> int:
        return int(self.limiter.borrowed_tokens)

    @property
    def total(self) -> int:
        return int(self.limiter.total_tokens)


class WarmPool:
    """Pre-started sandboxes of one language. Start with ``await nursery.start(pool.run)``."""

    def __init__(
        self,
        backend: Backend,
        *,
        language: str,
        image: str,
        size: int,
        live: LiveSandboxes,
        start_limiter: trio.CapacityLimiter,
        pause_idle: bool = True,
        max_age_s: float = 600.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        breaker_threshold: int = 5,
        refill_delay_s: float = 0.0,
    ) -> None:
        self._backend = backend
        self.language = language
        self.image = image
        self.size = size
        self._live = live
        self._start_limiter = start_limiter
        self._pause_idle = pause_idle
        self._max_age_s = max_age_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._breaker_threshold = breaker_threshold
        # Runs before refills: after a take, the replacement waits until that run
        # ends (or this long at most), unless runs are already waiting for one.
        self._refill_delay_s = refill_delay_s
        self._defer_until = -math.inf
        self._ready: deque[Sandbox] = deque()
        self._paused: set[str] = set()
        self._unpausing: dict[str, trio.Event] = {}
        self._born: dict[str, float] = {}
        self._starting = 0
        self._waiting = 0
        self._changed = trio.Event()
        self._wake_refill = trio.Event()
        self._closed = False
        self._consecutive_failures = 0
        self._breaker_until = 0.0
        self._taken = 0
        self._started = 0
        self._failures = 0
        self._drained = 0
        self._last_start_s: float | None = None
        self._start_seconds_sum = 0.0
        self._unpause_failures = 0
        self._nursery: trio.Nursery | None = None
        # Each live sandbox holds one token of the global cap, under its own key.
        self._tokens: dict[str, object] = {}

    # -- public -----------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            language=self.language,
            size=self.size,
            ready=len(self._ready),
            paused=len(self._paused),
            starting=self._starting,
            waiting=self._waiting,
            taken_total=self._taken,
            started_total=self._started,
            start_failures_total=self._failures,
            consecutive_failures=self._consecutive_failures,
            breaker_open=self.breaker_open,
            drained_total=self._drained,
            last_start_s=self._last_start_s,
            start_seconds_sum=self._start_seconds_sum,
            unpause_failures_total=self._unpause_failures,
        )

    @property
    def breaker_open(self) -> bool:
        return trio.current_time() < self._breaker_until

    def _pop_head(self) -> Sandbox:
        sandbox = self._ready.popleft()
        self._taken += 1
        if self._refill_delay_s > 0:
            self._defer_until = trio.current_time() + self._refill_delay_s
        # Keep the next head unpaused ahead of the next run.
        if self._ready and self._ready[0].id in self._paused and self._nursery is not None:
            self._nursery.start_soon(self._unpause_ahead, self._ready[0])
        self._kick()
        return sandbox

    async def take(self, timeout_s: float) -> Sandbox:
        """A ready, unpaused sandbox, waiting at most ``timeout_s`` for one.

        Raises :class:`NoCapacity` when none arrives in time.
        """
        with trio.move_on_after(timeout_s):
            self._waiting += 1
            try:
                while True:
                    if self._ready:
                        sandbox = self._pop_head()
                        if sandbox.id not in self._paused and not sandbox.alive_nowait():
                            # Died while idle (e.g. the engine restarted): replace it.
                            log.info(
                                "%s pool: dropping dead sandbox %s", self.language, sandbox.id[:12]
                            )
                            self._nursery_discard(sandbox)
                            continue
                        try:
                            await self._ensure_unpaused(sandbox)
                        except PoolError as exc:
                            log.warning("%s pool: unpause failed: %s", self.language, exc)
                            self._nursery_discard(sandbox)
                            continue
                        except BaseException:
                            # Cancelled or timed out after we took it: nobody else
                            # holds it, so destroy it here or it lives forever.
                            self._nursery_discard(sandbox)
                            raise
                        return sandbox
                    # Tell the refill loop a run is waiting, and sleep until the pool
                    # changes (a sandbox ready, a start failed). Not _kick(): waking
                    # the other waiters here made them wake each other in a loop,
                    # burning most of a core whenever runs queued.
                    self._wake_refill.set()
                    changed = self._changed
                    await changed.wait()
            finally:
                self._waiting -= 1
        raise NoCapacity(f"no {self.language} sandbox ready within {timeout_s:g}s")

    async def wait_ready(self) -> None:
        """Return once a sandbox is ready (at once for a pool of size 0)."""
        while self.size > 0 and not self._ready:
            changed = self._changed
            await changed.wait()

    async def release(self, sandbox: Sandbox) -> None:
        """Destroy a sandbox that was taken (always: sandboxes are never reused)."""
        self._defer_until = -math.inf  # its run is over: refills may go ahead
        self._kick()
        try:
            await self._backend.destroy(sandbox)
        finally:
            self._release_token(sandbox)
            self._kick()

    # -- running ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool full until cancelled; then destroy every warm sandbox."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._refill_loop)
                nursery.start_soon(self._age_loop)
                task_status.started()
        finally:
            self._closed = True
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                await self.drain()

    async def drain(self) -> None:
        """Destroy every warm sandbox now (shutdown, or an outdated image)."""
        sandboxes = list(self._ready)
        self._ready.clear()
        async with trio.open_nursery() as nursery:
            for sandbox in sandboxes:
                nursery.start_soon(self._discard, sandbox)

    def set_image(self, image: str) -> None:
        """Use ``image`` for new sandboxes; older ones are drained by the age loop."""
        self.image = image
        self._kick()

    # -- internals -------------------------------------------------------------------

    def _kick(self) -> None:
        self._wake_refill.set()
        self._changed.set()
        self._changed = trio.Event()

    def _release_token(self, sandbox: Sandbox) -> None:
        token = self._tokens.pop(sandbox.id, None)
        if token is not None:
            self._live.limiter.release_on_behalf_of(token)
        self._paused.discard(sandbox.id)

    async def _discard(self, sandbox: Sandbox) -> None:
        self._drained += 1
        try:
            await self._backend.destroy(sandbox)
        finally:
            self._release_token(sandbox)

    async def _ensure_unpaused(self, sandbox: Sandbox) -> None:
        """Unpause once, however many tasks ask; the others wait for that one."""
        if sandbox.id not in self._paused:
            return
        pending = self._unpausing.get(sandbox.id)
        if pending is not None:
            await pending.wait()
            if sandbox.id in self._paused:
                raise PoolError("unpause failed")
            return
        done = self._unpausing[sandbox.id] = trio.Event()
        try:
            await self._backend.unpause(sandbox)
            self._paused.discard(sandbox.id)
        except Exception:
            # Whatever the error, the sandbox's state is unknown: it can no longer be
            # served. Still ready (the unpause ran ahead of any take), it is ours to
            # destroy; taken, its taker destroys it.
            self._unpause_failures += 1
            if self._nursery is not None and sandbox in self._ready:
                self._ready.remove(sandbox)
                self._nursery_discard(sandbox)
                self._kick()  # refill replaces it
            raise
        finally:
            del self._unpausing[sandbox.id]
            done.set()

    async def _unpause_ahead(self, sandbox: Sandbox) -> None:
        """Unpause the next head in the background, before its run asks.

        Runs in the pool's nursery, so it never raises: an error there would stop
        the pool and the server with it. A failure costs only this sandbox.
        """
        try:
            await self._ensure_unpaused(sandbox)
        except PoolError as exc:
            log.warning(
                "%s pool: unpause of %s failed, destroying it: %s",
                self.language,
                sandbox.id[:12],
                exc,
            )
        except Exception:
            log.exception(
                "%s pool: unpause of %s failed, destroying it", self.language, sandbox.id[:12]
            )

    def _nursery_discard(self, sandbox: Sandbox) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._discard, sandbox)

    def _deficit(self) -> int:
        return self.size - len(self._ready) - self._starting

    async def _refill_loop(self) -> None:
        assert self._nursery is not None
        while True:
            # Demand: the target size, or the runs waiting when the pool is size 0.
            want = max(self._deficit(), self._waiting - self._starting - len(self._ready))
            if want > 0 and not self._closed:
                if self.breaker_open:
                    await trio.sleep_until(self._breaker_until)
                    continue
                if self._waiting == 0 and trio.current_time() < self._defer_until:
                    self._wake_refill = trio.Event()
                    with trio.move_on_at(self._defer_until):
                        await self._wake_refill.wait()
                    continue
                token = object()
                try:
                    self._live.limiter.acquire_on_behalf_of_nowait(token)
                except trio.WouldBlock:
                    await self._wait_for_change()
                    continue
                self._starting += 1
                self._nursery.start_soon(self._start_one, token)
                continue
            await self._wait_for_change()

    async def _wait_for_change(self) -> None:
        self._wake_refill = trio.Event()
        with trio.move_on_after(1.0):  # also picks up global capacity freed elsewhere
            await self._wake_refill.wait()

    async def _start_one(self, token: object) -> None:
        sandbox: Sandbox | None = None
        try:
            async with self._start_limiter:
                t0 = trio.current_time()
                sandbox = await self._backend.start_sandbox(self.language, self.image)
                elapsed = trio.current_time() - t0
            self._last_start_s = elapsed
            self._start_seconds_sum += elapsed
            self._started += 1
            self._consecutive_failures = 0
            self._tokens[sandbox.id] = token
            self._born[sandbox.id] = trio.current_time()
            # Only the head stays unpaused; pausing the rest saves their idle CPU.
            if self._pause_idle and self._ready and self._waiting == 0:
                await self._backend.pause(sandbox)
                self._paused.add(sandbox.id)
            if self._closed:
                await self._discard(sandbox)
                return
            self._ready.append(sandbox)
        except (PoolError, OSError) as exc:
            self._failures += 1
            self._consecutive_failures += 1
            delay = min(
                self._backoff_max_s,
                self._backoff_initial_s * math.pow(2, self._consecutive_failures - 1),
            )
            if self._consecutive_failures >= self._breaker_threshold:
                self._breaker_until = trio.current_time() + delay
                log.warning(
                    "%s pool: %d start failures in a row, breaker open for %.1fs: %s",
                    self.language,
                    self._consecutive_failures,
                    delay,
                    exc,
                )
            else:
                log.info("%s pool: start failed (%s), retry in %.1fs", self.language, exc, delay)
            if sandbox is not None:
                with trio.CancelScope(shield=True):
                    await self._discard(sandbox)
            else:
                self._live.limiter.release_on_behalf_of(token)
            await trio.sleep(delay)
        except BaseException:
            # Cancelled (shutdown) while starting or pausing: what we made is ours to remove.
            with trio.CancelScope(shield=True):
                if sandbox is None:
                    self._live.limiter.release_on_behalf_of(token)
                elif sandbox not in self._ready:
                    await self._discard(sandbox)
            raise
        finally:
            self._starting -= 1
            self._kick()

    async def _age_loop(self) -> None:
        while True:
            await trio.sleep(min(30.0, self._max_age_s / 4))
            now = trio.current_time()
            stale = [
                s
                for s in self._ready
                if now - self._born.get(s.id, now) > self._max_age_s or s.image != self.image
            ]
            for sandbox in stale:
                if sandbox in self._ready and sandbox.id not in self._unpausing:
                    self._ready.remove(sandbox)
                    self._nursery_discard(sandbox)
            if stale:
                self._kick()


async def run_pools(
    pools: Iterable[WarmPool], *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Run every pool until cancelled (each then destroys its warm sandboxes)."""
    async with trio.open_nursery() as nursery:
        for p in pools:
            await nursery.start(p.run)
        task_status.started()
