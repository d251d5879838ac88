"""The connection pool and the one place where asyncpg errors become ours.

asyncpg runs on asyncio; the app runs on Trio.  Every call crosses with
``trio_asyncio.aio_as_trio`` inside the loop opened by ``api._service`` (or a
test fixture).  The record classes (keys, accounts, payments, credits) and the
:class:`~api._ledger.RunLedger` all speak SQL through a :class:`Database`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import trio
import trio_asyncio

log = logging.getLogger("cinch.store")

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")

# A FROM item that makes the statement's own transaction commit without waiting
# for the WAL flush (set_config(..., true) is SET LOCAL).
ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true) AS _async_commit"


class StoreError(Exception):
    """The database failed or is unreachable. Ours: the request gets 503."""


class NotFoundError(StoreError):
    """The account, key or payment does not exist (or is not the caller's)."""


async def _reset(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs on release: no open transaction.

    asyncpg's default reset sends ``RESET ALL; UNLISTEN *; ...`` on every
    release: one more round trip per query, on the request path.  Nothing here
    leaves session state behind (no SET, LISTEN or cursors; the one advisory
    lock is released in a ``finally``), so a rollback when a transaction was
    left open is enough.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _aio(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    wrapped: Callable[..., Awaitable[T]] = trio_asyncio.aio_as_trio(fn)
    return wrapped


async def connect_pool(database_url: str) -> asyncpg.Pool:
    """A pool of connections to ``database_url``; :class:`StoreError` if unreachable."""
    try:
        pool: asyncpg.Pool = await _aio(asyncpg.create_pool)(
            database_url, min_size=2, max_size=16, command_timeout=10, reset=_reset
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreError(f"cannot connect to the database: {exc}") from exc
    return pool


class Database:
    """Queries over one asyncpg pool, with database failures mapped to :class:`StoreError`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await _aio(self._pool.close)()

    async def migrate(self) -> None:
        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_advisory_lock(7342001)")
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version integer PRIMARY KEY, name text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {
                    r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
                }
                for path in sorted(MIGRATIONS.glob("*.sql")):
                    version = int(path.name.split("_", 1)[0])
                    if version in done:
                        continue
                    log.info("applying migration %s", path.name)
                    async with conn.transaction():
                        await conn.execute(path.read_text())
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                            version,
                            path.name,
                        )
            finally:
                await conn.execute("SELECT pg_advisory_unlock(7342001)")

        await self.with_conn(run)

    async def with_conn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` with a connection of the pool (for transactions)."""

        async def inner() -> T:
            async with self._pool.acquire() as conn:
                return await fn(conn)

        return await self._call(inner)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await _aio(fn)(*args)
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError,
            # A connection whose earlier query was cancelled mid-way (a caller's deadline)
            # while the server went away: "cannot switch to state ...; another operation
            # is in progress". The connection is unusable, the database may be down.
            asyncpg.exceptions.InternalClientError,
            ConnectionError,
            OSError,
            TimeoutError,
        ) as exc:
            raise StoreError(f"database unavailable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            if exc.sqlstate and exc.sqlstate.startswith(("08", "57")):
                raise StoreError(f"database unavailable: {exc}") from exc
            raise

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._call(self._pool.fetchrow, sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._call(self._pool.fetch, sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call(self._pool.fetchval, sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return str(await self._call(self._pool.execute, sql, *args))

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")


async def insert_ledger_row(
    conn: asyncpg.Connection, account_id: int, amount: int, kind: str, ref: str | None
) -> bool:
    """Add a ledger row and move the balance in ``conn``'s transaction.

    False (and nothing changed) when ``(kind, ref)`` is in the ledger already.
    """
    inserted = await conn.fetchval(
        "INSERT INTO ledger (account_id, amount, kind, ref) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (kind, ref) WHERE ref IS NOT NULL DO NOTHING RETURNING 1",
        account_id,
        amount,
        kind,
        ref,
    )
    if not inserted:
        return False
    await conn.execute(
        "UPDATE accounts SET balance = balance + $2 WHERE id = $1", account_id, amount
    )
    return True
