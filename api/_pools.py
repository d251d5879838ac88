"""One way to wire warm pools and a scheduler from a :class:`Config`.

``cinch serve``, the bench and the real-gVisor test fixtures all use
:func:`open_pools`, so what is measured and tested is what production runs
(pausing, cgroup parent, start concurrency, refill delay, pool sizes).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from pool import (
    DockerBackend,
    DockerClient,
    LiveSandboxes,
    SandboxLimits,
    StartSlots,
    WarmPool,
    run_pools,
)
from pool._images import current_tags
from pool._setup import CGROUP_NAME, cgroup_parent_for
from scheduler import Scheduler, SchedulerConfig

from ._config import Config

log = logging.getLogger("cinch")


@dataclass
class Pools:
    """The running pieces: a scheduler over one warm pool per language."""

    scheduler: Scheduler
    pools: dict[str, WarmPool]
    backend: DockerBackend


async def sandbox_cgroup_parent(client: DockerClient, configured: str = "") -> str | None:
    """``configured`` (CINCH_CGROUP_PARENT) if set, else the low-weight cgroup parent
    ``cinch setup`` prepared, or None when it is missing."""
    if configured:
        return configured
    info = await client.info()
    driver = str(info.get("CgroupDriver", "cgroupfs"))
    parent = cgroup_parent_for(driver)
    if driver != "systemd" and not any(
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


def scheduler_config(config: Config) -> SchedulerConfig:
    return SchedulerConfig(
        queue_timeout_s=config.queue_timeout_s,
        queue_max=config.queue_max,
        max_run_timeout_s=config.run_timeout_s,
    )


@contextlib.asynccontextmanager
async def open_pools(
    config: Config,
    client: DockerClient,
    *,
    owner: str,
    cgroup_parent: str | None,
    images: Mapping[str, str] | None = None,
    sched_config: SchedulerConfig | None = None,
    labels: dict[str, str] | None = None,
) -> AsyncIterator[Pools]:
    """Start the event watcher, the scheduler and the pools; on exit destroy every sandbox.

    The caller drains runs first (``scheduler.stop_accepting`` and
    ``wait_idle``) if it wants them to finish; leaving the block cancels the
    pools, waits (bounded) until each sandbox is destroyed, then stops the rest.
    """
    tags = dict(images) if images is not None else current_tags()
    backend = DockerBackend(
        client,
        owner=owner,
        runtimes=config.runtimes(),
        limits=SandboxLimits(nano_cpus=round(config.sandbox_cpus * 1e9)),
        cgroup_parent=cgroup_parent,
        cpu_weights=config.cpu_weights,
        labels=labels,
        env=config.sandbox_env(),
    )
    live = LiveSandboxes(config.max_sandboxes)
    start_limiter = StartSlots(config.start_slots())
    max_sizes = config.pool_max_sizes()
    pools = {
        name: WarmPool(
            backend,
            language=name,
            image=tags[name],
            size=size,
            max_size=max_sizes[name],
            live=live,
            start_limiter=start_limiter,
            pause_idle=config.pause_idle,
            max_age_s=config.sandbox_max_age_s,
            refill_delay_s=config.refill_delay_s,
        )
        for name, size in config.pool_sizes().items()
    }
    scheduler = Scheduler(pools, sched_config or scheduler_config(config))
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.watch_events)
        await nursery.start(scheduler.serve)
        pool_scope = trio.CancelScope()

        async def run_all(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with pool_scope:
                await run_pools(pools.values(), task_status=task_status)

        await nursery.start(run_all)
        try:
            yield Pools(scheduler, pools, backend)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                pool_scope.cancel()  # the pools destroy their warm sandboxes
                await scheduler.wait_destroyed()
            nursery.cancel_scope.cancel()
