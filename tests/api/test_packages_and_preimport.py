"""Issue 18 without an engine: GET /languages lists the locked packages, and
CINCH_PYTHON_PREIMPORT is validated and reaches only the Python sandbox's environment."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api import Config, create_app
from api._config import ConfigError
from pool import SandboxLimits, container_config
from pool._packages import NODE_LOCK, read_python_lock
from pool._spec import SANDBOX_ENV


@pytest.fixture
async def client(tmp_path: Any) -> Any:
    # No scheduler, no engine, no image labels: as `cinch api` is.
    app = create_app(Config.from_env({}, data_dir=tmp_path), scheduler=None, store=None)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def test_languages_lists_every_locked_package_with_its_version(client: Any) -> None:
    doc = await (await client.get("/languages")).get_json()
    listed = {
        lang["name"]: {p["name"]: p["version"] for p in lang["packages"]}
        for lang in doc["languages"]
    }
    assert listed["python"] == {w.name: w.version for w in read_python_lock()}
    for name in ("numpy", "pandas", "scipy", "matplotlib", "scikit-learn", "pyyaml"):
        assert name in listed["python"], name
    lock = json.loads(NODE_LOCK.read_text())["packages"]
    assert listed["javascript"]["lodash"] == lock["node_modules/lodash"]["version"]
    assert len(listed["javascript"]) == len(lock) - 1  # every package npm ci installs


def test_preimport_is_parsed_and_given_to_python_sandboxes_only() -> None:
    config = Config.from_env({"CINCH_PYTHON_PREIMPORT": " numpy, pandas ,matplotlib.pyplot"})
    assert config.python_preimports() == ("numpy", "pandas", "matplotlib.pyplot")
    assert config.sandbox_env() == {"python": {"CINCH_PREIMPORT": "numpy,pandas,matplotlib.pyplot"}}
    assert Config.from_env({}).sandbox_env() == {}  # the default changes nothing


@pytest.mark.parametrize(
    "value", ["numpy;import os", "numpy,,pandas", "1numpy", "os.path.", "numpy pandas", "é"]
)
def test_a_bad_preimport_stops_start_up_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="CINCH_PYTHON_PREIMPORT"):
        Config.from_env({"CINCH_PYTHON_PREIMPORT": value})


def _spec(env: dict[str, str] | None) -> dict[str, Any]:
    return container_config(
        image="cinch/python:x",
        language="python",
        runtime="runsc-ptrace",
        owner="o",
        limits=SandboxLimits(),
        cgroup_parent=None,
        env=env,
    )


def test_container_env_adds_the_runners_variables_and_keeps_the_fixed_ones() -> None:
    assert _spec(None)["Env"] == list(SANDBOX_ENV)
    env = _spec({"CINCH_PREIMPORT": "numpy"})["Env"]
    assert env == [*SANDBOX_ENV, "CINCH_PREIMPORT=numpy"]
    with pytest.raises(ValueError, match="HOME"):
        _spec({"HOME": "/"})
