"""A scripted local HTTP server that stands in for the Cinch API in unit tests."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One canned response of the scripted server."""

    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # A stream instead of ``body``: each ``(name, data)`` one server-sent event,
    # ``gap`` seconds apart.
    events: list[tuple[str, Any]] | None = None
    gap: float = 0.0


@dataclass
class Recorded:
    """One request the scripted server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class ScriptedServer:
    """A local HTTP server that answers with scripted replies, in order.

    Requests beyond the script get HTTP 500 with an ``unscripted request``
    error, so a test that retries more than expected fails loudly.
    """

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Recorded] = []
        self.hung_up = False  # a client closed a stream before its end
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def script(self, *replies: Reply) -> None:
        """Appends replies to the queue."""
        with self._lock:
            self.replies.extend(replies)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _next(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            if self.replies:
                return self.replies.pop(0)
        return Reply(500, {"error": "unscripted request"})

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._serve()

            def do_GET(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                reply = server._next(
                    Recorded(self.command, self.path, dict(self.headers.items()), body)
                )
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.events is not None:
                    self._stream(reply)
                    return
                if isinstance(reply.body, str):
                    payload, ctype = reply.body.encode(), "text/plain"
                else:
                    payload, ctype = json.dumps(reply.body).encode(), "application/json"
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout tests)
                    self.close_connection = True

            def _stream(self, reply: Reply) -> None:
                self.close_connection = True  # no length: the body ends with the connection
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    for name, data in reply.events or []:
                        self.wfile.write(
                            f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                        )
                        self.wfile.flush()
                        time.sleep(reply.gap)
                except OSError:
                    server.hung_up = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def success_body(**overrides: Any) -> dict[str, Any]:
    """A complete ``/run`` success body, with optional overrides."""
    body: dict[str, Any] = {
        "stdout": "4\n",
        "stderr": "",
        "exitCode": 0,
        "timedOut": False,
        "durationMs": 42,
        "termination": "exited",
        "signal": None,
        "truncated": False,
        "queueMs": 3,
        "creditsCharged": 1,
    }
    body.update(overrides)
    return body
