"""Fixtures for the SDK tests: the in-tree SDK on sys.path and a scripted HTTP server."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdk_fake_api import ScriptedServer

# Test the working tree, not whatever pangolin-sdk release is installed.
_SDK_SRC = Path(__file__).resolve().parents[2] / "sdk" / "python" / "src"
sys.path.insert(0, str(_SDK_SRC))
for _name in [m for m in sys.modules if m == "pangolin" or m.startswith("pangolin.")]:
    del sys.modules[_name]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A started :class:`ScriptedServer`, stopped after the test."""
    srv = ScriptedServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL on which nothing listens, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
