"""What the app's handlers share, typed: one :class:`AppState` per app."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from quart import Quart, current_app

from ._config import Config
from ._limits import FailureLimiter, KeyLimiter
from ._metrics import Metrics

if TYPE_CHECKING:
    from scheduler import Scheduler

    from ._store import Store

Readiness = Callable[[], Awaitable[dict[str, Any]]]


class RequestsInFlight:
    """Counts requests being handled, so shutdown can wait for their answers."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class KeyTenants:
    """A bounded memory of key hash -> tenant (account id), least recently used out."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._map: OrderedDict[bytes, str] = OrderedDict()

    def get(self, key_hash: bytes) -> str | None:
        tenant = self._map.get(key_hash)
        if tenant is not None:
            self._map.move_to_end(key_hash)
        return tenant

    def remember(self, key_hash: bytes, tenant: str) -> None:
        self._map[key_hash] = tenant
        self._map.move_to_end(key_hash)
        while len(self._map) > self._size:
            self._map.popitem(last=False)

    def forget(self, key_hash: bytes) -> None:
        self._map.pop(key_hash, None)


@dataclass
class AppState:
    config: Config
    store: Store
    scheduler: Scheduler
    metrics: Metrics
    limiter: KeyLimiter
    auth_failures: FailureLimiter
    readiness: Readiness | None = None
    languages_info: dict[str, Any] = field(default_factory=dict)
    in_flight: RequestsInFlight = field(default_factory=RequestsInFlight)
    # Requests waiting for another request with the same Idempotency-Key.
    idempotency_waiters: dict[tuple[int, str], trio.Event] = field(default_factory=dict)
    # The account each recently authenticated key belongs to, so an overloaded
    # server can refuse a key's run by its account's place in the queue before
    # the database round trips (only to refuse: admission still authenticates).
    key_tenants: KeyTenants = field(default_factory=lambda: KeyTenants(10_000))

    def notify_idempotency(self, account_id: int, key: str) -> None:
        event = self.idempotency_waiters.pop((account_id, key), None)
        if event is not None:
            event.set()


def app_state(app: Quart | None = None) -> AppState:
    """The state of ``app`` (by default the app handling this request)."""
    state: AppState = (app or current_app).extensions["cinch"]
    return state
