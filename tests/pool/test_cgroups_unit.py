"""The sandboxes' parent weight follows whether any sandbox runs a program (fake cgroupfs)."""

from __future__ import annotations

from pathlib import Path

from pool._cgroups import V1_PARENT_IDLE, V1_PARENT_RUNNING, V1_RUNNING, CpuWeights


def _weights(root: Path) -> tuple[CpuWeights, Path]:
    parent = root / "cpu" / "cinch-sandboxes"
    parent.mkdir(parents=True)
    (parent / "cpu.shares").write_text("999")
    weights = CpuWeights("/cinch-sandboxes", nano_cpus=1_000_000_000, root=root)
    assert weights.enabled, weights.disabled_reason
    return weights, parent / "cpu.shares"


def test_the_parent_is_raised_while_any_sandbox_runs(tmp_path: Path) -> None:
    weights, shares = _weights(tmp_path)
    assert shares.read_text() == str(V1_PARENT_IDLE)  # reset at start: nobody runs
    for cid in ("a", "b"):
        weights.prepare(cid)
    weights.set_running("a")
    assert shares.read_text() == str(V1_PARENT_RUNNING)
    weights.set_running("b")
    weights.set_done("a")
    assert shares.read_text() == str(V1_PARENT_RUNNING)  # b still runs
    weights.set_done("b")
    assert shares.read_text() == str(V1_PARENT_IDLE)
    weights.set_done("b")  # twice is harmless
    assert weights.statistics().running == 0


def test_starts_are_sched_idle_and_runs_are_not(tmp_path: Path) -> None:
    weights, shares = _weights(tmp_path)
    parent_idle = shares.parent / "cpu.idle"
    parent_idle.write_text("0")  # the kernel's file exists: the flag is used
    weights._set_parent(running=False)
    assert parent_idle.read_text() == "1"
    weights.prepare("a")
    group = shares.parent / "a"
    # A fake group has no kernel files until written: give it the one a kernel makes.
    (group / "cpu.idle").write_text("0")
    weights.prepare("b")
    weights.set_done("a")  # not running: nothing changes
    assert (group / "cpu.idle").read_text() == "0"
    weights.set_running("a")
    assert (group / "cpu.idle").read_text() == "0"
    assert parent_idle.read_text() == "0"
    weights.set_done("a")
    assert (group / "cpu.idle").read_text() == "1"
    assert parent_idle.read_text() == "1"


def test_another_instances_run_keeps_the_parent_raised(tmp_path: Path) -> None:
    weights, shares = _weights(tmp_path)
    other = shares.parent / "theirs"
    other.mkdir()
    (other / "cpu.shares").write_text(str(V1_RUNNING))
    (other / "cgroup.procs").write_text("")  # left by a killed instance: no processes
    weights.prepare("a")
    weights.set_running("a")
    weights.set_done("a")
    assert shares.read_text() == str(V1_PARENT_IDLE)
    (other / "cgroup.procs").write_text("4242\n")  # a live instance's run
    weights.set_running("a")
    weights.set_done("a")
    assert shares.read_text() == str(V1_PARENT_RUNNING)
