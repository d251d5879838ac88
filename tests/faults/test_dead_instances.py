"""Sandboxes of a kill -9'd instance: reported, removed, and never another live instance's.

Two real ``cinch serve`` processes share the engine; one is killed with
SIGKILL and leaves its gVisor sandboxes behind.  ``cinch cleanup`` removes
exactly those (the live one's stay and it keeps serving); then the live one
is killed too and a third instance removes its sandboxes at start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, fresh_database, start_live_server, stop_live_server
from tests.faults.test_drills import end_of_drill, engine
from tests.live_checks import containers_of, instance_id, ledger_mismatches, post_run, wait_until

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]
__all__ = ["engine"]

POOLS = {"CINCH_POOL_PYTHON": "1", "CINCH_POOL_JAVASCRIPT": "0"}


def cinch(data_dir: Path, *args: str) -> str:
    env = {**os.environ, "CINCH_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "api", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_dead_instances_sandboxes_are_removed_and_live_ones_kept(
    engine: None, pg_url: str, tmp_path: Path
) -> None:
    since = time.time()
    for name in ("a", "b", "c", "admin"):
        (tmp_path / name).mkdir()
    a = start_live_server(fresh_database(pg_url), tmp_path / "a", **POOLS)
    b = start_live_server(fresh_database(pg_url), tmp_path / "b", **POOLS)
    c = None
    owner_a, owner_b = instance_id(tmp_path / "a"), instance_id(tmp_path / "b")
    try:
        for server in (a, b):
            assert post_run(server.base_url, server.new_key(), "print(1)").status == 200
        os.kill(a.process.pid, signal.SIGKILL)
        a.process.wait(10)
        # A removal the dead instance had already asked for may still be under way
        # in the engine: wait until its leftovers stop changing.
        left = containers_of(owner_a)
        for _ in range(20):
            time.sleep(1)
            now = containers_of(owner_a)
            if {c.id for c in now} == {c.id for c in left}:
                break
            left = now
        assert left, "a killed instance leaves its sandboxes"
        labels = left[0].labels
        assert labels["cinch.data-dir"] == str((tmp_path / "a").resolve())

        report = cinch(tmp_path / "admin", "cleanup", "--dry-run")
        assert f"would remove {len(left)} container(s) of {owner_a}" in report, report
        assert f"of {owner_b} (alive" in report, report
        assert containers_of(owner_a), "a dry run removes nothing"

        report = cinch(tmp_path / "admin", "cleanup")
        assert f"removed {len(left)} container(s) of {owner_a}" in report, report
        assert wait_until(lambda: not containers_of(owner_a), 60)
        # The live instance's sandboxes were never touched; it still serves.
        assert containers_of(owner_b)
        again = post_run(b.base_url, b.new_key(), "print(2)", retry_503=3)
        assert again.status == 200, again.body

        # Kill the other one too: the next instance to start removes what it left.
        os.kill(b.process.pid, signal.SIGKILL)
        b.process.wait(10)
        assert containers_of(owner_b)
        c = start_live_server(fresh_database(pg_url), tmp_path / "c", **POOLS)
        assert wait_until(lambda: not containers_of(owner_b), 60)
        assert "dead instance " + owner_b in c.log_tail(20000)
        for server in (a, b):
            assert ledger_mismatches(server) == []
    finally:
        stop_live_server(a)
        stop_live_server(b)
        if c is not None:
            end_of_drill(c, instance_id(tmp_path / "c"), since)
