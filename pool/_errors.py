"""Errors raised by the pool package.

PoolError                  base of everything below
├── EngineError            the Docker engine answered with an error
│   ├── NotFound           the container or image is gone (404)
│   └── Conflict           the engine refused in this state (409)
├── EngineUnavailable      the engine cannot be reached at all
├── SandboxStartError      a sandbox could not be made ready
├── ProtocolError          a sandbox's runner sent something we cannot parse
└── NoCapacity             no warm sandbox in time (a pool is empty or broken)
"""

from __future__ import annotations


class PoolError(Exception):
    """Base class of the pool's errors."""


class EngineError(PoolError):
    """The Docker engine answered a request with an error status.

    Ours, or the engine's: never the user program's fault.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"docker engine: {status} {message}")
        self.status = status
        self.message = message


class NotFound(EngineError):
    """The engine does not know the container or image (HTTP 404)."""


class Conflict(EngineError):
    """The engine refused the operation in the object's current state (HTTP 409)."""


class EngineUnavailable(PoolError):
    """The engine's socket does not answer: not started, restarting or dead."""


class SandboxStartError(PoolError):
    """A sandbox could not be created, started or made ready. Ours, never the user's."""


class ProtocolError(PoolError):
    """A runner frame was malformed or out of order.

    Inside a sandbox the program can write to the runner's stdout, so this can be
    provoked by user code; it only ever affects the run that produced it.
    """


class NoCapacity(PoolError):
    """No sandbox could be had within the queue time-out. Retry later."""
