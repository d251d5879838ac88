"""End-to-end tests of both SDKs against a live Cinch server.

They use the ``cinch_live`` fixture from ``tests/conftest.py``: an object with
``.base_url`` and ``.new_key(credits=10000) -> str``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pangolin import (
    AsyncSandbox,
    AuthenticationError,
    InsufficientCreditsError,
    Sandbox,
    SandboxResult,
)

pytestmark = [pytest.mark.postgres, pytest.mark.gvisor]

JS_SDK = Path(__file__).resolve().parents[2] / "sdk" / "js"
TIMEOUT = 120.0  # seconds: the first run may wait for a cold sandbox


@pytest.fixture
def live_key(cinch_live: Any) -> str:
    """A fresh account's key, made outside any event loop."""
    key: str = cinch_live.new_key()
    return key


def assert_prints_four(result: SandboxResult) -> None:
    assert result.stdout == "4\n", result.stderr
    assert result.exit_code == 0
    assert result.ok
    assert result.termination == "exited"
    assert result.request_id
    assert isinstance(result.credits_remaining, int)


def test_sync_sandbox_runs_python_and_javascript(cinch_live: Any, live_key: str) -> None:
    box = Sandbox(live_key, cinch_live.base_url, TIMEOUT)

    assert_prints_four(box.run("print(2 + 2)"))
    assert_prints_four(box.run("console.log(2 + 2)", language="javascript"))
    assert box.run("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
    failed = box.run("import sys; sys.exit(3)")
    assert failed.exit_code == 3
    assert not failed.ok


async def test_async_sandbox_under_trio(cinch_live: Any, live_key: str) -> None:
    async with AsyncSandbox(live_key, cinch_live.base_url, TIMEOUT) as box:
        assert_prints_four(await box.run("print(2 + 2)"))
        assert_prints_four(await box.run("console.log(2 + 2)", language="javascript"))


def test_async_sandbox_under_asyncio(cinch_live: Any, live_key: str) -> None:
    async def main() -> list[SandboxResult]:
        box = AsyncSandbox(live_key, cinch_live.base_url, TIMEOUT)
        return [
            await box.run("print(2 + 2)"),
            await box.run("console.log(2 + 2)", language="js"),
        ]

    for result in asyncio.run(main()):
        assert_prints_four(result)


def test_bad_key_raises_authentication_error(cinch_live: Any) -> None:
    box = Sandbox("cinch_live_this_key_does_not_exist", cinch_live.base_url, max_retries=0)
    with pytest.raises(AuthenticationError) as info:
        box.run("print(1)")
    assert info.value.status == 401


def test_no_credits_raises_insufficient_credits(cinch_live: Any) -> None:
    box = Sandbox(cinch_live.new_key(credits=0), cinch_live.base_url, TIMEOUT)
    with pytest.raises(InsufficientCreditsError) as info:
        box.run("print(1)")
    assert info.value.status == 402


def test_idempotent_retry_is_charged_once(cinch_live: Any) -> None:
    credits = 10000
    box = Sandbox(cinch_live.new_key(credits=credits), cinch_live.base_url, TIMEOUT)
    key = f"live-py-{uuid.uuid4()}"

    first = box.run("print('once')", idempotency_key=key)
    again = box.run("print('once')", idempotency_key=key)
    fresh = box.run("print('once')")

    assert first.credits_remaining is not None
    assert first.credits_charged is not None
    assert first.credits_remaining == credits - first.credits_charged
    assert again.stdout == first.stdout == "once\n"
    assert again.credits_remaining == first.credits_remaining
    assert fresh.credits_charged is not None
    assert fresh.credits_remaining == first.credits_remaining - fresh.credits_charged


@pytest.fixture(scope="session")
def js_sdk_built() -> Path:
    """Builds sdk/js (installing its pinned dev dependencies if needed)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed to test the JS SDK")
    if not (JS_SDK / "node_modules" / "typescript").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_SDK, check=True, timeout=600)
    subprocess.run([npm, "run", "build"], cwd=JS_SDK, check=True, timeout=600)
    return JS_SDK


def test_js_sdk_against_live_server(cinch_live: Any, live_key: str, js_sdk_built: Path) -> None:
    env = {
        **os.environ,
        "CINCH_BASE_URL": cinch_live.base_url,
        "CINCH_API_KEY": live_key,
    }
    node = shutil.which("node") or "node"
    proc = subprocess.run(
        [node, "test/live.mjs"],
        cwd=js_sdk_built,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"live.mjs failed:\n{proc.stdout}\n{proc.stderr}"
    assert ", 0 failed" in proc.stdout
