"""Postgres through asyncpg: the database of one Cinch instance, by concern.

::

    Store ── KeyRecords       api keys                       _keys.py
          ── AccountRecords   accounts, sessions, usage      _accounts.py
          ── PaymentRecords   top-ups                        _payment_records.py
          ── CreditRecords    grants, balances, invariant    _ledger.py
          └─ .ledger          RunLedger: a run's money path  _ledger.py
    Database: the pool, migrations, error mapping            _database.py
    EmbeddedPostgres: our own server when no URL is given    _embedded.py

These modules are the only ones that speak SQL.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import trio

from ._accounts import AccountRecords, SignupLimited
from ._database import Database, NotFoundError, StoreError, connect_pool
from ._embedded import EmbeddedPostgres
from ._keys import KEY_PREFIX, KeyRecords, hash_key, new_api_key
from ._ledger import CreditRecords, RunLedger
from ._payment_records import PaymentRecords

__all__ = [
    "KEY_PREFIX",
    "Database",
    "NotFoundError",
    "SignupLimited",
    "Store",
    "StoreError",
    "hash_key",
    "new_api_key",
]


class Store(KeyRecords, AccountRecords, PaymentRecords, CreditRecords):
    """Every table of one instance's database; ``ledger`` is the run money path."""

    def __init__(
        self, pool: asyncpg.Pool, instance_id: str, server: EmbeddedPostgres | None = None
    ) -> None:
        super().__init__(pool)
        self.instance_id = instance_id
        self.server = server
        self.ledger = RunLedger(self, instance_id)

    @classmethod
    async def open(cls, database_url: str, data_dir: Path, instance_id: str) -> Store:
        """Connect (starting the embedded server when no URL is given), migrate, register."""
        server = None
        if not database_url:
            server = EmbeddedPostgres(data_dir)
            try:
                database_url = await trio.to_thread.run_sync(server.open)
            except OSError as exc:
                raise StoreError(f"cannot start the embedded database: {exc}") from exc
        try:
            pool = await connect_pool(database_url)
            store = cls(pool, instance_id, server)
            await store.migrate()
            await store.ledger.register_instance()
        except BaseException:
            if server is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(server.close)
            raise
        return store

    async def aclose(self) -> None:
        """Close the pool; stop the embedded server if this process owns it."""
        try:
            await super().aclose()
        finally:
            if self.server is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.server.close)
