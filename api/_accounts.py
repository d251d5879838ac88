"""Accounts, log-in sessions, log-in attempts and usage history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from ._database import ASYNC_COMMIT, Database, insert_ledger_row


class SignupLimited(Exception):
    """Too many accounts were made from this address in the last hour. The caller's."""


class AccountRecords(Database):
    """Accounts and what the dashboard shows of them."""

    async def create_account(
        self,
        email: str | None,
        password_hash: str | None,
        credits: int,
        *,
        signup_ip: str | None = None,
        max_per_ip_per_hour: int | None = None,
    ) -> int:
        """A new account with a ``grant`` of ``credits``; returns its id.

        With ``signup_ip`` and ``max_per_ip_per_hour``, the per-address cap is
        checked and the sign-up recorded in one transaction, under a lock on the
        address: concurrent sign-ups from one address cannot all pass the check.
        Raises :class:`SignupLimited` over the cap, ``ValueError`` for a taken e-mail.
        """

        async def run(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                if signup_ip is not None and max_per_ip_per_hour is not None:
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(7342002, hashtext($1))", signup_ip
                    )
                    recent = await conn.fetchval(
                        "SELECT count(*) FROM accounts WHERE signup_ip = $1 "
                        "AND created_at > now() - interval '1 hour'",
                        signup_ip,
                    )
                    if recent >= max_per_ip_per_hour:
                        raise SignupLimited(signup_ip)
                account_id = await conn.fetchval(
                    "INSERT INTO accounts (email, password_hash, signup_ip) VALUES ($1, $2, $3) "
                    "RETURNING id",
                    email,
                    password_hash,
                    signup_ip,
                )
                if credits > 0:
                    await insert_ledger_row(
                        conn, account_id, credits, "grant", f"signup:{account_id}"
                    )
                return int(account_id)

        try:
            return int(await self.with_conn(run))
        except asyncpg.UniqueViolationError as exc:
            raise ValueError("an account with this e-mail already exists") from exc

    async def account_by_email(self, email: str) -> Any:
        return await self.fetchrow("SELECT * FROM accounts WHERE lower(email) = lower($1)", email)

    async def recent_runs(self, account_id: int, limit: int = 50) -> list[Any]:
        return await self.fetch(
            "SELECT id, language, termination, exit_code, duration_ms, credits_charged, created_at "
            "FROM runs WHERE account_id = $1 ORDER BY created_at DESC LIMIT $2",
            account_id,
            limit,
        )

    async def list_runs(
        self,
        account_id: int,
        *,
        language: str | None = None,
        termination: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Any]:
        """One page of the account's runs, newest first, optionally filtered."""
        return await self.fetch(
            "SELECT id, language, termination, exit_code, duration_ms, credits_charged, created_at "
            "FROM runs WHERE account_id = $1 AND ($2::text IS NULL OR language = $2) "
            "AND ($3::text IS NULL OR termination = $3) "
            "ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5",
            account_id,
            language,
            termination,
            limit,
            offset,
        )

    async def run_for(self, account_id: int, run_id: str) -> Any:
        """The account's run ``run_id`` with its kept output (None if not the account's)."""
        return await self.fetchrow(
            "SELECT r.*, o.stdout, o.stderr, o.cut, o.run_id IS NOT NULL AS has_output "
            "FROM runs r LEFT JOIN run_output o ON o.run_id = r.id "
            "WHERE r.account_id = $1 AND r.id = $2",
            account_id,
            run_id,
        )

    async def keep_run_output(self, run_id: str, stdout: str, stderr: str, cut: bool) -> None:
        """Keep the head of a settled run's output (not money: no wait for the WAL flush)."""
        await self.execute(
            "INSERT INTO run_output (run_id, stdout, stderr, cut) "
            "SELECT $1::text, $2::text, $3::text, $4::boolean FROM "
            + ASYNC_COMMIT
            + " ON CONFLICT (run_id) DO NOTHING",
            run_id,
            stdout,
            stderr,
            cut,
        )

    async def set_password(self, account_id: int, password_hash: str) -> None:
        await self.execute(
            "UPDATE accounts SET password_hash = $2 WHERE id = $1", account_id, password_hash
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
