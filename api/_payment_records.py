"""Top-ups: payment rows, and crediting each payment exactly once."""

from __future__ import annotations

from typing import Any

import asyncpg

from ._database import Database, NotFoundError, insert_ledger_row


class PaymentRecords(Database):
    """Payments started, credited, refused; Stripe events applied at most once."""

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
                if not await insert_ledger_row(conn, pay["account_id"], credits, "topup", ref):
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

        return bool(await self.with_conn(run))

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
                    ok = await insert_ledger_row(
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

        return str(await self.with_conn(run))

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
