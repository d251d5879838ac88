"""Bring up the sandbox engine on this machine: packages, runsc, dockerd, cgroup.

Idempotent: a second call finds everything in place and changes nothing.  It
uses a running engine when one answers (respecting ``DOCKER_HOST``) and
registers our runtimes by editing the daemon config and reloading it (SIGHUP),
never restarting someone's engine; otherwise it starts ``dockerd`` itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from ._cgroups import V1_PARENT, V2_PARENT
from ._docker import DockerClient, socket_path_from_env
from ._errors import PoolError

Progress = Callable[[str], None]

RUNSC_VERSION = "0.0~20240729.0-4+b7"  # Debian trixie's build: statx, systrap, fixes
RUNSC_MIN_DATE = 20240729
RUNTIMES = {
    "runsc-ptrace": ["--network=none", "--platform=ptrace"],
    "runsc-systrap": ["--network=none", "--platform=systrap"],
}
DAEMON_JSON = Path("/etc/docker/daemon.json")
CGROUP_NAME = "cinch-sandboxes"
# The sandboxes' parent: an eighth of the default weight (the API's, the
# engine's, the database's); the pool also makes it SCHED_IDLE (pool/_cgroups.py).
CGROUP_V1_SHARES = V1_PARENT
CGROUP_V2_WEIGHT = V2_PARENT


class SetupError(PoolError):
    """Something this machine lacks that setup cannot fix; the message says what to do."""


@dataclass(frozen=True)
class EngineState:
    socket_path: str
    started_by_us: bool
    runtimes: list[str]
    cgroup_parent: str | None


def _run(cmd: list[str], progress: Progress, **kw: object) -> subprocess.CompletedProcess[bytes]:
    progress(f"  $ {' '.join(cmd)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(cmd, capture_output=True, env=env, check=False, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).decode("utf-8", "replace")[-1500:]
        raise SetupError(f"{cmd[0]} failed (exit {result.returncode}):\n{tail}")
    return result  # type: ignore[no-any-return]


def _is_debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    ids = " ".join(re.findall(r'^(?:ID|ID_LIKE)="?([^"\n]*)', text, re.M))
    return "debian" in ids or "ubuntu" in ids


# -- packages -------------------------------------------------------------------


def ensure_packages(progress: Progress, *, need_dockerd: bool) -> None:
    """apt-get install what is missing: docker.io, debootstrap, gcc, npm."""
    wanted = {
        "debootstrap": "debootstrap",
        "gcc": "gcc",
        "npm": "npm",
        "tar": "tar",
    }
    missing = [pkg for tool, pkg in wanted.items() if shutil.which(tool) is None]
    if not Path("/usr/include/stdio.h").exists():
        missing.append("libc6-dev")
    if need_dockerd and shutil.which("dockerd") is None:
        missing.append("docker.io")
    if not missing:
        progress("packages: present")
        return
    if os.geteuid() != 0 or not _is_debian_like() or shutil.which("apt-get") is None:
        raise SetupError(
            "missing: " + ", ".join(missing) + ". Install them (as root on Debian/Ubuntu, "
            "`cinch setup` does it with apt-get)."
        )
    progress(f"packages: installing {' '.join(missing)}")
    _run(["apt-get", "update", "-q"], progress)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], progress)


def _runsc_date(path: str) -> int:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, check=False).stdout.decode()
    except OSError:
        return 0
    m = re.search(r"(\d{8})", out)
    return int(m.group(1)) if m else 0


def find_runsc() -> str | None:
    for candidate in (shutil.which("runsc"), "/usr/bin/runsc", "/usr/local/bin/runsc"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def ensure_runsc(progress: Progress) -> str:
    """runsc from Debian trixie (2024-07-29) or newer; bookworm's 2022 build breaks `ls`."""
    path = find_runsc()
    if path and _runsc_date(path) >= RUNSC_MIN_DATE:
        progress(f"runsc: {path} ({_runsc_date(path)})")
        return path
    if os.geteuid() != 0 or not _is_debian_like():
        raise SetupError(
            f"gVisor runsc {RUNSC_MIN_DATE} or newer is needed; install runsc "
            f"{RUNSC_VERSION} (Debian trixie) and run `cinch setup` again"
        )
    progress(f"runsc: fetching {RUNSC_VERSION} from Debian trixie")
    uris = _debian_uris()
    if not uris:
        raise SetupError(
            "no Debian mirror is configured in /etc/apt; install runsc "
            f"{RUNSC_VERSION} from Debian trixie by hand"
        )
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "lists/partial").mkdir(parents=True)
        (t / "cache/archives/partial").mkdir(parents=True)
        sources = t / "trixie.sources"
        sources.write_text(
            f"Types: deb\nURIs: {uris[0]}\nSuites: trixie\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        opts = [
            "-o",
            f"Dir::Etc::SourceList={sources}",
            "-o",
            "Dir::Etc::SourceParts=-",
            "-o",
            f"Dir::State::Lists={t / 'lists'}",
            "-o",
            f"Dir::Cache={t / 'cache'}",
            "-o",
            "APT::Sandbox::User=root",
        ]
        _run(["apt-get", *opts, "update", "-q"], progress)
        _run(["apt-get", *opts, "download", f"runsc={RUNSC_VERSION}"], progress, cwd=tmp)
        debs = list(t.glob("runsc_*.deb"))
        if not debs:
            raise SetupError("apt-get download runsc produced no package")
        _run(["dpkg", "-i", str(debs[0])], progress)
    path = find_runsc()
    if not path or _runsc_date(path) < RUNSC_MIN_DATE:
        raise SetupError("runsc was installed but does not report a 2024 build")
    return path


def _debian_uris() -> list[str]:
    uris: list[str] = []
    for f in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        uris += re.findall(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M)
        uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s+\S+", text, re.M)
    return [u for u in uris if "security" not in u]


# -- engine -----------------------------------------------------------------------


async def _engine_answers(socket_path: str) -> bool:
    try:
        async with DockerClient(socket_path, timeout_s=3) as client:
            await client.ping()
        return True
    except PoolError:
        return False


async def _engine_runtimes(socket_path: str) -> list[str]:
    async with DockerClient(socket_path) as client:
        return list((await client.info()).get("Runtimes", {}))


def _dockerd_pid() -> int | None:
    try:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "dockerd":
                    return int(entry)
            except OSError:
                continue
    return None


def _merge_runtimes(config: dict[str, object], runsc: str) -> bool:
    runtimes = config.setdefault("runtimes", {})
    assert isinstance(runtimes, dict)
    changed = False
    for name, args in RUNTIMES.items():
        want = {"path": runsc, "runtimeArgs": args}
        if runtimes.get(name) != want:
            runtimes[name] = want
            changed = True
    return changed


def _write_daemon_json(config: dict[str, object]) -> None:
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    tmp = DAEMON_JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, DAEMON_JSON)


async def ensure_engine(runsc: str, data_dir: Path, progress: Progress) -> EngineState:
    """Use the running engine (and register our runtimes), or start dockerd ourselves."""
    socket_path = socket_path_from_env()
    config: dict[str, object] = {}
    if DAEMON_JSON.exists():
        config = json.loads(DAEMON_JSON.read_text() or "{}")
    started = False
    if await _engine_answers(socket_path):
        have = await _engine_runtimes(socket_path)
        if all(name in have for name in RUNTIMES):
            progress(f"engine: {socket_path} answers, runtimes registered")
        else:
            pid = _dockerd_pid()
            if pid is None:
                raise SetupError(
                    f"the engine at {socket_path} is not a local dockerd; register runtimes "
                    f"{', '.join(RUNTIMES)} (path {runsc}, args --network=none "
                    "--platform=ptrace|systrap) in its daemon config"
                )
            _merge_runtimes(config, runsc)
            _write_daemon_json(config)
            progress(f"engine: registered runtimes in {DAEMON_JSON}, reloading dockerd (SIGHUP)")
            os.kill(pid, signal.SIGHUP)
            for _ in range(50):
                registered = await _engine_runtimes(socket_path)
                if all(n in registered for n in RUNTIMES):
                    break
                await trio.sleep(0.2)
            else:
                raise SetupError("dockerd did not pick up the runtimes after SIGHUP")
    else:
        if shutil.which("dockerd") is None:
            raise SetupError("dockerd is not installed: apt-get install docker.io")
        if _merge_runtimes(config, runsc) or not DAEMON_JSON.exists():
            _write_daemon_json(config)
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = data_dir / "dockerd.log"
        progress(f"engine: starting dockerd (log: {log_path})")
        args = ["dockerd", f"--config-file={DAEMON_JSON}"]
        if socket_path != "/var/run/docker.sock":
            args.append(f"--host=unix://{socket_path}")
        with open(log_path, "ab") as log:
            subprocess.Popen(
                args,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + 90
        while not await _engine_answers(socket_path):
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise SetupError(f"dockerd did not answer within 90 s; log tail:\n{tail}")
            await trio.sleep(0.3)
        started = True
    async with DockerClient(socket_path) as client:
        info = await client.info()
    cgroup_parent = ensure_cgroup_parent(str(info.get("CgroupDriver", "cgroupfs")), progress)
    return EngineState(socket_path, started, list(info.get("Runtimes", {})), cgroup_parent)


# -- cgroup -------------------------------------------------------------------------


def cgroup_parent_for(driver: str) -> str:
    return f"{CGROUP_NAME}.slice" if driver == "systemd" else f"/{CGROUP_NAME}"


def ensure_cgroup_parent(driver: str, progress: Progress) -> str | None:
    """A parent cgroup whose CPU weight is below everything else's."""
    root = Path("/sys/fs/cgroup")
    if driver == "systemd":
        name = cgroup_parent_for(driver)
        if shutil.which("systemctl"):
            subprocess.run(
                ["systemctl", "set-property", "--runtime", name, f"CPUWeight={CGROUP_V2_WEIGHT}"],
                capture_output=True,
                check=False,
            )
        progress(f"cgroup: {name} (systemd, CPUWeight={CGROUP_V2_WEIGHT})")
        return name
    try:
        if (root / "cgroup.controllers").exists():  # cgroup v2, cgroupfs driver
            group = root / CGROUP_NAME
            group.mkdir(exist_ok=True)
            controllers = (root / "cgroup.controllers").read_text().split()
            if "cpu" in controllers:
                subtree = root / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
                (group / "cpu.weight").write_text(str(CGROUP_V2_WEIGHT))
            progress(f"cgroup: {group} (v2, cpu.weight={CGROUP_V2_WEIGHT})")
        else:  # cgroup v1
            cpu = next((root / n for n in ("cpu", "cpu,cpuacct") if (root / n).is_dir()), None)
            if cpu is None:
                progress("cgroup: no cpu controller mounted; sandboxes share the default weight")
                return cgroup_parent_for(driver)
            group = cpu / CGROUP_NAME
            group.mkdir(exist_ok=True)
            (group / "cpu.shares").write_text(str(CGROUP_V1_SHARES))
            progress(f"cgroup: {group} (v1, cpu.shares={CGROUP_V1_SHARES})")
    except OSError as exc:
        progress(f"cgroup: could not prepare {CGROUP_NAME} ({exc}); using it as is")
    return cgroup_parent_for(driver)


def read_cgroup_weight() -> int | None:
    """The CPU weight (v1 shares or v2 weight) of our sandbox cgroup, if it exists."""
    root = Path("/sys/fs/cgroup")
    for path in (
        root / CGROUP_NAME / "cpu.weight",
        root / "cpu" / CGROUP_NAME / "cpu.shares",
        root / "cpu,cpuacct" / CGROUP_NAME / "cpu.shares",
    ):
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return None
