"""The run ledger: the whole money path of a run, two round trips, idempotent by run id.

::

    begin_run   one call: key auth, idempotency claim (a stored result is
                replayed before credits are checked), the hold.
    extend_hold while the run lives, keep the hold ahead of its use.
    finish_run  one call: charge exactly once, store the replayable response,
                release the hold.  Called again with the same run id (a lost
                commit acknowledgement, a retry), it returns the first outcome.
    abort_run   a run that never ran: its hold and its claim go.

Every money move of one account happens under that account's row lock, in SQL
functions of migration 004.  The charge is the run's ``durationMs``, capped by
what the account has that no other run holds: never below zero, never another
run's credits.  :class:`CreditRecords` holds the rest of the ledger's
operations (grants and top-ups, balances, the invariant check).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from ._database import ASYNC_COMMIT, Database, NotFoundError, insert_ledger_row

HOLD_TTL_S = 60
# An instance that has not heartbeated for this long is dead: its idempotency
# claims are taken over by the next retry.
HEARTBEAT_S = 2.0
DEAD_AFTER_S = 10


class Begin(enum.Enum):
    """What :meth:`RunLedger.begin_run` decided."""

    OK = "ok"  # run it: the hold is made (and the Idempotency-Key claimed)
    INVALID_KEY = "invalid_key"  # 401
    NO_CREDITS = "no_credits"  # 402
    REPLAY = "replay"  # the stored result of this Idempotency-Key
    CONFLICT = "conflict"  # the key was used with another body: 409
    RUNNING = "running"  # the key's first request is still running (alive owner)
    LIMITED = "limited"  # the key has max_running runs in flight on all replicas: 429


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` claim: the key, the request's hash, how long each part lasts."""

    key: str
    body_hash: bytes
    ttl_s: int
    lease_s: int  # the run's own deadline: past it, a retry takes the claim over


@dataclass(frozen=True)
class RunStart:
    status: Begin
    account_id: int | None = None
    key_id: int | None = None
    hold_id: int | None = None
    hold_amount: int = 0
    available: int = 0
    replay_status: int | None = None
    replay_body: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run reports to the ledger (plain data from the scheduler's result)."""

    language: str
    termination: str
    exit_code: int
    duration_ms: int
    queue_ms: int
    billable: bool
    sandbox_id: str = ""  # the container that served it ("" for none)


@dataclass(frozen=True)
class Settlement:
    charged: int
    available: int
    response: dict[str, Any]
    first: bool  # False: this run was settled before; nothing changed now


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class RunLedger:
    """Holds, charges and idempotency claims of runs, for one instance."""

    def __init__(self, db: Database, instance_id: str, *, dead_after_s: int = DEAD_AFTER_S):
        self._db = db
        self.instance_id = instance_id
        self.dead_after_s = dead_after_s

    async def begin_run(
        self,
        key_hash: bytes,
        run_id: str,
        max_hold: int,
        idem: Idempotency | None = None,
        *,
        max_running: int | None = None,
    ) -> RunStart:
        # A hold is not money: losing one in a database crash costs nothing (the
        # run's settlement charges it anyway), so its commit does not wait for
        # the WAL flush (~0.5 ms here).  Settlements and top-ups do.
        row = await self._db.fetchrow(
            "SELECT b.* FROM cinch_begin_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) b, "
            + ASYNC_COMMIT,
            key_hash,
            run_id,
            self.instance_id,
            max_hold,
            HOLD_TTL_S,
            idem.key if idem else None,
            idem.body_hash if idem else None,
            idem.ttl_s if idem else 0,
            idem.lease_s if idem else 0,
            self.dead_after_s,
            max_running,
        )
        return RunStart(
            status=Begin(row["status"]),
            account_id=row["account_id"],
            key_id=row["key_id"],
            hold_id=row["hold_id"],
            hold_amount=int(row["hold_amount"] or 0),
            available=int(row["available"] or 0),
            replay_status=row["replay_status"],
            replay_body=_json(row["replay_body"]),
        )

    async def extend_hold(self, hold_id: int, add: int) -> int | None:
        """The hold's new amount (unchanged when nothing is available); None if it is gone."""
        value = await self._db.fetchval(
            "SELECT cinch_extend_hold($1, $2, $3) FROM " + ASYNC_COMMIT, hold_id, add, HOLD_TTL_S
        )
        return int(value) if value is not None else None

    async def finish_run(
        self,
        *,
        run_id: str,
        hold_id: int,
        account_id: int,
        key_id: int | None,
        outcome: RunOutcome,
        response: dict[str, Any],
        idem_key: str | None = None,
    ) -> Settlement:
        """Settle ``run_id`` once; its stored response gets ``creditsCharged``."""
        row = await self._db.fetchrow(
            "SELECT * FROM cinch_finish_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            run_id,
            hold_id,
            account_id,
            key_id,
            outcome.language,
            outcome.termination,
            outcome.exit_code,
            outcome.duration_ms,
            outcome.queue_ms,
            outcome.billable,
            idem_key,
            json.dumps(response, ensure_ascii=False),
            outcome.sandbox_id,
        )
        return Settlement(
            charged=int(row["charged"]),
            available=int(row["available"]),
            response=_json(row["response"]),
            first=bool(row["first"]),
        )

    async def abort_run(self, run_id: str) -> None:
        """Drop the hold and the idempotency claim of a run that will not be settled."""
        await self._db.execute("SELECT cinch_abort_run($1)", run_id)

    # -- instances ---------------------------------------------------------------------

    async def register_instance(self) -> None:
        """At start-up: none of this instance's runs are alive, so none of its holds or claims."""

        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO instances (id) VALUES ($1) ON CONFLICT (id) DO UPDATE "
                    "SET started_at = now(), seen_at = now(), stopped_at = NULL",
                    self.instance_id,
                )
                await conn.execute("DELETE FROM holds WHERE instance_id = $1", self.instance_id)
                await conn.execute(
                    "DELETE FROM idempotency WHERE owner_instance = $1 AND state = 'running'",
                    self.instance_id,
                )

        await self._db.with_conn(run)

    async def heartbeat(self) -> None:
        await self._db.execute(
            "UPDATE instances SET seen_at = now() WHERE id = $1", self.instance_id
        )

    async def live_instances(self) -> int:
        """Instances (``cinch serve``/``cinch api`` replicas) heartbeating now, this one too."""
        n = await self._db.fetchval(
            "SELECT count(*) FROM instances WHERE stopped_at IS NULL "
            "AND seen_at > now() - make_interval(secs => $1)",
            float(DEAD_AFTER_S),
        )
        return max(1, int(n or 0))

    async def stop_instance(self) -> None:
        """A clean stop: this instance's claims are free to take over at once."""
        await self._db.execute(
            "UPDATE instances SET stopped_at = now() WHERE id = $1", self.instance_id
        )

    async def reap_expired_holds(self) -> int:
        status = await self._db.execute("DELETE FROM holds WHERE expires_at < now()")
        return int(status.split()[-1])

    async def reap_idempotency(self) -> int:
        status = await self._db.execute("DELETE FROM idempotency WHERE expires_at < now()")
        return int(status.split()[-1])


class CreditRecords(Database):
    """Grants, top-ups, balances and the ledger invariant."""

    async def credit(self, account_id: int, amount: int, kind: str, ref: str | None) -> bool:
        """Add a ledger row and move the balance; False if ``(kind, ref)`` was credited."""

        async def run(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                return await insert_ledger_row(conn, account_id, amount, kind, ref)

        return bool(await self.with_conn(run))

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
