"""The agent's HTTP surface (``cinch agent``): one host's scheduler and pools, for API replicas.

The agent holds its host's engine socket and no database credentials; only
holders of the shared token (the API tier) may call it::

    POST /v1/runs                  {"request": RunRequest, "paidMs": n|null,
                                    "warmOnly": bool, "stream": bool}
        200 NDJSON: {"event": "stdout"|"stderr", "text": ...}* then
                    {"event": "result", "result": RunResult}   (or {"event": "error"})
        409 no warm sandbox here and ``warmOnly`` (answered at once: try the next agent)
        503 no capacity (``retryAfterS``) or draining
    POST /v1/runs/<id>/budget      {"paidMs": n}   the API held more credits: run on to n ms
    POST /v1/runs/<id>/stop        the caller hung up: stop the run (charged up to then)
    GET  /v1/pool                  the pool levels (the X-Cinch-Pool header carries them too)
    GET  /healthz, /readyz         for the engine's health checks (no token)

The 200's headers leave once the run has its sandbox, so the caller knows the
admission succeeded before the run ends.  A caller that goes away mid-run
stops the run: nobody would pay for it.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from scheduler import NoCapacity, RunResult, Scheduler, ShuttingDown, UnknownLanguage

from ._h11 import Last, Request, Response, ServerLimits, json_response, serve
from ._stream import StartedOnce
from ._wire import (
    LEVELS_HEADER,
    NDJSON,
    POOL_PATH,
    RUNS_PATH,
    LanguageLevels,
    Levels,
    WireError,
    encode_line,
    request_from_json,
    result_to_json,
)

if TYPE_CHECKING:
    from scheduler import RunRequest

log = logging.getLogger("cinch.agent")

# A run at the end of what it was paid for waits this long for the API's
# next ``budget`` push before it is stopped with ``credit_limit``.
BUDGET_GRACE_S = 0.3
# The largest request body: code and stdin JSON-escaped, input files as base64
# (CINCH_MAX_FILES_BYTES is at most 48 MiB), and room for the rest.
MAX_BODY_BYTES = 80 * 1024 * 1024


class PushedBudget:
    """The scheduler's :class:`~scheduler.Budget` for a run paid for by a remote API.

    The API holds credits ahead of use and pushes how far the run is paid
    (``paid_ms``); ``None`` means the caller set no budget.  At the end of what
    is paid, the run waits ``BUDGET_GRACE_S`` for a push before it is stopped.
    """

    def __init__(self, paid_ms: int | None) -> None:
        self.paid_ms = paid_ms
        self._moved = trio.Event()

    def push(self, paid_ms: int) -> None:
        if self.paid_ms is not None and paid_ms > self.paid_ms:
            self.paid_ms = paid_ms
            self._moved.set()
            self._moved = trio.Event()

    async def extend(self, elapsed_ms: int) -> int:
        if self.paid_ms is None:
            return 2**62
        if self.paid_ms <= elapsed_ms:
            with trio.move_on_after(BUDGET_GRACE_S):
                await self._moved.wait()
        return self.paid_ms


@dataclass
class _LiveRun:
    stop: trio.Event = field(default_factory=trio.Event)
    budget: PushedBudget = field(default_factory=lambda: PushedBudget(None))


@dataclass
class AgentState:
    """What the agent's handlers share."""

    scheduler: Scheduler
    token: str
    epoch: str = field(default_factory=lambda: secrets.token_hex(6))
    runs: dict[str, _LiveRun] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None

    def levels(self) -> Levels:
        sched = self.scheduler.statistics()
        languages = {}
        for name in self.scheduler.languages:
            s = self.scheduler.pool(name).statistics()
            languages[name] = LanguageLevels(
                warm=s.ready,
                starting=s.starting,
                capacity=s.max_size,
                minimum=s.min_size,
                in_flight=self.in_flight.get(name, 0),
                queued=sched.queued_by_language.get(name, 0),
                predicted_wait_s=round(sched.predicted_wait_s.get(name, 0.0), 3),
            )
        return Levels(
            self.epoch,
            not self.scheduler.accepting,
            languages,
            runs_total=sum(sched.runs_total.values()),
            admit_budget_s=self.scheduler.admit_budget_s,
        )

    def warm_now(self, language: str) -> bool:
        """Whether a run of ``language`` would get a sandbox without waiting."""
        queued = self.scheduler.statistics().queued_by_language.get(language, 0)
        return not queued and self.scheduler.pool(language).statistics().ready > 0


def _json(body: Any, status: int, state: AgentState, **headers: str) -> Response:
    return json_response(body, status, [(LEVELS_HEADER, state.levels().header()), *headers.items()])


class AgentApp:
    """The agent's HTTP handler over ``scheduler`` (served by :func:`serve_agent`).

    Callers must send ``Authorization: Bearer <token>``, except to ``/healthz`` and
    ``/readyz``.  Runs are driven in ``nursery`` (set by :func:`serve_agent`), so an
    answer's end does not end its run's bookkeeping.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        token: str,
        *,
        readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        if not token:
            raise ValueError("the agent needs a token (CINCH_AGENT_TOKEN)")
        self.state = AgentState(scheduler, token, readiness=readiness)
        self._expected = f"Bearer {token}".encode()
        self.nursery: trio.Nursery | None = None

    async def __call__(self, request: Request) -> Response:
        state = self.state
        path, method = request.path, request.method
        if path in ("/healthz", "/readyz"):
            if method != "GET":
                return _json({"error": "method not allowed"}, 405, state)
            return await (self._healthz() if path == "/healthz" else self._readyz())
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        # Constant time: the token must not leak one byte at a time.
        if not hmac.compare_digest(given, self._expected):
            return json_response({"error": "invalid agent token"}, 401)
        if path == POOL_PATH:
            if method != "GET":
                return _json({"error": "method not allowed"}, 405, state)
            levels = state.levels()  # once: the body and the header are the same
            return json_response(levels.to_json(), 200, [(LEVELS_HEADER, levels.header())])
        if path == RUNS_PATH:
            if method != "POST":
                return _json({"error": "method not allowed"}, 405, state)
            return await self._run(request)
        prefix = RUNS_PATH + "/"
        if path.startswith(prefix):
            run_id, _, action = path[len(prefix) :].partition("/")
            if action in ("budget", "stop") and run_id and "/" not in run_id:
                if method != "POST":
                    return _json({"error": "method not allowed"}, 405, state)
                live = state.runs.get(run_id)
                if live is None:
                    return Response(404, b'{"error":"no such run here"}')
                if action == "stop":
                    live.stop.set()
                    return Response(204)
                try:
                    live.budget.push(int(json.loads(request.body)["paidMs"]))
                except (ValueError, KeyError, TypeError):
                    return _json({"error": 'the body must be {"paidMs": n}'}, 400, state)
                return Response(204)
        return _json({"error": "not found"}, 404, state)

    async def _healthz(self) -> Response:
        return Response(200, b'{"status":"ok"}')

    async def _readyz(self) -> Response:
        state = self.state
        checks = await state.readiness() if state.readiness is not None else {}
        ok = state.scheduler.accepting and all(c.get("ok") for c in checks.values())
        body = {"status": "ok" if ok else "unavailable", "checks": checks}
        return _json(body, 200 if ok else 503, state)

    async def _run(self, request: Request) -> Response:
        t_arrival = trio.current_time()
        state, scheduler = self.state, self.state.scheduler
        try:
            body = json.loads(request.body)
            run_request = request_from_json(body["request"])
            paid = body.get("paidMs")
            paid_ms = None if paid is None else int(paid)
            warm_only = bool(body.get("warmOnly", False))
            streamed = bool(body.get("stream", False))
        except (ValueError, KeyError, TypeError, AttributeError, WireError) as exc:
            return _json({"error": f"bad run request: {exc}"}, 400, state)
        run_id = run_request.request_id
        if not run_id or run_id in state.runs:
            return _json({"error": "the run id is missing or already running here"}, 400, state)
        if not scheduler.accepting:
            return _json({"error": "draining", "retryAfterS": 1.0, "draining": True}, 503, state)
        if run_request.language not in scheduler.languages:
            return _json({"error": f"unsupported language {run_request.language!r}"}, 400, state)
        if warm_only and not state.warm_now(run_request.language):
            return _json({"error": "no warm sandbox"}, 409, state)
        assert self.nursery is not None, "serve_agent sets the nursery"
        return await _start(
            state, self.nursery, run_request, PushedBudget(paid_ms), streamed, t_arrival
        )


def create_agent_app(
    scheduler: Scheduler,
    token: str,
    *,
    readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> AgentApp:
    """The agent's handler over ``scheduler``; serve it with :func:`serve_agent`."""
    return AgentApp(scheduler, token, readiness=readiness)


async def serve_agent(
    app: AgentApp,
    host: str,
    port: int,
    *,
    header_timeout_s: float = 5.0,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` (``task_status`` gets the bound URLs)."""
    limits = ServerLimits(header_timeout_s=header_timeout_s, max_body_bytes=MAX_BODY_BYTES)
    async with trio.open_nursery() as nursery:
        app.nursery = nursery
        bound = await nursery.start(
            lambda task_status: serve(app, host, port, limits, task_status=task_status)
        )
        task_status.started(bound)
        if shutdown_trigger is not None:
            await shutdown_trigger()
            nursery.cancel_scope.cancel()


async def _start(
    state: AgentState,
    nursery: trio.Nursery,
    run_request: RunRequest,
    budget: PushedBudget,
    streamed: bool,
    t_arrival: float,
) -> Response:
    """Admit the run (its errors are plain JSON answers), then stream its events."""
    run_id, language = run_request.request_id, run_request.language
    live = _LiveRun(budget=budget)
    state.runs[run_id] = live
    send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)

    def on_output(stream: str, text: str) -> None:
        try:
            send.send_nowait({"event": stream, "text": text})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def counted() -> None:
        state.in_flight[language] = state.in_flight.get(language, 0) + 1

    async def drive(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        status = StartedOnce(task_status, counted)
        result: RunResult | None = None
        try:
            with trio.CancelScope(shield=True):
                try:
                    result = await state.scheduler.run(
                        run_request,
                        budget,
                        on_output=on_output if streamed else None,
                        stop=live.stop,
                        task_status=status,
                    )
                except Exception:
                    if not status.done:
                        raise
                    log.exception("run %s failed", run_id)
        finally:
            state.runs.pop(run_id, None)
            if status.done:
                state.in_flight[language] -= 1
            # agentMs: the agent's own share of the call, so the caller can tell the hop.
            agent_ms = round((trio.current_time() - t_arrival) * 1000, 3)
            line = (
                {"event": "result", "result": result_to_json(result), "agentMs": agent_ms}
                if result is not None
                else {"event": "error", "error": "the run failed on the agent"}
            )
            with send:
                try:
                    send.send_nowait(line)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    try:
        await nursery.start(drive)
    except NoCapacity as exc:
        state.runs.pop(run_id, None)
        return _json({"error": str(exc), "retryAfterS": exc.retry_after_s}, 503, state)
    except ShuttingDown as exc:
        state.runs.pop(run_id, None)
        return _json({"error": str(exc), "retryAfterS": 1.0, "draining": True}, 503, state)
    except UnknownLanguage as exc:
        state.runs.pop(run_id, None)
        return _json({"error": str(exc)}, 400, state)

    async def body() -> AsyncIterator[bytes]:
        with receive:
            async for line in receive:
                if line["event"] in ("result", "error"):
                    yield Last(encode_line(line))
                    return
                yield encode_line(line)

    # The API went away mid-run: nobody would get (or pay for) the result.
    return Response(
        200,
        body(),
        [(LEVELS_HEADER, state.levels().header())],
        content_type=NDJSON,
        on_disconnect=live.stop.set,
    )
