"""Cinch servers the benchmark starts for itself: ``python -m api serve`` on a free loopback port.

Each gets its own data directory (and so its own embedded PostgreSQL, unless a
database URL is given), an account with plenty of credits and a key made with
the ``cinch`` CLI before the server starts, and rate limits high enough that
the limiter is not what gets measured.  Every ``CINCH_*`` variable of the
caller's environment is dropped, so only what is set here applies.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH_CREDITS = 100_000_000
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnServer:
    name: str
    base_url: str
    key: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_keys: list[str] = field(default_factory=list)  # one per other account

    @property
    def owner(self) -> str:
        """The ``cinch.owner`` label of this server's sandboxes (its instance id)."""
        try:
            return (self.data_dir / "instance-id").read_text().strip()
        except OSError:
            return ""

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "api", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cinch {' '.join(args)} failed: {result.stdout}{result.stderr}"[-3000:])
    return result.stdout


def start_server(
    name: str,
    workdir: Path,
    *,
    pool_python: int,
    pool_javascript: int,
    database_url: str = "",
    extra_env: dict[str, str] | None = None,
    extra_accounts: int = 0,
    cwd: Path | None = None,
) -> OwnServer:
    """Make an account and key (and ``extra_accounts`` more, a key each), then serve.

    ``cwd``: the checkout whose server runs (default: this process's directory).
    """
    data_dir = workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CINCH_")}
    env.update(
        {
            "CINCH_DATA_DIR": str(data_dir),
            "CINCH_HOST": "127.0.0.1",
            "CINCH_PORT": str(port),
            "CINCH_POOL_PYTHON": str(pool_python),
            "CINCH_POOL_JAVASCRIPT": str(pool_javascript),
            "CINCH_RATE_LIMIT_RPS": "10000",
            "CINCH_RATE_LIMIT_BURST": "10000",
            "CINCH_MAX_CONCURRENT_PER_KEY": "1024",
            "CINCH_LOG_LEVEL": "WARNING",
            "CINCH_PAYMENTS": "none",
            **({"CINCH_DATABASE_URL": database_url} if database_url else {}),
            **(extra_env or {}),
        }
    )
    email = f"bench-{name}@localhost"
    _cli(env, "account", "create", email, "--credits", str(BENCH_CREDITS), cwd=cwd)
    out = _cli(env, "key", "create", email, "--name", "bench", cwd=cwd)
    key = next((w for w in out.split() if w.startswith("cinch_live_")), "")
    if not key:
        raise RuntimeError(f"no key in `cinch key create` output: {out!r}")
    extra_keys: list[str] = []
    for i in range(extra_accounts):
        other = f"bench-{name}-{i + 1}@localhost"
        _cli(env, "account", "create", other, "--credits", str(BENCH_CREDITS))
        out = _cli(env, "key", "create", other, "--name", "bench")
        extra_keys += [w for w in out.split() if w.startswith("cinch_live_")][:1]
    log_path = data_dir / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
    server = OwnServer(
        name, f"http://127.0.0.1:{port}", key, data_dir, env, process, log_path, extra_keys
    )
    try:
        _wait_ready(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def _wait_ready(server: OwnServer) -> None:
    """Until ``/readyz`` says 200 (database, engine and every pool usable)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name}: cinch serve exited {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(server.base_url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{server.name}: not ready in {READY_TIMEOUT_S:g}s:\n{server.log_tail()}")


def stop_server(server: OwnServer, timeout_s: float = 30.0) -> int | None:
    """SIGTERM (the server drains and destroys its pools), then SIGKILL if it hangs."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)
    return server.process.returncode
