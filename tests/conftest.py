"""Shared fixtures: real engine, real Postgres, a live Cinch server.

Tests marked ``gvisor``, ``postgres`` or ``browser`` need real components.
Outside CI they skip with a reason when a component is missing; with
``CI=true`` a missing component fails the test instead (``.ci/run`` installs
and starts everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() == "true"
TEST_OWNER = f"cinch-test-{os.getpid()}-{secrets.token_hex(3)}"
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())


def run_asyncio(coro_fn: Any, *args: Any) -> Any:
    """Run an asyncio coroutine function to completion in a thread of its own.

    Works from sync code and from inside a Trio test alike (trio-asyncio's loop
    policy refuses ``asyncio.run`` in a thread that runs Trio).
    """
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn(*args))).result()


def need(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a real component is missing."""
    if condition:
        return
    if CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


# -- engine ----------------------------------------------------------------------------


def _engine_state() -> tuple[bool, str]:
    from pool import socket_path_from_env
    from pool._images import current_tags

    path = socket_path_from_env()
    try:
        import docker

        client = docker.DockerClient(base_url=f"unix://{path}", timeout=10)
        client.ping()
        runtimes = client.info().get("Runtimes", {})
        if "runsc-ptrace" not in runtimes or "runsc-systrap" not in runtimes:
            return False, "the runsc runtimes are not registered (run `cinch setup`)"
        for tag in current_tags().values():
            client.images.get(tag)
        client.close()
    except Exception as exc:  # any failure means "no usable engine here"
        return False, f"no usable Docker engine with runsc and current images ({exc})"
    return True, ""


@pytest.fixture(scope="session")
def engine_ready() -> bool:
    ok, reason = _engine_state()
    need(ok, reason)
    return True


@pytest.fixture(scope="session", autouse=True)
def _remove_test_containers() -> Iterator[None]:
    """After the session, remove exactly the containers the tests created."""
    yield
    with contextlib.suppress(Exception):
        import docker

        client = docker.from_env(timeout=30)
        for c in client.containers.list(all=True, filters={"label": f"cinch.owner={TEST_OWNER}"}):
            with contextlib.suppress(Exception):
                if c.status == "paused":
                    c.unpause()
                c.remove(force=True)
        client.close()


@dataclass
class Sandboxes:
    """A scheduler over real gVisor pools, for one test."""

    scheduler: Any
    pools: dict[str, Any]
    backend: Any
    client: Any


@contextlib.asynccontextmanager
async def real_scheduler(
    *, pool_size: int = 1, owner: str = TEST_OWNER, **scheduler_kw: Any
) -> AsyncIterator[Sandboxes]:
    """Pools wired exactly as ``cinch serve`` wires them (``open_pools``), per test."""
    from api._config import Config
    from api._pools import open_pools, sandbox_cgroup_parent
    from pool import DockerClient, socket_path_from_env
    from scheduler import SchedulerConfig

    config = Config.from_env(
        {},
        pool_python=pool_size,
        pool_javascript=pool_size,
        pool_max_python=pool_size,
        pool_max_javascript=pool_size,
        max_sandboxes=24,
    )
    client = DockerClient(socket_path_from_env())
    try:
        async with open_pools(
            config,
            client,
            owner=owner,
            cgroup_parent=await sandbox_cgroup_parent(client),
            sched_config=SchedulerConfig(**scheduler_kw),
        ) as wired:
            yield Sandboxes(wired.scheduler, wired.pools, wired.backend, client)
    finally:
        await client.aclose()


@pytest.fixture
async def sandboxes(engine_ready: bool) -> AsyncIterator[Sandboxes]:
    async with real_scheduler() as s:
        yield s


# -- postgres ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL for the session: CINCH_TEST_DATABASE_URL, or an embedded one."""
    url = os.environ.get("CINCH_TEST_DATABASE_URL")
    if url:
        yield url
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        need(False, "pgserver is not installed")
    data = tmp_path_factory.mktemp("pg")
    server = pgserver.get_server(str(data), cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def fresh_database(pg_url: str) -> str:
    """A new, empty database on the session's server; returns its URL."""
    import asyncpg

    name = "t_" + secrets.token_hex(6)

    async def create() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    run_asyncio(create)
    if "/postgres?" in pg_url:
        return pg_url.replace("/postgres?", f"/{name}?")
    base, _, query = pg_url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


@pytest.fixture
def database_url(pg_url: str) -> str:
    return fresh_database(pg_url)


# -- a live server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A real ``cinch serve`` process on loopback, with its own database and data dir."""

    base_url: str
    database_url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    def new_key(self, credits: int = 10_000) -> str:
        """A new account with ``credits`` credits; returns its API key."""
        return str(run_asyncio(self._new_key, credits))

    async def _new_key(self, credits: int) -> str:
        import asyncpg

        from api._store import hash_key, new_api_key

        key = new_api_key()
        conn = await asyncpg.connect(self.database_url)
        try:
            async with conn.transaction():
                account_id = await conn.fetchval(
                    "INSERT INTO accounts (email) VALUES ($1) RETURNING id",
                    f"test-{secrets.token_hex(6)}@example.com",
                )
                if credits:
                    await conn.execute(
                        "INSERT INTO ledger (account_id, amount, kind, ref) VALUES ($1, $2, 'grant', $3)",
                        account_id,
                        credits,
                        f"test:{account_id}",
                    )
                    await conn.execute(
                        "UPDATE accounts SET balance = $2 WHERE id = $1", account_id, credits
                    )
                await conn.execute(
                    "INSERT INTO api_keys (account_id, name, key_hash, last4) VALUES ($1, 'test', $2, $3)",
                    account_id,
                    hash_key(key),
                    key[-4:],
                )
        finally:
            await conn.close()
        return key

    def query(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        async def run() -> list[Any]:
            conn = await asyncpg.connect(self.database_url)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return list(run_asyncio(run))

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def start_live_server(database_url: str, data_dir: Path, **env_overrides: str) -> LiveServer:
    port = _free_port()
    env = {
        **os.environ,
        "CINCH_DATA_DIR": str(data_dir),
        "CINCH_DATABASE_URL": database_url,
        "CINCH_HOST": "127.0.0.1",
        "CINCH_PORT": str(port),
        "CINCH_POOL_PYTHON": "6",
        "CINCH_POOL_JAVASCRIPT": "6",
        "CINCH_START_CONCURRENCY": "3",
        # The test machine is shared and busy: a burst beyond the pools waits for
        # cold starts, which can take several seconds here.
        "CINCH_QUEUE_TIMEOUT_S": "30",
        "CINCH_PAYMENTS": "dev",
        "CINCH_SIGNUPS_PER_IP_PER_HOUR": "1000",
        # Every test client is 127.0.0.1: fuzzers and bad-key tests must not lock
        # out the others (the per-address limit has tests of its own).
        "CINCH_AUTH_FAILURES_BURST": "1000000",
        **env_overrides,
    }
    log_path = data_dir / "server.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )
    log.close()
    server = LiveServer(f"http://127.0.0.1:{port}", database_url, data_dir, process, log_path, env)
    try:
        wait_ready(server)
    except BaseException:
        stop_live_server(server)  # never leave a half-started server (and its sandboxes) behind
        raise
    return server


def wait_ready(server: LiveServer, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"cinch serve exited {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            r = httpx.get(server.base_url + "/readyz", timeout=2)
            body = r.json()
            pools_ok = all(
                v.get("ready", 0) > 0 or v.get("size") == 0
                for k, v in body.get("checks", {}).items()
                if k.startswith("pool:")
            )
            if r.status_code == 200 and pools_ok:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"cinch serve not ready in {timeout_s}s:\n{server.log_tail()}")


def stop_live_server(server: LiveServer, timeout_s: float = 20) -> int | None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)
    return server.process.returncode


@pytest.fixture(scope="session")
def cinch_live(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    ok, reason = _engine_state()
    need(ok, reason)
    data_dir = tmp_path_factory.mktemp("cinch-live")
    server = start_live_server(fresh_database(pg_url), data_dir)
    try:
        yield server
    finally:
        stop_live_server(server)


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    need(
        path is not None and shutil.which("chromedriver") is not None,
        "Debian chromium and chromium-driver are not installed",
    )
    assert path is not None
    return path
