"""Plain data in and out of the scheduler: could cross a network unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

MIB = 1024 * 1024


class Termination(StrEnum):
    """Why a run ended."""

    EXITED = "exited"
    SIGNAL = "signal"
    TIMEOUT = "timeout"
    OOM = "oom"
    OUTPUT_LIMIT = "output_limit"
    CREDIT_LIMIT = "credit_limit"
    SANDBOX_ERROR = "sandbox_error"
    # The caller stopped the run (a streaming client hung up): charged like any stop.
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class InputFile:
    """A file written under the run's working directory before the program starts."""

    path: str  # relative, checked by the caller (no "..", no leading "/")
    content: bytes


@dataclass(frozen=True)
class OutputFile:
    """A regular file the program left under ``out/``; ``content`` is None when
    it did not fit the run's output-files limit (then only its size is known)."""

    path: str  # "out/..."
    size: int
    content: bytes | None


@dataclass(frozen=True)
class RunRequest:
    """One program to run. ``language`` is the canonical name (``python``, ``javascript``)."""

    language: str
    code: str
    stdin: str = ""
    timeout_s: float = 10.0
    output_limit_bytes: int = MIB
    request_id: str = ""
    # Who asks (the account): queued runs are served round robin by tenant.
    tenant: str = ""
    files: tuple[InputFile, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    # Files left under out/ that come back with their content; 0 files: none.
    out_max_files: int = 32
    out_max_bytes: int = 5 * MIB


@dataclass(frozen=True)
class RunResult:
    """What a run returned; see DESIGN.md section 3 for each field's contract.

    ``billable`` is False only when the failure is provably ours
    (``sandbox_error``); every other end is the program's and is charged.
    """

    stdout: str
    stderr: str
    exit_code: int
    termination: Termination
    signal: str | None
    truncated: bool
    duration_ms: int
    queue_ms: int
    billable: bool
    language: str
    sandbox_id: str = ""
    files: tuple[OutputFile, ...] = ()
    # Some files came back without content, or were not listed at all.
    files_truncated: bool = False

    @property
    def timed_out(self) -> bool:
        return self.termination is Termination.TIMEOUT


class Budget(Protocol):
    """Pays for a run while it lives (credits, in the API).

    Asked every half second, and again when the run reaches what was paid for.
    """

    async def extend(self, elapsed_ms: int) -> int:
        """Pay ahead if it can; returns how long (ms from the run's start) is paid for.

        The run is stopped (``credit_limit``) when it reaches that and a new call
        does not move it further.
        """
        ...
