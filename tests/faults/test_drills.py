"""Fault drills against real servers: kill the API, lose Postgres, kill a sandbox, restart the engine.

Each drill runs a dedicated ``cinch serve`` with small pools and its own data
directory and database, breaks something while runs are in flight, and ends
with the same checks: the ledger balanced (every balance is the sum of its
ledger rows), no container of the server's instance left, and no ``runsc``
process naming one of its containers.  The engine drill runs its own
``dockerd`` (own socket, data root and exec root) so that other users of the
machine's engine are never disturbed; it is last in this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    LiveServer,
    _engine_state,
    fresh_database,
    need,
    start_live_server,
    stop_live_server,
)
from tests.live_checks import (
    Answer,
    assert_no_leftovers,
    container_ids_seen,
    containers_of,
    docker_client,
    instance_id,
    ledger_mismatches,
    post_run,
    runsc_processes,
    wait_until,
)

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]

SMALL_POOLS = {
    "CINCH_POOL_PYTHON": "2",
    "CINCH_POOL_JAVASCRIPT": "1",
    "CINCH_QUEUE_TIMEOUT_S": "3",
}
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(__S__)\nprint('woke')\n"


def sleeper(seconds: float) -> str:
    return SLEEPER.replace("__S__", str(seconds))


@pytest.fixture
def engine() -> None:
    ok, reason = _engine_state()
    need(ok, reason)


def in_flight(server: LiveServer) -> float:
    metrics = httpx.get(server.base_url + "/metrics", timeout=5).text
    for line in metrics.splitlines():
        if line.startswith("cinch_runs_in_flight "):
            return float(line.split()[1])
    return 0.0


def wait_warm(server: LiveServer, python: int) -> None:
    """Wait until ``python`` warm Python sandboxes are ready (runs in flight start at once)."""

    def warm() -> bool:
        checks = httpx.get(server.base_url + "/readyz", timeout=5).json()["checks"]
        return int(checks["pool:python"]["ready"]) >= python

    assert wait_until(warm, 90), "the pool did not refill"


def wait_in_flight(server: LiveServer, n: int, timeout_s: float = 60) -> None:
    assert wait_until(lambda: in_flight(server) >= n, timeout_s), f"{n} runs never got going"


def send_runs(
    pool: ThreadPoolExecutor, server: LiveServer, key: str, code: str, n: int, **kw: Any
) -> list[Future[Answer]]:
    return [pool.submit(post_run, server.base_url, key, code, "python", **kw) for _ in range(n)]


def outcome(future: Future[Answer]) -> Answer | Exception:
    try:
        return future.result(timeout=120)
    except (httpx.HTTPError, OSError) as exc:
        return exc


def charges(server: LiveServer, account_key: str) -> dict[str, int]:
    """``run id -> credits`` of every charge row of the key's account."""
    from api._store import hash_key

    rows = server.query(
        "SELECT l.ref, -l.amount AS credits FROM ledger l JOIN api_keys k "
        "ON k.account_id = l.account_id WHERE k.key_hash = $1 AND l.kind = 'charge'",
        hash_key(account_key),
    )
    return {r["ref"]: int(r["credits"]) for r in rows}


def assert_charged_exactly(server: LiveServer, key: str, answers: list[Answer]) -> None:
    """Every 200 has its charge row; nothing else was charged (no free run, no phantom)."""
    expected = {
        a.headers["X-Request-Id"]: a.body["creditsCharged"]
        for a in answers
        if a.status == 200 and a.body["creditsCharged"] > 0
    }
    assert charges(server, key) == expected


def end_of_drill(
    server: LiveServer,
    owner: str,
    since: float,
    client: Any = None,
    also_seen: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Stop the server, then: ledger balanced, no container and no runsc process left."""
    code = stop_live_server(server)
    assert code == 0, f"cinch serve exited {code}:\n{server.log_tail()}"
    assert ledger_mismatches(server) == []
    seen = container_ids_seen(owner, since, client=client) | set(also_seen)
    assert seen, "the drill should have made containers"
    if client is None:
        assert_no_leftovers(owner, seen)
    else:
        left = lambda: [(c.short_id, c.status) for c in containers_of(owner, client=client)]  # noqa: E731
        assert wait_until(lambda: not left(), 60), f"{left()}\n{server.log_tail()}"
        assert wait_until(lambda: not runsc_processes(seen), 60), runsc_processes(seen)


@contextlib.contextmanager
def live_server(database_url: str, data_dir: Path, **env: str) -> Iterator[LiveServer]:
    server = start_live_server(database_url, data_dir, **{**SMALL_POOLS, **env})
    try:
        yield server
    finally:
        stop_live_server(server)


# -- (a) kill -9 the API during runs, restart it on the same data dir ------------------------


def test_kill_9_the_api_during_runs_and_restart(engine: None, pg_url: str, tmp_path: Path) -> None:
    database_url = fresh_database(pg_url)
    since = time.time()
    server = start_live_server(database_url, tmp_path, **SMALL_POOLS)
    owner = instance_id(tmp_path)
    try:
        key = server.new_key(1_000_000)
        first = post_run(server.base_url, key, "print(1)")
        assert first.status == 200
        wait_warm(server, 2)
        with ThreadPoolExecutor(2) as pool:
            futures = send_runs(pool, server, key, sleeper(20), 2)
            wait_in_flight(server, 2)
            holds = server.query("SELECT count(*) AS n FROM holds")[0]["n"]
            assert holds == 2
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
            killed = [outcome(f) for f in futures]
        # The clients lost their connections; none of them got an answer.
        assert all(isinstance(o, Exception) for o in killed), killed
        before_restart = {c.id for c in containers_of(owner)}
        assert before_restart, "a killed API leaves its sandboxes behind until it restarts"
    finally:
        stop_live_server(server)

    server = start_live_server(database_url, tmp_path, **SMALL_POOLS)
    try:
        assert instance_id(tmp_path) == owner
        # At start-up the instance removed its own leftovers and released its holds.
        live_now = {c.id for c in containers_of(owner)}
        assert not (before_restart & live_now), before_restart & live_now
        assert server.query("SELECT count(*) AS n FROM holds")[0]["n"] == 0
        after = post_run(server.base_url, key, "print(2)", retry_503=5)
        assert after.status == 200
        assert after.body["stdout"] == "2\n"
        # Only the two answered runs were charged; the killed ones were not.
        assert_charged_exactly(server, key, [first, after])
    finally:
        end_of_drill(server, owner, since)


# -- (c) stop Postgres during runs ------------------------------------------------------------


@dataclass
class OwnPostgres:
    """A PostgreSQL server of this drill only (pgserver), stoppable and restartable."""

    pgdata: Path
    server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        self.server = pgserver.get_server(str(self.pgdata), cleanup_mode="stop")
        return str(self.server.get_uri())

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


def test_postgres_stops_during_runs(engine: None, tmp_path: Path) -> None:
    pg = OwnPostgres(tmp_path / "pg")
    uri = pg.start()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    since = time.time()
    try:
        database_url = fresh_database(uri)
        server = start_live_server(database_url, data_dir, **SMALL_POOLS)
        owner = instance_id(data_dir)
        answers: list[Answer] = []
        try:
            key = server.new_key(1_000_000)
            answers.append(post_run(server.base_url, key, "print(1)"))
            assert answers[0].status == 200

            wait_warm(server, 2)
            with ThreadPoolExecutor(2) as pool:
                futures = send_runs(pool, server, key, sleeper(2), 2)
                wait_in_flight(server, 2)
                pg.stop()
                during = [post_run(server.base_url, key, "print(3)") for _ in range(3)]
                in_flight_then = [outcome(f) for f in futures]
            # New runs are refused with 503 and Retry-After while the database is gone.
            for a in during:
                assert a.status == 503, a.body
                assert "Retry-After" in a.headers
            # A run in flight when the database went away cannot be charged: it gets 503,
            # never a free 200 (a 200 here would have to have its charge row, checked below).
            for o in in_flight_then:
                assert isinstance(o, Answer), o
                assert o.status in (200, 503), o.body
                if o.status == 503:
                    assert "Retry-After" in o.headers
            answers += [o for o in in_flight_then if isinstance(o, Answer)] + during

            assert pg.start() == uri
            ready = wait_until(
                lambda: httpx.get(server.base_url + "/readyz", timeout=5).status_code == 200, 60
            )
            assert ready, httpx.get(server.base_url + "/readyz", timeout=5).text
            # The service recovers by itself: the same key runs again.
            back = post_run(server.base_url, key, "print(4)", retry_503=5)
            assert back.status == 200, back.body
            assert back.body["stdout"] == "4\n"
            answers.append(back)
            assert_charged_exactly(server, key, answers)
        finally:
            end_of_drill(server, owner, since)
    finally:
        pg.stop()


# -- (d) a sandbox killed from outside mid-run ------------------------------------------------


def test_sandbox_killed_from_outside_mid_run(engine: None, pg_url: str, tmp_path: Path) -> None:
    database_url = fresh_database(pg_url)
    since = time.time()
    with live_server(database_url, tmp_path, CINCH_POOL_PYTHON="1") as server:
        owner = instance_id(tmp_path)
        key = server.new_key(1_000_000)
        client = docker_client()
        try:
            filters = {"label": [f"cinch.owner={owner}", "cinch.language=python"]}
            assert wait_until(
                lambda: len(client.containers.list(filters={**filters, "status": "running"})) == 1,
                60,
            )
            (warm,) = client.containers.list(filters={**filters, "status": "running"})
            with ThreadPoolExecutor(1) as pool:
                (future,) = send_runs(pool, server, key, sleeper(30), 1)
                wait_in_flight(server, 1)
                # The one warm sandbox was taken by the run: kill it from outside.
                warm.reload()
                assert warm.status == "running"
                warm.kill()
                killed = future.result(timeout=60)
        finally:
            client.close()
        assert killed.status == 200, killed.body
        assert killed.body["termination"] == "sandbox_error", killed.body
        assert killed.body["exitCode"] == -1
        assert killed.body["creditsCharged"] == 0
        run_row = server.query(
            "SELECT credits_charged FROM runs WHERE id = $1", killed.headers["X-Request-Id"]
        )
        assert [r["credits_charged"] for r in run_row] == [0]
        after = post_run(server.base_url, key, "print('still here')", retry_503=5)
        assert after.status == 200
        assert after.body["stdout"] == "still here\n"
        assert_charged_exactly(server, key, [killed, after])
    end_of_drill(server, owner, since)


# -- (b) restart the Docker engine during runs (last: it takes longest) -------------------------


class PrivateEngine:
    """A dockerd of this drill only: own socket, data root, exec root and containerd.

    Started the way ``cinch setup`` starts one (the same daemon config, a
    ``--host`` socket), plus the flags that keep it apart from the machine's
    own engine.  ``stop`` sends SIGTERM, like an engine restart would.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "docker.sock"
        self.process: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)
        config = json.loads(Path("/etc/docker/daemon.json").read_text())
        (base / "daemon.json").write_text(json.dumps(config))

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        args = [
            "dockerd",
            f"--config-file={self.base / 'daemon.json'}",
            f"--host={self.url}",
            f"--data-root={self.base / 'data'}",
            f"--exec-root={self.base / 'exec'}",
            f"--pidfile={self.base / 'docker.pid'}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--shutdown-timeout=2",
        ]
        with open(self.base / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        assert wait_until(self.answers, 90), (self.base / "dockerd.log").read_text()[-2000:]

    def answers(self) -> bool:
        # A plain socket: the docker SDK and httpx both leak theirs when a connect fails.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            try:
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return s.recv(64).split(b" ", 2)[1:2] == [b"200"]
            except OSError:
                return False

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.url, timeout=120, version="1.41")

    def load_images(self, tags: list[str]) -> None:
        main, own = docker_client(), self.client()
        try:
            for tag in tags:
                archive = main.images.get(tag).save(chunk_size=1 << 20, named=True)
                for _ in own.api.load_image(archive):  # a stream: read it to the end
                    pass
                own.images.get(tag)
        finally:
            main.close()
            own.close()

    def stop(self, signo: int = signal.SIGTERM) -> None:
        """Send ``signo`` (SIGTERM: an orderly restart, SIGKILL: a crash) and wait."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signo)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def cleanup(self) -> None:
        """Stop it and everything it started; remove its directory."""
        self.stop()
        pid_file = self.base / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        needle = str(self.base).encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    if needle in cmdline and (
                        cmdline.startswith(b"runsc") or b"containerd-shim" in cmdline
                    ):
                        os.kill(int(entry), signal.SIGKILL)
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.base))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "crash"])
def test_docker_engine_restarts_during_runs(
    engine: None, pg_url: str, tmp_path: Path, signo: int
) -> None:
    from pool._images import current_tags

    private = PrivateEngine(Path("/tmp") / f"cinch-drill-{os.getpid()}-{time.monotonic_ns()}")
    try:
        private.start()
        private.load_images(list(current_tags().values()))
        since = time.time()
        server = start_live_server(
            fresh_database(pg_url), tmp_path, DOCKER_HOST=private.url, **SMALL_POOLS
        )
        owner = instance_id(tmp_path)
        answers: list[Answer] = []
        seen_before: set[str] = set()
        try:
            key = server.new_key(1_000_000)
            answers.append(post_run(server.base_url, key, "print(1)"))
            assert answers[0].status == 200
            wait_warm(server, 2)
            with ThreadPoolExecutor(2) as pool:
                futures = send_runs(pool, server, key, sleeper(30), 2)
                wait_in_flight(server, 2)
                # The engine forgets its events when it stops: note the ids first.
                own = private.client()
                try:
                    seen_before = {c.id for c in containers_of(owner, client=own)}
                finally:
                    own.close()
                private.stop(signo)
                in_flight_then = [outcome(f) for f in futures]
            # In-flight runs end as our failure, free, or as 503: never charged.
            for o in in_flight_then:
                assert isinstance(o, Answer), o
                if o.status == 200:
                    assert o.body["termination"] == "sandbox_error", o.body
                    assert o.body["exitCode"] == -1
                    assert o.body["creditsCharged"] == 0
                else:
                    assert o.status == 503, o.body
                    assert "Retry-After" in o.headers
            answers += [o for o in in_flight_then if isinstance(o, Answer)]
            # While the engine is down: no run, no charge.
            down = post_run(server.base_url, key, "print(2)")
            assert down.status in (200, 503), down.body
            if down.status == 200:
                assert down.body["termination"] == "sandbox_error", down.body
                assert down.body["creditsCharged"] == 0
            answers.append(down)

            private.start()
            # The pools refill by themselves once the engine is back.
            assert wait_until(lambda: _pools_ready(server), 180, 1.0), httpx.get(
                server.base_url + "/readyz", timeout=5
            ).text
            back = post_run(server.base_url, key, "print(3)", retry_503=5)
            assert back.status == 200, back.body
            assert back.body["stdout"] == "3\n"
            answers.append(back)
            assert_charged_exactly(server, key, answers)
        finally:
            own = private.client() if private.process and private.process.poll() is None else None
            try:
                if own is not None:
                    end_of_drill(server, owner, since, client=own, also_seen=seen_before)
                else:
                    stop_live_server(server)
            finally:
                if own is not None:
                    own.close()
    finally:
        private.cleanup()


def _pools_ready(server: LiveServer) -> bool:
    r = httpx.get(server.base_url + "/readyz", timeout=5)
    checks = r.json()["checks"]
    return r.status_code == 200 and all(
        v.get("ready", 0) > 0 for k, v in checks.items() if k.startswith("pool:")
    )
