"""/docs: public, consistent with GET /languages, and every example on it works as shown."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import httpx
import pytest

from tests.conftest import REPO, need

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]


def _examples(page: str) -> dict[str, str]:
    return {
        name: html.unescape(code)
        for name, code in re.findall(
            r'<code id="example-[\w-]+" data-example="([\w-]+)">(.*?)</code>', page, re.S
        )
    }


def _cell(page: str, attribute: str, name: str) -> str:
    match = re.search(rf'<td {attribute}="{re.escape(name)}">(.*?)</td>', page, re.S)
    assert match, f"no {attribute}={name} on /docs"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1)))


def test_docs_state_the_limits_and_environment_that_languages_serves(cinch_live):
    page = httpx.get(cinch_live.base_url + "/docs", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    doc = page.text
    info = httpx.get(cinch_live.base_url + "/languages", timeout=30).json()
    limits = info["limits"]
    assert _cell(doc, "data-limit", "timeoutSeconds").startswith(
        f"{limits['timeoutSeconds']:g} seconds"
    )
    assert _cell(doc, "data-limit", "memoryBytes").startswith(
        f"{limits['memoryBytes'] // 2**20} MB"
    )
    assert f"{limits['outputBytes'] // 2**20} MB" in _cell(doc, "data-limit", "outputBytes")
    assert f"{limits['codeBytes']:,} bytes" in _cell(doc, "data-limit", "codeBytes")
    assert f"{limits['stdinBytes']:,} bytes" in _cell(doc, "data-limit", "stdinBytes")
    assert f"({limits['tmpBytes'] // 2**20} MB)" in _cell(doc, "data-limit", "tmpBytes")
    assert str(limits["processes"]) in _cell(doc, "data-limit", "processes")
    assert _cell(doc, "data-limit", "network").startswith("None")
    for name, value in info["environment"].items():
        assert _cell(doc, "data-env", name) == value
    for language in info["languages"]:
        assert language["version"], language
        cell = _cell(doc, "data-language", language["name"])
        assert cell.startswith(language["version"])
        for alias in language["aliases"]:
            assert alias in cell
    # The public docs' promises (CINCH-DOCS.md) are stated here too.
    for fact in ("1 credit = 1 millisecond", "10,000 free credits", "from $5", "256 MB", "402"):
        assert fact in html.unescape(doc), fact


def test_every_example_on_docs_runs_as_shown(cinch_live, tmp_path):
    need(shutil.which("curl") is not None, "curl is not installed")
    need(shutil.which("node") is not None, "node is not installed")
    need(
        (REPO / "sdk/js/dist/esm/index.js").exists(), "the JS SDK is not built (npm test in sdk/js)"
    )
    examples = _examples(httpx.get(cinch_live.base_url + "/docs", timeout=30).text)
    assert set(examples) == {"curl", "python", "javascript", "javascript-sdk"}
    env = {**os.environ, "CINCH_API_KEY": cinch_live.new_key(10_000)}
    env.pop("CINCH_BASE_URL", None)

    def run(args: list[str], cwd=tmp_path) -> str:
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    body = json.loads(run(["bash", "-c", examples["curl"]]))
    assert body["stdout"] == "4\n"
    assert body["exitCode"] == 0

    (tmp_path / "example.py").write_text(examples["python"])
    assert run([str(REPO / ".venv/bin/python"), "example.py"]) == "4\n0\n"

    (tmp_path / "run.mjs").write_text(examples["javascript"])
    assert run(["node", "run.mjs"]) == "4\n0\n"

    # The SDK example imports "@cinch/sdk": resolve it to this repository's build.
    project = tmp_path / "sdk-example"
    (project / "node_modules" / "@cinch").mkdir(parents=True)
    (project / "node_modules" / "@cinch" / "sdk").symlink_to(REPO / "sdk" / "js")
    (project / "run.mjs").write_text(examples["javascript-sdk"])
    assert run(["node", "run.mjs"], cwd=project) == "4\n0\n"
