"""Errors the API answers with.

ApiError     any error with an HTTP status and a message a person can act on;
             rendered as JSON {"error": "..."} with the status and headers.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` and ``headers``."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
