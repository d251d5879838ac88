"""The engine we start runs below the sandboxes' weight; the sandboxes' parent at the default.

Real cgroups (root, cgroupfs): a process started through the same pre-exec hook
that ``cinch setup`` gives dockerd is born in the engine's group, and so are its
children. In CI the engine is one ``cinch setup`` started, so its dockerd,
containerd and shims must be there too.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from pool._setup import (
    CGROUP_NAME,
    CGROUP_V1_SHARES,
    CGROUP_V2_WEIGHT,
    ENGINE_CGROUP_NAME,
    ENGINE_V1_SHARES,
    ENGINE_V2_WEIGHT,
    _dockerd_pid,
    _joiner,
    ensure_engine_cgroup,
)

ROOT = Path("/sys/fs/cgroup")
V2 = (ROOT / "cgroup.controllers").exists()


def _cpu_group(pid: int) -> str:
    """The process's CPU cgroup path (v1 ``cpu`` hierarchy, or the v2 one)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        ident, controllers, path = line.split(":", 2)
        if (V2 and ident == "0") or "cpu" in controllers.split(","):
            return path
    raise AssertionError(f"no cpu cgroup for {pid}")


def _weight(name: str) -> int:
    if V2:
        return int((ROOT / name / "cpu.weight").read_text())
    cpu = next(ROOT / n for n in ("cpu", "cpu,cpuacct") if (ROOT / n).is_dir())
    return int((cpu / name / "cpu.shares").read_text())


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")
def test_a_process_started_like_dockerd_is_born_in_the_engine_group() -> None:
    group = ensure_engine_cgroup(lambda _: None)
    if group is None:
        pytest.fail("this machine has no cgroupfs CPU controller for the engine's group")
    assert _weight(ENGINE_CGROUP_NAME) == (ENGINE_V2_WEIGHT if V2 else ENGINE_V1_SHARES)
    # A shell that starts a child: both must be in the group from their first instruction.
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 30 & wait"],
        preexec_fn=_joiner(group),  # what setup does for dockerd
        start_new_session=True,
    )
    try:
        assert _cpu_group(proc.pid) == f"/{ENGINE_CGROUP_NAME}"
        for _ in range(100):
            kids = _children(proc.pid)
            if kids:
                break
            time.sleep(0.02)
        assert kids, "the shell did not start its child"
        assert all(_cpu_group(k) == f"/{ENGINE_CGROUP_NAME}" for k in kids)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


@pytest.mark.gvisor
def test_the_engine_setup_started_is_weighted_below_the_sandboxes(engine_ready: bool) -> None:
    assert _weight(CGROUP_NAME) == (CGROUP_V2_WEIGHT if V2 else CGROUP_V1_SHARES)
    pid = _dockerd_pid()
    assert pid is not None, "no local dockerd"
    if os.environ.get("CI") != "true" and _cpu_group(pid) != f"/{ENGINE_CGROUP_NAME}":
        pytest.skip("this engine was not started by `cinch setup` (only CI guarantees it)")
    assert _cpu_group(pid) == f"/{ENGINE_CGROUP_NAME}"
    assert _weight(ENGINE_CGROUP_NAME) < _weight(CGROUP_NAME)
    containerd = [
        k for k in _children(pid) if Path(f"/proc/{k}/comm").read_text().strip() == "containerd"
    ]
    assert containerd, "dockerd has no containerd child"
    assert all(_cpu_group(k) == f"/{ENGINE_CGROUP_NAME}" for k in containerd)
