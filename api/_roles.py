"""The two roles of many hosts: ``cinch agent`` (one per host) and ``cinch api`` (N replicas).

``cinch agent``: trio.run -> engine checks -> warm pools + Scheduler
(``open_pools``, as ``cinch serve``) -> the agent's handler (``_agent``) on
the lean HTTP/1.1 server of ``_h11``.  No database.  SIGTERM: report ``draining`` (routers stop sending),
let runs in flight finish, destroy the pools, exit.

``cinch api``: trio.run -> trio-asyncio loop -> the shared PostgreSQL ->
:class:`~api._routing.Router` -> the same app as ``cinch serve`` with the
router in the scheduler's place.  No engine client.  SIGTERM: 503 to new runs,
runs in flight finish on their agents, exit.

``cinch serve`` stays one process with no hop (``_service``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
import trio_asyncio
from hypercorn.config import Config as HypercornConfig

from pool import DockerBackend, DockerClient, Instance, PoolError, socket_path_from_env
from pool._images import current_tags
from scheduler import Scheduler

from ._agent import create_agent_app
from ._agent import serve_agent as serve_agent_http
from ._app import create_app
from ._config import Config
from ._database_watch import DatabaseWatch
from ._http_limits import HttpLimits, HttpStatistics
from ._http_limits import serve as http_serve
from ._leftovers import DATA_DIR_LABEL, remove_dead
from ._metrics import Metrics
from ._pools import open_pools, sandbox_cgroup_parent
from ._routing import Router, RouterConfig, RouterStatistics, parse_agents
from ._service import (
    SetupNeeded,
    _base_url,
    _database_facts,
    _database_samples,
    _extra_blueprints,
    _housekeeping,
    _http_samples,
    _replica_samples,
    _signal_watcher,
)
from ._state import app_state
from ._store import Store, StoreError

log = logging.getLogger("cinch")


def _hypercorn(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = config.shutdown_grace_s + 3
    # Longer than the API's idle keep-alive connections live: the API closes them first.
    hc.keep_alive_timeout = 75
    return hc


# -- cinch agent ----------------------------------------------------------------------------


@dataclass
class AgentService:
    """A running agent, handed to ``on_ready`` (and to tests)."""

    config: Config
    instance: Instance
    scheduler: Scheduler
    client: DockerClient
    backend: DockerBackend
    base_url: str
    shutdown: trio.Event


async def serve_agent(
    config: Config,
    *,
    on_ready: Callable[[AgentService], Awaitable[None]] | None = None,
    handle_signals: bool = True,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one host's agent until SIGTERM/SIGINT (or cancellation)."""
    if not config.agent_token:
        raise SetupNeeded("cinch agent needs CINCH_AGENT_TOKEN (the API tier sends the same)")
    instance = Instance.acquire(config.data_dir)
    client = DockerClient(socket_path_from_env())
    try:
        try:
            await client.ping()
        except PoolError as exc:
            raise SetupNeeded(f"{exc}; run `cinch setup` first") from exc
        tags = current_tags()
        for name, tag in tags.items():
            if not await client.image_exists(tag):
                raise SetupNeeded(f"image {tag} for {name} is missing; run `cinch setup`")
        cgroup_parent = await sandbox_cgroup_parent(client, config.cgroup_parent)
        # Their CPU groups too: a group is removed only by whoever removes its container.
        removed = await DockerBackend(
            client, owner=instance.id, runtimes={}, cgroup_parent=cgroup_parent
        ).remove_leftovers()
        if removed:
            log.info("removed %d leftover sandboxes of instance %s", removed, instance.id)
        dead_ones = await remove_dead(client, exclude=instance.id, cgroup_parent=cgroup_parent)
        for dead, n in dead_ones.items():
            log.info("removed %d leftover sandboxes of dead instance %s", n, dead)
        async with open_pools(
            config,
            client,
            owner=instance.id,
            cgroup_parent=cgroup_parent,
            images=tags,
            labels={DATA_DIR_LABEL: str(instance.data_dir.resolve())},
        ) as wired:
            scheduler = wired.scheduler

            async def readiness() -> dict[str, Any]:
                checks: dict[str, Any] = {}
                try:
                    with trio.fail_after(2):
                        await client.ping()
                    checks["engine"] = {"ok": True}
                except (PoolError, trio.TooSlowError) as exc:
                    checks["engine"] = {"ok": False, "error": str(exc) or "timeout"}
                for name in scheduler.languages:
                    s = scheduler.pool(name).statistics()
                    checks[f"pool:{name}"] = {
                        "ok": not s.breaker_open and (s.min_size == 0 or s.ready > 0),
                        "ready": s.ready,
                        "size": s.size,
                    }
                return checks

            app = create_agent_app(scheduler, config.agent_token, readiness=readiness)
            shutdown = trio.Event()
            stop_listening = trio.Event()
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    lambda task_status: serve_agent_http(
                        app,
                        config.host,
                        config.port,
                        header_timeout_s=config.header_timeout_s,
                        shutdown_trigger=stop_listening.wait,
                        task_status=task_status,
                    )
                )
                base_url = _base_url(config, bound)
                if handle_signals:
                    nursery.start_soon(_signal_watcher, shutdown)
                service = AgentService(
                    config, instance, scheduler, client, wired.backend, base_url, shutdown
                )
                log.info("Cinch agent %s listening on %s", instance.id, base_url)
                task_status.started(service)
                if on_ready is not None:
                    await on_ready(service)
                await shutdown.wait()
                log.info("agent draining: no new runs; waiting for runs in flight")
                scheduler.stop_accepting()
                with trio.move_on_after(config.shutdown_grace_s):
                    await scheduler.wait_idle()
                with trio.move_on_after(2):
                    await trio.sleep(0.2)  # the last bytes of the last answer
                stop_listening.set()
                nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
        instance.release()


# -- cinch api ------------------------------------------------------------------------------


@dataclass
class ApiService:
    """A running API replica, handed to ``on_ready`` (and to tests)."""

    config: Config
    instance: Instance
    store: Store
    router: Router
    base_url: str
    shutdown: trio.Event


def router_from_config(config: Config) -> Router:
    if not config.agent_token:
        raise SetupNeeded("cinch api needs CINCH_AGENT_TOKEN (the agents expect the same)")
    if not config.agents and not config.agents_dns:
        raise SetupNeeded("cinch api needs CINCH_AGENTS (host:port,...) or CINCH_AGENTS_DNS")
    return Router(
        config.agent_token,
        agents=parse_agents(config.agents),
        dns=config.agents_dns,
        config=RouterConfig(
            poll_interval_s=config.agent_poll_s,
            poll_timeout_s=config.agent_poll_s * 1.2,
            queue_timeout_s=config.queue_timeout_s,
        ),
    )


def router_checks(stats: RouterStatistics, router: Router) -> dict[str, Any]:
    """What ``/readyz`` says about the agents; ready needs a warm sandbox somewhere."""
    checks: dict[str, Any] = {
        "agents": {
            "ok": stats.agents_up > 0,
            "members": stats.agents,
            "up": stats.agents_up,
            "agents": [
                {
                    "url": v.url,
                    "up": v.up,
                    "draining": bool(v.levels and v.levels.draining),
                    "warm": {
                        n: lv.warm for n, lv in (v.levels.languages if v.levels else {}).items()
                    },
                }
                for v in router.agents
            ],
        },
        "scheduler": {"ok": router.accepting, "accepting": router.accepting},
    }
    for name in ("python", "javascript"):
        ready = stats.warm.get(name, 0)
        size = sum(
            v.levels.languages[name].minimum
            for v in router.agents
            if v.routable and v.levels is not None and name in v.levels.languages
        )
        # Like cinch serve: ready needs a warm sandbox, unless none is kept when idle.
        checks[f"pool:{name}"] = {"ok": ready > 0 or size == 0, "ready": ready, "size": size}
    return checks


def _router_samples(router: Router) -> list[tuple[str, str, str, float]]:
    s = router.statistics()
    return [
        ("gauge", "cinch_agents", "Agents in the membership", s.agents),
        ("gauge", "cinch_agents_up", "Agents up (polled or answering)", s.agents_up),
        ("gauge", "cinch_runs_in_flight", "Runs this replica has on agents now", s.in_flight),
        ("counter", "cinch_route_runs", "Runs routed to an agent and answered", s.routed_total),
        ("counter", "cinch_route_empty", "409s: the agent had no warm sandbox", s.empty_total),
        (
            "counter",
            "cinch_route_queued",
            "Runs sent with no warm sandbox anywhere",
            s.queued_total,
        ),
        ("counter", "cinch_route_lost", "Runs whose agent failed mid-run", s.lost_total),
        ("counter", "cinch_route_retried", "Lost runs retried on another agent", s.retried_total),
        ("counter", "cinch_agent_downs", "Times an agent was marked down", s.down_total),
        (
            "gauge",
            "cinch_agent_hop_p50_seconds",
            "Median time of an agent call less the agent's own share (last 512 calls)",
            (s.hop_p50_ms or 0.0) / 1000,
        ),
    ]


async def serve_api(
    config: Config,
    *,
    on_ready: Callable[[ApiService], Awaitable[None]] | None = None,
    handle_signals: bool = True,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one stateless API replica until SIGTERM/SIGINT (or cancellation)."""
    if not config.database_url:
        raise SetupNeeded("cinch api needs CINCH_DATABASE_URL: every replica shares one PostgreSQL")
    router = router_from_config(config)
    instance = Instance.acquire(config.data_dir)
    try:
        async with trio_asyncio.open_loop():
            store = await Store.open(config.database_url, config.data_dir, instance.id)
            try:
                await _serve_api(
                    config, instance, store, router, on_ready, handle_signals, task_status
                )
            finally:
                await store.aclose()
    finally:
        instance.release()


async def _serve_api(
    config: Config,
    instance: Instance,
    store: Store,
    router: Router,
    on_ready: Callable[[ApiService], Awaitable[None]] | None,
    handle_signals: bool,
    task_status: Any,
) -> None:
    watch = DatabaseWatch(store)

    async def readiness() -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            with trio.fail_after(2):
                await store.ping()
            checks["database"] = {"ok": True}
        except (StoreError, trio.TooSlowError) as exc:
            checks["database"] = {"ok": False, "error": str(exc) or "timeout"}
        checks["database"].update(_database_facts(store, watch))
        checks.update(router_checks(router.statistics(), router))
        return checks

    app = create_app(
        config,
        scheduler=router,
        store=store,
        metrics=Metrics(None),
        readiness=readiness,
        blueprints=_extra_blueprints(config),
    )
    shutdown = trio.Event()
    stop_listening = trio.Event()
    limits = HttpLimits(config.header_timeout_s, config.max_connections_per_ip)
    http_stats = HttpStatistics()
    metrics = app_state(app).metrics
    metrics.watch(lambda: _http_samples(http_stats))
    metrics.watch(lambda: _database_samples(store, watch))
    metrics.watch(lambda: _replica_samples(app_state(app).limiter))
    metrics.watch(lambda: _router_samples(router))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_housekeeping, store, app_state(app).limiter)
        await nursery.start(watch.run)
        await nursery.start(router.serve)
        bound = await nursery.start(
            lambda task_status: http_serve(
                app,
                _hypercorn(config),
                limits,
                stats=http_stats,
                shutdown_trigger=stop_listening.wait,
                task_status=task_status,
            )
        )
        base_url = _base_url(config, bound)
        if handle_signals:
            nursery.start_soon(_signal_watcher, shutdown)
        service = ApiService(config, instance, store, router, base_url, shutdown)
        log.info("Cinch API %s listening on %s", instance.id, base_url)
        task_status.started(service)
        if on_ready is not None:
            await on_ready(service)
        await shutdown.wait()
        log.info("shutting down: no new runs; waiting for runs in flight on agents")
        router.stop_accepting()
        with trio.move_on_after(config.shutdown_grace_s):
            await router.wait_idle()
        with trio.move_on_after(5):
            await app_state(app).in_flight.wait_idle()
            await trio.sleep(0.2)
        stop_listening.set()
        with trio.move_on_after(2):
            try:
                await store.ledger.stop_instance()
            except StoreError as exc:
                log.warning("could not mark this instance stopped: %s", exc)
        nursery.cancel_scope.cancel()
