"""The Quart-Trio application: wiring, JSON errors, request ids and HTTP metrics."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import trio
from quart import Blueprint, Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ._config import Config
from ._errors import ApiError
from ._health import bp as health_bp
from ._http_limits import DrainBody
from ._limits import FailureLimiter, KeyLimiter
from ._metrics import Metrics
from ._runs import bp as runs_bp
from ._runs import json_response
from ._state import AppState, Readiness

log = logging.getLogger("cinch.api")

# The API's own paths: they answer JSON errors to everyone, browsers included.
API_PATHS = frozenset({"/run", "/languages", "/healthz", "/readyz", "/metrics", "/openapi.json"})


class _CountRequests:
    """ASGI middleware: counts HTTP requests from arrival until the handler is done.

    In ``finally``, so a request cancelled by a client that hung up is counted
    out too (an ``after_request`` hook is skipped then).
    """

    def __init__(self, app: Any, state: AppState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self._app(scope, receive, send)
            return
        self._state.metrics.in_flight.inc()
        self._state.in_flight.enter()
        try:
            await self._app(scope, receive, send)
        finally:
            self._state.in_flight.leave()
            self._state.metrics.in_flight.dec()


def _is_api_path(path: str) -> bool:
    return path.rstrip("/") in API_PATHS or path.startswith("/webhooks/")


def create_app(
    config: Config,
    *,
    scheduler: Any,
    store: Any,
    metrics: Metrics | None = None,
    readiness: Readiness | None = None,
    languages_info: dict[str, Any] | None = None,
    blueprints: Sequence[Blueprint] = (),
) -> QuartTrio:
    """Build the app. Everything it needs is passed in; nothing is global."""
    app = QuartTrio("cinch")
    # Room for the largest code and stdin, JSON-escaped, and the input files as
    # base64 (or escaped text); /run checks the exact sizes.
    app.config["MAX_CONTENT_LENGTH"] = (
        2 * (config.max_code_bytes + config.max_stdin_bytes + config.max_files_bytes) + 65536
    )
    app.config["JSON_SORT_KEYS"] = False
    app.config["CINCH"] = config
    state = AppState(
        config=config,
        store=store,
        scheduler=scheduler,
        metrics=metrics or Metrics(scheduler),
        limiter=KeyLimiter(
            config.rate_limit_rps, config.rate_limit_burst, config.max_concurrent_per_key
        ),
        auth_failures=FailureLimiter(config.auth_failures_per_s, config.auth_failures_burst),
        readiness=readiness,
        languages_info=languages_info or {},
    )
    app.extensions["cinch"] = state
    app.asgi_app = _CountRequests(app.asgi_app, state)  # type: ignore[method-assign]
    # Every answer consumes its request's body (or closes the connection).
    app.asgi_app = DrainBody(app.asgi_app)  # type: ignore[method-assign]
    app.register_blueprint(runs_bp)
    app.register_blueprint(health_bp)
    for bp in blueprints:
        app.register_blueprint(bp)

    @app.before_request
    async def _start() -> None:
        g.request_id = uuid.uuid4().hex
        g.t0 = trio.current_time()

    @app.after_request
    async def _finish(response: Response) -> Response:
        response.headers.setdefault("X-Request-Id", getattr(g, "request_id", ""))
        m = state.metrics
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        m.http_requests.labels(route, request.method, str(response.status_code)).inc()
        if hasattr(g, "t0"):
            m.http_duration.labels(route).observe(trio.current_time() - g.t0)
            del g.t0
        return response

    def _wants_html() -> bool:
        """A browser asking for a page (not the API) gets its errors as a page."""
        if app.config.get("HTML_ERROR_PAGE") is None or _is_api_path(request.path):
            return False
        accept = request.accept_mimetypes
        return accept.best_match(["application/json", "text/html"]) == "text/html"

    async def _error(status: int, message: str, headers: dict[str, str]) -> Response:
        if _wants_html():
            response: Response = await app.config["HTML_ERROR_PAGE"](status, message)
            response.headers.update(headers)
            return response
        return json_response({"error": message}, status, headers)

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        headers = dict(exc.headers)
        if exc.status == 401:
            # RFC 9110 section 11.6.1: a 401 names the scheme the client must use.
            headers.setdefault("WWW-Authenticate", 'Bearer realm="cinch"')
        return json_response({"error": exc.message}, exc.status, headers)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status != 413:
            # Drain an unread body (404/405 on a POST): otherwise the keep-alive
            # connection is stuck for the client's next request.
            with contextlib.suppress(Exception):
                await request.get_data(cache=False)
        if status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif status == 405:
            allowed = ", ".join(sorted(getattr(exc, "valid_methods", None) or []))
            message = f"method {request.method} is not allowed on {request.path}" + (
                f"; use {allowed}" if allowed else ""
            )
        elif status == 413:
            message = (
                "request body too large: code is limited to "
                f"{config.max_code_bytes} bytes, stdin to {config.max_stdin_bytes} bytes "
                f"and files to {config.max_files_bytes} bytes in all"
            )
        else:
            message = exc.description or exc.name
        headers = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(getattr(exc, "valid_methods", None) or []))
        return await _error(status, message, headers)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        request_id = getattr(g, "request_id", "")
        # Never log the body: it holds the user's code.
        log.exception("request %s %s %s failed", request_id, request.method, request.path)
        message = f"internal error; quote request id {request_id} when reporting it"
        if _wants_html():
            with contextlib.suppress(Exception):  # the page itself must not fail the 500
                return await _error(500, f"Internal error: {message}.", {})
        return json_response({"error": message}, 500)

    return app
