"""Postgres through asyncpg: the database of one Cinch instance, by concern.

::

    Store ── KeyRecords       api keys                       _keys.py
          ── AccountRecords   accounts, sessions, usage      _accounts.py
          ── PaymentRecords   top-ups                        _payment_records.py
          ── CreditRecords    grants, balances, invariant    _ledger.py
          └─ .ledger          RunLedger: a run's money path  _ledger.py
    Database: the pool, migrations, error mapping            _database.py
    start_embedded: pgserver when no URL is configured       _embedded.py

These modules are the only ones that speak SQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import trio

from ._accounts import AccountRecords, SignupLimited
from ._database import Database, NotFoundError, StoreError, connect_pool
from ._embedded import start_embedded
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

    def __init__(self, pool: asyncpg.Pool, instance_id: str, server: Any = None) -> None:
        super().__init__(pool)
        self.instance_id = instance_id
        self.server = server
        self.ledger = RunLedger(self, instance_id)

    @classmethod
    async def open(cls, database_url: str, data_dir: Path, instance_id: str) -> Store:
        """Connect (starting the embedded server when no URL is given), migrate, register."""
        server = None
        if not database_url:
            database_url, server = await trio.to_thread.run_sync(start_embedded, data_dir)
        pool = await connect_pool(database_url)
        store = cls(pool, instance_id, server)
        await store.migrate()
        await store.ledger.register_instance()
        return store
