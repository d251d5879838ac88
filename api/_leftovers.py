"""Containers of dead Cinch instances: find them, report them, remove them.

Every sandbox carries ``cinch.owner`` (the instance id) and, made by ``cinch
serve``, ``cinch.data-dir`` (the data dir that instance id belongs to).  An
instance holds an ``flock`` on ``<data dir>/instance.lock`` while it lives
(:class:`pool.Instance`), and the kernel drops it when the process dies, so an
owner is **proven dead** when its data dir is on this machine and either no
process holds that lock or the dir now belongs to another instance id.  Only
proven-dead owners' containers are removed (at start-up of any instance, and
by ``cinch cleanup``).  An owner without the label, or whose data dir is not
visible here (another mount namespace), is ``unknown``: reported, never removed
unless named (``cinch cleanup --owner ID``), and a live one never.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pool import OWNER_LABEL, DockerBackend, DockerClient

DATA_DIR_LABEL = "cinch.data-dir"


@dataclass(frozen=True)
class Owner:
    """One instance id that has containers on the engine, and what we know of it."""

    id: str
    data_dir: str | None
    containers: tuple[str, ...]
    status: str  # "alive", "dead" or "unknown"
    reason: str


def _locks_held() -> set[tuple[int, int, int]]:
    """``(major, minor, inode)`` of every file some process holds an flock on."""
    held: set[tuple[int, int, int]] = set()
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return held
    for line in lines:
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[-1] != "->":
            try:
                major, minor, inode = parts[5].split(":")
                held.add((int(major, 16), int(minor, 16), int(inode)))
            except ValueError:
                continue
    return held


def judge(owner: str, data_dir: str | None, held: set[tuple[int, int, int]]) -> tuple[str, str]:
    """``(status, reason)`` of ``owner``, whose containers name ``data_dir``."""
    if not data_dir:
        return "unknown", "its containers do not name their data dir (made before 0.1 labels)"
    path = Path(data_dir)
    try:
        current = (path / "instance-id").read_text().strip()
        st = os.stat(path / "instance.lock")
    except OSError:
        return "unknown", f"its data dir {data_dir} is not visible here"
    if current != owner:
        return "dead", f"{data_dir} now belongs to {current}"
    if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in held:
        return "alive", f"a process holds {data_dir}/instance.lock"
    return "dead", f"no process holds {data_dir}/instance.lock"


def _survey_sync(containers: Iterable[dict[str, Any]], exclude: str) -> list[Owner]:
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for c in containers:
        owner = (c.get("Labels") or {}).get(OWNER_LABEL)
        if owner and owner != exclude:
            by_owner.setdefault(owner, []).append(c)
    held = _locks_held()
    owners = []
    for owner, cs in sorted(by_owner.items()):
        dirs = {(c.get("Labels") or {}).get(DATA_DIR_LABEL) for c in cs}
        data_dir = dirs.pop() if len(dirs) == 1 else None
        status, reason = judge(owner, data_dir, held)
        owners.append(Owner(owner, data_dir, tuple(c["Id"] for c in cs), status, reason))
    return owners


async def survey(client: DockerClient, *, exclude: str = "") -> list[Owner]:
    """Every other instance with containers on the engine (``exclude``: our own id)."""
    containers = await client.list_containers([OWNER_LABEL])
    return await trio.to_thread.run_sync(_survey_sync, containers, exclude)


async def remove_owner(client: DockerClient, owner: str, cgroup_parent: str | None = None) -> int:
    """Remove every container of ``owner`` (the caller proved it dead), and the CPU
    group of each (under ``cgroup_parent``, the sandboxes' parent group)."""
    backend = DockerBackend(client, owner=owner, runtimes={}, cgroup_parent=cgroup_parent)
    return await backend.remove_leftovers()


async def remove_dead(
    client: DockerClient, *, exclude: str = "", cgroup_parent: str | None = None
) -> dict[str, int]:
    """Remove the containers of every proven-dead owner; ``owner -> containers removed``."""
    removed: dict[str, int] = {}
    for owner in await survey(client, exclude=exclude):
        if owner.status == "dead":
            removed[owner.id] = await remove_owner(client, owner.id, cgroup_parent)
    return removed
