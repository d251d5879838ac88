"""A small form-filling HTTP client for the dashboard (cookies, CSRF tokens, HTML scraping)."""

from __future__ import annotations

import html
import re
import secrets
from typing import Any

import httpx

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse battery"


def new_email(tag: str = "user") -> str:
    return f"{tag}-{secrets.token_hex(5)}@example.com"


def csrf_from(page: str) -> str:
    match = _CSRF.search(page)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def text_of(page: str, element_id: str) -> str | None:
    """The text inside the element with this id (no nesting), unescaped."""
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', page)
    return html.unescape(match.group(1)) if match else None


def field_errors(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'class="field-error"[^>]*>([^<]+)<', page)]


def form_error(page: str) -> str | None:
    match = re.search(r'id="form-errors">\s*<p>([^<]+)</p>', page)
    return html.unescape(match.group(1)) if match else None


def credits_on(page: str, element_id: str = "balance") -> int:
    value = text_of(page, element_id)
    assert value is not None, f"no #{element_id} on the page"
    return int(value.replace(",", ""))


class Web:
    """One browser-like session: a cookie jar, no automatic redirects."""

    def __init__(self, base_url: str, **headers: str) -> None:
        self.client = httpx.Client(
            base_url=base_url, follow_redirects=False, timeout=30, headers=headers
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Web:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def token(self, page_path: str = "/login") -> str:
        """A CSRF token from a form on ``page_path`` (as a browser would have it)."""
        r = self.get(page_path)
        assert r.status_code == 200, (page_path, r.status_code)
        return csrf_from(r.text)

    def post(
        self, path: str, data: dict[str, str] | None = None, *, token_from: str | None = None
    ) -> httpx.Response:
        """POST a form; with ``token_from``, first fetch that page for a CSRF token."""
        form = dict(data or {})
        if token_from is not None:
            form["csrf_token"] = self.token(token_from)
        return self.client.post(path, data=form)

    def signup(self, email: str, password: str = PASSWORD) -> str:
        """Sign up (logged in afterwards); returns the API key shown once."""
        r = self.post("/signup", {"email": email, "password": password}, token_from="/signup")
        # POST/redirect/GET: the key waits for the page the redirect shows.
        assert r.status_code == 303, r.text[:2000]
        assert r.headers["Location"] == "/dashboard/keys"
        r = self.get("/dashboard/keys")
        assert r.status_code == 200, r.text[:2000]
        key = text_of(r.text, "new-key")
        assert key is not None, "no key shown after sign-up"
        assert key.startswith("cinch_live_"), key
        return key

    def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        return self.post("/login", {"email": email, "password": password}, token_from="/login")

    def logout(self) -> httpx.Response:
        return self.post("/logout", token_from="/dashboard/keys")
