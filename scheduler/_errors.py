"""Errors raised by the scheduler.

SchedulerError
├── UnknownLanguage    the request names no language we run (the caller's fault)
├── NoCapacity         no sandbox within the queue time-out, or the queue is full
│                      (ours: retry later); the pool's NoCapacity is translated here
└── ShuttingDown       the scheduler no longer accepts runs (ours: retry elsewhere)
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base class of the scheduler's errors."""


class UnknownLanguage(SchedulerError):
    """The request names a language without a pool. The caller's fault."""


class NoCapacity(SchedulerError):
    """No sandbox could be had in time, or too many runs already wait. Retry later.

    ``retry_after_s`` is a hint for the client.
    """

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDown(SchedulerError):
    """The scheduler is draining for shutdown and takes no new runs."""
