"""Postgres through asyncpg: the only module that speaks SQL.

asyncpg runs on asyncio; the app runs on Trio.  Every call crosses with
``trio_asyncio.aio_as_trio`` inside the loop opened by ``__main__`` (or the
test fixture).  Without ``CINCH_DATABASE_URL`` an embedded PostgreSQL
(``pgserver``) is started under the data directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import trio
import trio_asyncio

log = logging.getLogger("cinch.store")

MIGRATIONS = Path(__file__).parent / "migrations"
KEY_PREFIX = "cinch_live_"
_BASE62 = string.digits + string.ascii_letters
HOLD_TTL_S = 60


class StoreError(Exception):
    """The database failed or is unreachable. Ours: the request gets 503."""


class NotFoundError(StoreError):
    """The account, key or payment does not exist (or is not the caller's)."""


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


@dataclass(frozen=True)
class Authorization:
    status: str  # ok | invalid_key | no_credits
    account_id: int | None
    key_id: int | None
    hold_id: int | None
    hold_amount: int
    available: int


@dataclass(frozen=True)
class Settlement:
    charged: int
    available: int


@dataclass(frozen=True)
class IdempotencyRecord:
    state: str
    body_hash: bytes
    status_code: int | None
    response: dict[str, Any] | None


# A FROM item that makes the statement's own transaction commit without waiting
# for the WAL flush (set_config(..., true) is SET LOCAL).
_ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true) AS _async_commit"


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


def _aio(fn: Any) -> Any:
    return trio_asyncio.aio_as_trio(fn)


class Store:
    """Accounts, keys, credits, runs and idempotency records."""

    def __init__(self, pool: asyncpg.Pool, instance_id: str, server: Any = None) -> None:
        self._pool = pool
        self.instance_id = instance_id
        self._server = server

    # -- life cycle -----------------------------------------------------------------

    @classmethod
    async def open(cls, database_url: str, data_dir: Path, instance_id: str) -> Store:
        """Connect (starting the embedded server when no URL is given) and migrate."""
        server = None
        if not database_url:
            database_url, server = await trio.to_thread.run_sync(_start_embedded, data_dir)
        try:
            pool = await _aio(asyncpg.create_pool)(
                database_url, min_size=2, max_size=16, command_timeout=10, reset=_reset
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to the database: {exc}") from exc
        store = cls(pool, instance_id, server)
        await store.migrate()
        await store.release_instance_holds()
        return store

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

        await self._with_conn(run)

    async def _with_conn(self, fn: Any) -> Any:
        async def inner() -> Any:
            async with self._pool.acquire() as conn:
                return await fn(conn)

        return await self._call(inner)

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await _aio(fn)(*args)
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError,
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

    # -- accounts and keys ---------------------------------------------------------------

    async def create_account(
        self, email: str | None, password_hash: str | None, credits: int
    ) -> int:
        async def run(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                account_id = await conn.fetchval(
                    "INSERT INTO accounts (email, password_hash) VALUES ($1, $2) RETURNING id",
                    email,
                    password_hash,
                )
                if credits > 0:
                    await _ledger(conn, account_id, credits, "grant", f"signup:{account_id}")
                return int(account_id)

        try:
            return int(await self._with_conn(run))
        except asyncpg.UniqueViolationError as exc:
            raise ValueError("an account with this e-mail already exists") from exc

    async def account_by_email(self, email: str) -> Any:
        return await self.fetchrow("SELECT * FROM accounts WHERE lower(email) = lower($1)", email)

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

        return key, int(await self._with_conn(run))

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

    # -- credits ------------------------------------------------------------------------

    async def authorize(self, key: str, max_hold: int) -> Authorization:
        # A hold is not money: losing one in a database crash costs nothing (the
        # run's settlement charges it anyway), so its commit does not wait for
        # the WAL flush (~0.5 ms here).  Settlements and top-ups do.
        row = await self.fetchrow(
            "SELECT a.* FROM cinch_authorize($1, $2, $3, $4) a, " + _ASYNC_COMMIT,
            hash_key(key),
            max_hold,
            self.instance_id,
            HOLD_TTL_S,
        )
        return Authorization(
            status=row["status"],
            account_id=row["account_id"],
            key_id=row["key_id"],
            hold_id=row["hold_id"],
            hold_amount=int(row["hold_amount"] or 0),
            available=int(row["available"] or 0),
        )

    async def extend_hold(self, hold_id: int, add: int) -> int | None:
        value = await self.fetchval(
            "SELECT cinch_extend_hold($1, $2, $3) FROM " + _ASYNC_COMMIT, hold_id, add, HOLD_TTL_S
        )
        return int(value) if value is not None else None

    async def release_hold(self, hold_id: int) -> None:
        await self.execute("DELETE FROM holds WHERE id = $1", hold_id)

    async def settle(
        self,
        *,
        hold_id: int,
        account_id: int,
        key_id: int | None,
        run_id: str,
        language: str,
        termination: str,
        exit_code: int,
        duration_ms: int,
        queue_ms: int,
        billable: bool,
    ) -> Settlement:
        row = await self.fetchrow(
            "SELECT * FROM cinch_settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            hold_id,
            account_id,
            key_id,
            run_id,
            language,
            termination,
            exit_code,
            duration_ms,
            queue_ms,
            billable,
        )
        return Settlement(charged=int(row["charged"]), available=int(row["available"]))

    async def release_instance_holds(self) -> int:
        """At start-up: none of this instance's runs are alive, so none of its holds are."""
        status = await self.execute("DELETE FROM holds WHERE instance_id = $1", self.instance_id)
        return int(status.split()[-1])

    async def reap_expired_holds(self) -> int:
        status = await self.execute("DELETE FROM holds WHERE expires_at < now()")
        return int(status.split()[-1])

    async def credit(self, account_id: int, amount: int, kind: str, ref: str | None) -> bool:
        """Add a ledger row and move the balance; False if ``(kind, ref)`` was credited."""

        async def run(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                return await _ledger(conn, account_id, amount, kind, ref)

        return bool(await self._with_conn(run))

    async def balance(self, account_id: int) -> tuple[int, int]:
        """``(balance, available)`` of an account."""
        row = await self.fetchrow(
            "SELECT a.balance, a.balance - COALESCE((SELECT sum(amount) FROM holds h "
            "WHERE h.account_id = a.id AND h.expires_at > now()), 0) AS available "
            "FROM accounts a WHERE a.id = $1",
            account_id,
        )
        if row is None:
            raise NotFoundError("no such account")
        return int(row["balance"]), int(row["available"])

    async def ledger_mismatches(self) -> list[Any]:
        """Accounts whose balance differs from the sum of their ledger rows (must be none)."""
        return await self.fetch(
            "SELECT a.id, a.balance, COALESCE(sum(l.amount), 0) AS total FROM accounts a "
            "LEFT JOIN ledger l ON l.account_id = a.id GROUP BY a.id "
            "HAVING a.balance <> COALESCE(sum(l.amount), 0) OR a.balance < 0"
        )

    # -- idempotency ------------------------------------------------------------------------

    async def idempotency_begin(
        self, account_id: int, key: str, body_hash: bytes, ttl_s: int
    ) -> IdempotencyRecord | None:
        """Claim ``key`` for a new run (None), or return the existing record."""
        await self.execute(
            "DELETE FROM idempotency WHERE account_id = $1 AND key = $2 AND expires_at < now()",
            account_id,
            key,
        )
        claimed = await self.fetchval(
            "INSERT INTO idempotency (account_id, key, body_hash, state, expires_at) "
            "VALUES ($1, $2, $3, 'running', now() + make_interval(secs => $4)) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            account_id,
            key,
            body_hash,
            ttl_s,
        )
        if claimed:
            return None
        return await self.idempotency_get(account_id, key)

    async def idempotency_get(self, account_id: int, key: str) -> IdempotencyRecord | None:
        row = await self.fetchrow(
            "SELECT state, body_hash, status_code, response FROM idempotency "
            "WHERE account_id = $1 AND key = $2 AND expires_at >= now()",
            account_id,
            key,
        )
        if row is None:
            return None
        response = json.loads(row["response"]) if row["response"] is not None else None
        return IdempotencyRecord(
            row["state"], bytes(row["body_hash"]), row["status_code"], response
        )

    async def idempotency_finish(
        self, account_id: int, key: str, status_code: int, response: dict[str, Any]
    ) -> None:
        await self.execute(
            "UPDATE idempotency SET state = 'done', status_code = $3, response = $4 "
            "WHERE account_id = $1 AND key = $2",
            account_id,
            key,
            status_code,
            json.dumps(response, ensure_ascii=False),
        )

    async def idempotency_abort(self, account_id: int, key: str) -> None:
        await self.execute(
            "DELETE FROM idempotency WHERE account_id = $1 AND key = $2 AND state = 'running'",
            account_id,
            key,
        )

    async def reap_idempotency(self) -> int:
        status = await self.execute("DELETE FROM idempotency WHERE expires_at < now()")
        return int(status.split()[-1])

    # -- usage --------------------------------------------------------------------------------

    async def recent_runs(self, account_id: int, limit: int = 50) -> list[Any]:
        return await self.fetch(
            "SELECT id, language, termination, exit_code, duration_ms, credits_charged, created_at "
            "FROM runs WHERE account_id = $1 ORDER BY created_at DESC LIMIT $2",
            account_id,
            limit,
        )

    async def ledger_rows(self, account_id: int, limit: int = 100) -> list[Any]:
        return await self.fetch(
            "SELECT id, amount, kind, ref, created_at FROM ledger WHERE account_id = $1 "
            "ORDER BY id DESC LIMIT $2",
            account_id,
            limit,
        )

    async def daily_usage(self, account_id: int, days: int = 30) -> list[tuple[datetime, int]]:
        rows = await self.fetch(
            "SELECT d::date AS day, COALESCE(sum(r.credits_charged), 0) AS credits "
            "FROM generate_series(current_date - ($2::int - 1), current_date, interval '1 day') d "
            "LEFT JOIN runs r ON r.account_id = $1 AND r.created_at::date = d::date "
            "GROUP BY d ORDER BY d",
            account_id,
            days,
        )
        return [(r["day"], int(r["credits"])) for r in rows]

    # -- dashboard: sessions, log-in attempts, payments (issue 6) ------------------------------

    async def account_by_id(self, account_id: int) -> Any:
        return await self.fetchrow(
            "SELECT id, email, balance, created_at FROM accounts WHERE id = $1", account_id
        )

    async def create_session(
        self, account_id: int, token_hash: bytes, ttl_s: int, max_age_s: int
    ) -> None:
        """A new log-in session; also drops expired ones (of anyone) while at it."""
        await self.execute(
            "WITH gone AS (DELETE FROM sessions WHERE expires_at < now() "
            "OR created_at < now() - make_interval(secs => $4)) "
            "INSERT INTO sessions (token_hash, account_id, expires_at) "
            "VALUES ($1, $2, now() + make_interval(secs => $3))",
            token_hash,
            account_id,
            ttl_s,
            max_age_s,
        )

    async def session_account(self, token_hash: bytes, ttl_s: int, max_age_s: int) -> Any:
        """The ``(id, email)`` of a live session's account, or None.

        The session slides: its expiry moves ``ttl_s`` ahead (at most every five
        minutes), but never past ``max_age_s`` after it was made.
        """
        return await self.fetchrow(
            "WITH s AS (SELECT account_id FROM sessions WHERE token_hash = $1 "
            "AND expires_at > now() AND created_at > now() - make_interval(secs => $3)), "
            "touch AS (UPDATE sessions SET last_seen_at = now(), "
            "expires_at = now() + make_interval(secs => $2) WHERE token_hash = $1 "
            "AND expires_at > now() AND last_seen_at < now() - interval '5 minutes') "
            "SELECT a.id, a.email FROM s JOIN accounts a ON a.id = s.account_id",
            token_hash,
            ttl_s,
            max_age_s,
        )

    async def delete_session(self, token_hash: bytes) -> None:
        await self.execute("DELETE FROM sessions WHERE token_hash = $1", token_hash)

    async def delete_account_sessions(self, account_id: int) -> int:
        status = await self.execute("DELETE FROM sessions WHERE account_id = $1", account_id)
        return int(status.split()[-1])

    async def login_failures(self, email: str, ip: str, window_s: int) -> tuple[int, int]:
        """Failed log-ins in the last ``window_s`` seconds: ``(for this e-mail, from this ip)``."""
        row = await self.fetchrow(
            "SELECT "
            "(SELECT count(*) FROM login_attempts WHERE email = lower($1) AND NOT succeeded "
            "AND created_at > now() - make_interval(secs => $3)) AS by_email, "
            "(SELECT count(*) FROM login_attempts WHERE ip = $2 AND NOT succeeded "
            "AND created_at > now() - make_interval(secs => $3)) AS by_ip",
            email,
            ip,
            window_s,
        )
        return int(row["by_email"]), int(row["by_ip"])

    async def record_login_attempt(self, email: str, ip: str, succeeded: bool) -> None:
        await self.execute(
            "WITH old AS (DELETE FROM login_attempts WHERE created_at < now() - interval '1 day') "
            "INSERT INTO login_attempts (email, ip, succeeded) VALUES (lower($1), $2, $3)",
            email,
            ip,
            succeeded,
        )

    async def create_payment(
        self, account_id: int, provider: str, amount_cents: int, provider_ref: str | None = None
    ) -> int:
        """Record a top-up that has started (status ``pending``); returns its id."""
        return int(
            await self.fetchval(
                "INSERT INTO payments (account_id, provider, provider_ref, amount_cents) "
                "VALUES ($1, $2, $3, $4) RETURNING id",
                account_id,
                provider,
                provider_ref,
                amount_cents,
            )
        )

    async def credit_payment(
        self, payment_id: int, paid_cents: int, credits: int, event_id: str | None = None
    ) -> bool:
        """Credit a pending payment once: a ``topup`` ledger row and status ``paid``.

        False when it was credited already (or is not pending).
        """

        async def run(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                pay = await conn.fetchrow(
                    "SELECT account_id, provider, provider_ref, status FROM payments "
                    "WHERE id = $1 FOR UPDATE",
                    payment_id,
                )
                if pay is None:
                    raise NotFoundError("no such payment")
                if pay["status"] != "pending":
                    return False
                ref = f"{pay['provider']}:{pay['provider_ref'] or payment_id}"
                if not await _ledger(conn, pay["account_id"], credits, "topup", ref):
                    return False
                await conn.execute(
                    "UPDATE payments SET status = 'paid', paid_cents = $2, credits = $3, "
                    "event_id = $4, updated_at = now() WHERE id = $1",
                    payment_id,
                    paid_cents,
                    credits,
                    event_id,
                )
                return True

        return bool(await self._with_conn(run))

    async def apply_checkout_event(
        self,
        *,
        event_id: str,
        event_type: str,
        session_id: str,
        action: str,
        paid_cents: int | None = None,
        credits: int = 0,
        note: str | None = None,
    ) -> str:
        """Apply one verified Stripe Checkout event, at most once per event and per session.

        ``action`` is ``credit`` (paid: add ``credits``), ``wait`` (not paid yet),
        ``refuse`` (paid an amount we do not accept), ``fail`` or ``expire``.
        Returns the outcome: ``credited``, ``unpaid``, ``refused``, ``failed``,
        ``expired``, ``already_credited``, ``unknown_session`` or ``duplicate_event``.
        """
        final = {"refuse": "refused", "fail": "failed", "expire": "expired"}

        async def run(conn: asyncpg.Connection) -> str:
            async with conn.transaction():
                fresh = await conn.fetchval(
                    "INSERT INTO payment_events (event_id, type, session_id, outcome) "
                    "VALUES ($1, $2, $3, 'received') ON CONFLICT (event_id) DO NOTHING RETURNING 1",
                    event_id,
                    event_type,
                    session_id,
                )
                if not fresh:
                    return "duplicate_event"
                pay = await conn.fetchrow(
                    "SELECT id, account_id, status FROM payments "
                    "WHERE provider = 'stripe' AND provider_ref = $1 FOR UPDATE",
                    session_id,
                )
                if pay is None:
                    outcome = "unknown_session"
                elif pay["status"] == "paid":
                    outcome = "already_credited"
                elif action == "credit":
                    ok = await _ledger(
                        conn, pay["account_id"], credits, "topup", f"stripe:{session_id}"
                    )
                    outcome = "credited" if ok else "already_credited"
                    if ok:
                        await conn.execute(
                            "UPDATE payments SET status = 'paid', paid_cents = $2, credits = $3, "
                            "event_id = $4, note = NULL, updated_at = now() WHERE id = $1",
                            pay["id"],
                            paid_cents,
                            credits,
                            event_id,
                        )
                elif action == "wait":
                    outcome = "unpaid"
                    await conn.execute(
                        "UPDATE payments SET note = $2, updated_at = now() WHERE id = $1",
                        pay["id"],
                        note,
                    )
                elif action in final:
                    outcome = final[action]
                    await conn.execute(
                        "UPDATE payments SET status = $2, paid_cents = $3, event_id = $4, "
                        "note = $5, updated_at = now() WHERE id = $1",
                        pay["id"],
                        outcome,
                        paid_cents,
                        event_id,
                        note,
                    )
                else:
                    raise ValueError(f"unknown action {action!r}")
                await conn.execute(
                    "UPDATE payment_events SET outcome = $2 WHERE event_id = $1", event_id, outcome
                )
                return outcome

        return str(await self._with_conn(run))

    async def payments_for(self, account_id: int, limit: int = 20) -> list[Any]:
        return await self.fetch(
            "SELECT id, provider, provider_ref, amount_cents, paid_cents, credits, status, note, "
            "created_at FROM payments WHERE account_id = $1 ORDER BY id DESC LIMIT $2",
            account_id,
            limit,
        )

    async def payment_by_ref(self, account_id: int, provider: str, provider_ref: str) -> Any:
        return await self.fetchrow(
            "SELECT id, provider, provider_ref, amount_cents, paid_cents, credits, status, note, "
            "created_at FROM payments WHERE account_id = $1 AND provider = $2 AND provider_ref = $3",
            account_id,
            provider,
            provider_ref,
        )


async def _ledger(
    conn: asyncpg.Connection, account_id: int, amount: int, kind: str, ref: str | None
) -> bool:
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


def _start_embedded(data_dir: Path) -> tuple[str, Any]:
    import os
    import warnings

    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir / "run"))
    (data_dir / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = data_dir / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
    return str(server.get_uri()), server
