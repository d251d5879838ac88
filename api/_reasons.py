"""Reason phrases on HTTP/1.1 status lines: ``HTTP/1.1 404 Not Found``, not ``HTTP/1.1 404 ``.

Hypercorn's HTTP/1.1 protocol builds every ``h11.Response`` without a reason, so h11
writes an empty one.  RFC 9112 allows that, but ``curl -i``, proxy logs and people
reading a trace expect the phrase, and Hypercorn has no setting for it.

:func:`install` wraps the one method through which Hypercorn hands h11 its events,
``H11Protocol._send_h11_event``, and fills in the standard phrase
(:class:`http.HTTPStatus`) where the reason is empty.  Nothing else changes: HTTP/2
has no reason phrases at all.  ``cinch serve`` installs it once before serving
(idempotent); if a Hypercorn upgrade renames the method, :func:`install` raises at
start-up rather than silently doing nothing, and a test reads a real status line.
"""

from __future__ import annotations

import functools
from http import HTTPStatus
from typing import Any

import h11
from hypercorn.protocol.h11 import H11Protocol

_MARK = "_cinch_reason_phrases"


def reason_for(status: int) -> bytes:
    """The standard phrase for ``status`` (``b""`` for a code without one)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def with_reason(event: Any) -> Any:
    """``event`` with the standard reason phrase if it is a response without one."""
    if isinstance(event, (h11.Response, h11.InformationalResponse)) and not event.reason:
        reason = reason_for(event.status_code)
        if reason:
            return type(event)(
                status_code=event.status_code,
                headers=event.headers,
                http_version=event.http_version,
                reason=reason,
            )
    return event


def install() -> None:
    """Make Hypercorn's HTTP/1.1 responses carry reason phrases (safe to call twice)."""
    original = H11Protocol.__dict__.get("_send_h11_event")
    if original is None:
        raise RuntimeError(
            "hypercorn.protocol.h11.H11Protocol has no _send_h11_event: "
            "api/_reasons.py needs updating for this Hypercorn version"
        )
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    async def send(self: H11Protocol, event: Any) -> None:
        await original(self, with_reason(event))

    setattr(send, _MARK, True)
    H11Protocol._send_h11_event = send  # type: ignore[method-assign]
