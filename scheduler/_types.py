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
