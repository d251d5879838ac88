"""Watch an operator's PostgreSQL (``CINCH_DATABASE_URL``): report, never manage.

The server is the operator's to start, stop and restart; Cinch only notes
whether it answers, for ``/readyz`` and ``/metrics``.  (The embedded server,
which Cinch owns, is supervised in :mod:`api._embedded`.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from ._database import Database

log = logging.getLogger("cinch.store")

CHECK_S = 2.0
PING_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class WatchStatistics:
    reachable: bool
    failed_checks: int  # checks that could not reach it, in total
    outages: int  # times it went from reachable to unreachable


class DatabaseWatch:
    """Pings the database every ``CHECK_S`` seconds and remembers what it saw."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._reachable = True
        self._failed = 0
        self._outages = 0

    def statistics(self) -> WatchStatistics:
        return WatchStatistics(self._reachable, self._failed, self._outages)

    async def check(self) -> bool:
        try:
            with trio.fail_after(PING_TIMEOUT_S):
                await self._db.ping()
        except Exception as exc:  # StoreError, TooSlowError, or anything else
            # Whatever the ping raised, the watch goes on: it reports, it never stops the
            # server it watches.
            self._failed += 1
            if self._reachable:
                self._outages += 1
                log.error("database unreachable: %s", exc or "timeout")
            self._reachable = False
            return False
        if not self._reachable:
            log.info("database reachable again")
        self._reachable = True
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(CHECK_S)
            await self.check()
