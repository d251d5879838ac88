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
from hypercorn.trio import serve as hypercorn_serve

from pool import (
    LANGUAGES,
    DockerBackend,
    DockerClient,
    Instance,
    LiveSandboxes,
    PoolError,
    WarmPool,
    run_pools,
    socket_path_from_env,
)
from pool._images import current_tags
from pool._setup import CGROUP_NAME, cgroup_parent_for
from scheduler import Scheduler, SchedulerConfig

from ._app import create_app
from ._config import Config
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


async def _cgroup_parent(client: DockerClient) -> str | None:
    info = await client.info()
    driver = str(info.get("CgroupDriver", "cgroupfs"))
    parent = cgroup_parent_for(driver)
    if driver != "systemd":
        import os

        if not any(
            os.path.isdir(p)  # noqa: ASYNC240 (sysfs, instant)
            for p in (
                f"/sys/fs/cgroup/{CGROUP_NAME}",
                f"/sys/fs/cgroup/cpu/{CGROUP_NAME}",
                f"/sys/fs/cgroup/cpu,cpuacct/{CGROUP_NAME}",
            )
        ):
            log.warning("cgroup %s is missing (run `cinch setup`); using the default", CGROUP_NAME)
            return None
    return parent


async def _housekeeping(store: Store) -> None:
    while True:
        await trio.sleep(30)
        try:
            await store.reap_expired_holds()
            await store.reap_idempotency()
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
        backend = DockerBackend(
            client,
            owner=instance.id,
            runtimes=config.runtimes(),
            cgroup_parent=await _cgroup_parent(client),
        )
        removed = await backend.remove_leftovers()
        if removed:
            log.info("removed %d leftover sandboxes of instance %s", removed, instance.id)
        languages_info = await _languages_info(client, tags, config.runtimes())
        live = LiveSandboxes(config.max_sandboxes)
        start_limiter = trio.CapacityLimiter(config.start_concurrency)
        pools = {
            name: WarmPool(
                backend,
                language=name,
                image=tags[name],
                size=size,
                live=live,
                start_limiter=start_limiter,
                pause_idle=config.pause_idle,
                max_age_s=config.sandbox_max_age_s,
                refill_delay_s=config.refill_delay_s,
            )
            for name, size in config.pool_sizes().items()
        }
        scheduler = Scheduler(
            pools,
            SchedulerConfig(
                queue_timeout_s=config.queue_timeout_s,
                queue_max=config.queue_max,
                max_run_timeout_s=config.run_timeout_s,
            ),
        )

        async def readiness() -> dict[str, Any]:
            checks: dict[str, Any] = {}
            try:
                with trio.fail_after(2):
                    await store.ping()
                checks["database"] = {"ok": True}
            except (StoreError, trio.TooSlowError) as exc:
                checks["database"] = {"ok": False, "error": str(exc) or "timeout"}
            try:
                with trio.fail_after(2):
                    await client.ping()
                checks["engine"] = {"ok": True}
            except (PoolError, trio.TooSlowError) as exc:
                checks["engine"] = {"ok": False, "error": str(exc) or "timeout"}
            for name in scheduler.languages:
                s = scheduler.pool(name).statistics()
                checks[f"pool:{name}"] = {
                    "ok": not s.breaker_open and (s.size == 0 or s.ready + s.starting > 0),
                    "size": s.size,
                    "ready": s.ready,
                    "starting": s.starting,
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
        hc = HypercornConfig()
        hc.bind = [f"{config.host}:{config.port}"]
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        hc.graceful_timeout = config.shutdown_grace_s + 3
        hc.keep_alive_timeout = 75
        shutdown = trio.Event()

        async with trio.open_nursery() as nursery:
            await nursery.start(backend.watch_events)
            await nursery.start(scheduler.serve)
            pool_nursery = await _start_pools(nursery, pools)
            nursery.start_soon(_housekeeping, store)
            bound = await nursery.start(
                lambda task_status: hypercorn_serve(
                    app, hc, shutdown_trigger=shutdown.wait, task_status=task_status
                )
            )
            base_url = _base_url(config, bound)
            if handle_signals:
                nursery.start_soon(_signal_watcher, shutdown)
            service = Service(
                config, instance, store, scheduler, client, backend, base_url, shutdown
            )
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
                await app.config["IN_FLIGHT"].wait_idle()
                await trio.sleep(0.2)  # the last bytes of the last answer
            log.info("answers sent; destroying pools")
            pool_nursery.cancel()  # pools destroy their warm sandboxes
            with trio.move_on_after(20):
                await scheduler.wait_destroyed()
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()


async def _start_pools(nursery: trio.Nursery, pools: dict[str, WarmPool]) -> trio.CancelScope:
    """Start every pool in a scope of its own, so shutdown can stop them first."""
    scope = trio.CancelScope()

    async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await run_pools(pools.values(), task_status=task_status)

    await nursery.start(run)
    return scope


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
