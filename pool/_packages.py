"""The third-party packages in each sandbox image, read from the lock files under images/.

Python: ``images/python/requirements.lock``, written by ``scripts/lock-python-packages``
from ``requirements.in``: every package (dependencies too) pinned to one wheel, with its
sha256, for the sandbox's interpreter (CPython 3.11 of Debian bookworm, glibc 2.36,
x86_64).  ``pip.lock`` pins the pip that installs them inside the image build.
Node: ``images/node/package.json`` and npm's ``package-lock.json`` (integrity hashes).

The image build fetches them on the host (``pip download --require-hashes``, ``npm ci``)
and installs them with no network inside the build (``pool._images``).  ``GET /languages``
lists them from these files, so the API role, which has no engine, knows them too.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ._errors import PoolError

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
PYTHON_LOCK = IMAGES_DIR / "python" / "requirements.lock"
PIP_LOCK = IMAGES_DIR / "python" / "pip.lock"
NODE_LOCK = IMAGES_DIR / "node" / "package-lock.json"

# The sandbox's interpreter: Debian bookworm's python3.
PYTHON_VERSION = "3.11"
PYTHON_ABI = "cp311"
GLIBC_VERSION = (2, 36)
MACHINE = "x86_64"


class LockFileError(PoolError):
    """A lock file under images/ is malformed: a line without an exact pin or a hash.

    Ours (the repository's), never the user's.
    """


@dataclass(frozen=True)
class LockedWheel:
    """One line of a requirements lock: ``name==version`` and the sha256 of its wheel(s)."""

    name: str
    version: str
    sha256: tuple[str, ...]


@dataclass(frozen=True)
class Package:
    """A package installed in a sandbox image, as ``GET /languages`` lists it."""

    name: str
    version: str


def wheel_platforms() -> list[str]:
    """pip ``--platform`` tags the sandbox accepts, most specific first.

    pip does not expand ``manylinux_2_36`` to the older glibc versions it implies, so
    every one is listed (down to manylinux1, which is glibc 2.5).
    """
    major, minor = GLIBC_VERSION
    tags = [f"manylinux_{major}_{m}_{MACHINE}" for m in range(minor, 4, -1)]
    return [*tags, f"manylinux2014_{MACHINE}", f"manylinux2010_{MACHINE}", f"manylinux1_{MACHINE}"]


def pip_target_args() -> list[str]:
    """The pip options that make a host's pip choose wheels for the sandbox's interpreter."""
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION]
    args += ["--implementation", "cp", "--abi", PYTHON_ABI]
    for tag in wheel_platforms():
        args += ["--platform", tag]
    return args


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")
_HASH = re.compile(r"^--hash=sha256:([0-9a-f]{64})$")


def parse_requirements_lock(text: str, *, source: str = "requirements.lock") -> list[LockedWheel]:
    """The entries of a pip requirements file in ``--require-hashes`` form.

    Each requirement is ``name==version`` followed by at least one
    ``--hash=sha256:...`` (on the same line or on ``\\``-continued ones).  Anything
    else (a range, an extra, a marker, a URL, an option) is refused: the lock is
    generated, and pip's hash-checking mode would refuse it too.
    """
    entries: list[LockedWheel] = []
    logical: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            logical.append((start, pending.strip()))
        pending = ""
    if pending.strip():
        raise LockFileError(f"{source}:{start}: the file ends in a line continuation")
    seen: set[str] = set()
    for number, line in logical:
        pin, *options = line.split()
        match = _PIN.match(pin)
        if match is None:
            raise LockFileError(f"{source}:{number}: {pin!r} is not an exact name==version pin")
        hashes = []
        for option in options:
            h = _HASH.match(option)
            if h is None:
                raise LockFileError(f"{source}:{number}: {option!r} is not --hash=sha256:<hex>")
            hashes.append(h.group(1))
        if not hashes:
            raise LockFileError(f"{source}:{number}: {pin} has no --hash")
        key = normalize_name(match.group(1))
        if key in seen:
            raise LockFileError(f"{source}:{number}: {match.group(1)} is listed twice")
        seen.add(key)
        entries.append(LockedWheel(match.group(1), match.group(2), tuple(hashes)))
    return entries


def normalize_name(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_python_lock(path: Path = PYTHON_LOCK) -> list[LockedWheel]:
    return parse_requirements_lock(path.read_text(), source=path.name)


def node_packages_from_lock(lock: dict[str, object]) -> list[Package]:
    """Every package ``npm ci`` installs from a v2/v3 ``package-lock.json``."""
    packages = lock.get("packages")
    if not isinstance(packages, dict):
        raise LockFileError("package-lock.json: no 'packages' (lockfileVersion 2 or 3 needed)")
    found = []
    for key, meta in packages.items():
        if not key or not isinstance(meta, dict) or meta.get("dev"):
            continue  # "" is the project itself
        name = key.rsplit("node_modules/", 1)[-1]
        found.append(Package(name, str(meta.get("version", ""))))
    return sorted(found, key=lambda p: p.name.lower())


@functools.cache
def installed_packages(language: str) -> tuple[Package, ...]:
    """What the image of ``language`` has installed, from the repository's lock files.

    Read once per process (the files are part of the code, like the templates).
    """
    if language == "python":
        wheels = read_python_lock()
        return tuple(sorted((Package(w.name, w.version) for w in wheels), key=_sort_key))
    if language == "javascript":
        return tuple(node_packages_from_lock(json.loads(NODE_LOCK.read_text())))
    raise KeyError(language)


def _sort_key(p: Package) -> str:
    return normalize_name(p.name)
