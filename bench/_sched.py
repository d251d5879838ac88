"""Scheduler-level measurements (no HTTP): runs, a sandbox's life phase by phase, idle cost."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any

import trio

from pool import DockerBackend, Exited, Gone, Output
from scheduler import NoCapacity, RunRequest, Scheduler, SchedulerError, Termination

from ._engine import TimedClient, open_scheduler, wait_pools_full
from ._model import Sample
from ._procs import COMPONENTS, CpuTracker, container_processes, cpu_ticks, memory_kb
from ._stats import summarize
from ._workloads import PRINT, Workload, check_output

PHASES = ("create", "start", "ready", "pause", "unpause", "run", "destroy", "gap")


class SchedulerTarget:
    """Runs through :meth:`scheduler.Scheduler.run`, timed by the caller."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def run(self, language: str, workload: Workload) -> Sample:
        t0 = time.perf_counter()
        try:
            result = await self.scheduler.run(
                RunRequest(language=language, code=workload.code[language])
            )
        except NoCapacity as exc:
            t1 = time.perf_counter()
            return Sample((t1 - t0) * 1000, "no-capacity", False, end_s=t1, detail=str(exc))
        except SchedulerError as exc:
            t1 = time.perf_counter()
            return Sample((t1 - t0) * 1000, type(exc).__name__, False, end_s=t1, detail=str(exc))
        t1 = time.perf_counter()
        status = "ok"
        detail = ""
        if result.termination is not Termination.EXITED or result.exit_code != 0:
            status = f"{result.termination.value}:{result.exit_code}"
            detail = result.stderr[-160:]
        elif not check_output(workload, result.stdout):
            status = "wrong-output"
        return Sample(
            (t1 - t0) * 1000,
            status,
            status == "ok",
            duration_ms=result.duration_ms,
            queue_ms=result.queue_ms,
            end_s=t1,
            detail=detail,
        )

    def warm_counters(self) -> tuple[int, int]:
        s = self.scheduler.statistics()
        return s.warm_hits_total, s.queued_runs_total


async def lifecycle_probe(
    socket_path: str,
    *,
    owner: str,
    language: str,
    image: str,
    runtime: str,
    cgroup_parent: str | None,
    lives: int,
    gap_s: float = 0.3,
) -> dict[str, Any]:
    """Sandbox lives one at a time, each step timed and its CPU counted per component.

    Phases: ``create`` (POST /containers/create), ``start`` (attach + start),
    ``ready`` (start returned -> the runner's ready frame), ``pause``, ``unpause``,
    ``run`` (print(2+2): code sent -> exit report), ``destroy`` (stream closed,
    kill + remove returned), ``gap`` (the next ``gap_s`` of quiet: teardown that
    trails the remove, plus the engine's background).
    """
    tracker = CpuTracker()
    client = TimedClient(socket_path)
    backend = DockerBackend(
        client, owner=owner, runtimes={language: runtime}, cgroup_parent=cgroup_parent
    )
    records: dict[str, list[dict[str, float]]] = defaultdict(list)
    t_prev = time.perf_counter()
    failures: list[str] = []

    def record(phase: str) -> None:
        nonlocal t_prev
        now = time.perf_counter()
        cpu = tracker.mark()
        records[phase].append({"wall_ms": (now - t_prev) * 1000, **cpu})
        t_prev = now

    def hook(call: str, cid: str) -> None:
        if call == "create":
            tracker.watch(cid)
            record("create")
        elif call == "start":
            record("start")

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(tracker.run_sampler)
            # As in `cinch serve` (destroy waits on it for a sandbox to stop by itself).
            await nursery.start(backend.watch_events)
            for _ in range(lives):
                await trio.sleep(gap_s)
                tracker.mark()
                t_prev = time.perf_counter()
                client.hook = hook
                sandbox = await backend.start_sandbox(language, image)
                client.hook = None
                record("ready")
                try:
                    await backend.pause(sandbox)
                    record("pause")
                    await backend.unpause(sandbox)
                    record("unpause")
                    stdout = b""
                    with trio.fail_after(20):
                        await sandbox.send_run(
                            PRINT.code[language].encode(), b"", os.urandom(16), 1 << 20
                        )
                        while True:
                            event = await sandbox.receive_event()
                            if isinstance(event, Output) and event.stream == "stdout":
                                stdout += event.data
                            elif isinstance(event, Exited | Gone):
                                break
                    record("run")
                    if stdout != b"4\n" or not isinstance(event, Exited):
                        failures.append(f"run gave {stdout[:40]!r} / {event!r}")
                finally:
                    with trio.CancelScope(shield=True):
                        await backend.destroy(sandbox)
                record("destroy")
                tracker.unwatch(sandbox.id)
                await trio.sleep(gap_s)
                record("gap")
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    phases: dict[str, Any] = {}
    for phase in PHASES:
        rows = records.get(phase, [])
        if not rows:
            continue
        phases[phase] = {
            "n": len(rows),
            "wall_ms": summarize(r["wall_ms"] for r in rows),
            "cpu_ms_mean": {
                k: round(sum(r[k] for r in rows) / len(rows), 2) for k in (*COMPONENTS, "machine")
            },
        }
    life = [k for k in PHASES if k in phases and k != "gap"]
    total = {
        k: round(sum(phases[p]["cpu_ms_mean"][k] for p in life), 2)
        for k in (*COMPONENTS, "machine")
    }
    return {
        "language": language,
        "runtime": runtime,
        "lives": lives,
        "gap_s": gap_s,
        "phases": phases,
        "life_cpu_ms_mean": total,
        "life_cpu_ms_mean_tracked": round(sum(total[k] for k in COMPONENTS), 2),
        "failures": failures,
    }


async def idle_cost(
    socket_path: str,
    *,
    owner: str,
    images: dict[str, str],
    runtimes: dict[str, str],
    sizes: dict[str, int],
    cgroup_parent: str | None,
    settle_s: float,
    window_s: float,
    start_concurrency: int,
) -> list[dict[str, Any]]:
    """PSS and CPU of full, idle pools, all up at once (each head ready, the rest paused).

    One row per language: the sum of PSS over every process of its sandboxes divided by
    their number, and their CPU over ``window_s``.  Pages shared by every sandbox (the
    runsc binary) are split over all the pools that are up, as in production.
    """
    client = TimedClient(socket_path)
    rows: list[dict[str, Any]] = []
    try:
        async with open_scheduler(
            client,
            owner=owner,
            images=images,
            runtimes=runtimes,
            pool_sizes=sizes,
            start_concurrency=start_concurrency,
            max_sandboxes=sum(sizes.values()) + 2,
            cgroup_parent=cgroup_parent,
        ) as wired:
            if not await wait_pools_full(wired.pools):
                return [
                    {"language": lang, "runtime": runtimes[lang], "error": "pool never filled"}
                    for lang in sizes
                ]
            await trio.sleep(settle_s)
            containers = await client.list_containers([f"cinch.owner={owner}"])
            states = {c["Id"]: c.get("State", "") for c in containers}
            language_of = {
                c["Id"]: c.get("Labels", {}).get("cinch.language", "") for c in containers
            }
            procs = container_processes(states)
            all_pids = [pid for p in procs.values() for pid in p]
            before = cpu_ticks(all_pids)
            t0 = time.perf_counter()
            await trio.sleep(window_s)
            after = cpu_ticks(all_pids)
            elapsed = time.perf_counter() - t0
            mem_by_pid = {pid: memory_kb(pid) or (0, 0) for pid in all_pids}
            pss_by_pid = {pid: m[0] for pid, m in mem_by_pid.items()}
            pss = {cid: sum(pss_by_pid[pid] for pid in p) for cid, p in procs.items()}
            uss = {cid: sum(mem_by_pid[pid][1] for pid in p) for cid, p in procs.items()}
    finally:
        await client.aclose()
    tck = os.sysconf("SC_CLK_TCK")
    for lang in sizes:
        per: list[dict[str, Any]] = []
        for cid, p in procs.items():
            if language_of.get(cid) != lang:
                continue
            used = sum(after.get(pid, 0) - before.get(pid, 0) for pid in p if pid in before)
            per.append(
                {
                    "id": cid[:12],
                    "state": states.get(cid, ""),
                    "processes": len(p),
                    "pss_mb": round(pss[cid] / 1024, 2),
                    "uss_mb": round(uss[cid] / 1024, 2),
                    "cpu_pct_of_core": round(used / tck / elapsed * 100, 3),
                }
            )
        n = len(per)
        by_kind: dict[str, float] = defaultdict(float)
        for cid, p in procs.items():
            if language_of.get(cid) == lang:
                for pid, kind in p.items():
                    by_kind[kind] += pss_by_pid[pid] / 1024
        by_state: dict[str, list[float]] = defaultdict(list)
        for row in per:
            by_state[row["state"]].append(row["cpu_pct_of_core"])
        rows.append(
            {
                "language": lang,
                "runtime": runtimes[lang],
                "sandboxes": n,
                "pools_up": {k: f"{sizes[k]} on {runtimes[k]}" for k in sizes},
                "pss_mb_per_sandbox": round(sum(r["pss_mb"] for r in per) / n, 2) if n else None,
                "uss_mb_per_sandbox": round(sum(r["uss_mb"] for r in per) / n, 2) if n else None,
                "pss_mb_per_sandbox_by_process": {
                    k: round(v / n, 2) for k, v in sorted(by_kind.items())
                }
                if n
                else {},
                "pool_cpu_pct_of_core": round(sum(r["cpu_pct_of_core"] for r in per), 3),
                "cpu_pct_of_core_by_state": {
                    k: round(sum(v) / len(v), 3) for k, v in sorted(by_state.items())
                },
                "window_s": round(window_s, 1),
                "per_sandbox": per,
            }
        )
    return rows
