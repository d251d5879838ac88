"""Who can reach what: log-in required, accounts isolated, CSRF enforced, log-in rate limited.

All against the session's live server (real `cinch serve`, real Postgres, real sandboxes).
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from api import Config, create_app
from api._dashboard import LOGIN_MAX_FAILURES_PER_EMAIL, dashboard_blueprints

from .web import PASSWORD, Web, credits_on, csrf_from, field_errors, form_error, new_email, text_of

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]

PUBLIC = {
    "dashboard.home",
    "dashboard.docs",
    "dashboard.signup",
    "dashboard.login",
    "dashboard.static",
    "dashboard.favicon",
}


def _dashboard_routes(tmp_path: Path) -> list[tuple[str, str, str]]:
    """``(endpoint, method, url)`` for every dashboard route, from the app's own URL map."""
    config = Config.from_env(
        {},
        data_dir=tmp_path,
        payments="stripe",
        stripe_secret_key="sk_test_dummy",
        stripe_webhook_secret="whsec_test",
    )
    app = create_app(config, scheduler=None, store=None, blueprints=dashboard_blueprints(config))
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("dashboard."):
            continue
        url = re.sub(r"<(?:int:)?\w+>", "1", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((rule.endpoint, method, url))
    return routes


def test_every_page_but_home_docs_signup_and_login_needs_a_session(cinch_live, tmp_path):
    routes = _dashboard_routes(tmp_path)
    private = [r for r in routes if r[0] not in PUBLIC]
    assert {e for e, _, _ in private} >= {
        "dashboard.keys",
        "dashboard.usage",
        "dashboard.topup",
        "dashboard.regenerate_key",
        "dashboard.revoke_key",
        "dashboard.dashboard",
        "dashboard.runs",
        "dashboard.run_detail",
        "dashboard.account_page",
    }
    keys_before = cinch_live.query("SELECT count(*) AS n FROM api_keys")[0]["n"]
    payments_before = cinch_live.query("SELECT count(*) AS n FROM payments")[0]["n"]
    for cookies in ({}, {"cinch_session": "A" * 43}):  # none, and a forged one
        with Web(cinch_live.base_url) as web:
            web.client.cookies.update(cookies)
            token = web.token("/login")  # a valid CSRF token: only a live session lacks
            for endpoint, method, url in private:
                if method == "GET":
                    r = web.get(url)
                    assert r.status_code == 302, (endpoint, r.status_code)
                else:
                    r = web.client.post(url, data={"csrf_token": token, "amount": "5", "name": "x"})
                    assert r.status_code in (302, 303), (endpoint, r.status_code, r.text[:300])
                assert r.headers["Location"].startswith("/login"), (endpoint, r.headers)
                assert "cinch_live_" not in r.text
    assert cinch_live.query("SELECT count(*) AS n FROM api_keys")[0]["n"] == keys_before
    assert cinch_live.query("SELECT count(*) AS n FROM payments")[0]["n"] == payments_before
    with Web(cinch_live.base_url) as web:
        for endpoint, method, url in routes:
            if endpoint in PUBLIC and method == "GET" and "static" not in endpoint:
                assert web.get(url).status_code == 200, endpoint
        r = web.get("/dashboard/keys")
        assert r.headers["Location"] == "/login?next=/dashboard/keys"


def test_one_account_cannot_see_or_touch_anothers_keys_runs_or_payments(cinch_live):
    with Web(cinch_live.base_url) as alice, Web(cinch_live.base_url) as bob:
        alice_key = alice.signup(new_email("alice"))
        bob.signup(new_email("bob"))
        run = httpx.post(
            cinch_live.base_url + "/run",
            json={"code": "print('alice was here')"},
            headers={"Authorization": f"Bearer {alice_key}"},
            timeout=60,
        )
        assert run.status_code == 200, run.text
        run_id = run.headers["X-Request-Id"]
        assert (
            alice.post(
                "/dashboard/topup", {"amount": "5"}, token_from="/dashboard/topup"
            ).status_code
            == 303
        )
        [alice_payment] = cinch_live.query(
            "SELECT p.id FROM payments p JOIN api_keys k ON k.account_id = p.account_id "
            "WHERE k.last4 = $1 AND k.revoked_at IS NULL",
            alice_key[-4:],
        )
        [alice_key_row] = cinch_live.query(
            "SELECT id, last4 FROM api_keys WHERE last4 = $1 AND revoked_at IS NULL", alice_key[-4:]
        )

        # Alice sees her own run, key and payment...
        assert run_id in alice.get("/dashboard/usage").text
        assert f'data-key-id="{alice_key_row["id"]}"' in alice.get("/dashboard/keys").text
        assert f'data-payment-id="{alice_payment["id"]}"' in alice.get("/dashboard/topup").text
        # ... Bob sees none of them.
        usage = bob.get("/dashboard/usage").text
        assert run_id not in usage
        assert "alice was here" not in usage
        assert credits_on(usage) == 10_000
        assert f'data-key-id="{alice_key_row["id"]}"' not in bob.get("/dashboard/keys").text
        topup = bob.get("/dashboard/topup").text
        assert f'data-payment-id="{alice_payment["id"]}"' not in topup
        notice = bob.get(f"/dashboard/topup?credited={alice_payment['id']}").text
        assert text_of(notice, "notice") is None

        # Bob cannot regenerate or revoke Alice's key, even with a valid form of his own.
        for action in ("regenerate", "revoke"):
            r = bob.post(
                f"/dashboard/keys/{alice_key_row['id']}/{action}", token_from="/dashboard/keys"
            )
            assert r.status_code == 404, (action, r.status_code)
            assert "cinch_live_" not in r.text
        [row] = cinch_live.query(
            "SELECT revoked_at FROM api_keys WHERE id = $1", alice_key_row["id"]
        )
        assert row["revoked_at"] is None
        still = httpx.post(
            cinch_live.base_url + "/run",
            json={"code": "print(1)"},
            headers={"Authorization": f"Bearer {alice_key}"},
            timeout=60,
        )
        assert still.status_code == 200


def test_every_form_needs_its_csrf_token(cinch_live):
    with Web(cinch_live.base_url) as alice, Web(cinch_live.base_url) as bob:
        email = new_email("csrf")
        alice.signup(email)
        bob.signup(new_email("csrf-b"))
        keys = cinch_live.query(
            "SELECT count(*) AS n FROM api_keys k JOIN accounts a ON a.id = k.account_id "
            "WHERE a.email = $1",
            email,
        )[0]["n"]
        bobs_token = bob.token("/dashboard/keys")
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": bobs_token}):
            r = alice.client.post("/dashboard/keys", data={**data, "name": "sneaky"})
            assert r.status_code == 403, r.status_code
            assert "This form has expired" in r.text
            r = alice.client.post("/dashboard/topup", data={**data, "amount": "5"})
            assert r.status_code == 403
            r = alice.client.post("/logout", data=data)
            assert r.status_code == 403
        assert alice.get("/dashboard/keys").status_code == 200  # still logged in
        assert (
            cinch_live.query(
                "SELECT count(*) AS n FROM api_keys k JOIN accounts a ON a.id = k.account_id "
                "WHERE a.email = $1",
                email,
            )[0]["n"]
            == keys
        )
        assert credits_on(alice.get("/dashboard/usage").text) == 10_000
    with Web(cinch_live.base_url) as anon:
        victim = new_email("nocsrf")
        r = anon.client.post("/signup", data={"email": victim, "password": PASSWORD})
        assert r.status_code == 403
        assert not cinch_live.query("SELECT id FROM accounts WHERE email = $1", victim)
        r = anon.client.post("/login", data={"email": email, "password": PASSWORD})
        assert r.status_code == 403
        assert "cinch_session" not in r.headers.get("set-cookie", "")


def test_log_in_is_rate_limited_per_email(cinch_live):
    email = new_email("limited")
    with Web(cinch_live.base_url) as web:
        web.signup(email)
        assert web.logout().status_code == 303
        for _ in range(LOGIN_MAX_FAILURES_PER_EMAIL):
            r = web.login(email, "wrong password!")
            assert r.status_code == 401
            assert form_error(r.text) == "The e-mail address or the password is not right."
        r = web.login(email)  # the right password, but too late
        assert r.status_code == 429
        assert "Too many failed log-in attempts" in (form_error(r.text) or "")
        assert int(r.headers["Retry-After"]) > 0
        assert "cinch_session" not in r.headers.get("set-cookie", "")
        assert web.get("/dashboard/usage").status_code == 302
    with Web(cinch_live.base_url) as other:  # another account from the same address is fine
        other_email = new_email("unlimited")
        other.signup(other_email)
        other.logout()
        r = other.login(other_email)
        assert r.status_code == 303
        assert r.headers["Location"] == "/dashboard/usage"


def test_sessions_cookies_and_log_out(cinch_live):
    email = new_email("cookie")
    with Web(cinch_live.base_url) as web:
        web.signup(email)
        web.logout()
        r = web.login(email)
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "cinch_session=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback, CINCH_SECURE_COOKIES=auto
        session = web.client.cookies["cinch_session"]
        assert web.logout().headers["Location"] == "/login?bye=1"
        # The old session token is dead on the server, not just forgotten by the browser.
        with Web(cinch_live.base_url) as replay:
            replay.client.cookies.set("cinch_session", session)
            assert replay.get("/dashboard/keys").status_code == 302
    # Behind a TLS-terminating proxy every cookie is Secure (so an HTTP client drops them:
    # send the CSRF cookie by hand, as a browser on https would).
    with httpx.Client(
        base_url=cinch_live.base_url, headers={"X-Forwarded-Proto": "https"}, timeout=30
    ) as proxied:
        r = proxied.get("/login")
        assert "Secure" in r.headers["set-cookie"]
        browser_id = re.search(r"cinch_csrf=([^;]+)", r.headers["set-cookie"])
        assert browser_id is not None
        r = proxied.post(
            "/login",
            data={"email": email, "password": PASSWORD, "csrf_token": csrf_from(r.text)},
            headers={"Cookie": f"cinch_csrf={browser_id.group(1)}"},
        )
        assert r.status_code == 303
        assert "cinch_session=" in r.headers["set-cookie"]
        assert "Secure" in r.headers["set-cookie"]


def test_sign_up_errors_are_clear_and_new_accounts_get_the_grant(cinch_live):
    with Web(cinch_live.base_url) as web:
        r = web.post(
            "/signup", {"email": "not-an-email", "password": "short"}, token_from="/signup"
        )
        assert r.status_code == 400
        assert field_errors(r.text) == [
            "Enter a valid e-mail address, like you@example.com.",
            "Use at least 8 characters.",
        ]
        assert 'aria-invalid="true"' in r.text
        assert 'value="not-an-email"' in r.text  # what was typed is kept
        email = new_email("grant")
        web.signup(email)
        ledger = web.get("/dashboard/usage").text
        assert credits_on(ledger) == 10_000
        assert 'data-kind="grant"' in ledger
    with Web(cinch_live.base_url) as again:
        r = again.post(
            "/signup", {"email": email.upper(), "password": PASSWORD}, token_from="/signup"
        )
        assert r.status_code == 400
        assert field_errors(r.text) == [
            "An account with this e-mail already exists. Log in instead."
        ]
        r = again.login(email, "not the password")
        assert r.status_code == 401
        assert form_error(r.text) == "The e-mail address or the password is not right."


def test_sign_ups_are_limited_per_address(pg_url, tmp_path):
    """Each sign-up is a free credit grant, so one address cannot mint accounts without end."""
    from tests.conftest import fresh_database, start_live_server, stop_live_server

    server = start_live_server(
        fresh_database(pg_url),
        tmp_path,
        CINCH_SIGNUPS_PER_IP_PER_HOUR="2",
        CINCH_POOL_PYTHON="0",
        CINCH_POOL_JAVASCRIPT="0",
    )
    try:
        for i in range(2):
            with Web(server.base_url) as web:
                web.signup(new_email(f"limit{i}"))
        with Web(server.base_url) as web:
            r = web.post(
                "/signup",
                {"email": new_email("limit-over"), "password": PASSWORD},
                token_from="/signup",
            )
            assert r.status_code == 429
            assert "Too many new accounts" in r.text
            assert int(r.headers["Retry-After"]) > 0
    finally:
        stop_live_server(server)
