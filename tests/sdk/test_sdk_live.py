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
    File,
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


# Files in and out, args and env (issue 18). The program reads a CSV and a
# binary file sent with files=, prints what args and env carried, and leaves a
# text file and the binary file's bytes under out/ for the result.
CSV = "month,revenue\njan,10\nfeb,32\n"
BLOB = bytes(range(256)) * 4  # every byte value, so any text mangling shows
FILES_PROGRAM = """
import csv, os, shutil, sys
with open("data.csv", newline="") as f:
    rows = list(csv.DictReader(f))
print(sum(int(row["revenue"]) for row in rows))
print(sys.argv[1:])
print(os.environ["GREETING"])
os.makedirs("out/sub", exist_ok=True)
shutil.copyfile("in/blob.bin", "out/sub/blob.bin")
with open("out/report.txt", "w") as f:
    f.write(f"rows={len(rows)}\\n")
"""
FILES_STDOUT = "42\n['a b', '--flag', '']\nhello wörld\n"
ARGS = ["a b", "--flag", ""]
ENV = {"GREETING": "hello wörld"}


def assert_files_came_back(result: SandboxResult) -> None:
    assert result.stdout == FILES_STDOUT, result.stderr
    assert result.exit_code == 0
    assert not result.files_truncated
    files = sorted(result.files, key=lambda f: f.path)
    assert [(f.path, f.size, f.content) for f in files] == [
        ("out/report.txt", 7, b"rows=2\n"),
        ("out/sub/blob.bin", len(BLOB), BLOB),
    ]
    assert (files[0].mime_type or "").startswith("text/plain"), files[0]


def test_sync_files_args_and_env_round_trip(cinch_live: Any, live_key: str, tmp_path: Path) -> None:
    box = Sandbox(live_key, cinch_live.base_url, TIMEOUT)

    result = box.run(
        FILES_PROGRAM, files={"data.csv": CSV, "in/blob.bin": BLOB}, args=ARGS, env=ENV
    )

    assert_files_came_back(result)
    written = result.save_files(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "out/report.txt",
        "out/sub/blob.bin",
    ]
    assert (tmp_path / "out" / "sub" / "blob.bin").read_bytes() == BLOB


async def test_async_files_args_and_env_round_trip_under_trio(
    cinch_live: Any, live_key: str
) -> None:
    files = [File("data.csv", CSV), ("in/blob.bin", BLOB)]
    async with AsyncSandbox(live_key, cinch_live.base_url, TIMEOUT) as box:
        assert_files_came_back(await box.run(FILES_PROGRAM, files=files, args=ARGS, env=ENV))
        *_, streamed = [e async for e in box.stream(FILES_PROGRAM, files=files, args=ARGS, env=ENV)]
    assert isinstance(streamed, SandboxResult)
    assert_files_came_back(streamed)


def test_javascript_gets_args_env_and_files(cinch_live: Any, live_key: str) -> None:
    code = (
        "const fs = require('node:fs');"
        "console.log(fs.readFileSync('data.csv', 'utf8').split('\\n')[1]);"
        "console.log(JSON.stringify(process.argv.slice(2)), process.env.GREETING);"
        "fs.mkdirSync('out', { recursive: true });"
        "fs.copyFileSync('in/blob.bin', 'out/blob.bin');"
    )
    box = Sandbox(live_key, cinch_live.base_url, TIMEOUT)

    result = box.run(
        code, "javascript", files={"data.csv": CSV, "in/blob.bin": BLOB}, args=ARGS, env=ENV
    )

    assert result.stdout == 'jan,10\n["a b","--flag",""] hello wörld\n', result.stderr
    assert [(f.path, f.content) for f in result.files] == [("out/blob.bin", BLOB)]


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
