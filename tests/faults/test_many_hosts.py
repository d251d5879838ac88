"""Many hosts on one machine: three ``cinch agent`` processes and two ``cinch api`` replicas.

Everything is real: each agent drives the machine's engine with runsc sandboxes
under its own data dir (so its own instance id and ``cinch.owner`` label), the
replicas share one real PostgreSQL (a fresh database on the tests' server), and
every call is HTTP over loopback.  The agents stand in for hosts; the
multi-node Swarm test bed of docs/scale-out.md section 6 is not used here.

One cluster serves the whole module (starting it is most of the cost); the
drills that break a process restart it before they end.  Each drill ends with
the ledger invariants of docs/scale-out.md section 8, checked in SQL.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, LiveServer, _engine_state, _free_port, fresh_database, need
from tests.live_checks import (
    Answer,
    containers_of,
    instance_id,
    ledger_mismatches,
    runsc_processes,
    sandboxes_served_twice,
    wait_until,
)

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]

TOKEN = secrets.token_urlsafe(24)
# Small pools: three agents share this 2-core machine with everyone else.
AGENT_ENV = {
    "CINCH_POOL_PYTHON": "2",
    "CINCH_POOL_MAX_PYTHON": "2",
    "CINCH_POOL_JAVASCRIPT": "0",
    "CINCH_POOL_MAX_JAVASCRIPT": "1",
    "CINCH_START_CONCURRENCY": "1",
    "CINCH_QUEUE_TIMEOUT_S": "30",
}
API_ENV = {
    "CINCH_QUEUE_TIMEOUT_S": "30",
    "CINCH_AUTH_FAILURES_BURST": "1000000",
    "CINCH_AGENT_POLL_S": "0.25",
    # Counted in the database: both replicas together allow 3 runs of a key at once.
    "CINCH_MAX_CONCURRENT_PER_KEY": "3",
    # The defaults, spelled out: the rate test counts against them.
    "CINCH_RATE_LIMIT_RPS": "50",
    "CINCH_RATE_LIMIT_BURST": "100",
}


@dataclass
class Role:
    """One ``cinch agent`` or ``cinch api`` process."""

    role: str
    url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.role}.log"

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def spawn(role: str, data_dir: Path, env: dict[str, str], port: int | None = None) -> Role:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    full = {
        **os.environ,
        "CINCH_DATA_DIR": str(data_dir),
        "CINCH_HOST": "127.0.0.1",
        "CINCH_PORT": str(port),
        "CINCH_AGENT_TOKEN": TOKEN,
        **env,
    }
    with open(data_dir / f"{role}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api", role],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
    return Role(role, f"http://127.0.0.1:{port}", data_dir, env, process)


def respawn(old: Role) -> Role:
    return spawn(old.role, old.data_dir, old.env, port=int(old.url.rsplit(":", 1)[1]))


def ready(proc: Role) -> bool:
    if proc.process.poll() is not None:
        raise RuntimeError(f"{proc.role} exited {proc.process.returncode}:\n{proc.log_tail()}")
    try:
        return httpx.get(proc.url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(proc: Role, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready(proc):
            return
        time.sleep(0.2)
    raise AssertionError(f"{proc.role} at {proc.url} not ready:\n{proc.log_tail()}")


def pool_of(agent: Role) -> dict[str, Any]:
    r = httpx.get(agent.url + "/v1/pool", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    r.raise_for_status()
    return dict(r.json())


def agent_views(api: Role) -> dict[str, bool]:
    """``url -> up`` as this replica's router sees its agents (from /readyz)."""
    body = httpx.get(api.url + "/readyz", timeout=2).json()
    return {a["url"]: a["up"] for a in body["checks"]["agents"]["agents"]}


@dataclass
class Cluster:
    agents: list[Role]
    apis: list[Role]
    database_url: str

    @property
    def db(self) -> LiveServer:
        """For the SQL helpers (query, new_key) the live-server tests use."""
        a = self.apis[0]
        return LiveServer(a.url, self.database_url, a.data_dir, a.process, a.log_path, a.env)

    def owners(self) -> list[str]:
        return [instance_id(a.data_dir) for a in self.agents]

    def runs_per_agent(self) -> list[int]:
        return [int(pool_of(a)["runsTotal"]) for a in self.agents]


@pytest.fixture(scope="module")
def cluster(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ok, reason = _engine_state()
    need(ok, reason)
    base = tmp_path_factory.mktemp("many-hosts")
    database_url = fresh_database(pg_url)
    agents: list[Role] = []
    apis: list[Role] = []
    c = Cluster(agents, apis, database_url)
    try:
        for i in range(3):
            agents.append(spawn("agent", base / f"agent{i}", AGENT_ENV))
        for a in agents:
            wait_ready(a)
        members = ",".join(a.url.removeprefix("http://") for a in agents)
        for j in range(2):
            apis.append(
                spawn(
                    "api",
                    base / f"api{j}",
                    {**API_ENV, "CINCH_DATABASE_URL": database_url, "CINCH_AGENTS": members},
                )
            )
        for a in apis:
            wait_ready(a)
        yield c
    finally:
        for p in [*apis, *agents]:
            with contextlib.suppress(Exception):
                p.stop()
        # Every agent destroys its sandboxes on a clean stop: nothing of theirs is left.
        for a in agents:
            with contextlib.suppress(OSError):
                owner = instance_id(a.data_dir)
                assert wait_until(lambda owner=owner: not containers_of(owner), 60), owner


def post(
    api: Role, key: str, code: str, language: str = "python", **headers: str
) -> Answer | Exception:
    t0 = time.monotonic()
    try:
        r = httpx.post(
            api.url + "/run",
            json={"code": code, "language": language},
            headers={"Authorization": f"Bearer {key}", **headers},
            timeout=60,
        )
    except (httpx.HTTPError, OSError) as exc:
        return exc
    return Answer(r.status_code, r.json(), r.headers, time.monotonic() - t0)


def assert_ledger(c: Cluster, keys: str | list[str], answers: list[Answer | Exception]) -> None:
    """docs/scale-out.md section 8: balances are sums of rows; every charge has a delivered
    result (and every delivered result its charge); no hold is left behind."""
    from api._store import hash_key

    assert ledger_mismatches(c.db) == []
    assert sandboxes_served_twice(c.db) == []
    rows = c.db.query(
        "SELECT l.ref, -l.amount AS credits FROM ledger l JOIN api_keys k "
        "ON k.account_id = l.account_id WHERE k.key_hash = ANY($1) AND l.kind = 'charge'",
        [hash_key(k) for k in ([keys] if isinstance(keys, str) else keys)],
    )
    charged = {r["ref"]: int(r["credits"]) for r in rows}
    delivered = {
        a.headers["X-Request-Id"]: a.body["creditsCharged"]
        for a in answers
        if isinstance(a, Answer)
        and a.status == 200
        and a.body["creditsCharged"] > 0
        and a.headers.get("Idempotent-Replayed") != "true"  # a replay charges nothing
    }
    assert charged == delivered
    assert wait_until(lambda: not c.db.query("SELECT id FROM holds"), 15), c.db.query(
        "SELECT * FROM holds"
    )


# -- routing -----------------------------------------------------------------------------------


def test_runs_are_routed_across_agents_through_both_replicas(cluster: Cluster) -> None:
    key = cluster.db.new_key(1_000_000)
    before = cluster.runs_per_agent()
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(post, cluster.apis[i % 2], key, f"print({i} * 2)") for i in range(12)
        ]
        answers = [f.result(timeout=120) for f in futures]
    for i, a in enumerate(answers):
        assert isinstance(a, Answer), a
        assert a.status == 200, a.body
        assert a.body["stdout"] == f"{i * 2}\n"
    served = [n - b for n, b in zip(cluster.runs_per_agent(), before, strict=True)]
    assert sum(served) == 12, served
    assert sum(1 for n in served if n) >= 2, f"one agent served everything: {served}"
    # No JavaScript sandbox is kept warm anywhere: the run queues on one agent and waits
    # for a cold start there.
    js = post(cluster.apis[0], key, "console.log(6 * 7)", "javascript")
    assert isinstance(js, Answer)
    assert js.status == 200, js.body
    assert js.body["stdout"] == "42\n"
    assert_ledger(cluster, key, [*answers, js])


def test_idempotency_key_holds_across_replicas(cluster: Cluster) -> None:
    key = cluster.db.new_key(1_000_000)
    idem = {"Idempotency-Key": "k-" + secrets.token_hex(4)}
    code = "import time\ntime.sleep(1)\nprint('once')"
    # The same key at both replicas at once: one runs, the other waits and replays it.
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(post, api, key, code, **idem) for api in cluster.apis]
        answers = [f.result(timeout=120) for f in futures]
    assert all(isinstance(a, Answer) and a.status == 200 for a in answers), answers
    typed = [a for a in answers if isinstance(a, Answer)]
    assert {a.body["stdout"] for a in typed} == {"once\n"}
    assert sorted(a.headers.get("Idempotent-Replayed", "") for a in typed) == ["", "true"]
    assert len({a.headers["X-Request-Id"] for a in typed}) == 2
    from api._store import hash_key

    charges = cluster.db.query(
        "SELECT l.ref FROM ledger l JOIN api_keys k ON k.account_id = l.account_id "
        "WHERE k.key_hash = $1 AND l.kind = 'charge'",
        hash_key(key),
    )
    assert len(charges) == 1
    assert ledger_mismatches(cluster.db) == []


def test_per_key_concurrency_holds_across_replicas(cluster: Cluster) -> None:
    key = cluster.db.new_key(1_000_000)
    code = "import time\ntime.sleep(2)\nprint('in')"
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, cluster.apis[i % 2], key, code) for i in range(4)]
        answers = [f.result(timeout=120) for f in futures]
    statuses = sorted(a.status if isinstance(a, Answer) else -1 for a in answers)
    # Each replica alone would allow 3; together they allow 3, not 6.
    assert statuses == [200, 200, 200, 429], answers
    limited = next(a for a in answers if isinstance(a, Answer) and a.status == 429)
    assert limited.headers["Retry-After"] == "1"
    assert_ledger(cluster, key, answers)


def test_per_key_rate_limit_holds_across_replicas(cluster: Cluster) -> None:
    """The replicas count each other and each allows its share of the key's rate: two
    together let through what one would (burst + rate x elapsed), not twice that."""
    key = cluster.db.new_key(0)  # every admitted request is a 402: no sandbox needed
    # Both replicas have heartbeated and counted each other (every 2 s).
    wait_until(lambda: all(_replicas_seen(a) == 2 for a in cluster.apis), 15)
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer(api: Role) -> None:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            for _ in range(100):
                r = client.post(
                    "/run", json={"code": "print(1)"}, headers={"Authorization": f"Bearer {key}"}
                )
                with lock:
                    statuses.append(r.status_code)

    t0 = time.monotonic()
    threads = [threading.Thread(target=hammer, args=(cluster.apis[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    counts = {s: statuses.count(s) for s in set(statuses)}
    assert set(counts) <= {402, 429}, counts
    rate = float(API_ENV["CINCH_RATE_LIMIT_RPS"])
    burst = int(API_ENV["CINCH_RATE_LIMIT_BURST"])
    # One replica's allowance for the whole key, plus a token of rounding per replica.
    assert counts.get(402, 0) <= burst + rate * elapsed + 2, (counts, elapsed)
    assert counts.get(429, 0) > 0, counts


def _replicas_seen(api: Role) -> int:
    """How many live replicas this replica counts (its RateLimit-Limit is burst / n)."""
    body = httpx.get(api.url + "/metrics", timeout=5).text
    for line in body.splitlines():
        if line.startswith("cinch_api_replicas "):
            return int(float(line.split()[1]))
    return 0


# -- drills ----------------------------------------------------------------------------------


def test_api_replica_killed_mid_run(cluster: Cluster) -> None:
    """kill -9 a replica mid-run: its client gets a connection error; the agent stops the
    orphaned run; a retry with the same Idempotency-Key at the other replica runs once
    and is charged once; the dead replica's hold is released when it restarts."""
    key = cluster.db.new_key(1_000_000)
    idem = {"Idempotency-Key": "k-" + secrets.token_hex(4)}
    victim, survivor = cluster.apis[1], cluster.apis[0]
    victim_id = instance_id(victim.data_dir)
    code = "import time\nprint('started', flush=True)\ntime.sleep(3)\nprint('woke')"
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(post, victim, key, code, **idem)
        assert wait_until(
            lambda: any(pool_of(a)["languages"]["python"]["inFlight"] for a in cluster.agents),
            30,
            0.05,
        )
        victim.kill9()
        lost = future.result(timeout=60)
    assert isinstance(lost, Exception), lost
    # The agent noticed its caller went and stopped the run: nothing runs any more.
    assert wait_until(
        lambda: not any(pool_of(a)["languages"]["python"]["inFlight"] for a in cluster.agents),
        10,
        0.1,
    )
    held = cluster.db.query(
        "SELECT expires_at > now() + interval '70 seconds' AS too_long FROM holds "
        "WHERE instance_id = $1",
        victim_id,
    )
    assert [r["too_long"] for r in held] in ([], [False]), held  # bounded by its expiry
    # The other replica takes the claim over once the dead one stops heartbeating.
    retry = post(survivor, key, code, **idem)
    assert isinstance(retry, Answer)
    assert retry.status == 200, retry.body
    assert retry.body["stdout"] == "started\nwoke\n"
    again = post(survivor, key, code, **idem)
    assert isinstance(again, Answer)
    assert again.headers.get("Idempotent-Replayed") == "true"
    # Restarted on its data dir, the replica releases its own holds at once.
    cluster.apis[1] = respawn(victim)
    wait_ready(cluster.apis[1])
    assert cluster.db.query("SELECT id FROM holds WHERE instance_id = $1", victim_id) == []
    assert_ledger(cluster, key, [retry, again])


def test_agent_kill_9_under_load(cluster: Cluster) -> None:
    """kill -9 one agent under a closed loop of runs through both replicas.

    Runs in flight on it are retried once elsewhere (or 503); both replicas route
    around it within 1 s; no credit is lost or invented; restarted on its data
    dir, it removes the sandboxes the dead process left."""
    keys = [cluster.db.new_key(10_000_000) for _ in range(4)]
    victim = cluster.agents[0]
    owner = instance_id(victim.data_dir)
    stop_at = time.monotonic() + 9.0
    answers: list[Answer | Exception] = []
    lock = threading.Lock()

    def loop(worker: int) -> None:
        i = 0
        while time.monotonic() < stop_at and i < 200:
            a = post(cluster.apis[(worker + i) % 2], keys[worker], f"print({i})")
            with lock:
                answers.append(a)
            i += 1

    noticed: dict[str, float] = {}
    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(loop, w) for w in range(4)]
        time.sleep(3.0)
        left_behind = {c.id for c in containers_of(owner)}
        t_kill = time.monotonic()
        victim.kill9()
        deadline = t_kill + 5
        while len(noticed) < len(cluster.apis) and time.monotonic() < deadline:
            for api in cluster.apis:
                if api.url not in noticed:
                    with contextlib.suppress(httpx.HTTPError):
                        if agent_views(api).get(victim.url) is False:
                            noticed[api.url] = time.monotonic() - t_kill
            time.sleep(0.02)
        for w in workers:
            w.result(timeout=120)
    failed = [a for a in answers if not (isinstance(a, Answer) and a.status == 200)]
    ok = [a for a in answers if isinstance(a, Answer) and a.status == 200]
    print(
        f"\nagent kill -9: {len(answers)} requests, {len(failed)} failed "
        f"({[a.status if isinstance(a, Answer) else repr(a) for a in failed][:5]}), "
        f"routed around after {sorted(round(s, 3) for s in noticed.values())} s"
    )
    assert len(noticed) == len(cluster.apis), f"not routed around within 5 s: {noticed}"
    assert max(noticed.values()) <= 1.0, noticed
    # A failed request may only be a 503 with Retry-After (its one retry also failed).
    for a in failed:
        assert isinstance(a, Answer), a
        assert a.status == 503, a.body
        assert "Retry-After" in a.headers
    assert len(failed) <= 2, failed
    assert len(ok) >= 10
    assert_ledger(cluster, keys, answers)
    # The engine would restart it; here the test does, on the same data dir.
    assert left_behind, "the agent should have had warm sandboxes"
    cluster.agents[0] = respawn(victim)
    wait_ready(cluster.agents[0])
    assert wait_until(lambda: not (left_behind & {c.id for c in containers_of(owner)}), 60), (
        "the restarted agent did not remove its dead process's sandboxes"
    )
    assert wait_until(lambda: not runsc_processes(left_behind), 60)
    # And both replicas route to it again.
    assert wait_until(
        lambda: all(agent_views(api).get(victim.url) for api in cluster.apis), 10, 0.1
    )
