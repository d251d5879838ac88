"""What the database layer does with an asyncpg connection left broken by a cancelled query.

Seen on the Swarm test bed (tests/swarm/test_swarm_stack.py) with PostgreSQL down: a
ping cancelled at its deadline left its pooled connection mid-operation, and the next
use raised asyncpg's ``InternalClientError``, which escaped the watch and stopped the
API process. Now it is a :class:`StoreError` (503 for a request), and the watch never
raises.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import trio_asyncio

from api._database import Database, StoreError
from api._database_watch import DatabaseWatch


class BrokenPool:
    """Stands in for asyncpg.Pool: every query raises what it was given."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def fetchval(self, *args: Any) -> Any:
        raise self.exc


def broken(exc: BaseException) -> Database:
    return Database(BrokenPool(exc))  # type: ignore[arg-type]


async def test_a_connection_mid_operation_is_a_store_error() -> None:
    exc = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    async with trio_asyncio.open_loop():
        with pytest.raises(StoreError):
            await broken(exc).ping()


async def test_the_watch_reports_any_failure_and_never_raises() -> None:
    for exc in (
        asyncpg.exceptions.InternalClientError("cannot switch to state 12"),
        RuntimeError("anything else"),
        OSError(-3, "Temporary failure in name resolution"),
    ):
        watch = DatabaseWatch(broken(exc))
        async with trio_asyncio.open_loop():
            assert await watch.check() is False
            assert await watch.check() is False
        stats = watch.statistics()
        assert not stats.reachable
        assert stats.failed_checks == 2
        assert stats.outages == 1
