"""A client of one agent (``cinch agent``): its run, pool, budget and stop calls.

Errors say what happened to the run, because that decides what the router may do::

    AgentError
    ├── AgentUnreachable   no connection: nothing was sent, nothing ran (try another)
    ├── AgentEmpty         409: no warm sandbox there right now (try another)
    ├── AgentRefused       503 (no capacity, draining) or 4xx: nothing ran there
    └── AgentLost          the request went out, then the agent failed: the run may
                           have run, no result will come (sandboxes have no network,
                           so running it again elsewhere has no outside effect)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from scheduler import RunRequest, RunResult

from ._h11 import Client, HttpError
from ._wire import (
    LEVELS_HEADER,
    POOL_PATH,
    RUNS_PATH,
    Levels,
    WireError,
    encode_line,
    request_to_json,
    result_from_json,
)

CONNECT_TIMEOUT_S = 0.5
JSON_HEADERS = [("Content-Type", "application/json")]


class AgentError(Exception):
    """Base class of an agent call's failures."""

    def __init__(self, message: str, levels: Levels | None = None) -> None:
        super().__init__(message)
        self.levels = levels


class AgentUnreachable(AgentError):
    """The agent could not be connected to (down, restarting, cut off). Nothing ran."""


class AgentEmpty(AgentError):
    """The agent has no warm sandbox for the language now (409). Nothing ran."""


class AgentRefused(AgentError):
    """The agent refused the run: no capacity or draining (503), or a bad call (4xx).

    ``retry_after_s`` is the agent's hint. Nothing ran.
    """

    def __init__(
        self,
        message: str,
        levels: Levels | None = None,
        *,
        retry_after_s: float = 1.0,
        draining: bool = False,
    ) -> None:
        super().__init__(message, levels)
        self.retry_after_s = retry_after_s
        self.draining = draining  # shutting down: another agent may take the run


class AgentLost(AgentError):
    """The agent failed after the request went out; no result will come.

    ``started`` says whether the agent had admitted the run (its answer began).
    """

    def __init__(self, message: str, *, started: bool) -> None:
        super().__init__(message)
        self.started = started


class AgentClient:
    """Keep-alive HTTP/1.1 connections to one agent, authenticated with the shared token.

    The lean client of :mod:`api._h11` (TCP_NODELAY, idle connections checked
    before reuse): the hop is in every run's path, and httpx costs about 1 ms of
    it here.
    """

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url if "//" in self.base_url else "http://" + self.base_url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"an agent address needs a host and a port: {base_url!r}")
        self._http = Client(
            parts.hostname,
            parts.port,
            headers=[("Authorization", f"Bearer {token}")],
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def pool(self, timeout_s: float) -> Levels:
        """``GET /v1/pool``. Raises AgentUnreachable, or AgentLost on a slow or bad answer."""
        try:
            status, _, data = await self._http.request(
                "GET", POOL_PATH, timeout_s=min(timeout_s, 5.0)
            )
        except HttpError as exc:
            raise _failure(self.base_url, exc, started=False) from exc
        if status != 200:
            raise AgentLost(f"{self.base_url}: pool answered {status}", started=False)
        try:
            return Levels.from_json(json.loads(data))
        except (ValueError, WireError) as exc:
            raise AgentLost(f"{self.base_url}: {exc}", started=False) from exc

    async def push_budget(self, run_id: str, paid_ms: int) -> None:
        """Tell the agent the run is paid for up to ``paid_ms``; failures are the run's
        own business (it stops at what it was paid for)."""
        with suppress(HttpError):
            await self._http.request(
                "POST",
                f"{RUNS_PATH}/{run_id}/budget",
                json.dumps({"paidMs": paid_ms}).encode(),
                headers=JSON_HEADERS,
                timeout_s=2,
            )

    async def stop(self, run_id: str) -> None:
        with suppress(HttpError):
            await self._http.request("POST", f"{RUNS_PATH}/{run_id}/stop", timeout_s=2)

    async def run(
        self,
        request: RunRequest,
        *,
        paid_ms: int | None,
        warm_only: bool,
        read_timeout_s: float,
        on_output: Callable[[str, str], None] | None = None,
        on_started: Callable[[Levels | None], None] | None = None,
        timings: dict[str, float] | None = None,
    ) -> RunResult:
        """``POST /v1/runs``: the result of ``request`` run on this agent.

        ``on_started`` is called once the agent admitted the run (the answer's
        headers arrived), with the levels they carry.  ``timings["agent_ms"]``
        gets the agent's own share of the call.
        """
        body = encode_line(
            {
                "request": request_to_json(request),
                "paidMs": paid_ms,
                "warmOnly": warm_only,
                "stream": on_output is not None,
            }
        )
        started = False
        try:
            async with self._http.stream(
                "POST", RUNS_PATH, body, headers=JSON_HEADERS, timeout_s=read_timeout_s
            ) as response:
                levels = Levels.from_header(response.headers.get(LEVELS_HEADER.lower()))
                if response.status != 200:
                    raise _refusal(self.base_url, response.status, await response.read(), levels)
                started = True
                if on_started is not None:
                    on_started(levels)
                result: RunResult | None = None
                error = "the answer ended without a result"
                # Read to the end (the result is the last line): the connection then
                # goes back to the pool for the next run.
                async for line in response.lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    kind = event.get("event")
                    if kind == "result":
                        result = result_from_json(event["result"])
                        if timings is not None:
                            timings["agent_ms"] = float(event.get("agentMs", 0.0))
                    elif kind == "error":
                        error = str(event.get("error"))
                    elif on_output is not None and kind in ("stdout", "stderr"):
                        on_output(kind, str(event.get("text", "")))
                if result is None:
                    raise AgentLost(f"{self.base_url}: {error}", started=True)
                return result
        except HttpError as exc:
            raise _failure(self.base_url, exc, started=started) from exc
        except (ValueError, KeyError, WireError) as exc:
            raise AgentLost(f"{self.base_url}: {exc!r}", started=started) from exc


def _failure(base_url: str, exc: HttpError, *, started: bool) -> AgentError:
    if not exc.connected:
        return AgentUnreachable(f"{base_url}: {exc}")
    return AgentLost(f"{base_url}: {exc}", started=started)


def _refusal(base_url: str, status: int, data: bytes, levels: Levels | None) -> AgentError:
    try:
        body: Any = json.loads(data)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = f"{base_url}: {status} {body.get('error', '')}".strip()
    if status == 409:
        return AgentEmpty(message, levels)
    retry = float(body.get("retryAfterS", 1.0) or 1.0)
    return AgentRefused(
        message, levels, retry_after_s=retry, draining=bool(body.get("draining", False))
    )
