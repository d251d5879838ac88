"""Stripe webhooks against a live server with CINCH_PAYMENTS=stripe.

Events are signed the way Stripe signs them (``Stripe-Signature: t=..,v1=HMAC-SHA256``)
with a test secret.  Creating a Checkout session would call Stripe, so each test inserts
the pending payments row that starting a Checkout would have made.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import (
    LiveServer,
    _engine_state,
    fresh_database,
    need,
    start_live_server,
    stop_live_server,
)

from .web import Web, credits_on, new_email

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]

SECRET = "whsec_test"
CREDITS_PER_USD = 10_000


@pytest.fixture(scope="module")
def stripe_live(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    ok, reason = _engine_state()
    need(ok, reason)
    server = start_live_server(
        fresh_database(pg_url),
        tmp_path_factory.mktemp("cinch-stripe"),
        CINCH_PAYMENTS="stripe",
        CINCH_STRIPE_SECRET_KEY="sk_test_dummy",
        CINCH_STRIPE_WEBHOOK_SECRET=SECRET,
        CINCH_POOL_PYTHON="1",
        CINCH_POOL_JAVASCRIPT="1",
    )
    try:
        yield server
    finally:
        stop_live_server(server)


def _signed(payload: str, secret: str = SECRET, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    sig = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={sig}"


def _event(
    session_id: str,
    *,
    event_type: str = "checkout.session.completed",
    payment_status: str = "paid",
    amount_total: int = 500,
    currency: str = "usd",
) -> dict[str, Any]:
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": event_type,
        "data": {
            "object": {
                "id": session_id,
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": payment_status,
                "amount_total": amount_total,
                "currency": currency,
            }
        },
    }


def _deliver(server: LiveServer, event: dict[str, Any], **sign: Any) -> httpx.Response:
    payload = json.dumps(event)
    return httpx.post(
        server.base_url + "/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": _signed(payload, **sign), "Content-Type": "application/json"},
        timeout=30,
    )


class Customer:
    """A signed-up account with a pending Checkout session of ``cents``."""

    def __init__(self, server: LiveServer, cents: int = 500) -> None:
        self.server = server
        self.email = new_email("payer")
        with Web(server.base_url) as web:
            web.signup(self.email)
        [row] = server.query("SELECT id FROM accounts WHERE email = $1", self.email)
        self.account_id = row["id"]
        self.session_id = "cs_test_" + secrets.token_hex(12)
        server.query(
            "INSERT INTO payments (account_id, provider, provider_ref, amount_cents) "
            "VALUES ($1, 'stripe', $2, $3)",
            self.account_id,
            self.session_id,
            cents,
        )

    def balance(self) -> int:
        return int(
            self.server.query("SELECT balance FROM accounts WHERE id = $1", self.account_id)[0][
                "balance"
            ]
        )

    def topups(self) -> list[Any]:
        rows = self.server.query(
            "SELECT amount, ref FROM ledger WHERE account_id = $1 AND kind = 'topup'",
            self.account_id,
        )
        return [dict(r) for r in rows]

    def payment(self) -> Any:
        return self.server.query(
            "SELECT status, paid_cents, credits FROM payments WHERE provider_ref = $1",
            self.session_id,
        )[0]


def test_bad_signatures_are_rejected_and_credit_nothing(stripe_live):
    payer = Customer(stripe_live)
    event = _event(payer.session_id)
    payload = json.dumps(event)
    url = stripe_live.base_url + "/webhooks/stripe"
    cases = {
        "wrong secret": {"Stripe-Signature": _signed(payload, secret="whsec_other")},
        "stale timestamp": {"Stripe-Signature": _signed(payload, t=int(time.time()) - 3600)},
        "other payload": {"Stripe-Signature": _signed(payload.replace("500", "50000"))},
        "garbage": {"Stripe-Signature": "t=1,v1=deadbeef"},
        "missing": {},
    }
    for name, headers in cases.items():
        r = httpx.post(url, content=payload, headers=headers, timeout=30)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert "error" in r.json()
    assert payer.balance() == 10_000
    assert payer.topups() == []
    assert payer.payment()["status"] == "pending"
    assert not stripe_live.query("SELECT 1 FROM payment_events WHERE event_id = $1", event["id"])


def test_a_paid_session_is_credited_once_however_often_it_is_delivered(stripe_live):
    payer = Customer(stripe_live, cents=1250)
    event = _event(payer.session_id, amount_total=1250)
    r = _deliver(stripe_live, event)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "credited"
    credits = 1250 * CREDITS_PER_USD // 100
    assert payer.balance() == 10_000 + credits
    # The same event again, sequentially and concurrently: nothing more.
    assert _deliver(stripe_live, event).json()["outcome"] == "duplicate_event"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outcomes = [
            f.result().json()["outcome"]
            for f in [pool.submit(_deliver, stripe_live, event) for _ in range(6)]
        ]
    assert set(outcomes) == {"duplicate_event"}
    # Another event for the same session (Stripe sends both for delayed methods): nothing more.
    again = _event(
        payer.session_id, event_type="checkout.session.async_payment_succeeded", amount_total=1250
    )
    assert _deliver(stripe_live, again).json()["outcome"] == "already_credited"
    assert payer.balance() == 10_000 + credits
    assert payer.topups() == [{"amount": credits, "ref": f"stripe:{payer.session_id}"}]
    assert dict(payer.payment()) == {"status": "paid", "paid_cents": 1250, "credits": credits}
    assert (
        stripe_live.query(
            "SELECT a.id FROM accounts a LEFT JOIN ledger l ON l.account_id = a.id "
            "GROUP BY a.id HAVING a.balance <> COALESCE(sum(l.amount), 0)"
        )
        == []
    )


def test_concurrent_first_deliveries_credit_once(stripe_live):
    payer = Customer(stripe_live, cents=800)
    events = [_event(payer.session_id, amount_total=800)] * 4 + [
        _event(
            payer.session_id,
            event_type="checkout.session.async_payment_succeeded",
            amount_total=800,
        )
        for _ in range(4)
    ]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = [
            f.result().json()["outcome"]
            for f in [pool.submit(_deliver, stripe_live, e) for e in events]
        ]
    assert outcomes.count("credited") == 1, outcomes
    assert payer.balance() == 10_000 + 800 * CREDITS_PER_USD // 100
    assert len(payer.topups()) == 1


def test_an_unpaid_session_is_not_credited_until_its_payment_succeeds(stripe_live):
    payer = Customer(stripe_live, cents=600)
    r = _deliver(stripe_live, _event(payer.session_id, payment_status="unpaid", amount_total=600))
    assert r.json()["outcome"] == "unpaid"
    r = _deliver(
        stripe_live,
        _event(payer.session_id, payment_status="no_payment_required", amount_total=600),
    )
    assert r.json()["outcome"] == "unpaid"
    assert payer.balance() == 10_000
    assert payer.payment()["status"] == "pending"
    paid = _event(
        payer.session_id, event_type="checkout.session.async_payment_succeeded", amount_total=600
    )
    assert _deliver(stripe_live, paid).json()["outcome"] == "credited"
    assert payer.balance() == 10_000 + 600 * CREDITS_PER_USD // 100


def test_a_failed_async_payment_is_never_credited(stripe_live):
    payer = Customer(stripe_live, cents=600)
    _deliver(stripe_live, _event(payer.session_id, payment_status="unpaid", amount_total=600))
    failed = _event(
        payer.session_id,
        event_type="checkout.session.async_payment_failed",
        payment_status="unpaid",
        amount_total=600,
    )
    assert _deliver(stripe_live, failed).json()["outcome"] == "failed"
    assert payer.payment()["status"] == "failed"
    assert payer.balance() == 10_000


@pytest.mark.parametrize(
    ("amount_total", "currency"),
    [(499, "usd"), (100, "usd"), (500_01, "usd"), (500, "eur")],
)
def test_amounts_outside_the_bounds_are_refused_when_credited(stripe_live, amount_total, currency):
    payer = Customer(stripe_live, cents=500)
    r = _deliver(
        stripe_live, _event(payer.session_id, amount_total=amount_total, currency=currency)
    )
    assert r.status_code == 200
    assert r.json()["outcome"] == "refused"
    assert payer.balance() == 10_000
    assert payer.topups() == []
    assert payer.payment()["status"] == "refused"


def test_an_unknown_session_credits_nobody(stripe_live):
    before = stripe_live.query("SELECT sum(balance) AS s FROM accounts")[0]["s"]
    r = _deliver(stripe_live, _event("cs_test_" + secrets.token_hex(12), amount_total=5000))
    assert r.json()["outcome"] == "unknown_session"
    assert stripe_live.query("SELECT sum(balance) AS s FROM accounts")[0]["s"] == before


def test_other_event_types_are_acknowledged_and_ignored(stripe_live):
    payer = Customer(stripe_live)
    r = _deliver(stripe_live, _event(payer.session_id, event_type="payment_intent.succeeded"))
    assert r.status_code == 200
    assert r.json()["outcome"] == "ignored"
    assert payer.balance() == 10_000


def test_the_amount_is_checked_when_the_payment_starts(stripe_live):
    with Web(stripe_live.base_url) as web:
        web.signup(new_email("starter"))
        page = web.get("/dashboard/topup").text
        assert "Continue to payment" in page
        assert "Development payment provider" not in page
        for amount, message in (
            ("4.99", "The smallest top-up is $5."),
            ("500.01", "The largest top-up is $500."),
            ("five", "Enter an amount in US dollars, like 5 or 12.50."),
        ):
            r = web.post("/dashboard/topup", {"amount": amount}, token_from="/dashboard/topup")
            assert r.status_code == 400, amount
            assert message in r.text
        assert credits_on(web.get("/dashboard/usage").text) == 10_000
    assert (
        stripe_live.query("SELECT count(*) AS n FROM payments WHERE amount_cents < 500")[0]["n"]
        == 0
    )
