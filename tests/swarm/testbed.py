"""A real multi-node Docker Swarm on one machine (docs/scale-out.md section 6), made and removed here.

Each node is a network namespace running a dockerd of its own (own socket, data
root, exec root, pid file; runsc registered as on the host), started with
``nsenter --net=`` (``ip netns exec`` remounts /sys and dockerd then fails).
The nodes' links are veth pairs to a bridge inside a "switch" namespace,
addressed in 198.18.0.0/24 (the benchmarking range: nothing leaves the machine;
a bridge in the host namespace would meet the host dockerd's FORWARD DROP).

Everything it makes carries its prefix (``ctb<pid>``): namespaces, links, the
directory under /tmp, the Swarm service; :meth:`SwarmBed.remove` removes exactly
those, and nothing else on the machine is touched (the host's own dockerd
least of all).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
SUBNET = "198.18.0"
CLONE_NEWNET = 0x40000000


def sh(*args: str, timeout: float = 60, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own that entered the network namespace ``netns``.

    setns(2) moves only the calling thread, so sockets ``fn`` opens live there.
    """
    thread = NetnsThread(netns, fn)
    thread.start()
    return thread.result(300)


def enter_netns(netns: str) -> None:
    """Move the calling thread into the network namespace ``netns`` (for good)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


class NetnsThread(threading.Thread):
    """A daemon thread that runs ``fn()`` inside ``netns``; :meth:`result` joins it."""

    def __init__(self, netns: str, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.netns, self.fn = netns, fn
        self.box: dict[str, Any] = {}

    def run(self) -> None:
        try:
            enter_netns(self.netns)
            self.box["value"] = self.fn()
        except BaseException as exc:
            self.box["error"] = exc

    def result(self, timeout: float) -> Any:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"no answer within {timeout} s in {self.netns}")
        if "error" in self.box:
            raise self.box["error"]
        return self.box["value"]


@dataclass
class Node:
    """One node: a network namespace, an address, a dockerd."""

    name: str  # also its netns
    address: str
    base: Path
    link: str  # its end of the veth pair (inside the node)
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, timeout: float = 120) -> str:
        return sh("docker", "-H", self.docker_host, *args, timeout=timeout)

    def start_engine(self, wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        """Start this node's dockerd; ``wrap`` may put the command inside something
        (bench.capped_nodes: a CPU-capped cgroup)."""
        self.base.mkdir(parents=True, exist_ok=True)
        config = json.loads(Path("/etc/docker/daemon.json").read_text())
        config.update(
            {
                "data-root": str(self.base / "data"),
                "exec-root": str(self.base / "exec"),
                "pidfile": str(self.base / "docker.pid"),
                "hosts": [self.docker_host],
                "shutdown-timeout": 2,
            }
        )
        (self.base / "daemon.json").write_text(json.dumps(config))
        with open(self.base / "dockerd.log", "ab") as log:
            argv = [
                "nsenter",
                f"--net=/run/netns/{self.name}",
                "dockerd",
                f"--config-file={self.base / 'daemon.json'}",
            ]
            self.process = subprocess.Popen(
                wrap(argv) if wrap else argv,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def engine_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            try:
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return s.recv(64).split(b" ", 2)[1:2] == [b"200"]
            except OSError:
                return False

    def stop_engine(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@dataclass
class SwarmBed:
    prefix: str
    base: Path
    nodes: list[Node] = field(default_factory=list)
    service: str = ""

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    @classmethod
    def create(cls, n: int = 3) -> SwarmBed:
        prefix = f"ctb{os.getpid() % 100000}"
        bed = cls(prefix, Path("/tmp") / f"cinch-{prefix}")
        try:
            bed._network(n)
            for node in bed.nodes:
                node.start_engine()
            deadline = time.monotonic() + 90
            for node in bed.nodes:
                while not node.engine_answers():
                    if time.monotonic() > deadline or (
                        node.process is not None and node.process.poll() is not None
                    ):
                        raise RuntimeError(
                            f"{node.name}: dockerd did not start:\n"
                            + (node.base / "dockerd.log").read_text()[-2000:]
                        )
                    time.sleep(0.2)
        except BaseException:
            bed.remove()
            raise
        return bed

    def _network(self, n: int) -> None:
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i in range(1, n + 1):
            name = f"{self.prefix}-n{i}"
            inner, outer = f"{self.prefix}n{i}a", f"{self.prefix}n{i}b"
            node = Node(name, f"{SUBNET}.{10 + i}", self.base / f"n{i}", inner)
            self.nodes.append(node)
            sh("ip", "netns", "add", name)
            sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
            sh("ip", "link", "set", inner, "netns", name)
            sh("ip", "link", "set", outer, "netns", self.switch)
            sh("ip", "-n", self.switch, "link", "set", outer, "master", "br0", "up")
            sh("ip", "-n", name, "addr", "add", f"{node.address}/24", "dev", inner)
            sh("ip", "-n", name, "link", "set", inner, "up")
            sh("ip", "-n", name, "link", "set", "lo", "up")

    def form_swarm(self) -> None:
        """``swarm init`` on node 1, ``swarm join`` from the others (offline)."""
        first = self.nodes[0]
        t0 = time.monotonic()
        first.docker(
            "swarm",
            "init",
            "--advertise-addr",
            first.address,
            "--listen-addr",
            f"{first.address}:2377",
        )
        token = first.docker("swarm", "join-token", "-q", "worker").strip()
        for node in self.nodes[1:]:
            node.docker(
                "swarm",
                "join",
                "--advertise-addr",
                node.address,
                "--listen-addr",
                f"{node.address}:2377",
                "--token",
                token,
                f"{first.address}:2377",
            )
        for node in self.nodes:
            node.node_id = node.docker("info", "-f", "{{.Swarm.NodeID}}").strip()
        self.swarm_seconds = time.monotonic() - t0

    def load_images(self, tags: list[str], source_host: str) -> float:
        """``docker save`` from the machine's engine once, ``docker load`` on every node."""
        archive = self.base / "images.tar"
        t0 = time.monotonic()
        sh("docker", "-H", source_host, "save", "-o", str(archive), *tags, timeout=300)
        for node in self.nodes:
            node.docker("load", "-q", "-i", str(archive), timeout=300)
        archive.unlink()
        return time.monotonic() - t0

    def set_link(self, node: Node, up: bool) -> None:
        sh("ip", "-n", node.name, "link", "set", node.link, "up" if up else "down")

    def remove(self) -> None:
        """Remove what this bed made, by its names: service, swarm, engines, namespaces, files."""
        if self.service and self.nodes and self.nodes[0].engine_answers():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.nodes[0].docker("service", "rm", self.service, timeout=30)
        for node in self.nodes:
            if node.engine_answers():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    node.docker("swarm", "leave", "--force", timeout=30)
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    ids = node.docker("ps", "-aq", timeout=30).split()
                    if ids:
                        node.docker("rm", "-f", *ids, timeout=60)
            node.stop_engine()
        self._kill_leftover_processes()
        self._unmount()
        for node in self.nodes:
            sh("ip", "netns", "del", node.name, check=False)
        sh("ip", "netns", "del", self.switch, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def _kill_leftover_processes(self) -> None:
        """containerd, shims and runsc processes started under this bed's directory."""
        needle = str(self.base).encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    if needle in cmdline and any(
                        cmdline.startswith(p)
                        for p in (b"runsc", b"containerd", b"dockerd", b"/usr/bin/")
                    ):
                        os.kill(int(entry), signal.SIGKILL)

    def _unmount(self) -> None:
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.base))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def leftovers(prefix: str) -> list[str]:
    """Anything named ``prefix`` still on the machine (for the test's last check)."""
    found = [n for n in sh("ip", "netns", "list").split() if n.startswith(prefix)]
    found += [p for p in (Path("/tmp") / f"cinch-{prefix}",) if p.exists()]
    return [str(f) for f in found]


@contextlib.contextmanager
def swarm_bed(n: int = 3) -> Iterator[SwarmBed]:
    bed = SwarmBed.create(n)
    try:
        yield bed
    finally:
        bed.remove()
