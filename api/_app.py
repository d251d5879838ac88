"""The Quart-Trio application: wiring, JSON errors, request ids and HTTP metrics."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from quart import Blueprint, Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ._config import Config
from ._errors import ApiError
from ._health import bp as health_bp
from ._limits import KeyLimiter
from ._metrics import Metrics
from ._runs import bp as runs_bp
from ._runs import json_response

log = logging.getLogger("cinch.api")

Readiness = Callable[[], Awaitable[dict[str, Any]]]


class RequestsInFlight:
    """Counts requests being handled, so shutdown can wait for their answers."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


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
    # Room for the largest code and stdin, JSON-escaped; /run checks the exact sizes.
    app.config["MAX_CONTENT_LENGTH"] = 2 * (config.max_code_bytes + config.max_stdin_bytes) + 65536
    app.config["JSON_SORT_KEYS"] = False
    app.config["CINCH"] = config
    app.config["STORE"] = store
    app.config["SCHEDULER"] = scheduler
    app.config["METRICS"] = metrics or Metrics(scheduler)
    app.config["LIMITER"] = KeyLimiter(
        config.rate_limit_rps, config.rate_limit_burst, config.max_concurrent_per_key
    )
    app.config["IDEMPOTENCY_WAITERS"] = {}
    app.config["IN_FLIGHT"] = RequestsInFlight()
    app.config["READINESS"] = readiness
    app.config["LANGUAGES_INFO"] = languages_info or {}
    app.register_blueprint(runs_bp)
    app.register_blueprint(health_bp)
    for bp in blueprints:
        app.register_blueprint(bp)

    @app.before_request
    async def _start() -> None:
        g.request_id = uuid.uuid4().hex
        g.t0 = trio.current_time()
        app.config["METRICS"].in_flight.inc()
        app.config["IN_FLIGHT"].enter()

    @app.after_request
    async def _finish(response: Response) -> Response:
        response.headers.setdefault("X-Request-Id", getattr(g, "request_id", ""))
        m = app.config["METRICS"]
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        m.http_requests.labels(route, request.method, str(response.status_code)).inc()
        if hasattr(g, "t0"):
            m.http_duration.labels(route).observe(trio.current_time() - g.t0)
            m.in_flight.dec()
            app.config["IN_FLIGHT"].leave()
            del g.t0
        return response

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return json_response({"error": exc.message}, exc.status, exc.headers)

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
            allowed = (
                ", ".join(sorted(exc.valid_methods or [])) if hasattr(exc, "valid_methods") else ""
            )
            message = f"method {request.method} is not allowed on {request.path}" + (
                f"; use {allowed}" if allowed else ""
            )
        elif status == 413:
            message = (
                "request body too large: code is limited to "
                f"{config.max_code_bytes} bytes and stdin to {config.max_stdin_bytes} bytes"
            )
        else:
            message = exc.description or exc.name
        headers = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(exc.valid_methods or []))
        return json_response({"error": message}, status, headers)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        request_id = getattr(g, "request_id", "")
        # Never log the body: it holds the user's code.
        log.exception("request %s %s %s failed", request_id, request.method, request.path)
        return json_response(
            {"error": f"internal error; quote request id {request_id} when reporting it"}, 500
        )

    return app
