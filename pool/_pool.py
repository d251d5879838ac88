"""Warm pools: pre-started sandboxes per language, the head kept ready.

A :class:`WarmPool` keeps a target number of sandboxes of one language started,
attached and ready. The target follows demand (the arrival rate times the start time, and the
queue the starts form for the shared slots: enough for 99% of runs) between
``size`` (the minimum) and ``max_size``, and decays back to the minimum when
arrivals stop; a surplus above the target is destroyed within seconds. The oldest (the head) stays unpaused, so taking it costs nothing;
the others are paused when ``pause_idle`` is set.  Taking a sandbox unpauses the
next one and starts a replacement at once.  Starts are limited across pools by a
shared :class:`StartSlots` (the most urgent start first), back off after failures, and stop for a
while (the circuit breaker) after repeated failures.  Sandboxes older than
``max_age_s`` or made from an outdated image are drained and replaced.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ._errors import NoCapacity, PoolError
from ._protocol import Backend, Sandbox

log = logging.getLogger("cinch.pool")

# Demand-following targets (see _Demand).
RATE_TAU_S = 5.0  # time constant of the arrival-rate estimate
ONSET_IDLE_S = 2 * RATE_TAU_S  # a gap this long between arrivals starts a new onset
ONSET_WINDOW_S = 3 * RATE_TAU_S  # the onset estimate counts this long, then the smoothed one
ONSET_MIN_S = 1.0  # the onset estimate's shortest window (one second of arrivals)
MISS_TARGET = 0.01  # the target aims to find a warm sandbox for 99% of runs
IDLE_MEAN = 0.05  # fewer arrivals than this per start time: the pool is idle (the minimum)
BUSY_UTILIZATION = 0.95  # start slots this busy: hold the maximum
DEFAULT_START_ESTIMATE_S = 0.6  # until the first start is measured
START_ALPHA = 0.2
SHRINK_AFTER_S = 2.0  # a surplus above the target lasting this long is destroyed


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of one pool (see :meth:`WarmPool.statistics`)."""

    language: str
    size: int  # the current target
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
    min_size: int = 0
    max_size: int = 0
    arrival_rate: float = 0.0
    start_estimate_s: float = 0.0
    # From asking for a replacement to its being ready: the start plus the wait
    # for a start slot (what the target must cover).
    replace_estimate_s: float = 0.0
    shrunk_total: int = 0
    queued: int = 0
    # The share of the (shared) start slots that every pool's arrivals keep busy.
    start_utilization: float = 0.0
    in_slot: int = 0  # of ``starting``, those holding a start slot now


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


class StartSlots:
    """How many sandboxes may start at once, shared by every pool of a host.

    A freed slot goes to the most urgent start waiting for one, asked at the
    moment the slot frees (each waiter's ``urgency()``; the larger wins, the
    earliest on a tie), not to the first that asked: a start a run is waiting for
    outranks one that only grows another language's surplus.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("at least one start slot")
        self.total_tokens = total
        self._used = 0
        self._seq = 0
        self._waiters: list[tuple[Callable[[], tuple[float, ...]], int, trio.Event]] = []
        self._demands: list[_Demand] = []

    def utilization(self) -> float:
        """The share of the slots that the arrivals keep busy: every run consumes its
        sandbox, so every arrival, of any pool sharing these slots, costs one start."""
        return sum(d.rate() * d.start_s for d in self._demands) / self.total_tokens

    @property
    def borrowed_tokens(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, urgency: Callable[[], tuple[float, ...]]) -> AsyncIterator[None]:
        if self._used < self.total_tokens and not self._waiters:
            self._used += 1
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                self._release()  # cancelled right here: give the slot back
                raise
        else:
            self._seq += 1
            entry = (urgency, self._seq, trio.Event())
            self._waiters.append(entry)
            try:
                await entry[2].wait()
            except BaseException:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                elif entry[2].is_set():
                    self._release()  # handed a slot, then cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if not self._waiters:
            self._used -= 1
            return
        best = max(self._waiters, key=lambda e: (e[0](), -e[1]))
        self._waiters.remove(best)
        best[2].set()  # the slot passes straight to it: _used is unchanged


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
        start_limiter: StartSlots,
        pause_idle: bool = True,
        max_age_s: float = 600.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        breaker_threshold: int = 5,
        refill_delay_s: float = 0.0,
        max_size: int | None = None,
        shrink_after_s: float = SHRINK_AFTER_S,
    ) -> None:
        self._backend = backend
        self.language = language
        self.image = image
        self.min_size = size
        self.max_size = max(size, size if max_size is None else max_size)
        self._demand = _Demand(start_limiter)
        self._shrink_after_s = shrink_after_s
        self._surplus_since: float | None = None
        self._shrunk = 0
        self._queued = 0  # runs waiting in the scheduler's queue for this language
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
        self._in_slot = 0  # starts holding a start slot (the rest wait for one)
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

    @property
    def size(self) -> int:
        """The current target: how many ready sandboxes the pool aims to hold."""
        return self._demand.target(self.min_size, self.max_size)

    @property
    def start_slots(self) -> int:
        """How many sandboxes may start at once (shared with the other pools)."""
        return int(self._start_limiter.total_tokens)

    def note_arrival(self) -> None:
        """A run for this language arrived (warm or not): demand for the target."""
        self._demand.note_arrival()
        self._kick()

    def note_queued(self, n: int) -> None:
        """How many runs wait in the caller's queue for a sandbox of this pool."""
        if n > self._queued:
            self._wake_refill.set()
        self._queued = n

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
            min_size=self.min_size,
            max_size=self.max_size,
            arrival_rate=self._demand.rate(),
            start_estimate_s=self._demand.start_s,
            replace_estimate_s=self._demand.replace_s,
            shrunk_total=self._shrunk,
            queued=self._queued,
            start_utilization=self._start_limiter.utilization(),
            in_slot=self._in_slot,
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
                        self._backend.set_running(sandbox)
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

    def give_back(self, sandbox: Sandbox) -> None:
        """Return an unused sandbox from :meth:`take` (its taker gave up before using it).

        It goes back to the head: it is unpaused and was never sent a program.
        """
        if self._closed or not sandbox.alive_nowait():
            self._nursery_discard(sandbox)
        else:
            self._taken -= 1
            self._ready.appendleft(sandbox)
        self._kick()

    async def wait_ready(self) -> None:
        """Return once a sandbox is ready (at once for a pool of minimum size 0)."""
        while self.min_size > 0 and not self._ready:
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

    def _starts_wanted(self) -> int:
        """Starts to begin now: the target's deficit, or the runs waiting beyond what
        is ready or starting, at most as many as there are start slots (more would
        only queue for a slot and outlive the burst as surplus)."""
        waiting = max(self._waiting, self._queued)
        unserved = waiting - len(self._ready) - self._starting
        slots = self.start_slots
        for_waiters = min(unserved, slots - self._starting)
        return max(self._deficit(), for_waiters)

    def _start_urgency(self) -> tuple[float, ...]:
        """How badly this pool needs its next start (see :class:`StartSlots`): runs
        waiting beyond what is ready come first, then the pool with the smallest
        share of its target ready."""
        # A start that holds a slot counts as ready: it is about to be (and a slot
        # frees before its sandbox joins the ready ones).
        have = len(self._ready) + self._in_slot
        unserved = max(self._waiting, self._queued) - have
        return (1.0 if unserved > 0 else 0.0, -have / max(1, self.size))

    def _shrink(self) -> None:
        """Destroy ready sandboxes above the target once the surplus has lasted."""
        surplus = len(self._ready) - self.size
        if surplus <= 0 or self._waiting or self._queued:
            self._surplus_since = None
            return
        now = trio.current_time()
        if self._surplus_since is None:
            self._surplus_since = now
            return
        if now - self._surplus_since < self._shrink_after_s:
            return
        self._surplus_since = None
        # The newest go first: the head is unpaused and the oldest age out anyway.
        for _ in range(surplus):
            if len(self._ready) <= 1:
                break
            victim = self._ready[-1]
            if victim.id in self._unpausing:
                break
            self._ready.pop()
            self._shrunk += 1
            self._nursery_discard(victim)

    async def _refill_loop(self) -> None:
        assert self._nursery is not None
        while True:
            self._shrink()
            want = self._starts_wanted()
            if want > 0 and not self._closed:
                if self.breaker_open:
                    await trio.sleep_until(self._breaker_until)
                    continue
                if (
                    self._waiting == 0
                    and self._queued == 0
                    and trio.current_time() < self._defer_until
                ):
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
        in_slot = False
        try:
            asked = trio.current_time()
            async with self._start_limiter.slot(self._start_urgency):
                self._in_slot += 1
                in_slot = True
                t0 = trio.current_time()
                sandbox = await self._backend.start_sandbox(self.language, self.image)
                elapsed = trio.current_time() - t0
            self._demand.note_start(elapsed, trio.current_time() - asked)
            self._last_start_s = elapsed
            self._start_seconds_sum += elapsed
            self._started += 1
            self._consecutive_failures = 0
            self._tokens[sandbox.id] = token
            self._born[sandbox.id] = trio.current_time()
            # Only the head stays unpaused; pausing the rest saves their idle CPU.
            if self._pause_idle and self._ready and self._waiting == 0 and self._queued == 0:
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
            if in_slot:
                self._in_slot -= 1
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


class _Demand:
    """The arrival rate and the start time of one pool, and the target they call for.

    The rate is smoothed exponentially (``RATE_TAU_S``). That estimate lags a load
    that begins after idle: after t seconds it has reached 1 - exp(-t / tau) of the
    rate, a third after 2 s. So for the first ``ONSET_WINDOW_S`` after a gap of
    ``ONSET_IDLE_S`` the rate is also counted directly (arrivals after the first,
    over the time since it, at least ``ONSET_MIN_S``), and the larger counts. A
    single arrival after idle counts nothing: a sparse caller's run does not make
    the pool start sandboxes it would destroy unused.
    """

    def __init__(self, slots: StartSlots | None = None) -> None:
        self._rate = 0.0
        self._at = -math.inf
        self._onset_at = -math.inf
        self._onset_n = 0
        self.start_s = DEFAULT_START_ESTIMATE_S
        self.replace_s = DEFAULT_START_ESTIMATE_S
        self._starts = 0
        self._slots = slots
        if slots is not None:
            slots._demands.append(self)

    def rate(self) -> float:
        """Arrivals per second."""
        now = trio.current_time()
        smoothed = self._rate * math.exp(-(now - self._at) / RATE_TAU_S)
        since = now - self._onset_at
        if self._onset_n < 2 or since > ONSET_WINDOW_S:
            return smoothed
        return max(smoothed, (self._onset_n - 1) / max(since, ONSET_MIN_S))

    def note_arrival(self) -> None:
        now = trio.current_time()
        if now - self._at > ONSET_IDLE_S:
            self._onset_at, self._onset_n = now, 0
        self._onset_n += 1
        self._rate = self._rate * math.exp(-(now - self._at) / RATE_TAU_S) + 1.0 / RATE_TAU_S
        self._at = now

    def note_start(self, seconds: float, replace_seconds: float | None = None) -> None:
        """One start took ``seconds``; ``replace_seconds`` with its wait for a start slot."""
        replace = seconds if replace_seconds is None else max(seconds, replace_seconds)
        # The first measurement replaces the guess; later ones are smoothed.
        self._starts += 1
        if self._starts == 1:
            self.start_s = seconds
            self.replace_s = replace
        else:
            self.start_s += START_ALPHA * (seconds - self.start_s)
            self.replace_s += START_ALPHA * (replace - self.replace_s)

    def target(self, minimum: int, maximum: int) -> int:
        """The fewest ready sandboxes that leave at most ``MISS_TARGET`` of runs
        without one, by the larger of two bounds, within [minimum, maximum].

        Every run consumes its sandbox and asks for a start. While one start runs,
        more runs come: a Poisson count of mean rate x start time, and the target
        covers its 99th percentile. Starts also queue for the slots, which every
        pool's arrivals keep busy (utilization rho): as a queue (M/M/1, one class
        of several), the starts this pool lacks exceed n with probability q^n, q =
        rho_pool / (1 - rho + rho_pool), which grows steeply as rho nears 1.
        """
        slots = 1 if self._slots is None else self._slots.total_tokens
        rate = self.rate()
        if rate * self.start_s < IDLE_MEAN:  # well under one run per start: idle
            return minimum
        own = rate * self.start_s / slots
        need = _poisson_quantile(rate * self.start_s, MISS_TARGET, maximum)
        rho = own if self._slots is None else max(own, self._slots.utilization())
        if rho >= BUSY_UTILIZATION:
            need = maximum
        else:
            q = own / (1.0 - rho + own)
            need = max(need, math.ceil(math.log(MISS_TARGET) / math.log(q)))
        return max(minimum, min(maximum, need))


def _poisson_quantile(mean: float, tail: float, cap: int) -> int:
    """The smallest n with P(X >= n) <= tail for X ~ Poisson(mean), at most ``cap``."""
    term = math.exp(-mean)
    below = term  # P(X < n) for n = 1
    n = 1
    while 1.0 - below > tail and n < cap:
        term *= mean / n
        below += term
        n += 1
    return n


async def run_pools(
    pools: Iterable[WarmPool], *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Run every pool until cancelled (each then destroys its warm sandboxes)."""
    async with trio.open_nursery() as nursery:
        for p in pools:
            await nursery.start(p.run)
        task_status.started()
