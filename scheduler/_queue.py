"""The wait for a sandbox: a queue fair across accounts, and a prediction of its length.

A run that finds no warm sandbox joins its language's :class:`FairQueue`. The
queue serves accounts round robin, so one account's burst of 200 cannot starve
another account's single run: the single run waits at most one round.

Admission uses a predicted wait, not a fixed time-out: the position a new run
would take in the round robin, divided by the rate at which that language's
sandboxes reach queued runs (:class:`ServiceRate`, measured while a backlog
exists; before any backlog, estimated from the start time and the start slots).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from pool import Sandbox

# Before a backlog has been measured, starts are assumed this much slower than
# the pool's running estimate: under a burst they share the CPU with runs.
LOADED_START_FACTOR = 2.0
# A measured service rate older than this no longer describes the machine.
RATE_STALE_S = 30.0
# Smoothing of the measured inter-delivery time (weight of the newest sample).
RATE_ALPHA = 0.2


@dataclass(eq=False)
class Waiter:
    """One queued run, waiting for its sandbox."""

    tenant: str
    arrived_at: float
    delivered: trio.Event = field(default_factory=trio.Event)
    sandbox: Sandbox | None = None
    # Set instead of a sandbox when the measured rate says none will come in time.
    refused_wait_s: float | None = None

    def deliver(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.delivered.set()

    def refuse(self, predicted_wait_s: float) -> None:
        self.refused_wait_s = predicted_wait_s
        self.delivered.set()


class FairQueue:
    """Waiters served round robin by tenant (account); FIFO within a tenant."""

    def __init__(self) -> None:
        self._by_tenant: OrderedDict[str, deque[Waiter]] = OrderedDict()
        self._len = 0
        self._nonempty = trio.Event()

    def __len__(self) -> int:
        return self._len

    @property
    def tenants(self) -> int:
        return len(self._by_tenant)

    def position(self, tenant: str, coming: Mapping[str, int] | None = None) -> int:
        """Where a new waiter of ``tenant`` would be served (1 = next).

        In round robin it is served in round ``k + 1``, where ``k`` is how many
        of its tenant's runs already wait; every other tenant is served at most
        that many times before it. ``coming``: more runs per tenant, let in and
        about to join (counted as if they waited).
        """
        counts = {name: len(q) for name, q in self._by_tenant.items()}
        for name, n in (coming or {}).items():
            counts[name] = counts.get(name, 0) + n
        own = counts.pop(tenant, 0)
        others = sum(min(n, own + 1) for n in counts.values())
        return others + own + 1

    def push(self, waiter: Waiter) -> None:
        self._by_tenant.setdefault(waiter.tenant, deque()).append(waiter)
        self._len += 1
        self._nonempty.set()

    def pop(self) -> Waiter | None:
        """The next waiter in round-robin order, or None."""
        if not self._by_tenant:
            return None
        tenant, q = next(iter(self._by_tenant.items()))
        waiter = q.popleft()
        self._len -= 1
        if q:
            self._by_tenant.move_to_end(tenant)
        else:
            del self._by_tenant[tenant]
        if not self._len:
            self._nonempty = trio.Event()
        return waiter

    def in_order(self) -> list[Waiter]:
        """Every waiter in the order :meth:`pop` would serve them."""
        queues = list(self._by_tenant.values())
        order: list[Waiter] = []
        depth = max((len(q) for q in queues), default=0)
        for i in range(depth):
            order.extend(q[i] for q in queues if len(q) > i)
        return order

    def remove(self, waiter: Waiter) -> None:
        """Take ``waiter`` out (it gave up); no-op if already served."""
        q = self._by_tenant.get(waiter.tenant)
        if q is None or waiter not in q:
            return
        q.remove(waiter)
        self._len -= 1
        if not q:
            del self._by_tenant[waiter.tenant]
        if not self._len:
            self._nonempty = trio.Event()

    async def wait_nonempty(self) -> None:
        await self._nonempty.wait()


class ServiceRate:
    """How fast sandboxes reach queued runs, measured while a backlog exists.

    Only deliveries made while other runs still wait count: with no backlog the
    interval between deliveries measures the arrivals, not our capacity.
    """

    def __init__(self) -> None:
        self._interval_s: float | None = None
        self._last_delivery: float | None = None
        self._measured_at = -math.inf
        # Intervals measured since the rate was last (re)started.
        self.samples = 0

    def note_delivery(self, *, backlog: bool) -> None:
        now = trio.current_time()
        if backlog and self._last_delivery is not None:
            dt = max(1e-3, now - self._last_delivery)
            if self._interval_s is None or now - self._measured_at > RATE_STALE_S:
                self._interval_s = dt
                self.samples = 1
            else:
                self._interval_s += RATE_ALPHA * (dt - self._interval_s)
                self.samples += 1
            self._measured_at = now
        self._last_delivery = now if backlog else None

    def note_idle(self) -> None:
        """The backlog is gone: the next delivery starts a new measurement."""
        self._last_delivery = None

    def measured(self) -> float | None:
        """Deliveries per second during the latest backlog, if recent."""
        if self._interval_s is None or trio.current_time() - self._measured_at > RATE_STALE_S:
            return None
        return 1.0 / self._interval_s


def predict_wait_s(
    *,
    position: int,
    ready: int,
    starting: int,
    measured_rate: float | None,
    start_estimate_s: float,
    start_slots: float,
) -> float:
    """The predicted wait of a run at ``position`` in its language's queue.

    ``ready`` sandboxes serve the first positions at once. Beyond them, each
    position costs one interval of the measured service rate, or without a
    measurement in rounds of one loaded start time per ``start_slots`` starts (the
    sandboxes already starting, and starts free slots can begin now, arrive
    within the first round).
    """
    beyond = position - ready
    if beyond <= 0:
        return 0.0
    if measured_rate is not None and measured_rate > 0:
        return beyond / measured_rate
    start_s = max(0.05, start_estimate_s) * LOADED_START_FACTOR
    slots = max(1, math.floor(start_slots))
    # The starts under way and those free slots can begin now arrive within one
    # start; each further round of ``slots`` starts takes one more. Starts asked
    # for beyond the slots wait for one like any other: they are later rounds.
    now = min(starting, slots) + max(0, slots - starting)
    if beyond <= now:
        return start_s
    return start_s + math.ceil((beyond - now) / slots) * start_s
