"""Wire everything in one place: database, engine, warm pools, scheduler, HTTP server.

trio.run -> trio-asyncio loop -> database -> engine + events -> warm pools
(nursery.start) -> Scheduler -> hypercorn.trio.serve.  SIGTERM: stop taking
runs, let runs in flight finish (up to their limit), destroy the pools, exit.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
import trio_asyncio
from hypercorn.config import Config as HypercornConfig

from pool import (
    LANGUAGES,
    DockerBackend,
    DockerClient,
    Instance,
    PoolError,
    socket_path_from_env,
)
from pool._images import current_tags
from scheduler import Scheduler

from ._app import create_app
from ._config import Config
from ._database_watch import DatabaseWatch
from ._http_limits import HttpLimits, HttpStatistics
from ._http_limits import serve as http_serve
from ._ledger import HEARTBEAT_S
from ._leftovers import DATA_DIR_LABEL, remove_dead
from ._limits import KeyLimiter
from ._pools import Pools, open_pools, sandbox_cgroup_parent
from ._reasons import install as install_reason_phrases
from ._state import app_state
from ._store import Store, StoreError

log = logging.getLogger("cinch")


@dataclass
class Service:
    """The running pieces, handed to ``on_ready`` (and to tests)."""

    config: Config
    instance: Instance
    store: Store
    scheduler: Scheduler
    client: DockerClient
    backend: DockerBackend
    base_url: str
    shutdown: trio.Event


class SetupNeeded(Exception):
    """The engine or the images are missing: run `cinch setup` first."""


async def _languages_info(
    client: DockerClient, tags: dict[str, str], runtimes: dict[str, str]
) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for name, tag in tags.items():
        labels = (await client.image_inspect(tag)).get("Config", {}).get("Labels") or {}
        info[name] = {
            "version": labels.get("cinch.runtime-version", ""),
            "image": tag,
            "runtime": runtimes[name],
            "file": LANGUAGES[name].code_path,
        }
    return info


async def _housekeeping(store: Store, limiter: KeyLimiter | None = None) -> None:
    """Heartbeat (so other instances know our idempotency claims are alive), reaping, and
    the per-key rate limit's share: 1/n of it for each of n live replicas."""
    last_reap = trio.current_time()
    while True:
        await trio.sleep(HEARTBEAT_S)
        try:
            await store.ledger.heartbeat()
            if limiter is not None:
                limiter.share(await store.ledger.live_instances())
            if trio.current_time() - last_reap >= 30:
                last_reap = trio.current_time()
                await store.ledger.reap_expired_holds()
                await store.ledger.reap_idempotency()
        except StoreError as exc:
            log.warning("housekeeping: %s", exc)


async def serve(
    config: Config,
    *,
    on_ready: Callable[[Service], Awaitable[None]] | None = None,
    handle_signals: bool = True,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a whole Cinch instance until SIGTERM/SIGINT (or cancellation)."""
    instance = Instance.acquire(config.data_dir)
    try:
        async with trio_asyncio.open_loop():
            store = await Store.open(config.database_url, config.data_dir, instance.id)
            try:
                await _serve_with_store(
                    config, instance, store, on_ready, handle_signals, task_status
                )
            finally:
                await store.aclose()
    finally:
        instance.release()


async def _serve_with_store(
    config: Config,
    instance: Instance,
    store: Store,
    on_ready: Callable[[Service], Awaitable[None]] | None,
    handle_signals: bool,
    task_status: Any,
) -> None:
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
        languages_info = await _languages_info(client, tags, config.runtimes())
        async with open_pools(
            config,
            client,
            owner=instance.id,
            cgroup_parent=cgroup_parent,
            images=tags,
            labels={DATA_DIR_LABEL: str(instance.data_dir.resolve())},
        ) as wired:
            await _serve_with_pools(
                config,
                instance,
                store,
                client,
                wired,
                languages_info,
                on_ready,
                handle_signals,
                task_status,
            )
    finally:
        await client.aclose()


async def _serve_with_pools(
    config: Config,
    instance: Instance,
    store: Store,
    client: DockerClient,
    wired: Pools,
    languages_info: dict[str, Any],
    on_ready: Callable[[Service], Awaitable[None]] | None,
    handle_signals: bool,
    task_status: Any,
) -> None:
    scheduler, backend = wired.scheduler, wired.backend

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
        try:
            with trio.fail_after(2):
                await client.ping()
            checks["engine"] = {"ok": True}
        except (PoolError, trio.TooSlowError) as exc:
            checks["engine"] = {"ok": False, "error": str(exc) or "timeout"}
        checks["scheduler"] = {"ok": scheduler.accepting, "accepting": scheduler.accepting}
        sched = scheduler.statistics()
        for name in scheduler.languages:
            s = scheduler.pool(name).statistics()
            # Ready means a warm sandbox now: one still starting serves nobody yet.
            checks[f"pool:{name}"] = {
                "ok": not s.breaker_open and (s.min_size == 0 or s.ready > 0),
                "size": s.size,
                "minSize": s.min_size,
                "maxSize": s.max_size,
                "ready": s.ready,
                "starting": s.starting,
                "queued": sched.queued_by_language.get(name, 0),
                "breakerOpen": s.breaker_open,
            }
        return checks

    app = create_app(
        config,
        scheduler=scheduler,
        store=store,
        readiness=readiness,
        languages_info=languages_info,
        blueprints=_extra_blueprints(config),
    )
    install_reason_phrases()
    hc = HypercornConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = config.shutdown_grace_s + 3
    hc.keep_alive_timeout = 75
    shutdown = trio.Event()
    # Hypercorn stops listening only after the drain: until then a new request is
    # answered 503 with Retry-After, not refused at the socket.
    stop_listening = trio.Event()
    limits = HttpLimits(config.header_timeout_s, config.max_connections_per_ip)
    http_stats = HttpStatistics()
    app_state(app).metrics.watch(lambda: _http_samples(http_stats))
    app_state(app).metrics.watch(lambda: _database_samples(store, watch))
    app_state(app).metrics.watch(lambda: _replica_samples(app_state(app).limiter))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_housekeeping, store, app_state(app).limiter)
        if store.server is not None:
            await nursery.start(store.server.supervise)
        else:
            await nursery.start(watch.run)
        bound = await nursery.start(
            lambda task_status: http_serve(
                app,
                hc,
                limits,
                stats=http_stats,
                shutdown_trigger=stop_listening.wait,
                task_status=task_status,
            )
        )
        base_url = _base_url(config, bound)
        if handle_signals:
            nursery.start_soon(_signal_watcher, shutdown)
        service = Service(config, instance, store, scheduler, client, backend, base_url, shutdown)
        log.info("Cinch %s listening on %s", instance.id, base_url)
        task_status.started(service)
        if on_ready is not None:
            await on_ready(service)
        await shutdown.wait()
        log.info("shutting down: no new runs; waiting for runs in flight")
        scheduler.stop_accepting()
        with trio.move_on_after(config.shutdown_grace_s):
            await scheduler.wait_idle()
        # Runs are over, but their answers may still be settling and being
        # written. (Hypercorn itself would also wait for idle keep-alive
        # connections, up to its graceful time-out.)
        with trio.move_on_after(5):
            await app_state(app).in_flight.wait_idle()
            await trio.sleep(0.2)  # the last bytes of the last answer
        stop_listening.set()
        with trio.move_on_after(2):
            try:
                await store.ledger.stop_instance()
            except StoreError as exc:
                log.warning("could not mark this instance stopped: %s", exc)
        log.info("answers sent; destroying pools")
        nursery.cancel_scope.cancel()


def _database_facts(store: Store, watch: DatabaseWatch) -> dict[str, Any]:
    """What /readyz says about the database besides "it answered"."""
    if store.server is None:
        w = watch.statistics()
        return {"embedded": False, "outages": w.outages}
    e = store.server.statistics()
    return {"embedded": True, "server": e.state, "owner": e.owner, "restarts": e.restarts}


def _replica_samples(limiter: KeyLimiter) -> list[tuple[str, str, str, float]]:
    return [
        (
            "gauge",
            "cinch_api_replicas",
            "Live API replicas this one counts; each allows 1/n of a key's rate limit",
            limiter.replicas,
        )
    ]


def _database_samples(store: Store, watch: DatabaseWatch) -> list[tuple[str, str, str, float]]:
    if store.server is None:
        w = watch.statistics()
        return [
            ("gauge", "cinch_database_up", "1 while the database answers", int(w.reachable)),
            (
                "counter",
                "cinch_database_outages",
                "Times the database stopped answering",
                w.outages,
            ),
        ]
    e = store.server.statistics()
    return [
        ("gauge", "cinch_database_up", "1 while the embedded server runs", int(e.state == "up")),
        (
            "counter",
            "cinch_database_restarts",
            "Times the embedded server was started again after it died",
            e.restarts,
        ),
    ]


def _http_samples(stats: HttpStatistics) -> list[tuple[str, str, str, float]]:
    return [
        ("gauge", "cinch_http_connections_open", "Open client connections", stats.open_connections),
        (
            "counter",
            "cinch_http_header_timeouts",
            "Connections cut: request not received in time",
            stats.header_timeouts_total,
        ),
        (
            "counter",
            "cinch_http_connections_refused",
            "Connections refused: too many from one address",
            stats.refused_per_ip_total,
        ),
    ]


def _base_url(config: Config, bound: Any) -> str:
    if config.public_url:
        return config.public_url.rstrip("/")
    if bound:
        addr = str(bound[0])
        return addr if addr.startswith("http") else f"http://{addr}"
    return config.base_url


async def _signal_watcher(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            shutdown.set()
            return


def _extra_blueprints(config: Config) -> list[Any]:
    try:
        from ._dashboard import dashboard_blueprints
    except ImportError:
        return []
    return list(dashboard_blueprints(config))
