"""A fake sandbox backend for fast tests of the pool and the scheduler.

The fake "program" is a little script of ``;``-separated steps:

    out:TEXT        write TEXT to stdout        err:TEXT    write to stderr
    bytes:N         write N bytes of "x"         sleep:S     sleep S seconds
    exit:N          exit with status N           signal:N    die of signal N
    die             the sandbox ends, no report  oom         the sandbox is OOM-killed
    killed          the sandbox is killed from outside (not by us): a sandbox error
    forge           a forged exit frame (bad nonce), then carry on
    ignoreint       SIGINT does not stop the program (SIGKILL still does)
    took:MS         the exit report says the program took MS ms (the supervisor's measure)

Reaching the end of the script exits 0.
"""

from __future__ import annotations

import signal as signal_mod
from dataclasses import dataclass, field

import trio

from ._errors import EngineError, SandboxStartError
from ._protocol import (
    NO_EXTRAS,
    DeathInfo,
    Event,
    Exited,
    FilesCut,
    Gone,
    OutFile,
    Output,
    RunExtras,
)


@dataclass
class FakeSandbox:
    id: str
    language: str
    image: str
    created_at: float
    backend: FakeBackend
    paused: bool = False
    destroyed: bool = False
    _steps: list[str] = field(default_factory=list)
    _signals: list[int] = field(default_factory=list)
    _signalled: trio.Event = field(default_factory=trio.Event)
    _death: DeathInfo | None = None
    _ignore_int: bool = False
    _took_s: float | None = None
    stdin: bytes = b""
    running: bool = False  # given the running CPU weight by a take
    streamed: bool = False
    extras: RunExtras = NO_EXTRAS

    dead: bool = False

    def alive_nowait(self) -> bool:
        return not self.destroyed and not self.dead

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
        assert not self.paused, "run sent to a paused sandbox"
        assert not self.destroyed
        self._steps = [s for s in code.decode().split(";") if s]
        self.stdin = stdin
        self.streamed = streamed
        self.extras = extras

    async def send_signal(self, signo: int) -> None:
        self._signals.append(signo)
        self._signalled.set()

    def _killed(self) -> Exited | None:
        for signo in self._signals:
            if signo == signal_mod.SIGKILL or not self._ignore_int:
                return Exited(code=None, signal=signo, authentic=True)
        return None

    async def receive_event(self) -> Event:
        while True:
            if self.destroyed:
                return Gone()
            killed = self._killed()
            if killed is not None:
                return killed
            if not self._steps:
                return Exited(code=0, signal=None, authentic=True, took_s=self._took_s)
            op, _, arg = self._steps.pop(0).partition(":")
            if op == "out":
                return Output("stdout", arg.encode())
            if op == "err":
                return Output("stderr", arg.encode())
            if op == "bytes":
                return Output("stdout", b"x" * int(arg))
            if op == "sleep":
                with trio.move_on_after(float(arg)):
                    while self._killed() is None:
                        self._signalled = trio.Event()
                        await self._signalled.wait()
                continue
            if op == "file":  # file:PATH=CONTENT, or file:PATH~SIZE (listed without content)
                if "~" in arg:
                    path, _, size = arg.partition("~")
                    return OutFile(path, int(size), None)
                path, _, content = arg.partition("=")
                return OutFile(path, len(content.encode()), content.encode())
            if op == "filescut":
                return FilesCut()
            if op == "exit":
                return Exited(code=int(arg), signal=None, authentic=True, took_s=self._took_s)
            if op == "took":  # took:MS, the supervisor's own measure in the exit report
                self._took_s = float(arg) / 1000
                continue
            if op == "signal":
                return Exited(code=None, signal=int(arg), authentic=True)
            if op == "forge":
                return Exited(code=0, signal=None, authentic=False, took_s=self._took_s)
            if op == "ignoreint":
                self._ignore_int = True
                continue
            if op == "die":
                self._death = DeathInfo(137, oom=False, killed_by_us=False, killed_externally=False)
                return Gone()
            if op == "killed":
                self._death = DeathInfo(137, oom=False, killed_by_us=False, killed_externally=True)
                return Gone()
            if op == "oom":
                self._death = DeathInfo(137, oom=True, killed_by_us=False, killed_externally=False)
                return Gone()
            raise ValueError(f"fake program: unknown step {op!r}")

    async def death_info(self) -> DeathInfo:
        if self._death is not None:
            return self._death
        return DeathInfo(137, oom=False, killed_by_us=self.destroyed, killed_externally=False)


@dataclass
class FakeBackend:
    """Sandboxes that start after ``start_delay_s`` and fail while ``fail_starts`` > 0.

    Likewise ``unpause`` raises an :class:`EngineError` while ``fail_unpauses`` > 0.
    """

    start_delay_s: float = 0.3
    fail_starts: int = 0
    fail_unpauses: int = 0
    created: list[FakeSandbox] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    leftovers: int = 0
    _n: int = 0

    @property
    def live(self) -> list[FakeSandbox]:
        return [s for s in self.created if not s.destroyed]

    async def start_sandbox(self, language: str, image: str) -> FakeSandbox:
        await trio.sleep(self.start_delay_s)
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise SandboxStartError("fake start failure")
        self._n += 1
        sandbox = FakeSandbox(f"fake{self._n}", language, image, trio.current_time(), self)
        self.created.append(sandbox)
        return sandbox

    def set_running(self, sandbox: FakeSandbox) -> None:
        sandbox.running = True

    async def pause(self, sandbox: FakeSandbox) -> None:
        await trio.sleep(0.03)
        sandbox.paused = True

    async def unpause(self, sandbox: FakeSandbox) -> None:
        await trio.sleep(0.03)
        if self.fail_unpauses > 0:
            self.fail_unpauses -= 1
            raise EngineError(500, "fake unpause failure")
        sandbox.paused = False

    async def destroy(self, sandbox: FakeSandbox) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(0.1)
        sandbox.destroyed = True
        sandbox.paused = False
        self.destroyed.append(sandbox.id)

    async def remove_leftovers(self) -> int:
        n, self.leftovers = self.leftovers, 0
        return n

    async def wait_engine(self) -> None:
        return None
