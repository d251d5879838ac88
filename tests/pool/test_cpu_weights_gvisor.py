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

from pool._cgroups import V1_PARENT, V1_RUNNING, V1_STARTING, V2_PARENT, V2_RUNNING, V2_STARTING
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
        pool = s.pools["python"]
        (warm,) = list(pool._ready)
        group = weights.path(warm.id)
        assert group is not None
        assert group.is_dir()
        assert weights._dir is not None
        idle_flag = weights._dir / "cpu.idle"

        def below_control_plane() -> bool:
            if idle_flag.exists() and idle_flag.read_text().strip() != "0":
                return False  # an idle group's weight is not the one written
            name = "cpu.weight" if weights._v2 else "cpu.shares"
            return int((weights._dir / name).read_text()) == (
                V2_PARENT if weights._v2 else V1_PARENT
            )

        assert below_control_plane()
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
        seen_below: list[bool] = []

        async def probe() -> None:
            await trio.sleep(0.3)
            seen.append(weights.weight(warm.id))
            seen_below.append(below_control_plane())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            result = await s.scheduler.run(
                RunRequest("python", "import time; time.sleep(0.6); print('ok')")
            )
        assert result.stdout == "ok\n"
        assert result.sandbox_id == warm.id
        assert seen == [high]
        assert seen_below == [True]  # even while a program runs
        await s.scheduler.wait_destroyed()
        # Removed with its container (runsc does not own it, so we must).
        for _ in range(100):
            if not group.exists():
                break
            await trio.sleep(0.1)
        assert not group.exists()
