"""``POST /run``: authenticate, hold credits, run, settle, answer."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import trio
from quart import Blueprint, Response, current_app, g, request

from scheduler import NoCapacity, RunRequest, RunResult, ShuttingDown

from ._errors import ApiError
from ._store import StoreError, hash_key

log = logging.getLogger("cinch.api")
bp = Blueprint("runs", __name__)

LANGUAGE_ALIASES = {
    "python": "python",
    "python3": "python",
    "py": "python",
    "javascript": "javascript",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
}
HOLD_STEP = 500  # credits held ahead of use, per half second
BAD_BODY = 'the body must be a JSON object like {"code": "print(2 + 2)", "language": "python"}'


@dataclass(frozen=True)
class ParsedRun:
    code: str
    language: str
    stdin: str
    body_hash: bytes


def parse_run_body(raw: bytes, max_code_bytes: int, max_stdin_bytes: int) -> ParsedRun:
    """Validate a ``/run`` body; raises :class:`ApiError` (400 or 413) with a clear message."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON; " + BAD_BODY) from None
    if not isinstance(body, dict):
        raise ApiError(400, BAD_BODY)
    code = body.get("code")
    if not isinstance(code, str) or code == "":
        raise ApiError(400, '"code" must be a non-empty string')
    language = body.get("language", "python")
    if not isinstance(language, str) or language.strip().lower() not in LANGUAGE_ALIASES:
        raise ApiError(
            400,
            '"language" must be "python" or "javascript" (or "js", "node", "python3"); '
            f"got {json.dumps(language, ensure_ascii=False)[:50]}",
        )
    stdin = body.get("stdin")
    if stdin is None:
        stdin = ""
    if not isinstance(stdin, str):
        raise ApiError(400, '"stdin" must be a string')
    code_bytes = len(code.encode("utf-8", "surrogatepass"))
    if code_bytes > max_code_bytes:
        raise ApiError(413, f'"code" is {code_bytes} bytes; the limit is {max_code_bytes} bytes')
    stdin_bytes = len(stdin.encode("utf-8", "surrogatepass"))
    if stdin_bytes > max_stdin_bytes:
        raise ApiError(413, f'"stdin" is {stdin_bytes} bytes; the limit is {max_stdin_bytes} bytes')
    canonical = LANGUAGE_ALIASES[language.strip().lower()]
    digest = hashlib.sha256(
        json.dumps([code, canonical, stdin], ensure_ascii=False).encode("utf-8", "surrogatepass")
    ).digest()
    return ParsedRun(code, canonical, stdin, digest)


def bearer_key(header: str | None) -> str:
    if not header:
        raise ApiError(401, "missing API key: send the header Authorization: Bearer cinch_live_...")
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith("cinch_live_") or len(key) > 200:
        raise ApiError(401, "invalid API key: expected Authorization: Bearer cinch_live_...")
    return key


class ServerTiming:
    """Milliseconds per step of a run, for the ``Server-Timing`` response header."""

    def __init__(self, start: float | None = None) -> None:
        # Trio's clock, the one the request's own start (g.t0) is read from.
        self._last = trio.current_time() if start is None else start
        self._steps: list[tuple[str, float]] = []

    def mark(self, step: str) -> None:
        now = trio.current_time()
        self._steps.append((step, (now - self._last) * 1000))
        self._last = now

    def header(self) -> str:
        return ", ".join(f"{step};dur={ms:.2f}" for step, ms in self._steps)


class HoldBudget:
    """Keeps the run's credit hold ahead of its use; stops the run when nothing is left."""

    def __init__(self, store: Any, hold_id: int, held: int) -> None:
        self._store = store
        self._hold_id = hold_id
        self.held = held

    async def extend(self, elapsed_ms: int) -> bool:
        ahead = self.held - elapsed_ms
        if ahead >= 2 * HOLD_STEP:
            return True
        # Top up to a whole step past the next check: checks drift late (each waits
        # half a second after a database call), and a hold that falls behind the
        # clock caps the settlement below the run's durationMs.
        add = max(HOLD_STEP, 2 * HOLD_STEP - ahead)
        try:
            new = await self._store.extend_hold(self._hold_id, add)
        except StoreError:
            log.warning("hold %s: database unavailable, stopping the run", self._hold_id)
            return False
        if new is not None and new > self.held:
            self.held = new
            return True
        return self.held - elapsed_ms >= HOLD_STEP


def result_body(result: RunResult, charged: int) -> dict[str, Any]:
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "exitCode": result.exit_code,
        "timedOut": result.timed_out,
        "durationMs": result.duration_ms,
        "termination": result.termination.value,
        "signal": result.signal,
        "truncated": result.truncated,
        "queueMs": result.queue_ms,
        "creditsCharged": charged,
        "language": result.language,
    }


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    try:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from the request (JSON allows "\ud800") echoed in an
        # error message: escape it rather than fail with a 500.
        data = json.dumps(body, separators=(",", ":")).encode("ascii")
    return Response(
        data,
        status=status,
        headers=headers or {},
        content_type="application/json; charset=utf-8",
    )


@bp.post("/run")
async def run() -> Response:
    app = current_app
    config = app.config["CINCH"]
    store = app.config["STORE"]
    scheduler = app.config["SCHEDULER"]
    metrics = app.config["METRICS"]
    limiter = app.config["LIMITER"]
    request_id = g.request_id

    # Read the body first, whatever happens next: a response sent over an unread
    # body leaves the keep-alive connection stuck for the client's next request.
    raw = await request.get_data(cache=False)
    key = bearer_key(request.headers.get("Authorization"))
    parsed = parse_run_body(raw, config.max_code_bytes, config.max_stdin_bytes)
    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None and not (0 < len(idem_key) <= 255):
        raise ApiError(400, "Idempotency-Key must be 1 to 255 characters")

    key_id = hash_key(key)
    decision = limiter.acquire(key_id)
    rl_headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_s),
    }
    if not decision.allowed:
        what = (
            f"more than {config.rate_limit_rps:g} requests per second"
            if decision.reason == "rate"
            else f"more than {config.max_concurrent_per_key} runs at once"
        )
        raise ApiError(
            429,
            f"rate limited: this key sent {what}; retry after {decision.retry_after_s} s",
            headers={"Retry-After": str(decision.retry_after_s), **rl_headers},
        )
    try:
        return await _authorized_run(
            app, config, store, scheduler, metrics, key, parsed, idem_key, request_id, rl_headers
        )
    finally:
        limiter.release(key_id)


async def _authorized_run(
    app: Any,
    config: Any,
    store: Any,
    scheduler: Any,
    metrics: Any,
    key: str,
    parsed: ParsedRun,
    idem_key: str | None,
    request_id: str,
    rl_headers: dict[str, str],
) -> Response:
    timing = ServerTiming(getattr(g, "t0", None))
    timing.mark("parse")
    try:
        auth = await store.authorize(key, HOLD_STEP)
        timing.mark("auth")
    except StoreError as exc:
        log.error("request %s: %s", request_id, exc)
        raise ApiError(
            503, "the credits database is unavailable; retry shortly", headers={"Retry-After": "2"}
        ) from None
    if auth.status == "invalid_key":
        raise ApiError(401, "invalid API key (revoked or unknown)")
    if auth.status == "no_credits":
        raise ApiError(
            402, "out of credits: top up in your dashboard", headers={"X-Credits-Remaining": "0"}
        )
    hold_id = auth.hold_id
    assert hold_id is not None
    assert auth.account_id is not None
    owned_idem = False
    try:
        if idem_key is not None:
            replay = await _idempotency(app, store, auth.account_id, idem_key, parsed, config)
            if replay is not None:
                await store.release_hold(hold_id)
                hold_id = None
                status, body = replay
                _, available = await store.balance(auth.account_id)
                return json_response(
                    body,
                    status,
                    {
                        "X-Request-Id": request_id,
                        "X-Credits-Remaining": str(max(0, available)),
                        "Idempotent-Replayed": "true",
                        **rl_headers,
                    },
                )
            owned_idem = True
        run_request = RunRequest(
            language=parsed.language,
            code=parsed.code,
            stdin=parsed.stdin,
            timeout_s=config.run_timeout_s,
            output_limit_bytes=config.output_limit_bytes,
            request_id=request_id,
        )
        budget = HoldBudget(store, hold_id, auth.hold_amount)
        # A client that hangs up does not stop the run or its bill: the run is
        # bounded by its own limits, and settling it is what makes it paid for.
        with trio.CancelScope(shield=True):
            try:
                result = await scheduler.run(run_request, budget)
                timing.mark("run")
            except (NoCapacity, ShuttingDown) as exc:
                retry = getattr(exc, "retry_after_s", 2.0)
                raise ApiError(
                    503,
                    f"no sandbox available right now: {exc}",
                    headers={"Retry-After": str(max(1, round(retry)))},
                ) from None
            settlement = await _settle(store, hold_id, auth, result, request_id)
            timing.mark("settle")
            hold_id = None
            metrics.runs.labels(result.language, result.termination.value).inc()
            metrics.run_duration.labels(result.language).observe(result.duration_ms / 1000)
            metrics.queue_wait.labels(result.language).observe(result.queue_ms / 1000)
            metrics.credits_charged.inc(settlement.charged)
            body = result_body(result, settlement.charged)
            if owned_idem:
                assert idem_key is not None
                await store.idempotency_finish(auth.account_id, idem_key, 200, body)
                owned_idem = False
                _notify_idempotency(app, auth.account_id, idem_key)
        return json_response(
            body,
            200,
            {
                "X-Request-Id": request_id,
                "X-Credits-Remaining": str(max(0, settlement.available)),
                "Server-Timing": timing.header(),
                **rl_headers,
            },
        )
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            if hold_id is not None:
                try:
                    await store.release_hold(hold_id)
                except StoreError:
                    pass  # it expires by itself
            if owned_idem and idem_key is not None:
                try:
                    await store.idempotency_abort(auth.account_id, idem_key)
                except StoreError:
                    pass
                _notify_idempotency(app, auth.account_id, idem_key)


async def _settle(store: Any, hold_id: int, auth: Any, result: RunResult, request_id: str) -> Any:
    """Charge the run; retried briefly. Without a charge there is no result: never a free run."""
    for attempt in range(4):
        try:
            return await store.settle(
                hold_id=hold_id,
                account_id=auth.account_id,
                key_id=auth.key_id,
                run_id=request_id,
                language=result.language,
                termination=result.termination.value,
                exit_code=result.exit_code,
                duration_ms=result.duration_ms,
                queue_ms=result.queue_ms,
                billable=result.billable,
            )
        except StoreError as exc:
            log.warning("request %s: settle failed (attempt %d): %s", request_id, attempt + 1, exc)
            await trio.sleep(0.25 * (attempt + 1))
    raise ApiError(
        503,
        "the credits database is unavailable; the run was not charged, retry shortly",
        headers={"Retry-After": "2"},
    )


def _notify_idempotency(app: Any, account_id: int, key: str) -> None:
    waiters = app.config["IDEMPOTENCY_WAITERS"]
    event = waiters.pop((account_id, key), None)
    if event is not None:
        event.set()


async def _idempotency(
    app: Any, store: Any, account_id: int, key: str, parsed: ParsedRun, config: Any
) -> tuple[int, dict[str, Any]] | None:
    """None: we own the key and run. Otherwise the stored ``(status, body)`` to replay."""
    deadline = trio.current_time() + config.queue_timeout_s + config.run_timeout_s + 5
    while True:
        record = await store.idempotency_begin(
            account_id, key, parsed.body_hash, config.idempotency_ttl_s
        )
        if record is None:
            return None
        if record.body_hash != parsed.body_hash:
            raise ApiError(
                409, "this Idempotency-Key was already used with a different request body"
            )
        if record.state == "done" and record.response is not None:
            return int(record.status_code or 200), record.response
        # The first attempt is still running: wait for it (here or on another instance).
        if trio.current_time() > deadline:
            raise ApiError(409, "a request with this Idempotency-Key is still running")
        waiters = app.config["IDEMPOTENCY_WAITERS"]
        event = waiters.setdefault((account_id, key), trio.Event())
        with trio.move_on_after(0.25):
            await event.wait()
