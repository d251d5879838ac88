"""Sandboxes on a real Docker engine with gVisor."""

from __future__ import annotations

import logging
import os
import signal as signal_mod
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import trio

from ._cgroups import CpuWeights
from ._docker import AttachStream, DockerClient
from ._errors import EngineUnavailable, NotFound, PoolError, ProtocolError, SandboxStartError
from ._protocol import (
    NO_EXTRAS,
    DeathInfo,
    Event,
    FilesCut,
    FrameDecoder,
    Gone,
    Output,
    RunExtras,
    Sandbox,
    decode_exit,
    decode_out_file,
    encode_run,
    encode_signal,
)
from ._spec import OWNER_LABEL, SandboxLimits, container_config

log = logging.getLogger("cinch.pool")

READY_TIMEOUT_S = 20.0
DESTROY_TIMEOUT_S = 20.0
OOM_EVENT_GRACE_S = 0.5
# How long destroy lets a sandbox it hung up on end by itself before the engine kills it.
EXIT_GRACE_S = 1.0
# The event watcher's back-off between attempts to (re)open the stream; reset on connect.
EVENTS_BACKOFF_INITIAL_S = 0.1
EVENTS_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class BackendStatistics:
    """A snapshot of a :class:`DockerBackend` (see :meth:`DockerBackend.statistics`).

    Attributes:
        events_connected: The engine's event stream is open now. While it is not,
            ``die``, ``oom`` and ``kill`` go unseen: every sandbox death waits out
            its grace periods and an outside kill cannot be told from the program's.
        reconnects: Attempts to reopen the stream after it was lost or failed to open.
        unremoved: Containers whose removal gave up; retried at each reconnect.
        last_error: The watcher's latest error (stream or retried removal), or "".
    """

    events_connected: bool
    reconnects: int
    unremoved: int
    last_error: str


@dataclass
class DockerSandbox:
    """A running sandbox container with its attached stdio."""

    id: str
    language: str
    image: str
    created_at: float
    _backend: DockerBackend
    _stream: AttachStream
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _pending: list[tuple[bytes, bytes]] = field(default_factory=list)
    _nonce: bytes = b""
    paused: bool = False
    killed_by_us: bool = False

    async def _next_frame(self) -> tuple[bytes, bytes] | None:
        while not self._pending:
            chunk = await self._stream.receive_chunk()
            if chunk is None:
                return None
            kind, data = chunk
            if kind != 1:
                # The supervisor never writes to its stderr; a runtime error does, and so
                # can a program (via /proc/1/fd/2): once a run is sent, log no content.
                if self._nonce:
                    log.debug("sandbox %s: %d bytes on stderr", self.id[:12], len(data))
                else:
                    log.debug("sandbox %s stderr: %r", self.id[:12], data[:200])
                continue
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    async def wait_ready(self) -> None:
        frame = await self._next_frame()
        if frame is None:
            raise SandboxStartError("sandbox ended before its runner was ready")
        kind, payload = frame
        if kind == b"F":
            raise SandboxStartError("runner failed: " + payload.decode("utf-8", "replace"))
        if kind != b"Y":
            raise SandboxStartError(f"unexpected frame {kind!r} before ready")

    def alive_nowait(self) -> bool:
        """False when the idle sandbox has already ended (engine restart, killed)."""
        return not self._pending and not self._stream.readable_nowait()

    async def send_run(
        self,
        code: bytes,
        stdin: bytes,
        nonce: bytes,
        output_limit: int,
        *,
        streamed: bool = False,
        extras: RunExtras = NO_EXTRAS,
    ) -> None:
        self._nonce = nonce
        await self._stream.send_all(
            encode_run(nonce, output_limit, code, stdin, streamed=streamed, extras=extras)
        )

    async def send_signal(self, signo: int) -> None:
        try:
            await self._stream.send_all(encode_signal(signo))
        except EngineUnavailable:
            pass  # the sandbox is already gone; the read side will say so

    async def receive_event(self) -> Event:
        frame = await self._next_frame()
        if frame is None:
            return Gone()
        kind, payload = frame
        if kind == b"O":
            return Output("stdout", payload)
        if kind == b"E":
            return Output("stderr", payload)
        if kind == b"X":
            return decode_exit(payload, self._nonce)
        if kind == b"G":
            return decode_out_file(payload)
        if kind == b"T":
            return FilesCut()
        raise ProtocolError(f"unexpected frame {kind!r} during a run")

    async def death_info(self) -> DeathInfo:
        return await self._backend.death_info(self)


class DockerBackend:
    """Makes sandboxes with runsc on one Docker engine, all labelled with our owner id."""

    def __init__(
        self,
        client: DockerClient,
        *,
        owner: str,
        runtimes: dict[str, str],
        limits: SandboxLimits | None = None,
        cgroup_parent: str | None = None,
        cpu_weights: bool = True,
        labels: dict[str, str] | None = None,
        env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.client = client
        self.owner = owner
        self.labels = dict(labels or {})  # more labels on every container (cinch.data-dir)
        # More environment per language, for the runner (CINCH_PREIMPORT for Python).
        self.env = {lang: dict(values) for lang, values in (env or {}).items()}
        self.runtimes = runtimes
        self.limits = limits or SandboxLimits()
        self.cgroup_parent = cgroup_parent
        # Starting sandboxes at the lowest CPU weight, running ones at the highest.
        self.weights = CpuWeights(
            cgroup_parent, nano_cpus=self.limits.nano_cpus, enabled=cpu_weights
        )
        # container id -> actions seen in the event stream (bounded)
        self._events: OrderedDict[str, set[str]] = OrderedDict()
        self._event_arrived = trio.Event()
        self._watching = False  # the event stream is connected (so 'die' will be seen)
        # Containers whose removal failed while the engine was away (retried on reconnect).
        self._unremoved: set[str] = set()
        self._removing_unremoved = False
        self._reconnects = 0
        self._last_error = ""
        # One /proc scan at a time, in a thread: it reads every process's cmdline.
        self._proc_limiter = trio.CapacityLimiter(1)

    def statistics(self) -> BackendStatistics:
        """The event watcher's state, for readiness checks and metrics."""
        return BackendStatistics(
            events_connected=self._watching,
            reconnects=self._reconnects,
            unremoved=len(self._unremoved),
            last_error=self._last_error,
        )

    # -- events ---------------------------------------------------------------

    async def watch_events(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the engine's container events for our label until cancelled.

        Ready at once, connected or not. Whenever the stream is lost or cannot be
        opened, tries again after a back-off (``EVENTS_BACKOFF_INITIAL_S`` doubling
        to ``EVENTS_BACKOFF_MAX_S``, from the start again once connected). Never
        raises: without this stream every sandbox death stalls and outside kills
        are billed, so no error, ours or the engine's, may end it.
        """
        filters = {"type": ["container"], "label": [f"{OWNER_LABEL}={self.owner}"]}
        delay = EVENTS_BACKOFF_INITIAL_S
        async with trio.open_nursery() as nursery:

            def connected() -> None:
                nonlocal delay
                self._watching = True
                delay = EVENTS_BACKOFF_INITIAL_S
                # In a task of its own: removals (20 s time-outs each) must not hold
                # up the events, which the runs under way are waiting for.
                if self._unremoved and not self._removing_unremoved:
                    self._removing_unremoved = True
                    nursery.start_soon(self._remove_unremoved)

            task_status.started()
            while True:
                try:
                    async with aclosing(
                        self.client.events(filters, on_connected=connected)
                    ) as stream:
                        async for event in stream:
                            cid = event.get("id") or event.get("Actor", {}).get("ID", "")
                            action = str(event.get("Action", event.get("status", "")))
                            self._record(cid, action.split(":")[0])
                    self._last_error = "the engine ended the event stream"
                    log.info("event stream ended by the engine")
                except PoolError as exc:
                    self._last_error = f"event stream: {exc}"
                    log.info("event stream lost: %s", exc)
                except Exception as exc:
                    self._last_error = f"event stream: {type(exc).__name__}: {exc}"
                    log.exception("event stream failed")
                finally:
                    self._watching = False
                await trio.sleep(delay)
                delay = min(delay * 2, EVENTS_BACKOFF_MAX_S)
                self._reconnects += 1

    def _record(self, cid: str, action: str) -> None:
        if not cid:
            return
        self._events.setdefault(cid, set()).add(action)
        self._events.move_to_end(cid)
        while len(self._events) > 4096:
            self._events.popitem(last=False)
        self._event_arrived.set()
        self._event_arrived = trio.Event()

    async def _wait_event(self, cid: str, action: str, timeout_s: float) -> None:
        """Until the event stream has shown ``action`` for ``cid``, or ``timeout_s``."""
        with trio.move_on_after(timeout_s):
            while action not in self._events.get(cid, set()):
                await self._event_arrived.wait()

    async def death_info(self, sandbox: DockerSandbox) -> DeathInfo:
        # The 'die' event may trail the end of the attach stream a little.
        await self._wait_event(sandbox.id, "die", 1.0)
        # And 'oom' may trail 'die' (seen: 80 ms under load; Docker sets OOMKilled
        # only when it arrives): a death we did not cause waits a moment for it.
        if not sandbox.killed_by_us:
            await self._wait_event(sandbox.id, "oom", OOM_EVENT_GRACE_S)
        actions = self._events.get(sandbox.id, set())
        exit_code: int | None = None
        oom = "oom" in actions
        try:
            with trio.fail_after(5):
                state = (await self.client.inspect(sandbox.id)).get("State", {})
            exit_code = state.get("ExitCode")
            oom = oom or bool(state.get("OOMKilled"))
        except (PoolError, trio.TooSlowError):
            return DeathInfo(None, oom, sandbox.killed_by_us, False, engine_lost=True)
        killed_externally = "kill" in actions and not sandbox.killed_by_us
        return DeathInfo(exit_code, oom, sandbox.killed_by_us, killed_externally)

    # -- life cycle -------------------------------------------------------------

    async def wait_engine(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.client.ping()
                return
            except PoolError:
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def start_sandbox(self, language: str, image: str) -> DockerSandbox:
        config = container_config(
            image=image,
            language=language,
            runtime=self.runtimes[language],
            owner=self.owner,
            limits=self.limits,
            cgroup_parent=self.cgroup_parent,
            extra_labels=self.labels,
            env=self.env.get(language),
        )
        # Shielded (the client's own time-out bounds it): cancelled mid-request, the
        # container would exist with no id to remove it by.
        with trio.CancelScope(shield=True):
            cid = await self.client.create_container(config)
            self.weights.prepare(cid)
        stream: AttachStream | None = None
        try:
            stream = await self.client.attach(cid)
            sandbox = DockerSandbox(cid, language, image, time.monotonic(), self, stream)
            await self.client.start(cid)
            with trio.fail_after(READY_TIMEOUT_S):
                await sandbox.wait_ready()
            return sandbox
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if stream is not None:
                    await stream.aclose()
                await self._remove(cid)
                await self._reap_orphans([cid])
                await self.weights.forget(cid)
            if isinstance(exc, trio.TooSlowError):
                raise SandboxStartError(
                    f"sandbox {cid[:12]} not ready in {READY_TIMEOUT_S}s"
                ) from exc
            raise

    def set_running(self, sandbox: Sandbox) -> None:
        self.weights.set_running(_ours(sandbox).id)

    async def pause(self, sandbox: Sandbox) -> None:
        sandbox = _ours(sandbox)
        await self.client.pause(sandbox.id)
        sandbox.paused = True

    async def unpause(self, sandbox: Sandbox) -> None:
        sandbox = _ours(sandbox)
        await self.client.unpause(sandbox.id)
        sandbox.paused = False

    async def destroy(self, sandbox: Sandbox) -> None:
        sandbox = _ours(sandbox)
        # Its run is over: the teardown is background work, like a start.
        self.weights.set_done(sandbox.id)
        with trio.CancelScope(shield=True):
            sandbox.killed_by_us = True
            await sandbox._stream.aclose()
            if sandbox.paused:
                try:
                    with trio.move_on_after(10):
                        await self.client.unpause(sandbox.id)
                except PoolError:
                    pass
            # Hung up on, the supervisor exits by itself: at once when its run is
            # over or it never had one, else when the run ends.  Removing a stopped
            # container skips the engine's kill (a runsc command and its waits):
            # ~20 machine CPU-ms of the ~350 a sandbox's life costs here.
            if self._watching:
                await self._wait_event(sandbox.id, "die", EXIT_GRACE_S)
            await self._remove(sandbox.id)
            self._events.pop(sandbox.id, None)
            await self.weights.forget(sandbox.id)

    async def _remove(self, cid: str) -> None:
        """Kill and remove with a time-out and retries. Never raises."""
        for attempt in range(3):
            try:
                with trio.fail_after(DESTROY_TIMEOUT_S):
                    await self.client.remove(cid, force=True, timeout_s=DESTROY_TIMEOUT_S)
                return
            except NotFound:
                return
            except (PoolError, trio.TooSlowError) as exc:
                log.warning("remove %s failed (attempt %d): %s", cid[:12], attempt + 1, exc)
                await trio.sleep(0.5 * (attempt + 1))
        # The engine is away (restarting, say): the container outlives it, so
        # remove it when the event stream reconnects.
        self._unremoved.add(cid)

    async def _remove_unremoved(self) -> None:
        """One try at each container whose removal gave up. Never raises.

        What fails again stays in ``_unremoved`` for the next reconnect; once the
        engine looks away again, the rest wait too.
        """
        try:
            for cid in list(self._unremoved):
                try:
                    with trio.fail_after(DESTROY_TIMEOUT_S):
                        await self.client.remove(cid, force=True, timeout_s=DESTROY_TIMEOUT_S)
                except NotFound:
                    pass
                except (EngineUnavailable, trio.TooSlowError) as exc:
                    self._last_error = f"remove {cid[:12]}: {exc or 'timed out'}"
                    log.info("remove %s failed again, engine away: %s", cid[:12], exc)
                    return
                except PoolError as exc:
                    self._last_error = f"remove {cid[:12]}: {exc}"
                    log.warning("remove %s failed again, kept for later: %s", cid[:12], exc)
                    continue
                except Exception as exc:
                    self._last_error = f"remove {cid[:12]}: {type(exc).__name__}: {exc}"
                    log.exception("remove %s failed again, kept for later", cid[:12])
                    continue
                self._unremoved.discard(cid)
                log.info("removed %s after the engine came back", cid[:12])
        finally:
            self._removing_unremoved = False

    async def _reap_orphans(self, cids: Collection[str]) -> None:
        """Kill any runsc process left behind for ``cids`` (failed start, earlier life).

        Never raises. The scan reads all of /proc, so it runs in a thread.
        """
        if not cids:
            return
        killed = await trio.to_thread.run_sync(
            _kill_runsc_of, list(cids), limiter=self._proc_limiter
        )
        for pid, cid in killed:
            log.warning("killed orphaned runsc process %d of %s", pid, cid[:12])

    async def remove_leftovers(self) -> int:
        containers = await self.client.list_containers([f"{OWNER_LABEL}={self.owner}"])
        async with trio.open_nursery() as nursery:
            for c in containers:
                nursery.start_soon(self._remove_leftover, c)
        await self._reap_orphans([c["Id"] for c in containers])
        return len(containers)

    async def _remove_leftover(self, c: dict[str, Any]) -> None:
        if c.get("State") == "paused":
            try:
                await self.client.unpause(c["Id"])
            except PoolError:
                pass
        await self._remove(c["Id"])
        await self.weights.forget(c["Id"], known=False)


def _ours(sandbox: Sandbox) -> DockerSandbox:
    """The :class:`Backend` protocol speaks of any Sandbox; this backend only gets its own."""
    if not isinstance(sandbox, DockerSandbox):
        raise TypeError(f"not a Docker sandbox: {sandbox!r}")
    return sandbox


def _runsc_ids(cmdline: bytes) -> set[bytes]:
    """The arguments that can name a container, if ``cmdline`` is a runsc process's.

    ``cmdline`` is as in ``/proc/PID/cmdline`` (NUL-terminated arguments). runsc
    runs as ``runsc`` and names its own processes ``runsc-sandbox`` and
    ``runsc-gofer`` (argv[0], maybe a path). A container id appears as a whole
    argument (``boot ... ID``, ``create ... ID``) or as the last component of a
    path (``--bundle .../moby/ID`` or ``--bundle=...``): each argument, or the
    value of a ``--flag=value``, yields its last path component. Not a runsc
    process: the empty set.
    """
    args = cmdline.split(b"\0")
    if args and not args[-1]:
        args.pop()
    if not args:
        return set()
    name = os.path.basename(args[0])
    if name != b"runsc" and not name.startswith(b"runsc-"):
        return set()
    ids = set()
    for arg in args[1:]:
        if arg.startswith(b"-"):
            arg = arg.partition(b"=")[2]
        last = arg.rstrip(b"/").rpartition(b"/")[2]
        if last:
            ids.add(last)
    return ids


def _is_runsc_of(cmdline: bytes, cid: str) -> bool:
    """Whether ``cmdline`` is a runsc process of container ``cid``, matched exactly
    (never a substring: an id that only starts with ``cid`` is another container)."""
    return bool(cid) and cid.encode() in _runsc_ids(cmdline)


def _runsc_pids(cids: Collection[str], *, proc: str = "/proc") -> list[tuple[int, str]]:
    """``(pid, container id)`` of each runsc process of one of ``cids``. Blocks."""
    wanted = {cid.encode(): cid for cid in cids if cid}
    if not wanted:
        return []
    try:
        entries = os.listdir(proc)
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                cmdline = f.read()
        except OSError:
            continue  # ended meanwhile, or not ours to read
        for match in _runsc_ids(cmdline) & wanted.keys():
            found.append((int(entry), wanted[match]))
            break
    return found


def _kill_runsc_of(cids: Collection[str]) -> list[tuple[int, str]]:
    """SIGKILL each runsc process of one of ``cids``; the ones killed. Blocks.

    Kills right after its own scan, in the same thread, to keep the window for
    a reused pid small.
    """
    killed = []
    for pid, cid in _runsc_pids(cids):
        try:
            os.kill(pid, signal_mod.SIGKILL)
        except OSError:
            continue
        killed.append((pid, cid))
    return killed
