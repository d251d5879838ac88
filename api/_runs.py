"""``POST /run``: parse, begin (auth, idempotency, hold), run, finish (charge once), answer.

The money moves in :class:`~api._ledger.RunLedger`; this module only decides
what to answer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import mimetypes
from typing import TYPE_CHECKING, Any, cast

import trio
from quart import Blueprint, Response, current_app, g, request

from scheduler import NoCapacity, RunRequest, RunResult, ShuttingDown

from ._errors import ApiError
from ._keys import hash_key
from ._ledger import Begin, Idempotency, RunLedger, RunOutcome, RunStart, Settlement
from ._limits import Decision
from ._run_body import (
    LANGUAGE_ALIASES as LANGUAGE_ALIASES,
)
from ._run_body import (
    BodyLimits,
    ParsedRun,
)
from ._run_body import (
    parse_run_body as parse_run_body,
)
from ._state import AppState, app_state
from ._store import StoreError
from ._stream import (
    StartedOnce,
    event_body,
    open_event_channel,
    send_event_nowait,
    single_event_response,
    stream_response,
    wants_stream,
)

if TYPE_CHECKING:
    from quart_trio import QuartTrio

log = logging.getLogger("cinch.api")
bp = Blueprint("runs", __name__)

HOLD_STEP = 500  # credits held ahead of use, per half second
# How long a finished run's charge is retried before giving up: a database
# restart (seconds) delays the answer instead of losing it.
SETTLE_BOUND_S = 30.0


async def request_body() -> bytes:
    """The whole request body, read once (not cached: /run bodies can be large)."""
    raw = await request.get_data(cache=False)
    return raw if isinstance(raw, bytes) else raw.encode("utf-8")


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
    """Keeps the run's credit hold ahead of its use (the scheduler's :class:`Budget`).

    Returns how long the run is paid for: the run goes on while any held credit
    is unused, and stops only when nothing more is available.  When the
    database cannot be reached, the run goes on (up to its own deadline): a
    blip is not the program's fault.  Its exact duration is charged when the
    settlement gets through, capped by the account's free credits, so no
    balance goes below zero.  Extensions are tried again every half second.
    """

    def __init__(
        self, ledger: RunLedger, hold_id: int, held: int, max_credits: int | None = None
    ) -> None:
        self._ledger = ledger
        self._hold_id = hold_id
        self.held = held
        self.unreachable_checks = 0  # extensions that could not reach the database
        # The caller's "maxCredits": never paid for beyond it.
        self.max_credits = max_credits

    async def extend(self, elapsed_ms: int) -> int:
        paid = await self._extend(elapsed_ms)
        return paid if self.max_credits is None else min(paid, self.max_credits)

    async def _extend(self, elapsed_ms: int) -> int:
        ahead = self.held - elapsed_ms
        if ahead >= 2 * HOLD_STEP or (
            self.max_credits is not None and self.held >= self.max_credits
        ):
            return self.held
        # Top up to a whole step past the next check: checks drift late (each waits
        # half a second after a database call).
        add = max(HOLD_STEP, 2 * HOLD_STEP - ahead)
        if self.max_credits is not None:
            add = min(add, self.max_credits - self.held)
        try:
            new = await self._ledger.extend_hold(self._hold_id, add)
        except StoreError:
            if not self.unreachable_checks:
                log.warning(
                    "hold %s: database unavailable; the run goes on, billed when it is back",
                    self._hold_id,
                )
            self.unreachable_checks += 1
            # Paid for until after the next check, which tries the database again.
            return max(self.held, elapsed_ms + 2 * HOLD_STEP)
        if new is not None and new > self.held:
            self.held = new
        return self.held


def files_body(result: RunResult) -> list[dict[str, Any]]:
    """The response's ``files``: content as base64, or null when it did not fit."""
    return [
        {
            "path": f.path,
            "size": f.size,
            "mimeType": mime_type(f.path),
            "content": None if f.content is None else base64.b64encode(f.content).decode("ascii"),
        }
        for f in result.files
    ]


# Python's own table only: the answer must not depend on the host's /etc/mime.types.
_MIME = mimetypes.MimeTypes(filenames=())


def mime_type(path: str) -> str:
    guessed, _ = _MIME.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def result_body(result: RunResult, charged: int = 0) -> dict[str, Any]:
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
        "files": files_body(result),
        "filesTruncated": result.files_truncated,
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


def _rate_headers(decision: Decision | None) -> dict[str, str]:
    if decision is None:
        return {}
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_s),
    }


def _rate_limited(state: AppState, decision: Decision) -> ApiError:
    config = state.config
    what = (
        f"more than {config.rate_limit_rps:g} requests per second"
        if decision.reason == "rate"
        else f"more than {config.max_concurrent_per_key} runs at once"
    )
    return ApiError(
        429,
        f"rate limited: this key sent {what}; retry after {decision.retry_after_s} s",
        headers={"Retry-After": str(decision.retry_after_s), **_rate_headers(decision)},
    )


def _database_down() -> ApiError:
    return ApiError(
        503, "the credits database is unavailable; retry shortly", headers={"Retry-After": "2"}
    )


class _Slot:
    """This request's place in its key's rate and concurrency limits (released once)."""

    def __init__(self, state: AppState, key_hash: bytes) -> None:
        self._state = state
        self._key_hash = key_hash
        self.decision: Decision | None = None

    def take_known(self) -> None:
        """Before the database: only keys that authenticated before have a bucket."""
        decision = self._state.limiter.acquire_known(self._key_hash)
        if decision is not None and not decision.allowed:
            raise _rate_limited(self._state, decision)
        self.decision = decision

    def take(self) -> None:
        """After the key authenticated, for its first request here."""
        if self.decision is None:
            decision = self._state.limiter.acquire(self._key_hash)
            if not decision.allowed:
                raise _rate_limited(self._state, decision)
            self.decision = decision

    def detach(self) -> _Slot:
        """Hand this place over (to a streamed run's task, which releases it)."""
        other = _Slot(self._state, self._key_hash)
        other.decision, self.decision = self.decision, None
        return other

    def release(self) -> None:
        if self.decision is not None:
            self._state.limiter.release(self._key_hash)
            self.decision = None

    def headers(self) -> dict[str, str]:
        return _rate_headers(self.decision)


def _check_address(state: AppState, address: str) -> None:
    """429, before any database query, for an address that keeps failing to authenticate."""
    wait_s = state.auth_failures.retry_after_s(address)
    if wait_s:
        raise ApiError(
            429,
            f"too many requests with invalid API keys from this address; retry after {wait_s} s",
            headers={"Retry-After": str(wait_s)},
        )


@bp.post("/run")
async def run() -> Response:
    state = app_state()
    config = state.config
    # Read the body first, whatever happens next: a response sent over an unread
    # body leaves the keep-alive connection stuck for the client's next request.
    raw = await request_body()
    address = request.remote_addr or "unknown"
    try:
        key = bearer_key(request.headers.get("Authorization"))
    except ApiError:
        _check_address(state, address)
        state.auth_failures.record_failure(address)
        raise
    parsed = parse_run_body(
        raw, config.max_code_bytes, config.max_stdin_bytes, BodyLimits.from_config(config)
    )
    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None and not (0 < len(idem_key) <= 255):
        raise ApiError(400, "Idempotency-Key must be 1 to 255 characters")
    idem = None
    if idem_key is not None:
        idem = Idempotency(
            idem_key,
            parsed.body_hash,
            config.idempotency_ttl_s,
            # The claim's lease: the latest this request can still be settling.
            lease_s=int(config.queue_timeout_s + config.run_timeout_s + SETTLE_BOUND_S + 5),
        )
    slot = _Slot(state, hash_key(key))
    slot.take_known()
    if slot.decision is None:
        # A key not seen to authenticate: its address must not be flooding bad keys.
        _check_address(state, address)
    try:
        return await _run(state, slot, parsed, idem, address)
    finally:
        slot.release()


async def _run(
    state: AppState, slot: _Slot, parsed: ParsedRun, idem: Idempotency | None, address: str
) -> Response:
    config = state.config
    ledger = state.store.ledger
    run_id: str = g.request_id
    timing = ServerTiming(getattr(g, "t0", None))
    timing.mark("parse")
    if not state.scheduler.accepting:
        # Draining for a restart: say so before touching the database.
        raise ApiError(503, "Cinch is restarting; retry in a moment", headers={"Retry-After": "2"})
    # A key that authenticated lately is refused by its account's place in the
    # queue (its runs already waiting put it further back), still before the
    # database; any other key by the best case, a new account's run, behind only
    # the runs of the same key that are being let in (a tenant of its own until
    # the database has said whose it is).
    tenant = state.key_tenants.get(slot._key_hash) or f"key:{slot._key_hash.hex()}"
    refused = state.scheduler.refuses(parsed.language, tenant)
    if refused is not None:
        # Overloaded for everyone: answer before the database round trips.
        queue_budget = state.scheduler.admit_budget_s
        raise ApiError(
            503,
            f"no sandbox available right now: the predicted wait is {refused:.1f} s, "
            f"over the {queue_budget:g} s this server queues for",
            headers={"Retry-After": str(max(1, math.ceil(refused - queue_budget)))},
        )
    first_hold = HOLD_STEP if parsed.max_credits is None else min(HOLD_STEP, parsed.max_credits)
    # Until the database has answered, this run counts in the predictions as if it
    # waited: the runs of a burst behind it are refused by their places, here and
    # at once. Not with an Idempotency-Key: that may be a replay, which takes no place.
    coming = (
        state.scheduler.admitting(parsed.language, tenant)
        if idem is None
        else contextlib.nullcontext()
    )
    with coming:
        start = await _begin(state, slot._key_hash, run_id, idem, first_hold)
    timing.mark("auth")
    if start.status is Begin.INVALID_KEY:
        state.key_tenants.forget(slot._key_hash)
        state.auth_failures.record_failure(address)
        raise ApiError(401, "invalid API key (revoked or unknown)")
    assert start.account_id is not None
    account_id = start.account_id
    state.key_tenants.remember(slot._key_hash, str(account_id))
    settled = False
    streaming = wants_stream(request.accept_mimetypes)
    handed_over = False  # a streamed run's task settles it and frees its claim
    try:
        slot.take()
        if start.status is Begin.CONFLICT:
            raise ApiError(
                409, "this Idempotency-Key was already used with a different request body"
            )
        if start.status is Begin.REPLAY:
            assert start.replay_body is not None
            replay_headers = {
                "X-Request-Id": run_id,
                "X-Credits-Remaining": str(max(0, start.available)),
                "Idempotent-Replayed": "true",
                **slot.headers(),
            }
            if streaming and (start.replay_status or 200) == 200:
                return single_event_response("result", start.replay_body, replay_headers)
            return json_response(start.replay_body, start.replay_status or 200, replay_headers)
        if start.status is Begin.LIMITED:
            limit = config.max_concurrent_per_key
            raise ApiError(
                429,
                f"rate limited: this key sent more than {limit} runs at once; retry after 1 s",
                headers={"Retry-After": "1", **slot.headers()},
            )
        if start.status is Begin.NO_CREDITS:
            raise ApiError(
                402,
                "out of credits: top up in your dashboard"
                if config.payments != "none"
                else f"out of credits: ask {config.credits_contact} for more",
                headers={"X-Credits-Remaining": "0"},
            )
        assert start.status is Begin.OK
        assert start.hold_id is not None
        run_request = RunRequest(
            language=parsed.language,
            code=parsed.code,
            stdin=parsed.stdin,
            timeout_s=config.run_timeout_s
            if parsed.timeout_ms is None
            else min(config.run_timeout_s, parsed.timeout_ms / 1000),
            output_limit_bytes=config.output_limit_bytes,
            request_id=run_id,
            tenant=str(account_id),
            files=parsed.files,
            args=parsed.args,
            env=parsed.env,
            out_max_files=config.max_out_files,
            out_max_bytes=config.max_out_files_bytes,
        )
        budget = HoldBudget(ledger, start.hold_id, start.hold_amount, parsed.max_credits)
        if streaming:
            response = await _start_stream(state, slot, start, run_request, budget, idem)
            settled = handed_over = True
            return response
        # A client that hangs up does not stop the run or its bill: the run is
        # bounded by its own limits, and finishing it is what makes it paid for.
        with trio.CancelScope(shield=True):
            try:
                result = await state.scheduler.run(run_request, budget)
                timing.mark("run")
            except (NoCapacity, ShuttingDown) as exc:
                retry = getattr(exc, "retry_after_s", 2.0)
                raise ApiError(
                    503,
                    f"no sandbox available right now: {exc}",
                    headers={"Retry-After": str(max(1, round(retry)))},
                ) from None
            body = result_body(result)
            settlement = await _finish(state, start, run_id, idem, result, body, parsed.max_credits)
            settled = True
            timing.mark("settle")
            if settlement.first:
                await _keep_output(state, run_id, result)
        metrics = state.metrics
        metrics.runs.labels(result.language, result.termination.value).inc()
        metrics.run_duration.labels(result.language).observe(result.duration_ms / 1000)
        metrics.queue_wait.labels(result.language).observe(result.queue_ms / 1000)
        if settlement.first:
            metrics.credits_charged.inc(settlement.charged)
        body["creditsCharged"] = settlement.charged
        return json_response(
            body,
            200,
            {
                "X-Request-Id": run_id,
                "X-Credits-Remaining": str(max(0, settlement.available)),
                "Server-Timing": timing.header(),
                **slot.headers(),
            },
        )
    finally:
        if not settled and start.status is Begin.OK:
            await _abort(state, run_id)
        if idem is not None and not handed_over:
            state.notify_idempotency(account_id, idem.key)


def _no_sandbox(exc: NoCapacity | ShuttingDown) -> ApiError:
    retry = getattr(exc, "retry_after_s", 2.0)
    return ApiError(
        503,
        f"no sandbox available right now: {exc}",
        headers={"Retry-After": str(max(1, round(retry)))},
    )


async def _start_stream(
    state: AppState,
    slot: _Slot,
    start: RunStart,
    run_request: RunRequest,
    budget: HoldBudget,
    idem: Idempotency | None,
) -> Response:
    """Admit the run as one-shot would (its errors are plain JSON), then stream it.

    The run goes on in a task of the app's nursery, which from its start owns
    the key's slot, the settlement and the idempotency claim; the response only
    reads its events.  A client that hangs up stops the run (``cancelled``):
    charged for what it used, its sandbox destroyed as always.
    """
    run_id = run_request.request_id
    send, receive = open_event_channel()
    stop = trio.Event()
    scope = trio.CancelScope()
    owned: list[_Slot] = []

    def on_output(stream: str, text: str) -> None:
        send_event_nowait(send, stream, {"text": text})

    def take_over() -> None:
        # Started: from now on, only `stop` ends the run (as one-shot, it is
        # shielded from cancellation: finishing it is what makes it paid for).
        scope.shield = True
        owned.append(slot.detach())

    async def drive(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        status = StartedOnce(task_status, take_over)
        result: RunResult | None = None
        with scope:
            try:
                result = await state.scheduler.run(
                    run_request, budget, on_output=on_output, stop=stop, task_status=status
                )
            except Exception:
                if not status.done:
                    raise
                log.exception("request %s: the streamed run failed", run_id)
        with trio.CancelScope(shield=True):
            try:
                await _settle_stream(state, start, idem, run_id, result, send, budget.max_credits)
            finally:
                owned[0].release()
                if idem is not None and start.account_id is not None:
                    state.notify_idempotency(start.account_id, idem.key)
                send.close()

    headers = {
        "X-Request-Id": run_id,
        "X-Credits-Remaining": str(max(0, start.available)),
        **slot.headers(),
    }
    try:
        await cast("QuartTrio", current_app).nursery.start(drive)
    except (NoCapacity, ShuttingDown) as exc:
        raise _no_sandbox(exc) from None
    return stream_response(event_body(receive, stop.set), headers)


async def _settle_stream(
    state: AppState,
    start: RunStart,
    idem: Idempotency | None,
    run_id: str,
    result: RunResult | None,
    send: trio.MemorySendChannel[tuple[str, dict[str, Any]]],
    max_credits: int | None = None,
) -> None:
    """Charge a streamed run once and send its ``result`` (or an ``error``)."""
    if result is None:
        await _abort(state, run_id)
        message = f"internal error; quote request id {run_id} when reporting it"
        send_event_nowait(send, "error", {"error": message})
        return
    body = result_body(result)
    try:
        settlement = await _finish(state, start, run_id, idem, result, body, max_credits)
    except ApiError as exc:
        await _abort(state, run_id)
        send_event_nowait(send, "error", {"error": exc.message})
        return
    metrics = state.metrics
    metrics.runs.labels(result.language, result.termination.value).inc()
    metrics.run_duration.labels(result.language).observe(result.duration_ms / 1000)
    metrics.queue_wait.labels(result.language).observe(result.queue_ms / 1000)
    if settlement.first:
        metrics.credits_charged.inc(settlement.charged)
    body["creditsCharged"] = settlement.charged
    send_event_nowait(send, "result", body)


async def _begin(
    state: AppState,
    key_hash: bytes,
    run_id: str,
    idem: Idempotency | None,
    first_hold: int = HOLD_STEP,
) -> RunStart:
    """``begin_run``, waiting while another request with this Idempotency-Key runs."""
    deadline = trio.current_time() + (idem.lease_s + 2 if idem else 0)
    while True:
        try:
            # Per-key concurrency is counted in the database too: it holds across replicas.
            start = await state.store.ledger.begin_run(
                key_hash, run_id, first_hold, idem, max_running=state.config.max_concurrent_per_key
            )
        except StoreError as exc:
            log.error("request %s: %s", run_id, exc)
            # The claim may have committed: give it back so a retry need not wait.
            await _abort(state, run_id)
            raise _database_down() from None
        if start.status is not Begin.RUNNING:
            return start
        # The first attempt is still running (here or on another instance): wait
        # for its result, or for its claim to be free (owner dead, lease past).
        assert idem is not None
        assert start.account_id is not None
        if trio.current_time() > deadline:
            raise ApiError(409, "a request with this Idempotency-Key is still running")
        event = state.idempotency_waiters.setdefault((start.account_id, idem.key), trio.Event())
        with trio.move_on_after(0.25):
            await event.wait()


async def _finish(
    state: AppState,
    start: RunStart,
    run_id: str,
    idem: Idempotency | None,
    result: RunResult,
    body: dict[str, Any],
    max_credits: int | None = None,
) -> Settlement:
    """Charge the run once; retried within ``SETTLE_BOUND_S`` (the call is idempotent).

    Without a charge there is no result: never a free run.
    """
    assert start.hold_id is not None
    assert start.account_id is not None
    outcome = RunOutcome(
        language=result.language,
        termination=result.termination.value,
        exit_code=result.exit_code,
        # "maxCredits" caps the charge (1 credit per ms): a run stopped at its
        # limit may have lived a few ms past it before the kill landed.
        duration_ms=result.duration_ms
        if max_credits is None
        else min(result.duration_ms, max_credits),
        queue_ms=result.queue_ms,
        billable=result.billable,
        sandbox_id=result.sandbox_id,
    )
    deadline = trio.current_time() + SETTLE_BOUND_S
    delay = 0.1
    attempt = 0
    while True:
        attempt += 1
        try:
            return await state.store.ledger.finish_run(
                run_id=run_id,
                hold_id=start.hold_id,
                account_id=start.account_id,
                key_id=start.key_id,
                outcome=outcome,
                response=body,
                idem_key=idem.key if idem else None,
            )
        except StoreError as exc:
            log.warning("request %s: settle failed (attempt %d): %s", run_id, attempt, exc)
            if trio.current_time() + delay > deadline:
                break
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise ApiError(
        503,
        "the credits database is unavailable, so this run's result could not be recorded; "
        "retry shortly (with the same Idempotency-Key, a result that was recorded is "
        "returned and not charged again)",
        headers={"Retry-After": "2"},
    )


def _head(text: str, limit: int) -> tuple[str, bool]:
    """The first ``limit`` UTF-8 bytes of ``text`` (whole characters), and whether it was cut."""
    raw = text.encode("utf-8", "replace")
    # Postgres text cannot hold NUL: show it as the NUL symbol.
    head = raw[:limit].decode("utf-8", "ignore").replace("\x00", "\u2400")
    return head, len(raw) > limit


async def _keep_output(state: AppState, run_id: str, result: RunResult) -> None:
    """Keep the head of a run's output for the dashboard's run page (never raises).

    Not part of the result's contract: a failure here costs only that page.
    """
    limit = state.config.kept_output_bytes
    if not limit:
        return
    stdout, cut_out = _head(result.stdout, limit)
    stderr, cut_err = _head(result.stderr, limit)
    with trio.move_on_after(2):
        try:
            await state.store.keep_run_output(
                run_id, stdout, stderr, cut_out or cut_err or result.truncated
            )
        except Exception as exc:  # any failure (the database's own errors too) costs only the page
            log.warning("request %s: output not kept: %s", run_id, exc)


async def _abort(state: AppState, run_id: str) -> None:
    """Give back the hold and claim of a run that will not be settled (never raises)."""
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        try:
            await state.store.ledger.abort_run(run_id)
        except StoreError:
            pass  # the hold expires by itself; the claim's lease runs out
