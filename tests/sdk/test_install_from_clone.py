"""Both SDKs install from a clean clone exactly as the docs say, and the docs say one thing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER_DOCS = [
    "README.md",
    "sdk/python/README.md",
    "sdk/js/README.md",
    "api/templates/docs.html",
    "api/_dashboard.py",  # the examples shown on /docs
]
BASE_URL = "http://127.0.0.1:9"  # never contacted: only the configured value is checked


def _run(*cmd: str | Path, cwd: Path, **env: str) -> str:
    out = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_docs_name_the_packages_consistently_and_install_from_a_clone() -> None:
    for name in USER_DOCS:
        text = (REPO / name).read_text()
        # Neither is on a registry in the version documented here.
        assert not re.search(r"npm (install|i) @cinch/sdk", text), name
        assert not re.search(r"pip install pangolin-sdk\b", text), name
    for name in ("README.md", "sdk/python/README.md", "api/templates/docs.html"):
        text = (REPO / name).read_text()
        assert "pip install ./sdk/python" in text, name
        assert "pangolin-sdk" in text, name
    for name in ("README.md", "sdk/js/README.md", "api/templates/docs.html"):
        text = (REPO / name).read_text()
        assert "npm pack" in text, name
        assert "@cinch/sdk" in text, name
    for name in ("README.md", "sdk/python/README.md", "sdk/js/README.md"):
        assert "https://api.cinch.codes" in (REPO / name).read_text(), f"{name}: say the default"


@pytest.mark.slow
def test_both_sdks_install_from_a_clean_clone(tmp_path: Path) -> None:
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("node and npm are needed to install the JS SDK")
    clone = tmp_path / "cinch"
    # What is committed, nothing else: no venv, no node_modules, no build left over.
    _run("git", "clone", "--quiet", "--no-hardlinks", REPO, clone, cwd=tmp_path)

    # Python, as README says: pip install ./sdk/python
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "./sdk/python", cwd=clone)
    script = (
        "import importlib.metadata, pangolin; "
        "assert importlib.metadata.version('pangolin-sdk') == pangolin.__version__; "
        "box = pangolin.Sandbox(api_key='cinch_live_x'); "
        f"assert box.base_url == {BASE_URL!r}, box.base_url; "
        "print(pangolin.__version__)"
    )
    assert _run(python, "-c", script, cwd=tmp_path, CINCH_BASE_URL=BASE_URL).strip()

    # JavaScript, as sdk/js/README.md says: npm pack (no npm ci), then install the tarball...
    tarball = _run(npm, "pack", "--silent", cwd=clone / "sdk" / "js").strip().splitlines()[-1]
    check = (
        "const { Sandbox } = require('@cinch/sdk'); "
        f"if (new Sandbox({{ apiKey: 'cinch_live_x' }}).baseUrl !== {BASE_URL!r}) process.exit(3);"
    )
    esm_check = (
        "import { Sandbox, VERSION } from '@cinch/sdk'; console.log(typeof Sandbox, VERSION);"
    )
    for name, spec in (
        ("from-tarball", clone / "sdk" / "js" / tarball),
        ("from-folder", clone / "sdk" / "js"),  # ...or the clone's folder itself
    ):
        app = tmp_path / name
        app.mkdir()
        (app / "package.json").write_text('{"name": "app", "private": true}\n')
        _run(npm, "install", "--no-audit", "--no-fund", spec, cwd=app)
        _run(node, "-e", check, cwd=app, CINCH_BASE_URL=BASE_URL)
        assert _run(node, "--input-type=module", "-e", esm_check, cwd=app).startswith("function")

    # The committed dist/ is what src/ builds to (else the installs above were stale).
    _run(npm, "ci", "--no-audit", "--no-fund", cwd=clone / "sdk" / "js")
    _run(npm, "run", "build", cwd=clone / "sdk" / "js")
    changed = _run("git", "status", "--porcelain", "--", "sdk/js/dist", cwd=clone)
    assert changed == "", f"sdk/js/dist is stale; run npm run build and commit it:\n{changed}"
