"""The sandbox itself, asserted from inside real gVisor containers (issue 2).

Every container here is made by ``pool/_spec.py`` through :class:`DockerBackend`,
exactly as the warm pools make them.  Each property is checked by a probe program
run inside a sandbox of each image; the probes of the module run once, a few at a
time, and each test asserts on its own probe's report.  Probes print one JSON line
as their last line of stdout.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from pool import (
    OWNER_LABEL,
    DockerBackend,
    DockerClient,
    Exited,
    Gone,
    Output,
    SandboxLimits,
    container_config,
    socket_path_from_env,
)
from pool._images import current_tags
from pool._setup import CGROUP_NAME, cgroup_parent_for
from pool._spec import LANGUAGE_LABEL, SANDBOX_ENV
from tests.conftest import TEST_OWNER

LANGUAGES = ["python", "javascript"]
MIB = 1024 * 1024
PROBE_TIMEOUT_S = 120  # generous: the machine is shared, and a fork loop is slow under ptrace


# -- container_config: the spec itself, no engine ------------------------------------------


def test_container_config_isolation() -> None:
    limits = SandboxLimits()
    config = container_config(
        image="cinch/python:abc",
        language="python",
        runtime="runsc-ptrace",
        owner="cinch-owner-x",
        limits=limits,
        cgroup_parent="/cinch-sandboxes",
    )
    host = config["HostConfig"]
    assert config["Image"] == "cinch/python:abc"
    assert config["NetworkDisabled"] is True
    assert config["User"] not in ("", "0", "root")
    assert not config["User"].startswith("0:")
    assert config["Labels"] == {OWNER_LABEL: "cinch-owner-x", LANGUAGE_LABEL: "python"}
    assert sorted(config["Env"]) == sorted(SANDBOX_ENV)
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["LANG"] == "C.UTF-8"
    assert env["HOME"].startswith("/tmp/")
    assert config["WorkingDir"].startswith("/tmp")
    assert config["Tty"] is False
    assert config["OpenStdin"] is True
    # No command in the create body: the image's fixed CMD runs, never code.
    assert "Cmd" not in config
    assert "Entrypoint" not in config

    assert host["Runtime"] == "runsc-ptrace"
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Binds"] == []
    assert host["Mounts"] == []
    assert host["LogConfig"]["Type"] == "none"
    assert host["Memory"] == 256 * MIB
    assert host["MemorySwap"] == host["Memory"], "no swap"
    assert host["ShmSize"] == 16 * MIB
    tmp_opts = host["Tmpfs"]["/tmp"].split(",")
    assert f"size={64 * MIB}" in tmp_opts
    assert set(host["Tmpfs"]) == {"/tmp"}
    assert host["NanoCpus"] > 0
    assert host["OomScoreAdj"] > 0
    assert host["CgroupParent"] == "/cinch-sandboxes"
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]}
    assert ulimits["nproc"] == (limits.nproc, limits.nproc)
    assert 64 <= limits.nproc <= 256
    assert ulimits["nofile"][1] > 0
    assert ulimits["fsize"][1] > 0
    # The pids limit is only a backstop: the host counts gVisor's own threads and,
    # under ptrace, a stub process per sandboxed process. It must sit far above
    # what ``nproc`` processes need (about 1,300 host pids measured for 128).
    assert host["PidsLimit"] >= 3 * 1300
    # Nothing of the host leaks in: no socket, no host namespaces.
    text = json.dumps(config)
    assert "docker.sock" not in text
    for key in ("NetworkMode", "PidMode", "UTSMode", "UsernsMode"):
        assert host.get(key) in (None, "", "none")
    assert host["IpcMode"] == "private"


def test_container_config_without_cgroup_parent_and_extra_labels() -> None:
    config = container_config(
        image="i",
        language="javascript",
        runtime="runsc-systrap",
        owner="o",
        limits=SandboxLimits(memory_bytes=128 * MIB),
        cgroup_parent=None,
        extra_labels={"cinch.extra": "1"},
    )
    assert "CgroupParent" not in config["HostConfig"]
    assert config["HostConfig"]["Memory"] == config["HostConfig"]["MemorySwap"] == 128 * MIB
    assert config["Labels"] == {OWNER_LABEL: "o", LANGUAGE_LABEL: "javascript", "cinch.extra": "1"}


# -- probes: real code inside real sandboxes ------------------------------------------------


@dataclass
class Probe:
    """What one probe program did inside its sandbox."""

    stdout: str = ""
    stderr: str = ""
    exited: Exited | None = None
    gone: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    def report(self) -> Any:
        """The probe's JSON line; fails the test with everything it printed otherwise."""
        if self.error is not None:
            raise self.error
        assert self.exited is not None, self.describe()
        assert self.exited.code == 0, self.describe()
        lines = self.stdout.strip().splitlines()
        assert lines, self.describe()
        return json.loads(lines[-1])

    def describe(self) -> str:
        return (
            f"exited={self.exited} gone={self.gone} state={self.state}\n"
            f"stdout={self.stdout[-2000:]!r}\nstderr={self.stderr[-2000:]!r}"
        )


def host_ipv4_addresses() -> list[str]:
    """Every IPv4 address of this host that is not loopback (docker0's gateway among them)."""
    addresses = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(
                    s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15])
                )  # SIOCGIFADDR
            except OSError:
                continue
            addr = socket.inet_ntoa(packed[20:24])
            if not addr.startswith("127."):
                addresses.append(addr)
    return addresses


PY_KERNEL = r"""
import json, os, subprocess
dmesg = subprocess.run(["dmesg"], capture_output=True, text=True)
print(json.dumps({"dmesg": dmesg.stdout, "rc": dmesg.returncode,
                  "version": open("/proc/version").read(), "release": os.uname().release}))
"""
JS_KERNEL = r"""
const cp = require("node:child_process"), fs = require("node:fs"), os = require("node:os");
const dmesg = cp.spawnSync("dmesg", { encoding: "utf8" });
console.log(JSON.stringify({ dmesg: dmesg.stdout, rc: dmesg.status,
  version: fs.readFileSync("/proc/version", "utf8"), release: os.release() }));
"""

PY_NETWORK = r"""
import json, socket
TARGETS = json.loads(%(targets)r)
def attempt(host, port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return type(e).__name__ + ":" + str(e.errno)
    finally:
        s.close()
# A control: a listener on the sandbox's own loopback is reachable.
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
control = attempt("127.0.0.1", srv.getsockname()[1])
try:
    dns = repr(socket.getaddrinfo("example.com", 443))
except OSError as e:
    dns = "error:" + type(e).__name__
devs = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
print(json.dumps({"ifaces": [n for _, n in socket.if_nameindex()], "proc_net_dev": devs,
                  "control": control, "dns": dns,
                  "connect": {f"{h}:{p}": attempt(h, p) for h, p in TARGETS}}))
"""
JS_NETWORK = r"""
const net = require("node:net"), os = require("node:os"), fs = require("node:fs");
const dns = require("node:dns");
const TARGETS = JSON.parse(%(targets)r);
function attempt(host, port) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.setTimeout(3000, () => { s.destroy(); resolve("timeout"); });
    s.on("connect", () => { s.destroy(); resolve("connected"); });
    s.on("error", (e) => resolve("error:" + e.code));
  });
}
(async () => {
  const srv = net.createServer().listen(0, "127.0.0.1");
  await new Promise((r) => srv.on("listening", r));
  const control = await attempt("127.0.0.1", srv.address().port);
  srv.close();
  const lookup = await dns.promises.lookup("example.com").then((a) => JSON.stringify(a), (e) => "error:" + e.code);
  const connect = {};
  for (const [h, p] of TARGETS) connect[h + ":" + p] = await attempt(h, p);
  const devs = fs.readFileSync("/proc/net/dev", "utf8").split("\n").slice(2)
    .filter((l) => l.trim()).map((l) => l.split(":")[0].trim());
  console.log(JSON.stringify({ ifaces: Object.keys(os.networkInterfaces()), proc_net_dev: devs,
    control, dns: lookup, connect }));
})();
"""

WRITE_TARGETS = ["/probe", "/etc/probe", "/opt/cinch/probe", "/var/tmp/probe", "/usr/local/probe"]
PY_FILESYSTEM = r"""
import errno, json, os
results = {}
for path in %(targets)r:
    try:
        with open(path, "w") as f:
            f.write("x")
        results[path] = "written"
    except OSError as e:
        results[path] = errno.errorcode.get(e.errno, str(e.errno))
with open("/tmp/probe", "w") as f:
    f.write("ok")
root_opts = [l.split()[3] for l in open("/proc/mounts") if l.split()[1] == "/"]
print(json.dumps({"writes": results, "tmp": open("/tmp/probe").read(), "cwd": os.getcwd(),
                  "home": os.environ.get("HOME"), "lang": os.environ.get("LANG"),
                  "home_writable": os.access(os.environ["HOME"], os.W_OK),
                  "root_opts": root_opts}))
"""
JS_FILESYSTEM = r"""
const fs = require("node:fs");
const writes = {};
for (const path of %(targets)s) {
  try { fs.writeFileSync(path, "x"); writes[path] = "written"; }
  catch (e) { writes[path] = e.code; }
}
fs.writeFileSync("/tmp/probe", "ok");
let homeWritable = true;
try { fs.accessSync(process.env.HOME, fs.constants.W_OK); } catch { homeWritable = false; }
const rootOpts = fs.readFileSync("/proc/mounts", "utf8").split("\n")
  .map((l) => l.split(" ")).filter((f) => f[1] === "/").map((f) => f[3]);
console.log(JSON.stringify({ writes, tmp: fs.readFileSync("/tmp/probe", "utf8"), cwd: process.cwd(),
  home: process.env.HOME, lang: process.env.LANG, home_writable: homeWritable,
  root_opts: rootOpts }));
"""

# Fill /tmp and /dev/shm with 1 MiB writes spread over 8 MiB files (so the per-file
# size ulimit never trips first) until the filesystem says ENOSPC.
PY_FILL = r"""
import errno, json, os
def fill(directory):
    total, chunk, err = 0, b"x" * (1 << 20), None
    try:
        for i in range(200):
            with open(os.path.join(directory, f"fill{i}"), "wb", buffering=0) as f:
                for _ in range(8):
                    total += f.write(chunk)
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno))
    return {"bytes": total, "error": err}
print(json.dumps({"tmp": fill("/tmp"), "shm": fill("/dev/shm")}))
"""
JS_FILL = r"""
const fs = require("node:fs"), path = require("node:path");
function fill(dir) {
  let total = 0, err = null;
  const chunk = Buffer.alloc(1 << 20, 120);
  try {
    for (let i = 0; i < 200; i++) {
      const fd = fs.openSync(path.join(dir, "fill" + i), "w");
      try { for (let j = 0; j < 8; j++) total += fs.writeSync(fd, chunk); }
      finally { fs.closeSync(fd); }
    }
  } catch (e) { err = e.code; }
  return { bytes: total, error: err };
}
console.log(JSON.stringify({ tmp: fill("/tmp"), shm: fill("/dev/shm") }));
"""

PY_IDENTITY = r"""
import json, os
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                  "status": {k: v.strip() for k, v in status.items()}}))
"""
JS_IDENTITY = r"""
const fs = require("node:fs");
const status = {};
for (const line of fs.readFileSync("/proc/self/status", "utf8").split("\n")) {
  const i = line.indexOf(":");
  if (i > 0) status[line.slice(0, i)] = line.slice(i + 1).trim();
}
console.log(JSON.stringify({ uid: process.getuid(), euid: process.geteuid(), gid: process.getgid(),
  status }));
"""

PY_OOM = r"""
data = b"\x01" * (1 << 30)  # touched: every page written
print("survived", len(data))
"""
JS_OOM = r"""
const data = Buffer.alloc(2 ** 30, 1);  // touched: every page written
console.log("survived", data.length);
"""

# Children exec a small program, so memory is not what runs out first.
PY_FORK = r"""
import errno, json, os, signal
children = []
error = None
try:
    for _ in range(1000):
        pid = os.fork()
        if pid == 0:
            try:
                os.execv("/bin/sleep", ["sleep", "60"])
            finally:
                os._exit(127)
        children.append(pid)
except OSError as e:
    error = errno.errorcode.get(e.errno, str(e.errno))
for pid in children:
    os.kill(pid, signal.SIGKILL)
print(json.dumps({"forked": len(children), "error": error}))
"""
JS_FORK = r"""
const cp = require("node:child_process");
const children = [];
function done(error) {
  for (const c of children) c.kill("SIGKILL");
  console.log(JSON.stringify({ forked: children.length, error }));
}
function next() {
  if (children.length >= 1000) return done(null);
  const c = cp.spawn("/bin/sleep", ["60"], { stdio: "ignore" });
  if (c.pid === undefined) { c.on("error", (e) => done(e.code)); return; }
  children.push(c);
  setImmediate(next);
}
next();
"""

PY_SETUID = r"""
import json, subprocess
found = subprocess.run(["find", "/", "-xdev", "-perm", "/6000", "!", "-type", "d"],
                       capture_output=True, text=True)
ls = subprocess.run(["ls", "-la", "/", "/tmp"], capture_output=True, text=True)
print(json.dumps({"setuid": found.stdout.split(), "find_rc": found.returncode,
                  "ls_rc": ls.returncode, "ls": ls.stdout, "ls_err": ls.stderr}))
"""
JS_SETUID = r"""
const cp = require("node:child_process");
const found = cp.spawnSync("find", ["/", "-xdev", "-perm", "/6000", "!", "-type", "d"], { encoding: "utf8" });
const ls = cp.spawnSync("ls", ["-la", "/", "/tmp"], { encoding: "utf8" });
console.log(JSON.stringify({ setuid: found.stdout.split(/\s+/).filter(Boolean), find_rc: found.status,
  ls_rc: ls.status, ls: ls.stdout, ls_err: ls.stderr }));
"""

JS_ESM = r"""
import fs from "node:fs";
import { join } from "node:path";
const here = await Promise.resolve(join("/tmp", "esm"));
fs.writeFileSync(here, "written by an ES module");
console.log(JSON.stringify({ node: process.versions.node, text: fs.readFileSync(here, "utf8"),
  esm: typeof require === "undefined" }));
"""


def _probe_programs(host_targets: list[tuple[str, int]]) -> dict[tuple[str, str], str]:
    targets = json.dumps([["1.1.1.1", 443], ["8.8.8.8", 53], *map(list, host_targets)])
    write_targets = json.dumps(WRITE_TARGETS)
    programs = {
        "kernel": (PY_KERNEL, JS_KERNEL),
        "network": (PY_NETWORK % {"targets": targets}, JS_NETWORK % {"targets": targets}),
        "filesystem": (
            PY_FILESYSTEM % {"targets": WRITE_TARGETS},
            JS_FILESYSTEM % {"targets": write_targets},
        ),
        "fill": (PY_FILL, JS_FILL),
        "identity": (PY_IDENTITY, JS_IDENTITY),
        "oom": (PY_OOM, JS_OOM),
        "fork": (PY_FORK, JS_FORK),
        "setuid": (PY_SETUID, JS_SETUID),
    }
    out = {}
    for name, (py, js) in programs.items():
        out["python", name] = py
        out["javascript", name] = js
    out["javascript", "esm"] = JS_ESM
    return out


async def run_in_sandbox(backend: DockerBackend, language: str, image: str, code: str) -> Probe:
    """Start a sandbox, run ``code`` in it, read everything until it ends; always destroy."""
    probe = Probe()
    sandbox = await backend.start_sandbox(language, image)
    try:
        await sandbox.send_run(code.encode(), b"", secrets.token_bytes(16), 4 * MIB)
        out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        with trio.fail_after(PROBE_TIMEOUT_S):
            while True:
                event = await sandbox.receive_event()
                if isinstance(event, Output):
                    out[event.stream] += event.data
                elif isinstance(event, Exited):
                    probe.exited = event
                    break
                else:
                    assert isinstance(event, Gone)
                    probe.gone = True
                    await backend.client.wait(sandbox.id, timeout_s=20)
                    # Docker sets OOMKilled when its 'oom' event arrives, which can
                    # trail the container's exit a little under load.
                    for _ in range(10):
                        probe.state = (await backend.client.inspect(sandbox.id))["State"]
                        if probe.state.get("OOMKilled"):
                            break
                        await trio.sleep(0.2)
                    break
        probe.stdout = out["stdout"].decode("utf-8", "replace")
        probe.stderr = out["stderr"].decode("utf-8", "replace")
    finally:
        await backend.destroy(sandbox)
    return probe


async def _cgroup_parent(client: DockerClient) -> str | None:
    """The sandboxes' cgroup parent as production uses it, when `cinch setup` made it."""
    driver = str((await client.info()).get("CgroupDriver", "cgroupfs"))
    if driver == "systemd":
        return cgroup_parent_for(driver)
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
        if os.path.isdir(f"{root}/{CGROUP_NAME}"):  # noqa: ASYNC240 (sysfs, instant)
            return cgroup_parent_for(driver)
    return None


async def _run_probes(owner: str, programs: dict[tuple[str, str], str]) -> dict[Any, Probe]:
    from api._config import Config

    tags = current_tags()
    results: dict[Any, Probe] = {}
    async with DockerClient(socket_path_from_env()) as client:
        backend = DockerBackend(
            client,
            owner=owner,
            runtimes=Config.from_env({}).runtimes(),
            cgroup_parent=await _cgroup_parent(client),
        )
        limiter = trio.CapacityLimiter(3)  # a shared 2-core machine

        async def one(key: tuple[str, str], code: str) -> None:
            async with limiter:
                try:
                    results[key] = await run_in_sandbox(backend, key[0], tags[key[0]], code)
                except Exception as exc:
                    results[key] = Probe(error=exc)

        async with trio.open_nursery() as nursery:
            for key, code in programs.items():
                nursery.start_soon(one, key, code)
    return results


@dataclass
class ProbeRun:
    probes: dict[tuple[str, str], Probe]
    host_targets: list[tuple[str, int]]


@pytest.fixture(scope="module")
def probes(engine_ready: bool) -> Iterator[ProbeRun]:
    # Listeners on every address of the host: a sandbox must reach none of them.
    listeners = []
    for addr in host_ipv4_addresses():
        srv = socket.socket()
        srv.bind((addr, 0))
        srv.listen()
        listeners.append(srv)
    targets = [s.getsockname() for s in listeners]
    try:
        for target in targets:  # control: they do answer from the host
            socket.create_connection(target, timeout=2).close()
        yield ProbeRun(trio.run(_run_probes, TEST_OWNER, _probe_programs(targets)), targets)
    finally:
        for srv in listeners:
            srv.close()


def probe(run: ProbeRun, language: str, name: str) -> Probe:
    return run.probes[language, name]


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_kernel_is_gvisor(probes: ProbeRun, language: str) -> None:
    report = probe(probes, language, "kernel").report()
    assert report["rc"] == 0
    assert "Starting gVisor" in report["dmesg"], report["dmesg"]
    # gVisor presents its own fixed kernel identity, not the host's.
    assert report["release"] != os.uname().release
    assert report["version"] != Path("/proc/version").read_text()


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_network_only_loopback_and_nothing_answers(probes: ProbeRun, language: str) -> None:
    report = probe(probes, language, "network").report()
    assert report["ifaces"] == ["lo"]
    assert report["proc_net_dev"] == ["lo"]
    assert report["control"] == "connected"  # the probe can tell a connection when it sees one
    assert report["dns"].startswith("error:"), report["dns"]
    expected = {"1.1.1.1:443", "8.8.8.8:53"} | {f"{h}:{p}" for h, p in probes.host_targets}
    assert set(report["connect"]) == expected
    assert probes.host_targets, "the host has no non-loopback address to try"
    for target, outcome in report["connect"].items():
        assert outcome != "connected", target
        assert outcome != "timeout", f"{target}: packets left the sandbox and were dropped"


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_root_filesystem_is_read_only_and_tmp_is_writable(probes: ProbeRun, language: str) -> None:
    report = probe(probes, language, "filesystem").report()
    assert set(report["writes"]) == set(WRITE_TARGETS)
    for path, outcome in report["writes"].items():
        assert outcome in ("EROFS", "EACCES"), (path, outcome)
    # /var/tmp is world-writable in Debian: only the read-only root stops this one.
    assert report["writes"]["/var/tmp/probe"] == "EROFS"
    assert report["root_opts"]
    assert all("ro" in o.split(",") for o in report["root_opts"])
    assert report["tmp"] == "ok"
    assert report["cwd"].startswith("/tmp/")
    assert report["home"].startswith("/tmp/")
    assert report["home_writable"] is True
    assert report["lang"] == "C.UTF-8"


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_tmp_and_dev_shm_are_capped(probes: ProbeRun, language: str) -> None:
    report = probe(probes, language, "fill").report()
    tmp, shm = report["tmp"], report["shm"]
    assert tmp["error"] == "ENOSPC", tmp
    assert 56 * MIB <= tmp["bytes"] <= 64 * MIB, tmp
    assert shm["error"] == "ENOSPC", shm
    assert 12 * MIB <= shm["bytes"] <= 16 * MIB, shm


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_not_root_and_no_capabilities(probes: ProbeRun, language: str) -> None:
    report = probe(probes, language, "identity").report()
    assert report["uid"] != 0
    assert report["euid"] != 0
    assert report["gid"] != 0
    status = report["status"]
    for key in ("CapEff", "CapBnd", "CapPrm", "CapInh"):
        assert int(status[key], 16) == 0, (key, status[key])
    assert status["Uid"].split() == [str(report["uid"])] * 4


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_touched_gigabyte_is_oom_killed(probes: ProbeRun, language: str) -> None:
    p = probe(probes, language, "oom")
    if p.error is not None:
        raise p.error
    assert "survived" not in p.stdout, p.describe()
    assert p.gone, p.describe()
    assert p.exited is None, p.describe()
    assert p.state.get("OOMKilled") is True, p.describe()


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_fork_loop_gets_eagain_and_sandbox_survives(probes: ProbeRun, language: str) -> None:
    # report() asserts that the program itself exited 0 after the loop: it survived.
    report = probe(probes, language, "fork").report()
    assert report["error"] == "EAGAIN", report
    nproc = SandboxLimits().nproc
    assert nproc * 3 // 4 <= report["forked"] < nproc, report


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_no_setuid_binaries_and_ls_works(probes: ProbeRun, language: str) -> None:
    report = probe(probes, language, "setuid").report()
    assert report["setuid"] == []
    assert report["ls_rc"] == 0, report["ls_err"]
    names = report["ls"].split()
    for expected in ("tmp", "usr", "opt", "proc"):
        assert expected in names


@pytest.mark.gvisor
def test_node_version_and_es_modules(probes: ProbeRun) -> None:
    report = probe(probes, "javascript", "esm").report()
    major, minor, _ = (int(x) for x in report["node"].split("."))
    assert (major, minor) >= (20, 19), report["node"]
    assert report["text"] == "written by an ES module"
    assert report["esm"] is True  # it really ran as an ES module


class _IteratorReader:
    """A file-like view of the docker SDK's chunk iterator, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        n = len(self._buf) if n < 0 else n
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
def test_image_has_no_setuid_or_setgid_files(engine_ready: bool, language: str) -> None:
    """The whole image, root-only directories included, read from the host."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{socket_path_from_env()}", timeout=60)
    container = client.containers.create(
        current_tags()[language], labels={OWNER_LABEL: TEST_OWNER}, network_disabled=True
    )
    try:
        found, count = [], 0
        stream = _IteratorReader(container.export(chunk_size=1 << 20))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                count += 1
                if member.mode & 0o6000 and not member.isdir():
                    found.append((member.name, oct(member.mode)))
        assert count > 1000, "the export looks empty"
        assert found == []
    finally:
        container.remove(force=True)
        client.close()


@pytest.mark.gvisor
@pytest.mark.parametrize("language", LANGUAGES)
async def test_code_never_in_container_command_env_or_labels(
    engine_ready: bool, language: str
) -> None:
    import docker

    owner = TEST_OWNER
    marker = "cinch-secret-" + secrets.token_hex(8)
    half = len(marker) // 2
    # The program rebuilds the marker, so only the code file itself holds it verbatim.
    if language == "python":
        code = (
            f"# {marker}\nimport sys\nm = {marker[:half]!r} + {marker[half:]!r}\n"
            "for p in ('/proc/1/cmdline', '/proc/1/environ', '/proc/self/cmdline', "
            "'/proc/self/environ'):\n"
            "    data = open(p, 'rb').read()\n"
            "    print(p, m.encode() in data)\n"
            "print('ready', flush=True)\nimport time\ntime.sleep(30)\n"
        )
    else:
        code = (
            f"// {marker}\nconst fs = require('node:fs');\n"
            f"const m = {json.dumps(marker[:half])} + {json.dumps(marker[half:])};\n"
            "for (const p of ['/proc/1/cmdline', '/proc/1/environ', '/proc/self/cmdline', "
            "'/proc/self/environ']) console.log(p, fs.readFileSync(p).includes(m));\n"
            "console.log('ready');\nsetTimeout(() => {}, 30000);\n"
        )
    from api._config import Config

    async with DockerClient(socket_path_from_env()) as client:
        backend = DockerBackend(client, owner=owner, runtimes=Config.from_env({}).runtimes())
        sandbox = await backend.start_sandbox(language, current_tags()[language])
        try:
            await sandbox.send_run(code.encode(), b"stdin-" + marker.encode(), b"n" * 16, MIB)
            out = b""
            with trio.fail_after(30):
                while b"ready" not in out:
                    event = await sandbox.receive_event()
                    assert isinstance(event, Output), (event, out)
                    out += event.data
            # Mid-run: everything `docker inspect` shows about the container.
            sdk = docker.DockerClient(base_url=f"unix://{socket_path_from_env()}", timeout=30)
            try:
                info = await trio.to_thread.run_sync(sdk.api.inspect_container, sandbox.id)
            finally:
                sdk.close()
            assert info["State"]["Running"] is True
            config = info["Config"]
            for key in ("Cmd", "Entrypoint", "Env", "Labels"):
                assert marker not in json.dumps(config.get(key)), key
            assert marker not in json.dumps(info)
            assert config["Labels"][OWNER_LABEL] == owner
            lines = out.decode().splitlines()
            assert len([ln for ln in lines if ln.lower().endswith(" false")]) == 4, lines
        finally:
            await backend.destroy(sandbox)


@pytest.mark.gvisor
async def test_cancelled_start_leaves_no_container_behind(engine_ready: bool) -> None:
    """A start cancelled at whatever step it has reached removes what it made."""
    from api._config import Config

    owner = f"{TEST_OWNER}-cancel"
    async with DockerClient(socket_path_from_env()) as client:
        backend = DockerBackend(client, owner=owner, runtimes=Config.from_env({}).runtimes())
        try:
            # Early cancellations land in create, attach, start or the wait for ready.
            for delay_s in (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05, 0.2):
                with trio.move_on_after(delay_s):
                    sandbox = await backend.start_sandbox("python", current_tags()["python"])
                    await backend.destroy(sandbox)
            left = await client.list_containers([f"{OWNER_LABEL}={owner}"])
            assert [(c["Id"][:12], c["State"]) for c in left] == []
        finally:
            await backend.remove_leftovers()  # exactly this test's own owner
