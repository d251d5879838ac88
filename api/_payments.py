"""Top-ups: amount rules, Stripe Checkout, the Stripe webhook and the development provider.

Money becomes credits in exactly one place per provider, and both go through the ledger:

- ``dev`` (``CINCH_PAYMENTS=dev``, labelled as such on the page): the top-up is credited
  when it is made. No money moves; for local use and tests only.
- ``stripe``: starting a top-up makes a Checkout session and a ``pending`` payments row.
  Credits come only from the signed webhook, from the event's ``amount_total``, and only
  when ``payment_status`` is ``paid`` (``checkout.session.completed`` or, for delayed
  methods, ``checkout.session.async_payment_succeeded``).  Each event id is handled once
  (``payment_events``) and each session is credited once (payments row lock and the
  ledger's unique ``(kind, ref)``), however often Stripe delivers.

The amount is checked against ``topup_min_usd``/``topup_max_usd`` when the payment
starts and again when it is credited.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import stripe
import trio
from quart import Blueprint, Response, request

from ._config import Config
from ._errors import ApiError
from ._runs import json_response, request_body
from ._state import app_state
from ._store import StoreError

log = logging.getLogger("cinch.payments")

_AMOUNT = re.compile(r"^\$?\s*(\d{1,9})(?:\.(\d{1,2}))?$")
STRIPE_TIMEOUT_S = 20
_PAID_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
_HANDLED_EVENTS = (
    *_PAID_EVENTS,
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
)


class AmountError(ValueError):
    """The amount typed is not a top-up we accept; the message says why (the user's fault)."""


class PaymentProviderError(Exception):
    """The payment provider failed or is unreachable (not the user's fault); retry later."""


def parse_amount_cents(text: str) -> int:
    """``"12.50"`` -> 1250. Raises :class:`AmountError` for anything that is not dollars."""
    match = _AMOUNT.match(text.strip().replace(",", ""))
    if not match:
        raise AmountError("Enter an amount in US dollars, like 5 or 12.50.")
    dollars, cents = match.group(1), (match.group(2) or "").ljust(2, "0")
    return int(dollars) * 100 + int(cents)


def check_amount_cents(cents: int, config: Config) -> None:
    """Raise :class:`AmountError` unless ``cents`` is within the configured bounds."""
    if cents < config.topup_min_usd * 100:
        raise AmountError(f"The smallest top-up is ${config.topup_min_usd}.")
    if cents > config.topup_max_usd * 100:
        raise AmountError(f"The largest top-up is ${config.topup_max_usd:,}.")


def credits_for_cents(cents: int, config: Config) -> int:
    return cents * config.credits_per_usd // 100


# -- starting a payment ---------------------------------------------------------------------


async def start_dev_topup(store: Any, config: Config, account_id: int, cents: int) -> int:
    """Record and credit a development top-up at once; returns the payment id."""
    check_amount_cents(cents, config)
    payment_id = await store.create_payment(account_id, "dev", cents)
    check_amount_cents(cents, config)  # again when crediting, as for Stripe
    await store.credit_payment(payment_id, cents, credits_for_cents(cents, config))
    return int(payment_id)


async def start_stripe_checkout(
    store: Any, config: Config, account_id: int, email: str | None, cents: int, base_url: str
) -> str:
    """Make a Checkout session and its pending payments row; returns the URL to pay at."""
    check_amount_cents(cents, config)
    credits = credits_for_cents(cents, config)
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": cents,
                    "product_data": {"name": f"Cinch credits: {credits:,}"},
                },
            }
        ],
        "client_reference_id": str(account_id),
        "metadata": {"account_id": str(account_id), "credits": str(credits)},
        "success_url": f"{base_url}/dashboard/topup?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{base_url}/dashboard/topup?checkout=cancelled",
    }
    if email:
        params["customer_email"] = email

    def create() -> tuple[str, str]:
        client = stripe.StripeClient(
            config.stripe_secret_key,
            http_client=stripe.RequestsClient(timeout=STRIPE_TIMEOUT_S),
            max_network_retries=1,
        )
        session = client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
        return str(session.id), str(session.url)

    try:
        session_id, url = await trio.to_thread.run_sync(create, abandon_on_cancel=True)
    except stripe.StripeError as exc:
        log.warning("stripe: creating a Checkout session failed: %s", exc)
        raise PaymentProviderError("The payment provider is unavailable; try again.") from exc
    await store.create_payment(account_id, "stripe", cents, session_id)
    return url


# -- the webhook --------------------------------------------------------------------------------


def webhook_blueprint(config: Config) -> Blueprint:
    """``POST /webhooks/stripe``: no session, no CSRF token; the signature is the proof."""
    bp = Blueprint("payments", __name__)

    @bp.post("/webhooks/stripe")
    async def stripe_webhook() -> Response:
        payload = await request_body()
        signature = request.headers.get("Stripe-Signature")
        if not signature:
            raise ApiError(400, "missing Stripe-Signature header")
        try:
            text = payload.decode("utf-8")
            stripe.WebhookSignature.verify_header(
                text, signature, config.stripe_webhook_secret, stripe.Webhook.DEFAULT_TOLERANCE
            )
        except stripe.SignatureVerificationError:
            log.warning("stripe webhook: bad signature")
            raise ApiError(400, "bad signature") from None
        except UnicodeDecodeError:
            raise ApiError(400, "the payload is not UTF-8") from None
        try:
            event = json.loads(text)  # exactly the bytes that were signed
        except ValueError:
            raise ApiError(400, "the payload is not a JSON event") from None
        if not isinstance(event, dict):
            raise ApiError(400, "the payload is not a JSON event")
        try:
            outcome = await _handle_event(app_state().store, config, event)
        except StoreError as exc:
            log.error("stripe webhook: %s", exc)
            # Stripe retries: nothing was recorded, so the retry is handled afresh.
            raise ApiError(503, "database unavailable", headers={"Retry-After": "5"}) from None
        return json_response({"received": True, "outcome": outcome})

    return bp


async def _handle_event(store: Any, config: Config, event: Any) -> str:
    event_id = str(event.get("id") or "")
    event_type = str(event.get("type") or "")
    if event_type not in _HANDLED_EVENTS:
        return "ignored"
    data = event.get("data")
    session = data.get("object") if isinstance(data, dict) else None
    if not isinstance(session, dict):
        raise ApiError(400, "the event has no data.object")
    session_id = session.get("id")
    if not event_id or not isinstance(session_id, str) or not session_id:
        raise ApiError(400, "the event has no id or no Checkout session id")
    amount = session.get("amount_total")
    paid_cents = amount if isinstance(amount, int) and not isinstance(amount, bool) else None
    kw: dict[str, Any] = {
        "event_id": event_id,
        "event_type": event_type,
        "session_id": session_id,
        "paid_cents": paid_cents,
    }
    if event_type == "checkout.session.async_payment_failed":
        outcome = await store.apply_checkout_event(action="fail", note="payment failed", **kw)
    elif event_type == "checkout.session.expired":
        outcome = await store.apply_checkout_event(action="expire", note="session expired", **kw)
    elif session.get("payment_status") != "paid":
        note = f"payment status {session.get('payment_status')!s:.40}"
        outcome = await store.apply_checkout_event(action="wait", note=note, **kw)
    else:
        refusal = None
        if paid_cents is None:
            refusal = "no amount_total"
        elif str(session.get("currency", "")).lower() != "usd":
            refusal = f"currency {session.get('currency')!s:.10} is not usd"
        else:
            try:
                check_amount_cents(paid_cents, config)
            except AmountError as exc:
                refusal = str(exc)
        if refusal is not None:
            log.warning("stripe: refusing session %s: %s", session_id, refusal)
            outcome = await store.apply_checkout_event(action="refuse", note=refusal, **kw)
        else:
            assert paid_cents is not None
            outcome = await store.apply_checkout_event(
                action="credit", credits=credits_for_cents(paid_cents, config), **kw
            )
    log.info("stripe event %s (%s) for %s: %s", event_id, event_type, session_id, outcome)
    return str(outcome)
