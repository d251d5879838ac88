"""CINCH_CGROUP_PARENT and CINCH_SANDBOX_CPUS: where sandboxes go and how much CPU each may use.

bench.capped_nodes needs both: each node's sandboxes under the node's CPU-capped
group, and a sandbox limit that fits in it (cgroup v1 refuses a child's quota above
its parent's). The defaults keep what `cinch setup` prepared and one core.
"""

from __future__ import annotations

from typing import Any

import pytest

from api._config import Config, ConfigError
from api._pools import sandbox_cgroup_parent


def test_sandbox_cpus_default_and_range() -> None:
    assert Config.from_env({}).sandbox_cpus == 1.0
    assert Config.from_env({"CINCH_SANDBOX_CPUS": "0.5"}).sandbox_cpus == 0.5
    for bad in ("0", "-1", "100", "half"):
        with pytest.raises(ConfigError):
            Config.from_env({"CINCH_SANDBOX_CPUS": bad})


class NoEngine:
    async def info(self) -> Any:
        raise AssertionError("a configured parent needs no engine call")


async def test_a_configured_cgroup_parent_is_used_as_is() -> None:
    assert await sandbox_cgroup_parent(NoEngine(), "/node-1") == "/node-1"  # type: ignore[arg-type]
    assert Config.from_env({"CINCH_CGROUP_PARENT": "/node-1"}).cgroup_parent == "/node-1"
    assert Config.from_env({}).cgroup_parent == ""
