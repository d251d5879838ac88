"""The dashboard: home, docs, sign-up, log-in, API keys, usage and top-ups, server-rendered.

Pages are Jinja templates (``api/templates``) with plain CSS and a little JS
(``api/static``); nothing is loaded from another site.

Sessions live in the database: the ``cinch_session`` cookie holds a random token and the
``sessions`` table only its SHA-256, so logging out ends a session at once.  Every form
carries a CSRF token: an HMAC under the session secret of the ``cinch_csrf`` cookie (a
random value per browser) and the session token, checked before any POST is handled.
Cookies are HttpOnly and SameSite=Lax, and Secure when ``CINCH_SECURE_COOKIES=on`` or
(``auto``) when the request came over HTTPS (directly or per ``X-Forwarded-Proto``).

Only home, docs, sign-up and log-in are reachable without a session.  Every query for a
key, run, ledger row or payment is filtered by the session's account id in the store.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from markupsafe import Markup
from quart import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from quart.typing import ResponseReturnValue

from ._chart import usage_svg
from ._config import Config
from ._health import languages_document
from ._passwords import hash_password, verify_password
from ._payments import (
    AmountError,
    PaymentProviderError,
    check_amount_cents,
    credits_for_cents,
    parse_amount_cents,
    start_dev_topup,
    start_stripe_checkout,
    webhook_blueprint,
)
from ._state import app_state
from ._store import NotFoundError, SignupLimited, StoreError

log = logging.getLogger("cinch.dashboard")

SESSION_COOKIE = "cinch_session"
CSRF_COOKIE = "cinch_csrf"
SESSION_TTL_S = 14 * 24 * 3600  # idle
SESSION_MAX_AGE_S = 30 * 24 * 3600  # absolute
LOGIN_WINDOW_S = 15 * 60
LOGIN_MAX_FAILURES_PER_EMAIL = 5
LOGIN_MAX_FAILURES_PER_IP = 30
SIGNUP_WINDOW_S = 3600
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
MAX_KEYS = 20
RECENT_RUNS = 10
RUNS_PAGE = 25
SECRET_FILE = "session-secret"
LOGO = Path(__file__).parent / "static" / "logo.svg"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NEXT = re.compile(r"^/dashboard(?:/[A-Za-z0-9_-]+)*$")
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{16,100}$")
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self' https://checkout.stripe.com"
)


@dataclass(frozen=True)
class Account:
    id: int
    email: str


class Flash:
    """What a POST leaves for the page its redirect shows: held in memory, shown once.

    POST/redirect/GET: a form post answers 303 to a GET page, so a reload does not
    post again.  A one-time API key must still reach that page, and it must never sit
    in a URL, a cookie or the database: it waits here, keyed by the SHA-256 of the
    session token, for at most ``ttl_s`` seconds, and the next GET of the page takes
    it.  Per process: behind several instances, the redirect must reach the same one
    (or the key is lost, and the user regenerates it).
    """

    def __init__(self, ttl_s: float = 60.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._items: dict[bytes, tuple[float, dict[str, Any]]] = {}

    def put(self, session_token: str, **message: Any) -> None:
        now = trio.current_time()
        self._items = {k: v for k, v in self._items.items() if v[0] > now}
        if len(self._items) >= self.max_entries:
            self._items.pop(next(iter(self._items)))  # the oldest
        self._items[_token_hash(session_token)] = (now + self.ttl_s, message)

    def take(self, session_token: str) -> dict[str, Any]:
        """The message left for this session (once), or ``{}``."""
        if not session_token:
            return {}
        expires, message = self._items.pop(_token_hash(session_token), (0.0, {}))
        return message if expires > trio.current_time() else {}


class _State:
    """What the dashboard's views share: config, the session secret, a hashing limiter."""

    def __init__(self, config: Config, secret: bytes) -> None:
        self.config = config
        self.secret = secret
        self.flash = Flash()
        # argon2id takes ~64 MiB and tens of ms per hash: off the event loop, two at a time.
        self.hash_limiter = trio.CapacityLimiter(2)
        self.dummy_hash: str | None = None

    async def hash_password(self, password: str) -> str:
        return await trio.to_thread.run_sync(hash_password, password, limiter=self.hash_limiter)

    async def verify_password(self, password_hash: str | None, password: str) -> bool:
        if not password_hash:
            # Same work whether or not the account exists: no e-mail enumeration by timing.
            if self.dummy_hash is None:
                self.dummy_hash = await self.hash_password(secrets.token_hex(16))
            await trio.to_thread.run_sync(
                verify_password, self.dummy_hash, password, limiter=self.hash_limiter
            )
            return False
        return await trio.to_thread.run_sync(
            verify_password, password_hash, password, limiter=self.hash_limiter
        )


def load_session_secret(config: Config) -> bytes:
    """``CINCH_SESSION_SECRET``, or a random secret made once and kept 0600 in the data dir."""
    if config.session_secret:
        return config.session_secret.encode()
    path = Path(config.data_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic; another process may have won the race
            except FileExistsError:
                pass
        finally:
            tmp.unlink()
    secret = bytes.fromhex(path.read_text().strip())
    if len(secret) < 32:
        raise ValueError(f"{path} holds a secret shorter than 32 bytes")
    return secret


def dashboard_blueprints(config: Config) -> list[Blueprint]:
    """The dashboard's blueprints for ``create_app(..., blueprints=...)``."""
    state = _State(config, load_session_secret(config))
    bp = Blueprint(
        "dashboard",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/assets",
    )
    bp.record_once(lambda s: s.app.config.__setitem__("DASHBOARD", state))
    # Errors outside any dashboard view (an unknown URL, a 405) reach the app's
    # handlers; for a browser they render this page instead of JSON.
    bp.record_once(lambda s: s.app.config.__setitem__("HTML_ERROR_PAGE", html_error_page))
    bp.before_request(_before)
    bp.after_request(_after)
    bp.app_context_processor(_template_context)
    bp.add_app_template_filter(_num, "num")
    bp.add_app_template_filter(_when, "when")
    bp.add_app_template_filter(_usd, "usd")
    bp.add_app_template_filter(_mb, "mb")
    bp.register_error_handler(StoreError, _store_error)
    for rule, view, methods in (
        ("/", home, ["GET"]),
        ("/docs", docs, ["GET"]),
        ("/signup", signup, ["GET", "POST"]),
        ("/login", login, ["GET", "POST"]),
        ("/logout", logout, ["POST"]),
        ("/dashboard", dashboard, ["GET"]),
        ("/dashboard/keys", keys, ["GET", "POST"]),
        ("/dashboard/keys/<int:key_id>/regenerate", regenerate_key, ["POST"]),
        ("/dashboard/keys/<int:key_id>/revoke", revoke_key, ["POST"]),
        ("/dashboard/usage", usage, ["GET"]),
        ("/dashboard/runs", runs, ["GET"]),
        ("/dashboard/runs/<run_id>", run_detail, ["GET"]),
        ("/dashboard/account", account_page, ["GET", "POST"]),
        ("/dashboard/topup", topup, ["GET", "POST"]),
        ("/favicon.ico", favicon, ["GET"]),
    ):
        bp.add_url_rule(rule, view_func=view, methods=methods)
    blueprints = [bp]
    if config.payments == "stripe":
        blueprints.append(webhook_blueprint(config))
    return blueprints


# -- plumbing: state, cookies, CSRF, sessions ------------------------------------------------


def _state() -> _State:
    state: _State = current_app.config["DASHBOARD"]
    return state


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _request_is_https() -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.scheme == "https" or forwarded == "https"


def _secure_cookies() -> bool:
    setting = _state().config.secure_cookies
    return setting == "on" or (setting == "auto" and _request_is_https())


def _base_url() -> str:
    """This server's public root, for links and examples."""
    config = _state().config
    if config.public_url:
        return config.public_url.rstrip("/")
    return f"{'https' if _request_is_https() else 'http'}://{request.host}"


def _cookie_value(name: str) -> str | None:
    value = request.cookies.get(name)
    return value if value and _COOKIE_VALUE.match(value) else None


def _session_token() -> str:
    """The session token this response's forms must be bound to ('' when logged out)."""
    if "new_session_token" in g:
        return str(g.new_session_token)
    return _cookie_value(SESSION_COOKIE) or ""


def _csrf_for(browser: str, session_token: str) -> str:
    mac = hmac.new(_state().secret, f"csrf\0{browser}\0{session_token}".encode(), "sha256")
    return _b64(mac.digest())


def csrf_token() -> str:
    browser = g.get("csrf_browser")
    return _csrf_for(browser, _session_token()) if browser else ""


async def _before() -> Response | None:
    browser = _cookie_value(CSRF_COOKIE)
    g.csrf_browser = browser or _b64(secrets.token_bytes(24))
    g.set_csrf_cookie = browser is None
    if request.method == "POST":
        form = await request.form
        sent = form.get("csrf_token", "")
        expected = _csrf_for(browser, _cookie_value(SESSION_COOKIE) or "") if browser else ""
        if not browser or not hmac.compare_digest(sent.encode(), expected.encode()):
            return await _error_page(
                403,
                "This form has expired",
                "The form was not sent from this page, or it is too old. "
                "Go back, reload the page and try again.",
            )
    return None


async def _after(response: Response) -> Response:
    secure = _secure_cookies()
    if g.get("set_csrf_cookie"):
        response.set_cookie(
            CSRF_COOKIE,
            g.csrf_browser,
            max_age=SESSION_MAX_AGE_S,
            path="/",
            secure=secure,
            httponly=True,
            samesite="Lax",
        )
    if "new_session_token" in g:
        if g.new_session_token:
            response.set_cookie(
                SESSION_COOKIE,
                g.new_session_token,
                max_age=SESSION_TTL_S,
                path="/",
                secure=secure,
                httponly=True,
                samesite="Lax",
            )
        else:
            response.delete_cookie(
                SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="Lax"
            )
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "dashboard.static":
        headers["Cache-Control"] = "no-store"
    return response


async def current_account() -> Account | None:
    """The logged-in account of this request, or None (looked up once per request)."""
    if "account" in g:
        account: Account | None = g.account
        return account
    account = None
    token = _cookie_value(SESSION_COOKIE)
    if token:
        row = await app_state().store.session_account(
            _token_hash(token), SESSION_TTL_S, SESSION_MAX_AGE_S
        )
        if row is not None:
            account = Account(int(row["id"]), str(row["email"] or ""))
    g.account = account
    return account


async def _start_session(account_id: int) -> None:
    store = app_state().store
    old = _cookie_value(SESSION_COOKIE)
    if old:
        await store.delete_session(_token_hash(old))
    token = _b64(secrets.token_bytes(32))
    await store.create_session(account_id, _token_hash(token), SESSION_TTL_S, SESSION_MAX_AGE_S)
    g.new_session_token = token


View = Callable[..., Awaitable[Any]]


def login_required(view: View) -> View:
    """Run ``view(account, ...)`` for a logged-in request; otherwise send to the log-in page."""

    @functools.wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        account = await current_account()
        if account is None:
            if request.method == "GET":
                return redirect(url_for("dashboard.login", next=request.path))
            return redirect(url_for("dashboard.login"), 303)
        return await view(account, *args, **kwargs)

    return wrapper


async def _page(template: str, status: int = 200, **context: Any) -> Response:
    body = await render_template(template, **context)
    return Response(body, status, content_type="text/html; charset=utf-8")


async def _error_page(status: int, title: str, message: str) -> Response:
    return await _page("error.html", status, title=title, message=message)


_ERROR_TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed here",
    413: "Too large",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}


async def html_error_page(status: int, message: str) -> Response:
    """An error page for a browser, outside any dashboard view (404, 405, 500 ...).

    The dashboard's own hooks did not run: no session is looked up (the page must
    render even when the database is down) and the security headers are set here.
    """
    g.setdefault("account", None)
    title = _ERROR_TITLES.get(status, "Error")
    if status == 404:
        message = "There is no page at this address. Check the address, or start again from home."
    response = await _error_page(status, title, message)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers["Cache-Control"] = "no-store"
    return response


async def _store_error(exc: StoreError) -> Response:
    log.error("dashboard %s %s: %s", request.method, request.path, exc)
    response = await _error_page(
        503, "Temporarily unavailable", "The database is not answering. Try again in a moment."
    )
    response.headers["Retry-After"] = "5"
    return response


async def _template_context() -> dict[str, Any]:
    config = _state().config
    return {
        "csrf_token": csrf_token,
        "account": g.get("account"),
        "payments": config.payments,
        "credits_contact": config.credits_contact,
        "signup_credits": config.signup_credits,
        "credits_per_usd": config.credits_per_usd,
        "topup_min_usd": config.topup_min_usd,
        "topup_max_usd": config.topup_max_usd,
    }


def _num(value: Any) -> str:
    return f"{int(value or 0):,}"


def _when(value: datetime | None) -> str:
    if value is None:
        return "never"
    return value.strftime("%Y-%m-%d %H:%M UTC") if value.tzinfo else value.isoformat()


def _usd(cents: Any) -> str:
    return f"${int(cents or 0) / 100:,.2f}"


def _mb(n: Any) -> str:
    return f"{int(n) / (1024 * 1024):g} MB"


# -- public pages --------------------------------------------------------------------------------


async def home() -> Response:
    await current_account()
    return await _page("home.html", base_url=_base_url())


def docs_examples(base_url: str) -> dict[str, str]:
    """The examples on /docs, exactly as shown (tests run each one against a live server)."""
    return {
        "curl": (
            f"curl -s {base_url}/run \\\n"
            '  -H "Authorization: Bearer $CINCH_API_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            '  -d \'{"code": "print(2 + 2)"}\''
        ),
        "python": (
            "import os\n\n"
            "from pangolin import Sandbox  # pip install ./sdk/python (in a Cinch clone)\n\n"
            f'box = Sandbox(api_key=os.environ["CINCH_API_KEY"], base_url="{base_url}")\n'
            'result = box.run("print(2 + 2)")\n'
            'print(result.stdout, end="")  # 4\n'
            "print(result.exit_code)  # 0\n"
        ),
        "javascript": (
            "// Node 18 or later; save as run.mjs and run: node run.mjs\n"
            f'const response = await fetch("{base_url}/run", {{\n'
            '  method: "POST",\n'
            "  headers: {\n"
            "    Authorization: `Bearer ${process.env.CINCH_API_KEY}`,\n"
            '    "Content-Type": "application/json",\n'
            "  },\n"
            '  body: JSON.stringify({ code: "console.log(2 + 2)", language: "javascript" }),\n'
            "});\n"
            "const result = await response.json();\n"
            "if (!response.ok) throw new Error(`${response.status}: ${result.error}`);\n"
            "console.log(result.stdout.trim()); // 4\n"
            "console.log(result.exitCode); // 0\n"
        ),
        "javascript-sdk": (
            'import { Sandbox } from "@cinch/sdk"; // npm install /path/to/cinch/sdk/js\n\n'
            "const box = new Sandbox({\n"
            "  apiKey: process.env.CINCH_API_KEY,\n"
            f'  baseUrl: "{base_url}",\n'
            "});\n"
            'const result = await box.run("print(2 + 2)");\n'
            "console.log(result.stdout.trim()); // 4\n"
            "console.log(result.exitCode); // 0\n"
        ),
    }


async def docs() -> Response:
    await current_account()
    config = _state().config
    base_url = _base_url()
    reference = languages_document(config, app_state().languages_info)
    return await _page(
        "docs.html",
        base_url=base_url,
        examples=docs_examples(base_url),
        reference=reference,
        config=config,
    )


def _form_value(form: Any, name: str, limit: int = 1024) -> str:
    value = form.get(name, "")
    return value[:limit] if isinstance(value, str) else ""


async def signup() -> Any:
    state = _state()
    store = app_state().store
    if request.method == "GET":
        if await current_account() is not None:
            return redirect(url_for("dashboard.keys"))
        return await _page("signup.html", errors={}, email="")
    form = await request.form
    email = _form_value(form, "email", 300).strip()
    password = _form_value(form, "password", PASSWORD_MAX + 1)
    errors: dict[str, str] = {}
    if not email:
        errors["email"] = "Enter your e-mail address."
    elif len(email) > 254 or not _EMAIL.match(email):
        errors["email"] = "Enter a valid e-mail address, like you@example.com."
    if len(password) < PASSWORD_MIN:
        errors["password"] = f"Use at least {PASSWORD_MIN} characters."
    elif len(password) > PASSWORD_MAX:
        errors["password"] = f"Use at most {PASSWORD_MAX} characters."
    elif password.strip().lower() == email.lower():
        errors["password"] = "Choose a password that is not your e-mail address."
    ip = request.remote_addr or "unknown"
    account_id = 0
    if not errors:
        # Each sign-up is a free credit grant: the per-address cap is checked and the
        # sign-up recorded in one transaction, so concurrent sign-ups cannot all pass.
        try:
            account_id = await store.create_account(
                email,
                await state.hash_password(password),
                state.config.signup_credits,
                signup_ip=ip,
                max_per_ip_per_hour=state.config.signups_per_ip_per_hour,
            )
        except SignupLimited:
            response = await _page(
                "signup.html",
                429,
                errors={"form": "Too many new accounts from your network. Try again in an hour."},
                email=email,
            )
            response.headers["Retry-After"] = str(SIGNUP_WINDOW_S)
            return response
        except ValueError:
            errors["email"] = "An account with this e-mail already exists. Log in instead."
    if errors:
        return await _page("signup.html", 400, errors=errors, email=email)
    key, _ = await store.create_key(account_id, "default")
    await _start_session(account_id)
    log.info("account %s signed up", account_id)
    return _redirect_with(
        "dashboard.keys",
        revealed=key,
        notice=f"Welcome! Your account starts with {state.config.signup_credits:,} free credits.",
    )


async def login() -> Any:
    state = _state()
    store = app_state().store
    if request.method == "GET":
        next_path = request.args.get("next", "")
        if await current_account() is not None:
            return redirect(next_path if _NEXT.match(next_path) else url_for("dashboard.usage"))
        notice = "You are logged out." if request.args.get("bye") else None
        return await _page("login.html", errors={}, email="", next=next_path, notice=notice)
    form = await request.form
    email = _form_value(form, "email", 300).strip()
    password = _form_value(form, "password", PASSWORD_MAX)
    next_path = _form_value(form, "next", 200)
    ip = request.remote_addr or "unknown"

    async def again(status: int, message: str) -> Response:
        return await _page(
            "login.html", status, errors={"form": message}, email=email, next=next_path
        )

    if not email or not password:
        return await again(400, "Enter your e-mail address and password.")
    by_email, by_ip = await store.login_failures(email, ip, LOGIN_WINDOW_S)
    if by_email >= LOGIN_MAX_FAILURES_PER_EMAIL or by_ip >= LOGIN_MAX_FAILURES_PER_IP:
        log.warning("log-in rate limited (ip %s)", ip)
        response = await again(
            429,
            f"Too many failed log-in attempts. Wait {LOGIN_WINDOW_S // 60} minutes, "
            "then try again.",
        )
        response.headers["Retry-After"] = str(LOGIN_WINDOW_S)
        return response
    row = await store.account_by_email(email)
    ok = await state.verify_password(row["password_hash"] if row else None, password)
    await store.record_login_attempt(email, ip, ok)
    if not ok or row is None:
        return await again(401, "The e-mail address or the password is not right.")
    await _start_session(int(row["id"]))
    return redirect(next_path if _NEXT.match(next_path) else url_for("dashboard.usage"), 303)


async def logout() -> ResponseReturnValue:
    token = _cookie_value(SESSION_COOKIE)
    if token:
        await app_state().store.delete_session(_token_hash(token))
    g.new_session_token = ""
    return redirect(url_for("dashboard.login", bye=1), 303)


# -- pages behind the log-in ---------------------------------------------------------------------


@login_required
async def dashboard(account: Account) -> ResponseReturnValue:
    return redirect(url_for("dashboard.usage"))


async def _keys_page(
    account: Account,
    *,
    status: int = 200,
    revealed: str | None = None,
    revealed_name: str | None = None,
    notice: str | None = None,
    errors: dict[str, str] | None = None,
) -> Response:
    rows = await app_state().store.list_keys(account.id)
    return await _page(
        "keys.html",
        status,
        keys=rows,
        revealed=revealed,
        revealed_name=revealed_name,
        notice=notice,
        errors=errors or {},
        max_keys=MAX_KEYS,
        base_url=_base_url(),
    )


def _redirect_with(endpoint: str, **message: Any) -> ResponseReturnValue:
    """303 to ``endpoint``'s page, which shows ``message`` once (see :class:`Flash`)."""
    _state().flash.put(_session_token(), **message)
    return redirect(url_for(endpoint), 303)


@login_required
async def keys(account: Account) -> ResponseReturnValue:
    store = app_state().store
    if request.method == "GET":
        flash = _state().flash.take(_session_token())
        if request.args.get("revoked"):
            flash.setdefault("notice", "The key was revoked.")
        return await _keys_page(
            account,
            revealed=flash.get("revealed"),
            revealed_name=flash.get("revealed_name"),
            notice=flash.get("notice"),
        )
    form = await request.form
    name = " ".join(_form_value(form, "name", 200).split()) or "default"
    if len(name) > 64:
        return await _keys_page(
            account, status=400, errors={"name": "Use at most 64 characters for the name."}
        )
    if len(await store.list_keys(account.id)) >= MAX_KEYS:
        return await _keys_page(
            account,
            status=400,
            errors={"name": f"You have {MAX_KEYS} keys already; revoke one first."},
        )
    key, _ = await store.create_key(account.id, name)
    return _redirect_with("dashboard.keys", revealed=key, revealed_name=name)


@login_required
async def regenerate_key(account: Account, key_id: int) -> ResponseReturnValue:
    store = app_state().store
    try:
        key, new_id = await store.regenerate_key(account.id, key_id)
    except NotFoundError:
        return await _error_page(404, "No such key", "This key does not exist or was revoked.")
    name = next((r["name"] for r in await store.list_keys(account.id) if r["id"] == new_id), "")
    return _redirect_with(
        "dashboard.keys",
        revealed=key,
        revealed_name=name,
        notice="The old key was revoked and no longer works.",
    )


@login_required
async def revoke_key(account: Account, key_id: int) -> ResponseReturnValue:
    try:
        await app_state().store.revoke_key(account.id, key_id)
    except NotFoundError:
        return await _error_page(404, "No such key", "This key does not exist or was revoked.")
    return redirect(url_for("dashboard.keys", revoked=1), 303)


@login_required
async def usage(account: Account) -> Response:
    store = app_state().store
    balance, available = await store.balance(account.id)
    days = await store.daily_usage(account.id, 30)
    return await _page(
        "usage.html",
        balance=balance,
        available=available,
        chart=Markup(usage_svg(days, name="wide")),
        chart_narrow=Markup(usage_svg(days, width=360, label_every=10, name="narrow")),
        runs=await store.recent_runs(account.id, RECENT_RUNS),
        ledger=await store.ledger_rows(account.id, 100),
        topped=request.args.get("topped"),
    )


RUN_LANGUAGES = ("python", "javascript")
TERMINATIONS = (
    "exited",
    "signal",
    "timeout",
    "oom",
    "output_limit",
    "credit_limit",
    "sandbox_error",
)
TERMINATION_TEXT = {
    "exited": "The program exited by itself.",
    "signal": "The program died of a signal.",
    "timeout": "Stopped at the time limit.",
    "oom": "The sandbox ran out of memory.",
    "output_limit": "Stopped at the output limit.",
    "credit_limit": "Stopped: the account ran out of credits.",
    "sandbox_error": "The sandbox failed (our fault; not charged).",
}
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


@login_required
async def runs(account: Account) -> Response:
    language = request.args.get("language", "")
    termination = request.args.get("termination", "")
    language = language if language in RUN_LANGUAGES else ""
    termination = termination if termination in TERMINATIONS else ""
    page = request.args.get("page", "1")
    page_no = min(int(page), 10_000) if page.isdigit() and int(page) >= 1 else 1
    # One row more than a page: whether there is an older page, without a count(*).
    rows = await app_state().store.list_runs(
        account.id,
        language=language or None,
        termination=termination or None,
        limit=RUNS_PAGE + 1,
        offset=(page_no - 1) * RUNS_PAGE,
    )
    filters = {k: v for k, v in (("language", language), ("termination", termination)) if v}

    def page_url(n: int) -> str:
        params: dict[str, Any] = dict(filters)
        if n > 1:
            params["page"] = n
        return url_for("dashboard.runs", **params)

    return await _page(
        "runs.html",
        runs=rows[:RUNS_PAGE],
        language=language,
        termination=termination,
        languages=RUN_LANGUAGES,
        terminations=TERMINATIONS,
        first=(page_no - 1) * RUNS_PAGE + 1,
        last=(page_no - 1) * RUNS_PAGE + len(rows[:RUNS_PAGE]),
        prev_url=page_url(page_no - 1) if page_no > 1 else None,
        next_url=page_url(page_no + 1) if len(rows) > RUNS_PAGE else None,
    )


@login_required
async def run_detail(account: Account, run_id: str) -> Response:
    row = await app_state().store.run_for(account.id, run_id) if _RUN_ID.match(run_id) else None
    if row is None:
        return await _error_page(404, "No such run", "This run does not exist in your account.")
    output = (
        {"stdout": row["stdout"], "stderr": row["stderr"], "cut": row["cut"]}
        if row["has_output"]
        else None
    )
    return await _page(
        "run.html",
        run=row,
        output=output,
        termination_text=TERMINATION_TEXT.get(row["termination"], ""),
        kept_bytes=_state().config.kept_output_bytes,
    )


@login_required
async def account_page(account: Account) -> ResponseReturnValue:
    state = _state()
    store = app_state().store
    if request.method == "GET":
        flash = state.flash.take(_session_token())
        return await _page("account.html", errors={}, notice=flash.get("notice"))
    form = await request.form
    current = _form_value(form, "current_password", PASSWORD_MAX)
    new = _form_value(form, "new_password", PASSWORD_MAX + 1)
    errors: dict[str, str] = {}
    # The current password is what stops a borrowed session from taking the account
    # over, so guessing it here counts against the same limits as logging in.
    ip = request.remote_addr or "unknown"
    by_email, by_ip = await store.login_failures(account.email, ip, LOGIN_WINDOW_S)
    if by_email >= LOGIN_MAX_FAILURES_PER_EMAIL or by_ip >= LOGIN_MAX_FAILURES_PER_IP:
        errors["form"] = (
            f"Too many wrong passwords. Wait {LOGIN_WINDOW_S // 60} minutes, then try again."
        )
        response = await _page("account.html", 429, errors=errors, notice=None)
        response.headers["Retry-After"] = str(LOGIN_WINDOW_S)
        return response
    row = await store.account_by_email(account.email)
    ok = bool(current) and await state.verify_password(
        row["password_hash"] if row else None, current
    )
    if current:
        await store.record_login_attempt(account.email, ip, ok)
    if not ok:
        errors["current_password"] = "This is not your current password."
    if len(new) < PASSWORD_MIN:
        errors["new_password"] = f"Use at least {PASSWORD_MIN} characters."
    elif len(new) > PASSWORD_MAX:
        errors["new_password"] = f"Use at most {PASSWORD_MAX} characters."
    elif new.strip().lower() == account.email.lower():
        errors["new_password"] = "Choose a password that is not your e-mail address."
    elif new == current and "current_password" not in errors:
        errors["new_password"] = "Choose a password different from the current one."
    if errors:
        return await _page("account.html", 400, errors=errors, notice=None)
    await store.set_password(account.id, await state.hash_password(new))
    # Whoever else knew the old password is logged out everywhere; this browser stays in.
    await store.delete_account_sessions(account.id)
    await _start_session(account.id)
    log.info("account %s changed its password", account.id)
    return _redirect_with(
        "dashboard.account_page",
        notice="Your password was changed; your other sessions are logged out.",
    )


async def favicon() -> Response:
    """The logo, for browsers that ask for /favicon.ico whatever the page says."""
    response = await send_file(LOGO, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


async def _topup_page(
    account: Account,
    *,
    status: int = 200,
    error: str | None = None,
    amount: str = "",
    notice: str | None = None,
) -> Response:
    store = app_state().store
    config = _state().config
    balance, available = await store.balance(account.id)
    try:
        preview: int | None = credits_for_cents(
            parse_amount_cents(amount or str(config.topup_min_usd)), config
        )
    except AmountError:
        preview = None
    return await _page(
        "topup.html",
        status,
        error=error,
        amount=amount,
        notice=notice,
        balance=balance,
        available=available,
        history=await store.payments_for(account.id, 20),
        preview_credits=preview,
    )


@login_required
async def topup(account: Account) -> ResponseReturnValue:
    state = _state()
    config = state.config
    store = app_state().store
    if request.method == "GET":
        notice = None
        checkout = request.args.get("checkout")
        if checkout == "cancelled":
            notice = "The payment was cancelled; nothing was charged."
        elif checkout == "success":
            ref = request.args.get("session_id", "")[:200]
            pay = await store.payment_by_ref(account.id, "stripe", ref) if ref else None
            if pay is not None and pay["status"] == "paid":
                notice = f"Payment received: {pay['credits']:,} credits were added."
            elif pay is not None:
                notice = (
                    "Thank you! The credits are added as soon as the payment is confirmed "
                    "(usually within a minute; reload this page)."
                )
        elif request.args.get("credited", "").isdigit():
            payment_id = int(request.args["credited"])
            pay = next(
                (p for p in await store.payments_for(account.id) if p["id"] == payment_id), None
            )
            if pay is not None and pay["status"] == "paid":
                notice = (
                    f"Added {pay['credits']:,} credits for {pay['paid_cents'] / 100:,.2f} USD "
                    "(development payment: no money moved)."
                )
        return await _topup_page(account, notice=notice)
    form = await request.form
    raw = _form_value(form, "amount", 40)
    if config.payments == "none":
        return await _topup_page(
            account, status=400, error="Top-ups are not enabled on this server.", amount=raw
        )
    try:
        cents = parse_amount_cents(raw)
        check_amount_cents(cents, config)
    except AmountError as exc:
        return await _topup_page(account, status=400, error=str(exc), amount=raw)
    if config.payments == "dev":
        payment_id = await start_dev_topup(store, config, account.id, cents)
        log.info("account %s: dev top-up of %d cents", account.id, cents)
        return redirect(url_for("dashboard.topup", credited=payment_id), 303)
    try:
        url = await start_stripe_checkout(
            store, config, account.id, account.email, cents, _base_url()
        )
    except PaymentProviderError as exc:
        return await _topup_page(account, status=503, error=str(exc), amount=raw)
    return redirect(url, 303)
