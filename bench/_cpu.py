"""CPU of our sandboxes during a load shape, split into "run" and "start".

Every sandbox container lives in its own cgroup under the sandboxes' parent
group ``cinch-sandboxes`` (cgroup v1: ``cpuacct.usage`` in the cpuacct hierarchy;
v2: ``usage_usec`` of ``cpu.stat``).  :class:`CgroupCpu` reads each of our
containers' counters every ``interval_s`` while a shape runs, and gives each
interval's CPU to one side:

- With per-sandbox CPU weights (the pool writes a higher weight when a run takes
  a sandbox), an interval counts as **run** once the container's weight has risen
  above the one it was first seen with, **start** before.
- Without them (every container keeps one weight), a container is **start**
  until it has been paused by the pool or quiet (less than ``QUIET_NS`` per
  interval, ``QUIET_INTERVALS`` in a row: ready and waiting) and **run** from its
  next activity on.  Shapes
  begin from full, idle pools, so the containers there at the window's start
  count as quiet already.  A sandbox taken before it ever went quiet (a queued
  run was waiting for it) and gone before the window ends gets, as its start,
  the mean start CPU of the sandboxes of its language that were created and went
  quiet in the same window, the rest as run (none such: all start).  A paused
  sandbox's unpause counts as run.

Either way, "run" includes the sandbox's teardown after the program ends
(kill and remove), and CPU a container used after its last sample (at most one
interval) is lost.  dockerd, containerd and the shims are outside these groups
and in neither number.  Containers are ours by the ``cinch.owner`` label,
listed at the start and followed through the engine's event stream.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pool import OWNER_LABEL, DockerClient

ROOT = Path("/sys/fs/cgroup")
GROUP = "cinch-sandboxes"
QUIET_NS = 1_000_000  # 1 ms of CPU in one interval: an idle runner stays well below
# Quiet this many intervals in a row (300 ms) to count as ready: on a loaded machine a
# starting sandbox can be starved of the CPU for a few intervals.
QUIET_INTERVALS = 6
INTERVAL_S = 0.05
LANGUAGE_LABEL = "cinch.language"
_ID = re.compile(r"^[0-9a-f]{64}$")


def _hierarchies() -> tuple[list[Path], list[Path], bool]:
    """(dirs holding usage counters, dirs holding weights, cgroup v2?)."""
    if (ROOT / "cgroup.controllers").exists():
        return [ROOT / GROUP], [ROOT / GROUP], True
    usage = [ROOT / n / GROUP for n in ("cpuacct", "cpu,cpuacct", "cpu")]
    weight = [ROOT / n / GROUP for n in ("cpu", "cpu,cpuacct")]
    return [p for p in usage if p.is_dir()], [p for p in weight if p.is_dir()], False


def _find_group(parents: list[Path], cid: str) -> Path | None:
    """``cid``'s group directly under a parent, or one level deeper (state sub-groups)."""
    for parent in parents:
        direct = parent / cid
        if direct.is_dir():
            return direct
        try:
            for sub in parent.iterdir():
                if sub.is_dir() and not _ID.match(sub.name) and (sub / cid).is_dir():
                    return sub / cid
        except OSError:
            continue
    return None


def _read_usage_ns(group: Path, v2: bool) -> int | None:
    try:
        if v2:
            for line in (group / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) * 1000
            return None
        return int((group / "cpuacct.usage").read_text().strip())
    except (OSError, ValueError):
        return None


def _read_weight(group: Path, v2: bool) -> int | None:
    try:
        return int((group / ("cpu.weight" if v2 else "cpu.shares")).read_text().strip())
    except (OSError, ValueError):
        return None


def _parent_usage_ns(usage_dirs: list[Path], v2: bool) -> int | None:
    for d in usage_dirs:
        value = _read_usage_ns(d, v2)
        if value is not None:
            return value
    return None


@dataclass
class _Container:
    cid: str
    last_ns: int | None = None
    first_weight: int | None = None
    weight_raised: bool = False
    quiet_runs: int = 0
    went_quiet: bool = False
    run_ns: int = 0
    start_ns: int = 0
    found: bool = False
    language: str = ""
    new: bool = False  # created in the window: its counter started at 0 in it
    gone: bool = False  # died in the window


@dataclass
class CgroupCpu:
    """Samples our containers' cgroups; see the module docstring for the attribution."""

    owners: list[str]
    interval_s: float = INTERVAL_S
    containers: dict[str, _Container] = field(default_factory=dict)
    available: str = ""  # why the numbers are missing, when they are

    def _sample(self, usage_dirs: list[Path], weight_dirs: list[Path], v2: bool) -> None:
        for c in list(self.containers.values()):
            ugroup = _find_group(usage_dirs, c.cid)
            if ugroup is None:
                continue
            now = _read_usage_ns(ugroup, v2)
            if now is None:
                continue
            c.found = True
            wgroup = ugroup if v2 else _find_group(weight_dirs, c.cid)
            weight = None if wgroup is None else _read_weight(wgroup, v2)
            if c.first_weight is None:
                c.first_weight = weight
            elif weight is not None and weight > c.first_weight:
                c.weight_raised = True
            if c.last_ns is None:
                c.last_ns = 0 if c.new else now
            delta = max(0, now - c.last_ns)
            c.last_ns = now
            if self.weighted:
                is_run = c.weight_raised
            else:
                is_run = c.went_quiet and delta >= QUIET_NS
            if is_run:
                c.run_ns += delta
            else:
                c.start_ns += delta
            c.quiet_runs = c.quiet_runs + 1 if delta < QUIET_NS else 0
            if c.quiet_runs >= QUIET_INTERVALS:
                c.went_quiet = True

    @property
    def weighted(self) -> bool:
        """True once any container's weight rose: the pool weights sandboxes per state."""
        return any(c.weight_raised for c in self.containers.values())

    def _add(self, cid: str, language: str, *, new: bool) -> _Container | None:
        if not cid:
            return None
        if cid not in self.containers:
            self.containers[cid] = _Container(cid, language=language, new=new, went_quiet=not new)
        return self.containers[cid]

    async def _follow(self, client: DockerClient, owner: str, task_status: Any) -> None:
        filters = {"type": ["container"], "label": [f"{OWNER_LABEL}={owner}"]}
        connected = False

        def on_connected() -> None:
            nonlocal connected
            connected = True
            task_status.started()

        try:
            async with contextlib.aclosing(
                client.events(filters, on_connected=on_connected)
            ) as stream:
                async for event in stream:
                    actor = event.get("Actor", {})
                    c = self._add(
                        event.get("id") or actor.get("ID", ""),
                        actor.get("Attributes", {}).get(LANGUAGE_LABEL, ""),
                        new=True,
                    )
                    action = event.get("status", event.get("Action"))
                    if c is not None and action == "die":
                        c.gone = True
                    elif c is not None and action == "pause":
                        c.went_quiet = True  # the pool pauses only ready sandboxes
        except Exception as exc:  # the numbers get a note; the shape goes on
            self.available = f"event stream lost: {exc}"
            if not connected:
                task_status.started()

    @contextlib.asynccontextmanager
    async def watching(self, client: DockerClient) -> AsyncIterator[CgroupCpu]:
        """Sample while the body runs (the shape's window)."""
        usage_dirs, weight_dirs, v2 = _hierarchies()
        if not usage_dirs:
            self.available = f"no {GROUP} cgroup with a CPU usage counter under {ROOT}"
        self._t0 = time.monotonic()
        self._parent0 = _parent_usage_ns(usage_dirs, v2)
        async with trio.open_nursery() as nursery:
            for owner in self.owners:
                await nursery.start(self._follow, client, owner)
                for c in await client.list_containers([f"{OWNER_LABEL}={owner}"]):
                    self._add(
                        c.get("Id", ""), c.get("Labels", {}).get(LANGUAGE_LABEL, ""), new=False
                    )
            if usage_dirs:
                self._sample(usage_dirs, weight_dirs, v2)

                async def sampler() -> None:
                    while True:
                        await trio.sleep(self.interval_s)
                        self._sample(usage_dirs, weight_dirs, v2)

                nursery.start_soon(sampler)
            try:
                yield self
            finally:
                if usage_dirs:
                    self._sample(usage_dirs, weight_dirs, v2)
                self._elapsed = time.monotonic() - self._t0
                parent1 = _parent_usage_ns(usage_dirs, v2)
                self._parent_ns = (
                    None if parent1 is None or self._parent0 is None else parent1 - self._parent0
                )
                nursery.cancel_scope.cancel()

    def _estimated(self, seen: list[_Container]) -> tuple[float, float, int]:
        """(run ns, start ns, containers estimated) with the split of taken-while-starting ones."""
        run = float(sum(c.run_ns for c in seen))
        start = float(sum(c.start_ns for c in seen))
        if self.weighted:
            return run, start, 0
        estimated = 0
        for lang in {c.language for c in seen}:
            mine = [c for c in seen if c.language == lang]
            complete = [c.start_ns for c in mine if c.new and c.went_quiet]
            if not complete:
                continue
            mean_start = sum(complete) / len(complete)
            for c in mine:
                if c.new and c.gone and not c.went_quiet:
                    moved = max(0.0, c.start_ns - mean_start)
                    run += moved
                    start -= moved
                    estimated += 1
        return run, start, estimated

    def summary(self) -> dict[str, Any]:
        seen = [c for c in self.containers.values() if c.found]
        run_ns, start_ns, estimated = self._estimated(seen)
        run, start = run_ns / 1e6, start_ns / 1e6
        total = run + start
        elapsed = getattr(self, "_elapsed", 0.0)
        parent = getattr(self, "_parent_ns", None)
        return {
            "method": "per-sandbox weights (run once the weight rose)"
            if self.weighted
            else "pause or quiet (run after the sandbox was first paused or quiet 300 ms)",
            "containers": len(seen),
            "containers_ran": sum(1 for c in seen if c.run_ns),
            "containers_split_by_mean_start": estimated,
            "run_cpu_ms": round(run, 1),
            "start_cpu_ms": round(start, 1),
            "run_share": round(run / total, 4) if total else None,
            "window_s": round(elapsed, 2),
            "sandboxes_cpu_pct_of_core": round(total / 10 / elapsed, 1) if elapsed else None,
            # Everything in cinch-sandboxes, ours or not (other servers on the machine too).
            "parent_group_cpu_ms": None if parent is None else round(parent / 1e6, 1),
            "note": self.available,
        }
