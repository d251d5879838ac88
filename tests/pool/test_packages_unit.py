"""The lock files under images/ pin every package with a hash, and the image tags follow them.

No engine, no network: these read the repository's files (issue 18).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pool import _images
from pool._images import plan
from pool._languages import LANGUAGES
from pool._packages import (
    NODE_LOCK,
    PIP_LOCK,
    PYTHON_LOCK,
    LockFileError,
    installed_packages,
    normalize_name,
    parse_requirements_lock,
    pip_target_args,
    wheel_platforms,
)

REQUIREMENTS_IN = PYTHON_LOCK.with_name("requirements.in")
NODE_PACKAGE_JSON = NODE_LOCK.with_name("package.json")
SHA256_LINE = re.compile(r"^    --hash=sha256:[0-9a-f]{64}( \\)?$")


@pytest.mark.parametrize("lock", [PYTHON_LOCK, PIP_LOCK], ids=lambda p: p.name)
def test_every_requirement_line_has_a_sha256(lock: Path) -> None:
    lines = lock.read_text().splitlines()
    pins = 0
    for i, line in enumerate(lines):
        if not line or line.startswith(("#", "    #")) or SHA256_LINE.match(line):
            continue
        # name==version, continued on the next line by the sha256 of its wheel
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[^ ]+ \\", line), f"{lock.name}: {line!r}"
        assert SHA256_LINE.match(lines[i + 1]), (line, lines[i + 1])
        pins += 1
    assert pins, f"{lock.name} pins nothing"
    entries = parse_requirements_lock(lock.read_text(), source=lock.name)
    assert len(entries) == pins
    assert all(e.sha256 for e in entries)


def test_the_lock_holds_what_requirements_in_asks_for() -> None:
    wanted = {
        normalize_name(line.split("#", 1)[0].strip())
        for line in REQUIREMENTS_IN.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    }
    locked = {normalize_name(p.name) for p in installed_packages("python")}
    assert wanted - locked == set(), "run scripts/lock-python-packages"
    # what issue 18 names, at least
    assert {
        "numpy", "pandas", "scipy", "matplotlib", "scikit-learn", "sympy", "pillow",
        "networkx", "python-dateutil", "pytz", "pyyaml", "beautifulsoup4", "tabulate",
    } <= locked  # fmt: skip
    assert "pip" not in locked  # pip installs them; it is not installed itself
    assert [normalize_name(e.name) for e in parse_requirements_lock(PIP_LOCK.read_text())] == [
        "pip"
    ]


def test_wheels_are_for_the_sandboxs_interpreter() -> None:
    # Every wheel the lock names fits CPython 3.11 on glibc <= 2.36, x86_64.
    platforms = set(wheel_platforms())
    assert "manylinux_2_36_x86_64" in platforms
    assert "manylinux_2_17_x86_64" in platforms
    assert "manylinux2014_x86_64" in platforms
    assert not any("2_37" in p or "aarch64" in p for p in platforms)
    wheels = re.findall(r"^    # (\S+\.whl)$", PYTHON_LOCK.read_text(), re.M)
    assert len(wheels) == len(installed_packages("python"))
    for wheel in wheels:
        _name, _version, python, abi, platform = wheel[:-4].split("-")[-5:]
        assert python in ("py3", "py2.py3", "cp311"), wheel
        assert abi in ("none", "cp311", "abi3"), wheel
        assert platform == "any" or set(platform.split(".")) & platforms, wheel
    args = pip_target_args()
    assert "--only-binary=:all:" in args
    assert args[args.index("--abi") + 1] == "cp311"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("numpy>=2 --hash=sha256:" + "a" * 64, "exact"),
        ("numpy==2.0", "no --hash"),
        ("numpy==2.0 --hash=md5:abc", "--hash=sha256"),
        ("numpy==2.0 \\\n    --hash=sha256:" + "a" * 64 + " \\", "continuation"),
        ("numpy[extra]==2.0 --hash=sha256:" + "a" * 64, "exact"),
        (("x==1 --hash=sha256:" + "b" * 64 + "\n") * 2, "twice"),
    ],
)
def test_a_malformed_lock_is_refused(text: str, message: str) -> None:
    with pytest.raises(LockFileError, match=message):
        parse_requirements_lock(text)


def test_continued_lines_and_comments_parse() -> None:
    text = (
        "# header\n"
        "numpy==2.4.6 \\\n"
        "    --hash=sha256:" + "a" * 64 + " \\\n"
        "    --hash=sha256:" + "b" * 64 + "\n"
        "    # via pandas\n"
        "tzdata==2026.6 --hash=sha256:" + "c" * 64 + "  # inline\n"
    )
    entries = parse_requirements_lock(text)
    assert [(e.name, e.version, len(e.sha256)) for e in entries] == [
        ("numpy", "2.4.6", 2),
        ("tzdata", "2026.6", 1),
    ]


def test_node_packages_are_pinned_with_integrity() -> None:
    manifest = json.loads(NODE_PACKAGE_JSON.read_text())
    lock = json.loads(NODE_LOCK.read_text())
    assert lock["lockfileVersion"] >= 2
    deps = manifest["dependencies"]
    assert {"lodash", "dayjs", "papaparse", "decimal.js"} <= set(deps)
    for name, version in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: {version} is not exact"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert lock["packages"][""]["dependencies"] == deps, "run npm install --package-lock-only"
    for key, meta in lock["packages"].items():
        if key:
            assert meta["integrity"].startswith("sha512-"), key
            assert meta["resolved"].startswith("https://registry.npmjs.org/"), key
    listed = {p.name: p.version for p in installed_packages("javascript")}
    assert listed == {
        k.rsplit("node_modules/", 1)[-1]: m["version"] for k, m in lock["packages"].items() if k
    }


def test_the_image_tags_follow_the_lock_files(tmp_path: Path, monkeypatch) -> None:
    images = tmp_path / "images"
    shutil.copytree(_images.IMAGES_DIR, images)
    monkeypatch.setattr(_images, "IMAGES_DIR", images)
    before = {name: plan(lang).tag for name, lang in LANGUAGES.items()}
    stage_before = _images.packages_hash(LANGUAGES["python"])
    with open(images / "python" / "requirements.lock", "a") as f:
        f.write("# a change\n")
    with open(images / "node" / "package-lock.json", "a") as f:
        f.write("\n")
    after = {name: plan(lang).tag for name, lang in LANGUAGES.items()}
    assert before["python"] != after["python"]
    assert before["javascript"] != after["javascript"]
    # The packages stage reruns for a lock change, not for a loader change.
    assert _images.packages_hash(LANGUAGES["python"]) != stage_before
    stage = _images.packages_hash(LANGUAGES["python"])
    with open(images / "python" / "loader.py", "a") as f:
        f.write("# a change\n")
    assert plan(LANGUAGES["python"]).tag != after["python"]
    assert _images.packages_hash(LANGUAGES["python"]) == stage
