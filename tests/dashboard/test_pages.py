"""Dashboard pages in-process, over a real Postgres and a real Scheduler with fake sandboxes.

POST/redirect/GET with the one-time key, the runs list and a run's page, the password
change, HTML error pages for browsers (JSON for the API), and a server without payments.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from api import Config, create_app
from api._dashboard import RUNS_PAGE, dashboard_blueprints
from api._store import Store
from pool import LiveSandboxes, StartSlots, WarmPool
from pool.testing import FakeBackend
from scheduler import Scheduler, SchedulerConfig

from .web import PASSWORD, csrf_from, field_errors, new_email, text_of

pytestmark = [pytest.mark.postgres]

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@dataclass
class Env:
    client: Any
    store: Store
    config: Config

    async def page(self, path: str, status: int = 200) -> str:
        r = await self.client.get(path, headers=HTML)
        assert r.status_code == status, (path, r.status_code)
        return str(await r.get_data(as_text=True))

    async def post(self, path: str, form: dict[str, str], *, token_from: str) -> Any:
        token = csrf_from(await self.page(token_from))
        return await self.client.post(path, form={"csrf_token": token, **form}, headers=HTML)

    async def signup(self) -> tuple[str, str]:
        """Sign up; returns (e-mail, the key shown once after the redirect)."""
        email = new_email("pages")
        r = await self.post("/signup", {"email": email, "password": PASSWORD}, token_from="/signup")
        assert r.status_code == 303, r.status_code
        assert r.headers["Location"] == "/dashboard/keys"
        page = await self.page("/dashboard/keys")
        key = text_of(page, "new-key")
        assert key is not None
        assert key.startswith("cinch_live_")
        return email, key

    async def run(self, key: str, code: str, language: str = "python") -> Any:
        r = await self.client.post(
            "/run",
            json={"code": code, "language": language},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200, await r.get_data(as_text=True)
        return r


async def _env(database_url: str, tmp_path: Path, **settings: Any) -> AsyncIterator[Env]:
    config = Config.from_env(
        {}, data_dir=tmp_path, database_url=database_url, signups_per_ip_per_hour=1000, **settings
    )
    backend = FakeBackend(start_delay_s=0.01)
    live = LiveSandboxes(8)
    limiter = StartSlots(2)
    pools = {
        name: WarmPool(
            backend, language=name, image="fake", size=1, live=live, start_limiter=limiter
        )
        for name in ("python", "javascript")
    }
    scheduler = Scheduler(pools, SchedulerConfig(queue_timeout_s=5, queue_max=8))
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url, tmp_path, "test-pages")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(scheduler.serve)
                for p in pools.values():
                    await nursery.start(p.run)
                app = create_app(
                    config,
                    scheduler=scheduler,
                    store=store,
                    blueprints=dashboard_blueprints(config),
                )
                async with app.test_app() as test_app:
                    yield Env(test_app.test_client(), store, config)
                nursery.cancel_scope.cancel()
        finally:
            await store.aclose()


@pytest.fixture
async def env(database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(database_url, tmp_path, payments="dev"):
        yield e


@pytest.fixture
async def no_payments(database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(
        database_url, tmp_path, payments="none", credits_contact="ops@example.com", signup_credits=5
    ):
        yield e


async def test_the_new_key_is_shown_once_after_a_redirect_and_never_in_a_url(env):
    _, key = await env.signup()
    assert key not in await env.page("/dashboard/keys")  # a reload shows it no more
    keys_page = await env.page("/dashboard/keys")
    [key_id] = re.findall(r'data-key-id="(\d+)"', keys_page)

    r = await env.post(f"/dashboard/keys/{key_id}/regenerate", {}, token_from="/dashboard/keys")
    assert r.status_code == 303
    assert r.headers["Location"] == "/dashboard/keys"
    assert "cinch_live_" not in await r.get_data(as_text=True)
    page = await env.page("/dashboard/keys")
    new_key = text_of(page, "new-key")
    assert new_key
    assert new_key != key
    assert "The old key was revoked" in (text_of(page, "notice") or "")
    assert text_of(await env.page("/dashboard/keys"), "new-key") is None

    r = await env.post("/dashboard/keys", {"name": "laptop"}, token_from="/dashboard/keys")
    assert r.status_code == 303
    page = await env.page("/dashboard/keys")
    assert (text_of(page, "new-key") or "").startswith("cinch_live_")
    assert "Your new API key: laptop" in page


def test_the_flash_is_for_its_own_session_shown_once_and_expires():
    from api._dashboard import Flash

    async def main() -> None:
        flash = Flash(ttl_s=60)
        flash.put("session-a", revealed="cinch_live_x")
        assert flash.take("session-b") == {}
        assert flash.take("") == {}
        assert flash.take("session-a") == {"revealed": "cinch_live_x"}
        assert flash.take("session-a") == {}
        flash.put("session-a", revealed="cinch_live_y")
        await trio.sleep(61)
        assert flash.take("session-a") == {}

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_runs_are_listed_filtered_paged_and_each_has_its_page(env):
    _, key = await env.signup()
    ids = []
    for i in range(RUNS_PAGE + 2):
        r = await env.run(key, f"out:line {i}\n")
        ids.append(r.headers["X-Request-Id"])
    js = await env.run(key, "out:hello from js;err:oops\n;exit:3", "javascript")
    ids.append(js.headers["X-Request-Id"])

    usage = await env.page("/dashboard/usage")
    assert f'href="/dashboard/runs/{ids[-1]}"' in usage  # the usage table links to the run
    assert 'id="all-runs"' in usage

    first = await env.page("/dashboard/runs")
    assert len(re.findall(r"<tr data-run-id=", first)) == RUNS_PAGE
    assert 'id="older"' in first
    assert 'id="newer"' not in first
    second = await env.page("/dashboard/runs?page=2")
    assert len(re.findall(r"<tr data-run-id=", second)) == 3
    assert 'id="newer"' in second
    assert 'id="older"' not in second

    only_js = await env.page("/dashboard/runs?language=javascript")
    assert re.findall(r'<tr data-run-id="([^"]+)"', only_js) == [ids[-1]]
    exited = await env.page("/dashboard/runs?termination=exited&language=python")
    assert ids[-1] not in exited
    assert await env.page("/dashboard/runs?language=cobol&page=x")  # ignored, not an error

    detail = await env.page(f"/dashboard/runs/{ids[-1]}")
    assert text_of(detail, "stdout") == "hello from js"
    assert text_of(detail, "stderr") == "oops\n"
    assert text_of(detail, "exit-code") == "3"
    assert 'id="credits"' in detail
    [row] = await env.store.fetch("SELECT credits_charged FROM runs WHERE id = $1", ids[-1])
    assert text_of(detail, "credits") == f"{row['credits_charged']:,}"
    assert ">exited<" in detail


async def test_one_account_cannot_see_anothers_run(env):
    _, key = await env.signup()
    run_id = (await env.run(key, "out:secret")).headers["X-Request-Id"]
    env.client.cookie_jar.clear()  # another browser
    await env.signup()
    page = await env.page(f"/dashboard/runs/{run_id}", 404)
    assert "secret" not in page
    assert run_id not in await env.page("/dashboard/runs")


async def test_long_output_keeps_only_its_head(env):
    _, key = await env.signup()
    run_id = (await env.run(key, "bytes:40000")).headers["X-Request-Id"]
    [row] = await env.store.fetch("SELECT stdout, cut FROM run_output WHERE run_id = $1", run_id)
    assert row["stdout"] == "x" * env.config.kept_output_bytes
    assert row["cut"] is True


async def test_users_change_their_own_password_with_the_current_one(env):
    email, _ = await env.signup()
    r = await env.post(
        "/dashboard/account",
        {"current_password": "not it at all", "new_password": "another good one"},
        token_from="/dashboard/account",
    )
    assert r.status_code == 400
    assert field_errors(await r.get_data(as_text=True)) == ["This is not your current password."]

    r = await env.post(
        "/dashboard/account",
        {"current_password": PASSWORD, "new_password": "another good one"},
        token_from="/dashboard/account",
    )
    assert r.status_code == 303
    assert r.headers["Location"] == "/dashboard/account"
    assert "password was changed" in (text_of(await env.page("/dashboard/account"), "notice") or "")
    [row] = await env.store.fetch("SELECT password_hash FROM accounts WHERE email = $1", email)
    from api._passwords import verify_password

    assert verify_password(row["password_hash"], "another good one")
    assert not verify_password(row["password_hash"], PASSWORD)
    await env.page("/dashboard/usage")  # this browser is still logged in


async def test_browsers_get_html_error_pages_and_the_api_keeps_json(env):
    r = await env.client.get("/dashboard/nothing-here", headers=HTML)
    assert r.status_code == 404
    assert r.content_type.startswith("text/html")
    body = await r.get_data(as_text=True)
    assert "Page not found" in body
    assert 'rel="icon"' in body
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")

    r = await env.client.get("/logout", headers=HTML)
    assert r.status_code == 405
    assert r.content_type.startswith("text/html")
    assert r.headers["Allow"] == "OPTIONS, POST"

    for path, headers in (
        ("/dashboard/nothing-here", {"Accept": "application/json"}),
        ("/dashboard/nothing-here", {}),
        ("/nothing", {"Accept": "*/*"}),
        ("/run", HTML),  # the API's own paths answer JSON even to a browser
    ):
        r = await env.client.get(path, headers=headers)
        assert r.status_code in (404, 405), path
        assert r.content_type.startswith("application/json"), (path, headers)
        assert "error" in await r.get_json()

    r = await env.client.get("/favicon.ico")
    assert r.status_code == 200
    assert r.content_type.startswith("image/svg+xml")
    assert "<svg" in await r.get_data(as_text=True)


async def test_401_names_the_bearer_scheme(env):
    for headers in ({}, {"Authorization": "Bearer cinch_live_" + "x" * 43}, {"Authorization": "x"}):
        r = await env.client.post("/run", json={"code": "out:x"}, headers=headers)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="cinch"'


async def test_without_payments_no_page_promises_a_top_up(no_payments):
    env = no_payments
    home = await env.page("/")
    docs = await env.page("/docs")
    assert "ask ops@example.com" in home
    assert "ask ops@example.com" in (text_of(docs, "credits-how") or "")
    for page in (home, docs):
        assert "top up" not in page.lower().replace("top up</a> in your dashboard", "")
    _, key = await env.signup()
    usage = await env.page("/dashboard/usage")
    assert "ops@example.com" in (text_of(usage, "more-credits") or "")
    assert 'href="/dashboard/topup"' not in usage
    assert "ops@example.com" in (text_of(await env.page("/dashboard/topup"), "no-topups") or "")
    await env.run(key, "sleep:0.05")  # spends the 5 free credits
    r = await env.client.post(
        "/run", json={"code": "out:x"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 402
    assert (await r.get_json())["error"] == "out of credits: ask ops@example.com for more"


async def test_a_bug_in_a_page_is_an_html_500_for_browsers_with_a_request_id(env, monkeypatch):
    await env.signup()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(env.store, "list_runs", broken)
    r = await env.client.get("/dashboard/runs", headers=HTML)
    assert r.status_code == 500
    assert r.content_type.startswith("text/html")
    body = await r.get_data(as_text=True)
    assert "Something went wrong" in body
    assert r.headers["X-Request-Id"] in body
    assert "a bug" not in body  # never a traceback
    r = await env.client.get("/dashboard/runs", headers={"Accept": "application/json"})
    assert r.status_code == 500
    assert "request id" in (await r.get_json())["error"]


async def test_guessing_the_current_password_is_limited_like_logging_in(env):
    from api._dashboard import LOGIN_MAX_FAILURES_PER_EMAIL

    await env.signup()
    form = {"current_password": "a wrong guess", "new_password": "another good one"}
    for _ in range(LOGIN_MAX_FAILURES_PER_EMAIL):
        r = await env.post("/dashboard/account", form, token_from="/dashboard/account")
        assert r.status_code == 400
    r = await env.post(
        "/dashboard/account",
        {"current_password": PASSWORD, "new_password": "another good one"},
        token_from="/dashboard/account",
    )
    assert r.status_code == 429  # even the right one, until the window has passed
    assert r.headers["Retry-After"] == "900"
