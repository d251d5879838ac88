"""Runs outrank starts: each sandbox's own CPU cgroup, on real gVisor (issue 15).

The group is made before runsc starts, so the whole start runs at the lowest
weight; the weight binds only if runsc's sandbox and gofer processes (ptrace
platform) are inside it, which is what these tests check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from pool._cgroups import (
    V1_PARENT_IDLE,
    V1_PARENT_RUNNING,
    V1_RUNNING,
    V1_STARTING,
    V2_PARENT_IDLE,
    V2_PARENT_RUNNING,
    V2_RUNNING,
    V2_STARTING,
)
from scheduler import RunRequest
from tests.conftest import real_scheduler

pytestmark = [pytest.mark.gvisor]


def _cmdlines(group: Path) -> list[str]:
    """The command names of every process in ``group`` (v1 tasks / v2 cgroup.procs)."""
    names = []
    for line in (group / "cgroup.procs").read_text().split():
        try:
            raw = Path(f"/proc/{line}/cmdline").read_bytes()
        except OSError:
            continue
        names.append(os.path.basename(raw.split(b"\0")[0].decode(errors="replace")))
    return names


async def test_starting_sandboxes_are_weighted_low_and_runs_high(engine_ready: bool) -> None:
    async with real_scheduler(pool_size=1) as s:
        await s.pools["python"].wait_ready()
        weights = s.backend.weights
        if not weights.enabled:
            pytest.fail(f"CPU weights are off on this machine: {weights.disabled_reason}")
        low, high = (V2_STARTING, V2_RUNNING) if weights._v2 else (V1_STARTING, V1_RUNNING)
        parent_low, parent_high = (
            (V2_PARENT_IDLE, V2_PARENT_RUNNING)
            if weights._v2
            else (V1_PARENT_IDLE, V1_PARENT_RUNNING)
        )
        assert weights._dir is not None
        parent_file = weights._dir / ("cpu.weight" if weights._v2 else "cpu.shares")

        def parent() -> int:
            return int(parent_file.read_text())


        def idle(path: Path) -> str | None:
            flag = path / "cpu.idle"
            return flag.read_text().strip() if flag.exists() else None

        has_idle = idle(weights._dir) is not None

        def at_rest() -> bool:
            # An idle group reads back the kernel's idle weight (3), not the one written.
            if has_idle:
                return idle(weights._dir) == "1"
            return parent() == parent_low

        assert at_rest()  # only a warm sandbox: the parent at rest
        pool = s.pools["python"]
        (warm,) = list(pool._ready)
        group = weights.path(warm.id)
        assert group is not None
        assert group.is_dir()
        if has_idle:  # Linux 5.15+: starts are SCHED_IDLE, in the parent and among siblings
            assert idle(group) == "1"
        else:
            assert weights.weight(warm.id) == low
        # The runtime itself lives in the group: the weight binds under ptrace.
        names = _cmdlines(group)
        assert any(n.startswith("runsc") for n in names), names
        # The CPU limit, which runsc leaves to the owner of a pre-created group.
        if not weights._v2:
            quota = int((group / "cpu.cfs_quota_us").read_text())
            period = int((group / "cpu.cfs_period_us").read_text())
            assert quota / period == pytest.approx(1.0)

        seen: list[int | None] = []
        seen_idle: list[str | None] = []

        async def probe() -> None:
            await trio.sleep(0.3)
            seen.append(weights.weight(warm.id))
            seen.append(parent())
            if has_idle:
                seen_idle.extend([idle(group), idle(weights._dir)])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            result = await s.scheduler.run(
                RunRequest("python", "import time; time.sleep(0.6); print('ok')")
            )
        assert result.stdout == "ok\n"
        assert result.sandbox_id == warm.id
        assert seen == [high, parent_high]
        assert seen_idle == (["0", "0"] if has_idle else [])
        await s.scheduler.wait_destroyed()
        for _ in range(100):  # the destroy may not have begun yet
            if at_rest():
                break
            await trio.sleep(0.1)
        assert at_rest()  # the run is over: starts yield again
        # Removed with its container (runsc does not own it, so we must).
        for _ in range(100):
            if not group.exists():
                break
            await trio.sleep(0.1)
        assert not group.exists()
