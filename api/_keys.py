"""API keys: made from the OS's CSPRNG, stored only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
import string
from typing import Any

import asyncpg

from ._database import Database, NotFoundError

KEY_PREFIX = "cinch_live_"
_BASE62 = string.digits + string.ascii_letters


def new_api_key() -> str:
    """``cinch_live_`` + 43 base62 characters: 256 bits from the OS's CSPRNG."""
    n = int.from_bytes(secrets.token_bytes(32), "big")
    chars = []
    for _ in range(43):
        n, r = divmod(n, 62)
        chars.append(_BASE62[r])
    return KEY_PREFIX + "".join(chars)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyRecords(Database):
    """Create, list, revoke and regenerate an account's API keys."""

    async def create_key(self, account_id: int, name: str = "default") -> tuple[str, int]:
        key = new_api_key()
        key_id = await self.fetchval(
            "INSERT INTO api_keys (account_id, name, key_hash, last4) VALUES ($1, $2, $3, $4) "
            "RETURNING id",
            account_id,
            name,
            hash_key(key),
            key[-4:],
        )
        return key, int(key_id)

    async def revoke_key(self, account_id: int, key_id: int) -> None:
        status = await self.execute(
            "UPDATE api_keys SET revoked_at = now() "
            "WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
            key_id,
            account_id,
        )
        if status.endswith(" 0"):
            raise NotFoundError("no such key")

    async def regenerate_key(self, account_id: int, key_id: int) -> tuple[str, int]:
        """Revoke ``key_id`` and issue a new key with its name, in one transaction."""
        key = new_api_key()

        async def run(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                name = await conn.fetchval(
                    "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND account_id = $2 "
                    "AND revoked_at IS NULL RETURNING name",
                    key_id,
                    account_id,
                )
                if name is None:
                    raise NotFoundError("no such key")
                return int(
                    await conn.fetchval(
                        "INSERT INTO api_keys (account_id, name, key_hash, last4) "
                        "VALUES ($1, $2, $3, $4) RETURNING id",
                        account_id,
                        name,
                        hash_key(key),
                        key[-4:],
                    )
                )

        return key, int(await self.with_conn(run))

    async def list_keys(self, account_id: int) -> list[Any]:
        return await self.fetch(
            "SELECT id, name, last4, created_at, last_used_at FROM api_keys "
            "WHERE account_id = $1 AND revoked_at IS NULL ORDER BY id",
            account_id,
        )

    async def account_id_for_key(self, key: str) -> int | None:
        value = await self.fetchval(
            "SELECT account_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_key(key),
        )
        return int(value) if value is not None else None
