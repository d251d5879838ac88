"""The sandboxes' parent group stays below the control plane; runs outrank starts (fake cgroupfs)."""

from __future__ import annotations

from pathlib import Path

from pool._cgroups import V1_PARENT, V1_RUNNING, V1_STARTING, CpuWeights


def _weights(root: Path, *, idle_file: bool) -> tuple[CpuWeights, Path]:
    parent = root / "cpu" / "cinch-sandboxes"
    parent.mkdir(parents=True)
    (parent / "cpu.shares").write_text("999")
    if idle_file:
        (parent / "cpu.idle").write_text("0")
    weights = CpuWeights("/cinch-sandboxes", nano_cpus=1_000_000_000, root=root)
    assert weights.enabled, weights.disabled_reason
    return weights, parent


def test_a_parent_left_idle_is_made_normal_at_the_low_weight(tmp_path: Path) -> None:
    parent = tmp_path / "cpu" / "cinch-sandboxes"
    parent.mkdir(parents=True)
    (parent / "cpu.shares").write_text("3")
    (parent / "cpu.idle").write_text("1")
    CpuWeights("/cinch-sandboxes", nano_cpus=1_000_000_000, root=tmp_path)
    assert (parent / "cpu.idle").read_text() == "0"
    assert (parent / "cpu.shares").read_text() == str(V1_PARENT)


def test_without_cpu_idle_the_parent_gets_a_low_weight(tmp_path: Path) -> None:
    _, parent = _weights(tmp_path, idle_file=False)
    assert (parent / "cpu.shares").read_text() == str(V1_PARENT)
    assert not (parent / "cpu.idle").exists()


def test_a_run_outranks_starts_and_its_teardown_does_not(tmp_path: Path) -> None:
    weights, parent = _weights(tmp_path, idle_file=True)
    for cid in ("a", "b"):
        weights.prepare(cid)
    assert weights.weight("a") == V1_STARTING
    weights.set_running("a")
    assert weights.weight("a") == V1_RUNNING
    assert weights.weight("b") == V1_STARTING
    assert weights.statistics().running == 1
    weights.set_done("a")  # its teardown is background work again
    assert weights.weight("a") == V1_STARTING
    weights.set_done("a")  # twice is harmless
    assert weights.statistics().running == 0
    assert (parent / "cpu.shares").read_text() == str(V1_PARENT)  # never raised
