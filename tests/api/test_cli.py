"""The `cinch` command as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, _free_port

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]


def _serve_until_ready(env: dict[str, str], timeout_s: float = 90) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--local-key"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    out = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out += line
        if "Stop it with" in line:
            return proc, out
    proc.kill()
    raise AssertionError(f"cinch serve did not come up:\n{out}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    tail = proc.stdout.read()  # drains until exit
    proc.stdout.close()
    assert proc.wait(30) == 0, tail


def test_first_run_prints_a_working_key_once_and_later_runs_keep_it(
    engine_ready, database_url, tmp_path
):
    env = {
        **os.environ,
        "CINCH_DATA_DIR": str(tmp_path),
        "CINCH_DATABASE_URL": database_url,
        "CINCH_PORT": str(_free_port()),
        "CINCH_POOL_PYTHON": "1",
        "CINCH_POOL_JAVASCRIPT": "0",
    }
    proc, out = _serve_until_ready(env)
    try:
        key = re.search(r"cinch_live_[0-9A-Za-z]{43}", out)
        assert key, out
        key_file = tmp_path / "local-api-key"
        assert key_file.read_text().strip() == key.group(0)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert '"stdout":"4\\n"' in answer.stdout, answer.stdout + answer.stderr
    finally:
        _stop(proc)

    proc, out = _serve_until_ready(env)
    try:
        assert "already exists" in out
        assert "cinch key create" in out
        assert not re.search(r"cinch_live_[0-9A-Za-z]{43}", out)
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert '"stdout":"4\\n"' in answer.stdout, "the first key must keep working"
    finally:
        _stop(proc)


def test_bad_configuration_names_the_variable(tmp_path):
    env = {**os.environ, "CINCH_DATA_DIR": str(tmp_path), "CINCH_POOL_PYTHON": "many"}
    out = subprocess.run([sys.executable, "-m", "api", "config"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "CINCH_POOL_PYTHON" in out.stderr
    assert "Traceback" not in out.stderr
