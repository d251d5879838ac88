"""The frames between the host and a sandbox's supervisor, and the backend Protocol.

Frames, both directions: 1 type byte, 4-byte big-endian length, payload.
See ``images/supervisor/supervisor.c`` for the other side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from ._errors import ProtocolError

MAX_FRAME = 1 << 20  # the supervisor sends at most 64 KiB per output frame
# An output file's frame carries the whole file (the out-files limit caps it).
MAX_FILE_FRAME = (64 << 20) + 4096


@dataclass(frozen=True)
class Output:
    """A chunk the program wrote: ``stream`` is ``"stdout"`` or ``"stderr"``."""

    stream: str
    data: bytes


@dataclass(frozen=True)
class Exited:
    """The supervisor's report of how the program ended.

    ``signal`` is set when the program was killed by a signal; otherwise ``code``
    is its exit status.  ``authentic`` is False when the nonce did not match:
    the program forged the frame (then ``took_s`` is not to be believed either).
    """

    code: int | None
    signal: int | None
    authentic: bool
    # The program's own time from its go to its end, by the sandbox's clock (None
    # from a supervisor that does not say): what the run is billed, at most.
    took_s: float | None = None


@dataclass(frozen=True)
class Gone:
    """The sandbox's stdio closed without a report: the sandbox itself ended."""


@dataclass(frozen=True)
class DeathInfo:
    """Why a sandbox ended without its supervisor's report, from the engine.

    ``oom``: the memory limit killed it.  ``killed_by_us``/``killed_externally``:
    a ``kill`` event we did or did not ask for.  ``exit_code`` is the container's.
    """

    exit_code: int | None
    oom: bool
    killed_by_us: bool
    killed_externally: bool
    engine_lost: bool = False


@dataclass(frozen=True)
class OutFile:
    """A file the program left under ``out/``; ``content`` is None when it did not fit."""

    path: str
    size: int
    content: bytes | None


@dataclass(frozen=True)
class FilesCut:
    """The supervisor stopped looking at ``out/`` before its end (too many entries)."""


@dataclass(frozen=True)
class RunExtras:
    """What a run may bring besides its code and stdin (all empty by default).

    ``files``: ``(path, content)`` written under the working directory before
    the program starts.  ``args``/``env``: the program's arguments and extra
    environment.  ``out_max_files``/``out_max_bytes``: how many files left
    under ``out/`` come back with their content (0 files: none are looked at).
    """

    files: tuple[tuple[str, bytes], ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    out_max_files: int = 32
    out_max_bytes: int = 5 << 20


NO_EXTRAS = RunExtras()

Event = Output | Exited | Gone | OutFile | FilesCut


def _blob(items: list[bytes]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(
        struct.pack(">I", len(item)) + item for item in items
    )


def encode_extra(extras: RunExtras) -> bytes:
    """The args and env as the loader reads them (empty when there are none):
    ``u32 n | {u32 len | arg}*`` then ``u32 n | {u32 len | NAME=value}*``."""
    if not extras.args and not extras.env:
        return b""
    args = [a.encode("utf-8", "surrogatepass") for a in extras.args]
    env = [f"{k}={v}".encode("utf-8", "surrogatepass") for k, v in extras.env]
    return _blob(args) + _blob(env)


def encode_run(
    nonce: bytes,
    output_limit: int,
    code: bytes,
    stdin: bytes,
    *,
    streamed: bool = False,
    extras: RunExtras = NO_EXTRAS,
) -> bytes:
    """A run frame: ``R``, or ``S`` for a streamed run (the program's stdout is then
    line-buffered, so output leaves as it is printed rather than at the end)."""
    files = b"".join(
        struct.pack(">H", len(p)) + p + struct.pack(">I", len(data)) + data
        for p, data in ((path.encode("utf-8"), data) for path, data in extras.files)
    )
    extra = encode_extra(extras)
    payload = b"".join(
        (
            nonce,
            struct.pack(">II", output_limit, len(code)),
            code,
            struct.pack(">I", len(stdin)),
            stdin,
            struct.pack(">III", extras.out_max_files, extras.out_max_bytes, len(files)),
            files,
            struct.pack(">I", len(extra)),
            extra,
        )
    )
    return (b"S" if streamed else b"R") + struct.pack(">I", len(payload)) + payload


def encode_signal(signo: int) -> bytes:
    return b"K" + struct.pack(">IB", 1, signo)


class FrameDecoder:
    """Turns the supervisor's byte stream into frames; rejects anything malformed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= 5:
            kind = bytes(self._buf[:1])
            (length,) = struct.unpack(">I", self._buf[1:5])
            if kind not in b"YOEXFGT" or length > (MAX_FILE_FRAME if kind == b"G" else MAX_FRAME):
                raise ProtocolError(f"bad frame header {kind!r} {length}")
            if len(self._buf) < 5 + length:
                break
            frames.append((kind, bytes(self._buf[5 : 5 + length])))
            del self._buf[: 5 + length]
        return frames


def decode_exit(payload: bytes, nonce: bytes) -> Exited:
    if len(payload) not in (21, 25) or payload[16:17] not in (b"e", b"s"):
        raise ProtocolError("bad exit frame")
    (value,) = struct.unpack(">I", payload[17:21])
    took = struct.unpack(">I", payload[21:25])[0] / 1e6 if len(payload) == 25 else None
    authentic = payload[:16] == nonce
    if payload[16:17] == b"s":
        return Exited(code=None, signal=value, authentic=authentic, took_s=took)
    return Exited(code=value, signal=None, authentic=authentic, took_s=took)


def decode_out_file(payload: bytes) -> OutFile:
    if len(payload) < 11:
        raise ProtocolError("bad file frame")
    has_content = payload[0]
    (size,) = struct.unpack(">Q", payload[1:9])
    (path_len,) = struct.unpack(">H", payload[9:11])
    end = 11 + path_len
    if len(payload) < end or has_content not in (0, 1):
        raise ProtocolError("bad file frame")
    path = payload[11:end].decode("utf-8", "surrogateescape")
    if has_content:
        return OutFile(path, len(payload) - end, payload[end:])
    if len(payload) != end:
        raise ProtocolError("bad file frame")
    return OutFile(path, size, None)


class Sandbox(Protocol):
    """One started, ready sandbox. Used once, then destroyed."""

    @property
    def id(self) -> str: ...

    @property
    def language(self) -> str: ...

    @property
    def image(self) -> str: ...

    def alive_nowait(self) -> bool:
        """Whether an idle (ready) sandbox still looks alive; never blocks."""

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
        """Hand the program to the waiting supervisor.

        ``streamed``: someone reads the output as it comes, so the program's own
        stdout buffer is flushed at each line (one write per line: not for one-shot runs).
        ``extras``: files in, args, env and how many files come back out.
        """

    async def send_signal(self, signo: int) -> None:
        """Signal the program's whole process group."""

    async def receive_event(self) -> Event:
        """The next output chunk, output file, the exit report, or Gone."""

    async def death_info(self) -> DeathInfo:
        """Ask the engine why this sandbox ended (after :class:`Gone`)."""


class Backend(Protocol):
    """Makes and destroys sandboxes. The Docker one and a fake implement it."""

    async def start_sandbox(self, language: str, image: str) -> Sandbox:
        """Create, attach, start and wait until ready; clean up on any failure."""

    def set_running(self, sandbox: Sandbox) -> None:
        """A run has taken ``sandbox``: give it the running CPU weight. Never blocks."""

    async def pause(self, sandbox: Sandbox) -> None: ...

    async def unpause(self, sandbox: Sandbox) -> None: ...

    async def destroy(self, sandbox: Sandbox) -> None:
        """Hang up, unpause if needed, let it stop by itself (briefly), then remove it
        (killing it if it has not stopped); with time-outs and retries. Never raises."""

    async def remove_leftovers(self) -> int:
        """Remove this instance's containers from an earlier life; returns the count."""

    async def wait_engine(self) -> None:
        """Return once the engine answers."""
