"""``python -m bench.many_hosts``: a warm hit through ``cinch api -> cinch agent`` vs ``cinch serve``.

Starts, on this machine, one PostgreSQL (pgserver) that both modes use, a
single-host ``cinch serve`` and a ``cinch agent`` behind one ``cinch api``,
each with one warm sandbox per language.  Then, per language, ABAB: one
request to single-host, one through the hop, ``--runs`` times each, with a
pause before each so that every run is warm.  Prints the client-side p50 and
p90 of each mode, the difference, and the api -> agent hop's p50 as the
router measured it (its call time less the agent's own share,
``cinch_agent_hop_p50_seconds``).

Numbers on a shared 2-core machine are noisy: the ABAB order puts both modes
under the same noise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx

from ._servers import free_port

ONE_SHOT = {"python": "print(2 + 2)", "javascript": "console.log(2 + 2)"}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _spawn(role: str, data_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / f"{role}.log", "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "api", role],
            env={**env, "CINCH_DATA_DIR": str(data_dir)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url}: not ready in {timeout_s:g}s")


def _key(env: dict[str, str], data_dir: Path, email: str) -> str:
    cli = [sys.executable, "-m", "api"]
    e = {**env, "CINCH_DATA_DIR": str(data_dir)}
    subprocess.run(
        [*cli, "account", "create", email, "--credits", "100000000"],
        env=e,
        check=True,
        capture_output=True,
        timeout=120,
    )
    out = subprocess.run(
        [*cli, "key", "create", email],
        env=e,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return next(w for w in out.split() if w.startswith("cinch_live_"))


def _wait_warm(client: httpx.Client, url: str, language: str, timeout_s: float = 20) -> None:
    """Until ``/readyz`` says a ``language`` sandbox is warm (for the API: on some agent)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            checks = client.get(url + "/readyz", timeout=5).json()["checks"]
            if checks[f"pool:{language}"]["ready"] > 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url}: no warm {language} sandbox within {timeout_s:g} s")


def _one_shot_ms(client: httpx.Client, url: str, key: str, language: str) -> float | None:
    """Client-side ms of one warm run (None if it waited for a sandbox after all)."""
    t0 = time.perf_counter()
    r = client.post(
        url + "/run",
        json={"code": ONE_SHOT[language], "language": language},
        headers={"Authorization": f"Bearer {key}"},
    )
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200 or r.json()["stdout"] != "4\n":
        raise RuntimeError(f"run failed: {r.status_code} {r.text[:300]}")
    if r.json()["queueMs"] > 5:
        return None
    return ms


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commits(database_url: str) -> int:
    import asyncio

    import asyncpg

    async def query() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(
                await conn.fetchval(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(query())


def central_cost(
    client: httpx.Client, api: str, key: str, pid: int, database_url: str, runs: int, pause_s: float
) -> str:
    """API CPU-ms and database transactions per run (warm Python runs, one at a time)."""
    # Idle baseline: heartbeats and polls cost something with no run at all.
    idle_s = runs * max(pause_s, 0.6)
    c0, x0 = _cpu_s(pid), _commits(database_url)
    time.sleep(idle_s)
    c1, x1 = _cpu_s(pid), _commits(database_url)
    for _ in range(runs):
        # No /readyz between runs here: its database and engine pings would count.
        time.sleep(max(pause_s, 0.6))
        _one_shot_ms(client, api, key, "python")
    c2, x2 = _cpu_s(pid), _commits(database_url)
    cpu_ms = ((c2 - c1) - (c1 - c0)) * 1000 / runs
    # The two pg_stat_database reads are transactions too (one per read).
    xacts = ((x2 - x1) - (x1 - x0)) / runs
    return (
        f"central cost per run: API {cpu_ms:.2f} CPU-ms, {xacts:.2f} database transactions "
        f"(n={runs}; idle background subtracted); ceiling per replica about "
        f"{1000 / cpu_ms if cpu_ms > 0 else float('inf'):.0f} runs/s of API CPU"
    )


def hop_floor(agent: str, token: str, pause_s: float) -> str:
    """The hop's HTTP floor: ``GET /v1/pool`` with the router's own client
    (``api._remote.AgentClient``), back to back and after ``pause_s`` of idle each.

    On this VM, code that ran a moment ago runs about 3x slower after some
    milliseconds of idle (cold caches), so the warm-hit bench, which pauses for
    the pool, sees the after-idle figure.
    """
    import trio

    from api._remote import AgentClient

    async def calls(n: int, pause: float) -> list[float]:
        client = AgentClient(agent, token)
        out = []
        try:
            for _ in range(n):
                if pause:
                    await trio.sleep(pause)
                t0 = time.perf_counter()
                await client.pool(5.0)
                out.append((time.perf_counter() - t0) * 1000)
        finally:
            await client.aclose()
        return out[5:]

    async def both() -> tuple[list[float], list[float]]:
        return await calls(205, 0.0), await calls(25, pause_s)

    hot, idle = trio.run(both)
    return (
        f"hop floor, GET /v1/pool through the router's client: back to back p50 "
        f"{statistics.median(hot):.2f} ms (n={len(hot)}); after {pause_s:g} s idle each p50 "
        f"{statistics.median(idle):.2f} ms (n={len(idle)})"
    )


def _metric(url: str, name: str) -> float | None:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="per mode and language")
    parser.add_argument("--pause-s", type=float, default=0.5, help="before each run (refill)")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="cinch-bench-hosts-") as tmp:
        base = Path(tmp)
        pg = pgserver.get_server(str(base / "pg"), cleanup_mode="stop")
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CINCH_")}
            common = {
                **env,
                "CINCH_DATABASE_URL": str(pg.get_uri()),
                "CINCH_HOST": "127.0.0.1",
                "CINCH_LOG_LEVEL": "WARNING",
                "CINCH_RATE_LIMIT_RPS": "10000",
                "CINCH_RATE_LIMIT_BURST": "10000",
                "CINCH_POOL_PYTHON": "1",
                "CINCH_POOL_JAVASCRIPT": "1",
                "CINCH_AGENT_TOKEN": secrets.token_urlsafe(24),
            }
            single_port, agent_port, api_port = free_port(), free_port(), free_port()
            key = _key(common, base / "serve", "bench-hosts@localhost")
            single = f"http://127.0.0.1:{single_port}"
            agent = f"http://127.0.0.1:{agent_port}"
            api = f"http://127.0.0.1:{api_port}"
            processes.append(
                _spawn("serve", base / "serve", {**common, "CINCH_PORT": str(single_port)})
            )
            processes.append(
                _spawn("agent", base / "agent", {**common, "CINCH_PORT": str(agent_port)})
            )
            for url, p in ((single, processes[0]), (agent, processes[1])):
                _wait_ready(url, p)
            processes.append(
                _spawn(
                    "api",
                    base / "api",
                    {
                        **common,
                        "CINCH_PORT": str(api_port),
                        "CINCH_AGENTS": f"127.0.0.1:{agent_port}",
                    },
                )
            )
            _wait_ready(api, processes[2])
            with httpx.Client(timeout=60) as client:
                for language in ("python", "javascript"):
                    a: list[float] = []
                    b: list[float] = []
                    cold = 0
                    for _ in range(args.runs):
                        for url, out in ((single, a), (api, b)):
                            time.sleep(args.pause_s)
                            _wait_warm(client, url, language)
                            ms = _one_shot_ms(client, url, key, language)
                            if ms is None:
                                cold += 1
                            else:
                                out.append(ms)
                    pa, pb = statistics.median(a), statistics.median(b)
                    print(
                        f"{language:10} warm hit p50: single host {pa:6.2f} ms (p90 "
                        f"{_pct(a, 0.9):6.2f}) | api -> agent {pb:6.2f} ms (p90 "
                        f"{_pct(b, 0.9):6.2f}) | difference {pb - pa:+6.2f} ms "
                        f"(n={len(a)}, {len(b)}; {cold} that waited for a sandbox left out)",
                        flush=True,
                    )
                for label, url, proc in (
                    ("cinch api (routing only)", api, processes[2]),
                    ("cinch serve (API + scheduler + pools)", single, processes[0]),
                ):
                    cost = central_cost(
                        client, url, key, proc.pid, str(pg.get_uri()), args.runs, args.pause_s
                    )
                    print(f"{label}: {cost}", flush=True)
            hop = _metric(api, "cinch_agent_hop_p50_seconds")
            if hop is not None:
                print(f"api -> agent hop p50 (router's view, last 512 calls): {hop * 1000:.2f} ms")
            print(hop_floor(agent, common["CINCH_AGENT_TOKEN"], args.pause_s), flush=True)
        finally:
            for p in reversed(processes):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(10)
            pg.cleanup()


if __name__ == "__main__":
    main()
