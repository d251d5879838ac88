"""Errors the API answers with, and errors the ``cinch`` command reports.

ApiError       any error with an HTTP status and a message a person can act on;
               rendered as JSON {"error": "..."} with the status and headers.
CommandError   a ``cinch`` command cannot do what was asked; printed as one line
               on stderr, exit status 1, never a traceback.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` and ``headers``."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class CommandError(Exception):
    """A ``cinch`` command failed in a way the person running it can fix.

    Raised for an unknown e-mail or key, a bad argument or setting, a database
    or engine that cannot be reached. The user's (or the machine's) fault, not a
    bug: the message is the whole report and says what to do.
    """
