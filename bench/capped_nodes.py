"""``python -m bench.capped_nodes``: runs/s with k = 1, 2, 3 CPU-capped nodes (docs/scale-out.md section 7).

A 2-core machine cannot show wall-clock scaling past 2 cores, so each node gets a
CPU cap: a network namespace with its own dockerd (the Swarm test bed's nodes,
``tests/swarm/testbed.py``), and that dockerd, its containerd and shims, every
sandbox (runsc's sandbox and gofer processes included: checked) and the node's
``cinch agent`` all in one cgroup of the node's own with a CFS quota of
``--cpu`` cores.  One ``cinch api`` (uncapped, in node 1's namespace, on an
embedded PostgreSQL) routes to the first k agents; a closed loop of
``--callers-per-node`` x k callers sends ``print(2 + 2)`` for ``--seconds`` and
counts the answers.  The loop never waits for the pools to refill: it is the
capacity shape (each answer is followed at once by the caller's next request).

Prints, per k: runs/s, the ratio to k = 1 (target >= 0.9 k), the 503s, the p50
and p99 latency, and each node's CPU (cpuacct) per run.  Needs root, the
engine and the images (``cinch setup``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests.swarm.testbed import Node, SwarmBed, in_netns

from .many_hosts import _key, _pct

AGENT_PORT = 8081
API_PORT = 8080
CGROUP = Path("/sys/fs/cgroup")


class NodeGroup:
    """The node's cgroup: cpu (quota) and cpuacct (usage), v1; or one v2 group."""

    def __init__(self, name: str, cpus: float) -> None:
        self.name = name
        self.v2 = (CGROUP / "cgroup.controllers").exists()
        if self.v2:
            self.dirs = [CGROUP / name]
        else:
            self.dirs = [CGROUP / "cpu" / name, CGROUP / "cpuacct" / name]
        self.cpus = cpus
        for d in self.dirs:
            d.mkdir(exist_ok=True)

    def cap(self) -> None:
        """Apply the quota (after the images are loaded: loading is not what is measured)."""
        period = 100_000
        if self.v2:
            (self.dirs[0] / "cpu.max").write_text(f"{int(self.cpus * period)} {period}")
        else:
            (self.dirs[0] / "cpu.cfs_period_us").write_text(str(period))
            (self.dirs[0] / "cpu.cfs_quota_us").write_text(str(int(self.cpus * period)))

    @property
    def parent(self) -> str:
        """For CINCH_CGROUP_PARENT: the sandboxes' containers go under this group."""
        return f"/{self.name}"

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside this group (and so every process it starts)."""
        joins = "; ".join(f"echo $$ > {d}/cgroup.procs" for d in self.dirs)
        return ["sh", "-c", f'{joins}; exec "$@"', "sh", *argv]

    def cpu_s(self) -> float:
        if self.v2:
            for line in (self.dirs[0] / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
            return 0.0
        return int((self.dirs[1] / "cpuacct.usage").read_text()) / 1e9

    def pids(self) -> set[int]:
        """Every process in the group or below it."""
        found: set[int] = set()
        for path in self.dirs[0].rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                found |= {int(p) for p in path.read_text().split()}
        return found

    def remove(self) -> None:
        for d in self.dirs:
            for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()


def _runsc_pids(node: Node) -> list[int]:
    """runsc processes (sandbox, gofer) of this node's engine: their command names its exec root."""
    needle = str(node.base).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"runsc" in cmd.split(b"\0")[0] and needle in cmd:
                    found.append(int(entry))
    return found


def _spawn_in(
    netns: str, group: NodeGroup | None, role: str, data_dir: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-m", "api", role]
    if group is not None:
        argv = group.wrap(argv)
    with open(data_dir / f"{role}.log", "ab") as log:
        return subprocess.Popen(
            argv,
            env={**env, "CINCH_DATA_DIR": str(data_dir)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _wait(netns: str, url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if in_netns(netns, lambda: httpx.get(url + "/readyz", timeout=2)).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url}: not ready in {timeout_s:g} s")


def _closed_loop(api: str, key: str, callers: int, seconds: float) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        end = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=callers)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:

            async def caller() -> None:
                while time.monotonic() < end:
                    t0 = time.monotonic()
                    try:
                        r = await client.post(api + "/run", json={"code": "print(2 + 2)"})
                        status = r.status_code
                    except httpx.HTTPError:
                        status = 0
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append(time.monotonic() - t0)
                    else:
                        await asyncio.sleep(0.2)

            t0 = time.monotonic()
            await asyncio.gather(*(caller() for _ in range(callers)))
            wall = time.monotonic() - t0
        return {"ok": len(latencies), "wall_s": wall, "statuses": statuses, "latencies": latencies}

    return asyncio.run(run())


def _runs_total(agents: list[str], token: str) -> list[int]:
    auth = {"Authorization": f"Bearer {token}"}
    return [
        int(httpx.get(a + "/v1/pool", headers=auth, timeout=5).json()["runsTotal"]) for a in agents
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="k runs from 1 to this")
    parser.add_argument("--cpu", type=float, default=0.5, help="cores per node (CFS quota)")
    parser.add_argument("--seconds", type=float, default=40, help="closed loop per k")
    parser.add_argument("--warmup-s", type=float, default=8, help="closed loop before each k")
    parser.add_argument("--callers-per-node", type=int, default=3)
    parser.add_argument("--pool", type=int, default=2, help="warm Python sandboxes per node")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.capped_nodes needs root (network namespaces, cgroups, dockerd)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    from pool import socket_path_from_env
    from pool._images import current_tags

    token = secrets.token_urlsafe(24)
    processes: list[subprocess.Popen[bytes]] = []
    groups: list[NodeGroup] = []
    bed = SwarmBed(f"ccn{os.getpid() % 100000}", Path("/tmp") / f"cinch-ccn{os.getpid() % 100000}")
    with tempfile.TemporaryDirectory(prefix="cinch-bench-capped-") as tmp:
        base = Path(tmp)
        pg = pgserver.get_server(str(base / "pg"), cleanup_mode="stop")
        try:
            bed._network(args.nodes)
            for node in bed.nodes:
                group = NodeGroup(f"{bed.prefix}-{node.name.rsplit('-', 1)[1]}", args.cpu)
                groups.append(group)
                node.start_engine(group.wrap)
            for node in bed.nodes:
                deadline = time.monotonic() + 120
                while not node.engine_answers():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{node.name}: dockerd did not start")
                    time.sleep(0.3)
            t0 = time.monotonic()
            bed.load_images(list(current_tags().values()), f"unix://{socket_path_from_env()}")
            print(
                f"images loaded on {args.nodes} nodes in {time.monotonic() - t0:.0f} s", flush=True
            )
            for group in groups:
                group.cap()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("CINCH_", "DOCKER_"))}
            common = {
                **env,
                "CINCH_DATABASE_URL": str(pg.get_uri()),
                "CINCH_LOG_LEVEL": "WARNING",
                "CINCH_AGENT_TOKEN": token,
                "CINCH_RATE_LIMIT_RPS": "10000",
                "CINCH_RATE_LIMIT_BURST": "10000",
                "CINCH_MAX_CONCURRENT_PER_KEY": "1000",
                "CINCH_QUEUE_TIMEOUT_S": "30",
            }
            agents = []
            for node, group in zip(bed.nodes, groups, strict=True):
                agent_env = {
                    **common,
                    "DOCKER_HOST": node.docker_host,
                    "CINCH_HOST": "0.0.0.0",
                    "CINCH_PORT": str(AGENT_PORT),
                    "CINCH_CGROUP_PARENT": group.parent,
                    "CINCH_CPU_WEIGHTS": "false",
                    # cgroup v1 refuses a child's quota above its parent's: a sandbox's own
                    # limit must fit inside the node's.
                    "CINCH_SANDBOX_CPUS": str(min(1.0, args.cpu)),
                    "CINCH_POOL_PYTHON": str(args.pool),
                    "CINCH_POOL_MAX_PYTHON": str(args.pool),
                    "CINCH_POOL_JAVASCRIPT": "0",
                    "CINCH_POOL_MAX_JAVASCRIPT": "0",
                    "CINCH_START_CONCURRENCY": "1",
                }
                processes.append(_spawn_in(node.name, group, "agent", base / node.name, agent_env))
                agents.append(f"http://{node.address}:{AGENT_PORT}")
            n1 = bed.nodes[0].name
            for url, p, node in zip(agents, processes, bed.nodes, strict=True):
                try:
                    _wait(n1, url, p, 180)
                except RuntimeError:
                    print((base / node.name / "agent.log").read_text()[-3000:], file=sys.stderr)
                    raise
            key = _key(common, base / "api", "bench-capped@localhost")
            # Every sandbox process of a node must be in its capped group.
            time.sleep(2)
            for node, group in zip(bed.nodes, groups, strict=True):
                runsc = _runsc_pids(node)
                outside = [p for p in runsc if p not in group.pids()]
                print(
                    f"{node.name}: {len(runsc)} runsc processes, {len(outside)} outside "
                    f"{group.dirs[0]}",
                    flush=True,
                )
                if not runsc or outside:
                    raise RuntimeError(f"{node.name}: runsc processes outside the capped group")
            rows = []
            for k in range(1, args.nodes + 1):
                api_env = {
                    **common,
                    "CINCH_HOST": "127.0.0.1",
                    "CINCH_PORT": str(API_PORT),
                    "CINCH_AGENTS": ",".join(a.removeprefix("http://") for a in agents[:k]),
                }
                api_proc = _spawn_in(n1, None, "api", base / "api", api_env)
                try:
                    api = f"http://127.0.0.1:{API_PORT}"
                    _wait(n1, api, api_proc, 60)
                    callers = args.callers_per_node * k
                    in_netns(n1, partial(_closed_loop, api, key, callers, args.warmup_s))
                    cpu0 = [g.cpu_s() for g in groups]
                    runs0 = in_netns(n1, lambda: _runs_total(agents, token))
                    result = in_netns(n1, partial(_closed_loop, api, key, callers, args.seconds))
                    cpu1 = [g.cpu_s() for g in groups]
                    runs1 = in_netns(n1, lambda: _runs_total(agents, token))
                finally:
                    api_proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        api_proc.wait(30)
                    if api_proc.poll() is None:
                        api_proc.kill()
                        api_proc.wait(10)
                rate = result["ok"] / result["wall_s"]
                lat = result["latencies"] or [0.0]
                served = [b - a for a, b in zip(runs0, runs1, strict=True)][:k]
                per_node = [
                    round((c1 - c0) * 1000 / max(1, n))
                    for c0, c1, n in zip(cpu0[:k], cpu1[:k], served, strict=True)
                ]
                rows.append((k, rate))
                print(
                    f"k={k}: {rate:5.2f} runs/s ({result['ok']} in {result['wall_s']:.0f} s, "
                    f"{callers} callers) ratio to k=1 {rate / rows[0][1]:4.2f} (target >= "
                    f"{0.9 * k:.1f}); statuses {result['statuses']}; p50 "
                    f"{statistics.median(lat) * 1000:.0f} ms, p99 {_pct(lat, 0.99) * 1000:.0f} ms; "
                    f"runs per node {served}, node CPU-ms per run {per_node} (cap {args.cpu} cores)",
                    flush=True,
                )
        finally:
            for p in reversed(processes):
                if p.poll() is None:
                    p.terminate()
            for p in reversed(processes):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(30)
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            bed.remove()
            for g in groups:
                g.remove()
            pg.cleanup()


if __name__ == "__main__":
    main()
