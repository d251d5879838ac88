"""DockerBackend over a fake engine client, on a virtual clock (no Docker needed).

The fake client's event stream and removals are scripted to fail; the test waits
on the fake's own operations (each wakes it), never on sleeps.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
import signal
import sys
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from pool import DockerBackend, DockerSandbox, EngineError, EngineUnavailable
from pool._backend import _is_runsc_of, _runsc_pids

OWNER = "cinch-unit"


class FakeStream:
    """Stands in for an attach stream: destroy only hangs it up."""

    async def aclose(self) -> None:
        return None


class FakeEngineClient:
    """The parts of :class:`pool.DockerClient` that the event watcher and destroy use.

    ``fail_connects`` are raised, one per attempt, by the next ``events`` calls;
    ``remove_errors`` are raised by every ``remove`` of that id until taken out.
    """

    def __init__(self) -> None:
        self.connects: list[float] = []  # when each events() call began
        self.fail_connects: list[Exception] = []
        self.remove_errors: dict[str, Exception] = {}
        self.removed: list[str] = []
        self._send, self._receive = trio.open_memory_channel[Any](math.inf)
        self._done = trio.Event()

    def _notify(self) -> None:
        self._done.set()
        self._done = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 30) -> None:
        with trio.fail_after(timeout_s):
            while not predicate():
                await self._done.wait()

    def push(self, item: dict[str, Any] | Exception | None) -> None:
        """An event for the open stream; an exception breaks it; None ends it cleanly."""
        self._send.send_nowait(item)

    async def events(
        self,
        filters: Mapping[str, list[str]],
        *,
        on_connected: Callable[[], object] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        assert filters["label"] == [f"cinch.owner={OWNER}"]
        self.connects.append(trio.current_time())
        try:
            await trio.lowlevel.checkpoint()
            if self.fail_connects:
                raise self.fail_connects.pop(0)
            if on_connected is not None:
                on_connected()
        finally:
            self._notify()
        while True:
            item = await self._receive.receive()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def remove(self, container_id: str, *, force: bool = True, timeout_s: float = 20) -> None:
        try:
            await trio.lowlevel.checkpoint()
            error = self.remove_errors.get(container_id)
            if error is not None:
                raise error
            self.removed.append(container_id)
        finally:
            self._notify()

    async def inspect(self, container_id: str) -> dict[str, Any]:
        return {"State": {"ExitCode": 137, "OOMKilled": False}}


def make_backend(client: FakeEngineClient) -> DockerBackend:
    return DockerBackend(client, owner=OWNER, runtimes={"python": "runsc"})  # type: ignore[arg-type]


def make_sandbox(backend: DockerBackend, cid: str) -> DockerSandbox:
    return DockerSandbox(cid, "python", "img:1", 0.0, backend, FakeStream())  # type: ignore[arg-type]


# -- the event watcher --------------------------------------------------------------------


async def test_event_stream_resumes_although_a_removal_keeps_failing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeEngineClient()
    backend = make_backend(client)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.watch_events)
        await client.wait_until(lambda: len(client.connects) == 1)

        # A removal that keeps failing (not with 404): destroy gives up and keeps the id.
        client.remove_errors["c1"] = EngineError(
            500, "removal of container c1 is already in progress"
        )
        await backend.destroy(make_sandbox(backend, "c1"))

        client.push(EngineUnavailable("the engine went away"))
        await client.wait_until(lambda: len(client.connects) == 2)
        # The retried removal fails again: logged, kept, and the stream is back anyway.
        await client.wait_until(lambda: "already in progress" in backend.statistics().last_error)
        stats = backend.statistics()
        assert stats.events_connected
        assert stats.reconnects == 1
        assert stats.unremoved == 1

        # Events flow again, so an outside kill is seen as one (not billed to the user).
        client.push({"id": "c2", "Action": "kill", "Type": "container"})
        client.push({"id": "c2", "Action": "die", "Type": "container"})
        t0 = trio.current_time()
        info = await backend.death_info(make_sandbox(backend, "c2"))
        assert info.killed_externally
        assert info.exit_code == 137
        assert trio.current_time() - t0 < 1.0  # no wait for a 'die' that never comes

        # Once removal works, the next reconnect removes the container.
        del client.remove_errors["c1"]
        client.push(None)  # the engine ends the stream
        await client.wait_until(lambda: backend.statistics().unremoved == 0)
        assert client.removed == ["c1"]
        assert backend.statistics().reconnects == 2
        nursery.cancel_scope.cancel()
    assert not backend.statistics().events_connected


async def test_reconnect_backs_off_to_a_cap_and_starts_over_once_connected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeEngineClient()
    client.fail_connects = [EngineUnavailable("connection refused") for _ in range(9)]
    backend = make_backend(client)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.watch_events)
        await client.wait_until(lambda: len(client.connects) == 10)
        gaps = [b - a for a, b in itertools.pairwise(client.connects)]
        assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
        stats = backend.statistics()
        assert stats.events_connected
        assert stats.reconnects == 9
        assert stats.last_error.endswith("connection refused")

        client.push(EngineUnavailable("the engine went away"))
        await client.wait_until(lambda: len(client.connects) == 11)
        assert client.connects[-1] - client.connects[-2] == pytest.approx(0.1)
        nursery.cancel_scope.cancel()


async def test_watcher_survives_an_unexpected_error_from_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeEngineClient()
    backend = make_backend(client)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.watch_events)
        await client.wait_until(lambda: len(client.connects) == 1)
        # A garbled line from the engine: not a PoolError, and still no reason to stop.
        client.push(json.JSONDecodeError("Expecting value", "{garbled", 0))
        await client.wait_until(lambda: len(client.connects) == 2)
        stats = backend.statistics()
        assert stats.events_connected
        assert "Expecting value" in stats.last_error
        nursery.cancel_scope.cancel()


# -- finding runsc processes ----------------------------------------------------------------

CID = "3f9c1e0a7b5d42c8a1e6f0b9d3c7a5e2" + "8b4f6d1c0e9a7b3d5f2c8e6a4b1d9f07"
OTHER = CID + "42"  # another id that starts with CID (never real for Docker, but a substring)
ROOT = "/var/run/docker/runtime-runc/moby"
TASKS = "/run/containerd/io.containerd.runtime.v2.task/moby"


def argv(*args: str) -> bytes:
    """A /proc/PID/cmdline: every argument NUL-terminated."""
    return b"".join(a.encode() + b"\0" for a in args)


def sandbox_cmdline(cid: str) -> bytes:
    return argv(
        "runsc-sandbox",
        f"--root={ROOT}",
        f"--log={TASKS}/{cid}/log.json",
        "--log-format=json",
        "--platform=systrap",
        "boot",
        f"--bundle={TASKS}/{cid}",
        "--controller-fd=3",
        "--spec-fd=4",
        "--stdio-fds=7",
        cid,
    )


def gofer_cmdline(cid: str, *, joined: bool = False) -> bytes:
    bundle = [f"--bundle={TASKS}/{cid}"] if joined else ["--bundle", f"{TASKS}/{cid}"]
    return argv(
        "runsc-gofer",
        f"--root={ROOT}",
        f"--log={TASKS}/{cid}/log.json",
        "gofer",
        *bundle,
        "--spec-fd=3",
        "--io-fds=4",
    )


@pytest.mark.parametrize(
    "cmdline",
    [
        pytest.param(sandbox_cmdline(CID), id="sandbox-boot"),
        pytest.param(gofer_cmdline(CID), id="gofer-bundle"),
        pytest.param(gofer_cmdline(CID, joined=True), id="gofer-bundle="),
        pytest.param(
            argv(
                "runsc",
                "--root",
                ROOT,
                "create",
                "--bundle",
                f"{TASKS}/{CID}",
                "--pid-file",
                f"{TASKS}/{CID}/init.pid",
                CID,
            ),
            id="runsc-create",
        ),
        pytest.param(
            argv("/usr/local/bin/runsc", f"--root={ROOT}", "delete", "--force", CID),
            id="runsc-by-path",
        ),
    ],
)
def test_runsc_processes_of_the_container_match(cmdline: bytes) -> None:
    assert _is_runsc_of(cmdline, CID)


@pytest.mark.parametrize(
    "cmdline",
    [
        pytest.param(sandbox_cmdline(OTHER), id="sandbox-of-a-longer-id"),
        pytest.param(gofer_cmdline(OTHER), id="gofer-of-a-longer-id"),
        pytest.param(
            argv("runsc", f"--root={ROOT}", f"--log={TASKS}/{CID}/log.json", "state", OTHER),
            id="cid-only-inside-a-path",
        ),
        pytest.param(
            argv("containerd-shim-runc-v2", "-namespace", "moby", "-id", CID, "-address", "x"),
            id="shim",
        ),
        pytest.param(argv("tail", "-F", f"/var/log/runsc/{CID}/runsc.log.boot"), id="tail"),
        pytest.param(argv("bash", "-c", f"runsc --root {ROOT} kill {CID} 9"), id="bash-c"),
        pytest.param(argv("runscribe", CID), id="name-only-starts-with-runsc"),
        pytest.param(b"", id="kernel-thread"),
    ],
)
def test_other_processes_do_not_match(cmdline: bytes) -> None:
    assert not _is_runsc_of(cmdline, CID)


def test_a_short_id_does_not_match_the_full_one() -> None:
    assert not _is_runsc_of(sandbox_cmdline(CID), CID[:12])
    assert not _is_runsc_of(sandbox_cmdline(CID), "")


def test_runsc_pids_scans_a_proc_tree(tmp_path: Path) -> None:
    for pid, cmdline in [
        ("101", sandbox_cmdline(CID)),
        ("102", gofer_cmdline(CID)),
        ("103", sandbox_cmdline(OTHER)),
        ("104", argv("tail", "-F", f"/var/log/runsc/{CID}.log")),
        ("self", sandbox_cmdline(CID)),  # not a pid
    ]:
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(cmdline)
    (tmp_path / "105").mkdir()  # ended while we looked: no cmdline to read

    assert sorted(_runsc_pids([CID], proc=str(tmp_path))) == [(101, CID), (102, CID)]
    assert _runsc_pids([OTHER, "nope"], proc=str(tmp_path)) == [(103, OTHER)]
    assert _runsc_pids([], proc=str(tmp_path)) == []


async def test_reap_orphans_kills_exactly_the_runsc_processes_of_its_container() -> None:
    # Real processes (Python, asleep) that look like runsc sandboxes of CID and of
    # OTHER; random ids, so nothing else on the machine can match.
    cid = secrets.token_hex(32)
    other = cid + "42"
    script = "import sys, time; time.sleep(60)"
    ours, theirs = [
        await trio.lowlevel.open_process(
            ["runsc-sandbox", "-c", script, "boot", f"--bundle={TASKS}/{c}", c],
            executable=sys.executable,
        )
        for c in (cid, other)
    ]
    try:
        backend = make_backend(FakeEngineClient())
        await backend._reap_orphans([cid])
        with trio.fail_after(10):
            assert await ours.wait() == -signal.SIGKILL
        assert theirs.poll() is None
    finally:
        for p in (ours, theirs):
            p.kill()
            await p.wait()
