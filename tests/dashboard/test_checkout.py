"""Starting a Stripe Checkout from the top-up page, against a fake Stripe API on loopback.

The app runs in-process over a real Postgres; ``stripe.StripeClient`` is pointed at a
small HTTP server that answers like Stripe's ``POST /v1/checkout/sessions``.  The credit
then comes from a signed webhook, as in production.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import stripe
import trio_asyncio

from api import Config, create_app
from api._dashboard import dashboard_blueprints
from api._store import Store

from .web import PASSWORD, csrf_from, new_email, text_of

pytestmark = [pytest.mark.postgres]

WEBHOOK_SECRET = "whsec_test"


@dataclass
class FakeStripe:
    """Answers ``POST /v1/checkout/sessions`` (or fails with ``fail_status``)."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_status: int | None = None
    sessions: list[str] = field(default_factory=list)


@pytest.fixture
def fake_stripe(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    fake = FakeStripe()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
            fake.requests.append(
                {
                    "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "form": {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()},
                }
            )
            if fake.fail_status:
                status, body = fake.fail_status, {"error": {"message": "boom", "type": "api_error"}}
            else:
                session_id = "cs_test_" + secrets.token_hex(8)
                fake.sessions.append(session_id)
                status = 200
                body = {
                    "id": session_id,
                    "object": "checkout.session",
                    "url": f"https://checkout.stripe.com/c/pay/{session_id}",
                }
            out = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    real_client = stripe.StripeClient

    def client(*args: Any, **kwargs: Any) -> Any:
        kwargs["base_addresses"] = {"api": f"http://127.0.0.1:{fake.port}"}
        kwargs["max_network_retries"] = 0
        return real_client(*args, **kwargs)

    monkeypatch.setattr(stripe, "StripeClient", client)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
async def stripe_app(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Any, Store]]:
    config = Config.from_env(
        {},
        data_dir=tmp_path,
        database_url=database_url,
        payments="stripe",
        stripe_secret_key="sk_test_dummy",
        stripe_webhook_secret=WEBHOOK_SECRET,
    )
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url, tmp_path, "test-checkout")
        try:
            app = create_app(
                config, scheduler=None, store=store, blueprints=dashboard_blueprints(config)
            )
            async with app.test_app() as test_app:
                yield test_app.test_client(), store
        finally:
            await store.aclose()


async def _page(client: Any, path: str) -> str:
    r = await client.get(path)
    assert r.status_code == 200, (path, r.status_code)
    return str(await r.get_data(as_text=True))


async def _signup(client: Any) -> str:
    token = csrf_from(await _page(client, "/signup"))
    email = new_email("checkout")
    r = await client.post(
        "/signup", form={"csrf_token": token, "email": email, "password": PASSWORD}
    )
    assert r.status_code == 303
    return email


def _signed(payload: str) -> str:
    t = int(time.time())
    sig = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={sig}"


async def test_top_up_goes_to_checkout_and_is_credited_by_the_webhook(stripe_app, fake_stripe):
    client, store = stripe_app
    email = await _signup(client)
    account_id = int((await store.account_by_email(email))["id"])
    token = csrf_from(await _page(client, "/dashboard/topup"))

    r = await client.post("/dashboard/topup", form={"csrf_token": token, "amount": "12.34"})
    assert r.status_code == 303
    [session_id] = fake_stripe.sessions
    assert r.headers["Location"] == f"https://checkout.stripe.com/c/pay/{session_id}"
    [sent] = fake_stripe.requests
    assert sent["path"] == "/v1/checkout/sessions"
    assert sent["auth"] == "Bearer sk_test_dummy"
    assert sent["form"]["mode"] == "payment"
    assert sent["form"]["line_items[0][price_data][unit_amount]"] == "1234"
    assert sent["form"]["line_items[0][price_data][currency]"] == "usd"
    assert sent["form"]["client_reference_id"] == str(account_id)
    assert sent["form"]["success_url"].endswith(
        "/dashboard/topup?checkout=success&session_id={CHECKOUT_SESSION_ID}"
    )
    [payment] = await store.payments_for(account_id)
    assert (payment["provider_ref"], payment["status"], payment["amount_cents"]) == (
        session_id,
        "pending",
        1234,
    )
    # Back from Checkout before the webhook: no credits yet, and the page says so.
    page = await _page(client, f"/dashboard/topup?checkout=success&session_id={session_id}")
    assert "as soon as the payment is confirmed" in (text_of(page, "notice") or "")
    assert await store.balance(account_id) == (10_000, 10_000)

    event = {
        "id": "evt_" + secrets.token_hex(8),
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": session_id,
                "payment_status": "paid",
                "amount_total": 1234,
                "currency": "usd",
            }
        },
    }
    payload = json.dumps(event)
    r = await client.post(
        "/webhooks/stripe", data=payload, headers={"Stripe-Signature": _signed(payload)}
    )
    assert r.status_code == 200
    assert (await r.get_json())["outcome"] == "credited"
    assert await store.balance(account_id) == (10_000 + 123_400, 10_000 + 123_400)
    page = await _page(client, f"/dashboard/topup?checkout=success&session_id={session_id}")
    assert text_of(page, "notice") == "Payment received: 123,400 credits were added."


async def test_a_checkout_below_the_minimum_never_reaches_stripe(stripe_app, fake_stripe):
    client, _ = stripe_app
    await _signup(client)
    token = csrf_from(await _page(client, "/dashboard/topup"))
    r = await client.post("/dashboard/topup", form={"csrf_token": token, "amount": "4.99"})
    assert r.status_code == 400
    assert "The smallest top-up is $5." in await r.get_data(as_text=True)
    assert fake_stripe.requests == []


async def test_a_stripe_failure_is_a_clear_error_and_records_nothing(stripe_app, fake_stripe):
    client, store = stripe_app
    email = await _signup(client)
    fake_stripe.fail_status = 500
    token = csrf_from(await _page(client, "/dashboard/topup"))
    r = await client.post("/dashboard/topup", form={"csrf_token": token, "amount": "5"})
    assert r.status_code == 503
    assert "The payment provider is unavailable; try again." in await r.get_data(as_text=True)
    assert len(fake_stripe.requests) == 1
    account_id = int((await store.account_by_email(email))["id"])
    assert await store.payments_for(account_id) == []
