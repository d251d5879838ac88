"""Real pools and a real scheduler, wired as ``cinch serve`` wires them, minus HTTP.

:class:`TimedClient` is the engine client with a stopwatch on every Engine API
call (and an optional hook after each), so the benchmark can say what each
step of a sandbox's life costs.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from pool import DockerBackend, DockerClient, WarmPool
from scheduler import Scheduler, SchedulerConfig


class TimedClient(DockerClient):
    """A :class:`pool.DockerClient` that times each call; ``hook(call, container_id)`` after it."""

    def __init__(self, socket_path: str) -> None:
        super().__init__(socket_path)
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.hook: Callable[[str, str], None] | None = None

    def _done(self, name: str, cid: str, t0: float) -> None:
        self.calls[name].append((time.perf_counter() - t0) * 1000)
        if self.hook is not None:
            self.hook(name, cid)

    async def create_container(self, config: Mapping[str, Any]) -> str:
        t0 = time.perf_counter()
        cid = await super().create_container(config)
        self._done("create", cid, t0)
        return cid

    async def attach(self, container_id: str) -> Any:
        t0 = time.perf_counter()
        stream = await super().attach(container_id)
        self._done("attach", container_id, t0)
        return stream

    async def start(self, container_id: str) -> None:
        t0 = time.perf_counter()
        await super().start(container_id)
        self._done("start", container_id, t0)

    async def pause(self, container_id: str) -> None:
        t0 = time.perf_counter()
        await super().pause(container_id)
        self._done("pause", container_id, t0)

    async def unpause(self, container_id: str) -> None:
        t0 = time.perf_counter()
        await super().unpause(container_id)
        self._done("unpause", container_id, t0)

    async def remove(self, container_id: str, *, force: bool = True, timeout_s: float = 20) -> None:
        t0 = time.perf_counter()
        await super().remove(container_id, force=force, timeout_s=timeout_s)
        self._done("remove", container_id, t0)


@dataclass
class Wired:
    scheduler: Scheduler
    pools: dict[str, WarmPool]
    backend: DockerBackend


@contextlib.asynccontextmanager
async def open_scheduler(
    client: DockerClient,
    *,
    owner: str,
    images: Mapping[str, str],
    runtimes: Mapping[str, str],
    pool_sizes: Mapping[str, int],
    start_concurrency: int,
    max_sandboxes: int,
    cgroup_parent: str | None,
    pause_idle: bool | None = None,
    refill_delay_s: float | None = None,
    scheduler_config: SchedulerConfig | None = None,
) -> AsyncIterator[Wired]:
    """Warm pools for ``pool_sizes`` and a Scheduler over them; everything destroyed on exit.

    ``pause_idle`` and ``refill_delay_s`` default to what ``cinch serve`` uses (CINCH_*).
    """
    from api._config import Config
    from api._pools import open_pools

    overrides: dict[str, Any] = {
        "pool_python": pool_sizes.get("python", 0),
        "pool_javascript": pool_sizes.get("javascript", 0),
        "start_concurrency": start_concurrency,
        "max_sandboxes": max_sandboxes,
    }
    for name, runtime in runtimes.items():
        overrides[f"runtime_{name}"] = runtime
    if pause_idle is not None:
        overrides["pause_idle"] = pause_idle
    if refill_delay_s is not None:
        overrides["refill_delay_s"] = refill_delay_s
    config = Config.from_env(**overrides)
    async with open_pools(
        config,
        client,
        owner=owner,
        cgroup_parent=cgroup_parent,
        images=images,
        sched_config=scheduler_config,
    ) as wired:
        try:
            yield Wired(wired.scheduler, wired.pools, wired.backend)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(60):
                await wired.scheduler.wait_idle()


async def wait_pools_full(pools: Mapping[str, WarmPool], timeout_s: float = 90.0) -> bool:
    """Until every pool holds its target of ready sandboxes and starts nothing."""
    with trio.move_on_after(timeout_s):
        while True:
            stats = [p.statistics() for p in pools.values()]
            if all(s.ready >= s.size and s.starting == 0 for s in stats):
                return True
            await trio.sleep(0.02)
    return False


async def remove_owned(client: DockerClient, owner: str) -> int:
    """Remove every container labelled ``cinch.owner=<owner>`` (ours only); returns how many."""
    backend = DockerBackend(client, owner=owner, runtimes={})
    return await backend.remove_leftovers()
