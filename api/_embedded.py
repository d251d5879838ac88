"""The embedded PostgreSQL, used when no ``CINCH_DATABASE_URL`` is set: our own supervision.

pgserver ships the PostgreSQL 16 binaries and we use them (``initdb``,
``pg_ctl``, ``postgres``), but not its handle bookkeeping: it records every
process that uses a data dir in ``pgdata/.handle_pids.json`` and stops the
server only when the last one leaves, so one ``kill -9`` leaves a dead pid
there and the server is never stopped again.  Here instead:

* Exactly one process owns the server of a data dir: the one holding an
  ``flock`` on ``<data_dir>/postgres.lock`` (the kernel drops it when the
  process dies, however it dies).  The owner starts the server, or adopts the
  one a killed owner left running, restarts it with back-off when it dies
  (:meth:`EmbeddedPostgres.supervise`), and stops it on a clean exit.
* Other processes (``cinch key create`` while ``cinch serve`` runs) connect
  to the running server and never stop it.
* The connection URI is read from ``postmaster.pid``: no TCP port, a unix
  socket in the data dir (or a short directory under /tmp when that path is
  too long for a socket).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import logging
import os
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import trio

log = logging.getLogger("cinch.store")

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; room for ".s.PGSQL.5432"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
CHECK_S = 0.5  # how often the owner looks at its server
BACKOFF_MAX_S = 10.0


class EmbeddedError(OSError):
    """The embedded server could not be started or reached (ours: the request gets 503)."""


class State(enum.Enum):
    UP = "up"
    DOWN = "down"
    STARTING = "starting"


@dataclass(frozen=True)
class EmbeddedStatistics:
    state: str
    owner: bool  # this process supervises the server
    pid: int | None
    restarts: int  # times the supervisor had to start it again


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _read_postmaster(pgdata: Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def _alive_postmaster(pgdata: Path) -> int | None:
    """The pid of the postmaster running on ``pgdata``, if any (checked against /proc)."""
    lines = _read_postmaster(pgdata)
    if not lines or not lines[0].strip().isdigit():
        return None
    pid = int(lines[0])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is dead
        return None
    return pid if b"postgres" in cmdline else None


class EmbeddedPostgres:
    """The PostgreSQL server under ``<data_dir>/pgdata``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pgdata"
        self.log_path = self.pgdata / "log"
        self._lock: IO[bytes] | None = None
        self._state = State.DOWN
        self._restarts = 0
        self._system_user: str | None = "pgserver" if os.geteuid() == 0 else None

    # -- blocking parts (run them in a thread) ---------------------------------------

    def open(self) -> str:
        """Own and start the server (or connect to the owner's); returns its URI."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.data_dir / "postgres.lock", "ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return self._uri_of_owner()
        self._lock = lock
        try:
            self._prepare()
            if _alive_postmaster(self.pgdata) is None:
                self._start()
            else:
                log.info("embedded database: adopting the server left running in %s", self.pgdata)
            self._state = State.UP
            return self._uri()
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Stop the server if we own it (a clean exit), then let go of it."""
        if self._lock is None:
            return
        try:
            if _alive_postmaster(self.pgdata) is not None:
                self._pg_ctl(["-w", "-t", str(STOP_TIMEOUT_S), "-m", "fast", "stop"])
        except (subprocess.SubprocessError, OSError) as exc:
            log.warning("embedded database: stop failed: %s", exc)
        finally:
            self._state = State.DOWN
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _uri_of_owner(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            lines = _read_postmaster(self.pgdata)
            if _alive_postmaster(self.pgdata) and lines and len(lines) > 7:
                if lines[7].strip() == "ready":
                    return self._uri()
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"the embedded database in {self.pgdata} is owned by another process "
                    "and is not running"
                )
            time.sleep(0.2)

    def _uri(self) -> str:
        lines = _read_postmaster(self.pgdata) or []
        if len(lines) < 5:
            raise EmbeddedError(f"no running server in {self.pgdata}")
        port, socket_dir = lines[3].strip(), lines[4].strip()
        return f"postgresql://postgres:@/postgres?host={socket_dir}&port={port}"

    def _socket_dir(self) -> Path:
        if len(str(self.pgdata / ".s.PGSQL.5432")) <= SOCKET_PATH_MAX:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata.resolve()).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"cinch-pg-{digest}"
        path.mkdir(mode=0o700, exist_ok=True)
        if self._system_user is not None:
            import shutil

            shutil.chown(path, self._system_user, self._system_user)
        return path

    def _prepare(self) -> None:
        """Create the cluster once; as root, for pgserver's unprivileged user (like pgserver)."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self._system_user is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from pgserver.utils import (
                    ensure_folder_permissions,
                    ensure_prefix_permissions,
                    ensure_user_exists,
                )
            import stat

            ensure_user_exists(self._system_user)
            ensure_prefix_permissions(self.pgdata)
            bin_dir = _bin_dir()
            ensure_prefix_permissions(bin_dir)
            read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(bin_dir, execute | read)
            ensure_folder_permissions(bin_dir.parent / "lib", read)
            import shutil

            shutil.chown(self.pgdata, self._system_user, self._system_user)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                "initdb",
                [
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--auth-local=trust",
                    "-E",
                    "utf8",
                    "-U",
                    "postgres",
                ],
                timeout_s=120,
            )

    def _start(self) -> None:
        options = f"-h '' -k {self._socket_dir()}"
        self._pg_ctl(
            ["-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_path), "-o", options, "start"]
        )

    def _pg_ctl(self, args: list[str]) -> None:
        self._run("pg_ctl", ["-D", str(self.pgdata), *args], timeout_s=START_TIMEOUT_S + 10)

    def _run(self, program: str, args: list[str], timeout_s: float) -> None:
        try:
            subprocess.run(
                [str(_bin_dir() / program), *args],
                check=True,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout_s,
                user=self._system_user,
                cwd=self.pgdata,
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode(errors="replace").strip()[-500:]
            raise EmbeddedError(f"{program} failed: {detail}") from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedError(f"{program} did not finish in {timeout_s:g} s") from exc

    def _restart_nowait(self) -> bool:
        """One start attempt; True when the server runs again."""
        if _alive_postmaster(self.pgdata) is not None:
            return True
        try:
            self._start()
        except EmbeddedError as exc:
            log.warning("embedded database: restart failed: %s", exc)
            return False
        return True

    # -- supervision -----------------------------------------------------------------

    def statistics(self) -> EmbeddedStatistics:
        pid = _alive_postmaster(self.pgdata)
        owner = self._lock is not None
        return EmbeddedStatistics(
            state=self._state.value if owner else (State.UP if pid else State.DOWN).value,
            owner=owner,
            pid=pid,
            restarts=self._restarts,
        )

    async def supervise(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """While we own the server: notice when it dies and start it again, with back-off."""
        task_status.started()
        if self._lock is None:
            return  # another process owns it (and supervises it)
        delay = CHECK_S
        while True:
            await trio.sleep(CHECK_S)
            if _alive_postmaster(self.pgdata) is not None:
                continue
            log.error("embedded database: the server in %s is down; restarting it", self.pgdata)
            self._state = State.DOWN
            delay = CHECK_S
            while True:
                self._state = State.STARTING
                with trio.CancelScope(shield=True):  # never leave a half-started server
                    ok = await trio.to_thread.run_sync(self._restart_nowait)
                if ok:
                    self._restarts += 1
                    self._state = State.UP
                    log.info("embedded database: running again (restart %d)", self._restarts)
                    break
                self._state = State.DOWN
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
