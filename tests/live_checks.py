"""Checks shared by the security, fault, overload and fuzz tests against live servers.

Everything here talks to real components: the HTTP API over loopback, the
server's own database, the Docker engine and the host's ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

RUN_TIMEOUT_S = 60.0  # client-side ceiling for one /run (server limit is about 10 s)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: httpx.Headers
    elapsed_s: float


def post_run(
    base_url: str,
    key: str,
    code: str,
    language: str = "python",
    *,
    stdin: str | None = None,
    timeout_s: float = RUN_TIMEOUT_S,
    retry_503: int = 0,
) -> Answer:
    """One ``POST /run``; on 503, retry up to ``retry_503`` times after ``Retry-After``."""
    body: dict[str, Any] = {"code": code, "language": language}
    if stdin is not None:
        body["stdin"] = stdin
    for attempt in range(retry_503 + 1):
        t0 = time.monotonic()
        r = httpx.post(
            base_url + "/run",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
        )
        elapsed = time.monotonic() - t0
        if r.status_code == 503 and attempt < retry_503:
            time.sleep(min(5.0, float(r.headers.get("Retry-After", "1"))))
            continue
        return Answer(r.status_code, r.json(), r.headers, elapsed)
    raise AssertionError("unreachable")


def instance_id(data_dir: Path) -> str:
    return (data_dir / "instance-id").read_text().strip()


def ledger_mismatches(server: Any) -> list[Any]:
    """Accounts whose balance is not the sum of their ledger rows, or is negative."""
    return list(
        server.query(
            "SELECT a.id, a.balance, COALESCE(sum(l.amount), 0) AS total FROM accounts a "
            "LEFT JOIN ledger l ON l.account_id = a.id GROUP BY a.id "
            "HAVING a.balance <> COALESCE(sum(l.amount), 0) OR a.balance < 0"
        )
    )


SERVED_TWICE = (
    "SELECT sandbox_id, count(*) AS runs FROM runs WHERE sandbox_id IS NOT NULL "
    "GROUP BY sandbox_id HAVING count(*) > 1"
)


def sandboxes_served_twice(server: Any) -> list[Any]:
    """Sandboxes that the runs table says served more than one run (there must be none)."""
    return list(server.query(SERVED_TWICE))


def docker_client() -> Any:
    import docker

    from pool import socket_path_from_env

    return docker.DockerClient(base_url=f"unix://{socket_path_from_env()}", timeout=30)


def containers_of(owner: str, *, client: Any = None, all_states: bool = True) -> list[Any]:
    """Containers labelled ``cinch.owner=<owner>`` on the engine."""
    own = client is None
    client = client or docker_client()
    try:
        return list(
            # ignore_removed: one removed between the engine's list and docker-py's
            # inspect of each entry is simply gone, not an error.
            client.containers.list(
                all=all_states, filters={"label": f"cinch.owner={owner}"}, ignore_removed=True
            )
        )
    finally:
        if own:
            client.close()


def container_ids_seen(owner: str, since: float, *, client: Any = None) -> set[str]:
    """Every container of ``owner`` the engine reported an event for since ``since``."""
    own = client is None
    client = client or docker_client()
    try:
        events = client.events(
            since=int(since) - 1,
            until=int(time.time()) + 1,
            filters={"type": "container", "label": f"cinch.owner={owner}"},
            decode=True,
        )
        ids = set()
        try:
            for event in events:
                cid = event.get("id") or event.get("Actor", {}).get("ID", "")
                if cid:
                    ids.add(cid)
        finally:
            events.close()
        return ids
    finally:
        if own:
            client.close()


def runsc_processes(container_ids: Iterable[str]) -> list[tuple[int, str]]:
    """Host processes of runsc (sandbox, gofer, ...) whose command line names one of the ids."""
    needles = [cid.encode() for cid in container_ids if cid]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if not cmdline.startswith(b"runsc"):
            continue
        if any(n in cmdline for n in needles):
            found.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]))
    return found


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout_s`` passes (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def assert_no_leftovers(owner: str, seen_ids: set[str], *, timeout_s: float = 60) -> None:
    """No container of ``owner`` and no runsc process of any of ``seen_ids`` remains."""
    assert wait_until(lambda: not containers_of(owner), timeout_s), [
        (c.short_id, c.status) for c in containers_of(owner)
    ]
    assert wait_until(lambda: not runsc_processes(seen_ids), timeout_s), runsc_processes(seen_ids)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
