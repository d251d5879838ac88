"""Host-side accounting from /proc: CPU time and PSS of the engine's and the sandboxes' processes.

CPU times come from ``/proc/<pid>/stat`` (utime + stime, the process's own
time, all threads; clock ticks, 10 ms on most kernels).  A sandbox's processes
are found by its container id: the containerd shim has it in its command line
(``-id <cid>``), so do the runsc processes (``runsc-sandbox``, ``runsc-gofer``
and every ``runsc`` command the shim runs); ptrace/systrap stubs are children
of the sandbox process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import trio

CLK_TCK = os.sysconf("SC_CLK_TCK")
COMPONENTS = ("dockerd", "containerd", "shim", "runsc")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    cpu_ticks: int  # utime + stime of the whole thread group


def read_proc(pid: int) -> ProcInfo | None:
    """``/proc/<pid>/stat``, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    left, _, right = raw.rpartition(")")
    comm = left.partition("(")[2]
    fields = right.split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    try:
        return ProcInfo(pid, int(fields[1]), comm, int(fields[11]) + int(fields[12]))
    except (IndexError, ValueError):
        return None


def read_cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def all_pids() -> set[int]:
    return {int(e) for e in os.listdir("/proc") if e.isdigit()}


def machine_busy_ticks() -> int:
    """CPU ticks spent on anything but idle and iowait, all cores, since boot."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(p) for p in parts[:8]]
    return sum(values) - values[3] - values[4]


def memory_kb(pid: int) -> tuple[int, int] | None:
    """``(PSS, USS)`` of a process in KiB, from ``/proc/<pid>/smaps_rollup``.

    PSS splits each shared page between the processes that map it; USS
    (private clean + private dirty) is what the process alone holds.
    """
    pss = uss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    uss += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return pss, uss


def pss_kb(pid: int) -> int | None:
    """Proportional set size of a process, in KiB."""
    mem = memory_kb(pid)
    return None if mem is None else mem[0]


def daemon_pids() -> dict[int, str]:
    """The engine's long-lived daemons: ``{pid: "dockerd" | "containerd"}``."""
    found: dict[int, str] = {}
    for pid in all_pids():
        info = read_proc(pid)
        if info is not None and info.comm in ("dockerd", "containerd"):
            found[pid] = info.comm
    return found


def container_processes(cids: Iterable[str]) -> dict[str, dict[int, str]]:
    """Every host process of each container: ``{cid: {pid: "shim" | "runsc"}}``.

    The shim and every process with the id in its command line, plus all
    their descendants (the stub processes of the ptrace/systrap platforms).
    """
    wanted = {cid: cid.encode() for cid in cids}
    infos: dict[int, ProcInfo] = {}
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        info = read_proc(pid)
        if info is None:
            continue
        infos[pid] = info
        children.setdefault(info.ppid, []).append(pid)
    result: dict[str, dict[int, str]] = {cid: {} for cid in wanted}
    for pid, info in infos.items():
        cmdline = read_cmdline(pid)
        for cid, needle in wanted.items():
            if needle in cmdline:
                kind = "shim" if info.comm.startswith("containerd-shim") else "runsc"
                result[cid][pid] = kind
    for procs in result.values():
        stack = list(procs)
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in procs:
                    procs[child] = "runsc"
                    stack.append(child)
    return result


def cpu_ticks(pids: Iterable[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        info = read_proc(pid)
        if info is not None:
            out[pid] = info.cpu_ticks
    return out


class CpuTracker:
    """CPU used by the engine's daemons and by watched containers, phase by phase.

    :meth:`sample` often (every 10 ms or so) to catch short-lived processes such
    as the ``runsc create``/``start``/``delete`` commands; :meth:`mark` ends a
    phase and returns the CPU milliseconds each component used in it.  A process
    that exits is counted up to its last sample, so up to one interval of its
    CPU can be missed; ``machine`` is the whole machine's busy time (all
    processes, including this benchmark and anything else running).
    """

    def __init__(self) -> None:
        self._tracked: dict[int, str] = daemon_pids()
        self._last: dict[int, int] = {}
        self._base: dict[int, int] = {}
        self._gone: set[int] = set()
        self._cids: set[bytes] = set()
        self._known: set[int] = all_pids()
        self._young: dict[int, int] = {}
        self.sample()
        self._base = dict(self._last)
        self._machine_base = machine_busy_ticks()

    def watch(self, cid: str) -> None:
        self._cids.add(cid.encode())

    def unwatch(self, cid: str) -> None:
        self._cids.discard(cid.encode())

    def _classify(self, pid: int) -> str | None:
        info = read_proc(pid)
        if info is None:
            return None
        if self._tracked.get(info.ppid) in ("shim", "runsc"):
            return "runsc"
        if not self._cids:
            return None
        cmdline = read_cmdline(pid)
        if any(c in cmdline for c in self._cids):
            return "shim" if info.comm.startswith("containerd-shim") else "runsc"
        return None

    def sample(self) -> None:
        pids = all_pids()
        for pid in pids - self._known:
            self._young[pid] = 10  # re-examined a few times: a fork execs a moment later
        self._known = pids
        for pid in list(self._young):
            kind = self._classify(pid) if pid in pids else None
            if kind is not None:
                self._tracked[pid] = kind
                del self._young[pid]
            else:
                self._young[pid] -= 1
                if self._young[pid] <= 0 or pid not in pids:
                    del self._young[pid]
        for pid in self._tracked:
            if pid in self._gone:
                continue
            info = read_proc(pid)
            if info is None:
                self._gone.add(pid)
            else:
                self._last[pid] = info.cpu_ticks

    def mark(self) -> dict[str, float]:
        """End a phase: CPU ms per component (and ``machine``) since the previous mark."""
        self.sample()
        ticks = dict.fromkeys(COMPONENTS, 0)
        for pid, kind in self._tracked.items():
            if pid in self._last:
                ticks[kind] += self._last[pid] - self._base.get(pid, 0)
        for pid in self._gone:
            self._tracked.pop(pid, None)
            self._last.pop(pid, None)
        self._gone.clear()
        self._base = dict(self._last)
        machine = machine_busy_ticks()
        out = {k: v * 1000 / CLK_TCK for k, v in ticks.items()}
        out["machine"] = (machine - self._machine_base) * 1000 / CLK_TCK
        self._machine_base = machine
        return out

    async def run_sampler(
        self,
        interval_s: float = 0.01,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        while True:
            self.sample()
            await trio.sleep(interval_s)
