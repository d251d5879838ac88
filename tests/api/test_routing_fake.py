"""Router and agents over real HTTP on loopback, with the fake sandbox backend.

Each agent is the real agent app (``api._agent``) over a real Scheduler whose
pools use :class:`pool.testing.FakeBackend`, served by the agent's own
HTTP/1.1 server (``api._h11``) on a port of its own; the router is the one ``cinch api`` runs.  Fast: no engine, no
database.  The same protocol against real gVisor agents: test_many_hosts.py.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
import trio

from api._agent import PushedBudget, create_agent_app, serve_agent
from api._remote import AgentClient
from api._routing import Router, RouterConfig
from api._wire import LEVELS_HEADER, Levels
from pool import LiveSandboxes, StartSlots, WarmPool
from pool.testing import FakeBackend
from scheduler import NoCapacity, RunRequest, Scheduler, SchedulerConfig, Termination

TOKEN = "t0ken-" + "x" * 20


@dataclass
class FakeAgent:
    url: str
    scheduler: Scheduler
    backend: FakeBackend
    scope: trio.CancelScope
    sandbox_ids: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """Like kill -9: the listener and every connection go at once."""
        self.scope.cancel()


@asynccontextmanager
async def fake_agents(
    nursery: trio.Nursery,
    n: int,
    *,
    pool_size: int = 2,
    queue_timeout_s: float = 2.0,
    start_delay_s: float = 0.01,
) -> AsyncIterator[list[FakeAgent]]:
    agents = []
    for i in range(n):
        backend = FakeBackend(start_delay_s=start_delay_s)
        backend._n = 100_000 * i  # sandbox ids unique across agents
        live = LiveSandboxes(16)
        limiter = StartSlots(2)
        pools = {
            name: WarmPool(
                backend,
                language=name,
                image="fake",
                size=pool_size,
                max_size=pool_size,
                live=live,
                start_limiter=limiter,
                pause_idle=False,
            )
            for name in ("python", "javascript")
        }
        scheduler = Scheduler(pools, SchedulerConfig(queue_timeout_s=queue_timeout_s))
        scope = trio.CancelScope()
        app = create_agent_app(scheduler, TOKEN)

        async def run_agent(
            task_status: Any,
            scheduler: Any = scheduler,
            pools: Any = pools,
            scope: trio.CancelScope = scope,
            app: Any = app,
        ) -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(scheduler.serve)
                    for p in pools.values():
                        await inner.start(p.run)
                    bound = await inner.start(serve_agent, app, "127.0.0.1", 0)
                    task_status.started(str(bound[0]))

        url = await nursery.start(run_agent)
        for p in pools.values():
            await p.wait_ready()
        agents.append(FakeAgent(url, scheduler, backend, scope))
    try:
        yield agents
    finally:
        for a in agents:
            a.kill()


@asynccontextmanager
async def router_over(
    nursery: trio.Nursery, agents: list[FakeAgent], **kw: Any
) -> AsyncIterator[Router]:
    router = Router(TOKEN, agents=[a.url for a in agents], config=RouterConfig(**kw))
    scope = trio.CancelScope()

    async def serve(task_status: Any) -> None:
        with scope:
            await router.serve(task_status=task_status)

    await nursery.start(serve)
    try:
        yield router
    finally:
        scope.cancel()


async def until(condition: Any, timeout_s: float = 5.0) -> None:
    """Wait for ``condition()``: state that lives behind real sockets, not a trio.Event."""
    with trio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def req(code: str = "out:hi", language: str = "python", rid: str = "", **kw: Any) -> RunRequest:
    return RunRequest(language=language, code=code, request_id=rid or _next_id(), **kw)


_ids = iter(range(1_000_000))


def _next_id() -> str:
    return f"run-{next(_ids)}"


async def test_runs_spread_over_agents_and_report_levels() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 3) as agents, router_over(nursery, agents) as router:
            assert router.statistics().agents_up == 3
            seen: Counter[str] = Counter()
            for _ in range(30):
                result = await router.run(req())
                assert result.stdout == "hi"
                assert result.termination is Termination.EXITED
                seen[result.sandbox_id] += 1
            # Every sandbox served exactly one run.
            assert set(seen.values()) == {1}
            per_agent = [a.scheduler.statistics().runs_total for a in agents]
            assert all(sum(r.values()) > 0 for r in per_agent), per_agent
            hop = router.statistics().hop_p50_ms
            assert hop is not None
            assert 0 <= hop < 50
            nursery.cancel_scope.cancel()


async def test_wrong_token_is_refused_and_header_carries_levels() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 1) as agents:
            async with httpx.AsyncClient(base_url=agents[0].url) as http:
                r = await http.get("/v1/pool", headers={"Authorization": "Bearer nope"})
                assert r.status_code == 401
                r = await http.get("/v1/pool", headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.status_code == 200
                levels = Levels.from_json(r.json())
                assert levels.languages["python"].warm == 2
                assert Levels.from_header(r.headers[LEVELS_HEADER]) == levels
            nursery.cancel_scope.cancel()


async def test_http_errors_of_the_agent_are_json_not_a_crash() -> None:
    """An unknown path, a wrong method, a bad body, a bad token: JSON errors, and the
    keep-alive connection stays good."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 1) as agents:
            async with httpx.AsyncClient(base_url=agents[0].url, headers=auth) as http:
                r = await http.get("/v1/nothing-here")
                assert r.status_code == 404
                assert "error" in r.json()
                r = await http.delete("/v1/pool")
                assert r.status_code == 405
                assert "error" in r.json()
                r = await http.post("/v1/runs", content=b"{not json")
                assert r.status_code == 400
                assert "bad run request" in r.json()["error"]
                r = await http.post("/v1/runs", content=b"[1, 2]")
                assert r.status_code == 400
                r = await http.post("/v1/runs/nope/budget", content=b"{}")
                assert r.status_code == 404
                r = await http.get("/v1/pool", headers={"Authorization": "Bearer wrong"})
                assert r.status_code == 401
                assert "error" in r.json()
                # The connection is still good for the next call.
                assert (await http.get("/v1/pool")).status_code == 200
            nursery.cancel_scope.cancel()


async def test_client_sets_tcp_nodelay() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 1) as agents:
            client = AgentClient(agents[0].url, TOKEN)
            try:
                await client.pool(5.0)
                # The call's connection went back to the pool, with TCP_NODELAY.
                ((stream, _),) = client._http._idle
                assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            finally:
                await client.aclose()
            nursery.cancel_scope.cancel()


async def test_empty_pool_answers_409_and_the_next_agent_serves() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 2, pool_size=1) as agents:
            async with router_over(nursery, agents, poll_interval_s=60) as router:
                agents[0].backend.start_delay_s = 30  # no refill while the test runs
                client = AgentClient(agents[0].url, TOKEN)
                async with trio.open_nursery() as runs:
                    runs.start_soon(
                        lambda: client.run(
                            req("sleep:2"), paid_ms=None, warm_only=True, read_timeout_s=5
                        )
                    )
                    await until(lambda: agents[0].scheduler.statistics().in_flight)
                    # The router's view of agent 0 is stale (no poll for a minute) and
                    # claims many warm sandboxes: it must learn from the 409.
                    view0 = next(v for v in router.agents if v.url == agents[0].url)
                    assert view0.levels is not None
                    lv = view0.levels.languages["python"]
                    view0.levels.languages["python"] = replace(lv, warm=5)
                    result = await router.run(req())
                    assert result.stdout == "hi"
                    assert router.statistics().empty_total == 1
                    assert view0.spare("python") == 0  # the 409's header said so
                    runs.cancel_scope.cancel()
                await client.aclose()
            nursery.cancel_scope.cancel()


async def test_no_warm_anywhere_queues_on_an_agent() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 2, pool_size=1) as agents:
            async with router_over(nursery, agents) as router:
                async with trio.open_nursery() as runs:
                    results = []

                    async def one() -> None:
                        results.append(await router.run(req("sleep:0.2;out:ok")))

                    for _ in range(6):
                        runs.start_soon(one)
                assert [r.stdout for r in results] == ["ok"] * 6
                assert router.statistics().queued_total >= 1
            nursery.cancel_scope.cancel()


async def test_a_burst_is_refused_by_the_router_once_every_agent_predicts_too_long() -> None:
    # One sandbox per agent, 0.5 s starts, 1.5 s of admission budget: a burst of
    # 2 s runs fills both queues, and the agents' refusals bring back levels that
    # let the router refuse the rest itself (the API: before its database work).
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 2, pool_size=1, start_delay_s=0.5) as agents:
            async with router_over(nursery, agents) as router:
                assert router.refuses("python") is None
                assert router.admit_budget_s == agents[0].scheduler.admit_budget_s > 0
                refused = 0

                async def one() -> None:
                    nonlocal refused
                    try:
                        await router.run(req("sleep:2;out:ok", timeout_s=5))
                    except NoCapacity:
                        refused += 1

                async with trio.open_nursery() as runs:
                    for _ in range(16):
                        runs.start_soon(one)
                    await until(lambda: router.refuses("python") is not None, 3)
                    wait = router.refuses("python")
                    assert wait is not None
                    assert wait > router.admit_budget_s
                    assert router.refuses("javascript") is None  # its pools are warm
                assert refused >= 1
                # Once the queues have drained, a poll brings levels that admit again.
                await until(lambda: router.refuses("python") is None, 5)
            nursery.cancel_scope.cancel()


async def test_agents_that_do_not_say_their_budget_are_never_refused_for() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 1) as agents:
            async with router_over(nursery, agents) as router:
                view = router.agents[0]
                assert view.levels is not None
                lv = view.levels.languages["python"]
                view.levels = replace(
                    view.levels,
                    admit_budget_s=0.0,
                    languages={"python": replace(lv, warm=0, predicted_wait_s=99.0)},
                )
                assert router.refuses("python") is None
                view.levels = replace(view.levels, admit_budget_s=1.0)
                assert router.refuses("python") == 99.0
            nursery.cancel_scope.cancel()


async def test_agent_killed_mid_run_is_retried_elsewhere_and_routed_around() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 2) as agents:
            async with router_over(nursery, agents) as router:
                # Make agent 0 the only choice, then kill it mid-run.
                for v in router.agents:
                    if v.url == agents[1].url:
                        v.sent["python"] = 99
                result_box: list[Any] = []

                async def one() -> None:
                    result_box.append(await router.run(req("sleep:0.5;out:done", timeout_s=5)))

                async with trio.open_nursery() as runs:
                    runs.start_soon(one)
                    await until(lambda: agents[0].scheduler.statistics().in_flight)
                    t_kill = trio.current_time()
                    agents[0].kill()
                assert result_box[0].stdout == "done"
                s = router.statistics()
                assert (s.lost_total, s.retried_total) == (1, 1)
                down = next(v for v in router.agents if v.url == agents[0].url)
                assert not down.up
                assert down.down_since is not None
                assert down.down_since - t_kill < 1.0
                # New runs go to the survivor only.
                for _ in range(5):
                    assert (await router.run(req())).stdout == "hi"
            nursery.cancel_scope.cancel()


async def test_no_agent_up_is_no_capacity() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 1) as agents:
            async with router_over(nursery, agents) as router:
                agents[0].kill()
                await until(lambda: not router.statistics().agents_up, 3)
                with pytest.raises(NoCapacity):
                    await router.run(req())
            nursery.cancel_scope.cancel()


class ListBudget:
    """Holds ``steps`` credits more at each extension (like the API's HoldBudget)."""

    def __init__(self, held: int, steps: list[int]) -> None:
        self.held = held
        self.steps = steps

    async def extend(self, elapsed_ms: int) -> int:
        if self.steps and self.held - elapsed_ms < 1000:
            self.held += self.steps.pop(0)
        return self.held


async def test_budget_is_pushed_and_a_run_stops_when_it_runs_out() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 1) as agents:
            async with router_over(nursery, agents) as router:
                # Enough for the whole run: extensions arrive while it runs.
                ok = await router.run(
                    req("sleep:1.2;out:paid", timeout_s=5), ListBudget(500, [1000] * 5)
                )
                assert (ok.termination, ok.stdout) == (Termination.EXITED, "paid")
                # 500 ms held and nothing more: stopped at about 500 ms.
                cut = await router.run(req("sleep:3;out:never", timeout_s=5), ListBudget(500, []))
                assert cut.termination is Termination.CREDIT_LIMIT
                assert 450 <= cut.duration_ms <= 900, cut.duration_ms
            nursery.cancel_scope.cancel()


async def test_stop_reaches_the_agent() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 1) as agents:
            async with router_over(nursery, agents) as router:
                stop = trio.Event()
                out: list[str] = []
                box: list[Any] = []

                async def one() -> None:
                    box.append(
                        await router.run(
                            req("out:a;sleep:5;out:b", timeout_s=8),
                            on_output=lambda s, t: out.append(t),
                            stop=stop,
                        )
                    )

                async with trio.open_nursery() as runs:
                    runs.start_soon(one)
                    await until(lambda: out)
                    stop.set()
                assert box[0].termination is Termination.CANCELLED
                assert out == ["a"]
            nursery.cancel_scope.cancel()


async def test_pushed_budget_waits_briefly_for_a_push() -> None:
    budget = PushedBudget(100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(budget.extend, 100)
        await trio.sleep(0.05)
        budget.push(700)
    assert await budget.extend(200) == 700


async def test_a_draining_agent_sends_runs_elsewhere_even_when_none_is_warm() -> None:
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 2, pool_size=1) as agents:
            async with router_over(nursery, agents, poll_interval_s=60) as router:
                agents[0].scheduler.stop_accepting()
                # No warm sandbox anywhere in the router's (stale) view: it queues, and
                # it must not give up on the draining agent's 503.
                for v in router.agents:
                    v.sent["python"] = 99
                for _ in range(3):
                    result = await router.run(req("out:moved"))
                    assert result.stdout == "moved"
                assert agents[1].scheduler.statistics().runs_total
                assert not agents[0].scheduler.statistics().runs_total
            nursery.cancel_scope.cancel()


async def test_membership_from_dns() -> None:
    """``CINCH_AGENTS_DNS``: every address the name resolves to is a member (here
    ``localhost``: 127.0.0.1, and ::1 where it resolves, on which nobody listens)."""
    async with trio.open_nursery() as nursery:
        async with fake_agents(nursery, 1) as agents:
            port = agents[0].url.rsplit(":", 1)[1]
            router = Router(TOKEN, dns=f"localhost:{port}", config=RouterConfig())
            scope = trio.CancelScope()

            async def serve(task_status: Any) -> None:
                with scope:
                    await router.serve(task_status=task_status)

            await nursery.start(serve)
            urls = {v.url for v in router.agents}
            assert f"http://127.0.0.1:{port}" in urls
            assert (await router.run(req())).stdout == "hi"
            up = {v.url for v in router.agents if v.up}
            assert up == {f"http://127.0.0.1:{port}"}
            scope.cancel()
            nursery.cancel_scope.cancel()
