"""Per-sandbox CPU weights: runs outrank sandbox starts.

Every sandbox gets its own CPU cgroup under the sandboxes' parent group, made
*before* the engine starts the container. runsc finds it already there and puts
its sandbox and gofer processes in it (gVisor's cgroup code calls this "using a
pre-created cgroup"): the whole start, boot and warm-up of the runtime then run at
the lowest weight. When a run takes the sandbox, one write raises the weight so
the user's program outranks every start in progress. The parent group weighs
an eighth of the API, the engine and the database, so hostile programs cannot
starve the control plane. The group is ours (runsc
neither applies the CPU limit to a pre-created group nor removes it), so we write
the CPU quota ourselves and remove the directory once the container is gone.

Only the ``cgroupfs`` driver names cgroups by path (``/<parent>/<container id>``);
with the systemd driver, or without a CPU controller, weighting is off and
:attr:`CpuWeights.disabled_reason` says why.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import trio

log = logging.getLogger("cinch.pool")

# cgroup v1 cpu.shares: 2 is the kernel's floor, 1024 the default.
V1_STARTING = 2
V1_RUNNING = 8192
# cgroup v2 cpu.weight: 1 is the floor, 100 the default, 10000 the ceiling.
V2_STARTING = 1
V2_RUNNING = 10000
# The sandboxes' parent group, always below the API, the engine and the database:
# an eighth of the default weight. Raising it while runs were on gave a burst's
# runs lower charges but let sixteen hostile CPU hogs starve the control plane;
# making it SCHED_IDLE was not proven better (docs/load.md).
V1_PARENT = 128
V2_PARENT = 12
CFS_PERIOD_US = 100_000
FORGET_TIMEOUT_S = 10.0
# An empty sandbox group this old is not one being started (runsc joins it within
# a second or two of its making): its instance died before removing it.
ABANDONED_AFTER_S = 300.0


@dataclass(frozen=True)
class CpuWeightStatistics:
    enabled: bool
    disabled_reason: str
    prepared_total: int
    raised_total: int
    write_failures_total: int
    live: int
    running: int = 0


class CpuWeights:
    """Makes, weights and removes one CPU cgroup per sandbox container."""

    def __init__(
        self,
        parent: str | None,
        *,
        nano_cpus: int,
        enabled: bool = True,
        root: Path = Path("/sys/fs/cgroup"),
    ) -> None:
        self._nano_cpus = nano_cpus
        self._dir: Path | None = None
        self._v2 = False
        self.disabled_reason = ""
        self._prepared = 0
        self._raised = 0
        self._failures = 0
        self._live: set[str] = set()
        self._running: set[str] = set()
        if not enabled:
            self.disabled_reason = "turned off (CINCH_CPU_WEIGHTS=0)"
        elif not parent or not parent.startswith("/"):
            self.disabled_reason = f"cgroup parent {parent!r} is not a cgroupfs path"
        elif (root / "cgroup.controllers").exists():
            group = root / parent.strip("/")
            if (group / "cpu.weight").exists():
                self._dir, self._v2 = group, True
            else:
                self.disabled_reason = f"{group} has no cpu.weight (cpu controller not enabled)"
        else:
            group = root / "cpu" / parent.strip("/")
            if (group / "cpu.shares").exists():
                self._dir = group
            else:
                self.disabled_reason = f"{group} has no cpu.shares"
        if self._dir is not None:
            self._remove_abandoned()
            self._set_parent()

    @property
    def enabled(self) -> bool:
        return self._dir is not None

    def statistics(self) -> CpuWeightStatistics:
        return CpuWeightStatistics(
            enabled=self.enabled,
            disabled_reason=self.disabled_reason,
            prepared_total=self._prepared,
            raised_total=self._raised,
            write_failures_total=self._failures,
            live=len(self._live),
            running=len(self._running),
        )

    def path(self, cid: str) -> Path | None:
        return None if self._dir is None else self._dir / cid

    def prepare(self, cid: str) -> None:
        """Make ``cid``'s group at the lowest weight with the sandbox's CPU quota.

        Call after the container is created and before it is started. A failure
        only costs the weighting of this sandbox: it is logged, never raised.
        """
        group = self.path(cid)
        if group is None:
            return
        try:
            group.mkdir()
            self._live.add(cid)
            quota = max(1000, self._nano_cpus * CFS_PERIOD_US // 1_000_000_000)
            if self._v2:
                _write(group / "cpu.weight", V2_STARTING)
                (group / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            else:
                _write(group / "cpu.shares", V1_STARTING)
                _write(group / "cpu.cfs_period_us", CFS_PERIOD_US)
                _write(group / "cpu.cfs_quota_us", quota)
            self._prepared += 1
        except OSError as exc:
            self._failures += 1
            log.warning("cpu weight: could not prepare %s: %s", group, exc)

    def set_running(self, cid: str) -> None:
        """Raise ``cid`` to the running weight (one file write)."""
        group = self.path(cid)
        if group is None or cid not in self._live:
            return
        try:
            if self._v2:
                _write(group / "cpu.weight", V2_RUNNING)
            else:
                _write(group / "cpu.shares", V1_RUNNING)
            self._raised += 1
        except OSError as exc:
            self._failures += 1
            log.warning("cpu weight: could not raise %s: %s", group, exc)
            return
        self._running.add(cid)

    def set_done(self, cid: str) -> None:
        """``cid``'s run is over: its teardown is background work again (one write)."""
        if cid not in self._running:
            return
        self._running.discard(cid)
        group = self.path(cid)
        assert group is not None
        try:
            if self._v2:
                _write(group / "cpu.weight", V2_STARTING)
            else:
                _write(group / "cpu.shares", V1_STARTING)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                self._failures += 1
                log.warning("cpu weight: could not lower %s: %s", group, exc)

    def _remove_abandoned(self) -> None:
        """Remove empty sandbox groups older than a start: left by killed instances.

        A group another live instance has just made for a sandbox it is starting is
        empty too, but only for the moment before runsc joins it.
        """
        assert self._dir is not None
        cutoff = time.time() - ABANDONED_AFTER_S
        try:
            entries = list(os.scandir(self._dir))
        except OSError:
            return
        removed = 0
        for entry in entries:
            try:
                if (
                    entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < cutoff
                    and not Path(entry.path, "cgroup.procs").read_text().strip()
                ):
                    os.rmdir(entry.path)
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info(
                "cpu weight: removed %d empty sandbox groups left by earlier instances", removed
            )

    def _set_parent(self) -> None:
        """The parent below the control plane, at an eighth of the default weight.

        Not SCHED_IDLE: an idle parent (``cpu.idle``) was tried and is not proven
        better (docs/load.md); one left idle by such a build is made normal again
        first, since the kernel refuses a weight for an idle group.
        """
        assert self._dir is not None
        if self._v2:
            path, value = self._dir / "cpu.weight", V2_PARENT
        else:
            path, value = self._dir / "cpu.shares", V1_PARENT
        try:
            _set_idle(self._dir, False)
            _write(path, value)
        except OSError as exc:
            self._failures += 1
            log.warning("cpu weight: could not set %s: %s", path, exc)

    def weight(self, cid: str) -> int | None:
        """The group's current weight (for tests and diagnostics)."""
        group = self.path(cid)
        if group is None:
            return None
        try:
            name = "cpu.weight" if self._v2 else "cpu.shares"
            return int((group / name).read_text().strip())
        except (OSError, ValueError):
            return None

    async def forget(self, cid: str, *, known: bool = True) -> None:
        """Remove ``cid``'s group once the container is gone.

        runsc's processes may take a moment to leave it after the removal
        (EBUSY meanwhile): retried for up to ``FORGET_TIMEOUT_S``. ``known=False``
        is for a container of an earlier life of this instance (not made by this
        object): its group is removed if it exists.
        """
        self.set_done(cid)
        group = self.path(cid)
        if group is None or (known and cid not in self._live):
            return
        deadline = trio.current_time() + FORGET_TIMEOUT_S
        delay = 0.05
        while True:
            try:
                os.rmdir(group)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or trio.current_time() > deadline:
                    self._failures += 1
                    log.warning("cpu weight: could not remove %s: %s", group, exc)
                    break
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)
        self._live.discard(cid)


def _set_idle(group: Path, idle: bool) -> None:
    """SCHED_IDLE for the whole group (``cpu.idle``, Linux 5.15+), where the kernel has it."""
    path = group / "cpu.idle"
    if path.exists():
        path.write_text("1" if idle else "0")


def _write(path: Path, value: int) -> None:
    path.write_text(str(value))
